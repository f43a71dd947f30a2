"""`upload-admin`: operator commands that run against the service's own settings.

`upload-admin janitor run` runs one clean-up pass (the same one the service runs every
JANITOR_INTERVAL_SECONDS) and prints what it did as JSON; safe beside running replicas.
"""

from __future__ import annotations

import asyncio
import json

import typer

from app.container import build_container, build_verifier
from app.janitor import JanitorReport, run_pass
from app.logging import configure_logging
from app.settings import load_settings

app = typer.Typer(help="Operator commands of the audio upload service.", no_args_is_help=True)
janitor_app = typer.Typer(help="Expiry and clean-up.", no_args_is_help=True)
app.add_typer(janitor_app, name="janitor")


async def _janitor_pass() -> JanitorReport:
    settings = load_settings()
    configure_logging(settings.log_level)
    container = await build_container(settings, build_verifier(settings))
    try:
        return await run_pass(container)
    finally:
        await container.close()


@janitor_app.command("run")
def janitor_run() -> None:
    """Expire idle sessions, remove orphan staging files, abort orphan multipart uploads."""
    report = asyncio.run(_janitor_pass())
    typer.echo(json.dumps(report.as_dict()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
