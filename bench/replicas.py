"""Staging backends and replicas: the `replicas` phase of `./bench/run` (see bench/README.md,
"Replicas"); `.venv/bin/python -m bench.replicas` runs it alone.

Chunk ingest into the service with `STAGING_BACKEND=disk` and `=s3` (one process, SQLite),
with `s3` on PostgreSQL with one and two processes (clients split over them), eager flush
on as shipped, beside tus-node-server with `@tus/s3-store` (the S3 peer) fed by the same
tus load generator as the file-store figures. Every figure's processes are measured in
turn within each run, so load on the machine hits them alike. S3 traffic is counted by a
loopback proxy in front of moto (requests, and bytes each way). Then `complete` of one
real WAV (8 MiB chunks, eager flush on) on the S3 backend beside the disk backend, with
moto's commit (CompleteMultipartUpload) split out from the service's log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.dev.keys import KeyPair
from app.dev.s3server import LocalS3Server
from bench.__main__ import (
    GiB,
    MiB,
    ingest_service,
    ingest_tus,
    median,
    until_idle,
    upload_and_complete,
    wav_file,
)
from bench.servers import (
    Process,
    UploadServiceConfig,
    install_tus,
    logged_since,
    start_tus_s3,
    start_upload_service,
)

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
# The ingest figures, in the order they are measured and shown.
LABELS = {
    "disk": "disk staging, SQLite, 1 process",
    "s3": "S3 staging, SQLite, 1 process",
    "s3_pg": "S3 staging, PostgreSQL, 1 process",
    "s3_pg_2": "S3 staging, PostgreSQL, 2 processes",
    "tus_s3": "tus-node, @tus/s3-store",
}


class CountingProxy:
    """Forwards loopback TCP to moto and counts the HTTP requests sent through it, and
    the bytes each way."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.requests = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def snapshot(self) -> tuple[int, int, int]:
        return self.requests, self.bytes_up, self.bytes_down

    async def start(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            tail = b""
            try:
                while data := await src.read(1 << 20):
                    if up:
                        # A request line may straddle two reads: count in tail + data
                        # what was not already counted in tail alone.
                        self.requests += (tail + data).count(b" HTTP/1.1\r\n") - tail.count(
                            b" HTTP/1.1\r\n"
                        )
                        tail = data[-16:]
                        self.bytes_up += len(data)
                    else:
                        self.bytes_down += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))


@dataclass
class Options:
    runs: int = 3
    ingest_mib: int = 256
    chunk_mib: tuple[int, ...] = (1, 8)
    clients: int = 4
    complete_mib: int = 1024
    complete_clients: int = 4


@dataclass
class Figure:
    """One column of the ingest table: the processes it measures and how to drive them."""

    processes: list[Process]
    drive: Callable[[int, int], Awaitable[float]]  # (total bytes, chunk bytes) -> MB/s


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


def _service_driver(
    processes: list[Process], token: str, clients: int
) -> Callable[[int, int], Awaitable[float]]:
    """The clients split evenly over the processes, each one session of real audio."""
    payloads: dict[int, memoryview] = {}

    async def drive(total_bytes: int, chunk_bytes: int) -> float:
        if chunk_bytes not in payloads:
            payloads[chunk_bytes] = memoryview(wav_file(chunk_bytes))
        share = clients // len(processes)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                ingest_service(
                    p.port, token, total_bytes // len(processes), payloads[chunk_bytes], share
                )
                for p in processes
            )
        )
        return total_bytes / (time.perf_counter() - started) / 1e6

    return drive


def _tus_driver(port: int, clients: int) -> Callable[[int, int], Awaitable[float]]:
    async def drive(total_bytes: int, chunk_bytes: int) -> float:
        return await ingest_tus(port, total_bytes, chunk_bytes, clients, leave_open=True)

    return drive


async def _clear_bucket(s3: LocalS3Server, bucket: str) -> None:
    """moto holds objects in memory: drop them between samples of 1 GiB."""

    def clear() -> None:
        client: Any = s3.client()
        for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])

    await asyncio.to_thread(clear)


