"""The benchmark suite: `./bench/run` (or `.venv/bin/python -m bench`).

Starts a loopback moto S3 server, the upload service, a bare FastAPI endpoint and
tus-node-server, each as its users run it (bench.servers), drives them with
bench.loadgen, and writes medians and ratios to bench/results/ (markdown and JSON). See
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from app.dev.keys import KeyPair
from app.dev.s3server import LocalS3Server
from bench.loadgen import Connection, MultipartChunk
from bench.servers import (
    BEFORE_ENV,
    GRANIAN,
    PRODUCTION_ARGS,
    SERVICE_SERVERS,
    UNTUNED_APP,
    Process,
    UploadServiceConfig,
    cpu_description,
    cpu_seconds_of,
    install_tus,
    logged_since,
    service_command,
    start_bare,
    start_tus,
    start_upload_service,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PHASES = ("ingest", "complete", "rss", "tus", "replicas")
# Run only when named in --phases (not part of a full run): the service under each of
# --service-servers, side by side.
EXTRA_PHASES = ("servers",)
# tus uploads need a name and a file id at our service; tus-node gets the same header.
TUS_METADATA = "filename YmVuY2gud2F2,main_service_file_id Nw=="  # bench.wav, 7
REQUEST_PATH_APP = "bench.request_path_app:app"


def mb_per_s(size_bytes: int, seconds: float) -> float:
    return size_bytes / seconds / 1e6


def wav_file(size_bytes: int) -> bytes:
    """A real (if noisy) WAV file: a PCM header, then pseudo-random 16-bit samples."""
    data_bytes = size_bytes - 44
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 2, 44100, 44100 * 4, 4, 16)
    header += b"data" + struct.pack("<I", data_bytes)
    block = uuid.uuid4().bytes * (MiB // 16)
    blocks, rest = divmod(data_bytes, len(block))
    return header + block * blocks + block[:rest]


class Client:
    """The upload API over raw sockets."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.auth = {"Authorization": f"Bearer {token}"}

    async def init(self, conn: Connection, name: str = "bench.wav") -> str:
        body = json.dumps({"main_service_file_id": 7, "original_file_name": name}).encode()
        response = await conn.request(
            "POST", "/upload/init", {**self.auth, "Content-Type": "application/json"}, [body]
        )
        assert response.status == 200, response.body
        return str(response.json()["data"]["upload_session_id"])

    async def chunk(
        self, conn: Connection, session_id: str, index: int, payload: bytes | memoryview
    ) -> None:
        response = await conn.request(
            "POST",
            "/upload/chunk",
            {**self.auth, "Content-Type": MultipartChunk.content_type()},
            MultipartChunk.parts(session_id, index, payload),
        )
        assert response.status == 200, response.body

    async def complete(self, conn: Connection, session_id: str, total_chunks: int) -> Any:
        body = json.dumps(
            {
                "upload_session_id": session_id,
                "total_chunks": total_chunks,
                "main_service_file_id": 7,
            }
        ).encode()
        response = await conn.request(
            "POST", "/upload/complete", {**self.auth, "Content-Type": "application/json"}, [body]
        )
        assert response.status == 200, response.body
        return response.json()

    async def abort(self, session_id: str) -> None:
        # A fresh connection: the server may have closed an idle keep-alive one.
        conn = await Connection("127.0.0.1", self.port).open()
        response = await conn.request("DELETE", f"/upload/{session_id}", self.auth)
        assert response.status in (200, 409), response.body
        await conn.close()


# ----------------------------------------------------------------------- workloads
async def ingest_service(
    port: int, token: str, total_bytes: int, payload: memoryview, clients: int
) -> float:
    """Each client uploads its share of `total_bytes` as one session, chunk after chunk
    (each chunk the same `payload`: real audio, so eager flush, on by default, runs).
    Sessions are opened before and aborted after the timed part."""
    api = Client(port, token)
    chunk_bytes = len(payload)
    per_client = total_bytes // clients // chunk_bytes
    conns = [await Connection("127.0.0.1", port).open() for _ in range(clients)]
    sessions = [await api.init(conn) for conn in conns]

    async def run(conn: Connection, session_id: str) -> None:
        for index in range(per_client):
            await api.chunk(conn, session_id, index, payload)

    started = time.perf_counter()
    await asyncio.gather(*(run(c, s) for c, s in zip(conns, sessions, strict=True)))
    elapsed = time.perf_counter() - started
    for conn, session_id in zip(conns, sessions, strict=True):
        await api.abort(session_id)
        await conn.close()
    return mb_per_s(per_client * clients * chunk_bytes, elapsed)


async def ingest_bare(port: int, total_bytes: int, payload: memoryview, clients: int) -> float:
    chunk_bytes = len(payload)
    per_client = total_bytes // clients // chunk_bytes
    conns = [await Connection("127.0.0.1", port).open() for _ in range(clients)]
    headers = {"Authorization": "Bearer x", "Content-Type": MultipartChunk.content_type()}

    async def run(conn: Connection, client: int) -> None:
        session_id = str(uuid.UUID(int=client))
        for index in range(per_client):
            response = await conn.request(
                "POST", "/upload/chunk", headers, MultipartChunk.parts(session_id, index, payload)
            )
            assert response.status == 200

    started = time.perf_counter()
    await asyncio.gather(*(run(c, i) for i, c in enumerate(conns)))
    elapsed = time.perf_counter() - started
    for conn in conns:
        await conn.close()
    return mb_per_s(per_client * clients * chunk_bytes, elapsed)


async def ingest_tus_payload(
    port: int, total_bytes: int, payload: memoryview, clients: int
) -> float:
    """`ingest_tus` with the chunk size of the payload the other servers get."""
    return await ingest_tus(port, total_bytes, len(payload), clients)


