"""``X-App-Id`` / ``X-App-Token`` against the API key records the indexer keeps in Redis.

A key is valid when ``sha256(token)`` (hex) equals the record's ``token_sha256``, compared in
constant time, and the record is not revoked. Records are kept in a small L1 invalidated by
the invalidation channel (the indexer publishes the app key's Redis key when the row
changes), so a revoked key is refused as soon as that message arrives, and a hit costs no
network call.

While Redis is unreachable the L1 is off (nothing would tell it about changes); a key record
read from Redis within the last ``grace_seconds`` still authenticates (documented choice:
an outage does not lock out every client, and a revocation during it waits at most that
long). A key never seen within that time gets 503 ``unavailable``, not 401: the service
cannot tell whether it is valid.

Failed attempts are bounded: the key L1 holds only app ids that exist (an unknown one, which
a client chooses freely, goes to a small cache of its own and never evicts a valid key), and
failures are counted per client address (``FailedAuthLimiter``): past
``LOYALTY_AUTH_FAILURES_PER_MINUTE`` in a minute, a failed attempt from that address answers
429 ``rate_limited`` with ``Retry-After`` instead of 401. Credentials are always checked
first, so valid ones from a limited address are still accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from multidict import istr

from cache.errors import CacheDecodeError, CacheUnavailable
from cache.l1 import L1Cache
from cache.readmodel.codec import api_key_from_data
from cache.readmodel.keys import ProjectKeys
from cache.records import ApiKeyRecord
from cache.singleflight import SingleFlight
from cache.store import CacheStore
from readapi.dependency import DependencyGate
from readapi.errors import ApiError, unauthorized, unavailable
from readapi.metrics import ApiMetrics

# Case-insensitive header names made once: multidict then skips folding them per lookup.
APP_ID_HEADER = istr("X-App-Id")
APP_TOKEN_HEADER = istr("X-App-Token")
MAX_APP_ID_LENGTH = 200
MAX_TOKEN_LENGTH = 512


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated key of one request."""

    app_id: str
    project_id: str
    rate_limit_per_minute: int
    keys: ProjectKeys  # heads of the project's cache keys, built once per key record
    limit_text: str  # ``X-Rate-Limit-Limit``


@dataclass(slots=True)
class KeyEntry:
    """What the key L1 holds for one app id; ``record`` is None for an unknown app id.

    ``verified`` is the last token whose hash matched: a request presenting it again is
    compared with it (constant time) instead of hashing, which is dearer on the hot path.
    """

    record: ApiKeyRecord | None
    token_sha256: bytes
    caller: Caller | None  # None: unknown or revoked
    verified: bytes | None = None




def _credentials(headers: Mapping[str, str]) -> tuple[str, str]:
    app_id = headers.get(APP_ID_HEADER)
    token = headers.get(APP_TOKEN_HEADER)
    if not app_id or not token:
        raise unauthorized("X-App-Id and X-App-Token headers are required.")
    if len(app_id) > MAX_APP_ID_LENGTH or len(token) > MAX_TOKEN_LENGTH:
        raise unauthorized("Unknown app id, wrong token or revoked key.")
    # Printable ASCII only (U+0020-U+007E): bytes that are not UTF-8 arrive as lone
    # surrogates, which no store can encode, and no key could match them anyway.
    if not (app_id.isascii() and app_id.isprintable() and token.isascii() and token.isprintable()):
        raise unauthorized("Unknown app id, wrong token or revoked key.")
    return app_id, token


