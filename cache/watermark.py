"""The indexer's applied watermark as this process last heard it, held in memory.

The indexer publishes the watermark on the invalidation channel with each batch, so answering
``X-Read-Watermark`` costs no round trip; a (re)connected listener refreshes it from Redis,
since messages published while it was away are lost. Requests carrying ``X-Min-Watermark``
wait on it here.
"""

from __future__ import annotations

import asyncio

from cache.records import Invalidation
from cache.store import CacheStore
from cache.types import Lsn


class WatermarkHolder:
    __slots__ = ("_advanced", "_value", "text")

    def __init__(self, value: int | None = None) -> None:
        self._value = value
        # ``X-Read-Watermark``'s text, formatted once per value rather than per answer.
        self.text = str(Lsn(value or 0))
        # Replaced at every advance: waiters hold the event that was current when they began.
        self._advanced = asyncio.Event()

    @property
    def value(self) -> int | None:
        """The highest watermark heard of, or ``None`` before any."""
        return self._value

    def advance(self, lsn: int) -> bool:
        """Take ``lsn`` when it is newer; return whether it was."""
        if self._value is not None and lsn <= self._value:
            return False
        self._value = lsn
        self.text = str(Lsn(lsn))
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()
        return True

    def on_invalidation(self, message: Invalidation) -> None:
        """Callback for ``InvalidationListener.add_callback``."""
        if message.watermark is not None:
            self.advance(message.watermark)

    async def refresh(self, store: CacheStore) -> None:
        """Read the watermark from Redis (hook for ``InvalidationListener.add_connect_hook``)."""
        lsn = await store.get_watermark()
        if lsn is not None:
            self.advance(lsn)

    def reached(self, lsn: int) -> bool:
        return self._value is not None and self._value >= lsn

    async def wait_until(self, lsn: int) -> None:
        """Return once the watermark reaches ``lsn``; bound the wait with
        ``asyncio.timeout`` (``X-Wait-Timeout-Ms``)."""
        while not self.reached(lsn):
            await self._advanced.wait()
