"""CPU per GiB of sending staged chunks as parts, the way eager flush and completion do it
from disk staging: `.venv/bin/python -m bench.flushcost [--parts 32 --rounds 3
--chunk-mib 8 --sign auto]` (bench/README.md, "Eager flush's CPU").

Chunk files of a real WAV are staged on disk as `DiskStaging` places them, then
`assembly.upload_in_parts` turns them into one multipart object on a local moto server,
`S3_MAX_CONCURRENCY` (4) parts at a time, each part hashed into the whole-file SHA-256 in a
worker thread (`StagedRange.hash_into`) and sent straight from the files (`open_reader`),
exactly the path the flush uses. Over plain http (the default here, as the bench's moto)
SigV4 also needs the part's own SHA-256. The service itself is not started: what is
measured is this process' CPU (all threads; of it the kernel's, `system`) and its event
loop thread's alone, per GiB sent, and moto's CPU. `--service-malloc` sets glibc malloc's
parameters as the service does at start-up (`app.main.tune_malloc`); without it, glibc's
defaults (all figures before 2026-12-07 22:00 UTC). For an A/B of two trees run it with
`PYTHONPATH=DIR` (a `git archive <commit> app` of the other tree) in alternation; the
object is checked against the staged bytes every round.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import uvloop

import app
from app.dev.s3server import LocalS3Server
from app.storage.s3 import S3MultipartStore
from app.storage.staging import DiskStaging
from app.uploads.assembly import upload_in_parts
from app.uploads.models import StoredChunk
from bench.__main__ import GiB, MiB, median, wav_file
from bench.partcopy import settings
from bench.servers import Process

PART = 8 * MiB
SESSION = str(uuid.UUID(int=2))


def stage(staging: DiskStaging, total: int, chunk: int) -> tuple[list[StoredChunk], str]:
    data = wav_file(total)
    directory = staging.session_dir(SESSION)
    directory.mkdir(parents=True, exist_ok=True)
    chunks = []
    for index in range(total // chunk):
        body = data[index * chunk : (index + 1) * chunk]
        name = f"{index:06d}.{uuid.uuid4().hex}.chunk"
        (directory / name).write_bytes(body)
        chunks.append(StoredChunk(index, chunk, hashlib.sha256(body).hexdigest(), name))
    return chunks, hashlib.sha256(data).hexdigest()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    s3 = LocalS3Server().start()
    assert s3.process is not None
    moto = Process("moto", s3.port, s3.process)  # read only; s3.stop() ends it
    bucket = f"flushcost-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    objects = S3MultipartStore(settings(s3, bucket, args.sign))
    await objects.open()
    samples: dict[str, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="flushcost-") as local:
            staging = DiskStaging(Path(local))
            staging.prepare()
            chunks, expected = stage(staging, args.parts * PART, args.chunk_mib * MiB)
            gib = args.parts * PART / GiB
            for _ in range(args.rounds):
                key = f"uploads/flushcost-{uuid.uuid4().hex}"
                cpu, system, loop, moto_cpu, wall = (
                    time.process_time(),
                    os.times().system,
                    time.thread_time(),
                    moto.cpu_seconds(),
                    time.perf_counter(),
                )
                done = await upload_in_parts(
                    objects,
                    lambda: staging.open_assembled(SESSION, chunks),
                    key=key,
                    content_type="audio/wav",
                    metadata={},
                    part_size_bytes=PART,
                    concurrency=4,
                    expected_sha256=expected,
                )
                figures = {
                    "seconds_per_gib": (time.perf_counter() - wall) / gib,
                    "cpu_s_per_gib": (time.process_time() - cpu) / gib,
                    "system_cpu_s_per_gib": (os.times().system - system) / gib,
                    "loop_cpu_s_per_gib": (time.thread_time() - loop) / gib,
                    "moto_cpu_s_per_gib": (moto.cpu_seconds() - moto_cpu) / gib,
                }
                for name, value in figures.items():
                    samples.setdefault(name, []).append(value)
                assert done.sha256 == expected
                got = await objects.call("get_object", Bucket=bucket, Key=key)
                body = hashlib.sha256()
                async with got["Body"] as stream:
                    while piece := await stream.read(1 << 20):
                        body.update(piece)
                assert body.hexdigest() == expected, "the object is not the staged bytes"
                await objects.call("delete_object", Bucket=bucket, Key=key)
    finally:
        await objects.close()
        s3.stop()
    return {
        "app": str(Path(app.__file__).parent),
        "sign": args.sign,
        "service_malloc": args.service_malloc,
        "parts": args.parts,
        "chunk_mib": args.chunk_mib,
        "load_average": os.getloadavg(),
        "medians": {name: median(values) for name, values in samples.items()},
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.flushcost", description=__doc__)
    parser.add_argument("--parts", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--sign", choices=("auto", "always", "never"), default="auto")
    parser.add_argument(
        "--service-malloc",
        action="store_true",
        help="set glibc malloc's parameters as the service does at start-up (app.main)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.service_malloc:
        from app.main import tune_malloc

        tune_malloc()
    results = uvloop.run(main_async(args))  # the service's loop (uvicorn picks uvloop)
    medians = results["medians"]
    print(
        f"{results['app']} sign={args.sign} chunk={args.chunk_mib} MiB"
        f"{' service-malloc' if args.service_malloc else ''}:"
        f" {medians['cpu_s_per_gib']:.2f} CPU-s/GiB (system {medians['system_cpu_s_per_gib']:.2f}),"
        f" loop {medians['loop_cpu_s_per_gib']:.2f},"
        f" {medians['seconds_per_gib']:.2f} s/GiB, moto {medians['moto_cpu_s_per_gib']:.2f};"
        f" load {results['load_average'][0]:.1f}",
        flush=True,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
