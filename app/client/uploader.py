"""Upload one file: init -> chunks in parallel -> complete, resuming where a previous run
stopped.

Invariants:
* The session id is written to the state file before any chunk is sent, so a crash at
  any later point resumes the same session.
* On resume the service says which chunks it holds (`GET /upload/{id}`); only the others
  are read and sent. A session that expired, was aborted or is unknown to this token is
  replaced by a fresh one (announced through `on_notice`).
* Each chunk is read from disk when its turn comes and hashed before it is sent
  (`chunk_sha256`), so at most `parallel` chunks are in memory; the whole-file SHA-256 is
  declared at init and again at complete, so the service refuses a changed file.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from app.client.api import ServiceClient
from app.client.errors import RejectedError, SessionGoneError, UsageError
from app.client.files import choose_chunk_size, chunk_count, file_sha256, read_chunk
from app.client.retry import RetryPolicy
from app.client.state import FileIdentity, StateStore, UploadState

log = logging.getLogger("app.client")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_PARALLEL = 4

Phase = Literal["hashing", "uploading", "completing", "done"]


@dataclass(frozen=True)
class Progress:
    phase: Phase
    done_bytes: int
    total_bytes: int
    chunks_done: int
    chunks_total: int
    # Bytes the service already held when this run started (resumed, not sent now).
    resumed_bytes: int = 0


@dataclass(frozen=True)
class UploadResult:
    session_id: str
    url: str  # the service's `file_path_on_upload_service`
    bucket: str
    key: str
    size_bytes: int
    sha256: str
    content_type: str
    message: str
    chunks_sent: int  # by this run
    chunks_skipped: int  # already held by the service
    resumed: bool
    elapsed_seconds: float
    data: dict[str, Any] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "upload_session_id": self.session_id,
            "file_path_on_upload_service": self.url,
            "bucket": self.bucket,
            "key": self.key,
            "size": self.size_bytes,
            "sha256": self.sha256,
            "content_type": self.content_type,
            "message": self.message,
            "chunks_sent": self.chunks_sent,
            "chunks_skipped": self.chunks_skipped,
            "resumed": self.resumed,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


ProgressCallback = Callable[[Progress], None]
NoticeCallback = Callable[[str], None]


def plain_http_warning(base_url: str, *, allow_insecure: bool) -> str | None:
    """The token is a bearer credential: over plain http anyone on the path can replay it.
    Loopback is fine (development); any other host needs https, or `allow_insecure`
    (`--insecure`), and then this returns the warning to show. Raises UsageError when
    refused, before anything is sent."""
    url = httpx.URL(base_url)
    if url.scheme != "http" or _is_loopback(url.host):
        return None
    if not allow_insecure:
        raise UsageError(
            f"Refusing to send the token over plain http to {url.host}: use https://, "
            "or pass --insecure if this network is trusted."
        )
    return f"warning: the token is sent over plain http to {url.host} (--insecure)."


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AsyncUploader:
    """Uploads files to one service with one token; reusable for several files."""

    def __init__(
        self,
        token: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        chunk_size: int | None = None,
        parallel: int = DEFAULT_PARALLEL,
        state_dir: Path | None = None,
        retry: RetryPolicy | None = None,
        on_progress: ProgressCallback | None = None,
        on_notice: NoticeCallback | None = None,
        timeout_seconds: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
        allow_insecure: bool = False,
    ) -> None:
        if not token.strip():
            raise UsageError("No token given.")
        insecure = plain_http_warning(base_url, allow_insecure=allow_insecure)
        if insecure is not None:
            log.warning("client.%s", insecure)
        if parallel < 1:
            raise UsageError("parallel must be at least 1.")
        if chunk_size is not None and chunk_size < 1:
            raise UsageError("chunk_size must be at least 1 byte.")
        self.token = token.strip()
        self.base_url = base_url.rstrip("/")
        self.chunk_size = chunk_size
        self.parallel = parallel
        self.states = StateStore(state_dir)
        self.retry = retry or RetryPolicy()
        self.on_progress = on_progress
        self.on_notice = on_notice or (lambda text: log.info("client.notice %s", text))
        self.timeout_seconds = timeout_seconds
        self.transport = transport

    async def upload(
        self,
        path: str | Path,
        file_id: int,
        *,
        file_name: str | None = None,
        restart: bool = False,
    ) -> UploadResult:
        """Upload `path` for `main_service_file_id` `file_id`; with `restart`, ignore any
        saved session and start a new one."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"Not a readable file: {path}")
        if file_id < 1:
            raise UsageError("file_id must be a positive integer.")
        identity = FileIdentity.of(path, file_id, self.base_url)
        with self.states.lock(identity):
            run = _Run(self, path, identity, file_name or path.name)
            return await run.execute(restart=restart)


