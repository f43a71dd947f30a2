"""`audio-upload FILE --file-id N`: upload one file with a progress bar, resumably.

The token comes from `AUDIO_UPLOAD_TOKEN` or `--token-file` (a `--token` flag exists but
puts the token in the process list, so it warns). Exit codes tell failures apart:
0 done, 2 usage, 3 auth, 4 rejected, 5 session gone, 6 service unavailable, 130
interrupted (see `app.client.errors`). Re-running the same command resumes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from app.client.errors import UploadError, UploadInterrupted, UsageError
from app.client.retry import RetryPolicy
from app.client.uploader import (
    DEFAULT_BASE_URL,
    DEFAULT_PARALLEL,
    UploadResult,
    plain_http_warning,
    upload_file,
)
from app.client.uploader import Progress as UploadProgress

TOKEN_ENV = "AUDIO_UPLOAD_TOKEN"  # noqa: S105 - the variable's name, not a token
URL_ENV = "AUDIO_UPLOAD_URL"
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

HINTS = {
    "AuthError": f"Check the token (${TOKEN_ENV} or --token-file): it may be expired, "
    "signed for another service, or not allowed for this file id.",
    "SessionGoneError": "Run the same command again to start a new upload.",
    "UnavailableError": "The service or network is down; run the same command again later "
    "to resume where it stopped.",
}

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


def parse_size(text: str) -> int:
    """`8388608`, `8M`, `8MiB`, `512k`: bytes (units are binary)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text.lower())
    if not match or int(match.group(1)) < 1:
        raise typer.BadParameter(f"{text!r} is not a size such as 8M or 8388608")
    return int(match.group(1)) * SIZE_UNITS[match.group(2)]


def resolve_token(token: str | None, token_file: Path | None, err: Console) -> str:
    if token:
        err.print(
            "[yellow]warning:[/] --token is visible to other users in the process list; "
            f"prefer {TOKEN_ENV} or --token-file."
        )
        return token.strip()
    if token_file is not None:
        try:
            value = token_file.read_text().strip()
        except OSError as error:
            raise UsageError(f"Cannot read the token file {token_file}: {error.strerror}") from None
        if not value:
            raise UsageError(f"The token file {token_file} is empty.")
        return value
    value = os.environ.get(TOKEN_ENV, "").strip()
    if not value:
        raise UsageError(f"No token: set {TOKEN_ENV} or pass --token-file PATH.")
    return value


