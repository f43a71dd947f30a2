"""UploadPartCopy against today's flush, for chunks that line up with parts:
`.venv/bin/python -m bench.partcopy [--parts 64 --runs 3 --concurrency 4]` (bench/README.md,
"UploadPartCopy").

8 MiB chunks are staged as S3 objects the way `STAGING_BACKEND=s3` names them, then turned
into the 8 MiB parts of a multipart upload, `--concurrency` parts at a time, by:

* `flush`: today's eager flush on the S3 backend: the service's own S3 client and staged
  reader (`S3Staging.open_assembled`, ranged GETs) read the part into its send buffer
  (`assembly.read_part_body`), hash it into the whole-file SHA-256, UploadPart. Over plain
  http botocore also hashes the body for SigV4 (`S3_SIGN_PAYLOAD=auto`); `flush, unsigned`
  is the same with `never`, as over https.
* `copy`: UploadPartCopy from the staged object; no byte passes through the service.
* `copy + read`: the same plus the GET and SHA-256 of the part, since the object's
  whole-file SHA-256 still needs every byte once (a SHA-256 state cannot be combined from
  the chunks' own hashes).

Measured: wall time, this process' CPU (all threads) and moto's CPU, per GiB. Each
variant's object is checked against the staged bytes (SHA-256 of a GET of the object).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from app.dev.s3server import DEV_ACCESS_KEY, DEV_SECRET_KEY, LocalS3Server
from app.settings import Settings
from app.storage.s3 import S3MultipartStore
from app.storage.staging import DiskStaging
from app.storage.staging_s3 import S3Staging
from app.uploads.assembly import read_part_body
from app.uploads.models import StoredChunk
from bench.__main__ import GiB, MiB, median, wav_file
from bench.servers import Process

PART = 8 * MiB
SESSION = str(uuid.UUID(int=1))  # staged keys name a session by its UUID
VARIANTS = ("flush", "flush, unsigned", "copy", "copy + read")


def settings(s3: LocalS3Server, bucket: str, sign: Literal["auto", "always", "never"]) -> Settings:
    """The service's settings for a bench that drives its parts in-process (no JWT)."""
    return Settings(
        _env_file=None,
        main_service_jwks_url="http://127.0.0.1/unused",  # required; never fetched here
        expected_jwt_issuer="bench",
        expected_jwt_audience="bench",
        s3_bucket_name=bucket,
        s3_endpoint_url=s3.endpoint_url,
        s3_access_key=DEV_ACCESS_KEY,
        s3_secret_key=DEV_SECRET_KEY,
        s3_sign_payload=sign,
    )


async def stage(objects: S3MultipartStore, staging: S3Staging, parts: int) -> list[StoredChunk]:
    """`parts` chunks of real audio staged as the S3 backend names them, one session."""
    data = wav_file(parts * PART)
    chunks = []
    for index in range(parts):
        body = data[index * PART : (index + 1) * PART]
        chunk = StoredChunk(index, PART, hashlib.sha256(body).hexdigest(), f"{index}.x.chunk")
        await objects.call(
            "put_object",
            Bucket=staging.bucket,
            Key=staging.chunk_key(SESSION, chunk.file_name),
            Body=body,
        )
        chunks.append(chunk)
    return chunks


async def run_variant(
    variant: str,
    objects: S3MultipartStore,
    staging: S3Staging,
    chunks: list[StoredChunk],
    concurrency: int,
) -> str:
    """Builds the object; returns its whole-file SHA-256 where the variant computes one."""
    key = f"uploads/partcopy-{uuid.uuid4().hex}"
    upload_id = await objects.start(key, content_type="audio/wav", metadata={})
    etags: dict[int, str] = {}
    digest = hashlib.sha256()
    slots = asyncio.Semaphore(concurrency)
    lock = asyncio.Lock()  # parts are hashed in order, as the flush does
    hashed = [asyncio.Event() for _ in range(len(chunks) + 1)]
    hashed[0].set()

    async def read_and_hash(number: int, chunk: StoredChunk) -> io.BytesIO:
        def read() -> io.BytesIO:
            with staging.open_assembled(SESSION, [chunk]) as stream:
                body, _ = read_part_body(stream, chunk.size_bytes)
            return body

        body = await asyncio.to_thread(read)
        await hashed[number - 1].wait()
        async with lock:
            with body.getbuffer() as view:
                await asyncio.to_thread(digest.update, view)
        hashed[number].set()
        return body

    async def one(number: int, chunk: StoredChunk) -> None:
        async with slots:
            if variant.startswith("flush"):
                body = await read_and_hash(number, chunk)
                etags[number] = await objects.upload_part(key, upload_id, number, body)
                return
            source = {
                "Bucket": staging.bucket,
                "Key": staging.chunk_key(SESSION, chunk.file_name),
            }
            copied = objects.call(
                "upload_part_copy",
                Bucket=objects.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource=source,
            )
            if variant == "copy + read":
                response, _ = await asyncio.gather(copied, read_and_hash(number, chunk))
            else:
                response = await copied
            etags[number] = str(response["CopyPartResult"]["ETag"])

    await asyncio.gather(*(one(n, c) for n, c in enumerate(chunks, start=1)))
    await objects.finish(key, upload_id, [etags[n] for n in range(1, len(chunks) + 1)])
    return key if variant == "copy" else f"{key} {digest.hexdigest()}"


