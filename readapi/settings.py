"""Read API configuration, read once from environment variables (defaults fit the local stack).

The read API holds no Postgres setting at all: API keys, documents and the watermark reach it
through Redis and Elasticsearch, written by the indexer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_REDIS_URL = "redis://127.0.0.1:6380/0"
DEFAULT_ES_URL = "http://127.0.0.1:9200"
DEFAULT_PORT = 8080
DEFAULT_RATE_LIMIT = 600
# Used only when LOYALTY_CURSOR_SECRET is unset: fine for one machine, but every host of a
# deployment must share one secret or cursors from one fail on another.
DEFAULT_CURSOR_SECRET = "loyalty-local-cursor-secret"

ENVIRONMENT_HELP = """\
environment:
  LOYALTY_REDIS_URL           Redis (default: redis://127.0.0.1:6380/0)
  LOYALTY_ES_URL              Elasticsearch (default: http://127.0.0.1:9200)
  LOYALTY_ES_INDEX_PREFIX     index alias prefix (default: loyalty_)
  LOYALTY_REDIS_KEY_PREFIX    Redis key prefix (default: loyalty:)
  LOYALTY_API_PORT            port to listen on (default: 8080)
  LOYALTY_RATE_LIMIT_DEFAULT  requests per key and minute when the key has no limit (default: 600)
  LOYALTY_L1_MAX_ENTRIES      in-process cache size, entries (default: 100000)
  LOYALTY_L1_MAX_AGE_MS       in-process cache entry max age, ms (default: 1000)
  LOYALTY_CURSOR_SECRET       secret signing list cursors (default: a fixed local secret)
"""


class SettingsError(ValueError):
    """An environment variable holds a value the read API cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as error:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from error
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name)
    return value if value else default


@dataclass(frozen=True)
class ApiSettings:
    redis_url: str = DEFAULT_REDIS_URL
    es_url: str = DEFAULT_ES_URL
    es_index_prefix: str = "loyalty_"
    redis_key_prefix: str = "loyalty:"
    port: int = DEFAULT_PORT
    rate_limit_default: int = DEFAULT_RATE_LIMIT
    l1_max_entries: int = 100_000
    l1_max_age_ms: int = 1000
    cursor_secret: str = DEFAULT_CURSOR_SECRET
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
        env = os.environ if env is None else env
        return cls(
            redis_url=_text(env, "LOYALTY_REDIS_URL", DEFAULT_REDIS_URL),
            es_url=_text(env, "LOYALTY_ES_URL", DEFAULT_ES_URL),
            es_index_prefix=_text(env, "LOYALTY_ES_INDEX_PREFIX", "loyalty_"),
            redis_key_prefix=_text(env, "LOYALTY_REDIS_KEY_PREFIX", "loyalty:"),
            port=_int(env, "LOYALTY_API_PORT", DEFAULT_PORT, 0, 65535),
            rate_limit_default=_int(
                env, "LOYALTY_RATE_LIMIT_DEFAULT", DEFAULT_RATE_LIMIT, 0, 2**31 - 1
            ),
            l1_max_entries=_int(env, "LOYALTY_L1_MAX_ENTRIES", 100_000, 1, 100_000_000),
            l1_max_age_ms=_int(env, "LOYALTY_L1_MAX_AGE_MS", 1000, 1, 3_600_000),
            cursor_secret=_text(env, "LOYALTY_CURSOR_SECRET", DEFAULT_CURSOR_SECRET),
        )
