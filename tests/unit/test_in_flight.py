"""Writes left in flight: drained oldest first down to a bound, a failure raised once with the
later writes abandoned, and abandoning ends every write still running."""

from __future__ import annotations

import asyncio

import pytest

from indexer.in_flight import WritesInFlight


async def _write(log: list[str], name: str, release: asyncio.Event, fail: bool = False) -> None:
    await release.wait()
    if fail:
        raise RuntimeError(name)
    log.append(name)


async def test_drain_waits_for_the_oldest_down_to_keep() -> None:
    writes, log, release = WritesInFlight(), [], asyncio.Event()
    for name in ("a", "b", "c"):
        writes.start(_write(log, name, release))
    release.set()
    await writes.drain(keep=1)
    assert len(writes) == 1 and log[:2] == ["a", "b"]
    await writes.drain()
    assert len(writes) == 0 and log == ["a", "b", "c"]


async def test_a_failure_is_raised_and_the_later_writes_abandoned() -> None:
    writes, log = WritesInFlight(), []
    failing, held = asyncio.Event(), asyncio.Event()
    writes.start(_write(log, "a", failing, fail=True))
    writes.start(_write(log, "b", held))
    failing.set()
    with pytest.raises(RuntimeError, match="a"):
        await writes.drain()
    assert len(writes) == 0
    held.set()
    await asyncio.sleep(0)
    assert log == []  # "b" was cancelled, not left running


async def test_abandon_ends_every_write_and_swallows_their_failures() -> None:
    writes, log = WritesInFlight(), []
    done = asyncio.Event()
    done.set()
    writes.start(_write(log, "failed", done, fail=True))
    writes.start(_write(log, "waiting", asyncio.Event()))
    await asyncio.sleep(0)
    await writes.abandon()
    assert len(writes) == 0 and log == []
