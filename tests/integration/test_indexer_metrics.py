"""The capture loop's metrics follow what it does: documents written per kind, WAL lag."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import REGISTRY

from indexer.runner import Indexer
from tests.fixtures.indexer import IndexerHarness

pytestmark = pytest.mark.services

KINDS = ("campaign", "customer", "segment", "voucher")


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    value = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def _written() -> dict[str, float]:
    return {kind: _sample("indexer_documents_written_total", {"kind": kind}) for kind in KINDS}


def _delta(before: dict[str, float]) -> dict[str, float]:
    after = _written()
    return {kind: after[kind] - before[kind] for kind in KINDS if after[kind] != before[kind]}


async def test_documents_written_are_counted_per_kind(harness: IndexerHarness) -> None:
    before = _written()
    await harness.execute("INSERT INTO projects (id, name) VALUES ('proj_a', 'A')")
    await harness.execute(
        "INSERT INTO customers (id, project_id, name) VALUES "
        "('cust_1', 'proj_a', 'Ann'), ('cust_2', 'proj_a', 'Bob')"
    )
    await harness.execute(
        "INSERT INTO campaigns (id, project_id, name, type) VALUES "
        "('camp_1', 'proj_a', 'Summer', 'DISCOUNT_COUPONS')"
    )
    await harness.catch_up()
    assert _delta(before) == {"customer": 2, "campaign": 1}

    before = _written()
    await harness.execute("DELETE FROM customers WHERE id = 'cust_2'")  # a removal counts too
    await harness.catch_up()
    assert _delta(before) == {"customer": 1}


async def test_lag_bytes_is_the_wal_a_step_left_behind(harness: IndexerHarness) -> None:
    await harness.execute("INSERT INTO projects (id, name) VALUES ('proj_a', 'A')")
    await harness.catch_up()
    for number in range(5):  # one transaction each
        await harness.execute(
            "INSERT INTO customers (id, project_id, name) VALUES (%s, 'proj_a', 'C')",
            (f"cust_{number}",),
        )
    # Batches so small that every one of them fills up and leaves WAL behind.
    small = Indexer(
        dataclasses.replace(harness.settings, batch_changes=2),
        harness.clients.search,
        harness.clients.cache,
    )
    try:
        result = await small.step()
        assert result.full
        assert _sample("indexer_lag_bytes") > 0
        for _ in range(100):
            if not (await small.step()).full:
                break
        else:
            raise AssertionError("the indexer never caught up")
        # A batch that did not fill up took the slot to the position read at its start.
        assert _sample("indexer_lag_bytes") == 0
    finally:
        await small.close()