async def check_object(objects: S3MultipartStore, key: str, expected: str) -> None:
    response = await objects.call("get_object", Bucket=objects.bucket, Key=key)
    async with response["Body"] as body:
        actual = hashlib.sha256(await body.read()).hexdigest()
    assert actual == expected, (key, actual, expected)
    await objects.call("delete_object", Bucket=objects.bucket, Key=key)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    s3 = LocalS3Server().start()
    assert s3.process is not None
    moto = Process("moto", s3.port, s3.process)  # read only; s3.stop() ends it
    bucket = f"partcopy-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    stores: dict[str, S3MultipartStore] = {}
    results: dict[str, Any] = {
        "parts": args.parts,
        "part_mib": PART // MiB,
        "concurrency": args.concurrency,
        "runs": args.runs,
        "load_average_at_start": os.getloadavg(),
    }
    try:
        signs: tuple[Literal["auto", "never"], ...] = ("auto", "never")
        for sign in signs:
            stores[sign] = S3MultipartStore(settings(s3, bucket, sign))
            await stores[sign].open()
        with tempfile.TemporaryDirectory(prefix="partcopy-") as local:
            staging = S3Staging(
                stores["auto"], DiskStaging(Path(local)), bucket=bucket, prefix="staging/"
            )
            await staging.open()
            chunks = await stage(stores["auto"], staging, args.parts)
            whole = hashlib.sha256()
            for chunk in chunks:
                whole.update(
                    await staging.get_range(staging.chunk_key(SESSION, chunk.file_name), 0, PART)
                )
            expected = whole.hexdigest()
            gib = args.parts * PART / GiB
            samples: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
            for _ in range(args.runs):
                for variant in VARIANTS:
                    objects = stores["never" if variant == "flush, unsigned" else "auto"]
                    cpu, moto_cpu, wall = (
                        time.process_time(),
                        moto.cpu_seconds(),
                        time.perf_counter(),
                    )
                    done = await run_variant(variant, objects, staging, chunks, args.concurrency)
                    figures = {
                        "seconds_per_gib": (time.perf_counter() - wall) / gib,
                        "cpu_s_per_gib": (time.process_time() - cpu) / gib,
                        "moto_cpu_s_per_gib": (moto.cpu_seconds() - moto_cpu) / gib,
                    }
                    for name, value in figures.items():
                        samples[variant].setdefault(name, []).append(value)
                    key, _, digest = done.partition(" ")
                    if digest:
                        assert digest == expected, (variant, digest, expected)
                    await check_object(objects, key, expected)
            results["variants"] = {
                variant: {name: median(values) for name, values in figures_.items()}
                | {"samples": figures_}
                for variant, figures_ in samples.items()
            }
    finally:
        for store in stores.values():
            await store.close()
        s3.stop()
    results["load_average_at_end"] = os.getloadavg()
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"{results['parts']} parts of {results['part_mib']} MiB, {results['concurrency']} at a"
        f" time, medians of {results['runs']} runs; load average"
        f" {results['load_average_at_start'][0]:.1f} at start,"
        f" {results['load_average_at_end'][0]:.1f} at end.",
        "",
        "| per GiB | wall s | service CPU-s | moto CPU-s |",
        "|---|---:|---:|---:|",
    ]
    for variant, figures in results["variants"].items():
        lines.append(
            f"| {variant} | {figures['seconds_per_gib']:.2f} | {figures['cpu_s_per_gib']:.2f}"
            f" | {figures['moto_cpu_s_per_gib']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.partcopy", description=__doc__)
    parser.add_argument("--parts", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    out = Path(__file__).resolve().parent / "results" / "partcopy.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
