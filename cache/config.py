"""Building blocks of the settings of both processes (``indexer/settings.py``,
``readapi/settings.py``).

Here: the spec of one setting (``Setting``), the value formats with what they allow
(``Format``), and the connection defaults both processes share (the local stack's addresses).
Also the settings both processes read (the stores' addresses, prefixes and the tombstone
TTL), declared once here so the two cannot drift. Nothing here reads the environment: each
process's settings module lists its settings and reads the mapping it is given, once, at start.
Defaults owned by a part of ``cache`` stay with it (the key prefix in ``cache.readmodel.keys``,
the tombstone TTL in ``cache.store``, the L1 bounds in ``cache.l1``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from cache.connect import check_redis_url
from cache.readmodel.keys import DEFAULT_PREFIX
from cache.store import DEFAULT_TOMBSTONE_TTL_SECONDS

T = TypeVar("T")

# The local stack's Redis, with its fixed local password (``stack/config.py``); a URL may
# also name an ACL user: ``redis://user:password@host:port/db`` (docs/internals.md).
DEFAULT_REDIS_URL = "redis://:loyalty-local@127.0.0.1:6380/0"
DEFAULT_ES_URL = "http://127.0.0.1:9200"
DEFAULT_ES_INDEX_PREFIX = "loyalty_"

# An echoed value is cut to this many characters, so an error stays one short line.
_ECHO_CHARS = 60


class SettingsError(ValueError):
    """A variable holds a value the process cannot use. The message is one line naming the
    variable and what it allows, fit for a terminal."""


@dataclass(frozen=True, slots=True)
class Format(Generic[T]):
    """How a variable's text becomes a value: ``parse`` raises ``ValueError`` on text it
    refuses; ``allowed`` completes "VARIABLE must be ...". ``echo``: whether an error may
    repeat the refused text (not for URLs, which may carry a password, nor for secrets)."""

    allowed: str
    parse: Callable[[str], T]
    show: Callable[[T], str] = str
    echo: bool = True


@dataclass(frozen=True, slots=True)
class Setting(Generic[T]):
    """One setting: the settings attribute ``field``, read from ``variable``.

    An unset or empty variable gives ``default``. ``shown_default`` replaces the default in
    help and docs when it should not be printed (a secret).
    """

    field: str
    variable: str
    format: Format[T]
    default: T
    help: str
    shown_default: str | None = None

    @property
    def default_text(self) -> str:
        return self.shown_default if self.shown_default is not None else self.format.show(
            self.default
        )

    def read(self, env: Mapping[str, str]) -> T:
        raw = env.get(self.variable, "")
        if not raw:
            return self.default
        try:
            return self.format.parse(raw)
        except ValueError:
            got = ""
            if self.format.echo:
                shown = raw if len(raw) <= _ECHO_CHARS else raw[:_ECHO_CHARS] + "..."
                got = f", got {shown!r}"
            raise SettingsError(f"{self.variable} must be {self.format.allowed}{got}") from None


def read_all(settings: tuple[Setting[Any], ...], env: Mapping[str, str]) -> dict[str, Any]:
    """Every setting's value by field; the first invalid variable raises ``SettingsError``."""
    return {setting.field: setting.read(env) for setting in settings}


def environment_help(settings: tuple[Setting[Any], ...]) -> str:
    """The ``environment:`` paragraph of a command's ``--help``."""
    width = max(len(s.variable) for s in settings) + 2
    lines = ["environment:"]
    for s in settings:
        lines.append(f"  {s.variable:<{width}}{s.help} (default: {s.default_text})")
    return "\n".join(lines) + "\n"


# -- formats ---------------------------------------------------------------------------------


def integer(minimum: int, maximum: int) -> Format[int]:
    def parse(raw: str) -> int:
        if not re.fullmatch(r"-?[0-9]{1,18}", raw):
            raise ValueError(raw)
        value = int(raw)
        if not minimum <= value <= maximum:
            raise ValueError(raw)
        return value

    return Format(f"an integer from {minimum} to {maximum}", parse)


_DURATION = re.compile(r"[1-9][0-9]{0,8}(ms|s|m)")


def _duration(raw: str) -> str:
    if not _DURATION.fullmatch(raw):
        raise ValueError(raw)
    return raw


# Elasticsearch's time-value text, kept as text (``250ms``, ``1s``, ``2m``).
DURATION = Format("a duration: a positive whole number and ms, s or m, like 250ms", _duration)