async def run_phase(
    options: Options,
    *,
    keypair: KeyPair,
    s3: LocalS3Server,
    work_dir: Path,
    tus_dir: Path,
) -> dict[str, Any]:
    token = keypair.token("bench-user")
    bucket = f"replicas-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    assert s3.process is not None
    moto = Process("moto", s3.port, s3.process)  # only read, never stopped from here
    proxy = await CountingProxy(s3.port).start()
    results: dict[str, Any] = {
        "ingest_mib": options.ingest_mib,
        "clients": options.clients,
        "runs": options.runs,
        "rows": [],
    }
    started: list[Process] = []
    schemas: list[str] = []

    def service(backend: str, *, schema: str | None = None, log: Path | None = None) -> Process:
        env = {"STAGING_BACKEND": backend, "S3_ENDPOINT_URL": proxy.url}
        if schema is not None:
            env |= {"DATABASE_URL": POSTGRES_URL, "DATABASE_SCHEMA": schema}
        config = UploadServiceConfig(keypair, s3, bucket, work_dir, extra_env=env, log_path=log)
        process = start_upload_service(config)
        started.append(process)
        return process

    try:
        schemas += [f"bench_{uuid.uuid4().hex[:10]}" for _ in range(2)]
        figures = {
            "disk": [service("disk")],
            "s3": [service("s3")],
            "s3_pg": [service("s3", schema=schemas[0])],
            # Two processes on one database schema: any replica serves any session.
            "s3_pg_2": [service("s3", schema=schemas[1]) for _ in range(2)],
        }
        drives = {
            name: Figure(processes, _service_driver(processes, token, options.clients))
            for name, processes in figures.items()
        }
        tus = start_tus_s3(tus_dir, proxy.url, bucket, work_dir / "tus-s3-tmp")
        started.append(tus)
        drives["tus_s3"] = Figure([tus], _tus_driver(tus.port, options.clients))

        total = options.ingest_mib * MiB
        for chunk_mib in options.chunk_mib:
            samples: dict[str, dict[str, list[float]]] = {name: {} for name in drives}
            load_before = os.getloadavg()
            for _ in range(options.runs):
                for name, figure in drives.items():
                    cpu_before = sum(p.cpu_seconds() for p in figure.processes)
                    moto_before = moto.cpu_seconds()
                    requests, up, down = proxy.snapshot()
                    mb_s = await figure.drive(total, chunk_mib * MiB)
                    # What the chunks started (eager flush's parts, the sessions' clean-up)
                    # counts, and must not run into the next figure.
                    for process in (*figure.processes, moto):
                        await until_idle(process)
                    gib = total / GiB
                    now = proxy.snapshot()
                    measured = {
                        "mb_s": mb_s,
                        "cpu_s_per_gib": (
                            sum(p.cpu_seconds() for p in figure.processes) - cpu_before
                        )
                        / gib,
                        "moto_cpu_s_per_gib": (moto.cpu_seconds() - moto_before) / gib,
                        "s3_requests_per_gib": (now[0] - requests) / gib,
                        "s3_bytes_up_per_byte": (now[1] - up) / total,
                        "s3_bytes_down_per_byte": (now[2] - down) / total,
                    }
                    for key, value in measured.items():
                        samples[name].setdefault(key, []).append(value)
            for name, measured_samples in samples.items():
                row: dict[str, Any] = {
                    "figure": name,
                    "chunk_mib": chunk_mib,
                    **{key: median(values) for key, values in measured_samples.items()},
                    "samples": measured_samples,
                    "load_average_before": load_before,
                    "load_average_after": os.getloadavg(),
                }
                results["rows"].append(row)
                print(
                    f"replicas {chunk_mib} MiB x {options.clients}: {LABELS[name]}"
                    f" {row['mb_s']:.0f} MB/s, {row['cpu_s_per_gib']:.1f} CPU-s/GiB"
                    f" (moto {row['moto_cpu_s_per_gib']:.1f}),"
                    f" {row['s3_requests_per_gib']:.0f} S3 requests/GiB",
                    flush=True,
                )
        for process in started:
            process.stop()
        started.clear()
        await _clear_bucket(s3, bucket)

        # ---- complete of one real WAV, 8 MiB chunks, eager flush on (the default)
        results["complete"] = []
        if options.complete_mib:
            data = wav_file(options.complete_mib * MiB)
            for backend, schema in (("disk", None), ("s3", schemas[0])):
                log_path = work_dir / f"replicas-complete-{backend}.log"
                process = service(backend, schema=schema, log=log_path)
                done: list[dict[str, float]] = []
                for _ in range(options.runs):
                    offset = log_path.stat().st_size
                    requests = proxy.requests
                    sample = await upload_and_complete(
                        process.port, token, data, 8 * MiB, options.complete_clients
                    )
                    logged = logged_since(log_path, offset, "upload.eager_completed")
                    if logged is not None:
                        sample["commit_seconds"] = float(logged["commit_seconds"])
                        sample["parts_sent_at_complete"] = float(logged["parts_sent_at_complete"])
                    await until_idle(process)
                    sample["s3_requests_per_gib"] = (proxy.requests - requests) / (len(data) / GiB)
                    done.append(sample)
                    await _clear_bucket(s3, bucket)
                process.stop()
                started.remove(process)
                entry: dict[str, Any] = {
                    "backend": backend,
                    "database": "sqlite" if schema is None else "postgresql",
                    "size_mib": options.complete_mib,
                    "clients": options.complete_clients,
                    "samples": done,
                }
                for key in ("complete_seconds", "end_to_end_mb_s", "s3_requests_per_gib"):
                    entry[key] = median([s[key] for s in done])
                if all("commit_seconds" in s for s in done):
                    entry["commit_seconds"] = median([s["commit_seconds"] for s in done])
                    entry["own_seconds"] = median(
                        [s["complete_seconds"] - s["commit_seconds"] for s in done]
                    )
                results["complete"].append(entry)
                print(
                    f"replicas complete {options.complete_mib} MiB, {backend} staging:"
                    f" {entry['complete_seconds']:.2f} s after the last ack"
                    + (
                        f" (moto's commit {entry['commit_seconds']:.2f} s)"
                        if "commit_seconds" in entry
                        else ""
                    ),
                    flush=True,
                )
            del data
        results["load_average_at_end"] = os.getloadavg()
    finally:
        for process in started:
            process.stop()
        await proxy.stop()
        for schema in schemas:
            drop_schema(schema)
    return results


