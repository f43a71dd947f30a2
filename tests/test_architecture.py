"""House rules checked by a tool, not by memory: the domain imports no vendor and no
adapter; routes never reach into storage directly."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"

VENDORS = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "alembic",
    "aiobotocore",
    "botocore",
    "boto3",
    "httpx",
    "uvicorn",
    "asyncpg",
    "aiosqlite",
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_under(folder: str) -> list[Path]:
    return sorted((APP / folder).rglob("*.py"))


@pytest.mark.parametrize("path", modules_under("uploads"), ids=lambda p: p.name)
def test_domain_imports_no_vendor_and_no_adapter(path: Path) -> None:
    forbidden = (*VENDORS, "app.api", "app.storage", "app.main", "app.container", "app.notify")
    bad = sorted(
        name
        for name in imported_modules(path)
        if name.split(".")[0] in VENDORS or name.startswith(forbidden)
    )
    assert bad == [], f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", modules_under("api"), ids=lambda p: p.name)
def test_routes_do_not_reach_into_storage(path: Path) -> None:
    bad = sorted(
        name
        for name in imported_modules(path)
        if name.startswith(("app.storage", "sqlalchemy", "aiobotocore", "botocore"))
    )
    assert bad == [], f"{path.name} imports {bad}"


def test_the_service_loads_no_cli_and_no_migration_tool() -> None:
    """Every module the service imports stays in its memory for as long as it runs: the
    command lines (typer, the client) are never its business, alembic only when a
    database needs migrating (tests/storage/test_database.py)."""
    probe = (
        "import json, sys\n"
        "import app.main\n"
        "names = ['typer', 'app.client', 'app.admin', 'alembic']\n"
        "print(json.dumps(sorted(n for n in names if n in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(done.stdout) == []


def test_route_dependencies_are_coroutines() -> None:
    """FastAPI runs a plain `def` dependency in a worker thread: a thread hand-off on every
    request and, under many concurrent uploads, up to 40 more threads in the process."""
    from app.api import deps

    providers = [
        function
        for name, function in vars(deps).items()
        if name.startswith("get_") and inspect.isfunction(function)
    ]
    assert len(providers) >= 3
    assert [f.__name__ for f in providers if not inspect.iscoroutinefunction(f)] == []