async def ingest_tus(
    port: int,
    total_bytes: int,
    chunk_bytes: int,
    clients: int,
    *,
    headers: dict[str, str] | None = None,
    leave_open: bool = False,
) -> float:
    """One tus upload per client; its chunks are PATCHes in order (tus' own rule).
    `chunk_bytes` 0: one PATCH for the client's whole share (tus-js-client's default).
    `leave_open`: declare one byte more than is sent, so neither server completes the
    upload (this is ingest; completion is measured apart), and delete it afterwards."""
    tus = {"Tus-Resumable": "1.0.0", **(headers or {})}
    if chunk_bytes == 0:
        chunk_bytes = total_bytes // clients
    payload = memoryview(bytes(chunk_bytes))
    per_client = total_bytes // clients // chunk_bytes
    upload_length = per_client * chunk_bytes + (1 if leave_open else 0)
    conns = [await Connection("127.0.0.1", port).open() for _ in range(clients)]
    locations = []
    for conn in conns:
        created = await conn.request("POST", "/files", {**tus, "Upload-Length": str(upload_length)})
        assert created.status == 201, created.body
        location = created.headers["location"]
        locations.append("/" + location.split("/", 3)[-1] if "://" in location else location)

    async def run(conn: Connection, path: str) -> None:
        for index in range(per_client):
            response = await conn.request(
                "PATCH",
                path,
                {
                    **tus,
                    "Upload-Offset": str(index * chunk_bytes),
                    "Content-Type": "application/offset+octet-stream",
                },
                [payload],
            )
            assert response.status == 204, (response.status, response.body)

    started = time.perf_counter()
    await asyncio.gather(*(run(c, p) for c, p in zip(conns, locations, strict=True)))
    elapsed = time.perf_counter() - started
    for conn, path in zip(conns, locations, strict=True):
        if leave_open:
            deleted = await conn.request("DELETE", path, tus)
            assert deleted.status == 204, deleted.body
        await conn.close()
    return mb_per_s(per_client * clients * chunk_bytes, elapsed)


