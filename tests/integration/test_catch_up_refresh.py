"""Behind by more than a batch, the serving indices refresh at the catch-up interval; caught
up, the configured interval is back and everything applied is searchable at once. A process
that stopped while catching up puts the configured interval back when it starts."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from cache.types import ObjectKind
from indexer import metrics
from indexer.pgoutput import Transaction
from indexer.settings import IndexerSettings
from tests.fixtures.indexer import IndexerHarness, prepared_harness
from tests.integration.test_indexer_changes import seed_base

pytestmark = pytest.mark.services

BATCH = 10
CATCH_UP = "7s"


@pytest.fixture
def settings(base_settings: IndexerSettings) -> IndexerSettings:
    return dataclasses.replace(
        base_settings, batch_changes=BATCH, es_catchup_refresh_interval=CATCH_UP
    )


@pytest.fixture
async def small(settings: IndexerSettings) -> AsyncIterator[IndexerHarness]:
    async with prepared_harness(settings) as prepared:
        yield prepared


async def _interval(h: IndexerHarness) -> str:
    """The refresh interval of the serving voucher index."""
    alias = h.clients.search.alias(ObjectKind.VOUCHER)
    found = await h.clients.elastic.indices.get_settings(index=alias, name="index.refresh_interval")
    (body,) = found.body.values()
    return str(body["settings"]["index"]["refresh_interval"])


def _watch(h: IndexerHarness) -> list[tuple[int, str, bool]]:
    """(changes, refresh interval, catching up) as each step is about to advance."""
    seen: list[tuple[int, str, bool]] = []

    async def before_advance(transactions: list[Transaction]) -> None:
        changes = sum(len(t.changes) for t in transactions)
        seen.append((changes, await _interval(h), h.indexer.catching_up))

    h.indexer.before_advance = before_advance
    return seen


async def _vouchers(h: IndexerHarness, first: int, count: int, *, transactions: int) -> None:
    per = count // transactions
    for start in range(first, first + count, per):
        await h.execute(
            "INSERT INTO vouchers (id, project_id, code, campaign_id, type) "
            "SELECT 'cu_' || lpad(g::text, 5, '0'), 'proj_a', 'CU-' || g, 'camp_1', "
            "'DISCOUNT_VOUCHER' FROM generate_series(%s::int, %s::int) g",
            (start, start + per - 1),
        )


async def _caught_up(h: IndexerHarness) -> None:
    """Applied everything, then one more step: the one that finds less than a batch (the
    running loop takes it at once, full batches wait for nothing)."""
    await h.catch_up()
    await h.indexer.step()


async def _searchable(h: IndexerHarness) -> int:
    """Vouchers the serving index finds now, without asking for a refresh."""
    alias = h.clients.search.alias(ObjectKind.VOUCHER)
    ids = [f"cu_{n:05d}" for n in range(1, 61)]
    response = await h.clients.elastic.count(index=alias, query={"ids": {"values": ids}})
    return int(response["count"])


async def test_a_backlog_refreshes_less_often_until_caught_up(small: IndexerHarness) -> None:
    h = small
    await seed_base(h)
    await _caught_up(h)
    configured = h.settings.es_refresh_interval
    assert await _interval(h) == configured
    seen = _watch(h)

    await _vouchers(h, 1, 60, transactions=30)  # six batches behind
    await _caught_up(h)

    intervals = [interval for _changes, interval, _on in seen]
    assert (CATCH_UP, True) in [(interval, on) for _changes, interval, on in seen]
    assert intervals[0] == configured  # one full batch is not a backlog yet
    assert not h.indexer.catching_up and await _interval(h) == configured
    assert metrics.CATCHING_UP._value.get() == 0
    assert await _searchable(h) == 60  # the last step refreshed: nothing waits 7 s
    report = await h.verify()
    assert report.ok, report.differences


async def test_one_transaction_over_a_batch_is_no_backlog(small: IndexerHarness) -> None:
    h = small
    await seed_base(h)
    await _caught_up(h)
    seen = _watch(h)

    await _vouchers(h, 1, 25, transactions=1)  # one full batch, then nothing
    await h.catch_up()

    assert seen and all(interval == h.settings.es_refresh_interval for _c, interval, _on in seen)
    assert not any(on for _c, _i, on in seen)


async def test_a_start_puts_the_configured_interval_back(settings: IndexerSettings) -> None:
    async with prepared_harness(settings) as h:
        await seed_base(h)
        await _caught_up(h)
        # A process stopped while catching up.
        await h.clients.search.set_serving_refresh(CATCH_UP)
        assert await _interval(h) == CATCH_UP
    async with prepared_harness(settings) as again:
        assert await _interval(again) == settings.es_refresh_interval
        assert not again.indexer.catching_up


async def test_several_shards_keep_the_configured_interval(small: IndexerHarness) -> None:
    h = small
    await seed_base(h)
    await _caught_up(h)
    # The same process, as if it were one shard of two: it never changes the interval.
    h.indexer.shard = dataclasses.replace(h.indexer.shard, count=2)
    try:
        for full in (True, True, True):
            await h.indexer._pace_refresh(full)
    finally:
        h.indexer.shard = dataclasses.replace(h.indexer.shard, count=1)
    assert not h.indexer.catching_up
    assert await _interval(h) == h.settings.es_refresh_interval


async def test_a_shard_handing_off_while_behind_puts_the_interval_back(
    small: IndexerHarness,
) -> None:
    h = small
    await seed_base(h)
    await _caught_up(h)
    await h.clients.search.set_serving_refresh(CATCH_UP)
    h.indexer.catching_up = True
    conn = await h.indexer._connection()
    role = await h.indexer.shard_state.read(conn)

    await h.indexer._retire(conn, role)

    assert h.indexer.retired and not h.indexer.catching_up
    assert await _interval(h) == h.settings.es_refresh_interval
