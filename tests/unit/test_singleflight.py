"""Single-flight: one computation per key in flight, shared results and errors, no leaks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from cache.singleflight import SingleFlight


async def until(predicate: Callable[[], bool]) -> None:
    """Yield to the loop until ``predicate()`` holds (bounded by the test timeout)."""
    while True:
        if predicate():
            return
        await asyncio.sleep(0)


async def test_concurrent_callers_share_one_computation() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()
    computed = 0

    async def compute() -> int:
        nonlocal computed
        computed += 1
        await gate.wait()
        return 42

    callers = [asyncio.create_task(flight.do("k", compute)) for _ in range(500)]
    await until(lambda: flight.waits == 499)
    gate.set()
    assert await asyncio.gather(*callers) == [42] * 500
    assert computed == 1
    assert (flight.calls, flight.waits) == (1, 499)
    assert len(flight) == 0


async def test_exceptions_reach_every_caller() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()

    async def compute() -> int:
        await gate.wait()
        raise LookupError("boom")

    callers = [asyncio.create_task(flight.do("k", compute)) for _ in range(20)]
    await until(lambda: flight.waits == 19)
    gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(result, LookupError) for result in results)
    assert len(flight) == 0


async def test_finished_computations_are_not_reused() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    counter = 0

    async def compute() -> int:
        nonlocal counter
        counter += 1
        return counter

    assert await flight.do("k", compute) == 1
    assert await flight.do("k", compute) == 2
    with pytest.raises(ZeroDivisionError):

        async def failing() -> int:
            return 1 // 0

        await flight.do("k", failing)
    assert await flight.do("k", compute) == 3
    assert len(flight) == 0


async def test_keys_are_independent() -> None:
    flight: SingleFlight[str, str] = SingleFlight()

    async def compute_a() -> str:
        return "a"

    async def compute_b() -> str:
        return "b"

    results = await asyncio.gather(flight.do("a", compute_a), flight.do("b", compute_b))
    assert list(results) == ["a", "b"]
    assert flight.calls == 2


async def test_a_cancelled_caller_leaves_the_others_and_the_work_alone() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()

    async def compute() -> int:
        await gate.wait()
        return 7

    first = asyncio.create_task(flight.do("k", compute))
    second = asyncio.create_task(flight.do("k", compute))
    await until(lambda: flight.waits == 1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    assert await second == 7
    assert len(flight) == 0


async def test_an_abandoned_failure_is_not_reported_as_lost() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()
    finished = asyncio.Event()

    async def compute() -> int:
        try:
            await gate.wait()
            raise RuntimeError("nobody listens")
        finally:
            finished.set()

    caller = asyncio.create_task(flight.do("k", compute))
    await until(lambda: flight.calls == 1)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    gate.set()
    await finished.wait()
    await until(lambda: len(flight) == 0)
