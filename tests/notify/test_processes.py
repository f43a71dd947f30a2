"""The notification path across real service processes (uvicorn subprocesses on unix
sockets): events survive a crash and are sent after the restart, and two replicas on one
PostgreSQL deliver each event exactly once. The operator command runs as a process too."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.dev.keys import KeyPair
from app.notify.delivery import DeliveryPolicy
from app.notify.outbox import AttemptOutcome, EventState, SqlOutbox
from app.notify.tables import notify_attempts
from app.settings import Settings
from app.storage.database import create_engine
from tests.notify.receiver import Receiver, wait_until
from tests.support import UploadApi

REPO = Path(__file__).resolve().parents[2]
SECRET = "process-test-secret"
QUEUED = "File upload completed; main service notification queued."

pytestmark = pytest.mark.slow


def service_env(settings: Settings, notify_url: str) -> dict[str, str]:
    assert settings.main_service_jwt_public_key is not None
    assert settings.s3_access_key is not None and settings.s3_secret_key is not None
    env = {
        name: value
        for name, value in os.environ.items()
        if name in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    }
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "MAIN_SERVICE_JWT_PUBLIC_KEY": settings.main_service_jwt_public_key.get_secret_value(),
            "EXPECTED_JWT_ISSUER": settings.expected_jwt_issuer,
            "EXPECTED_JWT_AUDIENCE": settings.expected_jwt_audience,
            "S3_BUCKET_NAME": settings.s3_bucket_name,
            "S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
            "S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(),
            "S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
            "LOCAL_TEMP_CHUNK_PATH": str(settings.local_temp_chunk_path),
            "DATABASE_URL": settings.resolved_database_url,
            "MAIN_SERVICE_NOTIFY_URL": notify_url,
            "MAIN_SERVICE_NOTIFY_SECRET": SECRET,
            "NOTIFY_POLL_INTERVAL_SECONDS": "0.2",
            "LOG_LEVEL": "INFO",
        }
    )
    if settings.database_schema:
        env["DATABASE_SCHEMA"] = settings.database_schema
    return env


class ServiceProcess:
    def __init__(self, env: dict[str, str], workdir: Path, name: str) -> None:
        self.env = env
        self.workdir = workdir
        self.socket_path = workdir / f"{name}.sock"
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:app", "--uds", str(self.socket_path)],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        deadline = asyncio.get_running_loop().time() + 60
        async with self.client() as http:
            while True:
                assert self.process.poll() is None, self.log_path.read_text()
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                assert asyncio.get_running_loop().time() < deadline, "service did not start"
                await asyncio.sleep(0.1)

    def client(self) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
        return httpx.AsyncClient(transport=transport, base_url="http://service", timeout=60)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=30)


@asynccontextmanager
async def services(
    env: dict[str, str], workdir: Path, count: int
) -> AsyncIterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    try:
        for index in range(count):
            started.append(await ServiceProcess(env, workdir, f"svc{index}").start())
        yield started
        # A clean stop ends the delivery loop with the process (uvicorn re-raises the
        # SIGTERM it handled once shutdown is done).
        for service in started:
            assert service.stop() in (0, -signal.SIGTERM)
            assert '"service.stopped"' in service.log_path.read_text()
    finally:
        for service in started:
            service.stop(signal.SIGKILL)


def admin(env: dict[str, str], workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.admin", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def upload_through(service: ServiceProcess, keypair: KeyPair, audio: bytes) -> str:
    async with service.client() as http:
        response = await UploadApi(http, keypair).upload(audio, chunk_size=200_000)
    assert response.status_code == 200, response.text
    assert response.json()["message"] == QUEUED
    return str(response.json()["data"]["key"])


async def test_event_queued_before_a_crash_is_delivered_after_restart(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    audio_wav: bytes,
    tmp_path: Path,
) -> None:
    receiver = Receiver(SECRET.encode())  # not started: the main service is down
    env = service_env(settings_factory(), receiver.url)
    first = await ServiceProcess(env, tmp_path, "before").start()
    try:
        key = await upload_through(first, keypair, audio_wav)
    finally:
        first.stop(signal.SIGKILL)  # a crash, not a clean shutdown

    pending = admin(env, tmp_path, "outbox", "list", "--state", "pending")
    assert pending.returncode == 0, pending.stderr
    [line] = pending.stdout.splitlines()
    event_id = line.split()[0]
    # The inline attempt (or the delivery loop's, whichever claimed the event first)
    # failed; a loop attempt still in flight at the SIGKILL leaves no record.
    assert "attempts=0" in line or "attempts=1" in line

    await receiver.start()
    try:
        async with services(env, tmp_path, 1):
            # A kill that lands while an attempt holds the event's lease delays it until
            # the lease lapses (seen in CI): allow for that, then the usual margin.
            deadline = DeliveryPolicy(max_attempts=1).lease_seconds + 30
            await wait_until(lambda: bool(receiver.delivered()), deadline)
            [got] = receiver.delivered()
            assert got.signature_ok
            assert got.event_id == event_id
            assert got.payload["key"] == key
            delivered = admin(env, tmp_path, "outbox", "list", "--state", "delivered")
            assert event_id in delivered.stdout
            shown = admin(env, tmp_path, "outbox", "show", event_id)
            assert shown.returncode == 0, shown.stderr
            history = [line.split()[1] for line in shown.stdout.splitlines()[2:]]
            assert history in (["retry", "delivered"], ["delivered"])
            assert admin(env, tmp_path, "outbox", "requeue", "no-such-event").returncode == 1
            # Delivered is final: the operator cannot send it again.
            requeue = admin(env, tmp_path, "outbox", "requeue", event_id)
            assert requeue.returncode == 1
            assert "never sent again" in requeue.stderr
    finally:
        await receiver.stop()
    assert len(receiver.delivered()) == 1


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_two_replicas_on_one_postgres_deliver_each_event_once(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    audio_wav: bytes,
    tmp_path: Path,
) -> None:
    receiver = await Receiver(SECRET.encode()).start()
    receiver.default = 503  # the main service is failing while the uploads complete
    settings = settings_factory()
    env = service_env(settings, receiver.url)
    engine = create_engine(settings.resolved_database_url, schema=settings.database_schema)
    outbox = SqlOutbox(engine)
    try:
        async with services(env, tmp_path, 2) as replicas:
            keys = await asyncio.gather(
                *(upload_through(replicas[i % 2], keypair, audio_wav) for i in range(8))
            )
            receiver.default = 200

            async def all_delivered() -> bool:
                return (await outbox.counts_by_state())[EventState.DELIVERED] == len(keys)

            deadline = asyncio.get_running_loop().time() + 90
            while not await all_delivered():
                assert asyncio.get_running_loop().time() < deadline, receiver.requests
                await asyncio.sleep(0.1)

        per_event = Counter(r.event_id for r in receiver.delivered())
        assert len(per_event) == len(keys)
        assert set(per_event.values()) == {1}
        assert sorted(r.payload["key"] for r in receiver.delivered()) == sorted(keys)
        assert all(r.signature_ok for r in receiver.requests)
        # Every request the receiver saw is one recorded attempt, and vice versa.
        async with engine.connect() as conn:
            rows = (
                await conn.execute(select(notify_attempts.c.event_id, notify_attempts.c.outcome))
            ).all()
        assert Counter(row.event_id for row in rows) == Counter(
            r.event_id for r in receiver.requests
        )
        delivered_rows = [row for row in rows if row.outcome == AttemptOutcome.DELIVERED.value]
        assert len(delivered_rows) == len(keys)
    finally:
        await engine.dispose()
        await receiver.stop()
