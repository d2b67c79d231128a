"""Watermark holder: monotonic, fed by invalidation messages, and awaitable."""

from __future__ import annotations

import asyncio

from cache.records import Invalidation
from cache.watermark import WatermarkHolder


def test_the_watermark_only_moves_forward() -> None:
    holder = WatermarkHolder()
    assert holder.value is None
    assert holder.advance(10)
    assert not holder.advance(9)
    assert not holder.advance(10)
    assert holder.value == 10


def test_messages_with_a_watermark_advance_it() -> None:
    holder = WatermarkHolder(5)
    holder.on_invalidation(Invalidation((("k", 1),)))
    assert holder.value == 5
    holder.on_invalidation(Invalidation(watermark=8))
    assert holder.value == 8


async def test_waiters_wake_when_the_watermark_reaches_them() -> None:
    holder = WatermarkHolder(1)
    waiter = asyncio.create_task(holder.wait_until(10))
    await asyncio.sleep(0)
    holder.advance(5)
    await asyncio.sleep(0)
    assert not waiter.done()
    holder.advance(10)
    await waiter
    await holder.wait_until(3)  # already reached: returns at once
