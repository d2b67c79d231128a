"""Value types that cross the cache layer's boundary: what is stored, written and published.

Frozen and slotted: they are created per write and per read, and never mutated. How they
become bytes is ``cache/readmodel/codec.py``'s business; how they reach Redis is
``cache/store.py``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_VERSION = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Envelope:
    """A versioned value as kept in Redis: msgpack ``{"v": version, "s": schema, "d": data}``.

    ``version`` is the commit LSN of the newest change the data reflects. ``data`` is
    ``None`` for a tombstone: the object was deleted at ``version``.
    """

    version: int
    schema: int
    data: Any

    @classmethod
    def tombstone(cls, version: int, schema: int = 1) -> Envelope:
        return cls(version, schema, None)

    @property
    def is_tombstone(self) -> bool:
        return self.data is None


@dataclass(frozen=True, slots=True)
class VersionedWrite:
    """One versioned set (or tombstone, when the envelope is one) of one key.

    ``ttl_seconds`` overrides the expiry: by default live values never expire and tombstones
    expire after the store's tombstone TTL.
    """

    key: str
    envelope: Envelope
    ttl_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """What the read API needs to authenticate and limit one app id; never the token itself."""

    app_id: str
    project_id: str
    token_sha256: str = field(repr=False)
    rate_limit_per_minute: int | None
    revoked: bool


@dataclass(frozen=True, slots=True)
class Invalidation:
    """One message on the invalidation channel.

    ``entries`` names each written key with the version written, so a cache holding that
    version or a newer one may keep its entry. ``watermark`` is the indexer's applied
    watermark when the message carries it.
    """

    entries: tuple[tuple[str, int], ...] = ()
    watermark: int | None = None


@dataclass(frozen=True, slots=True)
class TokenLease:
    """Answer of one rate-limit lease: tokens granted now, tokens left in the window after
    this grant, and whole seconds until the window resets (at least 1)."""

    granted: int
    remaining: int
    reset_seconds: int
