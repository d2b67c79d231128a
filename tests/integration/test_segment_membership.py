"""Segment membership end to end: events, recomputes from the index, the clock tick, limits.

Each test drives a real indexer (stepped by the test) on its own database, index prefix and
Redis prefix; events are read through the read API where the contract says so.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from cache.errors import SearchUnavailable
from cache.types import Lsn
from indexer.runner import Indexer
from tests.fixtures.indexer import IndexerHarness
from tests.fixtures.readapi import ApiHarness

pytestmark = pytest.mark.services

ENTERED = "customer.segment.entered"
LEFT = "customer.segment.left"
DAY_US = 86_400 * 1_000_000


async def _events(api: ApiHarness, **params: str) -> list[dict[str, Any]]:
    """Every event of the default project, following the cursor."""
    found: list[dict[str, Any]] = []
    after: dict[str, str] = {}
    while True:
        response = await api.get("/v1/events", limit="100", **params, **after)
        assert response.status == 200, await response.text()
        body = await response.json()
        found.extend(body["data"])
        if not body["has_more"]:
            return found
        after = {"after": body["next_cursor"]}


async def _count(api: ApiHarness, segment_id: str, lsn: int) -> int:
    response = await api.get(
        f"/v1/segments/{segment_id}", headers={"X-Min-Watermark": str(Lsn(lsn))}
    )
    assert response.status == 200, await response.text()
    count: int = (await response.json())["count"]
    return count


async def _customer(
    h: IndexerHarness, customer_id: str, project: str = "proj_a", **extra: Any
) -> None:
    metadata = orjson.dumps(extra.get("metadata", {})).decode()
    created = extra.get("created_at", "2024-01-01T00:00:00Z")
    await h.execute(
        "INSERT INTO customers (id, project_id, source_id, name, email, metadata, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            customer_id,
            project,
            f"src-{customer_id}",
            customer_id,
            f"{customer_id}@example.com",
            metadata,
            created,
        ),
    )


async def _members(h: IndexerHarness, project_id: str, customer_id: str) -> frozenset[str]:
    record = await h.clients.cache.membership.membership(project_id, customer_id)
    return frozenset() if record is None else record[1]


async def test_redemptions_enter_and_leave_once_each_and_a_replay_adds_nothing(
    api: ApiHarness,
) -> None:
    h = api.indexer
    await _customer(h, "cust_1")
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, type) VALUES ('v1', 'proj_a', 'V1',"
        " 'DISCOUNT_VOUCHER')"
    )
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type, filter) VALUES ('seg_loyal', 'proj_a',"
        " 'Loyal', 'auto-update', '{\"summary.redemptions.total_succeeded\":"
        ' {"conditions": {"$more_than": [1]}}}\')'
    )
    await api.catch_up()
    replay_slot = f"{h.settings.slot_name}_replay"
    # Created before the redemptions: it will hand every change out again.
    await h.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (replay_slot,))
    try:
        for n in (1, 2):
            await h.execute(
                "INSERT INTO redemptions (id, project_id, voucher_id, customer_id, result) VALUES"
                " (%s, 'proj_a', 'v1', 'cust_1', 'SUCCESS')",
                (f"r{n}",),
            )
        lsn = await api.catch_up()
        assert await _count(api, "seg_loyal", lsn) == 1
        await h.execute("DELETE FROM redemptions WHERE id = 'r2'")
        lsn = await api.catch_up()
        assert await _count(api, "seg_loyal", lsn) == 0

        events = await _events(api)
        assert [(e["type"], e["customer_id"], e["segment_id"]) for e in events] == [
            (ENTERED, "cust_1", "seg_loyal"),
            (LEFT, "cust_1", "seg_loyal"),
        ]
        assert all(e["cause"] == "change" for e in events)
        assert events[0]["cursor"] < events[1]["cursor"] or len(events[0]["cursor"]) < len(
            events[1]["cursor"]
        )
        assert len({e["id"] for e in events}) == 2

        replayer = Indexer(
            dataclasses.replace(h.settings, slot_name=replay_slot),
            h.clients.search,
            h.clients.cache,
        )
        try:
            while replayer.watermark is None or replayer.watermark < lsn:
                await replayer.step()
        finally:
            await replayer.close()
        assert await _events(api) == events, "a replay through an older slot added events"
        assert await _count(api, "seg_loyal", lsn) == 0
    finally:
        await h.execute("SELECT pg_drop_replication_slot(%s)", (replay_slot,))


async def test_a_customer_deleted_or_moved_leaves_its_segments(api: ApiHarness) -> None:
    h = api.indexer
    for customer_id in ("c1", "c2"):
        await _customer(h, customer_id, metadata={"tier": "gold"})
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type, filter) VALUES ('gold', 'proj_a', 'G',"
        ' \'auto-update\', \'{"metadata.tier": {"conditions": {"$is": "gold"}}}\')'
    )
    lsn = await api.catch_up()
    assert await _count(api, "gold", lsn) == 2
    await h.execute("DELETE FROM customers WHERE id = 'c1'")
    await h.execute("UPDATE customers SET project_id = 'proj_b' WHERE id = 'c2'")
    lsn = await api.catch_up()
    assert await _count(api, "gold", lsn) == 0
    left = await _events(api, type=LEFT)
    assert sorted(e["customer_id"] for e in left) == ["c1", "c2"]
    assert await _members(h, "proj_a", "c2") == frozenset()


async def _gold_segment_recomputing(api: ApiHarness, *, customers: int) -> None:
    """``customers`` gold customers in proj_a, then a segment of the gold ones whose
    recompute has started and needs many more slices (small pages, a short slice)."""
    h = api.indexer
    await h.execute(
        "INSERT INTO customers (id, project_id, source_id, email, metadata)"
        " SELECT 'c' || n, 'proj_a', 's' || n, 'c' || n || '@example.com', '{\"tier\": \"gold\"}'"
        " FROM generate_series(1, %s) n",
        (customers,),
    )
    await api.catch_up()
    h.indexer.recompute._page = 50
    h.indexer._settings = dataclasses.replace(h.settings, recompute_slice_ms=10)
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type, filter) VALUES ('gold', 'proj_a', 'G',"
        ' \'auto-update\', \'{"metadata.tier": {"conditions": {"$is": "gold"}}}\')'
    )
    await h.indexer.step()
    assert h.indexer.recompute.pending, "the recompute finished in one slice: make it longer"


async def _statements_by(h: IndexerHarness) -> int:
    """Statements Postgres ran in this test's database so far (pg_stat_statements)."""
    cursor = await h.db.execute(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s"
        " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database()"
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_filter_edit_recomputes_from_the_index_with_no_statement_on_postgres(
    api: ApiHarness,
) -> None:
    h = api.indexer
    await h.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    tiers = ["gold", "silver", "bronze", None]
    for n in range(120):
        tier = tiers[n % 4]
        metadata: dict[str, Any] = {"n": n} if tier is None else {"tier": tier, "n": n}
        await _customer(h, f"c{n:03d}", metadata=metadata)
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type, filter) VALUES ('seg', 'proj_a', 'S',"
        ' \'auto-update\', \'{"metadata.tier": {"conditions": {"$is": "gold"}}}\')'
    )
    lsn = await api.catch_up()
    assert await _count(api, "seg", lsn) == 30

    measured: list[int] = []
    original = h.indexer.recompute.run_slice

    async def counted(budget: float) -> int:
        before = await _statements_by(h)
        examined = await original(budget)
        # Our own query above is one statement; anything more is the recompute's.
        measured.append(await _statements_by(h) - before - 1)
        return examined

    h.indexer.recompute.run_slice = counted  # type: ignore[method-assign]
    await h.execute(
        'UPDATE segments SET filter = \'{"junction": "or", "metadata.tier": {"conditions":'
        ' {"$in": ["silver", "bronze"]}}, "filters": [{"metadata.n": {"conditions":'
        " {\"$less_than\": 10}}}]}' WHERE id = 'seg'"
    )
    lsn = await api.catch_up()
    assert measured and all(count == 0 for count in measured), measured
    assert not h.indexer.recompute.pending

    cursor = await h.db.execute(
        "SELECT count(*) FROM customers WHERE project_id = 'proj_a' AND ("
        " metadata->>'tier' IN ('silver', 'bronze') OR (metadata->>'n')::numeric < 10)"
    )
    row = await cursor.fetchone()
    assert row is not None
    # Silver and bronze (60), and n < 10 among the others: 0, 4, 8 (gold), 3, 7 (untiered).
    assert await _count(api, "seg", lsn) == row[0] == 65
    listed = await api.get(
        "/v1/customers", segment_id="seg", limit="100", headers={"X-Min-Watermark": str(Lsn(lsn))}
    )
    assert (await listed.json())["total"] == 65
    entered = await _events(api, type=ENTERED, segment_id="seg")
    left = await _events(api, type=LEFT, segment_id="seg")
    # 30 gold customers entered when the segment was created; of them only 0, 4 and 8 stay,
    # and 62 others enter with the edit.
    assert len(left) == 27
    assert len(entered) == 30 + 62