def url(*schemes: str, host: bool = True) -> Format[str]:
    """A URL with one of ``schemes`` (and a host, when ``host``). The value is never echoed."""

    def parse(raw: str) -> str:
        if any(c.isspace() for c in raw):
            raise ValueError("whitespace")
        parts = urlsplit(raw)
        if parts.scheme not in schemes or (host and not parts.hostname):
            raise ValueError("scheme or host")
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
        return raw

    and_host = " and a host" if host else ""
    return Format(f"a URL with scheme {' or '.join(schemes)}{and_host}", parse, echo=False)


def url_list(*schemes: str) -> Format[str]:
    """One or more URLs (each as ``url`` takes it), separated by commas: the nodes of a
    cluster, any of which may answer."""
    one = url(*schemes)

    def parse(raw: str) -> str:
        for part in raw.split(","):
            one.parse(part)
        return raw

    return Format(f"one or more URLs with scheme {' or '.join(schemes)} and a host, separated "
                  "by commas", parse, echo=False)


def redis_url() -> Format[str]:
    """One server's URL, or a cluster's (``cache/connect.py``). The value is never echoed."""

    def parse(raw: str) -> str:
        if any(c.isspace() for c in raw):
            raise ValueError("whitespace")
        check_redis_url(raw)
        return raw

    return Format(
        "a URL with scheme redis or rediss and a host, or redis+cluster or rediss+cluster "
        "and one or more host:port separated by commas", parse, echo=False,
    )


def es_hosts(value: str) -> list[str]:
    """The node URLs of an ``LOYALTY_ES_URL`` value."""
    return value.split(",")


def pattern(regex: str, allowed: str) -> Format[str]:
    """Text matching ``regex`` as a whole; ``allowed`` says so in words."""
    compiled = re.compile(regex)

    def parse(raw: str) -> str:
        if not compiled.fullmatch(raw):
            raise ValueError(raw)
        return raw

    return Format(allowed, parse)


# -- the settings both processes read, declared once ------------------------------------------

# An index name is lower case and may not start with '_', '-', '+' (or '.', hidden indices).
_ES_INDEX_PREFIX = pattern(
    r"[a-z0-9][a-z0-9_.-]{0,99}",
    "1 to 100 of [a-z0-9_.-], starting with a letter or digit",
)
# A brace would become the Redis Cluster hash tag of every key; glob characters and
# whitespace would break the SCAN patterns that find a prefix's keys.
_REDIS_KEY_PREFIX = pattern(
    r"[^{}*?\[\]\\\s]{1,100}",
    "1 to 100 characters without braces, whitespace or any of *?[]\\",
)

REDIS_URL = Setting(
    "redis_url", "LOYALTY_REDIS_URL", redis_url(), DEFAULT_REDIS_URL,
    "Redis (a Redis Cluster: redis+cluster://:password@host:port,host:port...)",
)
ES_URL = Setting(
    "es_url", "LOYALTY_ES_URL", url_list("http", "https"), DEFAULT_ES_URL,
    "Elasticsearch (several nodes: their URLs separated by commas)",
)
ES_INDEX_PREFIX = Setting(
    "es_index_prefix", "LOYALTY_ES_INDEX_PREFIX", _ES_INDEX_PREFIX, DEFAULT_ES_INDEX_PREFIX,
    "index and alias prefix",
)
REDIS_KEY_PREFIX = Setting(
    "redis_key_prefix", "LOYALTY_REDIS_KEY_PREFIX", _REDIS_KEY_PREFIX, DEFAULT_PREFIX,
    "Redis key prefix",
)
# Longer than any replay window: the indexer's writes and the read API's fills both obey it.
TOMBSTONE_TTL_SECONDS = Setting(
    "tombstone_ttl_seconds", "LOYALTY_TOMBSTONE_TTL_SECONDS", integer(1, 31_536_000),
    DEFAULT_TOMBSTONE_TTL_SECONDS, "seconds a delete's tombstone blocks older writes",
)
# The stores' addresses and names, in the order both processes list them.
STORE_SETTINGS: tuple[Setting[Any], ...] = (
    REDIS_URL, ES_URL, ES_INDEX_PREFIX, REDIS_KEY_PREFIX, TOMBSTONE_TTL_SECONDS,
)


@dataclass(frozen=True)
class StoreSettings:
    """The fields of ``STORE_SETTINGS``: the base of both processes' settings objects."""

    redis_url: str = REDIS_URL.default
    es_url: str = ES_URL.default
    es_index_prefix: str = ES_INDEX_PREFIX.default
    redis_key_prefix: str = REDIS_KEY_PREFIX.default
    tombstone_ttl_seconds: float = TOMBSTONE_TTL_SECONDS.default
