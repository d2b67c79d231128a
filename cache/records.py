"""Value types that cross the cache layer's boundary: what is stored, written and published.

Frozen and slotted: they are created per write and per read, and never mutated. How they
become bytes is ``cache/readmodel/codec.py``'s business; how they reach Redis is
``cache/store.py``'s (envelopes) and ``cache/membership.py``'s (segment membership).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

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


class Served(NamedTuple):
    """An object's or alias's envelope as a lookup reads it (``codec.decode_served``):
    ``body`` the stored JSON of a live object, ``match`` its code or source_id, ``target``
    the object id a live alias names; all ``None`` for a tombstone."""

    version: int
    body: bytes | None
    match: str | None
    target: str | None


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


class MembershipMode(StrEnum):
    """How a ``MembershipUpdate`` names the customer's segments."""

    REPLACE = "replace"  # the whole membership, as evaluated at ``version``
    SET_ONE = "set_one"  # one segment in or out, the others untouched


class EventCause(StrEnum):
    """What made a membership move: a committed change, or time passing (a filter on dates)."""

    CHANGE = "change"
    CLOCK = "clock"


@dataclass(frozen=True, slots=True)
class MembershipUpdate:
    """One customer's segment membership in one project, as of ``version``.

    ``version`` is the commit LSN of the change (or the current watermark for a clock tick).
    ``REPLACE`` gives the whole membership (``segment_ids``; ``()``: member of nothing, as
    for a deleted customer or one moved to another project) and becomes the record's base
    version; ``SET_ONE`` puts one segment in (``member``) or out and keeps the base. Either is
    refused below the stored base. ``emit=False`` is a silent rebuild (an initial load, a
    cache reload): state and counters move, no event is written.
    """

    project_id: str
    customer_id: str
    version: int
    mode: MembershipMode
    segment_ids: tuple[str, ...] = ()
    segment_id: str = ""
    member: bool = False
    cause: EventCause = EventCause.CHANGE
    cause_lsn: int = 0
    occurred_at_us: int = 0
    emit: bool = True


class SegmentEventType(StrEnum):
    ENTERED = "customer.segment.entered"
    LEFT = "customer.segment.left"


@dataclass(frozen=True, slots=True)
class SegmentEvent:
    """One entry of a project's segment event stream.

    ``cursor`` is the stream entry id (``<ms>-<seq>``), where a reader resumes. ``id`` is
    derived from the cause, not from the entry, so the same transition has the same id
    wherever it is read (``cache.readmodel.codec.segment_event_id``).
    """

    cursor: str
    id: str
    type: SegmentEventType
    customer_id: str
    segment_id: str
    cause: EventCause
    cause_lsn: int
    occurred_at_us: int


@dataclass(frozen=True, slots=True)
class SegmentJob:
    """A pending recompute of one segment's members after the segment changed at
    ``version`` (its commit LSN)."""

    project_id: str
    segment_id: str
    version: int
    occurred_at_us: int
