"""A long invalidation message is applied a slice at a time, the event loop running other
work in between, and its callbacks run only once every key is applied."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from cache import invalidation
from cache.invalidation import InvalidationListener
from cache.l1 import L1Cache
from cache.readmodel.codec import encode_invalidation
from cache.readmodel.keys import KeyLayout
from cache.records import Invalidation


async def test_a_long_message_yields_between_slices_and_calls_back_after_the_last() -> None:
    keys = [f"p:k{i}" for i in range(invalidation.INVALIDATION_SLICE * 2 + 10)]
    l1: L1Cache[str] = L1Cache(None, 60.0)
    # Never connected: the message is handed to it as the pump would.
    listener = InvalidationListener(aioredis.Redis(), KeyLayout("p:"))
    listener.add_cache(l1)
    l1.enable()  # as a subscription does
    for key in keys:
        assert l1.install(key, "old", 1, l1.begin_fill(key))
    assert l1.install("q:other", "kept", 1, l1.begin_fill("q:other"))
    turns = 0
    seen_at_callback: list[tuple[int, int]] = []

    def on_message(message: Invalidation) -> None:
        remaining = sum(1 for key in keys if l1.get(key) is not None)
        seen_at_callback.append((remaining, turns))

    listener.add_callback(on_message)

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = turns
    message = Invalidation(tuple((key, 2) for key in keys), watermark=9)
    await listener._apply(encode_invalidation(message))
    ticking.cancel()
    # Three slices, two turns of the loop given away in between; then the callback, with
    # every key already dropped.
    assert len(seen_at_callback) == 1
    remaining, turns_at_callback = seen_at_callback[0]
    assert remaining == 0
    assert turns_at_callback - before >= 2
    assert l1.get("q:other") is not None  # not named: kept


async def test_an_entry_at_the_message_version_survives_it() -> None:
    l1: L1Cache[str] = L1Cache(None, 60.0)
    listener = InvalidationListener(aioredis.Redis(), KeyLayout("p:"))
    listener.add_cache(l1)
    l1.enable()
    assert l1.install("p:new", "new", 5, l1.begin_fill("p:new"))
    assert l1.install("p:old", "old", 4, l1.begin_fill("p:old"))
    await listener._apply(encode_invalidation(Invalidation((("p:new", 5), ("p:old", 5)))))
    assert l1.get("p:new") is not None
    assert l1.get("p:old") is None