async def test_a_deleted_segment_empties_and_a_static_one_keeps_its_rows(api: ApiHarness) -> None:
    h = api.indexer
    for customer_id in ("c1", "c2", "c3"):
        await _customer(h, customer_id, metadata={"tier": "gold"})
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type, filter) VALUES"
        " ('auto', 'proj_a', 'A', 'auto-update', '{}'),"
        " ('gone', 'proj_a', 'G', 'auto-update', '{}')"
    )
    # Rows left while the segment is auto-update: ignored until it becomes static.
    await h.execute("INSERT INTO segment_members (segment_id, customer_id) VALUES ('auto', 'c2')")
    lsn = await api.catch_up()
    assert await _count(api, "auto", lsn) == 3
    await h.execute("UPDATE segments SET type = 'static' WHERE id = 'auto'")
    await h.execute("DELETE FROM segments WHERE id = 'gone'")
    lsn = await api.catch_up()
    assert await _count(api, "auto", lsn) == 1
    assert await _members(h, "proj_a", "c2") == frozenset({"auto"})
    assert await _members(h, "proj_a", "c1") == frozenset()
    assert (await api.get("/v1/segments/gone")).status == 404
    left = await _events(api, type=LEFT)
    assert sorted((e["segment_id"], e["customer_id"]) for e in left) == [
        ("auto", "c1"),
        ("auto", "c3"),
        ("gone", "c1"),
        ("gone", "c2"),
        ("gone", "c3"),
    ]


