"""Read API configuration: every variable declared once below, read once per process.

``ApiSettings.from_env()`` reads them (from ``os.environ`` unless a mapping is given),
validates each, and returns the one settings object the app is built from; nothing else in
``readapi/`` or ``cache/`` reads the environment. An unset or empty variable takes its
default, which fits the local stack. ``ENVIRONMENT_HELP`` and the tables of
docs/internals.md ("Configuration") derive from, or are tested against, ``SETTINGS``.

The read API holds no Postgres setting at all: API keys, documents and the watermark reach it
through Redis and Elasticsearch, written by the indexer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cache import config
from cache.config import (
    DEFAULT_ES_URL,
    DEFAULT_REDIS_URL,
    SECRET,
    Setting,
    SettingsError,
    environment_help,
    integer,
)
from cache.l1 import DEFAULT_MAX_AGE_MS, DEFAULT_MAX_ENTRIES
from cache.readmodel.keys import DEFAULT_PREFIX
from cache.store import DEFAULT_TOMBSTONE_TTL_SECONDS

__all__ = ["ENVIRONMENT_HELP", "SETTINGS", "ApiSettings", "SettingsError"]

REDIS_URL = Setting(
    "redis_url", "LOYALTY_REDIS_URL", config.REDIS_URL, DEFAULT_REDIS_URL, "Redis",
)
ES_URL = Setting(
    "es_url", "LOYALTY_ES_URL", config.ES_URL, DEFAULT_ES_URL, "Elasticsearch",
)
ES_INDEX_PREFIX = Setting(
    "es_index_prefix", "LOYALTY_ES_INDEX_PREFIX", config.ES_INDEX_PREFIX,
    config.DEFAULT_ES_INDEX_PREFIX, "index and alias prefix",
)
REDIS_KEY_PREFIX = Setting(
    "redis_key_prefix", "LOYALTY_REDIS_KEY_PREFIX", config.REDIS_KEY_PREFIX, DEFAULT_PREFIX,
    "Redis key prefix",
)
TOMBSTONE_TTL_SECONDS = Setting(
    "tombstone_ttl_seconds", "LOYALTY_TOMBSTONE_TTL_SECONDS", config.TOMBSTONE_TTL_SECONDS,
    DEFAULT_TOMBSTONE_TTL_SECONDS, "seconds a delete's tombstone blocks older writes",
)
API_PORT = Setting(
    "port", "LOYALTY_API_PORT", integer(0, 65535), 8080,
    "port to listen on; serve --port overrides it",
)
RATE_LIMIT_DEFAULT = Setting(
    "rate_limit_default", "LOYALTY_RATE_LIMIT_DEFAULT", integer(0, 2**31 - 1), 600,
    "requests per key and minute when the key has no limit",
)
L1_MAX_ENTRIES = Setting(
    "l1_max_entries", "LOYALTY_L1_MAX_ENTRIES", integer(1, 100_000_000), DEFAULT_MAX_ENTRIES,
    "in-process cache size, entries",
)
L1_MAX_AGE_MS = Setting(
    "l1_max_age_ms", "LOYALTY_L1_MAX_AGE_MS", integer(1, 3_600_000), DEFAULT_MAX_AGE_MS,
    "in-process cache entry max age, ms",
)
# The default is fine for one machine, but every host of a deployment must share one secret
# or cursors from one fail on another.
CURSOR_SECRET = Setting(
    "cursor_secret", "LOYALTY_CURSOR_SECRET", SECRET, "loyalty-local-cursor-secret",
    "secret signing list cursors", shown_default="a fixed local secret",
)

SETTINGS: tuple[Setting[Any], ...] = (
    REDIS_URL,
    ES_URL,
    ES_INDEX_PREFIX,
    REDIS_KEY_PREFIX,
    TOMBSTONE_TTL_SECONDS,
    API_PORT,
    RATE_LIMIT_DEFAULT,
    L1_MAX_ENTRIES,
    L1_MAX_AGE_MS,
    CURSOR_SECRET,
)

ENVIRONMENT_HELP = environment_help(SETTINGS)


@dataclass(frozen=True)
class ApiSettings:
    redis_url: str = REDIS_URL.default
    es_url: str = ES_URL.default
    es_index_prefix: str = ES_INDEX_PREFIX.default
    redis_key_prefix: str = REDIS_KEY_PREFIX.default
    tombstone_ttl_seconds: float = TOMBSTONE_TTL_SECONDS.default
    port: int = API_PORT.default
    rate_limit_default: int = RATE_LIMIT_DEFAULT.default
    l1_max_entries: int = L1_MAX_ENTRIES.default
    l1_max_age_ms: int = L1_MAX_AGE_MS.default
    cursor_secret: str = CURSOR_SECRET.default
    # Not from the environment: knobs for tests and the benchmark.
    key_cache_entries: int = 10_000
    # How long a key record seen in Redis still authenticates while Redis is unreachable.
    key_outage_grace_seconds: float = 60.0
    redis_timeout_seconds: float = 0.5
    es_timeout_seconds: float = 5.0
    # After a dependency failed, requests skip it this long instead of each waiting to fail.
    dependency_retry_seconds: float = 0.5
    # Pause between watermark reads from Redis while the invalidation channel is down.
    watermark_poll_seconds: float = 0.1
    l1_enabled: bool = True
    # Set by ``readapi serve --workers N`` (N > 1): where the workers share their metrics.
    metrics_dir: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiSettings:
        """The settings from ``env`` (default: the process environment); ``SettingsError``
        names the first variable holding a value the read API cannot use."""
        return cls(**config.read_all(SETTINGS, os.environ if env is None else env))
