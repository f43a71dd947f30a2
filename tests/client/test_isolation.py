"""The client must be usable without the server's dependencies: importing it (and the
CLI) in a fresh interpreter pulls in none of them."""

from __future__ import annotations

import json
import subprocess
import sys

SERVER_MODULES = ["fastapi", "starlette", "sqlalchemy", "aiobotocore", "botocore", "pydantic"]
SERVER_MODULES += ["app.main", "app.uploads", "app.api", "app.storage", "app.settings"]


def test_importing_the_client_and_its_cli_pulls_in_no_server_module() -> None:
    probe = (
        "import json, sys\n"
        "import app.client, app.client.cli\n"
        f"names = {SERVER_MODULES!r}\n"
        "print(json.dumps(sorted(n for n in names if n in sys.modules)))\n"
        "print(json.dumps('httpx' in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    leaked, has_httpx = (json.loads(line) for line in done.stdout.splitlines())
    assert leaked == []
    assert has_httpx is True