async def test_relative_dates_follow_the_clock_touching_only_the_crossing_customers(
    api: ApiHarness,
) -> None:
    h = api.indexer
    start = datetime.now(UTC).replace(microsecond=0)
    now = [int(start.timestamp() * 1_000_000)]
    h.indexer.clock = lambda: now[0]
    ages = {"d05": 5, "d10": 10, "d20": 20, "d40": 40, "d50": 50}
    for customer_id, days in ages.items():
        created = (start - timedelta(days=days)).isoformat()
        await _customer(h, customer_id, created_at=created)
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type, filter) VALUES ('recent', 'proj_a',"
        ' \'Recent\', \'auto-update\', \'{"created_at": {"conditions": {"$after": "-P30D"}}}\')'
    )
    lsn = await api.catch_up()
    assert await _count(api, "recent", lsn) == 3
    clock = h.indexer.segment_clock
    # A process's first tick schedules a full pass (time passed while it was down).
    assert await clock.tick(int(lsn)) == 0
    await h.indexer.recompute.run_slice(5.0)
    assert await _events(api, type=LEFT) == []

    now[0] += 15 * DAY_US  # d20 is now 35 days old
    assert await clock.tick(int(lsn)) == 1
    now[0] += 1 * DAY_US  # nobody crosses
    assert await clock.tick(int(lsn)) == 0
    now[0] += 10 * DAY_US  # d05 (31 days) and d10 (36 days) cross
    assert await clock.tick(int(lsn)) == 2
    left = await _events(api, type=LEFT, segment_id="recent")
    assert [e["customer_id"] for e in left] == ["d20", "d05", "d10"]
    assert all(e["cause"] == "clock" for e in left)
    assert await _count(api, "recent", lsn) == 0
    touched = REGISTRY.get_sample_value("indexer_segment_tick_customers_total")
    assert touched is not None and touched >= 3