def markdown(results: dict[str, Any]) -> list[str]:
    """The replicas tables, for bench/results/*.md."""
    rows = results.get("rows", [])
    if not rows:
        return []
    lines = [
        "",
        f"Replicas: {results['ingest_mib']} MiB per figure, {results['clients']} clients,"
        f" medians of {results['runs']} runs, eager flush on; S3 traffic through a counting"
        " proxy in front of moto.",
        "",
        "| chunks | figure | MB/s | CPU-s per GiB | moto CPU-s per GiB | S3 requests per GiB"
        " | bytes to S3 / from S3 per byte | load before, after |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['chunk_mib']} MiB | {LABELS[row['figure']]} | {row['mb_s']:.0f}"
            f" | {row['cpu_s_per_gib']:.2f} | {row['moto_cpu_s_per_gib']:.2f}"
            f" | {row['s3_requests_per_gib']:,.0f}"
            f" | {row['s3_bytes_up_per_byte']:.2f} / {row['s3_bytes_down_per_byte']:.2f}"
            f" | {row['load_average_before'][0]:.1f}, {row['load_average_after'][0]:.1f} |"
        )
    if results.get("complete"):
        lines += [
            "",
            "| complete, 8 MiB chunks, eager flush on | after the last ack | of it: moto's commit"
            " / the service's own | end-to-end MB/s | S3 requests per GiB (whole upload) |",
            "|---|---:|---:|---:|---:|",
        ]
        for entry in results["complete"]:
            split = (
                f"{entry['commit_seconds']:.2f} s / {entry['own_seconds']:.2f} s"
                if "commit_seconds" in entry
                else "-"
            )
            lines.append(
                f"| {entry['size_mib']} MiB, {entry['backend']} staging ({entry['database']})"
                f" | {entry['complete_seconds']:.2f} s | {split}"
                f" | {entry['end_to_end_mb_s']:.0f} | {entry['s3_requests_per_gib']:,.0f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.replicas", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ingest-mib", type=int, default=256)
    parser.add_argument("--chunk-mib", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--complete-mib", type=int, default=1024)
    parser.add_argument("--complete-clients", type=int, default=4)
    args = parser.parse_args()
    options = Options(
        runs=args.runs,
        ingest_mib=args.ingest_mib,
        chunk_mib=tuple(args.chunk_mib),
        clients=args.clients,
        complete_mib=args.complete_mib,
        complete_clients=args.complete_clients,
    )
    work_dir = Path(f"/tmp/bench-replicas-{uuid.uuid4().hex[:8]}")
    work_dir.mkdir()
    s3 = LocalS3Server().start()
    try:
        tus_dir = install_tus(Path(__file__).resolve().parent / ".tus")
        results = asyncio.run(
            run_phase(
                options, keypair=KeyPair.generate(), s3=s3, work_dir=work_dir, tus_dir=tus_dir
            )
        )
    finally:
        s3.stop()
    out = Path(__file__).resolve().parent / "results" / "replicas.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(markdown(results)))


if __name__ == "__main__":
    main()
