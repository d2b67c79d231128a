"""Segment membership as the read API serves it: member counts (``GET /v1/segments/{id}``)
and the event stream (``GET /v1/events``, docs/api.md §3, "Segment events").

Both come from what the indexer keeps in Redis (``cache.membership.MembershipStore``): one
counter per segment and one stream per project, moved together by one script call, so a
count and the events never disagree. Every read goes through the Redis dependency gate: an
outage answers 503 ``unavailable``.

Events are read oldest first in pages of ``PAGE_ENTRIES``, the filters applied while
reading, and at most ``SCAN_ENTRIES`` entries are examined per request: a filter that matches
rarely would otherwise make one request walk a million entries. ``next_cursor`` is the last
entry examined, so a client progresses even through a page where nothing matched.

A long poll (``wait_ms``) blocks on ``XREAD``, which holds its connection for the whole
wait: it runs on a client of its own (``blocking``) whose pool has one connection per
allowed waiter, so waiters never starve the shared pool, and beyond ``max_waiters`` a
request answers at once. ``stop_waiting`` (at shutdown) ends every wait.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, NoReturn, TypeVar

import orjson

from cache.errors import CacheUnavailable
from cache.membership import MembershipStore
from cache.records import SegmentEvent, SegmentEventType
from cache.types import Lsn
from readapi.dependency import DependencyGate
from readapi.errors import unavailable
from readapi.metrics import ApiMetrics
from readapi.params import has_control_characters
from readapi.search_query import DEFAULT_LIMIT, MAX_ID_LENGTH, MAX_LIMIT, InvalidParameter

T = TypeVar("T")

ALLOWED_EVENT_PARAMETERS = ("type", "segment_id", "after", "limit", "wait_ms")
EVENT_TYPES = tuple(kind.value for kind in SegmentEventType)
MAX_EVENTS_WAIT_MS = 30_000
PAGE_ENTRIES = 200
SCAN_ENTRIES = 2000
# A stream entry id: two unsigned 64-bit numbers; 20 digits hold any of them (and more).
MAX_CURSOR_DIGITS = 20
EVENT_CURSOR_PATTERN = f"^[0-9]{{1,{MAX_CURSOR_DIGITS}}}-[0-9]{{1,{MAX_CURSOR_DIGITS}}}$"
MAX_EVENT_CURSOR_LENGTH = 2 * MAX_CURSOR_DIGITS + 1
_MAX_ID_PART = (1 << 64) - 1
# Read before a wait: "any entry", for a stream found empty.
_STREAM_START = "0-0"

_CURSOR = re.compile(EVENT_CURSOR_PATTERN[1:-1])
_LIMIT = re.compile(r"[0-9]{1,3}")
_WAIT_MS = re.compile(r"[0-9]{1,5}")
_MAX_NAME_SHOWN = 60

REDIS_UNREACHABLE = "Segment membership cannot be read: Redis is unreachable."


@dataclass(frozen=True, slots=True)
class EventsQuery:
    """``GET /v1/events``, validated. ``after`` is the cursor as the client sent it."""

    type: SegmentEventType | None = None
    segment_id: str | None = None
    after: str | None = None
    limit: int = DEFAULT_LIMIT
    wait_ms: int = 0

    def matches(self, event: SegmentEvent) -> bool:
        return (self.type is None or event.type == self.type) and (
            self.segment_id is None or event.segment_id == self.segment_id
        )


# ---------------------------------------------------------------------------------------
# Parameters: the same rules and messages as the list endpoints (readapi.search_query)


def _shown(name: str) -> str:
    """A parameter name as quoted in messages: bounded, since clients choose the names."""
    if len(name) > _MAX_NAME_SHOWN:
        name = name[:_MAX_NAME_SHOWN] + "..."
    return json.dumps(name)


def _check_names(query: Mapping[str, str]) -> None:
    counts = Counter(name for name, _ in query.items())
    getall = getattr(query, "getall", None)
    if callable(getall):
        # A MultiDict's keys() may be deduplicated; getall() sees every value.
        for name in counts:
            counts[name] = max(counts[name], len(getall(name)))
    for name in counts:
        if name not in ALLOWED_EVENT_PARAMETERS:
            raise InvalidParameter(
                name[:_MAX_NAME_SHOWN],
                f"unknown query parameter {_shown(name)}; "
                f"allowed: {', '.join(ALLOWED_EVENT_PARAMETERS)}",
            )
    for name, count in counts.items():
        if count > 1:
            raise InvalidParameter(
                name, f"query parameter {_shown(name)} is given {count} times; give it once"
            )


def _event_type(value: str) -> SegmentEventType:
    for kind in SegmentEventType:
        if value == kind.value:
            return kind
    raise InvalidParameter(
        "type", f'query parameter "type" must be one of {", ".join(EVENT_TYPES)}'
    )


def _segment_id(value: str) -> str:
    if not value:
        raise InvalidParameter("segment_id", 'query parameter "segment_id" must not be empty')
    if len(value) > MAX_ID_LENGTH:
        raise InvalidParameter(
            "segment_id",
            f'query parameter "segment_id" is too long (at most {MAX_ID_LENGTH} characters)',
        )
    if has_control_characters(value):
        raise InvalidParameter(
            "segment_id", 'query parameter "segment_id" must not contain control characters'
        )
    return value


def _after(value: str) -> str:
    if _CURSOR.fullmatch(value) is None:
        raise InvalidParameter(
            "after",
            'query parameter "after" must be an event cursor: digits, "-", digits, at most '
            f"{MAX_CURSOR_DIGITS} digits on each side",
        )
    return value


def _bounded_integer(name: str, value: str, pattern: re.Pattern[str], low: int, high: int) -> int:
    if pattern.fullmatch(value) is None or not low <= int(value) <= high:
        raise InvalidParameter(
            name, f"query parameter {_shown(name)} must be an integer from {low} to {high}"
        )
    return int(value)


def parse_events_query(query: Mapping[str, str]) -> EventsQuery:
    """Validate the query of ``GET /v1/events``: names first, then values; every failure is
    an ``InvalidParameter`` (400)."""
    _check_names(query)
    kind = query.get("type")
    segment_id = query.get("segment_id")
    after = query.get("after")
    limit = query.get("limit")
    wait_ms = query.get("wait_ms")
    return EventsQuery(
        type=None if kind is None else _event_type(kind),
        segment_id=None if segment_id is None else _segment_id(segment_id),
        after=None if after is None else _after(after),
        limit=DEFAULT_LIMIT
        if limit is None
        else _bounded_integer("limit", limit, _LIMIT, 1, MAX_LIMIT),
        wait_ms=0
        if wait_ms is None
        else _bounded_integer("wait_ms", wait_ms, _WAIT_MS, 0, MAX_EVENTS_WAIT_MS),
    )


def resume_point(after: str) -> str | None:
    """The stream id to read after for the cursor ``after`` (canonical digits), or None when
    no entry can follow it: the cursor format admits numbers above the 64 bits of an id."""
    ms_text, _, seq_text = after.partition("-")
    ms, seq = int(ms_text), min(int(seq_text), _MAX_ID_PART)  # no id lies in between
    if ms > _MAX_ID_PART or (ms == _MAX_ID_PART and seq == _MAX_ID_PART):
        return None
    return f"{ms}-{seq}"


# ---------------------------------------------------------------------------------------
# The answer

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_DATETIME_US = (datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC) - _EPOCH) // timedelta(
    microseconds=1
)
_GREGORIAN_CYCLE_US = 146_097 * 86_400_000_000  # 400 years: the calendar repeats


def timestamp_text(micros: int) -> str:
    """Epoch microseconds as served (``2024-05-01T10:00:00.123456Z``); years after 9999 in
    the expanded form of the other timestamps (``+10000-...``), which ``datetime`` lacks."""
    cycles = 0
    if micros > _MAX_DATETIME_US:
        cycles = (micros - _MAX_DATETIME_US) // _GREGORIAN_CYCLE_US + 1
    moment = _EPOCH + timedelta(microseconds=micros - cycles * _GREGORIAN_CYCLE_US)
    year = moment.year + 400 * cycles
    shown_year = f"+{year}" if year > 9999 else f"{year:04d}"
    return f"{shown_year}-{moment:%m-%dT%H:%M:%S.%f}Z"


def event_body(event: SegmentEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "object": "event",
        "type": event.type.value,
        "customer_id": event.customer_id,
        "segment_id": event.segment_id,
        "cause": event.cause.value,
        "lsn": str(Lsn(event.cause_lsn)),
        "occurred_at": timestamp_text(event.occurred_at_us),
        "cursor": event.cursor,
    }


@dataclass(slots=True)
class _Scan:
    """What one request read: the matches, the last entry examined, entries still allowed."""

    found: list[SegmentEvent] = field(default_factory=list)
    last: str | None = None
    has_more: bool = False
    budget: int = SCAN_ENTRIES


# ---------------------------------------------------------------------------------------
# Reading


class MembershipReader:
    """Counts and events of the caller's project. ``store`` reads on the shared pool;
    ``blocking`` (a client of its own, socket timeout above ``MAX_EVENTS_WAIT_MS``) only
    waits."""

    def __init__(
        self,
        store: MembershipStore,
        blocking: MembershipStore,
        gate: DependencyGate,
        metrics: ApiMetrics,
        *,
        max_waiters: int,
        wait_grace_seconds: float,
    ) -> None:
        self._store = store
        self._blocking = blocking
        self._gate = gate
        self._metrics = metrics
        self._max_waiters = max_waiters
        # Past ``wait_ms`` plus this, a wait that did not return means Redis hangs.
        self._grace = wait_grace_seconds
        self._stopping = asyncio.Event()
        self.waiting = 0

    async def count(self, project_id: str, segment_id: str) -> int:
        """The member count the indexer maintains (0 for a segment without members)."""
        return await self._read(partial(self._store.count, project_id, segment_id))

    async def events(self, project_id: str, query: EventsQuery) -> bytes:
        """The ``GET /v1/events`` answer."""
        scan = _Scan()
        start = None if query.after is None else resume_point(query.after)
        if query.after is None or start is not None:
            await self._scan(project_id, start, query, scan)
            since = scan.last or start
            if not scan.found and not scan.has_more and scan.budget > 0 and query.wait_ms > 0:
                waited = await self._wait(project_id, since or _STREAM_START, query.wait_ms)
                if waited:
                    await self._scan(project_id, since, query, scan)
        return orjson.dumps(
            {
                "object": "list",
                "data_ref": "data",
                "data": [event_body(event) for event in scan.found],
                "has_more": scan.has_more,
                "next_cursor": scan.last if scan.last is not None else query.after,
            }
        )

    def stop_waiting(self) -> None:
        """End every wait now and start none from here on (the process stops)."""
        self._stopping.set()

    async def _scan(
        self, project_id: str, start: str | None, query: EventsQuery, scan: _Scan
    ) -> None:
        """Examine entries after ``start`` until ``query.limit`` match, the stream ends or the
        budget is spent. Each page asks for one entry more than it examines: that one says
        whether anything follows."""
        while scan.budget > 0:
            size = min(PAGE_ENTRIES, scan.budget)
            entries = await self._read(
                partial(self._store.read_events, project_id, start, size + 1)
            )
            for index, event in enumerate(entries[:size]):
                scan.last = start = event.cursor
                scan.budget -= 1
                if query.matches(event):
                    scan.found.append(event)
                    if len(scan.found) == query.limit:
                        scan.has_more = index + 1 < len(entries)
                        return
            if len(entries) <= size:
                scan.has_more = False
                return
        scan.has_more = True

    async def _wait(self, project_id: str, since: str, wait_ms: int) -> bool:
        """Whether an entry after ``since`` exists within ``wait_ms``; False at once when
        this process already has ``max_waiters`` waits or is stopping."""
        if self._stopping.is_set() or self.waiting >= self._max_waiters:
            return False
        self.waiting += 1
        read = asyncio.ensure_future(self._blocking.wait_for_events(project_id, since, wait_ms))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait(
                (read, stop),
                timeout=wait_ms / 1000 + self._grace,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            self.waiting -= 1
            stop.cancel()
            read.cancel()  # a cancelled read drops its connection: no reply is left on it
            await asyncio.gather(read, stop, return_exceptions=True)
        if read not in done:
            if stop in done:
                return False
            self._outage(CacheUnavailable(f"redis: a wait of {wait_ms} ms did not end in time"))
        try:
            found = read.result()
        except CacheUnavailable as error:
            self._outage(error)
        self._gate.succeeded()
        return found

    async def _read(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` on Redis; 503 while Redis is down or when it fails now."""
        if not self._gate.should_try():
            raise unavailable(REDIS_UNREACHABLE)
        try:
            result = await call()
        except CacheUnavailable as error:
            self._outage(error)
        self._gate.succeeded()
        return result

    def _outage(self, error: CacheUnavailable) -> NoReturn:
        self._gate.failed(error)
        self._metrics.dependency_errors.labels("redis").inc()
        raise unavailable(REDIS_UNREACHABLE) from None