async def upload_and_complete(
    port: int, token: str, data: bytes, chunk_bytes: int, clients: int
) -> dict[str, float]:
    """One session, `clients` connections sending its chunks in parallel, then complete.
    Returns the seconds from the last chunk's acknowledgement to the complete response,
    and the end-to-end MB/s (init -> complete)."""
    api = Client(port, token)
    view = memoryview(data)
    total_chunks = -(-len(data) // chunk_bytes)
    conns = [await Connection("127.0.0.1", port).open() for _ in range(clients)]
    started = time.perf_counter()
    session_id = await api.init(conns[0])
    next_index = iter(range(total_chunks))
    last_ack = started

    async def run(conn: Connection) -> None:
        nonlocal last_ack
        for index in next_index:
            await api.chunk(
                conn, session_id, index, view[index * chunk_bytes : (index + 1) * chunk_bytes]
            )
            last_ack = max(last_ack, time.perf_counter())

    await asyncio.gather(*(run(c) for c in conns))
    acked = time.perf_counter()
    result = await api.complete(conns[0], session_id, total_chunks)
    finished = time.perf_counter()
    assert result["data"]["size"] == len(data)
    for conn in conns:
        await conn.close()
    return {
        "complete_seconds": finished - acked,
        "end_to_end_mb_s": mb_per_s(len(data), finished - started),
    }


async def put_object(s3: LocalS3Server, bucket: str, data: bytes) -> float:
    """The S3 server's own PutObject throughput: one PUT of the whole body."""
    conn = await Connection("127.0.0.1", s3.port).open()
    started = time.perf_counter()
    response = await conn.request(
        "PUT", f"/{bucket}/putobject-{uuid.uuid4().hex}", {"Content-Type": "audio/wav"}, [data]
    )
    elapsed = time.perf_counter() - started
    assert response.status == 200, response.body
    await conn.close()
    return mb_per_s(len(data), elapsed)


async def multipart_object(
    s3: LocalS3Server, bucket: str, data: bytes, part_bytes: int, concurrency: int
) -> dict[str, float]:
    """The S3 server's own multipart throughput for the same bytes: create, the parts
    `concurrency` at a time, complete. Raw unsigned requests, like `put_object`; also
    returns how long CompleteMultipartUpload alone took (the commit a service pays last)."""

    async def once(method: str, path: str, body: Sequence[bytes | memoryview] = ()) -> Any:
        # moto closes the connection after each response: one connection per request.
        conn = await Connection("127.0.0.1", s3.port).open()
        try:
            response = await conn.request(method, path, {}, body)
        finally:
            await conn.close()
        assert response.status == 200, response.body
        return response

    key = f"/{bucket}/multipart-{uuid.uuid4().hex}"
    view = memoryview(data)
    started = time.perf_counter()
    created = await once("POST", f"{key}?uploads")
    found = re.search(rb"<UploadId>([^<]+)</UploadId>", created.body)
    assert found is not None, created.body
    upload_id = found.group(1).decode()
    part_count = -(-len(data) // part_bytes)
    etags: dict[int, str] = {}
    numbers = iter(range(1, part_count + 1))

    async def send() -> None:
        for number in numbers:
            part = view[(number - 1) * part_bytes : number * part_bytes]
            response = await once("PUT", f"{key}?partNumber={number}&uploadId={upload_id}", [part])
            etags[number] = response.headers["etag"]

    await asyncio.gather(*(send() for _ in range(concurrency)))
    listing = "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{etags[n]}</ETag></Part>"
        for n in range(1, part_count + 1)
    )
    body = f"<CompleteMultipartUpload>{listing}</CompleteMultipartUpload>".encode()
    committing = time.perf_counter()
    await once("POST", f"{key}?uploadId={upload_id}", [body])
    finished = time.perf_counter()
    return {
        "mb_s": mb_per_s(len(data), finished - started),
        "complete_seconds": finished - committing,
    }


IDLE_LATER_SECONDS = 20.0


async def peak_rss(
    service: Process, token: str, streams: int, chunk_bytes: int, rounds: int
) -> dict[str, int]:
    """`streams` connections (one session each) sending `chunk_bytes` chunks at once; the
    peak includes the background work those chunks start (eager flush), read once the
    process has gone idle."""
    baseline = service.rss_bytes()
    api = Client(service.port, token)
    # Real audio at the head, or eager flush would (rightly) refuse to start an upload.
    payload = memoryview(wav_file(chunk_bytes))
    conns = [await Connection("127.0.0.1", service.port).open() for _ in range(streams)]
    sessions = [await api.init(conn) for conn in conns]
    sampled = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal sampled
        while not stop.is_set():
            sampled = max(sampled, service.rss_bytes())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    async def run(conn: Connection, session_id: str) -> None:
        for index in range(rounds):
            await api.chunk(conn, session_id, index, payload)

    await asyncio.gather(*(run(c, s) for c, s in zip(conns, sessions, strict=True)))
    await until_idle(service)
    stop.set()
    sampler.join()
    peak = service.peak_rss_bytes()
    idle_after = service.rss_bytes()
    # A fixed time later, not a wait for something: the service gives a burst's memory
    # back once it has been quiet for one of its 5 s intervals (app.main.IdleHeapTrimmer).
    await asyncio.sleep(IDLE_LATER_SECONDS)
    idle_later = service.rss_bytes()
    for conn, session_id in zip(conns, sessions, strict=True):
        await api.abort(session_id)
        await conn.close()
    return {
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "sampled_max_rss_bytes": sampled,
        "idle_after_rss_bytes": idle_after,
        "idle_later_rss_bytes": idle_later,
    }


async def until_idle(process: Process, *, timeout_seconds: float = 120.0) -> None:
    """Returns once the process used under 2% of a core over a quarter second."""
    deadline = time.monotonic() + timeout_seconds
    before = process.cpu_seconds()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = process.cpu_seconds()
        if now - before < 0.005:
            return
        before = now
    raise TimeoutError(f"{process.name} did not go idle within {timeout_seconds} s")


# ------------------------------------------------------------------------- driver
def s3_cpu_seconds(s3: LocalS3Server) -> float:
    return cpu_seconds_of(s3.process.pid) if s3.process is not None else 0.0


def median(values: list[float]) -> float:
    return float(statistics.median(values))


async def repeat(runs: int, make: Callable[[], Awaitable[float]]) -> list[float]:
    return [await make() for _ in range(runs)]


def clean_dir(path: Path) -> None:
    if path.exists():
        for child in path.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    runs = args.runs
    ingest_bytes = args.ingest_mib * MiB
    work_dir = Path(tempfile.mkdtemp(prefix="upload-bench-"))
    keypair = KeyPair.generate()
    token = keypair.token("bench-user")
    s3 = LocalS3Server().start()
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    processes: list[Process] = []
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": cpu_description(),
        "python": platform.python_version(),
        "runs": runs,
        "ingest_bytes": ingest_bytes,
        "service_command": " ".join(
            ("uvicorn app.main:app --host 127.0.0.1 --port PORT", *PRODUCTION_ARGS)
        ),
        "load_average_at_start": os.getloadavg(),
        "tus_bytes": args.tus_mib * MiB,
        "ingest": [],
    }
    try:
        tus_dir = install_tus(Path(__file__).resolve().parent / ".tus")
        # The ingest figures' processes, by column: the service as shipped (eager flush at
        # its default, on), the same with eager flush off (the chunk path alone, as earlier
        # runs measured it), optionally the service as shipped before it tuned malloc
        # (--malloc-ab), its request path without hashing or writing, the bare endpoint
        # under each server asked for, and tus-node.
        servers: dict[str, Process] = {}
        if "ingest" in args.phases:
            servers["service"] = start_upload_service(
                UploadServiceConfig(keypair, s3, bucket, work_dir)
            )
            servers["no_eager"] = start_upload_service(
                UploadServiceConfig(keypair, s3, bucket, work_dir, eager_flush=False)
            )
            for name, eager in (("before", None), ("before_no_eager", False)):
                if args.malloc_ab:
                    servers[name] = start_upload_service(
                        UploadServiceConfig(
                            *(keypair, s3, bucket, work_dir),
                            eager_flush=eager,
                            asgi_app=UNTUNED_APP,
                            extra_env=BEFORE_ENV,
                        )
                    )
            servers["path"] = start_upload_service(
                UploadServiceConfig(
                    keypair, s3, bucket, work_dir, eager_flush=False, asgi_app=REQUEST_PATH_APP
                )
            )
            for server in args.bare_servers:
                servers[f"bare_{server}"] = start_bare(work_dir, server=server)
            servers["tus"] = start_tus(tus_dir, work_dir / "tus-files")
        processes += servers.values()
        tus_files = work_dir / "tus-files"

        # ---- chunk ingest: every process above, interleaved per run
        for chunk_mib in args.chunk_mib if "ingest" in args.phases else []:
            payload = memoryview(wav_file(chunk_mib * MiB))
            for clients in args.clients:
                figures: dict[str, list[float]] = {name: [] for name in servers}
                cpu: dict[str, list[float]] = {name: [] for name in servers}
                # The local S3 server's CPU while each process' figure ran: only the
                # service as shipped sends it anything (eager flush's parts), and on these
                # 2 cores it is taken from the same budget (bench/README.md, "Floors").
                s3_cpu: dict[str, list[float]] = {name: [] for name in servers}
                faults: dict[str, list[float]] = {name: [] for name in servers}
                load_before = os.getloadavg()
                for _ in range(runs):
                    for name, process in servers.items():
                        ingest: Callable[[int, memoryview, int], Awaitable[float]]
                        if name.startswith("bare_"):
                            ingest = partial(ingest_bare, process.port)
                        elif name == "tus":
                            ingest = partial(ingest_tus_payload, process.port)
                        else:
                            ingest = partial(ingest_service, process.port, token)
                        cpu_before = process.cpu_seconds()
                        s3_cpu_before = s3_cpu_seconds(s3)
                        faults_before = process.minor_faults()
                        figures[name].append(await ingest(ingest_bytes, payload, clients))
                        # The CPU of what the chunks started (eager flush's parts) counts,
                        # and must not run into the next process' figure.
                        await until_idle(process)
                        cpu[name].append(
                            (process.cpu_seconds() - cpu_before) / (ingest_bytes / GiB)
                        )
                        s3_cpu[name].append(
                            (s3_cpu_seconds(s3) - s3_cpu_before) / (ingest_bytes / GiB)
                        )
                        faults[name].append(
                            (process.minor_faults() - faults_before) / (ingest_bytes / 4096)
                        )
                    clean_dir(tus_files)
                row: dict[str, Any] = {
                    "chunk_mib": chunk_mib,
                    "clients": clients,
                    **{f"{k}_mb_s": median(v) for k, v in figures.items()},
                    **{f"{k}_cpu_s_per_gib": median(v) for k, v in cpu.items()},
                    **{f"{k}_faults_per_page": median(v) for k, v in faults.items()},
                    "s3_cpu_s_per_gib": median(s3_cpu["service"]),
                    "samples": figures,
                    "cpu_samples": cpu,
                    "s3_cpu_samples": s3_cpu,
                    "fault_samples": faults,
                    "load_average_before": load_before,
                    "load_average_after": os.getloadavg(),
                }
                for name in servers:
                    if name != "tus":
                        row[f"{name}_over_tus"] = row[f"{name}_mb_s"] / row["tus_mb_s"]
                bare = f"bare_{args.bare_servers[0]}"
                row["service_over_bare"] = row["service_mb_s"] / row[f"{bare}_mb_s"]
                results["ingest"].append(row)
                print(
                    f"ingest {chunk_mib:>2} MiB x {clients}: "
                    + ", ".join(f"{name} {row[f'{name}_mb_s']:.0f}" for name in servers)
                    + f" MB/s (service x{row['service_over_tus']:.2f} tus,"
                    f" eager off x{row['no_eager_over_tus']:.2f});"
                    f" load {load_before[0]:.1f} -> {row['load_average_after'][0]:.1f}",
                    flush=True,
                )
        for process in servers.values():
            process.stop()

        # ---- tus ingest: our tus endpoint (auth, database, SHA-256) vs tus-node's file
        # store, the same raw-socket tus client, PATCHes of 1 MiB, 8 MiB, the whole file
        results["tus"] = []
        if "tus" in args.phases:
            service = start_upload_service(UploadServiceConfig(keypair, s3, bucket, work_dir))
            tus_files = work_dir / "tus-files-2"
            tus = start_tus(tus_dir, tus_files)
            bare_tus = start_bare(work_dir)
            processes += [service, tus, bare_tus]
            ours = {"Authorization": f"Bearer {token}", "Upload-Metadata": TUS_METADATA}
            for patch_mib in args.tus_patch_mib:
                for clients in args.tus_clients:
                    pair: tuple[tuple[str, Process, dict[str, str]], ...] = (
                        ("service", service, ours),
                        ("tus", tus, {"Upload-Metadata": TUS_METADATA}),
                        ("bare", bare_tus, {}),
                    )
                    figures = {name: [] for name, _, _ in pair}
                    cpu = {name: [] for name, _, _ in pair}
                    # The rest of the cores' budget: the local S3 server (eager flush only
                    # sends uploads whose head is audio, and this payload is zeros: ~0
                    # unless some other work leaks in) and this process, the client.
                    s3_cpu = {name: [] for name, _, _ in pair}
                    client_cpu: dict[str, list[float]] = {name: [] for name, _, _ in pair}
                    for _ in range(runs):
                        for name, process, headers in pair:
                            cpu_before = process.cpu_seconds()
                            s3_before = s3_cpu_seconds(s3)
                            client_before = time.process_time()
                            figures[name].append(
                                await ingest_tus(
                                    process.port,
                                    args.tus_mib * MiB,
                                    patch_mib * MiB,
                                    clients,
                                    headers=headers,
                                    leave_open=True,
                                )
                            )
                            gib = args.tus_mib * MiB / GiB
                            cpu[name].append((process.cpu_seconds() - cpu_before) / gib)
                            s3_cpu[name].append((s3_cpu_seconds(s3) - s3_before) / gib)
                            client_cpu[name].append((time.process_time() - client_before) / gib)
                        clean_dir(tus_files)
                    row = {
                        "patch_mib": patch_mib,
                        "clients": clients,
                        **{f"{k}_mb_s": median(v) for k, v in figures.items()},
                        **{f"{k}_cpu_s_per_gib": median(v) for k, v in cpu.items()},
                        **{f"{k}_s3_cpu_s_per_gib": median(v) for k, v in s3_cpu.items()},
                        **{f"{k}_client_cpu_s_per_gib": median(v) for k, v in client_cpu.items()},
                        "samples": figures,
                    }
                    row["service_over_tus"] = row["service_mb_s"] / row["tus_mb_s"]
                    row["bare_over_tus"] = row["bare_mb_s"] / row["tus_mb_s"]
                    results["tus"].append(row)
                    size = f"{patch_mib} MiB" if patch_mib else "whole file"
                    print(
                        f"tus PATCH {size} x {clients}: service {row['service_mb_s']:.0f} MB/s,"
                        f" tus-node {row['tus_mb_s']:.0f} (x{row['service_over_tus']:.2f})",
                        flush=True,
                    )
            service.stop()
            tus.stop()
            bare_tus.stop()

        # ---- complete latency and end-to-end, eager flush on and off, beside PutObject
        results["complete"] = []
        for size_mib in args.complete_mib if "complete" in args.phases else []:
            data = wav_file(size_mib * MiB)
            done: dict[str, Any] = {"size_mib": size_mib}
            for eager in (True, False):
                log_path = work_dir / f"service-{size_mib}-{'eager' if eager else 'slow'}.log"
                service = start_upload_service(
                    UploadServiceConfig(
                        keypair, s3, bucket, work_dir, eager_flush=eager, log_path=log_path
                    )
                )
                processes.append(service)
                samples = []
                for _ in range(runs):
                    offset = log_path.stat().st_size
                    sample = await upload_and_complete(
                        service.port, token, data, 8 * MiB, args.complete_clients
                    )
                    # The eager completion logs how long the S3 commit took: what is left
                    # of `complete` is the service's own share (the tail, the waits).
                    logged = (
                        logged_since(log_path, offset, "upload.eager_completed") if eager else None
                    )
                    if logged is not None:
                        sample["commit_seconds"] = float(logged["commit_seconds"])
                    samples.append(sample)
                service.stop()
                label = "eager" if eager else "slow_path"
                done[f"{label}_complete_seconds"] = median([s["complete_seconds"] for s in samples])
                done[f"{label}_end_to_end_mb_s"] = median([s["end_to_end_mb_s"] for s in samples])
                done[f"{label}_samples"] = samples
                commits = [s["commit_seconds"] for s in samples if "commit_seconds" in s]
                if eager and len(commits) == len(samples):
                    done["eager_commit_seconds"] = median(commits)
                    done["eager_own_seconds"] = median(
                        [s["complete_seconds"] - s["commit_seconds"] for s in samples]
                    )
            puts = [await put_object(s3, bucket, data) for _ in range(runs)]
            done["put_object_mb_s"] = median(puts)
            done["put_object_samples"] = puts
            multiparts = [
                await multipart_object(s3, bucket, data, 8 * MiB, args.complete_clients)
                for _ in range(runs)
            ]
            done["multipart_mb_s"] = median([m["mb_s"] for m in multiparts])
            done["multipart_complete_seconds"] = median([m["complete_seconds"] for m in multiparts])
            done["multipart_samples"] = multiparts
            done["eager_end_to_end_over_put_object"] = (
                done["eager_end_to_end_mb_s"] / done["put_object_mb_s"]
            )
            results["complete"].append(done)
            print(
                f"complete {size_mib} MiB: eager {done['eager_complete_seconds']:.2f} s"
                f" (slow path {done['slow_path_complete_seconds']:.2f} s);"
                f" end-to-end {done['eager_end_to_end_mb_s']:.0f} MB/s vs PutObject"
                f" {done['put_object_mb_s']:.0f} MB/s",
                flush=True,
            )
            del data
            # moto keeps objects in memory: drop them between sizes.
            s3_client: Any = s3.client()
            for item in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []):
                s3_client.delete_object(Bucket=bucket, Key=item["Key"])

        # ---- peak RSS of a fresh service at 32 concurrent 16 MiB chunk streams, with the
        # service's default (no eager flush) and with eager flush, which adds part buffers
        results["rss"] = []
        variants = [("shipped", False), ("shipped", True)]
        if args.malloc_ab:
            # two-arenas: as shipped but for the arena count it had until 2026-12-07
            variants += [("before", True), ("two-arenas", True)]
        for variant, eager in variants if "rss" in args.phases else ():
            before = variant == "before"
            variant_env = {"before": BEFORE_ENV, "two-arenas": {"MALLOC_ARENA_MAX": "2"}}
            service = start_upload_service(
                UploadServiceConfig(
                    keypair,
                    s3,
                    bucket,
                    work_dir,
                    eager_flush=eager,
                    asgi_app=UNTUNED_APP if before else "app.main:app",
                    extra_env=variant_env.get(variant, {}),
                )
            )
            processes.append(service)
            figures_rss = await peak_rss(
                service, token, args.rss_streams, 16 * MiB, args.rss_rounds
            )
            service.stop()
            results["rss"].append({"variant": variant, "eager": eager, **figures_rss})
            print(
                f"peak RSS ({args.rss_streams} x 16 MiB, {variant},"
                f" eager {'on' if eager else 'off'}):"
                f" {figures_rss['peak_rss_bytes'] / 1e6:.0f} MB"
                f" (idle before {figures_rss['baseline_rss_bytes'] / 1e6:.0f} MB,"
                f" after {figures_rss['idle_after_rss_bytes'] / 1e6:.0f} MB,"
                f" {IDLE_LATER_SECONDS:.0f} s later"
                f" {figures_rss['idle_later_rss_bytes'] / 1e6:.0f} MB)",
                flush=True,
            )
        if "servers" in args.phases:
            results["servers"] = await compare_servers(
                args, keypair, s3, bucket, work_dir, processes
            )
        if "replicas" in args.phases:
            results["replicas"] = await replicas_phase(args, keypair, s3, work_dir, tus_dir)
        results["load_average_at_end"] = os.getloadavg()
    finally:
        for process in processes:
            process.stop()
        s3.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return results


