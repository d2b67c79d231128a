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
ENV_REDIS_PORT = "LOYALTY_REDIS_PORT"
ENV_ES_PORT = "LOYALTY_ES_PORT"

DEFAULT_STACK_DIR = REPO_ROOT / ".stack"
DEFAULT_PG_PORT = 5433
DEFAULT_REDIS_PORT = 6380
DEFAULT_ES_PORT = 9200


@dataclass(frozen=True)
class StackConfig:
    stack_dir: Path
    pg_port: int
    redis_port: int
    es_port: int

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
