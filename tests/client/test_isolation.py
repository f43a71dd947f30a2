"""The client must be usable without the server's dependencies: importing it (and the
CLI) in a fresh interpreter pulls in none of them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

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


CLIENT = Path(__file__).resolve().parents[2] / "app" / "client"


@pytest.mark.parametrize("path", sorted(CLIENT.glob("*.py")), ids=lambda p: p.name)
def test_client_modules_import_only_the_stdlib_httpx_and_themselves(path: Path) -> None:
    allowed = {"httpx"} | ({"typer", "rich"} if path.name == "cli.py" else set())
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    bad = sorted(
        name
        for name in names
        if not name.startswith("app.client")
        and name.split(".")[0] not in sys.stdlib_module_names
        and name.split(".")[0] not in allowed
    )
    assert bad == [], f"{path.name} imports {bad}"
