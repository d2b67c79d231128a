"""Stack settings, read only from the ``LOYALTY_*`` variables listed in docs/internals.md."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stack.errors import StackError

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent

ENV_STACK_DIR = "LOYALTY_STACK_DIR"
ENV_PG_PORT = "LOYALTY_PG_PORT"
ENV_PG_STANDBY_PORT = "LOYALTY_PG_STANDBY_PORT"
ENV_REDIS_PORT = "LOYALTY_REDIS_PORT"
ENV_REDIS_CLUSTER_PORT = "LOYALTY_REDIS_CLUSTER_PORT"
ENV_ES_PORT = "LOYALTY_ES_PORT"

DEFAULT_STACK_DIR = REPO_ROOT / ".stack"
DEFAULT_PG_PORT = 5433
DEFAULT_PG_STANDBY_PORT = 5434
DEFAULT_REDIS_PORT = 6380
DEFAULT_REDIS_CLUSTER_PORT = 7001
DEFAULT_ES_PORT = 9200

# Credentials of the local stack: fixed, public and for this machine's loopback only (a
# shared deployment sets its own through the URLs, docs/internals.md "Credentials"). The
# defaults of ``cache/config.py`` and ``indexer/settings.py`` spell the same values.
REDIS_PASSWORD = "loyalty-local"
PG_ADMIN_USER = "postgres"
PG_ADMIN_PASSWORD = "loyalty-admin-local"
# The indexer's role: LOGIN REPLICATION, no superuser; ``indexer setup`` grants it the rest.
PG_INDEXER_ROLE = "loyalty_indexer"
PG_INDEXER_PASSWORD = "loyalty-indexer-local"

# Redis holds documents without a TTL, which must never be evicted silently: when full it
# refuses writes (an OOM reply) rather than dropping keys (docs/internals.md, "Redis").
REDIS_MAXMEMORY = "4gb"
REDIS_MAXMEMORY_POLICY = "noeviction"

# The local Redis Cluster: three masters with a replica each (the fewest masters
# ``redis-cli --cluster create`` accepts), on consecutive ports from its first one. Every node
# also listens on its cluster bus, Redis's default of its port plus 10000.
REDIS_CLUSTER_NODES = 6
REDIS_CLUSTER_REPLICAS = 1
REDIS_CLUSTER_BUS_OFFSET = 10000


@dataclass(frozen=True)
class StackConfig:
    stack_dir: Path
    pg_port: int
    redis_port: int
    es_port: int
    # A streaming standby of the stack's Postgres, started only when named (``stack up
    # postgres-standby``).
    pg_standby_port: int = DEFAULT_PG_STANDBY_PORT
    # First port of the Redis Cluster (``stack up redis-cluster``), whose nodes take
    # ``REDIS_CLUSTER_NODES`` ports in a row from it.
    redis_cluster_port: int = DEFAULT_REDIS_CLUSTER_PORT
    # Extra Elasticsearch node settings (``name=value``), over the defaults: for a private
    # node of a test (a tiny ``http.max_content_length``); the environment never sets them.
    es_node_settings: tuple[tuple[str, str], ...] = ()

    @property
    def redis_cluster_ports(self) -> tuple[int, ...]:
        first = self.redis_cluster_port
        return tuple(range(first, first + REDIS_CLUSTER_NODES))

    @property
    def logs_dir(self) -> Path:
        return self.stack_dir / "logs"

    @property
    def run_dir(self) -> Path:
        """Pidfiles of what this stack started (Postgres keeps its own in its data folder)."""
        return self.stack_dir / "run"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StackConfig:
        env = os.environ if environ is None else environ
        raw_dir = env.get(ENV_STACK_DIR, "")
        stack_dir = Path(raw_dir).expanduser() if raw_dir else DEFAULT_STACK_DIR
        return cls(
            stack_dir=stack_dir.resolve(),
            pg_port=_port(env, ENV_PG_PORT, DEFAULT_PG_PORT, "postgres"),
            redis_port=_port(env, ENV_REDIS_PORT, DEFAULT_REDIS_PORT, "redis"),
            es_port=_port(env, ENV_ES_PORT, DEFAULT_ES_PORT, "elasticsearch"),
            pg_standby_port=_port(
                env, ENV_PG_STANDBY_PORT, DEFAULT_PG_STANDBY_PORT, "postgres-standby"
            ),
            redis_cluster_port=_redis_cluster_port(env),
        )


def _port(env: Mapping[str, str], name: str, default: int, service: str) -> int:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise StackError(service, f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise StackError(service, f"{name}={port} is out of range 1-65535")
    return port


def _redis_cluster_port(env: Mapping[str, str]) -> int:
    """The cluster's first port, checked so that its last node's bus port still exists."""
    first = _port(env, ENV_REDIS_CLUSTER_PORT, DEFAULT_REDIS_CLUSTER_PORT, "redis-cluster")
    highest = first + REDIS_CLUSTER_NODES - 1 + REDIS_CLUSTER_BUS_OFFSET
    if highest > 65535:
        limit = 65535 - REDIS_CLUSTER_BUS_OFFSET - (REDIS_CLUSTER_NODES - 1)
        raise StackError(
            "redis-cluster",
            f"{ENV_REDIS_CLUSTER_PORT}={first} leaves no room for {REDIS_CLUSTER_NODES} nodes "
            f"and their bus ports (+{REDIS_CLUSTER_BUS_OFFSET}): at most {limit}",
        )
    return first
