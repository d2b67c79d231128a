"""The parts of one read API process, built from settings without I/O and started with the
app: clients, caches, the invalidation listener, the watermark, auth, limits, lookups, segment
membership (counts and events)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from elastic_transport import OrjsonSerializer
from elasticsearch import AsyncElasticsearch
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cache.config import es_hosts
from cache.connect import RedisClient, is_cluster_url, redis_from_url
from cache.errors import CacheError
from cache.invalidation import InvalidationListener
from cache.l1 import L1Cache
from cache.membership import MembershipStore
from cache.readmodel.keys import KeyLayout
from cache.store import CacheStore
from cache.watermark import WatermarkHolder
from readapi.auth import Authenticator, FailedAuthLimiter, KeyEntry
from readapi.dependency import DependencyGate
from readapi.elastic import SearchReader
from readapi.events import MAX_EVENTS_WAIT_MS, MembershipReader
from readapi.freshness import WatermarkPoller
from readapi.lookups import ObjectLookups
from readapi.metrics import ApiMetrics
from readapi.ratelimit import RateLimiter
from readapi.settings import ApiSettings
from readapi.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)

# L1 for API key records: short-lived like the object L1, and small.
KEY_L1_MAX_AGE_SECONDS = 1.0
# App ids found unknown, kept apart from the key records (they are the client's choice).
KEY_MISSES_MAX_ENTRIES = 1024
REDIS_CONNECTIONS = 64
# The read API never appends events (only ``MembershipStore.apply`` uses this bound, which
# is the indexer's ``LOYALTY_SEGMENT_EVENTS_MAX``).
READ_ONLY_EVENTS_MAX = 1


@dataclass
class Services:
    settings: ApiSettings
    redis: RedisClient
    elastic: AsyncElasticsearch
    store: CacheStore
    metrics: ApiMetrics
    redis_gate: DependencyGate
    es_gate: DependencyGate
    search: SearchReader
    l1: L1Cache[Any]
    key_l1: L1Cache[KeyEntry]
    key_misses: L1Cache[KeyEntry]
    watermark: WatermarkHolder
    listener: InvalidationListener
    poller: WatermarkPoller
    auth: Authenticator
    limiter: RateLimiter
    lookups: ObjectLookups
    membership: MembershipReader
    # Long polls of /v1/events only: a blocking read holds its connection for the whole wait.
    waiting_redis: RedisClient
    static: dict[str, bytes] = field(default_factory=dict)
    worker_metrics: WorkerMetrics | None = None

    @classmethod
    def build(cls, settings: ApiSettings) -> Services:
        metrics = ApiMetrics()
        # A bounded pool: a burst of misses queues for a connection instead of opening
        # hundreds of sockets at once (and timing out on their connects).
        redis = _redis_client(
            settings.redis_url,
            max_connections=REDIS_CONNECTIONS,
            pool_timeout=settings.redis_timeout_seconds * 4,
            socket_timeout=settings.redis_timeout_seconds,
            connect_timeout=settings.redis_timeout_seconds,
        )
        # One connection per allowed waiter, and a socket timeout above the longest wait.
        waiting_redis = _redis_client(
            settings.redis_url,
            max_connections=max(1, settings.events_max_waiters),
            pool_timeout=settings.redis_timeout_seconds * 4,
            socket_timeout=MAX_EVENTS_WAIT_MS / 1000 + settings.redis_timeout_seconds,
            connect_timeout=settings.redis_timeout_seconds,
        )
        es_nodes = es_hosts(settings.es_url)
        elastic = AsyncElasticsearch(
            es_nodes,
            request_timeout=settings.es_timeout_seconds,
            # A node that refuses the connection (stopped, lost) is tried on another one at
            # once; nothing else is retried: a slow answer is not asked again.
            max_retries=len(es_nodes) - 1,
            retry_on_timeout=False,
            serializer=OrjsonSerializer(),
        )
        layout = KeyLayout(settings.redis_key_prefix)
        store = CacheStore(redis, layout, tombstone_ttl_seconds=settings.tombstone_ttl_seconds)

        def membership_on(client: RedisClient) -> MembershipStore:
            return MembershipStore(
                client, layout,
                tombstone_ttl_seconds=settings.tombstone_ttl_seconds,
                events_max_per_project=READ_ONLY_EVENTS_MAX,
            )

        redis_gate = DependencyGate("redis", settings.dependency_retry_seconds)
        es_gate = DependencyGate("elasticsearch", settings.dependency_retry_seconds)
        watermark = WatermarkHolder()
        search = SearchReader(elastic, settings.es_index_prefix, es_gate, watermark=watermark)
        # Objects: bounded by bytes only (``install`` is told each body's size).
        l1: L1Cache[Any] = L1Cache(
            None, settings.l1_max_age_ms / 1000, max_bytes=settings.l1_max_bytes,
        )
        key_l1: L1Cache[KeyEntry] = L1Cache(settings.key_cache_entries, KEY_L1_MAX_AGE_SECONDS)
        key_misses: L1Cache[KeyEntry] = L1Cache(KEY_MISSES_MAX_ENTRIES, KEY_L1_MAX_AGE_SECONDS)
        listener = InvalidationListener(redis, layout)
        listener.add_cache(l1)
        listener.add_cache(key_l1, layout.app_key_prefix)
        listener.add_cache(key_misses, layout.app_key_prefix)
        listener.add_callback(watermark.on_invalidation)
        listener.add_connect_hook(lambda: watermark.refresh(store))
        services = cls(
            settings=settings,
            redis=redis,
            elastic=elastic,
            store=store,
            metrics=metrics,
            redis_gate=redis_gate,
            es_gate=es_gate,
            search=search,
            l1=l1,
            key_l1=key_l1,
            key_misses=key_misses,
            watermark=watermark,
            listener=listener,
            poller=WatermarkPoller(
                watermark, store, listener, settings.watermark_poll_seconds
            ),
            auth=Authenticator(
                store, key_l1, redis_gate, metrics,
                default_limit=settings.rate_limit_default,
                grace_seconds=settings.key_outage_grace_seconds,
                misses=key_misses,
                failures=FailedAuthLimiter(settings.auth_failures_per_minute),
            ),
            limiter=RateLimiter(store, redis_gate, metrics),
            lookups=ObjectLookups(
                store, search, l1, watermark, redis_gate, metrics, use_l1=settings.l1_enabled,
                miss_ttl_seconds=settings.miss_ttl_seconds,
            ),
            membership=MembershipReader(
                membership_on(redis), membership_on(waiting_redis), redis_gate, metrics,
                max_waiters=settings.events_max_waiters,
                wait_grace_seconds=settings.redis_timeout_seconds,
            ),
            waiting_redis=waiting_redis,
        )
        services._register_metrics()
        if settings.metrics_dir is not None:
            services.worker_metrics = WorkerMetrics(
                Path(settings.metrics_dir), metrics.registry
            )
        return services

    def _register_metrics(self) -> None:
        m = self.metrics
        flights = self.lookups.flights
        m.from_functions.add(
            "readapi_singleflight_waits",
            "Lookups that joined a read already in flight for the same key",
            (), lambda: {(): float(flights.waits)},
        )
        m.from_functions.add(
            "readapi_singleflight_reads",
            "Reads started for lookups that missed L1 (each shared by its waiters)",
            (), lambda: {(): float(flights.calls)},
        )
        requests = self.search.requests
        m.from_functions.add(
            "readapi_es_requests", "Requests sent to Elasticsearch", ("operation",),
            lambda: {(op,): float(n) for op, n in requests.items()},
        )
        m.from_functions.add(
            "readapi_l1_hits", "L1 hits per cache (objects, api_keys)", ("cache",),
            lambda: {("objects",): float(self.l1.hits), ("api_keys",): float(self.key_l1.hits)},
        )
        failures = self.auth.failures
        if failures is not None:
            m.from_functions.add(
                "readapi_auth_failures", "Failed authentications (401, or 429 when limited)",
                (), lambda: {(): float(failures.failures)},
            )
            m.from_functions.add(
                "readapi_auth_throttled",
                "Failed authentications answered 429: the client address failed too often",
                (), lambda: {(): float(failures.throttled)},
            )
        m.l1_entries.set_function(lambda: len(self.l1))
        m.l1_bytes.set_function(lambda: self.l1.size_bytes)
        m.watermark.set_function(lambda: float(self.watermark.value or 0))
        m.invalidation_connected.set_function(lambda: 1.0 if self.listener.connected else 0.0)

    async def start(self) -> None:
        """Load scripts and the watermark (tolerating a Redis outage), start the listener."""
        try:
            await self.store.load_scripts()
        except CacheError as error:
            log.warning("Lua scripts not loaded at start: %s", error)
        await self.poller.seed()
        await self.listener.start()
        self.poller.start()
        if self.worker_metrics is not None:
            self.worker_metrics.start()

    def render_metrics(self) -> bytes:
        """/metrics: every worker's figures when there are several, else this process's."""
        if self.worker_metrics is not None:
            return self.worker_metrics.render()
        return self.metrics.render()

    async def close(self) -> None:
        if self.worker_metrics is not None:
            await self.worker_metrics.stop()
        await self.limiter.close()
        await self.poller.stop()
        await self.listener.stop()
        self.membership.stop_waiting()
        with contextlib.suppress(Exception):
            await self.store.wait_idle()
        for client in (self.waiting_redis, self.redis):
            with contextlib.suppress(Exception):
                await client.aclose()
        with contextlib.suppress(Exception):
            await self.elastic.close()


SERVICES = web.AppKey("services", Services)


def _redis_client(
    url: str,
    *,
    max_connections: int,
    pool_timeout: float,
    socket_timeout: float,
    connect_timeout: float,
) -> RedisClient:
    """A client with at most ``max_connections`` connections (per node, on a cluster).

    Towards one server the pool blocks: a burst of misses queues for a connection instead of
    opening hundreds of sockets at once (and timing out on their connects). A cluster client
    keeps a pool per node that does not block; the script batcher and the waiter limit keep
    the calls in flight below the bound."""
    options: dict[str, Any] = {
        "protocol": 2,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        # This service decides how to fall back; the driver must not retry meanwhile.
        "retry": Retry(NoBackoff(), 0),
    }
    if is_cluster_url(url):
        return redis_from_url(url, max_connections=max_connections, **options)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout, **options
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: closed with the client
