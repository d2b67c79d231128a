"""Read API configuration: every variable declared once below, read once per process.

``ApiSettings.from_env()`` reads them (from ``os.environ`` unless a mapping is given),
validates each, and returns the one settings object the app is built from; nothing else in
``readapi/`` or ``cache/`` reads the environment. An unset or empty variable takes its
default, which fits the local stack. ``ENVIRONMENT_HELP`` and the tables of
docs/internals.md ("Configuration") derive from, or are tested against, ``SETTINGS``.

The read API holds no Postgres setting at all: API keys, documents and the watermark reach it
through Redis and Elasticsearch, written by the indexer.

A start outside the local stack (Redis or Elasticsearch at an address that is not loopback)
with the default cursor secret is warned about (``ApiSettings.warnings``).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cache import config
from cache.config import (
    STORE_SETTINGS,
    Format,
    Setting,
    SettingsError,
    StoreSettings,
    environment_help,
    es_hosts,
    integer,
)
from cache.l1 import DEFAULT_MAX_AGE_MS, DEFAULT_MAX_BYTES

__all__ = ["ENVIRONMENT_HELP", "SETTINGS", "ApiSettings", "SettingsError"]

API_PORT = Setting(
    "port", "LOYALTY_API_PORT", integer(0, 65535), 8080,
    "port to listen on; serve --port overrides it",
)
RATE_LIMIT_DEFAULT = Setting(
    "rate_limit_default", "LOYALTY_RATE_LIMIT_DEFAULT", integer(0, 2**31 - 1), 600,
    "requests per key and minute when the key has no limit",
)
# Per worker process, 1 MiB to 64 GiB; the default (64 MiB, see ``cache.l1.DEFAULT_MAX_BYTES``)
# suits a 2-core machine of a few GiB running 2 workers: ~1 KB voucher bodies, some 45,000 of
# them per worker, the rest read from Redis.
L1_MAX_BYTES = Setting(
    "l1_max_bytes", "LOYALTY_L1_MAX_BYTES", integer(1 << 20, 64 << 30), DEFAULT_MAX_BYTES,
    "in-process object cache size, bytes per process",
)
L1_MAX_AGE_MS = Setting(
    "l1_max_age_ms", "LOYALTY_L1_MAX_AGE_MS", integer(1, 3_600_000), DEFAULT_MAX_AGE_MS,
    "in-process cache entry max age, ms",
)


def _secret_list(raw: str) -> str:
    if any(not secret for secret in raw.split(",")):
        raise ValueError("an empty secret")
    return raw


# ``readapi.cursor`` reads the text as it is: the first secret signs, every one verifies.
SECRET_LIST = Format(
    "one or more non-empty secrets separated by commas, newest first", _secret_list,
    echo=False,
)
DEFAULT_CURSOR_SECRET = "loyalty-local-cursor-secret"
# The default is fine for one machine, but every host of a deployment must share one secret
# or cursors from one fail on another (``ApiSettings.warnings``).
CURSOR_SECRET = Setting(
    "cursor_secret", "LOYALTY_CURSOR_SECRET", SECRET_LIST, DEFAULT_CURSOR_SECRET,
    "secrets of list cursors, comma-separated, newest first: the first signs, all verify",
    shown_default="a fixed local secret",
)
# Tombstones the read API writes for ids that match nothing: ids are the client's choice, so
# these must not live as long as the indexer's delete tombstones.
MISS_TTL_SECONDS = Setting(
    "miss_ttl_seconds", "LOYALTY_MISS_TTL_SECONDS", integer(1, 86_400), 60,
    "seconds a looked-up id that matches nothing is remembered in Redis as absent",
)
AUTH_FAILURES_PER_MINUTE = Setting(
    "auth_failures_per_minute", "LOYALTY_AUTH_FAILURES_PER_MINUTE", integer(1, 1_000_000), 30,
    "failed authentications per client address and minute before 429",
)
KEEPALIVE_TIMEOUT_SECONDS = Setting(
    "keepalive_timeout_seconds", "LOYALTY_KEEPALIVE_TIMEOUT_SECONDS", integer(1, 3600), 75,
    "seconds an idle kept-alive connection stays open",
)
HEADER_TIMEOUT_SECONDS = Setting(
    "header_timeout_seconds", "LOYALTY_HEADER_TIMEOUT_SECONDS", integer(1, 3600), 10,
    "seconds a client has to send a request's line and headers once it began",
)
# Each waiter holds a connection of a pool of its own for up to ``wait_ms`` (readapi.events).
EVENTS_MAX_WAITERS = Setting(
    "events_max_waiters", "LOYALTY_EVENTS_MAX_WAITERS", integer(0, 10_000), 64,
    "concurrent long polls of GET /v1/events per process; beyond, answers come at once",
)

SETTINGS: tuple[Setting[Any], ...] = (
    *STORE_SETTINGS,
    API_PORT,
    RATE_LIMIT_DEFAULT,
    L1_MAX_BYTES,
    L1_MAX_AGE_MS,
    CURSOR_SECRET,
    MISS_TTL_SECONDS,
    AUTH_FAILURES_PER_MINUTE,
    KEEPALIVE_TIMEOUT_SECONDS,
    HEADER_TIMEOUT_SECONDS,
    EVENTS_MAX_WAITERS,
)

ENVIRONMENT_HELP = environment_help(SETTINGS)


@dataclass(frozen=True)
class ApiSettings(StoreSettings):
    port: int = API_PORT.default
    rate_limit_default: int = RATE_LIMIT_DEFAULT.default
    l1_max_bytes: int = L1_MAX_BYTES.default
    l1_max_age_ms: int = L1_MAX_AGE_MS.default
    cursor_secret: str = CURSOR_SECRET.default
    miss_ttl_seconds: float = MISS_TTL_SECONDS.default
    auth_failures_per_minute: int = AUTH_FAILURES_PER_MINUTE.default
    keepalive_timeout_seconds: float = KEEPALIVE_TIMEOUT_SECONDS.default
    header_timeout_seconds: float = HEADER_TIMEOUT_SECONDS.default
    events_max_waiters: int = EVENTS_MAX_WAITERS.default
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

    @property
    def on_local_stack(self) -> bool:
        """Whether Redis and Elasticsearch are both on this machine (loopback addresses):
        how a start on the local stack is told from a deployment."""
        return _loopback(self.redis_url) and all(map(_loopback, es_hosts(self.es_url)))

    def warnings(self) -> list[str]:
        """What ``readapi serve`` logs as warnings at start: settings that work, but not as
        a deployment should have them."""
        found = []
        secrets = self.cursor_secret.split(",")
        if DEFAULT_CURSOR_SECRET in secrets and not self.on_local_stack:
            found.append(
                "LOYALTY_CURSOR_SECRET holds the fixed default secret, known to anyone who "
                "has this code: list cursors can be forged; set a secret of this deployment, "
                "shared by all its hosts"
            )
        return found


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: resolved elsewhere, so not known to be this machine
