"""The framework ceiling: a bare FastAPI/uvicorn endpoint that reads a chunk request's
body as a stream and drops it (no auth, no parsing, no disk, no hashing)."""

from __future__ import annotations

from fastapi import FastAPI, Request

app = FastAPI()


@app.post("/upload/chunk")
async def discard(request: Request) -> dict[str, int]:
    size_bytes = 0
    async for piece in request.stream():
        size_bytes += len(piece)
    return {"size": size_bytes}
