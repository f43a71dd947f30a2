"""The process-wide part-buffer budget (issue 12, item 7): its rules on a real event loop
and worker threads, and its effect on a real service process completing many uploads
at once (peak RSS read from /proc)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app.dev.keys import KeyPair
from app.settings import Settings
from app.uploads.buffer_budget import BudgetedSlots, BufferBudget
from tests.processes import make_wav
from tests.service_process import ServiceProcess, settings_env
from tests.uploads.test_hostile_audio import peak_rss_mb, reset_peak_rss, rss_mb

MiB = 1024 * 1024


async def settle() -> None:
    """Let every task that can run, run (waiters are woken via call_soon)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_bytes_over_the_budget_wait_for_a_release() -> None:
    budget = BufferBudget(10)
    await budget.acquire(4)
    await budget.acquire(4)
    third = asyncio.ensure_future(budget.acquire(4))
    await settle()
    assert not third.done()
    assert budget.used_bytes == 8
    budget.release(4)
    await asyncio.wait_for(third, 10)
    assert budget.used_bytes == 8
    assert budget.peak_bytes == 8


async def test_a_reservation_larger_than_the_budget_is_granted_alone() -> None:
    budget = BufferBudget(10)
    await budget.acquire(25)  # nothing else held: granted, or it would wait forever
    small = asyncio.ensure_future(budget.acquire(1))
    await settle()
    assert not small.done()
    budget.release(25)
    await asyncio.wait_for(small, 10)


async def test_grants_are_first_come_first_served() -> None:
    budget = BufferBudget(10)
    await budget.acquire(6)
    big = asyncio.ensure_future(budget.acquire(10))
    await settle()
    small = asyncio.ensure_future(budget.acquire(1))  # would fit, but queues behind `big`
    await settle()
    assert not big.done() and not small.done()
    budget.release(6)
    await asyncio.wait_for(big, 10)
    await settle()
    assert not small.done()
    budget.release(10)
    await asyncio.wait_for(small, 10)


async def test_a_cancelled_waiter_leaves_the_queue_and_holds_nothing() -> None:
    budget = BufferBudget(10)
    await budget.acquire(8)
    blocked = asyncio.ensure_future(budget.acquire(8))
    behind = asyncio.ensure_future(budget.acquire(2))
    await settle()
    blocked.cancel()
    await asyncio.gather(blocked, return_exceptions=True)
    await asyncio.wait_for(behind, 10)  # no longer queued behind the cancelled one
    assert budget.used_bytes == 10
    # Granted and cancelled in the same turn: the bytes come back.
    budget.release(2)
    granted_late = asyncio.ensure_future(budget.acquire(3))
    await settle()
    assert not granted_late.done()
    budget.release(8)  # grants it (via call_soon) ...
    granted_late.cancel()  # ... and it is cancelled before it runs
    await asyncio.gather(granted_late, return_exceptions=True)
    await settle()
    assert budget.used_bytes == 0


async def test_release_from_a_worker_thread_wakes_the_loop() -> None:
    budget = BufferBudget(4)
    await budget.acquire(4)
    waiting = asyncio.ensure_future(budget.acquire(4))
    await settle()
    thread = threading.Thread(target=budget.release, args=(4,))
    thread.start()
    await asyncio.wait_for(waiting, 10)
    thread.join()
    assert budget.used_bytes == 4


async def test_slots_bound_both_the_local_concurrency_and_the_budget() -> None:
    budget = BufferBudget(3 * MiB)
    first, second = BudgetedSlots(4, MiB, budget), BudgetedSlots(4, MiB, budget)
    for _ in range(3):
        await first.acquire()
    blocked = asyncio.ensure_future(second.acquire())
    await settle()
    assert not blocked.done()  # first holds the whole budget
    first.release()
    await asyncio.wait_for(blocked, 10)
    assert budget.used_bytes == 3 * MiB
    for _ in range(2):
        first.release()
    second.release()
    assert budget.used_bytes == 0


def test_the_budget_must_hold_one_part(settings_factory: Callable[..., Settings]) -> None:
    with pytest.raises(ValidationError, match="PART_BUFFER_BUDGET_BYTES"):
        settings_factory(s3_part_size_bytes=16 * MiB, part_buffer_budget_bytes=8 * MiB)
    assert settings_factory().part_buffer_budget_bytes == 256 * MiB


SESSIONS = 8
PART_MIB = 5


@pytest.mark.slow
async def test_many_concurrent_completes_stay_within_the_budget(
    settings_factory: Callable[..., Settings], keypair: KeyPair, tmp_path: Path
) -> None:
    """Eight completes of 20 MiB at once, four 5 MiB parts in flight each, would hold
    160 MiB of part buffers; with a budget of one part, the process's peak RSS grows by
    a few parts at most."""
    data = make_wav(tmp_path / "talk.wav", 119)  # ~21 MB of real audio: 5 parts
    settings = settings_factory(
        s3_part_size_bytes=PART_MIB * MiB,
        s3_max_concurrency=4,
        part_buffer_budget_bytes=PART_MIB * MiB,
        eager_flush=False,
    )
    # As the README's production section says: freed buffers are then not kept in one
    # malloc arena per worker thread, which would blur what the budget bounds.
    env = {**settings_env(settings), "MALLOC_ARENA_MAX": "2"}
    service = ServiceProcess(env, log_path=tmp_path / "service.log").start()
    try:
        assert service.process is not None
        pid = service.process.pid
        headers = {"Authorization": f"Bearer {keypair.token('many')}"}
        chunk = 4 * MiB
        pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
        async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=300) as http:
            sessions = []
            for file_id in range(1, SESSIONS + 1):
                init = await http.post(
                    "/upload/init",
                    json={"main_service_file_id": file_id, "original_file_name": "talk.wav"},
                )
                assert init.status_code == 200, init.text
                session_id = init.json()["data"]["upload_session_id"]
                for index, piece in enumerate(pieces):
                    sent = await http.post(
                        "/upload/chunk",
                        data={"upload_session_id": session_id, "chunk_index": str(index)},
                        files={"chunk": ("blob", piece)},
                    )
                    assert sent.status_code == 200, sent.text
                sessions.append((file_id, session_id))
            before = rss_mb(pid)
            reset_peak_rss(pid)
            answers = await asyncio.gather(
                *(
                    http.post(
                        "/upload/complete",
                        json={
                            "upload_session_id": session_id,
                            "total_chunks": len(pieces),
                            "main_service_file_id": file_id,
                        },
                    )
                    for file_id, session_id in sessions
                )
            )
            growth = peak_rss_mb(pid) - before
        print(f"\n{SESSIONS} concurrent completes: peak RSS +{growth:.0f} MB")
        assert [a.status_code for a in answers] == [200] * SESSIONS, answers[0].text
        assert {a.json()["data"]["size"] for a in answers} == {len(data)}
        # Unbudgeted: 8 x 4 x 5 MiB = 160 MiB of buffers (measured +170 MB).
        assert growth < 80
    finally:
        service.stop()
