"""Segment membership against the real Redis: records, counts, events, jobs, resets.

Every key lives under this test's ``redis_prefix`` (removed by the ``redis_client`` fixture).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cache.config import DEFAULT_REDIS_URL
from cache.errors import CacheBug, CacheUnavailable
from cache.membership import MembershipStore
from cache.readmodel.codec import encode_membership, segment_event_id
from cache.readmodel.documents import AliasKind
from cache.readmodel.keys import KeyLayout, hash_tag_of, project_hash_tag
from cache.records import (
    Envelope,
    EventCause,
    MembershipMode,
    MembershipUpdate,
    SegmentEvent,
    SegmentEventType,
    SegmentJob,
    VersionedWrite,
)
from cache.store import CacheStore
from cache.types import ObjectKind

pytestmark = pytest.mark.services


@pytest.fixture
def redis_url(redis_url_each: str) -> str:
    """Every test here runs on the single Redis and on a Redis Cluster."""
    return redis_url_each

TTL_SECONDS = 120
MAX_EVENTS = 1000
WAIT = 10.0  # liveness bound for awaited wake-ups, not a performance assertion
ENTERED, LEFT = SegmentEventType.ENTERED, SegmentEventType.LEFT


@pytest.fixture
def layout(redis_prefix: str) -> KeyLayout:
    return KeyLayout(redis_prefix)


@pytest.fixture
def members(redis_client: aioredis.Redis, layout: KeyLayout) -> MembershipStore:
    return MembershipStore(
        redis_client,
        layout,
        tombstone_ttl_seconds=TTL_SECONDS,
        events_max_per_project=MAX_EVENTS,
    )


def replace(
    customer_id: str,
    version: int,
    *segment_ids: str,
    project_id: str = "p1",
    emit: bool = True,
    occurred_at_us: int = 0,
) -> MembershipUpdate:
    return MembershipUpdate(
        project_id=project_id,
        customer_id=customer_id,
        version=version,
        mode=MembershipMode.REPLACE,
        segment_ids=segment_ids,
        cause_lsn=version,
        occurred_at_us=occurred_at_us or version % 1_000_000 * 1000,
        emit=emit,
    )


def set_one(
    customer_id: str, version: int, segment_id: str, member: bool, *, project_id: str = "p1"
) -> MembershipUpdate:
    return MembershipUpdate(
        project_id=project_id,
        customer_id=customer_id,
        version=version,
        mode=MembershipMode.SET_ONE,
        segment_id=segment_id,
        member=member,
        cause_lsn=version,
        occurred_at_us=version % 1_000_000 * 1000,
    )


def moves(events: list[SegmentEvent]) -> list[tuple[SegmentEventType, str, str, int]]:
    return [(e.type, e.customer_id, e.segment_id, e.cause_lsn) for e in events]


async def all_events(members: MembershipStore, project_id: str = "p1") -> list[SegmentEvent]:
    return await members.read_events(project_id, None, 100_000)


# -- transitions, events and counts ------------------------------------------------------------


async def test_entering_and_leaving_write_one_event_each(members: MembershipStore) -> None:
    assert await members.apply([replace("c1", 10, "b", "a")]) == 2
    assert await members.apply([replace("c1", 20, "b", "c")]) == 2
    events = await all_events(members)
    assert moves(events) == [
        (ENTERED, "c1", "a", 10),
        (ENTERED, "c1", "b", 10),
        (LEFT, "c1", "a", 20),
        (ENTERED, "c1", "c", 20),
    ]
    assert [e.cause for e in events] == [EventCause.CHANGE] * 4
    assert [e.occurred_at_us for e in events] == [10_000, 10_000, 20_000, 20_000]
    cursors = [e.cursor for e in events]
    assert cursors == sorted(cursors, key=lambda c: tuple(map(int, c.split("-"))))
    assert len(set(cursors)) == 4
    first = events[0]
    assert first.id == segment_event_id(EventCause.CHANGE, 10, 10_000, ENTERED, "a", "c1")
    assert first.id.startswith("evt_") and len(first.id) == 24
    assert await members.membership("p1", "c1") == (20, frozenset({"b", "c"}))
    assert await members.counts("p1", ["a", "b", "c"]) == {"a": 0, "b": 1, "c": 1}
    assert await members.last_event_cursor("p1") == cursors[-1]


async def test_replays_add_no_event_and_no_count(members: MembershipStore) -> None:
    await members.apply([replace("c1", 10, "a"), replace("c1", 20, "b", "c")])
    before = await all_events(members)
    # The same change again, then an older one: both find the record already past them.
    assert await members.apply([replace("c1", 20, "b", "c")]) == 0
    assert await members.apply([replace("c1", 10, "a")]) == 0
    assert await members.apply([replace("c1", 15)]) == 0
    assert await all_events(members) == before
    assert await members.membership("p1", "c1") == (20, frozenset({"b", "c"}))
    assert await members.counts("p1", ["a", "b", "c"]) == {"a": 0, "b": 1, "c": 1}


async def test_a_whole_batch_sent_again_is_a_no_op(
    redis_client: aioredis.Redis, layout: KeyLayout
) -> None:
    members = MembershipStore(
        redis_client,
        layout,
        tombstone_ttl_seconds=TTL_SECONDS,
        events_max_per_project=MAX_EVENTS,
        updates_per_call=2,  # several script calls, one pipeline
    )
    batch = [
        replace("c1", 10, "a"),
        replace("c2", 11, "a", "b"),
        replace("c1", 12, "a", "b"),  # the same customer again: applied after the first
        replace("c3", 13, "b", project_id="p2"),
        replace("c1", 11, "z"),  # older than the one just applied: kept out
    ]
    assert await members.apply(batch) == 5
    events = await all_events(members)
    assert await members.apply(batch) == 0
    assert await all_events(members) == events
    assert await members.counts("p1", ["a", "b", "z"]) == {"a": 2, "b": 2, "z": 0}
    assert await members.counts("p2", ["b"]) == {"b": 1}
    assert moves(await all_events(members, "p2")) == [(ENTERED, "c3", "b", 13)]


async def test_set_one_is_refused_below_the_base_and_applied_at_or_above(
    members: MembershipStore,
) -> None:
    await members.apply([replace("c1", 20, "a", "b")])
    assert await members.apply([set_one("c1", 19, "d", True)]) == 0  # rebuilt since then
    assert await members.apply([set_one("c1", 19, "a", False)]) == 0
    assert await members.apply([set_one("c1", 20, "d", True)]) == 1
    assert await members.apply([set_one("c1", 25, "b", False)]) == 1
    assert await members.apply([set_one("c1", 26, "d", True)]) == 0  # already in
    assert await members.apply([set_one("c1", 26, "x", False)]) == 0  # already out
    # A SET_ONE keeps the base: only a REPLACE moves it.
    assert await members.membership("p1", "c1") == (20, frozenset({"a", "d"}))
    assert await members.counts("p1", ["a", "b", "d"]) == {"a": 1, "b": 0, "d": 1}
    assert moves(await all_events(members))[2:] == [(ENTERED, "c1", "d", 20), (LEFT, "c1", "b", 25)]
    # A REPLACE at or above the base replaces everything the SET_ONEs did.
    assert await members.apply([replace("c1", 30, "a")]) == 1
    assert await members.membership("p1", "c1") == (30, frozenset({"a"}))


async def test_set_one_without_a_record(members: MembershipStore, layout: KeyLayout) -> None:
    assert await members.apply([set_one("c1", 5, "a", False)]) == 0
    assert await members.membership("p1", "c1") is None
    assert await members.apply([set_one("c1", 5, "b", True), set_one("c1", 6, "a", True)]) == 2
    # The record's base is the version of the SET_ONE that created it: an older REPLACE (a
    # replay, computed from the current source) is refused.
    assert await members.membership("p1", "c1") == (5, frozenset({"a", "b"}))
    assert await members.apply([replace("c1", 4)]) == 0
    assert await members.membership("p1", "c1") == (5, frozenset({"a", "b"}))


async def test_counts_follow_many_customers(
    members: MembershipStore, redis_client: aioredis.Redis, layout: KeyLayout
) -> None:
    await members.apply(
        [replace(f"c{i}", 10 + i, "all", "even" if i % 2 == 0 else "odd") for i in range(10)]
    )
    assert await members.counts("p1", ["all", "even", "odd", "none"]) == {
        "all": 10,
        "even": 5,
        "odd": 5,
        "none": 0,
    }
    assert await members.count("p1", "even") == 5
    assert await members.count("p1", "none") == 0
    assert await members.count("p2", "all") == 0
    assert await members.counts("p1", []) == {}
    await members.apply([replace(f"c{i}", 100, "all") for i in range(0, 10, 2)])
    assert await members.count("p1", "even") == 0
    # A count that reaches zero leaves no field behind.
    assert not await redis_client.hexists(layout.segment_counts_key("p1"), "even")
    assert await members.count("p1", "all") == 10


async def test_an_emptied_record_expires_and_a_filled_one_does_not(
    members: MembershipStore, redis_client: aioredis.Redis, layout: KeyLayout
) -> None:
    key = layout.membership_key("p1", "c1")
    assert await members.apply([replace("c1", 5)]) == 0
    assert not await redis_client.exists(key)  # a customer in no segment costs no key
    await members.apply([replace("c1", 10, "a")])
    assert await redis_client.pttl(key) == -1
    await members.apply([replace("c1", 20)])  # deleted: the record stays as a tombstone ...
    assert 0 < await redis_client.pttl(key) <= TTL_SECONDS * 1000
    assert await members.membership("p1", "c1") == (20, frozenset())
    assert await members.apply([replace("c1", 15, "a")]) == 0  # ... that blocks older replays
    assert await members.apply([set_one("c1", 19, "a", True)]) == 0
    assert await members.apply([replace("c1", 30, "b")]) == 1
    assert await redis_client.pttl(key) == -1  # a member again: no expiry
    await members.apply([set_one("c1", 30, "b", False)])
    assert 0 < await redis_client.pttl(key) <= TTL_SECONDS * 1000


async def test_the_record_is_the_documented_msgpack_array(
    members: MembershipStore, redis_client: aioredis.Redis, layout: KeyLayout
) -> None:
    await members.apply([replace("c1", (1 << 64) - 1, "é", "b", "a", "B")])
    stored = await redis_client.get(layout.membership_key("p1", "c1"))
    assert stored == encode_membership((1 << 64) - 1, ["a", "b", "B", "é"])
    assert moves(await all_events(members)) == [
        (ENTERED, "c1", s, (1 << 64) - 1)
        for s in ["B", "a", "b", "é"]  # byte order
    ]


async def test_versions_beyond_2_to_the_53_compare_exactly(members: MembershipStore) -> None:
    high = (1 << 64) - 2
    await members.apply([replace("c1", high, "a")])
    # Equal as doubles, different as integers: the older one must lose.
    assert await members.apply([replace("c1", high - 1, "b")]) == 0
    assert await members.apply([set_one("c1", high - 1, "b", True)]) == 0
    assert await members.apply([replace("c1", high + 1, "b")]) == 2


async def test_silent_updates_move_counts_but_write_no_event(members: MembershipStore) -> None:
    assert await members.apply([replace("c1", 10, "a", "b", emit=False)]) == 2
    assert await members.apply([replace("c2", 10, "a", emit=False)]) == 1
    assert await members.counts("p1", ["a", "b"]) == {"a": 2, "b": 1}
    assert await all_events(members) == []
    assert await members.last_event_cursor("p1") is None
    # Later changes emit against the silently rebuilt state: only real transitions.
    assert await members.apply([replace("c1", 20, "a", "c")]) == 2
    assert moves(await all_events(members)) == [(LEFT, "c1", "b", 20), (ENTERED, "c1", "c", 20)]


async def test_clock_ticks_name_their_time(members: MembershipStore) -> None:
    tick = dataclasses.replace(replace("c1", 50, "recent"), cause=EventCause.CLOCK)
    await members.apply([tick])
    later = dataclasses.replace(tick, segment_ids=(), occurred_at_us=99_000)
    await members.apply([later])
    entered, left = await all_events(members)
    assert (entered.cause, left.cause) == (EventCause.CLOCK, EventCause.CLOCK)
    assert entered.id == segment_event_id(EventCause.CLOCK, 50, 50_000, ENTERED, "recent", "c1")
    assert left.id == segment_event_id(EventCause.CLOCK, 50, 99_000, LEFT, "recent", "c1")


async def test_the_stream_is_trimmed_near_its_max(
    redis_client: aioredis.Redis, layout: KeyLayout
) -> None:
    members = MembershipStore(
        redis_client, layout, tombstone_ttl_seconds=TTL_SECONDS, events_max_per_project=10
    )
    for version in range(1, 301):
        await members.apply([replace("c1", version, "x" if version % 2 else "y")])
    kept = await redis_client.xlen(layout.segment_events_key("p1"))
    config = await redis_client.config_get("stream-node-max-entries")
    node = int(next(iter(config.values())))
    # MAXLEN ~ removes whole nodes only: at least the max, at most about one node more.
    assert 10 <= kept <= 10 + node
    assert kept < 2 * 300 - 1
    events = await all_events(members)
    assert events[-1].cause_lsn == 300


async def test_read_events_pages_with_cursors(members: MembershipStore) -> None:
    await members.apply([replace(f"c{i:02}", 10 + i, "a") for i in range(25)])
    everything = await all_events(members)
    assert len(everything) == 25
    pages: list[list[SegmentEvent]] = []
    after: str | None = None
    while page := await members.read_events("p1", after, 10):
        pages.append(page)
        after = page[-1].cursor
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [e for page in pages for e in page] == everything
    assert await members.read_events("p1", everything[-1].cursor, 10) == []
    assert await members.read_events("p1", "0-0", 3) == everything[:3]
    assert await members.read_events("other", None, 10) == []
    with pytest.raises(ValueError):
        await members.read_events("p1", "not-a-cursor", 10)
    with pytest.raises(ValueError):
        await members.read_events("p1", None, 0)


async def test_wait_for_events_wakes_on_an_append_and_times_out_otherwise(
    members: MembershipStore,
) -> None:
    assert await members.wait_for_events("p1", None, 50) is False  # no stream yet
    await members.apply([replace("c1", 10, "a")])
    last = await members.last_event_cursor("p1")
    assert last is not None
    assert await members.wait_for_events("p1", "0-0", 50) is True  # older cursor: at once
    assert await members.wait_for_events("p1", last, 50) is False
    assert await members.wait_for_events("p1", None, 50) is False  # nothing newer than now

    waiting = asyncio.create_task(members.wait_for_events("p1", last, int(WAIT * 1000)))
    await asyncio.sleep(0.05)
    await members.apply([replace("c1", 11, "b")])
    assert await asyncio.wait_for(waiting, WAIT) is True

    # Without a cursor the wait only sees what is appended after it began: append until it
    # wakes (the first append may land before the XREAD reaches Redis).
    waiting = asyncio.create_task(members.wait_for_events("p1", None, int(WAIT * 1000)))
    version = 12
    async with asyncio.timeout(WAIT):
        while not waiting.done():
            await members.apply([replace("c1", version, "a" if version % 2 else "b")])
            version += 1
            await asyncio.wait({waiting}, timeout=0.05)
    assert waiting.result() is True
    with pytest.raises(ValueError):
        await members.wait_for_events("p1", None, 0)


async def test_a_wait_must_end_before_the_socket_timeout(layout: KeyLayout) -> None:
    url = os.environ.get("LOYALTY_REDIS_URL") or DEFAULT_REDIS_URL  # as tests/conftest.py
    client = aioredis.Redis.from_url(url, socket_timeout=0.5)
    try:
        members = MembershipStore(client, layout, tombstone_ttl_seconds=1, events_max_per_project=1)
        with pytest.raises(ValueError):
            await members.wait_for_events("p1", None, 500)
        assert await members.wait_for_events("p1", None, 100) is False
    finally:
        await client.aclose()


# -- jobs ------------------------------------------------------------------------------------------


async def test_jobs_keep_the_newest_and_finish_only_their_own_version(
    members: MembershipStore,
) -> None:
    job = SegmentJob("p1", "s1", 10, 1_000)
    assert await members.jobs() == []
    assert await members.put_job(job) is True
    assert await members.put_job(dataclasses.replace(job, version=5)) is False
    assert await members.put_job(job) is True  # the same job again
    assert await members.jobs() == [job]
    assert await members.finish_job(dataclasses.replace(job, version=5)) is False
    newer = dataclasses.replace(job, version=12, occurred_at_us=2_000)
    assert await members.put_job(newer) is True
    # The job at 10 finished while an edit at 12 arrived: the newer job stays.
    assert await members.finish_job(job) is False
    assert await members.jobs() == [newer]
    assert await members.finish_job(newer) is True
    assert await members.finish_job(newer) is False
    assert await members.jobs() == []
    # A replay of an edit already recomputed queues nothing, an older one neither; a newer
    # edit does.
    assert await members.put_job(newer) is False
    assert await members.put_job(job) is False
    assert await members.jobs() == []
    newest = dataclasses.replace(job, version=13)
    assert await members.put_job(newest) is True
    assert await members.jobs() == [newest]


async def test_jobs_are_listed_oldest_first_and_compare_64_bit_versions(
    members: MembershipStore,
) -> None:
    high = (1 << 64) - 2
    jobs = [
        SegmentJob("p2", "s1", high, 3),
        SegmentJob("p1", "s2", 7, 2),
        SegmentJob("p1", "s1", 9, 1),
        SegmentJob("p}{*", "s:1", 8, 4),  # awkward ids stay apart from the others
    ]
    for job in jobs:
        assert await members.put_job(job) is True
    assert await members.put_job(SegmentJob("p2", "s1", high - 1, 0)) is False
    assert [job.version for job in await members.jobs()] == [7, 8, 9, high]
    assert set(await members.jobs()) == set(jobs)


# -- resets and the other scans -----------------------------------------------------------------


async def test_reset_deletes_records_and_counts_but_not_streams(
    members: MembershipStore, redis_client: aioredis.Redis, layout: KeyLayout
) -> None:
    projects = ["p1", "p2", "p*", "p[1]"]  # glob characters must match only themselves
    for project_id in projects:
        await members.apply(
            [replace(f"c{i}", 10, "a", project_id=project_id) for i in range(5)]
            + [replace("}:sm:x", 10, "b", project_id=project_id)]
        )
    await members.put_job(SegmentJob("p1", "a", 10, 0))
    envelope = layout.object_key("p1", ObjectKind.CUSTOMER, "x}:sm:y")  # looks like a record
    await CacheStore(redis_client, layout).apply_writes(
        [VersionedWrite(envelope, Envelope(1, 1, 1))]
    )

    assert await members.reset_project_state("p*") == 7  # 6 records and 1 counts hash
    assert await members.counts("p*", ["a", "b"]) == {"a": 0, "b": 0}
    for project_id in ("p1", "p2", "p[1]"):
        assert await members.count(project_id, "a") == 5
    assert await members.reset_all() == 21
    for project_id in projects:
        assert await members.membership(project_id, "c1") is None
        assert await members.counts(project_id, ["a", "b"]) == {"a": 0, "b": 0}
        assert len(await all_events(members, project_id)) == 6  # streams stay
    assert await members.jobs() == [SegmentJob("p1", "a", 10, 0)]
    assert await redis_client.exists(envelope)
    assert await members.reset_all() == 0
    # A rebuild after the reset applies silently from nothing.
    assert await members.apply([replace("c1", 5, "a", emit=False)]) == 1
    assert await members.count("p1", "a") == 1


async def test_envelope_scans_ignore_membership_keys(
    members: MembershipStore, redis_client: aioredis.Redis, layout: KeyLayout
) -> None:
    store = CacheStore(redis_client, layout)
    envelopes = [
        layout.object_key("p1", ObjectKind.CUSTOMER, "c1"),
        layout.alias_key("p1", AliasKind.CUSTOMER_SOURCE_ID, "crm-1"),
        layout.app_key("app_1"),
    ]
    await store.apply_writes([VersionedWrite(key, Envelope(5, 1, "x")) for key in envelopes])
    await members.apply([replace("c1", 5, "a"), replace("c2", 5, "b")])
    await members.apply([replace("c2", 6)])  # an emptied record, with its expiry
    await members.put_job(SegmentJob("p1", "a", 5, 0))
    assert (
        await redis_client.exists(
            layout.membership_key("p1", "c1"),
            layout.membership_key("p1", "c2"),
            layout.segment_counts_key("p1"),
            layout.segment_events_key("p1"),
            layout.segment_jobs_key,
        )
        == 5
    )
    assert sorted([key async for key in store.keys_older_than(1 << 63)]) == sorted(envelopes)
    parsed = [
        found
        async for page in store.project_key_pages()
        for found in map(layout.object_of_key, page)
        if found is not None
    ]
    assert parsed == [layout.object_of_key(envelopes[0])] and parsed[0] is not None


async def test_the_keys_of_one_call_share_a_hash_slot(
    members: MembershipStore, layout: KeyLayout
) -> None:
    for project_id in ["p1", "", "}", "a}b{", "50%", "p*"]:
        keys = [
            layout.segment_counts_key(project_id),
            layout.segment_events_key(project_id),
            layout.membership_key(project_id, "c1"),
            layout.membership_key(project_id, "}{c2"),
        ]
        assert {hash_tag_of(key) for key in keys} == {project_hash_tag(project_id)}
        await members.apply([replace("}{c2", 3, "a", project_id=project_id)])
        assert await members.count(project_id, "a") == 1
        assert await members.membership(project_id, "}{c2") == (3, frozenset({"a"}))


# -- arguments and the boundary -------------------------------------------------------------------


async def test_bad_arguments_are_refused_before_any_write(
    members: MembershipStore, redis_client: aioredis.Redis, layout: KeyLayout
) -> None:
    bad = [
        dataclasses.replace(replace("c1", 1, "a"), segment_id="b"),
        dataclasses.replace(set_one("c1", 1, "a", True), segment_ids=("b",)),
        set_one("c1", 1, "", True),
        replace("c1", 1, "a", ""),
        replace("c1", -1, "a"),
        replace("c1", 1 << 64, "a"),
    ]
    for update in bad:
        with pytest.raises(ValueError):
            await members.apply([replace("c2", 1, "ok"), update])
    assert await members.membership("p1", "c2") is None
    with pytest.raises(ValueError):
        MembershipStore(redis_client, layout, tombstone_ttl_seconds=0, events_max_per_project=1)
    with pytest.raises(ValueError):
        MembershipStore(redis_client, layout, tombstone_ttl_seconds=1, events_max_per_project=0)
    with pytest.raises(ValueError):
        MembershipStore(
            redis_client,
            layout,
            tombstone_ttl_seconds=1,
            events_max_per_project=1,
            updates_per_call=0,
        )
    assert await members.apply([]) == 0


async def test_a_foreign_record_fails_the_call_before_any_write(
    members: MembershipStore, redis_client: aioredis.Redis, layout: KeyLayout
) -> None:
    await redis_client.set(layout.membership_key("p1", "c2"), b"not a record")
    with pytest.raises(CacheBug):
        await members.apply([replace("c1", 1, "a"), replace("c2", 1, "a")])
    assert await members.membership("p1", "c1") is None
    assert await members.count("p1", "a") == 0
    assert await all_events(members) == []


async def test_repeated_segments_in_a_replace_count_once(members: MembershipStore) -> None:
    assert await members.apply([replace("c1", 1, "a", "a", "b")]) == 2
    assert await members.counts("p1", ["a", "b"]) == {"a": 1, "b": 1}


async def test_driver_errors_become_cache_unavailable(layout: KeyLayout) -> None:
    closed = aioredis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        members = MembershipStore(closed, layout, tombstone_ttl_seconds=1, events_max_per_project=1)
        with pytest.raises(CacheUnavailable):
            await members.apply([replace("c1", 1, "a")])
        with pytest.raises(CacheUnavailable):
            await members.read_events("p1", None, 1)
        with pytest.raises(CacheUnavailable):
            await members.jobs()
    finally:
        await closed.aclose()


async def test_decoded_responses_are_refused(layout: KeyLayout) -> None:
    client = aioredis.Redis(decode_responses=True)
    try:
        with pytest.raises(ValueError):
            MembershipStore(client, layout, tombstone_ttl_seconds=1, events_max_per_project=1)
    finally:
        await client.aclose()
