"""Hostile audio sent to a real service process over HTTP (issue 12, items 5 and 6).

Facts out of range (a WebM Channels element of thousands of bytes, a Duration of inf or
1e308) never reach the response, the session row, the webhook or the object's metadata,
and never cause a 5xx. Containers of 500,000 empty chunks or boxes are refused for a
fraction of a CPU-second and a few MB. Cost is read from the service's /proc entry
(CPU-seconds, peak RSS after resetting it), not from the wall clock.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.dev.keys import KeyPair
from app.settings import Settings
from app.uploads.audio import MAX_CHANNELS, MAX_DURATION_SECONDS
from tests import hostile_audio
from tests.notify.receiver import Receiver, wait_until
from tests.service_process import ServiceProcess, settings_env

MiB = 1024 * 1024
SECRET = b"hostile-audio-webhook-secret"

# Loose: an honest 4 MB file costs ~0.05 CPU-s to complete here; the crafted ones cost
# 2.8-3.6 CPU-s and ~130 MB before the caps.
MAX_COMPLETE_CPU_SECONDS = 0.6
MAX_COMPLETE_PEAK_GROWTH_MB = 40


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def _status_kb(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{name} not in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := current RSS (Linux >= 4.0)


def peak_rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def strict_json(body: bytes | str) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"non-strict JSON constant {constant}")

    return json.loads(body, parse_constant=refuse)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hooks = await Receiver(SECRET).start()
    yield hooks
    await hooks.stop()


@pytest.fixture
def service(
    settings_factory: Callable[..., Settings], receiver: Receiver, tmp_path: Path
) -> Iterator[ServiceProcess]:
    settings = settings_factory(
        main_service_notify_url=receiver.url,
        main_service_notify_secret=SECRET.decode(),
        eager_flush=False,  # every object then carries the full audio metadata
    )
    process = ServiceProcess(settings_env(settings), log_path=tmp_path / "service.log").start()
    yield process
    process.stop()


async def upload(http: httpx.AsyncClient, data: bytes, name: str, file_id: int) -> tuple[str, int]:
    chunks = [data[i : i + MiB] for i in range(0, len(data), MiB)]
    init = await http.post(
        "/upload/init", json={"main_service_file_id": file_id, "original_file_name": name}
    )
    assert init.status_code == 200, init.text
    session_id = str(init.json()["data"]["upload_session_id"])
    for index, chunk in enumerate(chunks):
        sent = await http.post(
            "/upload/chunk",
            data={"upload_session_id": session_id, "chunk_index": str(index)},
            files={"chunk": ("blob", chunk)},
        )
        assert sent.status_code == 200, sent.text
    return session_id, len(chunks)


async def complete(
    http: httpx.AsyncClient, session_id: str, total: int, file_id: int
) -> httpx.Response:
    return await http.post(
        "/upload/complete",
        json={
            "upload_session_id": session_id,
            "total_chunks": total,
            "main_service_file_id": file_id,
        },
    )


def assert_facts_in_range(facts: dict[str, Any]) -> None:
    channels, duration = facts["channels"], facts["duration_seconds"]
    assert channels is None or 1 <= channels <= MAX_CHANNELS
    assert duration is None or 0 < duration <= MAX_DURATION_SECONDS
    for name in ("sample_rate", "bitrate"):
        assert facts[name] is None or (isinstance(facts[name], int) and facts[name] > 0)


CRAFTED_WEBM = {
    "channels_1500_bytes": hostile_audio.webm(channels=b"\x07" * 1500),
    "channels_3000_bytes": hostile_audio.webm(channels=b"\x07" * 3000),
    "channels_300": hostile_audio.webm(channels=(300).to_bytes(2, "big")),
    "channels_0": hostile_audio.webm(channels=b"\x00"),
    "duration_inf": hostile_audio.webm(duration=float("inf")),
    "duration_1e308": hostile_audio.webm(duration=1e308),
    "duration_nan": hostile_audio.webm(duration=float("nan")),
    "duration_negative": hostile_audio.webm(duration=-5.0),
    "rate_inf": hostile_audio.webm(sampling_frequency=float("inf")),
    "rate_1e12": hostile_audio.webm(sampling_frequency=1e12),
    "scale_max": hostile_audio.webm(timestamp_scale=0xFFFFFFFF, duration=1e300),
}


async def test_audio_facts_out_of_range_never_leave_the_parser(
    service: ServiceProcess, receiver: Receiver, keypair: KeyPair, s3: Any, bucket: str
) -> None:
    headers = {"Authorization": f"Bearer {keypair.token('attacker')}"}
    accepted: dict[str, dict[str, Any]] = {}
    assert service.process is not None
    pid = service.process.pid
    async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=60) as http:
        for file_id, (label, data) in enumerate(CRAFTED_WEBM.items(), start=1):
            session_id, total = await upload(http, data, f"{label}.webm", file_id)
            before_cpu, before_rss = cpu_seconds(pid), rss_mb(pid)
            reset_peak_rss(pid)
            done = await complete(http, session_id, total, file_id)
            cpu, peak = cpu_seconds(pid) - before_cpu, peak_rss_mb(pid) - before_rss
            print(f"\n{label}: {done.status_code} {cpu:.2f} CPU-s, peak RSS +{peak:.0f} MB")
            assert cpu < MAX_COMPLETE_CPU_SECONDS
            assert done.status_code in (200, 415), (label, done.status_code, done.text)
            body = strict_json(done.content)
            if done.status_code == 415:
                assert body["error"]["code"] == "unsupported_audio"
                continue
            facts = body["data"]
            assert_facts_in_range(facts)
            accepted[label] = facts
            status = await http.get(f"/upload/{session_id}")
            assert status.status_code == 200
            assert_facts_in_range(strict_json(status.content)["data"]["result"])
            meta = s3.head_object(Bucket=bucket, Key=facts["key"])["Metadata"]
            audio_meta = {k: v for k, v in meta.items() if k.startswith("audio-")}
            assert audio_meta["audio-format"] == "webm"
            for key, value in audio_meta.items():
                assert len(value) < 20, (label, key, value)
                assert value.lower() not in ("inf", "-inf", "nan", "infinity")
    # Oversized unsigned integers are damaged files; the rest keep their sane facts.
    assert "channels_1500_bytes" not in accepted
    assert "channels_3000_bytes" not in accepted
    assert accepted["channels_300"]["channels"] is None
    assert accepted["channels_0"]["channels"] is None
    assert accepted["duration_1e308"]["duration_seconds"] is None
    assert accepted["rate_inf"]["sample_rate"] is None
    assert accepted["duration_inf"]["channels"] == 1
    assert accepted["duration_inf"]["sample_rate"] == 48000
    # Every accepted upload's webhook arrived as strict JSON with the same facts.
    wait_until_delivered = len(accepted)
    await wait_until(lambda: len(receiver.delivered()) >= wait_until_delivered, 60)
    for received in receiver.delivered():
        assert received.signature_ok
        payload = strict_json(received.body)
        text = received.body.decode()
        assert "Infinity" not in text and "NaN" not in text
        assert isinstance(payload, dict)


HOSTILE_CONTAINERS = {
    "aiff_500k_empty_chunks": ("bomb.aiff", hostile_audio.aiff_with_empty_chunks(500_000)),
    "m4a_500k_empty_boxes": ("bomb.m4a", hostile_audio.m4a_with_empty_boxes(500_000)),
    "webm_500k_void_elements": ("bomb.webm", hostile_audio.webm_of_tiny_elements(500_000)),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_CONTAINERS))
async def test_parser_cost_is_bounded(kind: str, service: ServiceProcess, keypair: KeyPair) -> None:
    name, data = HOSTILE_CONTAINERS[kind]
    assert 900_000 < len(data) < 4_200_000
    assert service.process is not None
    pid = service.process.pid
    headers = {"Authorization": f"Bearer {keypair.token('attacker')}"}
    async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=120) as http:
        session_id, total = await upload(http, data, name, 1)
        before_cpu, before_rss = cpu_seconds(pid), rss_mb(pid)
        reset_peak_rss(pid)
        done = await complete(http, session_id, total, 1)
        cpu, peak = cpu_seconds(pid) - before_cpu, peak_rss_mb(pid) - before_rss
    print(f"\n{kind}: complete {done.status_code} cost {cpu:.2f} CPU-s, peak RSS +{peak:.0f} MB")
    assert done.status_code == 415, done.text
    assert done.json()["error"]["code"] == "unsupported_audio"
    assert cpu < MAX_COMPLETE_CPU_SECONDS
    assert peak < MAX_COMPLETE_PEAK_GROWTH_MB


def test_crafted_files_are_what_they_claim() -> None:
    """The builders make what the tests above rely on (so a pass is not a typo's)."""
    aiff = hostile_audio.aiff_with_empty_chunks(3)
    assert aiff[:4] == b"FORM" and aiff[8:12] == b"AIFF"
    assert struct.unpack(">I", aiff[4:8])[0] == len(aiff) - 8
    m4a = hostile_audio.m4a_with_empty_boxes(2)
    assert m4a[4:8] == b"ftyp" and m4a.count(b"free") == 2
    webm = CRAFTED_WEBM["channels_3000_bytes"]
    assert webm[:4] == b"\x1a\x45\xdf\xa3" and b"A_OPUS" in webm
