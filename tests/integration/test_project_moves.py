"""A row that changes project leaves its old project at once, in both sinks: the new project's
key finds it (200), the old project's key does not (404), by id, code and source_id alike."""

from __future__ import annotations

import pytest

from cache.types import Lsn
from tests.fixtures.readapi import KEY_A, KEY_B, ApiHarness
from tests.fixtures.readapi import api_fixture as api_fixture  # the "api" fixture

pytestmark = pytest.mark.services

MOVED = ("/v1/vouchers/v1", "/v1/vouchers/CODE-1", "/v1/customers/c1", "/v1/customers/src-1",
         "/v1/campaigns/k1", "/v1/segments/s1")  # fmt: skip


async def seed(api: ApiHarness) -> None:
    h = api.indexer
    await h.execute(
        "INSERT INTO campaigns (id, project_id, name, type) "
        "VALUES ('k1', 'proj_a', 'Camp', 'GIFT_VOUCHERS')"
    )
    await h.execute(
        "INSERT INTO customers (id, project_id, source_id, name) VALUES "
        "('c1', 'proj_a', 'src-1', 'Ann'), ('c2', 'proj_a', 'src-2', 'Bob')"
    )
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, type, campaign_id) VALUES "
        "('v1', 'proj_a', 'CODE-1', 'GIFT_VOUCHER', 'k1'),"
        " ('v2', 'proj_a', 'CODE-2', 'GIFT_VOUCHER', 'k1')"
    )
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type) VALUES ('s1', 'proj_a', 'S', 'static')"
    )


async def status(api: ApiHarness, path: str, key: tuple[str, str], lsn: int) -> int:
    response = await api.get(path, key=key, headers={"X-Min-Watermark": str(Lsn(lsn))})
    return response.status


async def check_moved(api: ApiHarness, lsn: int) -> None:
    for path in MOVED:
        # Plain requests first: they read the in-process cache, which must have been dropped.
        assert (await api.get(path, key=KEY_B)).status == 200, path
        assert (await api.get(path, key=KEY_A)).status == 404, path
        assert await status(api, path, KEY_B, lsn) == 200, path
        assert await status(api, path, KEY_A, lsn) == 404, path
    # What did not move stays where it was.
    assert await status(api, "/v1/vouchers/CODE-2", KEY_A, lsn) == 200
    assert await status(api, "/v1/customers/src-2", KEY_A, lsn) == 200
    listed = await (
        await api.get("/v1/vouchers", key=KEY_A, headers={"X-Min-Watermark": str(Lsn(lsn))})
    ).json()
    assert [v["id"] for v in listed["vouchers"]] == ["v2"]
    listed = await (
        await api.get("/v1/vouchers", key=KEY_B, headers={"X-Min-Watermark": str(Lsn(lsn))})
    ).json()
    assert [v["id"] for v in listed["vouchers"]] == ["v1"]


async def move_everything(api: ApiHarness) -> int:
    h = api.indexer
    await h.execute(
        "INSERT INTO campaigns (id, project_id, name, type) "
        "VALUES ('k2', 'proj_b', 'Other', 'GIFT_VOUCHERS')"
    )
    await h.execute("UPDATE vouchers SET project_id = 'proj_b', campaign_id = 'k2' WHERE id = 'v1'")
    await h.execute("UPDATE customers SET project_id = 'proj_b' WHERE id = 'c1'")
    await h.execute("UPDATE campaigns SET project_id = 'proj_b' WHERE id = 'k1'")
    await h.execute("UPDATE segments SET project_id = 'proj_b' WHERE id = 's1'")
    return int(await api.catch_up())


async def warm(api: ApiHarness) -> None:
    """Read every object through the old project's key, so caches hold them."""
    for path in MOVED:
        for _ in range(2):
            assert (await api.get(path, key=KEY_A)).status == 200, path


@pytest.mark.parametrize("identity", ["full", "default"])
async def test_a_moved_row_leaves_its_old_project_at_once(api: ApiHarness, identity: str) -> None:
    if identity == "default":
        # The old tuple of an update then holds the key only: the old project is learnt from
        # the indexed document instead.
        for table in ("vouchers", "customers", "campaigns", "segments"):
            await api.indexer.execute(f"ALTER TABLE {table} REPLICA IDENTITY DEFAULT")
    await seed(api)
    await api.catch_up()
    await warm(api)
    lsn = await move_everything(api)
    await check_moved(api, lsn)
    report = await api.indexer.verify()
    assert report.ok, report.differences


async def test_moving_back_and_forth_in_one_batch(api: ApiHarness) -> None:
    await seed(api)
    await api.catch_up()
    await warm(api)
    h = api.indexer
    await h.execute("UPDATE vouchers SET project_id = 'proj_b' WHERE id = 'v2'")
    await h.execute("UPDATE vouchers SET project_id = 'proj_a' WHERE id = 'v2'")
    lsn = await move_everything(api)
    await check_moved(api, lsn)
    assert await status(api, "/v1/vouchers/v2", KEY_B, lsn) == 404


async def test_a_move_with_a_new_code_and_a_replayed_batch(api: ApiHarness) -> None:
    """The batch applied twice (as after a crash between the sinks and the slot): the second
    pass finds Elasticsearch already moved and must still leave Redis right."""
    await seed(api)
    await api.catch_up()
    await warm(api)
    h = api.indexer
    kept: list[object] = []

    async def keep(transactions: list[object]) -> None:
        kept.extend(transactions)

    h.indexer.before_advance = keep  # type: ignore[assignment]
    await h.execute("UPDATE vouchers SET project_id = 'proj_b', code = 'NEW-1' WHERE id = 'v1'")
    lsn = int(await api.catch_up())
    h.indexer.before_advance = None
    await h.indexer.apply(kept)  # type: ignore[arg-type]
    for path in ("/v1/vouchers/v1", "/v1/vouchers/NEW-1"):
        assert await status(api, path, KEY_B, lsn) == 200, path
        assert await status(api, path, KEY_A, lsn) == 404, path
    assert await status(api, "/v1/vouchers/CODE-1", KEY_A, lsn) == 404
    assert await status(api, "/v1/vouchers/CODE-1", KEY_B, lsn) == 404