# ------------------------------------------------------------- servers (issue 16, 3)
async def ingest_service_timed(
    port: int, token: str, requests: int, payload: memoryview, clients: int
) -> tuple[float, list[float]]:
    """`ingest_service` by request count, with each chunk request's latency (seconds,
    from writing its head to reading its whole response)."""
    api = Client(port, token)
    per_client = requests // clients
    conns = [await Connection("127.0.0.1", port).open() for _ in range(clients)]
    sessions = [await api.init(conn) for conn in conns]
    latencies: list[float] = []

    async def run(conn: Connection, session_id: str) -> None:
        for index in range(per_client):
            sent = time.perf_counter()
            await api.chunk(conn, session_id, index, payload)
            latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    await asyncio.gather(*(run(c, s) for c, s in zip(conns, sessions, strict=True)))
    elapsed = time.perf_counter() - started
    for conn, session_id in zip(conns, sessions, strict=True):
        await api.abort(session_id)
        await conn.close()
    return mb_per_s(per_client * clients * len(payload), elapsed), latencies


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def compare_servers(
    args: argparse.Namespace,
    keypair: KeyPair,
    s3: LocalS3Server,
    bucket: str,
    work_dir: Path,
    processes: list[Process],
) -> dict[str, Any]:
    """The service under each of `--service-servers`, each started with its production
    flags (bench.servers), one fresh process per server and eager-flush setting, the
    servers alternating within each run: chunk ingest (MB/s, CPU per GiB and per request,
    p50/p99 latency), idle RSS after start-up and the peak (VmHWM) over the phase, then
    peak RSS of fresh processes at `--rss-streams` concurrent 16 MiB chunk streams."""
    token = keypair.token("bench-user")
    done: dict[str, Any] = {
        "commands": {
            name: " ".join(service_command(name, "app.main:app", "PORT"))
            for name in args.service_servers
        },
        "ingest": [],
        "memory": [],
    }
    for eager in args.servers_eager:
        servers: dict[str, Process] = {}
        idle: dict[str, int] = {}
        for name in args.service_servers:
            config = UploadServiceConfig(
                keypair, s3, bucket, work_dir, eager_flush=eager == "on", server=name
            )
            servers[name] = start_upload_service(config)
            processes.append(servers[name])
            await until_idle(servers[name])
            idle[name] = servers[name].rss_bytes()
        for chunk_kib in args.servers_chunk_kib:
            chunk_bytes = chunk_kib * 1024
            requests = min(args.servers_mib * MiB // chunk_bytes, args.servers_max_requests)
            # Whole rounds, at least one chunk per client.
            requests = max(requests - requests % args.servers_clients, args.servers_clients)
            payload = memoryview(wav_file(chunk_bytes))
            sent = requests * chunk_bytes
            figures: dict[str, list[float]] = {name: [] for name in servers}
            cpu: dict[str, list[float]] = {name: [] for name in servers}
            latencies: dict[str, list[float]] = {name: [] for name in servers}
            load_before = os.getloadavg()
            for _ in range(args.runs):
                for name, process in servers.items():
                    cpu_before = process.cpu_seconds()
                    mb_s, timed = await ingest_service_timed(
                        process.port, token, requests, payload, args.servers_clients
                    )
                    await until_idle(process)  # eager flush's work counts, as in ingest
                    figures[name].append(mb_s)
                    cpu[name].append(process.cpu_seconds() - cpu_before)
                    latencies[name] += timed
            row: dict[str, Any] = {
                "eager_flush": eager,
                "chunk_kib": chunk_kib,
                "clients": args.servers_clients,
                "requests": requests,
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
                "samples": figures,
                "cpu_samples": cpu,
            }
            for name in servers:
                row[f"{name}_mb_s"] = median(figures[name])
                row[f"{name}_requests_s"] = row[f"{name}_mb_s"] * 1e6 / chunk_bytes
                row[f"{name}_cpu_s_per_gib"] = median(cpu[name]) / (sent / GiB)
                row[f"{name}_cpu_ms_per_request"] = median(cpu[name]) / requests * 1000
                row[f"{name}_p50_ms"] = percentile(latencies[name], 0.5) * 1000
                row[f"{name}_p99_ms"] = percentile(latencies[name], 0.99) * 1000
            done["ingest"].append(row)
            print(
                f"servers, eager {eager}, {chunk_kib} KiB x {args.servers_clients}: "
                + ", ".join(
                    f"{name} {row[f'{name}_mb_s']:.1f} MB/s"
                    f" {row[f'{name}_cpu_ms_per_request']:.2f} CPU-ms/req"
                    f" p50 {row[f'{name}_p50_ms']:.1f} p99 {row[f'{name}_p99_ms']:.1f} ms"
                    for name in servers
                )
                + f"; load {load_before[0]:.1f} -> {row['load_average_after'][0]:.1f}",
                flush=True,
            )
        for name, process in servers.items():
            done["memory"].append(
                {
                    "server": name,
                    "eager_flush": eager,
                    "workload": "ingest phase",
                    "idle_rss_bytes": idle[name],
                    "peak_rss_bytes": process.peak_rss_bytes(),
                }
            )
            process.stop()
    for name in args.service_servers if args.rss_streams else ():
        service = start_upload_service(
            UploadServiceConfig(keypair, s3, bucket, work_dir, server=name)
        )
        processes.append(service)
        await until_idle(service)
        figures_rss = await peak_rss(service, token, args.rss_streams, 16 * MiB, args.rss_rounds)
        service.stop()
        done["memory"].append(
            {
                "server": name,
                "eager_flush": "on",
                "workload": f"{args.rss_streams} x 16 MiB streams x {args.rss_rounds}",
                "idle_rss_bytes": figures_rss["baseline_rss_bytes"],
                "peak_rss_bytes": figures_rss["peak_rss_bytes"],
                "idle_after_rss_bytes": figures_rss["idle_after_rss_bytes"],
            }
        )
        print(
            f"servers, peak RSS under {name}: {figures_rss['peak_rss_bytes'] / 1e6:.0f} MB"
            f" (idle {figures_rss['baseline_rss_bytes'] / 1e6:.0f} MB)",
            flush=True,
        )
    return done


def servers_markdown(done: dict[str, Any]) -> list[str]:
    rows = done.get("ingest", [])
    if not rows:
        return []
    names = [n for n in SERVICE_SERVERS if f"{n}_mb_s" in rows[0]]
    lines = [
        "",
        "| Service by server, eager flush, chunk x clients | "
        + " | ".join(f"{n} MB/s (requests/s)" for n in names)
        + " | "
        + " | ".join(f"{n} ÷ {names[0]}" for n in names[1:])
        + " | CPU-s per GiB: "
        + " / ".join(names)
        + " | CPU-ms per request: "
        + " / ".join(names)
        + " | p50 / p99 ms: "
        + " ; ".join(names)
        + " | load before, after |",
        "|---|" + "---:|" * (2 * len(names) + 3),
    ]
    for row in rows:
        kib = row["chunk_kib"]
        size = f"{kib // 1024} MiB" if kib >= 1024 else f"{kib} KiB"
        lines.append(
            f"| {row['eager_flush']}, {size} x {row['clients']}"
            + "".join(f" | {row[f'{n}_mb_s']:.1f} ({row[f'{n}_requests_s']:.0f})" for n in names)
            + "".join(f" | {row[f'{n}_mb_s'] / row[f'{names[0]}_mb_s']:.2f}" for n in names[1:])
            + " | "
            # Per GiB says nothing of 1 KiB chunks: their cost is the request's.
            + " / ".join(f"{row[f'{n}_cpu_s_per_gib']:.2f}" if kib >= 64 else "-" for n in names)
            + " | "
            + " / ".join(f"{row[f'{n}_cpu_ms_per_request']:.2f}" for n in names)
            + " | "
            + " ; ".join(f"{row[f'{n}_p50_ms']:.1f} / {row[f'{n}_p99_ms']:.1f}" for n in names)
            + f" | {row['load_average_before'][0]:.1f}, {row['load_average_after'][0]:.1f} |"
        )
    lines += [
        "",
        "| Memory by server | eager flush | workload | idle | peak (VmHWM) |",
        "|---|---|---|---:|---:|",
    ]
    for row in done.get("memory", []):
        lines.append(
            f"| {row['server']} | {row['eager_flush']} | {row['workload']}"
            f" | {row['idle_rss_bytes'] / 1e6:.0f} MB | {row['peak_rss_bytes'] / 1e6:.0f} MB |"
        )
    return lines


async def replicas_phase(
    args: argparse.Namespace, keypair: KeyPair, s3: LocalS3Server, work_dir: Path, tus_dir: Path
) -> dict[str, Any]:
    """Staging backends, replicas on one PostgreSQL and tus-node's S3 store (bench.replicas),
    on this run's moto server in a bucket of their own."""
    from bench import replicas  # imports this module: only once it is loaded

    options = replicas.Options(
        runs=args.runs,
        ingest_mib=args.replicas_mib,
        chunk_mib=tuple(args.replicas_chunk_mib),
        clients=args.replicas_clients,
        complete_mib=args.replicas_complete_mib,
        complete_clients=args.replicas_clients,
    )
    return await replicas.run_phase(
        options, keypair=keypair, s3=s3, work_dir=work_dir, tus_dir=tus_dir
    )


def replicas_markdown(results: dict[str, Any]) -> list[str]:
    from bench import replicas

    return replicas.markdown(results.get("replicas", {}))


# Ingest columns, by process name; a run has those it started (older results: a dash).
INGEST_COLUMNS = {
    "service": "service (as shipped)",
    "no_eager": "service, eager flush off",
    "before": "service before (malloc untuned)",
    "before_no_eager": "service before, eager flush off",
    "path": "request path alone",
    "bare_uvicorn": "bare FastAPI, uvicorn",
    "bare_granian": "bare FastAPI, granian",
    "bare": "bare FastAPI",
    "tus": "tus-node",
}


def markdown(results: dict[str, Any]) -> str:
    load = results.get("load_average_at_start")
    lines = [
        f"Run {results['started_at']} on {results['machine']}, Python {results['python']};"
        f" medians of {results['runs']} runs; ingest of"
        f" {results['ingest_bytes'] // MiB} MiB per figure; MB = 10^6 bytes."
        + (f" Service: `{results['service_command']}`." if "service_command" in results else "")
        + (f" Load average at start {load[0]:.2f}." if load else ""),
        "",
    ]
    rows = results["ingest"]
    names = [n for n in INGEST_COLUMNS if rows and f"{n}_mb_s" in rows[0]]
    ratios = [n for n in names if n not in ("tus", "bare", "bare_uvicorn", "bare_granian")]
    if rows:
        lines += [
            "| Chunk ingest (MB/s) | "
            + " | ".join(INGEST_COLUMNS[n] for n in names)
            + " | "
            + " | ".join(f"{INGEST_COLUMNS[n]} ÷ tus" for n in ratios)
            + " | service ÷ bare | CPU-s per GiB: "
            + " / ".join(INGEST_COLUMNS[n] for n in names)
            + " | S3 server CPU-s per GiB, as shipped"
            + " | minor faults per 4 KiB received: "
            + " / ".join(INGEST_COLUMNS[n] for n in names)
            + " | load average (1 min) before, after |",
            "|---|" + "---:|" * (len(names) + len(ratios) + 5),
        ]
    for row in rows:
        load_figures = (
            f"{row['load_average_before'][0]:.1f}, {row['load_average_after'][0]:.1f}"
            if "load_average_before" in row
            else "-"
        )
        lines.append(
            f"| {row['chunk_mib']} MiB x {row['clients']} client{'s' if row['clients'] > 1 else ''}"
            + "".join(f" | {row[f'{n}_mb_s']:.0f}" for n in names)
            + "".join(f" | {_figure(row, f'{n}_over_tus', '.2f')}" for n in ratios)
            + f" | {row['service_over_bare']:.2f} | "
            + " / ".join(_figure(row, f"{n}_cpu_s_per_gib", ".2f") for n in names)
            + f" | {_figure(row, 's3_cpu_s_per_gib', '.2f')} | "
            + " / ".join(_figure(row, f"{n}_faults_per_page", ".2f") for n in names)
            + f" | {load_figures} |"
        )
    if results.get("tus"):
        lines += [
            "",
            f"| tus ingest, {results.get('tus_bytes', 0) // MiB} MiB per figure, PATCH size x"
            " clients | our tus endpoint MB/s | tus-node (file store) MB/s | ours ÷ tus-node"
            " | CPU-s per GiB: ours / tus-node | S3 server CPU-s per GiB during ours"
            " | client CPU-s per GiB: ours / tus-node"
            " | bare tus endpoint MB/s (uvicorn + FastAPI, SHA-256 + disk in a thread)"
            " | bare ÷ tus-node"
            " | bare CPU-s per GiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in results["tus"]:
            size = f"{row['patch_mib']} MiB" if row["patch_mib"] else "whole file"
            lines.append(
                f"| {size} x {row['clients']} | {row['service_mb_s']:.0f} | {row['tus_mb_s']:.0f}"
                f" | {row['service_over_tus']:.2f}"
                f" | {row['service_cpu_s_per_gib']:.2f} / {row['tus_cpu_s_per_gib']:.2f}"
                f" | {_figure(row, 'service_s3_cpu_s_per_gib', '.2f')}"
                f" | {_figure(row, 'service_client_cpu_s_per_gib', '.2f')}"
                f" / {_figure(row, 'tus_client_cpu_s_per_gib', '.2f')}"
                f" | {_figure(row, 'bare_mb_s', '.0f')} | {_figure(row, 'bare_over_tus', '.2f')}"
                f" | {_figure(row, 'bare_cpu_s_per_gib', '.2f')} |"
            )
    lines += [
        "",
        "| File | complete after last ack, eager | of it: moto's commit / the service's own"
        " | same, slow path | end-to-end MB/s (eager) | same, slow path | moto PutObject MB/s"
        " | end-to-end ÷ PutObject | moto's own multipart MB/s (its commit alone) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results.get("complete", []):
        split = (
            f"{row['eager_commit_seconds']:.2f} s / {row['eager_own_seconds']:.2f} s"
            if "eager_commit_seconds" in row
            else "-"
        )
        lines.append(
            f"| {row['size_mib']} MiB | {row['eager_complete_seconds']:.2f} s | {split}"
            f" | {row['slow_path_complete_seconds']:.2f} s | {row['eager_end_to_end_mb_s']:.0f}"
            f" | {row['slow_path_end_to_end_mb_s']:.0f} | {row['put_object_mb_s']:.0f}"
            f" | {row['eager_end_to_end_over_put_object']:.2f}"
            f" | {row['multipart_mb_s']:.0f} ({row['multipart_complete_seconds']:.2f} s) |"
        )
    lines += [
        "",
        "| Peak RSS, 32 concurrent 16 MiB chunk streams | eager flush | peak (VmHWM)"
        " | idle before | idle after | 20 s later |",
        "|---|---|---:|---:|---:|---:|",
    ]
    labels = {
        "shipped": "as shipped (malloc tuned by the service)",
        "before": "before (glibc defaults, MALLOC_ARENA_MAX=2)",
        "two-arenas": "as shipped but MALLOC_ARENA_MAX=2 (the arena count until 2026-12-07)",
    }
    for row in results.get("rss", []):
        if "variant" in row:
            label = labels[row["variant"]]
        else:  # results of runs that set the thresholds from the environment
            label = "MALLOC_*_THRESHOLD_ set" if row["malloc_tuned"] else "glibc defaults"
        # Results written before eager was a dimension here measured with it on.
        eager = "on (default)" if row.get("eager", True) else "off"
        after = row.get("idle_after_rss_bytes")
        later = row.get("idle_later_rss_bytes")
        lines.append(
            f"| {label} | {eager} | {row['peak_rss_bytes'] / 1e6:.0f} MB"
            f" | {row['baseline_rss_bytes'] / 1e6:.0f} MB"
            f" | {f'{after / 1e6:.0f} MB' if after else '-'}"
            f" | {f'{later / 1e6:.0f} MB' if later else '-'} |"
        )
    lines += servers_markdown(results.get("servers", {}))
    lines += replicas_markdown(results)
    return "\n".join(lines) + "\n"


def _figure(row: dict[str, Any], key: str, spec: str) -> str:
    """Results written before a column existed show a dash there."""
    return format(row[key], spec) if key in row else "-"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, 1 run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ingest-mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--complete-mib", type=int, nargs="+", default=[100, 1024])
    parser.add_argument("--complete-clients", type=int, default=8)
    parser.add_argument("--rss-streams", type=int, default=32)
    parser.add_argument("--rss-rounds", type=int, default=4)
    parser.add_argument("--tus-mib", type=int, default=512, help="bytes per tus figure")
    parser.add_argument(
        "--tus-patch-mib",
        type=int,
        nargs="+",
        default=[1, 8, 0],
        help="PATCH sizes of the tus comparison; 0: one PATCH for the whole file",
    )
    parser.add_argument("--tus-clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--replicas-mib", type=int, default=256, help="bytes per replicas figure")
    parser.add_argument("--replicas-chunk-mib", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--replicas-clients", type=int, default=4)
    parser.add_argument(
        "--replicas-complete-mib",
        type=int,
        default=1024,
        help="the file `complete` is timed for on both staging backends; 0: none",
    )
    parser.add_argument(
        "--malloc-ab",
        action="store_true",
        help="also run the service as it shipped before it tuned malloc itself (glibc "
        "defaults, MALLOC_ARENA_MAX=2), beside the shipped one, in ingest and RSS",
    )
    parser.add_argument(
        "--bare-servers",
        nargs="+",
        choices=("uvicorn", "granian"),
        default=["uvicorn"],
        help="servers to run the bare endpoint under (granian: pip install granian)",
    )
    parser.add_argument(
        "--service-servers",
        nargs="+",
        choices=SERVICE_SERVERS,
        default=["uvicorn", "granian"],
        help="the servers the `servers` phase runs the service under, each with its"
        " production flags (bench/servers.py; granian: pip install granian)",
    )
    parser.add_argument("--servers-chunk-kib", type=int, nargs="+", default=[8192, 1024, 1])
    parser.add_argument("--servers-clients", type=int, default=8)
    parser.add_argument("--servers-mib", type=int, default=256, help="bytes per figure")
    parser.add_argument(
        "--servers-max-requests",
        type=int,
        default=4000,
        help="at most this many chunk requests per figure (small chunks)",
    )
    parser.add_argument("--servers-eager", nargs="+", choices=("on", "off"), default=["on"])
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=PHASES + EXTRA_PHASES,
        default=list(PHASES),
        help="run only these parts of the suite (the results then hold only their figures)",
    )
    args = parser.parse_args(argv)
    wants_granian = "servers" in args.phases and "granian" in args.service_servers
    if wants_granian and not Path(GRANIAN).exists():
        parser.error("granian is no dependency: pip install granian, or --service-servers")
    if args.quick:
        args.runs, args.ingest_mib, args.chunk_mib = 1, 64, [8]
        args.complete_mib, args.rss_rounds = [32], 1
        args.tus_mib, args.tus_clients = 64, [1]
        args.replicas_mib, args.replicas_chunk_mib, args.replicas_complete_mib = 32, [8], 32
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = asyncio.run(main_async(args))
    RESULTS_DIR.mkdir(exist_ok=True)
    # Only a full run replaces the README's figures.
    stamp = "quick" if args.quick else "latest" if set(args.phases) == set(PHASES) else "partial"
    (RESULTS_DIR / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (RESULTS_DIR / f"{stamp}.md").write_text(table)
    print()
    print(table)


if __name__ == "__main__":
    main()