class BarReporter:
    """Turns `Progress` events into a rich bar: bytes, rate and ETA. Rate counts only
    bytes sent by this run (a resumed upload starts its bar where the service was)."""

    def __init__(self, bar: Progress, file_name: str) -> None:
        self.bar = bar
        self.file_name = file_name
        self.hash_task: TaskID | None = None
        self.send_task: TaskID | None = None

    def __call__(self, event: UploadProgress) -> None:
        if event.phase == "hashing":
            if self.hash_task is None:
                self.hash_task = self.bar.add_task("checksum", total=event.total_bytes)
            self.bar.update(self.hash_task, completed=event.done_bytes)
            return
        if self.hash_task is not None:
            self.bar.update(self.hash_task, visible=False)
        if self.send_task is None:
            self.send_task = self.bar.add_task(
                self.file_name, total=event.total_bytes, completed=event.done_bytes
            )
        label = {"completing": "completing", "done": "done"}.get(event.phase, self.file_name)
        self.bar.update(self.send_task, completed=event.done_bytes, description=label)


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="The audio file to upload.", show_default=False)],
    file_id: Annotated[
        int, typer.Option("--file-id", help="main_service_file_id of the file.", min=1)
    ],
    url: Annotated[
        str, typer.Option("--url", envvar=URL_ENV, help="Base URL of the upload service.")
    ] = DEFAULT_BASE_URL,
    chunk_size: Annotated[
        str | None,
        typer.Option(
            "--chunk-size", help="Bytes per chunk (8M, 512k...). Default 8M, more for huge files."
        ),
    ] = None,
    parallel: Annotated[
        int, typer.Option("--parallel", min=1, max=64, help="Chunks in flight at once.")
    ] = DEFAULT_PARALLEL,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help=f"File holding the token (else ${TOKEN_ENV})."),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="The token itself (visible in `ps`: avoid).")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="File name to declare (default: FILE's name).")
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="Where resume records live.", show_default=False),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore any saved session; upload afresh.")
    ] = False,
    retries: Annotated[
        int, typer.Option("--retries", min=1, max=100, help="Attempts per request.")
    ] = RetryPolicy.max_attempts,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress or notices; print the URL.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result (or the error) as JSON.")
    ] = False,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Allow sending the token over plain http to a non-loopback host."
        ),
    ] = False,
) -> None:
    """Upload FILE to the audio upload service in parallel chunks, resumably."""
    err = Console(stderr=True, highlight=False)
    try:
        # Checked before the token is even read; shown even with --quiet.
        insecure_warning = plain_http_warning(url, allow_insecure=insecure)
        if insecure_warning is not None:
            err.print(f"[yellow]{escape(insecure_warning)}[/]", soft_wrap=True)
        start = functools.partial(
            upload_file,
            file,
            file_id,
            resolve_token(token, token_file, err),
            base_url=url,
            chunk_size=parse_size(chunk_size) if chunk_size else None,
            parallel=parallel,
            state_dir=state_dir,
            retry=RetryPolicy(max_attempts=retries),
            file_name=name,
            restart=restart,
            allow_insecure=insecure,
        )
        # --json keeps stdout for the result; notices still go to stderr unless --quiet.
        result = _upload(err, start, file.name, bar=not (quiet or as_json), notices=not quiet)
    except UploadError as error:
        _fail(err, error, as_json)
    if as_json:
        print(json.dumps({"status": "success", **result}))
    elif quiet:
        print(result["file_path_on_upload_service"])
    else:
        print(result["file_path_on_upload_service"])
        err.print(
            f"[green]Uploaded[/] {file.name}: {result['size']} bytes, sha256 "
            f"{result['sha256']}, {result['chunks_sent']} chunks sent, "
            f"{result['chunks_skipped']} already there. {result['message']}"
        )


def _upload(
    err: Console,
    start: Callable[..., Awaitable[UploadResult]],
    file_name: str,
    *,
    bar: bool,
    notices: bool,
) -> dict[str, Any]:
    """Runs `start(on_progress=..., on_notice=...)`, showing what is asked for on stderr."""

    def notice(text: str) -> None:
        if notices:
            err.print(f"[cyan]{escape(text)}[/]", soft_wrap=True)

    async def go(on_progress: Callable[[UploadProgress], None] | None) -> dict[str, Any]:
        result = await start(on_progress=on_progress, on_notice=notice)
        return result.to_dict()

    try:
        if not bar:
            return asyncio.run(go(None))
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=err, transient=False) as progress:
            return asyncio.run(go(BarReporter(progress, file_name)))
    except KeyboardInterrupt:
        raise UploadInterrupted(
            "Interrupted. Run the same command again to resume where it stopped."
        ) from None


def _fail(err: Console, error: UploadError, as_json: bool) -> None:
    hint = HINTS.get(type(error).__name__)
    err.print(f"[red]error:[/] {escape(error.message)}", soft_wrap=True)
    if hint:
        err.print(hint, markup=False, soft_wrap=True)
    if as_json:
        body = {
            "status": "error",
            "exit_code": error.exit_code,
            "error": {
                "kind": type(error).__name__,
                "message": error.message,
                "http_status": error.status,
                "code": error.code,
                "details": error.details,
            },
        }
        print(json.dumps(body))
    raise typer.Exit(error.exit_code)


def main() -> None:
    app(prog_name="audio-upload")


if __name__ == "__main__":
    main()
