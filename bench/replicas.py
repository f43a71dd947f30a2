"""Staging backends and replicas: `.venv/bin/python -m bench.replicas` (see bench/README.md,
"Replicas").

Chunk ingest into the service with `STAGING_BACKEND=disk` and `=s3` (one process, SQLite),
and with `s3` on PostgreSQL with one and two processes (clients split over them), eager
flush on as shipped. S3 requests are counted by a loopback proxy in front of moto (one
request line per HTTP request). Then `complete` of one upload on the S3 backend.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from app.dev.keys import KeyPair
from app.dev.s3server import LocalS3Server
from bench.__main__ import Client, GiB, MiB, ingest_service, median, wav_file
from bench.loadgen import Connection
from bench.servers import Process, UploadServiceConfig, start_upload_service

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


class CountingProxy:
    """Forwards loopback TCP to moto and counts the HTTP requests sent through it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.requests = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            tail = b""
            try:
                while data := await src.read(1 << 20):
                    if count:
                        self.requests += (tail + data).count(b" HTTP/1.1\r\n") - tail.count(
                            b" HTTP/1.1\r\n"
                        )
                        tail = data[-16:]
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))


async def ingest_over(
    processes: list[Process], token: str, total_bytes: int, chunk_bytes: int, clients: int
) -> float:
    """MB/s with the clients split evenly over the processes."""
    share = clients // len(processes)
    started = time.perf_counter()
    await asyncio.gather(
        *(
            ingest_service(p.port, token, total_bytes // len(processes), chunk_bytes, share)
            for p in processes
        )
    )
    return total_bytes / (time.perf_counter() - started) / 1e6


async def complete_once(port: int, token: str, data: bytes, chunk_bytes: int) -> dict[str, float]:
    api = Client(port, token)
    conn = await Connection("127.0.0.1", port).open()
    session_id = await api.init(conn)
    chunks = [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
    for index, chunk in enumerate(chunks):
        await api.chunk(conn, session_id, index, chunk)
    started = time.perf_counter()
    await api.complete(conn, session_id, len(chunks))
    seconds = time.perf_counter() - started
    await conn.close()
    return {"complete_seconds": seconds}


def drop_schema(schema: str) -> None:
    subprocess.run(
        [
            *("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-c"),
            f'DROP SCHEMA IF EXISTS "{schema}" CASCADE',
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work_dir = Path(f"/tmp/bench-replicas-{uuid.uuid4().hex[:8]}")
    work_dir.mkdir()
    keypair = KeyPair.generate()
    token = keypair.token("bench-user")
    s3 = LocalS3Server().start()
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    proxy = await CountingProxy(s3.port).start()
    results: dict[str, Any] = {"ingest_mib": args.ingest_mib, "clients": args.clients, "rows": []}
    modes = [("disk", 1, False), ("s3", 1, False), ("s3", 1, True), ("s3", 2, True)]
    try:
        for backend, count, postgres in modes:
            env = {"STAGING_BACKEND": backend}
            if postgres:
                env |= {
                    "DATABASE_URL": POSTGRES_URL,
                    "DATABASE_SCHEMA": f"bench_{uuid.uuid4().hex[:10]}",
                }
            processes: list[Process] = []
            for _ in range(count):
                extra = {**env, "S3_ENDPOINT_URL": proxy.url}
                config = UploadServiceConfig(keypair, s3, bucket, work_dir, extra_env=extra)
                processes.append(start_upload_service(config))
            try:
                for chunk_mib in args.chunk_mib:
                    figures, per_gib = [], []
                    for _ in range(args.runs):
                        before = proxy.requests
                        figures.append(
                            await ingest_over(
                                processes,
                                token,
                                args.ingest_mib * MiB,
                                chunk_mib * MiB,
                                args.clients,
                            )
                        )
                        per_gib.append((proxy.requests - before) / (args.ingest_mib * MiB / GiB))
                    row = {
                        "backend": backend,
                        "processes": count,
                        "database": "postgresql" if postgres else "sqlite",
                        "chunk_mib": chunk_mib,
                        "mb_s": median(figures),
                        "s3_requests_per_gib": median(per_gib),
                        "samples": figures,
                    }
                    results["rows"].append(row)
                    print(json.dumps(row), flush=True)
                if backend == "s3" and count == 1 and postgres and args.complete_mib:
                    data = wav_file(args.complete_mib * MiB)
                    done = await complete_once(processes[0].port, token, data, 8 * MiB)
                    results["complete"] = {"size_mib": args.complete_mib, **done}
                    print(json.dumps(results["complete"]), flush=True)
            finally:
                for process in processes:
                    process.stop()
                if postgres:
                    drop_schema(env["DATABASE_SCHEMA"])
    finally:
        await proxy.stop()
        s3.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.replicas", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ingest-mib", type=int, default=256)
    parser.add_argument("--chunk-mib", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--complete-mib", type=int, default=1024)
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    out = Path(__file__).resolve().parent / "results" / "replicas.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
