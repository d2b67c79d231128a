"""``GET /v1/events`` (docs/api.md §3, "Segment events") and the segment ``count`` counter.

Events are produced the way the indexer produces them: ``MembershipStore.apply`` on the
harness's Redis and key prefix, for customers the source does not hold (the indexer, stepped
by the tests only, never touches them). The app reads the real Redis.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiohttp import ClientResponse

from cache.membership import MembershipStore
from cache.readmodel.codec import segment_event_id
from cache.readmodel.keys import KeyLayout
from cache.records import EventCause, MembershipMode, MembershipUpdate, SegmentEventType
from cache.types import Lsn
from readapi.events import SCAN_ENTRIES, resume_point, timestamp_text
from tests.fixtures.readapi import (
    KEY_A,
    KEY_B,
    ApiHarness,
    assert_error,
    assert_v1_headers,
    settings_for,
    start_api,
)
from tests.fixtures.readapi import api_fixture as api_fixture
from tests.integration.test_readapi_outages import TcpProxy

pytestmark = pytest.mark.services

ENTERED = SegmentEventType.ENTERED.value
LEFT = SegmentEventType.LEFT.value
EVENT_KEYS = {
    "id",
    "object",
    "type",
    "customer_id",
    "segment_id",
    "cause",
    "lsn",
    "occurred_at",
    "cursor",
}
PAGE_KEYS = {"object", "data_ref", "data", "has_more", "next_cursor"}
T0_US = 1_714_557_600_123_456  # 2024-05-01T10:00:00.123456Z
T0_TEXT = "2024-05-01T10:00:00.123456Z"
MAX_ID = "18446744073709551615"
WAIT = 10.0


def membership(api: ApiHarness) -> MembershipStore:
    """The indexer's view of the membership store: the harness's Redis and key prefix."""
    h = api.indexer
    return MembershipStore(
        h.clients.redis,
        KeyLayout(h.settings.redis_key_prefix),
        tombstone_ttl_seconds=h.settings.tombstone_ttl_seconds,
        events_max_per_project=1_000_000,
    )


def replace(
    customer: str,
    *segments: str,
    version: int,
    project: str = "proj_a",
    cause: EventCause = EventCause.CHANGE,
    at_us: int = T0_US,
) -> MembershipUpdate:
    return MembershipUpdate(
        project,
        customer,
        version,
        MembershipMode.REPLACE,
        segment_ids=segments,
        cause=cause,
        cause_lsn=version,
        occurred_at_us=at_us,
    )


def set_one(
    customer: str, segment: str, member: bool, *, version: int, project: str = "proj_a"
) -> MembershipUpdate:
    return MembershipUpdate(
        project,
        customer,
        version,
        MembershipMode.SET_ONE,
        segment_id=segment,
        member=member,
        cause_lsn=version,
        occurred_at_us=T0_US,
    )


async def page(api: ApiHarness, key: tuple[str, str] = KEY_A, **params: str) -> dict[str, Any]:
    response = await api.get("/v1/events", key=key, **params)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert_v1_headers(response)
    body: dict[str, Any] = await response.json()
    assert set(body) == PAGE_KEYS, body
    assert body["object"] == "list" and body["data_ref"] == "data"
    return body


def moves(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(e["type"], e["customer_id"], e["segment_id"]) for e in body["data"]]


def position(cursor: str) -> tuple[int, int]:
    ms, seq = cursor.split("-")
    return int(ms), int(seq)


async def raw_get(api: ApiHarness, query: str) -> ClientResponse:
    """A query string sent exactly as written (names repeated, bytes percent-encoded)."""
    headers = {"X-App-Id": KEY_A[0], "X-App-Token": KEY_A[1]}
    return await api.client.get(f"/v1/events?{query}", headers=headers)


async def until_waiting(api: ApiHarness, count: int) -> None:
    async with asyncio.timeout(WAIT):
        while True:  # a waiter counts itself once its blocking read is under way
            if api.services.membership.waiting >= count:
                return
            await asyncio.sleep(0.01)


# -- the answer ---------------------------------------------------------------------------


async def test_events_come_oldest_first_with_the_documented_shape(api: ApiHarness) -> None:
    store = membership(api)
    v1, v2, v3 = (0x1_0000_0010, 0x1_0000_0020, 0x1_0000_0030)
    await store.apply([replace("c1", "s2", "s1", version=v1)])
    tick = MembershipUpdate(
        "proj_a",
        "c1",
        v2,
        MembershipMode.SET_ONE,
        segment_id="s1",
        cause=EventCause.CLOCK,
        cause_lsn=v2,
        occurred_at_us=T0_US + 1,
    )
    await store.apply([tick, replace("c2", "s1", version=v3)])

    body = await page(api)
    assert moves(body) == [
        (ENTERED, "c1", "s1"),  # one change's transitions in segment id order
        (ENTERED, "c1", "s2"),
        (LEFT, "c1", "s1"),
        (ENTERED, "c2", "s1"),
    ]
    assert body["has_more"] is False
    assert body["next_cursor"] == body["data"][-1]["cursor"]
    causes = [(EventCause.CHANGE, v1, T0_US)] * 2 + [
        (EventCause.CLOCK, v2, T0_US + 1),
        (EventCause.CHANGE, v3, T0_US),
    ]
    for event, (cause, lsn, at_us) in zip(body["data"], causes, strict=True):
        assert set(event) == EVENT_KEYS, event
        assert event["object"] == "event"
        assert event["cause"] == cause.value
        assert event["lsn"] == str(Lsn(lsn))
        assert event["occurred_at"] == timestamp_text(at_us)
        assert event["id"] == segment_event_id(
            cause,
            lsn,
            at_us,
            SegmentEventType(event["type"]),
            event["segment_id"],
            event["customer_id"],
        )
    assert body["data"][0]["lsn"] == "1/10"
    assert body["data"][0]["occurred_at"] == T0_TEXT
    assert body["data"][2]["occurred_at"] == "2024-05-01T10:00:00.123457Z"
    assert len({event["id"] for event in body["data"]}) == 4
    cursors = [position(event["cursor"]) for event in body["data"]]
    assert cursors == sorted(cursors) and len(set(cursors)) == 4
    # The same events read again: the same ids, cursors and bodies.
    assert await page(api) == body


async def test_paging_with_limit_and_after(api: ApiHarness) -> None:
    await membership(api).apply([replace(f"c{n}", "s1", version=100 + n) for n in range(1, 6)])
    first = await page(api, limit="2")
    assert [e["customer_id"] for e in first["data"]] == ["c1", "c2"]
    assert first["has_more"] is True and first["next_cursor"] == first["data"][1]["cursor"]
    second = await page(api, limit="2", after=first["next_cursor"])
    assert [e["customer_id"] for e in second["data"]] == ["c3", "c4"]
    assert second["has_more"] is True
    third = await page(api, limit="2", after=second["next_cursor"])
    assert [e["customer_id"] for e in third["data"]] == ["c5"]
    assert third["has_more"] is False and third["next_cursor"] == third["data"][0]["cursor"]
    # Past the last event: nothing, and the cursor sent comes back.
    last = third["next_cursor"]
    assert await page(api, after=last) == {
        "object": "list",
        "data_ref": "data",
        "data": [],
        "has_more": False,
        "next_cursor": last,
    }
    everything = await page(api)  # default limit 10
    assert len(everything["data"]) == 5 and everything["has_more"] is False
    exactly = await page(api, limit="5")
    assert len(exactly["data"]) == 5 and exactly["has_more"] is False
    assert (await page(api, after="0-0")) == everything
    assert (await page(api, after="000-00")) == everything  # leading zeros: the same position
    # Any value of the cursor's form is accepted; beyond every stream id, nothing follows.
    assert (await page(api, after="1-99999999999999999999")) == everything
    for beyond in (f"{MAX_ID}-{MAX_ID}", "99999999999999999999-0"):
        empty = await page(api, after=beyond)
        assert empty["data"] == [] and empty["next_cursor"] == beyond
        assert empty["has_more"] is False


async def test_type_and_segment_filters(api: ApiHarness) -> None:
    store = membership(api)
    await store.apply([replace("c1", "s1", "s2", version=10)])
    await store.apply([replace("c1", "s2", version=20), replace("c2", "s1", version=30)])
    everything = await page(api)
    assert len(everything["data"]) == 4
    left = await page(api, type=LEFT)
    assert moves(left) == [(LEFT, "c1", "s1")]
    assert left["next_cursor"] == everything["next_cursor"]  # every entry was examined
    in_s1 = await page(api, segment_id="s1")
    assert moves(in_s1) == [(ENTERED, "c1", "s1"), (LEFT, "c1", "s1"), (ENTERED, "c2", "s1")]
    both = await page(api, type=ENTERED, segment_id="s1")
    assert moves(both) == [(ENTERED, "c1", "s1"), (ENTERED, "c2", "s1")]
    none = await page(api, segment_id="nowhere")
    assert none["data"] == [] and none["has_more"] is False
    assert none["next_cursor"] == everything["next_cursor"]
    # A filtered page stops at its last match: what follows it is still to be examined.
    one = await page(api, segment_id="s1", limit="1")
    assert moves(one) == [(ENTERED, "c1", "s1")] and one["has_more"] is True
    assert one["next_cursor"] == one["data"][0]["cursor"]
    rest = await page(api, segment_id="s1", after=one["next_cursor"])
    assert moves(rest) == [(LEFT, "c1", "s1"), (ENTERED, "c2", "s1")]


async def test_the_scan_bound_still_moves_the_cursor_forward(api: ApiHarness) -> None:
    store = membership(api)
    noise = SCAN_ENTRIES + 100
    await store.apply([replace(f"n{n:05d}", "noise", version=1000 + n) for n in range(noise)])
    await store.apply([replace("rare-one", "rare", version=10_000)])
    bound = (await store.read_events("proj_a", None, SCAN_ENTRIES))[-1].cursor

    started = time.monotonic()
    first = await page(api, segment_id="rare", wait_ms="5000")
    # Entries were left to examine: no wait, whatever wait_ms says.
    assert time.monotonic() - started < 2.0
    assert first["data"] == [] and first["has_more"] is True
    assert first["next_cursor"] == bound
    second = await page(api, segment_id="rare", after=first["next_cursor"])
    assert moves(second) == [(ENTERED, "rare-one", "rare")]
    assert second["has_more"] is False
    # Unfiltered, a page stops at `limit` as usual.
    assert len((await page(api, limit="100"))["data"]) == 100


# -- what is refused ----------------------------------------------------------------------

BAD_QUERIES = [
    ("after", "after="),
    ("after", "after=abc"),
    ("after", "after=1-"),
    ("after", "after=-1"),
    ("after", "after=1-2-3"),
    ("after", "after=1_2"),
    ("after", "after=%2B1-2"),
    ("after", "after=%201-2"),
    ("after", "after=1-2%20"),
    ("after", "after=123456789012345678901-0"),
    ("after", "after=0-123456789012345678901"),
    ("after", "after=%D9%A1-%D9%A2"),
    ("limit", "limit=0"),
    ("limit", "limit=101"),
    ("limit", "limit=%2B5"),
    ("limit", "limit=1.0"),
    ("limit", "limit="),
    ("limit", "limit=0010"),
    ("wait_ms", "wait_ms=-1"),
    ("wait_ms", "wait_ms=30001"),
    ("wait_ms", "wait_ms=1.5"),
    ("wait_ms", "wait_ms=100000"),
    ("wait_ms", "wait_ms="),
    ("wait_ms", "wait_ms=000001"),
    ("type", "type=entered"),
    ("type", "type=customer.segment.ENTERED"),
    ("type", "type="),
    ("type", "type=customer.segment.left%20"),
    ("segment_id", "segment_id="),
    ("segment_id", "segment_id=" + "x" * 201),
    ("segment_id", "segment_id=a%01b"),
    ("starting_after", "starting_after=x"),
    ("Type", "Type=customer.segment.left"),
    ("limit", "limit=1&limit=1"),
]


async def test_bad_parameters_answer_400_with_the_error_body(api: ApiHarness) -> None:
    for name, query in BAD_QUERIES:
        response = await raw_get(api, query)
        body = await assert_error(response, 400, "invalid_request")
        assert body["details"] == f"parameter: {name}", (query, body)
        assert f'"{name}"' in body["message"], (query, body)
        assert_v1_headers(response)
    unknown = await assert_error(await raw_get(api, "starting_after=x"), 400, "invalid_request")
    assert unknown["message"] == (
        'unknown query parameter "starting_after"; allowed: type, segment_id, after, limit, wait_ms'
    )
    repeated = await assert_error(await raw_get(api, "limit=1&limit=1"), 400, "invalid_request")
    assert repeated["message"] == 'query parameter "limit" is given 2 times; give it once'
    # The bounds themselves are accepted.
    for query in ("limit=1", "limit=100", "limit=010", "wait_ms=0", "after=0-0", "segment_id=s"):
        assert (await raw_get(api, query)).status == 200, query


async def test_credentials_and_tenancy(api: ApiHarness) -> None:
    store = membership(api)
    await store.apply([replace("ca", "sa", version=10)])
    await store.apply([replace("cb", "sb", version=20, project="proj_b")])
    await assert_error(await api.get("/v1/events", key=None), 401, "unauthorized")
    await assert_error(await api.get("/v1/events", key=(KEY_A[0], KEY_B[1])), 401, "unauthorized")
    mine = await page(api)
    assert moves(mine) == [(ENTERED, "ca", "sa")]
    theirs = await page(api, key=KEY_B)
    assert moves(theirs) == [(ENTERED, "cb", "sb")]
    assert (await page(api, segment_id="sb"))["data"] == []
    # Another project's cursor is only a position: it shows nothing of that project.
    assert (await page(api, after="0-0", segment_id="sb"))["data"] == []


# -- long poll ----------------------------------------------------------------------------


async def test_a_long_poll_returns_an_event_appended_while_it_waits(api: ApiHarness) -> None:
    store = membership(api)
    await store.apply([replace("c1", "s1", version=10)])
    start = (await page(api))["next_cursor"]

    started = time.monotonic()
    poll = asyncio.create_task(api.get("/v1/events", after=start, wait_ms="20000"))
    await until_waiting(api, 1)
    await store.apply([replace("c2", "s1", version=20)])
    response = await poll
    assert response.status == 200
    body = await response.json()
    assert moves(body) == [(ENTERED, "c2", "s1")]
    assert body["has_more"] is False
    assert time.monotonic() - started < WAIT
    assert api.services.membership.waiting == 0

    # A new entry that does not match ends the wait too: an empty page past it.
    poll = asyncio.create_task(
        api.get("/v1/events", after=body["next_cursor"], segment_id="s1", wait_ms="20000")
    )
    await until_waiting(api, 1)
    await store.apply([replace("c3", "other", version=30)])
    body = await (await poll).json()
    assert body["data"] == [] and body["has_more"] is False
    assert body["next_cursor"] == (await page(api))["data"][-1]["cursor"]


async def test_a_long_poll_without_events_answers_an_empty_page_after_wait_ms(
    api: ApiHarness,
) -> None:
    started = time.monotonic()
    body = await page(api, wait_ms="400")
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 5.0, elapsed
    assert body == {
        "object": "list",
        "data_ref": "data",
        "data": [],
        "has_more": False,
        "next_cursor": None,
    }
    await membership(api).apply([replace("c1", "s1", version=10)])
    last = (await page(api))["next_cursor"]
    started = time.monotonic()
    body = await page(api, after=last, wait_ms="300", type=LEFT)
    assert time.monotonic() - started >= 0.3
    assert body["data"] == [] and body["next_cursor"] == last


async def test_waiters_beyond_the_bound_answer_at_once(api: ApiHarness) -> None:
    h = api.indexer
    app, client = await start_api(h, settings_for(h, events_max_waiters=1))
    bounded = ApiHarness(h, app, client)
    try:
        poll = asyncio.create_task(bounded.get("/v1/events", wait_ms="20000"))
        await until_waiting(bounded, 1)
        started = time.monotonic()
        body = await page(bounded, wait_ms="20000")  # a second waiter: not allowed
        assert time.monotonic() - started < 2.0
        assert body["data"] == []
        await membership(api).apply([replace("c1", "s1", version=10)])
        assert moves(await (await poll).json()) == [(ENTERED, "c1", "s1")]
    finally:
        await client.close()


async def test_shutdown_ends_the_waits_at_once(api: ApiHarness) -> None:
    started = time.monotonic()
    poll = asyncio.create_task(api.get("/v1/events", wait_ms="30000"))
    await until_waiting(api, 1)
    await api.app.shutdown()  # what a stopping server runs before waiting for requests
    response = await poll
    assert response.status == 200
    assert (await response.json())["data"] == []
    assert time.monotonic() - started < WAIT
    # From here on, nothing waits.
    started = time.monotonic()
    assert (await page(api, wait_ms="5000"))["data"] == []
    assert time.monotonic() - started < 2.0


# -- segment count ------------------------------------------------------------------------


async def count_of(api: ApiHarness, segment_id: str, lsn: int, key: tuple[str, str] = KEY_A) -> int:
    response = await api.get(
        f"/v1/segments/{segment_id}", key=key, headers={"X-Min-Watermark": str(Lsn(lsn))}
    )
    assert response.status == 200, await response.text()
    count: int = (await response.json())["count"]
    return count


async def test_the_segment_count_follows_the_counter(api: ApiHarness) -> None:
    h = api.indexer
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type) VALUES "
        "('seg_c', 'proj_a', 'Counted', 'static'), ('seg_c2', 'proj_b', 'Other', 'static')"
    )
    lsn = int(await api.catch_up())
    counts_before = api.services.search.requests["count"]
    assert await count_of(api, "seg_c", lsn) == 0
    store = membership(api)
    await store.apply([replace("x1", "seg_c", version=lsn), replace("x2", "seg_c", version=lsn)])
    assert await count_of(api, "seg_c", lsn) == 2
    await store.apply([set_one("x1", "seg_c", False, version=lsn + 1)])
    assert await count_of(api, "seg_c", lsn) == 1
    # Another project's counter of the same segment id is its own.
    await store.apply([replace("y1", "seg_c", "seg_c2", version=lsn, project="proj_b")])
    assert await count_of(api, "seg_c", lsn) == 1
    assert await count_of(api, "seg_c2", lsn, key=KEY_B) == 1
    assert api.services.search.requests["count"] == counts_before  # no Elasticsearch count


# -- Redis unreachable --------------------------------------------------------------------


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def test_redis_unreachable_answers_503(api: ApiHarness) -> None:
    h = api.indexer
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type)"
        " VALUES ('seg_r', 'proj_a', 'R', 'static')"
    )
    lsn = int(await api.catch_up())
    await membership(api).apply([replace("c1", "seg_r", version=lsn)])
    port = urlsplit(h.settings.redis_url).port or 6379
    proxy = TcpProxy(port)
    await proxy.open()
    app, client = await start_api(
        h, settings_for(h, redis_url=_through(h.settings.redis_url, proxy.port))
    )
    cut = ApiHarness(h, app, client)
    try:
        await cut.heard(lsn)
        assert moves(await page(cut)) == [(ENTERED, "c1", "seg_r")]  # key record seen
        assert await count_of(cut, "seg_r", lsn) == 1
        await proxy.close()
        for path, params in (
            ("/v1/events", {}),
            ("/v1/events", {"wait_ms": "1000"}),
            ("/v1/segments/seg_r", {}),
        ):
            response = await cut.get(path, **params)
            body = await assert_error(response, 503, "unavailable")
            assert body["details"] == "Segment membership cannot be read: Redis is unreachable."
            assert_v1_headers(response)
        await proxy.open()
        async with asyncio.timeout(WAIT):
            while True:  # the next probe after the pause finds Redis again
                if (await cut.get("/v1/events")).status == 200:
                    break
                await asyncio.sleep(0.1)
        assert await count_of(cut, "seg_r", lsn) == 1
    finally:
        await client.close()
        await proxy.close()


# -- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "point"),
    [
        ("0-0", "0-0"),
        ("007-010", "7-10"),
        (f"5-{MAX_ID}", f"5-{MAX_ID}"),
        ("5-99999999999999999999", f"5-{MAX_ID}"),  # no id lies in between
        (f"{MAX_ID}-0", f"{MAX_ID}-0"),
        (f"{MAX_ID}-{MAX_ID}", None),
        ("99999999999999999999-0", None),
    ],
)
def test_resume_point(after: str, point: str | None) -> None:
    assert resume_point(after) == point


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "1970-01-01T00:00:00.000000Z"),
        (T0_US, T0_TEXT),
        (253_402_300_799_999_999, "9999-12-31T23:59:59.999999Z"),
        (253_402_300_800_000_000, "+10000-01-01T00:00:00.000000Z"),
        ((1 << 63) - 1, "+294247-01-10T04:00:54.775807Z"),
    ],
)
def test_timestamp_text(micros: int, text: str) -> None:
    assert timestamp_text(micros) == text
