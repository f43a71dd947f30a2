"""SingleFlight: one computation for a crowd of callers, reused for its TTL."""

from __future__ import annotations

import asyncio

import pytest

from app.single_flight import SingleFlight


async def test_concurrent_callers_share_one_computation_then_its_result() -> None:
    release = asyncio.Event()
    now = [0.0]

    async def compute() -> int:
        await release.wait()
        return 7

    flight = SingleFlight(compute, ttl_seconds=2.0, clock=lambda: now[0])
    waiting = [asyncio.ensure_future(flight.get()) for _ in range(50)]
    await asyncio.sleep(0)  # let every caller reach the shared computation
    release.set()
    assert await asyncio.gather(*waiting) == [7] * 50
    assert flight.computations == 1
    now[0] = 1.9
    assert await flight.get() == 7
    assert flight.computations == 1
    now[0] = 2.0
    assert await flight.get() == 7
    assert flight.computations == 2


async def test_a_cancelled_caller_does_not_cancel_the_others_and_failures_are_not_kept() -> None:
    release = asyncio.Event()
    failing = [True]

    async def compute() -> str:
        await release.wait()
        if failing[0]:
            raise RuntimeError("database down")
        return "ok"

    flight = SingleFlight(compute, ttl_seconds=60.0)
    first, second = asyncio.ensure_future(flight.get()), asyncio.ensure_future(flight.get())
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    with pytest.raises(RuntimeError):
        await second
    failing[0] = False
    assert await flight.get() == "ok"
    assert flight.computations == 2
