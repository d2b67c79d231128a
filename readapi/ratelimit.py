"""Rate limiting per API key and minute, with tokens leased from Redis in batches.

Each process leases a batch of tokens from the key's bucket with one atomic script
(``CacheStore.lease_tokens``) and spends them locally, so the hot path makes no Redis call;
leases shrink as the limit nears (the script grants at most ``ceil(left / 8)``), bounding the
tokens a process holds unused. ``X-Rate-Limit-Remaining`` is what Redis had left after this
process's last lease plus what this process still holds: exact with one process, an upper
bound with several.

Redis unreachable (documented choice): fail open to a local per-process bucket of the same
limit per minute, counted in ``readapi_rate_limit_fallback`` and logged once per outage. With
N processes a key may then get up to N times its limit; refusing every request instead would
turn a cache outage into a full outage.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from cache.errors import CacheError, CacheUnavailable
from cache.singleflight import SingleFlight
from cache.store import RATE_LIMIT_WINDOW_SECONDS, CacheStore
from readapi.dependency import DependencyGate
from readapi.metrics import ApiMetrics

MAX_LEASE = 1000


class RateDecision(NamedTuple):
    allowed: bool
    limit: int
    remaining: int
    retry_after: int = 0


class _Bucket:
    __slots__ = (
        "exhausted_until", "limit", "refill_below", "server_remaining", "tokens", "window_ends",
    )

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tokens = 0
        self.refill_below = 0
        self.server_remaining = limit
        self.window_ends = 0.0
        self.exhausted_until = 0.0


class _LocalWindow:
    """The fallback: a fixed one-minute window counted in this process only."""

    __slots__ = ("count", "started")

    def __init__(self, now: float) -> None:
        self.count = 0
        self.started = now


class RateLimiter:
    def __init__(
        self,
        store: CacheStore,
        gate: DependencyGate,
        metrics: ApiMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        window_seconds: int = RATE_LIMIT_WINDOW_SECONDS,
    ) -> None:
        self._store = store
        self._gate = gate
        self._metrics = metrics
        self._clock = clock
        self._window = window_seconds
        self._buckets: dict[str, _Bucket] = {}
        self._local: dict[str, _LocalWindow] = {}
        self._leases: SingleFlight[str, None] = SingleFlight()
        self._prefetching: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def take_local(self, app_id: str, limit: int) -> int:
        """Take a token this process already holds (no I/O) and return what remains for the
        key (``X-Rate-Limit-Remaining``); -1 when none is held: then await ``acquire``.
        A plain int, not a ``RateDecision``: this runs on every request."""
        bucket = self._buckets.get(app_id)
        if bucket is None or bucket.tokens <= 0 or bucket.limit != limit:
            return -1
        if self._clock() >= bucket.window_ends:
            return -1
        bucket.tokens -= 1
        if bucket.tokens < bucket.refill_below and app_id not in self._prefetching:
            # Lease the next batch in the background before this one runs out, so that
            # requests do not queue behind the lease.
            self._prefetching.add(app_id)
            task = asyncio.get_running_loop().create_task(self._prefetch(app_id, bucket))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return bucket.server_remaining + bucket.tokens

    async def _prefetch(self, app_id: str, bucket: _Bucket) -> None:
        try:
            await self._leases.do(app_id, partial(self._lease, app_id, bucket))
        except CacheError as error:
            self._gate.failed(error)
        finally:
            self._prefetching.discard(app_id)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def acquire(self, app_id: str, limit: int) -> RateDecision:
        """Take one token of ``app_id``'s bucket, leasing more from Redis when none is left.

        A negative ``limit`` (nothing validates ``api_keys.rate_limit_per_minute``) counts as
        0, every request refused: the lease script would refuse it as a fault of ours."""
        if limit < 0:
            limit = 0
        # Each turn takes a token, or waits for a lease that grants at least one token to
        # someone or marks the window spent: the loop ends.
        while True:
            now = self._clock()
            bucket = self._buckets.get(app_id)
            if bucket is None or bucket.limit != limit:
                bucket = self._buckets[app_id] = _Bucket(limit)
            if now >= bucket.window_ends:
                bucket.tokens = 0  # tokens of a past window are void
            if bucket.tokens > 0:
                bucket.tokens -= 1
                return RateDecision(True, limit, bucket.server_remaining + bucket.tokens)
            if now < bucket.exhausted_until:
                return self._refused(limit, bucket.exhausted_until - now)
            if not self._gate.should_try():
                return self._fallback(app_id, limit, now)
            try:
                await self._leases.do(app_id, partial(self._lease, app_id, bucket))
            except CacheUnavailable as error:
                self._gate.failed(error)
                self._metrics.dependency_errors.labels("redis").inc()
                return self._fallback(app_id, limit, self._clock())
            except CacheError as error:
                self._gate.failed(error)
                return self._fallback(app_id, limit, self._clock())

    async def _lease(self, app_id: str, bucket: _Bucket) -> None:
        wanted = max(1, min(MAX_LEASE, bucket.limit // 10))
        lease = await self._store.lease_tokens(
            app_id, bucket.limit, wanted, window_seconds=self._window
        )
        self._gate.succeeded()
        now = self._clock()
        if now >= bucket.window_ends:
            bucket.tokens = 0
        bucket.window_ends = now + lease.reset_seconds
        bucket.server_remaining = lease.remaining
        if lease.granted > 0:
            bucket.tokens += lease.granted
            # Prefetch only large leases: small ones mean the limit is near, and tokens
            # held ahead would be lost to the other processes.
            bucket.refill_below = lease.granted // 4 if lease.granted >= 40 else 0
        else:
            bucket.exhausted_until = now + lease.reset_seconds

    def _refused(self, limit: int, wait_seconds: float) -> RateDecision:
        self._metrics.rate_limited.inc()
        return RateDecision(False, limit, 0, max(1, math.ceil(wait_seconds)))

    def _fallback(self, app_id: str, limit: int, now: float) -> RateDecision:
        self._metrics.rate_limit_fallback.inc()
        window = self._local.get(app_id)
        if window is None or now - window.started >= self._window:
            window = self._local[app_id] = _LocalWindow(now)
        if window.count >= limit:
            return self._refused(limit, window.started + self._window - now)
        window.count += 1
        return RateDecision(True, limit, limit - window.count)
