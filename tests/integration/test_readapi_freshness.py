"""Read-your-writes through ``X-Min-Watermark`` with the indexer running, and proof that the
read API never queries Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from cache.types import Lsn
from tests.fixtures.indexer import IndexerHarness
from tests.fixtures.readapi import KEY_A, ApiHarness, assert_v1_headers
from tests.fixtures.readapi import api_fixture as api_fixture  # the "api" fixture

pytestmark = pytest.mark.services


@pytest.fixture
async def running_indexer(api: ApiHarness) -> AsyncIterator[IndexerHarness]:
    stop = asyncio.Event()
    task = asyncio.create_task(api.indexer.indexer.run(stop))
    try:
        yield api.indexer
    finally:
        stop.set()
        await task


async def write_and_read_lsn(h: IndexerHarness, statement: str) -> str:
    await h.execute(statement)
    cursor = await h.db.execute("SELECT pg_current_wal_lsn()::text")
    row = await cursor.fetchone()
    assert row is not None
    return str(row[0])


async def test_read_your_writes(api: ApiHarness, running_indexer: IndexerHarness) -> None:
    h = running_indexer
    lsn = await write_and_read_lsn(
        h, "INSERT INTO vouchers (id, project_id, code, type) "
        "VALUES ('v_new', 'proj_a', 'NEW-1', 'GIFT_VOUCHER')",
    )
    headers = {"X-Min-Watermark": lsn, "X-Wait-Timeout-Ms": "5000"}
    response = await api.get("/v1/vouchers/NEW-1", headers=headers)
    assert response.status == 200, await response.text()
    assert Lsn.parse(response.headers["X-Read-Watermark"]) >= Lsn.parse(lsn)
    assert_v1_headers(response)
    listed = await (await api.get("/v1/vouchers", headers=headers)).json()
    assert [v["id"] for v in listed["vouchers"]] == ["v_new"]

    for round_number in range(3):  # each update is seen by the next read, L1 or not
        assert (await api.get("/v1/vouchers/NEW-1")).status == 200  # warm L1
        lsn = await write_and_read_lsn(
            h, f"UPDATE vouchers SET metadata = '{{\"round\": {round_number}}}' "
            "WHERE id = 'v_new'",
        )
        headers = {"X-Min-Watermark": lsn, "X-Wait-Timeout-Ms": "5000"}
        body = await (await api.get("/v1/vouchers/NEW-1", headers=headers)).json()
        assert body["metadata"] == {"round": round_number}
        listed = await (await api.get("/v1/vouchers", headers=headers, q=str(round_number))).json()
        assert [v["id"] for v in listed["vouchers"]] == ["v_new"]

    lsn = await write_and_read_lsn(h, "DELETE FROM vouchers WHERE id = 'v_new'")
    headers = {"X-Min-Watermark": lsn, "X-Wait-Timeout-Ms": "5000"}
    assert (await api.get("/v1/vouchers/NEW-1", headers=headers)).status == 404
    listed = await (await api.get("/v1/vouchers", headers=headers)).json()
    assert listed["vouchers"] == []


async def xact_commits(admin: psycopg.AsyncConnection[tuple[int]], database: str) -> int:
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    cursor = await admin.execute(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database,)
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_the_api_sends_postgres_nothing(api: ApiHarness, pg_database: str) -> None:
    settings = api.services.settings
    assert not any("postgres" in str(value) for value in vars(settings).values())
    h = api.indexer
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, type) "
        "VALUES ('v_1', 'proj_a', 'C-1', 'GIFT_VOUCHER')"
    )
    lsn = await api.catch_up()
    await h.indexer.close()  # the indexer is stopped for the window
    # Flush this connection's pending statistics, then leave the database alone.
    await h.execute("SELECT pg_stat_force_next_flush()")
    await h.execute("SELECT 1")
    dsn = h.settings.pg_dsn.replace(pg_database, "postgres")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        # No autovacuum during the window, not even of this database's catalogs (which the
        # setup's DDL dirtied): its transactions would count too.
        await admin.execute("ALTER SYSTEM SET autovacuum = off")
        await admin.execute("SELECT pg_reload_conf()")
        try:
            await asyncio.sleep(0.2)  # let running autovacuum workers see the reload
            before = await xact_commits(admin, pg_database)
            fresh = {"X-Min-Watermark": str(lsn)}
            for _ in range(50):
                for path in ("/v1/vouchers/C-1", "/v1/vouchers/v_1", "/v1/vouchers/nope",
                             "/v1/customers/x", "/v1/campaigns/x", "/v1/segments/x"):
                    assert (await api.get(path)).status in (200, 404)
                assert (await api.get("/v1/vouchers", headers=fresh)).status == 200
            await assert_ok(api)
            after = await xact_commits(admin, pg_database)
        finally:
            await admin.execute("ALTER SYSTEM RESET autovacuum")
            await admin.execute("SELECT pg_reload_conf()")
    assert after == before


async def assert_ok(api: ApiHarness) -> None:
    response = await api.get("/v1/vouchers/C-1", key=KEY_A)
    assert response.status == 200
