"""Indexer configuration: every variable declared once below, read once per process.

``IndexerSettings.from_env()`` reads them (from ``os.environ`` unless a mapping is given),
validates each, and returns the one settings object the command passes down; nothing else in
``indexer/`` or ``cache/`` reads the environment. An unset or empty variable takes its
default, which fits the local stack. ``ENVIRONMENT_HELP`` and the tables of
docs/internals.md ("Configuration") derive from, or are tested against, ``SETTINGS``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from cache import config
from cache.config import (
    DEFAULT_ES_URL,
    DEFAULT_REDIS_URL,
    DURATION,
    STORE_SETTINGS,
    Format,
    Setting,
    SettingsError,
    StoreSettings,
    environment_help,
    integer,
    pattern,
)
from indexer.shards import ShardSpec

__all__ = [
    "DEFAULT_ES_URL",
    "DEFAULT_PG_ADMIN_DSN",
    "DEFAULT_PG_DSN",
    "DEFAULT_REDIS_URL",
    "ENVIRONMENT_HELP",
    "SETTINGS",
    "IndexerSettings",
    "SettingsError",
]

# The local stack's roles (``stack/config.py``): the indexer runs as ``loyalty_indexer``, which
# is not a superuser; migrations, the seed and ``indexer setup`` run as the tables' owner.
DEFAULT_PG_DSN = "postgresql://loyalty_indexer:loyalty-indexer-local@127.0.0.1:5433/loyalty"
DEFAULT_PG_ADMIN_DSN = "postgresql://postgres:loyalty-admin-local@127.0.0.1:5433/loyalty"

# Replication slot and publication names, as ``indexer.slot`` accepts them.
_PG_NAME = pattern(r"[a-z0-9_]{1,63}", "1 to 63 of [a-z0-9_]")
_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _host(raw: str) -> str:
    # A host name is resolved only when the listener binds; refused here is what could never
    # be one (a URL, an address with a port).
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        if _HOST_NAME.fullmatch(raw) is None:
            raise ValueError(raw) from None
    return raw


_HOST = Format("an IP address or a host name", _host)

_KIND_NAMES = ("voucher", "customer", "campaign", "segment")


def counts_per_kind(raw: str, default: int) -> dict[str, int]:
    """``"N"``, ``"kind=N,..."`` or both (``"2,voucher=4"``: 4 for vouchers, 2 for the other
    kinds) as a count for every kind; kinds not named take the bare number, else ``default``.
    ``ValueError`` for anything else."""
    counts: dict[str, int] = {}
    fallback = default
    seen_bare = False
    for part in raw.split(","):
        name, equals, number = part.partition("=")
        if not equals:
            name, number = "", part
        if not re.fullmatch(r"[0-9]{1,4}", number):
            raise ValueError(part)
        if not equals:
            if seen_bare:
                raise ValueError(part)
            seen_bare, fallback = True, int(number)
        elif name not in _KIND_NAMES or name in counts:
            raise ValueError(part)
        else:
            counts[name] = int(number)
    return {kind: counts.get(kind, fallback) for kind in _KIND_NAMES}


def _per_kind(minimum: int, maximum: int) -> Format[str]:
    def parse(raw: str) -> str:
        counts = counts_per_kind(raw, minimum)
        if not all(minimum <= count <= maximum for count in counts.values()):
            raise ValueError(raw)
        return raw

    return Format(
        f"a count from {minimum} to {maximum} for every kind, or kind=count pairs "
        f"({', '.join(_KIND_NAMES)}) separated by commas, with or without a count for the rest",
        parse,
    )


def _conninfo(raw: str) -> str:
    # libpq's own parser: both forms it accepts (a URL, or ``key=value`` pairs) are valid.
    try:
        psycopg.conninfo.conninfo_to_dict(raw)
    except psycopg.ProgrammingError as error:
        raise ValueError("not a connection string") from error
    return raw


_PG_DSN = Format(
    "a libpq connection string (a postgresql:// URL or key=value pairs)", _conninfo, echo=False
)
PG_DSN = Setting(
    "pg_dsn", "LOYALTY_PG_DSN", _PG_DSN, DEFAULT_PG_DSN, "source database, as the indexer's role",
)
PG_ADMIN_DSN = Setting(
    "pg_admin_dsn", "LOYALTY_PG_ADMIN_DSN", _PG_DSN, DEFAULT_PG_ADMIN_DSN,
    "source database, as the tables' owner (setup, migrate, seed)",
)
# Optional: the document rebuild reads a streaming standby of the primary (``indexer.standby``).
PG_STANDBY_DSN = Setting(
    "pg_standby_dsn", "LOYALTY_PG_STANDBY_DSN", _PG_DSN, "",
    "streaming standby the document rebuild reads, as the indexer's role; empty: the primary",
    shown_default="empty (the primary)",
)
PG_STANDBY_MAX_WAIT_MS = Setting(
    "pg_standby_max_wait_ms", "LOYALTY_PG_STANDBY_MAX_WAIT_MS", integer(0, 60_000), 500,
    "longest wait for the standby to replay a batch before reading the primary, ms",
)
REDIS_MIN_REPLICAS = Setting(
    "redis_min_replicas", "LOYALTY_REDIS_MIN_REPLICAS", integer(0, 16), 0,
    "Redis replicas that must hold a batch's writes before the slot moves (WAIT)",
)
REDIS_REPLICA_TIMEOUT_MS = Setting(
    "redis_replica_timeout_ms", "LOYALTY_REDIS_REPLICA_TIMEOUT_MS", integer(1, 60_000), 1000,
    "longest wait for those replicas before the batch is retried, ms",
)
PG_STANDBY_MAX_LAG_BYTES = Setting(
    "pg_standby_max_lag_bytes", "LOYALTY_PG_STANDBY_MAX_LAG_BYTES",
    integer(0, 2**40), 64 * 1024 * 1024,
    "standby further behind than this (WAL bytes): read the primary without waiting",
)
SLOT_NAME = Setting(
    "slot_name", "LOYALTY_SLOT_NAME", _PG_NAME, "loyalty_indexer", "logical replication slot",
)
PUBLICATION = Setting(
    "publication", "LOYALTY_PUBLICATION", _PG_NAME, "loyalty_pub", "publication",
)
def _shard(raw: str) -> str:
    ShardSpec.parse(raw)
    return raw


SHARD = Setting(
    "shard", "LOYALTY_SHARD",
    Format("k/N: shard k of N (0 <= k < N <= 256), as `indexer reshard` planned", _shard), "0/1",
    "this indexer's share of the projects (docs/scaling.md, sharded indexers)",
)
BATCH_CHANGES = Setting(
    "batch_changes", "LOYALTY_BATCH_CHANGES", integer(1, 1_000_000), 5000,
    "upper bound of changes per peek",
)
IDLE_SLEEP_MS = Setting(
    "idle_sleep_ms", "LOYALTY_IDLE_SLEEP_MS", integer(0, 60_000), 20,
    "pause after an empty peek, ms",
)
ES_REFRESH = Setting(
    "es_refresh_interval", "LOYALTY_ES_REFRESH", DURATION, "250ms",
    "refresh interval of new indices",
)
# While the indexer is behind, fewer refreshes leave Elasticsearch's CPU to indexing: on two
# shared cores, 250 ms refreshes and the merges of their small segments took half its time in
# a write burst (``bench/burst.py``).
ES_CATCHUP_REFRESH = Setting(
    "es_catchup_refresh_interval", "LOYALTY_ES_CATCHUP_REFRESH", DURATION, "2s",
    "refresh interval of the serving indices while the indexer catches up",
)
# Fixed when a generation's indices are made (a change takes effect at the next reindex).
ES_SHARDS = Setting(
    "es_shards", "LOYALTY_ES_SHARDS", _per_kind(1, 1024), "1",
    "primary shards of each kind's index (N, or kind=N pairs)",
)
# Applied to the serving indices at every start, and after each load (a load runs without).
ES_REPLICAS = Setting(
    "es_replicas", "LOYALTY_ES_REPLICAS", _per_kind(0, 16), "0",
    "replicas of each kind's index (N, or kind=N pairs)",
)
METRICS_PORT = Setting(
    "metrics_port", "LOYALTY_METRICS_PORT", integer(0, 65535), 9108,
    "port of /metrics and /healthz, 0 to disable",
)
# Loopback by default: the listener has no authentication. A container sets 0.0.0.0 so that a
# scraper on its network reaches it.
METRICS_HOST = Setting(
    "metrics_host", "LOYALTY_METRICS_HOST", _HOST, "127.0.0.1",
    "address the /metrics and /healthz listener binds",
)
HEALTH_STALL_SECONDS = Setting(
    "health_stall_seconds", "LOYALTY_HEALTH_STALL_SECONDS", integer(1, 86_400), 60,
    "/healthz answers 503 stalled when no step succeeded for this long, s",
)

SEGMENT_EVENTS_MAX = Setting(
    "segment_events_max", "LOYALTY_SEGMENT_EVENTS_MAX", integer(1, 100_000_000), 1_000_000,
    "segment events kept per project (older ones are trimmed)",
)
SEGMENT_TICK_SECONDS = Setting(
    "segment_tick_seconds", "LOYALTY_SEGMENT_TICK_SECONDS", integer(1, 86_400), 60,
    "period of the clock tick that keeps relative-date segments current, s",
)
RECOMPUTE_SLICE_MS = Setting(
    "recompute_slice_ms", "LOYALTY_SEGMENT_RECOMPUTE_SLICE_MS", integer(10, 60_000), 200,
    "segment recompute work between two batches of changes, ms",
)
LOAD_MAX_ROWS_PER_SECOND = Setting(
    "load_max_rows_per_second", "LOYALTY_LOAD_MAX_ROWS_PER_SECOND", integer(0, 10_000_000), 0,
    "cap on the rows a load (first, or a reload) reads per second; 0: none",
)
REINDEX_METRICS_PORT = Setting(
    "reindex_metrics_port", "LOYALTY_REINDEX_METRICS_PORT", integer(0, 65535), 9109,
    "Prometheus metrics port of `indexer reindex` (its progress), 0 to disable",
)

SETTINGS: tuple[Setting[Any], ...] = (
    PG_DSN,
    PG_ADMIN_DSN,
    PG_STANDBY_DSN,
    PG_STANDBY_MAX_WAIT_MS,
    PG_STANDBY_MAX_LAG_BYTES,
    *STORE_SETTINGS,
    REDIS_MIN_REPLICAS,
    REDIS_REPLICA_TIMEOUT_MS,
    SLOT_NAME,
    PUBLICATION,
    SHARD,
    BATCH_CHANGES,
    IDLE_SLEEP_MS,
    ES_REFRESH,
    ES_CATCHUP_REFRESH,
    ES_SHARDS,
    ES_REPLICAS,
    METRICS_PORT,
    METRICS_HOST,
    HEALTH_STALL_SECONDS,
    SEGMENT_EVENTS_MAX,
    SEGMENT_TICK_SECONDS,
    RECOMPUTE_SLICE_MS,
    LOAD_MAX_ROWS_PER_SECOND,
    REINDEX_METRICS_PORT,
)

ENVIRONMENT_HELP = environment_help(SETTINGS)


@dataclass(frozen=True)
class IndexerSettings(StoreSettings):
    pg_dsn: str = PG_DSN.default
    pg_admin_dsn: str = PG_ADMIN_DSN.default
    pg_standby_dsn: str = PG_STANDBY_DSN.default
    pg_standby_max_wait_ms: int = PG_STANDBY_MAX_WAIT_MS.default
    pg_standby_max_lag_bytes: int = PG_STANDBY_MAX_LAG_BYTES.default
    redis_min_replicas: int = REDIS_MIN_REPLICAS.default
    redis_replica_timeout_ms: int = REDIS_REPLICA_TIMEOUT_MS.default
    slot_name: str = SLOT_NAME.default
    publication: str = PUBLICATION.default
    shard: str = SHARD.default
    batch_changes: int = BATCH_CHANGES.default
    idle_sleep_ms: int = IDLE_SLEEP_MS.default
    es_refresh_interval: str = ES_REFRESH.default
    es_catchup_refresh_interval: str = ES_CATCHUP_REFRESH.default
    es_shards: str = ES_SHARDS.default
    es_replicas: str = ES_REPLICAS.default
    metrics_port: int = METRICS_PORT.default
    metrics_host: str = METRICS_HOST.default
    health_stall_seconds: int = HEALTH_STALL_SECONDS.default
    segment_events_max: int = SEGMENT_EVENTS_MAX.default
    segment_tick_seconds: int = SEGMENT_TICK_SECONDS.default
    recompute_slice_ms: int = RECOMPUTE_SLICE_MS.default
    load_max_rows_per_second: int = LOAD_MAX_ROWS_PER_SECOND.default
    reindex_metrics_port: int = REINDEX_METRICS_PORT.default
    # Not from the environment: knobs for tests.
    snapshot_chunk_rows: int = 2000
    rebuild_chunk_ids: int = 2000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IndexerSettings:
        """The settings from ``env`` (default: the process environment); ``SettingsError``
        names the first variable holding a value the indexer cannot use."""
        return cls(**config.read_all(SETTINGS, os.environ if env is None else env))
