"""A thin test client for the upload API: the calls a real client makes, in order."""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import Any

import httpx

from app.dev.keys import KeyPair


def split(data: bytes, chunk_size: int) -> list[bytes]:
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class UploadApi:
    def __init__(self, client: httpx.AsyncClient, keypair: KeyPair, sub: str = "user-1") -> None:
        self.client = client
        self.keypair = keypair
        self.sub = sub

    def headers(self, sub: str | None = None, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keypair.token(sub or self.sub, **claims)}"}

    async def init(
        self,
        file_id: int = 42,
        name: str = "voice.wav",
        *,
        sub: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> httpx.Response:
        body = {"main_service_file_id": file_id, "original_file_name": name, **extra}
        return await self.client.post(
            "/upload/init", json=body, headers=headers or self.headers(sub)
        )

    async def session(self, file_id: int = 42, name: str = "voice.wav", **extra: Any) -> str:
        response = await self.init(file_id, name, **extra)
        assert response.status_code == 200, response.text
        return str(response.json()["data"]["upload_session_id"])

    async def chunk(
        self,
        session_id: str,
        index: int | str,
        data: bytes,
        *,
        sub: str | None = None,
        headers: dict[str, str] | None = None,
        chunk_sha256: str | None = None,
    ) -> httpx.Response:
        fields = {"upload_session_id": session_id, "chunk_index": str(index)}
        if chunk_sha256 is not None:
            fields["chunk_sha256"] = chunk_sha256
        return await self.client.post(
            "/upload/chunk",
            data=fields,
            files={"chunk": ("blob", data)},
            headers=headers or self.headers(sub),
        )

    async def send_all(
        self, session_id: str, chunks: list[bytes], *, parallel: int = 1, shuffle: bool = False
    ) -> None:
        order = list(range(len(chunks)))
        if shuffle:
            random.Random(7).shuffle(order)
        slots = asyncio.Semaphore(parallel)

        async def send(index: int) -> None:
            async with slots:
                response = await self.chunk(session_id, index, chunks[index])
                assert response.status_code == 200, response.text

        await asyncio.gather(*(send(i) for i in order))

    async def complete(
        self,
        session_id: str,
        total_chunks: int,
        file_id: int = 42,
        *,
        sub: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> httpx.Response:
        body = {
            "upload_session_id": session_id,
            "total_chunks": total_chunks,
            "main_service_file_id": file_id,
            **extra,
        }
        return await self.client.post(
            "/upload/complete", json=body, headers=headers or self.headers(sub)
        )

    async def status(self, session_id: str, *, sub: str | None = None) -> httpx.Response:
        return await self.client.get(f"/upload/{session_id}", headers=self.headers(sub))

    async def abort(self, session_id: str, *, sub: str | None = None) -> httpx.Response:
        return await self.client.delete(f"/upload/{session_id}", headers=self.headers(sub))

    async def upload(
        self,
        data: bytes,
        *,
        chunk_size: int = 256 * 1024,
        file_id: int = 42,
        name: str = "voice.wav",
        parallel: int = 1,
        shuffle: bool = False,
        **init_extra: Any,
    ) -> httpx.Response:
        session_id = await self.session(file_id, name, **init_extra)
        chunks = split(data, chunk_size)
        await self.send_all(session_id, chunks, parallel=parallel, shuffle=shuffle)
        return await self.complete(session_id, len(chunks), file_id)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "error"
    assert body["error"]["code"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"]
    return body
