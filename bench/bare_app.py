"""The framework ceilings: a bare FastAPI/uvicorn endpoint that reads a chunk request's
body as a stream and drops it (no auth, no parsing, no disk, no hashing), and a bare tus
endpoint (below)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.post("/upload/chunk")
async def discard(request: Request) -> dict[str, int]:
    size_bytes = 0
    async for piece in request.stream():
        size_bytes += len(piece)
    return {"size": size_bytes}


# The tus ceiling: the least a uvicorn + FastAPI tus endpoint can do and still do what
# ours does with every byte, the way ours does it: SHA-256 and the write to the staging
# disk in a worker thread, one block of >= 1 MiB there while the next one gathers. No
# auth, database, offset check, lease, quota, logging, one file per upload (as tus-node).
# Its files go under the working directory (the bench's work directory, removed after).
TUS_DIR = Path("bare-tus-files")
BLOCK_BYTES = 1 << 20
_uploads: dict[str, tuple[int, Any]] = {}


@app.post("/files")
async def tus_create() -> Response:
    upload_id = os.urandom(8).hex()
    TUS_DIR.mkdir(exist_ok=True)
    fd = os.open(TUS_DIR / upload_id, os.O_WRONLY | os.O_CREAT, 0o600)
    _uploads[upload_id] = (fd, hashlib.sha256())
    return Response(
        status_code=201, headers={"Location": f"/files/{upload_id}", "Tus-Resumable": "1.0.0"}
    )


@app.patch("/files/{upload_id}")
async def tus_patch(upload_id: str, request: Request) -> Response:
    fd, digest = _uploads[upload_id]
    offset = int(request.headers["upload-offset"])
    loop = asyncio.get_running_loop()

    def store(block: list[bytes]) -> None:
        for piece in block:
            digest.update(piece)
        os.writev(fd, block)

    block: list[bytes] = []
    block_bytes = 0
    in_flight: asyncio.Future[None] | None = None
    async for piece in request.stream():
        block.append(piece)
        block_bytes += len(piece)
        offset += len(piece)
        if block_bytes >= BLOCK_BYTES:
            if in_flight is not None:
                await in_flight
            in_flight = loop.run_in_executor(None, store, block)
            block, block_bytes = [], 0
    if in_flight is not None:
        await in_flight
    if block:
        await loop.run_in_executor(None, store, block)
    return Response(
        status_code=204, headers={"Upload-Offset": str(offset), "Tus-Resumable": "1.0.0"}
    )


@app.delete("/files/{upload_id}")
async def tus_delete(upload_id: str) -> Response:
    fd, _ = _uploads.pop(upload_id)
    os.close(fd)
    os.unlink(TUS_DIR / upload_id)
    return Response(status_code=204, headers={"Tus-Resumable": "1.0.0"})
