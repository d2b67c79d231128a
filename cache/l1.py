"""L1: a bounded, in-process LRU in front of Redis, kept honest by invalidations.

Entries map a key (the Redis key text from ``cache.readmodel.keys``) to a value (for documents: the
encoded JSON body, ready to write), the version it reflects and when it was installed.

Race-free filling, without tracking fills in flight: every invalidation takes the next number
of a sequence and remembers it per key; ``begin_fill`` hands out the current number as a
token; ``install`` refuses when the key (or a flush, or a forgotten invalidation) has a
number above the token, i.e. something changed after the fill began reading. The memory of
per-key numbers is bounded: forgetting the oldest raises a floor below which every token is
refused, which only costs a miss.

While the invalidation channel is down (``disable``) nothing is served or installed.
Every entry also expires after a short maximum age: a backstop, not the mechanism.

Built on ``collections.OrderedDict`` (C, O(1) ``move_to_end`` and ``popitem``) rather than a
caching library: none offers the invalidation tokens, per-entry versions and the bypass,
and wrapping one would add a Python call layer to every hit.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

V = TypeVar("V")

DEFAULT_MAX_AGE_MS = 1000
DEFAULT_MAX_AGE_SECONDS = DEFAULT_MAX_AGE_MS / 1000
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_INVALIDATION_MEMORY = 16_384


class L1Entry(NamedTuple, Generic[V]):
    value: V
    version: int
    inserted_at: float


class L1Cache(Generic[V]):
    """Not thread-safe: one per event loop (the read API runs one loop per process)."""

    __slots__ = (
        "_clock",
        "_enabled",
        "_entries",
        "_floor",
        "_invalidated",
        "_invalidation_memory",
        "_max_age",
        "_max_entries",
        "_seq",
        "hits",
        "misses",
    )

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        *,
        invalidation_memory: int = DEFAULT_INVALIDATION_MEMORY,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = False,
    ) -> None:
        """Starts disabled unless told otherwise: the invalidation listener enables it once
        subscribed, because before that nothing would tell it about changes."""
        if max_entries < 1 or max_age_seconds <= 0 or invalidation_memory < 1:
            raise ValueError("max_entries, max_age_seconds, invalidation_memory must be > 0")
        self._max_entries = max_entries
        self._max_age = max_age_seconds
        self._invalidation_memory = invalidation_memory
        self._clock = clock
        self._enabled = enabled
        self._entries: OrderedDict[str, L1Entry[V]] = OrderedDict()
        # key -> sequence number of its last invalidation, oldest first.
        self._invalidated: OrderedDict[str, int] = OrderedDict()
        self._seq = 0
        self._floor = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._enabled

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> L1Entry[V] | None:
        """The fresh entry for ``key``, or ``None`` (disabled, absent or too old)."""
        if not self._enabled:
            return None
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if self._clock() - entry.inserted_at >= self._max_age:
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def begin_fill(self, key: str) -> int:
        """Call before reading the value from L2 or the source; pass the token to
        ``install``. The key is part of the contract, though the token does not need it."""
        return self._seq

    def install(self, key: str, value: V, version: int, token: int) -> bool:
        """Install unless disabled, or the key was invalidated (or L1 flushed) after
        ``begin_fill`` returned ``token``, or L1 already holds a newer version."""
        if not self._enabled or token < self._floor:
            return False
        last = self._invalidated.get(key)
        if last is not None and last > token:
            return False
        entries = self._entries
        current = entries.get(key)
        if current is not None and current.version > version:
            return False
        entries[key] = L1Entry(value, version, self._clock())
        entries.move_to_end(key)
        if len(entries) > self._max_entries:
            entries.popitem(last=False)
        return True

    def invalidate(self, key: str, version: int | None = None) -> None:
        """``key`` changed (to ``version`` when known): drop an older entry and refuse
        installs of fills that began before now."""
        self._seq += 1
        invalidated = self._invalidated
        invalidated[key] = self._seq
        invalidated.move_to_end(key)
        if len(invalidated) > self._invalidation_memory:
            # Numbers grow with insertion order, so the oldest is the smallest.
            _, self._floor = invalidated.popitem(last=False)
        entry = self._entries.get(key)
        if entry is not None and (version is None or entry.version < version):
            del self._entries[key]

    def flush(self) -> None:
        """Drop everything and refuse every fill that began before now."""
        self._seq += 1
        self._floor = self._seq
        self._entries.clear()
        self._invalidated.clear()

    def enable(self) -> None:
        """Serve again (the channel is back). Fills that began while disabled are refused:
        they may have read a value whose invalidation was missed."""
        self.flush()
        self._enabled = True

    def disable(self) -> None:
        """Bypass: ``get`` misses and ``install`` refuses until ``enable``."""
        self._enabled = False
        self.flush()