class FailedAuthLimiter:
    """Failed authentications per client address in fixed one-minute windows, in a bounded
    LRU table: an address past ``limit`` failures in its window is told to wait.

    The table keeps the ``capacity`` addresses that failed last; one pushed out starts
    again from zero (a client with very many addresses escapes the limit, and costs the
    service what it always did: a Redis read per attempt at most).
    """

    __slots__ = ("_capacity", "_clock", "_limit", "_windows", "failures", "throttled")

    WINDOW_SECONDS = 60.0

    def __init__(
        self, limit: int, *, capacity: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._capacity = capacity
        self._clock = clock
        # address -> [window start, failures in it], the latest failing address last.
        self._windows: OrderedDict[str, list[float]] = OrderedDict()
        self.failures = 0  # counted failed attempts
        self.throttled = 0  # of which answered 429

    def __len__(self) -> int:
        return len(self._windows)

    def failed(self, address: str) -> int:
        """Count a failure of ``address``; the seconds it must wait (``Retry-After``) when
        past the limit, else 0."""
        self.failures += 1
        now = self._clock()
        windows = self._windows
        window = windows.get(address)
        if window is None or now - window[0] >= self.WINDOW_SECONDS:
            window = windows[address] = [now, 0.0]
        windows.move_to_end(address)
        if len(windows) > self._capacity:
            windows.popitem(last=False)
        window[1] += 1
        if window[1] <= self._limit:
            return 0
        self.throttled += 1
        return max(1, math.ceil(window[0] + self.WINDOW_SECONDS - now))


class Authenticator:
    def __init__(
        self,
        store: CacheStore,
        l1: L1Cache[KeyEntry],
        gate: DependencyGate,
        metrics: ApiMetrics,
        *,
        default_limit: int,
        grace_seconds: float,
        recent_capacity: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        misses: L1Cache[KeyEntry] | None = None,
        failures: FailedAuthLimiter | None = None,
    ) -> None:
        """``l1`` holds the records of app ids that exist; ``misses`` (when given) the app
        ids found unknown, kept apart so that they never evict a valid key; ``failures``
        (when given) limits failed attempts per client address."""
        self._store = store
        self._l1 = l1
        self._misses = misses
        self.failures = failures
        self._gate = gate
        self._metrics = metrics
        self._default_limit = default_limit
        self._grace = grace_seconds
        self._clock = clock
        self._capacity = recent_capacity
        # app id -> (entry, when Redis last confirmed it): the outage fallback.
        self._recent: OrderedDict[str, tuple[KeyEntry, float]] = OrderedDict()
        self._loads: SingleFlight[str, KeyEntry] = SingleFlight()
        self._app_key_prefix = store.layout.app_key_prefix

    def cached(self, headers: Mapping[str, str]) -> Caller | None:
        """The caller when the key L1 holds the record and this very token was verified
        against it before (no I/O, no hashing), else None: then await ``authenticate``,
        which gives every refusal its answer. The hot path: no call it can spare."""
        app_id = headers.get(APP_ID_HEADER)
        token = headers.get(APP_TOKEN_HEADER)
        if not app_id or not token:
            return None
        # An over-long app id is never in L1: ``authenticate`` refuses it before loading.
        hit = self._l1.get(self._app_key_prefix + app_id)
        if hit is None:
            return None
        entry: KeyEntry = hit.value
        verified = entry.verified
        if verified is None or not hmac.compare_digest(
            token.encode("utf-8", "surrogatepass"), verified
        ):
            return None
        return entry.caller

    async def authenticate(
        self, headers: Mapping[str, str], *, bypass_l1: bool = False, remote: str | None = None
    ) -> Caller:
        """The caller of valid credentials, else 401 (429 for an address past the limit of
        failures: ``remote`` is the client's address, None when unknown)."""
        try:
            return await self._authenticate(headers, bypass_l1)
        except ApiError as error:
            if error.status == 401 and self.failures is not None:
                wait = self.failures.failed(remote or "")
                if wait:
                    raise ApiError(
                        429, "rate_limited", "Rate limit exceeded.",
                        "Too many failed authentications from this address.",
                        headers={"Retry-After": str(wait)},
                    ) from None
            raise

    async def _authenticate(self, headers: Mapping[str, str], bypass_l1: bool) -> Caller:
        app_id, token = _credentials(headers)
        if not bypass_l1:
            key = self._store.layout.app_key(app_id)
            hit = self._l1.get(key)
            if hit is None and self._misses is not None:
                hit = self._misses.get(key)
            if hit is not None:
                return self._check(hit.value, token)
        # Concurrent misses of one app id share one Redis read.
        entry = await self._loads.do(app_id, partial(self._load, app_id))
        return self._check(entry, token)

    def _check(self, entry: KeyEntry, token: str) -> Caller:
        caller = entry.caller
        if caller is None:
            raise unauthorized("Unknown app id, wrong token or revoked key.")
        presented = token.encode("utf-8", "surrogatepass")
        verified = entry.verified
        if verified is None or not hmac.compare_digest(presented, verified):
            digest = hashlib.sha256(presented).hexdigest().encode()
            if not hmac.compare_digest(digest, entry.token_sha256):
                raise unauthorized("Unknown app id, wrong token or revoked key.")
            entry.verified = presented
        return caller

    def _entry(self, record: ApiKeyRecord | None) -> KeyEntry:
        if record is None:
            return KeyEntry(None, b"", None)
        limit = record.rate_limit_per_minute
        if limit is None:
            limit = self._default_limit
        caller = None if record.revoked else Caller(
            record.app_id,
            record.project_id,
            limit,
            self._store.layout.project_keys(record.project_id),
            str(limit),
        )
        return KeyEntry(record, record.token_sha256.encode("utf-8", "surrogatepass"), caller)

    async def _load(self, app_id: str) -> KeyEntry:
        key = self._store.layout.app_key(app_id)
        if not self._gate.should_try():
            return self._during_outage(app_id)
        token = self._l1.begin_fill(key)
        miss_token = self._misses.begin_fill(key) if self._misses is not None else 0
        try:
            envelope = await self._store.get(key)
        except CacheUnavailable as error:
            self._gate.failed(error)
            self._metrics.dependency_errors.labels("redis").inc()
            return self._during_outage(app_id)
        except CacheDecodeError:
            envelope = None
        self._gate.succeeded()
        record = None
        version = 0
        if envelope is not None:
            version = envelope.version
            if not envelope.is_tombstone:
                try:
                    record = api_key_from_data(envelope.data)
                except CacheDecodeError:
                    record = None
        entry = self._entry(record)
        if record is not None:
            self._l1.install(key, entry, version, token)
        elif self._misses is not None:
            self._misses.install(key, entry, version, miss_token)
        self._remember(app_id, entry)
        return entry

    def _remember(self, app_id: str, entry: KeyEntry) -> None:
        recent = self._recent
        if entry.record is None:
            recent.pop(app_id, None)
            return
        recent[app_id] = (entry, self._clock())
        recent.move_to_end(app_id)
        if len(recent) > self._capacity:
            recent.popitem(last=False)

    def _during_outage(self, app_id: str) -> KeyEntry:
        seen = self._recent.get(app_id)
        if seen is None or self._clock() - seen[1] > self._grace:
            raise unavailable("API keys cannot be checked: Redis is unreachable.")
        self._metrics.stale_serves.labels("api_key").inc()
        return seen[0]
