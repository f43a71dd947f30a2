"""Per-request cost of the service (issue 16 item 2): CPU per request, and the event
loop's own share of it, for small chunks, 1 MiB chunks and 1 MiB and 8 MiB tus PATCHes.

`.venv/bin/python -m bench.request_cost [--workloads chunk-1k chunk-1m tus-1m tus-8m]
[--requests N] [--clients C] [--no-eager] [--app-from DIR] [--server NAME] [--profile DIR]`

Each workload gets a fresh service process started as `./bench/run` starts it (the
README's production command, its default settings: eager flush on, log at INFO), one
warm-up round, then N requests from C keep-alive connections. Reported per request:
the process' CPU (all threads: the event loop, the staging writer's and SQLite's
threads, eager flush) and the event loop thread's alone (`/proc/PID/task/PID/stat`:
uvicorn runs the loop in the main thread). With `--profile DIR`, py-spy samples the
service while the timed requests run (`py-spy record --format raw --nonblocking`, all
threads, idle samples dropped) and the top self-time frames are printed (DIR keeps the
raw files).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from app.dev.keys import KeyPair
from app.dev.s3server import LocalS3Server
from bench.__main__ import TUS_METADATA, Client, wav_file
from bench.loadgen import Connection, MultipartChunk
from bench.servers import (
    SERVICE_SERVERS,
    Process,
    UploadServiceConfig,
    start_bare,
    start_upload_service,
)

KiB = 1024
MiB = 1024 * KiB
WORKLOADS = {
    # name: (protocol, bytes per request, default request count)
    "chunk-1k": ("chunk", KiB, 20_000),
    "chunk-1m": ("chunk", MiB, 1_000),
    "tus-1m": ("tus", MiB, 1_000),
    # The per-byte path: 8 MiB PATCHes (one staged piece each at the default part size).
    "tus-8m": ("tus", 8 * MiB, 200),
    # The framework's floor: bench/bare_app.py (uvicorn + FastAPI reading and dropping
    # the same multipart body; no auth, parsing, database, disk or logging).
    "bare-1k": ("bare", KiB, 20_000),
}
PY_SPY = str(Path(sys.executable).with_name("py-spy"))


def thread_cpu_seconds(pid: int, tid: int) -> float:
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def chunk_requests(
    port: int, token: str, payload: memoryview, requests: int, clients: int
) -> None:
    """`requests` chunk requests over `clients` sessions, one connection each."""
    api = Client(port, token)
    conns = [await Connection("127.0.0.1", port).open() for _ in range(clients)]
    sessions = [await api.init(conn) for conn in conns]
    per_client = requests // clients

    async def run(conn: Connection, session_id: str) -> None:
        for index in range(per_client):
            await api.chunk(conn, session_id, index, payload)

    await asyncio.gather(*(run(c, s) for c, s in zip(conns, sessions, strict=True)))
    for conn, session_id in zip(conns, sessions, strict=True):
        await api.abort(session_id)
        await conn.close()


async def tus_requests(
    port: int, token: str, payload: memoryview, requests: int, clients: int
) -> None:
    """`requests` PATCHes over `clients` tus uploads (left open, deleted after)."""
    tus = {
        "Tus-Resumable": "1.0.0",
        "Authorization": f"Bearer {token}",
        "Upload-Metadata": TUS_METADATA,
    }
    per_client = requests // clients
    size = len(payload)
    conns = [await Connection("127.0.0.1", port).open() for _ in range(clients)]
    paths = []
    for conn in conns:
        created = await conn.request(
            "POST", "/files", {**tus, "Upload-Length": str(per_client * size + 1)}
        )
        assert created.status == 201, created.body
        paths.append("/" + created.headers["location"].split("/", 3)[-1])

    async def run(conn: Connection, path: str) -> None:
        for index in range(per_client):
            headers = {
                **tus,
                "Upload-Offset": str(index * size),
                "Content-Type": "application/offset+octet-stream",
            }
            response = await conn.request("PATCH", path, headers, [payload])
            assert response.status == 204, (response.status, response.body)

    await asyncio.gather(*(run(c, p) for c, p in zip(conns, paths, strict=True)))
    for conn, path in zip(conns, paths, strict=True):
        deleted = await conn.request("DELETE", path, tus)
        assert deleted.status == 204, deleted.body
        await conn.close()


async def bare_requests(
    port: int, token: str, payload: memoryview, requests: int, clients: int
) -> None:
    per_client = requests // clients
    conns = [await Connection("127.0.0.1", port).open() for _ in range(clients)]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": MultipartChunk.content_type()}

    async def run(conn: Connection, client: int) -> None:
        session_id = str(uuid.UUID(int=client))
        for index in range(per_client):
            parts = MultipartChunk.parts(session_id, index, payload)
            response = await conn.request("POST", "/upload/chunk", headers, parts)
            assert response.status == 200, response.body

    await asyncio.gather(*(run(c, i) for i, c in enumerate(conns)))
    for conn in conns:
        await conn.close()


def top_self_time(raw: Path, limit: int = 25) -> list[tuple[str, float]]:
    """Leaf frames of py-spy's raw (collapsed-stack) output, as shares of all samples,
    then the same self time summed per package (the file's top directory)."""
    leaves: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        leaf = stack.rsplit(";", 1)[-1]
        leaves[leaf] += int(count)
        where = leaf.rsplit("(", 1)[-1].split(":", 1)[0]
        packages["package " + where.split("/", 1)[0]] += int(count)
    total = sum(leaves.values()) or 1
    top = [(frame, n / total) for frame, n in leaves.most_common(limit)]
    return top + [(name, n / total) for name, n in packages.most_common(12)]


async def measure(
    name: str,
    service: Process,
    token: str,
    requests: int,
    clients: int,
    profile_dir: Path | None,
) -> dict[str, Any]:
    protocol, size, _ = WORKLOADS[name]
    payload = memoryview(wav_file(size) if size >= 64 * KiB else os.urandom(size))
    drive = {"chunk": chunk_requests, "tus": tus_requests, "bare": bare_requests}[protocol]
    await drive(service.port, token, payload, max(clients * 20, requests // 10), clients)
    await asyncio.sleep(0.5)  # let the warm-up's background work (eager flush) end
    spy: subprocess.Popen[bytes] | None = None
    raw = profile_dir / f"{name}.raw" if profile_dir is not None else None
    if raw is not None:
        spy = subprocess.Popen(
            # --gil: only the thread holding the GIL, i.e. Python's own CPU, not its waits.
            [
                PY_SPY,
                "record",
                "--format",
                "raw",
                "--nonblocking",
                "--gil",
                "--rate",
                "250",
                "-o",
                str(raw),
                "-p",
                str(service.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1.0)  # py-spy attaches
    cpu_before = service.cpu_seconds()
    loop_before = thread_cpu_seconds(service.pid, service.pid)
    started = time.perf_counter()
    await drive(service.port, token, payload, requests, clients)
    elapsed = time.perf_counter() - started
    cpu = service.cpu_seconds() - cpu_before
    loop = thread_cpu_seconds(service.pid, service.pid) - loop_before
    done = (requests // clients) * clients
    result: dict[str, Any] = {
        "workload": name,
        "requests": done,
        "clients": clients,
        "requests_per_s": done / elapsed,
        "cpu_ms_per_request": cpu * 1000 / done,
        "event_loop_cpu_ms_per_request": loop * 1000 / done,
        "load_average": os.getloadavg(),
    }
    if spy is not None and raw is not None:
        spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
        spy.wait(timeout=60)
        if raw.exists():
            result["top_self_time"] = top_self_time(raw)
    return result


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    work_dir = Path(tempfile.mkdtemp(prefix="request-cost-"))
    keypair = KeyPair.generate()
    token = keypair.token("bench-user")
    s3 = LocalS3Server().start()
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    results = []
    try:
        for name in args.workloads:
            service = (
                start_bare(work_dir)
                if WORKLOADS[name][0] == "bare"
                else start_upload_service(
                    UploadServiceConfig(
                        keypair,
                        s3,
                        bucket,
                        work_dir,
                        eager_flush=False if args.no_eager else None,
                        # Another checkout's `app` package first on the path: an A/B of two
                        # commits with the same bench, e.g. `git worktree add /tmp/a <commit>`.
                        extra_env={"PYTHONPATH": str(args.app_from)} if args.app_from else {},
                        server=args.server,
                    )
                )
            )
            try:
                requests = args.requests or WORKLOADS[name][2]
                result = await measure(name, service, token, requests, args.clients, args.profile)
            finally:
                service.stop()
            results.append(result)
            print(
                f"{name} x {args.clients}: {result['requests_per_s']:.0f} requests/s,"
                f" {result['cpu_ms_per_request']:.2f} CPU-ms per request, of it event loop"
                f" {result['event_loop_cpu_ms_per_request']:.2f};"
                f" load {result['load_average'][0]:.1f}",
                flush=True,
            )
            for frame, share in result.get("top_self_time", []):
                print(f"  {share * 100:5.1f}%  {frame}")
    finally:
        s3.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.request_cost", description=__doc__)
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--requests", type=int, default=0, help="0: the workload's default")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument(
        "--app-from", type=Path, default=None, help="run the `app` package of this checkout"
    )
    parser.add_argument(
        "--no-eager", action="store_true", help="EAGER_FLUSH=false: the chunk path alone"
    )
    parser.add_argument(
        "--server",
        choices=SERVICE_SERVERS,
        default="uvicorn",
        help="the server the service runs under, with its production flags (bench/servers.py)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(main_async(args))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
