"""Indexer configuration, read once from environment variables (defaults fit the local stack)."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5433/loyalty"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6380/0"
DEFAULT_ES_URL = "http://127.0.0.1:9200"

ENVIRONMENT_HELP = """\
environment:
  LOYALTY_PG_DSN            source database (default: postgresql://postgres@127.0.0.1:5433/loyalty)
  LOYALTY_REDIS_URL         Redis (default: redis://127.0.0.1:6380/0)
  LOYALTY_ES_URL            Elasticsearch (default: http://127.0.0.1:9200)
  LOYALTY_ES_INDEX_PREFIX   index and alias prefix (default: loyalty_)
  LOYALTY_REDIS_KEY_PREFIX  Redis key prefix (default: loyalty:)
  LOYALTY_SLOT_NAME         logical replication slot (default: loyalty_indexer)
  LOYALTY_PUBLICATION       publication (default: loyalty_pub)
  LOYALTY_BATCH_CHANGES     upper bound of changes per peek (default: 5000)
  LOYALTY_IDLE_SLEEP_MS     pause after an empty peek (default: 20)
  LOYALTY_ES_REFRESH        index refresh interval (default: 250ms)
  LOYALTY_METRICS_PORT      Prometheus metrics port, 0 to disable (default: 9108)
"""


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value else default


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as error:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from error


@dataclass(frozen=True)
class IndexerSettings:
    pg_dsn: str = DEFAULT_PG_DSN
    redis_url: str = DEFAULT_REDIS_URL
    es_url: str = DEFAULT_ES_URL
    es_index_prefix: str = "loyalty_"
    redis_key_prefix: str = "loyalty:"
    slot_name: str = "loyalty_indexer"
    publication: str = "loyalty_pub"
    batch_changes: int = 5000
    idle_sleep_ms: int = 20
    es_refresh_interval: str = "250ms"
    metrics_port: int = 9108
    snapshot_chunk_rows: int = 2000
    rebuild_chunk_ids: int = 2000

    @classmethod
    def from_env(cls) -> IndexerSettings:
        return cls(
            pg_dsn=_env("LOYALTY_PG_DSN", DEFAULT_PG_DSN),
            redis_url=_env("LOYALTY_REDIS_URL", DEFAULT_REDIS_URL),
            es_url=_env("LOYALTY_ES_URL", DEFAULT_ES_URL),
            es_index_prefix=_env("LOYALTY_ES_INDEX_PREFIX", "loyalty_"),
            redis_key_prefix=_env("LOYALTY_REDIS_KEY_PREFIX", "loyalty:"),
            slot_name=_env("LOYALTY_SLOT_NAME", "loyalty_indexer"),
            publication=_env("LOYALTY_PUBLICATION", "loyalty_pub"),
            batch_changes=_env_int("LOYALTY_BATCH_CHANGES", 5000),
            idle_sleep_ms=_env_int("LOYALTY_IDLE_SLEEP_MS", 20),
            es_refresh_interval=_env("LOYALTY_ES_REFRESH", "250ms"),
            metrics_port=_env_int("LOYALTY_METRICS_PORT", 9108),
        )
