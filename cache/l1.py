"""L1: a bounded, in-process LRU in front of Redis, kept honest by invalidations.

Entries map a key (the Redis key text from ``cache.readmodel.keys``) to a value (for documents: the
encoded JSON body, ready to write), the version it reflects, when it was installed and its
cost in bytes.

Bounded by bytes (``max_bytes``), by entries (``max_entries``), or both. An entry costs the
payload size its installer states, plus its key's length, plus ``ENTRY_OVERHEAD``; the cache
keeps the running total exact through every install, replacement, eviction, expiry,
invalidation and flush, and evicts the least recently used entries while a bound is exceeded.

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

import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Generic, NamedTuple, TypeVar

V = TypeVar("V")

# The backstop: it bounds how long an entry could outlive a change whose invalidation never
# came. Every write path to Redis publishes its keys (replays included), and L1 is flushed
# and bypassed while the channel is down, so nothing known needs it; it guards against the
# unknown (a bug, a hand edit in Redis). At 1 s it also expired every entry of a working set
# revisited less often than once a second: bench/read.py measured 20,000 codes read in turn
# at 48% of the throughput with a 60 s age (the L1 then answering). 10 s keeps such a
# working set in L1 and still bounds an undetected staleness to seconds.
DEFAULT_MAX_AGE_MS = 10_000
DEFAULT_MAX_AGE_SECONDS = DEFAULT_MAX_AGE_MS / 1000
DEFAULT_MAX_ENTRIES = 100_000
# Above every version (an LSN fits 64 bits): an invalidation without a version drops the entry.
_NEWER_THAN_ANY = 1 << 64
# The object L1's budget per worker process (``LOYALTY_L1_MAX_BYTES``): a 2-core machine with
# a few GiB runs 2 workers, so 128 MiB in all stays small beside the machine's memory. A
# voucher body is about 1 KB (about 1.5 KB with its key and ``ENTRY_OVERHEAD``), so this holds
# some 45,000-50,000 objects per worker, the hot set; Redis keeps the rest, one round trip away.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_INVALIDATION_MEMORY = 16_384

# Bytes an entry costs beyond its stated payload size and its key's characters: roughly what
# CPython 3.11 spends on it. Measured with tracemalloc over 200,000 entries: 312 bytes each
# for the cache's own share, the OrderedDict's hash-table slot and linked-list node (~105,
# amortised), the key str's header (49), the ``L1Entry`` tuple (72) and its float and two
# ints (~85); plus 97 for the object around a voucher's body (``readapi.lookups.
# CachedObject``: the slotted dataclass, 64, and the bytes header, 33). Rounded to 400.
ENTRY_OVERHEAD = 400

# No bound (``max_entries=None`` or ``max_bytes=None``): larger than any count or total.
_UNBOUNDED = sys.maxsize


class L1Entry(NamedTuple, Generic[V]):
    value: V
    version: int
    inserted_at: float
    # Bytes this entry counts for in ``L1Cache.size_bytes``: payload + key + ENTRY_OVERHEAD.
    cost: int


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
        "_max_bytes",
        "_max_entries",
        "_seq",
        "_size_bytes",
        "hits",
        "misses",
    )

    def __init__(
        self,
        max_entries: int | None = DEFAULT_MAX_ENTRIES,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        *,
        max_bytes: int | None = None,
        invalidation_memory: int = DEFAULT_INVALIDATION_MEMORY,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = False,
    ) -> None:
        """Holds at most ``max_entries`` entries costing at most ``max_bytes`` in all
        (``None``: no such bound). Starts disabled unless told otherwise: the invalidation
        listener enables it once subscribed, because before that nothing would tell it about
        changes."""
        if (
            (max_entries is not None and max_entries < 1)
            or (max_bytes is not None and max_bytes < 1)
            or max_age_seconds <= 0
            or invalidation_memory < 1
        ):
            raise ValueError(
                "max_entries, max_bytes, max_age_seconds, invalidation_memory must be > 0"
            )
        self._max_entries = _UNBOUNDED if max_entries is None else max_entries
        self._max_bytes = _UNBOUNDED if max_bytes is None else max_bytes
        self._size_bytes = 0
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

    @property
    def size_bytes(self) -> int:
        """The summed cost of the entries held (see ``ENTRY_OVERHEAD``)."""
        return self._size_bytes

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
            self._size_bytes -= entry.cost
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def begin_fill(self, key: str) -> int:
        """Call before reading the value from L2 or the source; pass the token to
        ``install``. The key is part of the contract, though the token does not need it."""
        return self._seq

    def install(self, key: str, value: V, version: int, token: int, size: int = 0) -> bool:
        """Install unless disabled, or the key was invalidated (or L1 flushed) after
        ``begin_fill`` returned ``token``, or L1 already holds a newer version, or the entry
        alone would cost more than ``max_bytes``. ``size``: the caller's estimate of the
        value's payload bytes (for a document, its body's length).

        Then evicts least recently used entries while a bound is exceeded: O(1) amortised,
        as every entry is evicted at most once, so evictions never outnumber installs."""
        if not self._enabled or token < self._floor:
            return False
        last = self._invalidated.get(key)
        if last is not None and last > token:
            return False
        entries = self._entries
        current = entries.get(key)
        if current is not None and current.version > version:
            return False
        cost = size + len(key) + ENTRY_OVERHEAD
        total = self._size_bytes
        if current is not None:
            total -= current.cost
        if cost > self._max_bytes:
            # Not kept, but the version held is no newer than this one: drop it too, so L1
            # never answers a version older than one it was offered.
            if current is not None:
                del entries[key]
                self._size_bytes = total
            return False
        entries[key] = L1Entry(value, version, self._clock(), cost)
        entries.move_to_end(key)
        total += cost
        # Never evicts the entry just installed: alone, it fits both bounds.
        while total > self._max_bytes or len(entries) > self._max_entries:
            _, evicted = entries.popitem(last=False)
            total -= evicted.cost
        self._size_bytes = total
        return True

    def invalidate(self, key: str, version: int | None = None) -> None:
        """``key`` changed (to ``version`` when known): drop an older entry and refuse
        installs of fills that began before now."""
        self.invalidate_many(((key, _NEWER_THAN_ANY if version is None else version),), None)

    def invalidate_many(self, entries: Iterable[tuple[str, int]], prefix: str | None) -> None:
        """``invalidate`` for each (key, version) whose key starts with ``prefix`` (every key
        when None), in one call: an invalidation message names a whole batch's keys."""
        invalidated = self._invalidated
        entries_by_key = self._entries
        memory = self._invalidation_memory
        seq = self._seq
        for key, version in entries:
            if prefix is not None and not key.startswith(prefix):
                continue
            seq += 1
            invalidated[key] = seq
            invalidated.move_to_end(key)
            if len(invalidated) > memory:
                # Numbers grow with insertion order, so the oldest is the smallest.
                _, self._floor = invalidated.popitem(last=False)
            entry = entries_by_key.get(key)
            if entry is not None and entry.version < version:
                del entries_by_key[key]
                self._size_bytes -= entry.cost
        self._seq = seq

    def flush(self) -> None:
        """Drop everything and refuse every fill that began before now."""
        self._seq += 1
        self._floor = self._seq
        self._entries.clear()
        self._size_bytes = 0
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
