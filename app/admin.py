"""Operator commands: `upload-admin` (or `python -m app.admin`).

Each area is a sub-app (`outbox`, `janitor`). Commands read the same settings as the
service (environment or `.env`) and work on its database, staging and bucket directly;
they never start the service and are safe beside running replicas.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from app.container import build_container, build_verifier
from app.janitor import JanitorReport, run_pass
from app.logging import configure_logging
from app.notify.outbox import EventState, RequeueOutcome, SqlOutbox
from app.settings import load_settings
from app.storage.database import create_engine
from app.uploads.models import utc_now

T = TypeVar("T")

app = typer.Typer(help="Operator commands of the audio upload service.", no_args_is_help=True)

# --- outbox ------------------------------------------------------------------------------

outbox_app = typer.Typer(
    help="Main-service notifications waiting, failed or delivered.", no_args_is_help=True
)
app.add_typer(outbox_app, name="outbox")


@asynccontextmanager
async def _engine() -> AsyncIterator[AsyncEngine]:
    settings = load_settings()
    engine = create_engine(settings.resolved_database_url, schema=settings.database_schema)
    try:
        yield engine
    finally:
        await engine.dispose()


def _run(work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def run() -> T:
        async with _engine() as engine:
            return await work(engine)

    return asyncio.run(run())


@outbox_app.command("list")
def outbox_list(
    state: Annotated[EventState | None, typer.Option(help="Only events in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
) -> None:
    """List events, oldest first: id, state, attempts, session, next attempt, last error."""

    async def work(engine: AsyncEngine) -> None:
        outbox = SqlOutbox(engine)
        counts = await outbox.counts_by_state()
        for record in await outbox.list_events(state=state, limit=limit):
            when = (
                f"delivered {record.delivered_at.isoformat()}"
                if record.delivered_at is not None
                else f"next {record.next_attempt_at.isoformat()}"
            )
            last = record.last_error or (
                str(record.last_status_code) if record.last_status_code else "-"
            )
            typer.echo(
                f"{record.event_id}  {record.state.value:<9}  attempts={record.attempts}  "
                f"session={record.upload_session_id}  {when}  last={last}"
            )
        summary = ", ".join(f"{name.value}={count}" for name, count in counts.items())
        typer.echo(f"total: {summary}", err=True)

    _run(work)


@outbox_app.command("show")
def outbox_show(event_id: str) -> None:
    """One event's body and every delivery attempt."""

    async def work(engine: AsyncEngine) -> int:
        outbox = SqlOutbox(engine)
        record = await outbox.get(event_id)
        body = await outbox.body_of(event_id)
        if record is None or body is None:
            typer.echo(f"no event {event_id}", err=True)
            return 1
        typer.echo(f"{record.event_id}  {record.state.value}  attempts={record.attempts}")
        typer.echo(body.decode())
        for attempt in await outbox.attempts_of(event_id):
            typer.echo(
                f"  {attempt.attempted_at.isoformat()}  {attempt.outcome.value:<9}  "
                f"status={attempt.status_code or '-'}  error={attempt.error or '-'}  "
                f"{attempt.duration_seconds:.3f}s  {attempt.worker}"
            )
        return 0

    raise typer.Exit(_run(work))


@outbox_app.command("requeue")
def outbox_requeue(event_id: str) -> None:
    """Make a failed or waiting event due now, with a fresh attempt budget.
    A delivered event is never sent again."""

    async def work(engine: AsyncEngine) -> RequeueOutcome:
        return await SqlOutbox(engine).requeue(event_id, now=utc_now())

    outcome = _run(work)
    messages = {
        RequeueOutcome.REQUEUED: f"requeued {event_id}",
        RequeueOutcome.UNKNOWN: f"no event {event_id}",
        RequeueOutcome.ALREADY_DELIVERED: f"{event_id} was delivered; it is never sent again",
        RequeueOutcome.IN_FLIGHT: f"{event_id} is being sent right now; try again shortly",
    }
    if outcome is RequeueOutcome.REQUEUED:
        typer.echo(messages[outcome])
        return
    typer.echo(messages[outcome], err=True)
    raise typer.Exit(1)


# --- janitor -----------------------------------------------------------------------------

janitor_app = typer.Typer(help="Expiry and clean-up.", no_args_is_help=True)
app.add_typer(janitor_app, name="janitor")


async def _janitor_pass() -> JanitorReport:
    settings = load_settings()
    configure_logging(settings.log_level)
    container = await build_container(settings, build_verifier(settings), background_loops=False)
    try:
        return await run_pass(container)
    finally:
        await container.close()


@janitor_app.command("run")
def janitor_run() -> None:
    """Expire idle sessions, remove orphan staging files, abort orphan multipart uploads.
    The same pass the service runs every JANITOR_INTERVAL_SECONDS; prints a JSON report."""
    report = asyncio.run(_janitor_pass())
    typer.echo(json.dumps(report.as_dict(), allow_nan=False))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