class _Run:
    """The state of one upload while it runs."""

    def __init__(
        self, owner: AsyncUploader, path: Path, identity: FileIdentity, file_name: str
    ) -> None:
        self.owner = owner
        self.path = path
        self.identity = identity
        self.file_name = file_name
        self.size_bytes = identity.size_bytes
        self.started = time.monotonic()
        self.confirmed_bytes = 0
        self.resumed_bytes = 0
        self.in_flight: dict[int, int] = {}
        self.chunks_done = 0
        self.chunks_total = 0

    async def execute(self, *, restart: bool) -> UploadResult:
        states = self.owner.states
        state = None if restart else states.load(self.identity)
        if state is not None and state.result is not None:
            self.owner.on_notice(
                f"Already uploaded in session {state.session_id}; not sending it again "
                "(use restart to upload a new copy)."
            )
            return self._result(state, "Already uploaded.", sent=0, skipped=state.total_chunks)

        async with ServiceClient(
            self.owner.base_url,
            self.owner.token,
            retry=self.owner.retry,
            timeout_seconds=self.owner.timeout_seconds,
            transport=self.owner.transport,
        ) as client:
            received: set[int] = set()
            resumed = False
            if state is not None:
                state, received, finished = await self._resume(client, state)
                if finished is not None:
                    return finished
                resumed = state is not None
            if state is None:
                state = await self._start(client)

            missing = [i for i in range(state.total_chunks) if i not in received]
            self.chunks_total = state.total_chunks
            self.chunks_done = len(received)
            self.confirmed_bytes = self.resumed_bytes = sum(
                self._chunk_length(state, i) for i in received
            )
            self._report("uploading")
            await self._send_chunks(client, state, received, missing)

            self._report("completing")
            message, data = await client.complete(
                {
                    "upload_session_id": state.session_id,
                    "total_chunks": state.total_chunks,
                    "main_service_file_id": self.identity.file_id,
                    "sha256": state.sha256,
                }
            )
            state.result = data
            states.save(state)
            self._report("done")
            skipped = state.total_chunks - len(missing)
            return self._result(state, message, sent=len(missing), skipped=skipped, resumed=resumed)

    async def _resume(
        self, client: ServiceClient, state: UploadState
    ) -> tuple[UploadState | None, set[int], UploadResult | None]:
        try:
            status = await client.status(state.session_id)
        except SessionGoneError as gone:
            self.owner.on_notice(
                f"Session {state.session_id} cannot be resumed ({gone.code}); "
                "starting a new upload."
            )
            return None, set(), None
        session_state = str(status.get("state"))
        if session_state == "completed" and isinstance(status.get("result"), dict):
            state.result = status["result"]
            self.owner.states.save(state)
            return (
                state,
                set(),
                self._result(
                    state,
                    "Already uploaded.",
                    sent=0,
                    skipped=state.total_chunks,
                    resumed=True,
                ),
            )
        if session_state not in ("uploading", "completing"):
            self.owner.on_notice(
                f"Session {state.session_id} is {session_state}; starting a new upload."
            )
            return None, set(), None
        received = {
            int(i) for i in status.get("received_chunks", []) if 0 <= int(i) < state.total_chunks
        }
        self.owner.on_notice(
            f"Resuming session {state.session_id}: the service holds {len(received)} of "
            f"{state.total_chunks} chunks."
        )
        return state, received, None

    async def _start(self, client: ServiceClient) -> UploadState:
        hashed = 0

        def on_read(block_bytes: int) -> None:
            nonlocal hashed
            hashed += block_bytes
            self.confirmed_bytes = hashed
            self._report("hashing")

        self._report("hashing")
        sha256 = await asyncio.to_thread(file_sha256, self.path, on_read)
        chunk_size = choose_chunk_size(self.size_bytes, self.owner.chunk_size)
        total_chunks = chunk_count(self.size_bytes, chunk_size)
        data = await client.init(
            {
                "main_service_file_id": self.identity.file_id,
                "original_file_name": self.file_name,
                "total_size": self.size_bytes,
                "total_chunks": total_chunks,
                "chunk_size": chunk_size,
                "sha256": sha256,
            }
        )
        state = UploadState(
            identity=self.identity,
            session_id=str(data["upload_session_id"]),
            chunk_size_bytes=chunk_size,
            total_chunks=total_chunks,
            sha256=sha256,
        )
        self.owner.states.save(state)
        return state

    async def _send_chunks(
        self, client: ServiceClient, state: UploadState, received: set[int], missing: list[int]
    ) -> None:
        pending = iter(missing)

        async def worker() -> None:
            # One shared iterator: each index is taken by exactly one worker.
            for index in pending:
                await self._send_one(client, state, index)
                received.add(index)
                state.received_chunks = sorted(received)
                self.owner.states.save(state)

        workers = [
            asyncio.create_task(worker()) for _ in range(min(self.owner.parallel, len(missing)))
        ]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise

    async def _send_one(self, client: ServiceClient, state: UploadState, index: int) -> None:
        data, digest = await asyncio.to_thread(self._read_and_hash, state, index)

        def on_sent(sent_bytes: int) -> None:
            self.in_flight[index] = sent_bytes
            self._report("uploading")

        try:
            answer = await client.chunk(state.session_id, index, data, digest, on_sent)
        finally:
            self.in_flight.pop(index, None)
        if answer.get("size") not in (None, len(data)):
            raise RejectedError(f"chunk {index}: the service stored a different size")
        self.confirmed_bytes += len(data)
        self.chunks_done += 1
        self._report("uploading")

    def _read_and_hash(self, state: UploadState, index: int) -> tuple[bytes, str]:
        data = read_chunk(self.path, index, state.chunk_size_bytes)
        if len(data) != self._chunk_length(state, index):
            raise UsageError(f"{self.path} changed while it was being uploaded.")
        return data, hashlib.sha256(data).hexdigest()

    def _chunk_length(self, state: UploadState, index: int) -> int:
        start = index * state.chunk_size_bytes
        return max(0, min(state.chunk_size_bytes, self.size_bytes - start))

    def _report(self, phase: Phase) -> None:
        if self.owner.on_progress is None:
            return
        if phase == "hashing":
            done, chunks_done, chunks_total = self.confirmed_bytes, 0, 0
        else:
            done = self.confirmed_bytes + sum(self.in_flight.values())
            chunks_done, chunks_total = self.chunks_done, self.chunks_total
        self.owner.on_progress(
            Progress(
                phase=phase,
                done_bytes=min(done, self.size_bytes),
                total_bytes=self.size_bytes,
                chunks_done=chunks_done,
                chunks_total=chunks_total,
                resumed_bytes=self.resumed_bytes,
            )
        )

    def _result(
        self,
        state: UploadState,
        message: str,
        *,
        sent: int,
        skipped: int,
        resumed: bool = True,
    ) -> UploadResult:
        data = state.result or {}
        return UploadResult(
            session_id=state.session_id,
            url=str(data.get("file_path_on_upload_service", "")),
            bucket=str(data.get("bucket", "")),
            key=str(data.get("key", "")),
            size_bytes=int(data.get("size", state.identity.size_bytes)),
            sha256=str(data.get("sha256", state.sha256)),
            content_type=str(data.get("content_type", "")),
            message=message,
            chunks_sent=sent,
            chunks_skipped=skipped,
            resumed=resumed,
            elapsed_seconds=time.monotonic() - self.started,
            data=data,
        )