async def test_an_oversized_filter_leaves_the_segment_empty_with_one_reason(
    api: ApiHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = api.indexer
    await _customer(h, "c1", metadata={"tier": "gold"})
    values = [f"id-{n}" for n in range(100_000)]
    huge = orjson.dumps({"id": {"conditions": {"$in": values}}}).decode()
    before = REGISTRY.get_sample_value("indexer_invalid_segment_filters_total") or 0
    with caplog.at_level(logging.WARNING):
        await h.execute(
            "INSERT INTO segments (id, project_id, name, type, filter) VALUES ('huge', 'proj_a',"
            " 'H', 'auto-update', %s)",
            (huge,),
        )
        lsn = await api.catch_up()
    assert await _count(api, "huge", lsn) == 0
    reasons = [r for r in caplog.records if r.getMessage() == "segment filter invalid"]
    assert len(reasons) == 1
    assert "too many values" in str(getattr(reasons[0], "reason", ""))
    after = REGISTRY.get_sample_value("indexer_invalid_segment_filters_total") or 0
    assert after == before + 1


async def test_a_long_recompute_does_not_hold_back_another_tenant(
    api: ApiHarness,
) -> None:
    h = api.indexer
    await _gold_segment_recomputing(api, customers=3000)
    await _customer(h, "other", project="proj_b")
    lsn = await h.catch_up(max_steps=1, settled=False)
    await api.heard(lsn)
    found = await api.get(
        "/v1/customers/other", key=("app_b", "token-b"), headers={"X-Min-Watermark": str(Lsn(lsn))}
    )
    assert found.status == 200, "proj_b's change waited for proj_a's recompute"
    steps = 0
    while h.indexer.recompute.pending:
        await h.indexer.step()
        steps += 1
    assert steps > 1
    assert await _count(api, "gold", int(await api.catch_up())) == 3000


async def test_a_page_write_refused_after_its_slice_restarts_the_job_with_one_event_each(
    api: ApiHarness,
) -> None:
    """A page's writes may still be in flight when its slice returns; when Elasticsearch
    refuses them, a later slice raises, the job starts over once writes pass again, and
    every customer entered exactly once (Redis was written before the refused documents)."""
    h = api.indexer
    await _gold_segment_recomputing(api, customers=400)
    alias = h.indexer.segment_index.customers_alias
    await h.clients.elastic.indices.put_settings(
        index=alias, settings={"index.blocks.write": True}
    )
    try:
        with pytest.raises(SearchUnavailable):
            for _ in range(50):
                await h.indexer.recompute.run_slice(0.01)
    finally:
        await h.clients.elastic.indices.put_settings(
            index=alias, settings={"index.blocks.write": False}
        )
    lsn = await api.catch_up()
    assert await _count(api, "gold", int(lsn)) == 400
    entered = [event["customer_id"] for event in await _events(api, type=ENTERED)]
    assert len(entered) == 400
    assert len(set(entered)) == 400
    listed = await api.get(
        "/v1/customers",
        segment_id="gold",
        limit="1",
        headers={"X-Min-Watermark": str(Lsn(int(lsn)))},
    )
    assert (await listed.json())["total"] == 400



async def test_a_customer_crossing_a_bound_during_a_recompute_is_caught_by_the_next_tick(
    api: ApiHarness,
) -> None:
    """A recompute decides every customer as of its start; one whose date crosses the bound
    while the job runs is left to the clock, which looks back to that start, not only to
    its own previous tick."""
    h = api.indexer
    start = datetime.now(UTC).replace(microsecond=0)
    now = [int(start.timestamp() * 1_000_000)]
    h.indexer.clock = lambda: now[0]
    crossing = (start - timedelta(days=29, hours=12)).isoformat()
    await _customer(h, "x", created_at=crossing)  # 30 days old half a day from now
    await _customer(h, "y", created_at=(start - timedelta(days=10)).isoformat())
    lsn = await api.catch_up()
    clock = h.indexer.segment_clock
    assert await clock.tick(int(lsn)) == 0  # the first tick: no relative segment yet
    # The job starts (its time is taken) and does nothing more while the clock moves on.
    h.indexer._settings = dataclasses.replace(h.settings, recompute_slice_ms=0)
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type, filter) VALUES ('recent', 'proj_a',"
        ' \'Recent\', \'auto-update\', \'{"created_at": {"conditions": {"$after": "-P30D"}}}\')'
    )
    lsn = await h.catch_up(settled=False)
    assert h.indexer.recompute.pending
    now[0] += DAY_US
    assert await clock.tick(int(lsn)) == 1  # x crossed, and is no member yet
    h.indexer._settings = dataclasses.replace(h.settings, recompute_slice_ms=200)
    lsn = await api.catch_up()
    assert await _count(api, "recent", int(lsn)) == 2  # as of the job's start
    now[0] += 3_600 * 1_000_000
    assert await clock.tick(int(lsn)) == 1
    assert await _count(api, "recent", int(lsn)) == 1
    assert await _members(h, "proj_a", "x") == frozenset()
    assert await _members(h, "proj_a", "y") == frozenset({"recent"})
    left = await _events(api, type=LEFT)
    assert [(e["customer_id"], e["cause"]) for e in left] == [("x", "clock")]
    assert h.indexer.recompute.evaluated_at == {}
    now[0] += 3_600 * 1_000_000
    assert await clock.tick(int(lsn)) == 0  # back to the ticks' own bounds