async def upload_file(
    path: str | Path,
    file_id: int,
    token: str,
    *,
    base_url: str = DEFAULT_BASE_URL,
    chunk_size: int | None = None,
    parallel: int = DEFAULT_PARALLEL,
    state_dir: Path | None = None,
    on_progress: ProgressCallback | None = None,
    on_notice: NoticeCallback | None = None,
    retry: RetryPolicy | None = None,
    file_name: str | None = None,
    restart: bool = False,
    allow_insecure: bool = False,
) -> UploadResult:
    uploader = AsyncUploader(
        token,
        base_url=base_url,
        allow_insecure=allow_insecure,
        chunk_size=chunk_size,
        parallel=parallel,
        state_dir=state_dir,
        retry=retry,
        on_progress=on_progress,
        on_notice=on_notice,
    )
    return await uploader.upload(path, file_id, file_name=file_name, restart=restart)


def upload(
    path: str | Path,
    file_id: int,
    token: str,
    *,
    base_url: str = DEFAULT_BASE_URL,
    chunk_size: int | None = None,
    parallel: int = DEFAULT_PARALLEL,
    state_dir: Path | None = None,
    on_progress: ProgressCallback | None = None,
    on_notice: NoticeCallback | None = None,
    retry: RetryPolicy | None = None,
    file_name: str | None = None,
    restart: bool = False,
    allow_insecure: bool = False,
) -> UploadResult:
    """The blocking form of `upload_file`, for scripts without an event loop."""
    return asyncio.run(
        upload_file(
            path,
            file_id,
            token,
            base_url=base_url,
            chunk_size=chunk_size,
            parallel=parallel,
            state_dir=state_dir,
            on_progress=on_progress,
            on_notice=on_notice,
            retry=retry,
            file_name=file_name,
            restart=restart,
            allow_insecure=allow_insecure,
        )
    )
