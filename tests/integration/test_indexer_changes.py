"""Every contract table's insert, update, delete and truncate reaches both sinks with the
right derived values. Data is written with plain SQL, as any client of the platform would."""

from __future__ import annotations

from typing import Any

import pytest

from cache.readmodel.indices import MAPPING_VERSION
from cache.types import ObjectKind
from indexer.runner import Indexer
from tests.fixtures.indexer import IndexerHarness

pytestmark = pytest.mark.services

P = "proj_a"


async def seed_base(h: IndexerHarness) -> None:
    await h.execute("INSERT INTO projects (id, name) VALUES ('proj_a', 'A'), ('proj_b', 'B')")
    await h.execute(
        "INSERT INTO campaigns (id, project_id, name, type) VALUES "
        "('camp_1', 'proj_a', 'Summer', 'DISCOUNT_COUPONS'),"
        "('camp_l', 'proj_a', 'Points', 'LOYALTY_PROGRAM')"
    )
    await h.execute(
        "INSERT INTO customers (id, project_id, source_id, name, email, metadata) VALUES "
        "('cust_1', 'proj_a', 'crm-1', 'Ann', 'Ann@Example.com', '{\"tier\": \"gold\"}'),"
        "('cust_2', 'proj_a', 'crm-2', 'Bob', 'bob@example.com', '{}')"
    )
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, campaign_id, type, discount) VALUES "
        "('v_1', 'proj_a', 'SUMMER-1', 'camp_1', 'DISCOUNT_VOUCHER',"
        ' \'{"type": "PERCENT", "percent_off": 10}\')'
    )
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, campaign_id, type, loyalty_points,"
        " loyalty_balance, holder_id) VALUES "
        "('card_1', 'proj_a', 'CARD-1', 'camp_l', 'LOYALTY_CARD', 500, 300, 'cust_1'),"
        "('card_2', 'proj_a', 'CARD-2', 'camp_l', 'LOYALTY_CARD', 100, 50, 'cust_1')"
    )


async def test_inserts_reach_both_sinks_with_derived_values(harness: IndexerHarness) -> None:
    await seed_base(harness)
    await harness.execute(
        "INSERT INTO redemptions (id, project_id, voucher_id, customer_id, amount, points, result)"
        " VALUES ('r1', 'proj_a', 'v_1', 'cust_1', 1500, NULL, 'SUCCESS'),"
        " ('r2', 'proj_a', 'card_1', 'cust_1', NULL, 40, 'SUCCESS'),"
        " ('r3', 'proj_a', 'v_1', 'cust_1', 900, NULL, 'FAILURE')"
    )
    await harness.catch_up()

    voucher = await harness.redis_doc("voucher", P, "v_1")
    assert voucher["campaign"] == "Summer"
    assert voucher["code"] == "SUMMER-1"
    assert voucher["discount"] == {"type": "PERCENT", "percent_off": 10}
    assert voucher["gift"] is None and voucher["loyalty_card"] is None
    assert voucher["redemption"] == {"quantity": None, "redeemed_quantity": 0}
    es_voucher = await harness.es_doc("voucher", "v_1")
    assert es_voucher is not None and es_voucher["doc"] == voucher

    customer = await harness.redis_doc("customer", P, "cust_1")
    assert customer["summary"]["redemptions"] == {
        "total_redeemed": 3,
        "total_succeeded": 2,
        "total_failed": 1,
        "gift": {"redeemed_amount": 1500},
        "loyalty_card": {"redeemed_points": 40},
    }
    assert customer["loyalty"] == {"points": 350}
    campaign = await harness.redis_doc("campaign", P, "camp_l")
    assert campaign["vouchers_count"] == 2
    report = await harness.verify()
    assert report.ok, report.differences


async def test_updates_and_deletes_recompute_derived_values(harness: IndexerHarness) -> None:
    await seed_base(harness)
    await harness.execute(
        "INSERT INTO redemptions (id, project_id, voucher_id, customer_id, amount, result)"
        " VALUES ('r1', 'proj_a', 'v_1', 'cust_1', 1500, 'SUCCESS')"
    )
    await harness.catch_up()
    # A card changes hands and balance; a redemption is deleted; a campaign is deleted.
    await harness.execute(
        "UPDATE vouchers SET holder_id = 'cust_2', loyalty_balance = 70 WHERE id = 'card_2'"
    )
    await harness.execute("DELETE FROM redemptions WHERE id = 'r1'")
    await harness.execute("DELETE FROM campaigns WHERE id = 'camp_1'")
    await harness.catch_up()

    first = await harness.redis_doc("customer", P, "cust_1")
    second = await harness.redis_doc("customer", P, "cust_2")
    assert first["loyalty"] == {"points": 300}
    assert second["loyalty"] == {"points": 70}
    assert first["summary"]["redemptions"]["total_redeemed"] == 0
    assert first["summary"]["redemptions"]["gift"] == {"redeemed_amount": 0}
    voucher = await harness.redis_doc("voucher", P, "v_1")
    assert voucher["campaign"] is None and voucher["campaign_id"] is None
    assert await harness.es_doc("campaign", "camp_1") is None
    tombstone = await harness.clients.cache.store.get_object(P, "campaign", "camp_1")
    assert tombstone is not None and tombstone.is_tombstone
    report = await harness.verify()
    assert report.ok, report.differences


async def test_deleted_customer_disappears_and_vouchers_lose_holder(
    harness: IndexerHarness,
) -> None:
    await seed_base(harness)
    await harness.catch_up()
    await harness.execute("DELETE FROM customers WHERE id = 'cust_1'")
    await harness.catch_up()
    assert await harness.es_doc("customer", "cust_1") is None
    envelope = await harness.clients.cache.store.get_object(P, "customer", "cust_1")
    assert envelope is not None and envelope.is_tombstone
    card = await harness.redis_doc("voucher", P, "card_1")
    assert card["holder_id"] is None
    alias = await harness.clients.cache.store.resolve_alias(P, "customer_source_id", "crm-1")
    assert alias is not None and alias.is_tombstone
    report = await harness.verify()
    assert report.ok, report.differences


async def test_code_change_moves_the_alias(harness: IndexerHarness) -> None:
    await seed_base(harness)
    await harness.catch_up()
    await harness.execute("UPDATE vouchers SET code = 'SUMMER-2' WHERE id = 'v_1'")
    await harness.catch_up()
    store = harness.clients.cache.store
    old = await store.resolve_alias(P, "voucher_code", "SUMMER-1")
    new = await store.resolve_alias(P, "voucher_code", "SUMMER-2")
    assert old is not None and old.is_tombstone
    assert new is not None and new.data == "v_1"
    es = await harness.es_doc("voucher", "v_1")
    assert es is not None and es["code"] == "SUMMER-2"
    # The released code is taken by another voucher in one transaction with the rename.
    await harness.execute(
        "BEGIN; UPDATE vouchers SET code = 'SUMMER-3' WHERE id = 'v_1';"
        "INSERT INTO vouchers (id, project_id, code, type) "
        "VALUES ('v_2', 'proj_a', 'SUMMER-2', 'DISCOUNT_VOUCHER'); COMMIT;"
    )
    await harness.catch_up()
    taken = await store.resolve_alias(P, "voucher_code", "SUMMER-2")
    assert taken is not None and taken.data == "v_2"
    report = await harness.verify()
    assert report.ok, report.differences


async def test_segments_static_and_auto_update(harness: IndexerHarness) -> None:
    await seed_base(harness)
    await harness.execute(
        "INSERT INTO segments (id, project_id, name, type, filter) VALUES "
        "('seg_static', 'proj_a', 'Chosen', 'static', NULL),"
        "('seg_gold', 'proj_a', 'Gold', 'auto-update',"
        ' \'{"junction": "and", "metadata.tier": {"conditions": {"$is": ["gold"]}}}\'),'
        "('seg_bad', 'proj_a', 'Broken', 'auto-update', '{\"email\": {\"conditions\": "
        '{"$nope": [1]}}}\')'
    )
    await harness.execute(
        "INSERT INTO segment_members (segment_id, customer_id) VALUES ('seg_static', 'cust_2')"
    )
    await harness.catch_up()
    first = await harness.es_doc("customer", "cust_1")
    second = await harness.es_doc("customer", "cust_2")
    assert first is not None and first["segment_ids"] == ["seg_gold"]
    assert second is not None and second["segment_ids"] == ["seg_static"]
    # The filter changes: every customer of the project is evaluated again.
    await harness.execute(
        'UPDATE segments SET filter = \'{"email": {"conditions": '
        '{"$ends_with": ["example.com"]}}}\' WHERE id = \'seg_gold\''
    )
    await harness.execute("DELETE FROM segment_members WHERE segment_id = 'seg_static'")
    await harness.catch_up()
    second = await harness.es_doc("customer", "cust_2")
    assert second is not None and second["segment_ids"] == ["seg_gold"]
    segment = await harness.redis_doc("segment", P, "seg_gold")
    assert segment["filter"]["email"]["conditions"] == {"$ends_with": ["example.com"]}
    report = await harness.verify()
    assert report.ok, report.differences


async def test_api_keys_reach_redis_and_revocation_is_seen(harness: IndexerHarness) -> None:
    await seed_base(harness)
    await harness.execute(
        "INSERT INTO api_keys (id, project_id, token_sha256, rate_limit_per_minute) VALUES "
        "('app_1', 'proj_a', repeat('a', 64), 120)"
    )
    await harness.catch_up()
    record = await harness.clients.cache.store.get_api_key("app_1")
    assert record is not None and not record.revoked and record.rate_limit_per_minute == 120
    await harness.execute("UPDATE api_keys SET revoked_at = now() WHERE id = 'app_1'")
    await harness.catch_up()
    record = await harness.clients.cache.store.get_api_key("app_1")
    assert record is not None and record.revoked
    await harness.execute("DELETE FROM api_keys WHERE id = 'app_1'")
    await harness.catch_up()
    assert await harness.clients.cache.store.get_api_key("app_1") is None


async def test_truncate_removes_everything_it_emptied(harness: IndexerHarness) -> None:
    await seed_base(harness)
    await harness.execute(
        "INSERT INTO redemptions (id, project_id, voucher_id, customer_id, amount, result)"
        " VALUES ('r1', 'proj_a', 'v_1', 'cust_1', 1500, 'SUCCESS')"
    )
    await harness.catch_up()
    await harness.execute("TRUNCATE redemptions")
    await harness.catch_up()
    customer = await harness.redis_doc("customer", P, "cust_1")
    assert customer["summary"]["redemptions"]["total_redeemed"] == 0
    await harness.execute("TRUNCATE vouchers CASCADE")
    await harness.catch_up()
    for voucher_id in ("v_1", "card_1", "card_2"):
        assert await harness.es_doc("voucher", voucher_id) is None
        envelope = await harness.clients.cache.store.get_object(P, "voucher", voucher_id)
        assert envelope is not None and envelope.is_tombstone
    customer = await harness.redis_doc("customer", P, "cust_1")
    assert customer["loyalty"] == {"points": 0}
    report = await harness.verify()
    assert report.ok, report.differences


async def test_large_toasted_metadata_survives_small_update(harness: IndexerHarness) -> None:
    await seed_base(harness)
    big: dict[str, Any] = {f"key_{i}": "x" * 200 + str(i) for i in range(100)}
    import orjson

    await harness.execute(
        "UPDATE customers SET metadata = %s::jsonb WHERE id = 'cust_2'",
        (orjson.dumps(big).decode(),),
    )
    await harness.catch_up()
    await harness.execute("UPDATE customers SET name = 'Robert' WHERE id = 'cust_2'")
    await harness.catch_up()
    customer = await harness.redis_doc("customer", P, "cust_2")
    assert customer["name"] == "Robert"
    assert customer["metadata"] == big
    es = await harness.es_doc("customer", "cust_2")
    assert es is not None and es["doc"]["metadata"] == big


async def test_campaign_rename_reaches_all_5000_vouchers(harness: IndexerHarness) -> None:
    await seed_base(harness)
    await harness.execute(
        "INSERT INTO vouchers (id, project_id, code, campaign_id, type) "
        "SELECT 'bulk_' || g, 'proj_a', 'BULK-' || g, 'camp_1', 'DISCOUNT_VOUCHER' "
        "FROM generate_series(1, 5000) g"
    )
    await harness.catch_up()
    await harness.execute("UPDATE campaigns SET name = 'Winter' WHERE id = 'camp_1'")
    await harness.catch_up()
    await harness.clients.search.refresh()
    response = await harness.clients.elastic.count(
        index=f"{harness.settings.es_index_prefix}vouchers",
        query={"term": {"campaign_id": "camp_1"}},
    )
    assert response["count"] == 5001
    report = await harness.verify()
    assert report.ok, report.differences
    campaign = await harness.redis_doc("campaign", P, "camp_1")
    assert campaign["name"] == "Winter" and campaign["vouchers_count"] == 5001


async def test_redis_emptied_during_a_step_is_reloaded(harness: IndexerHarness) -> None:
    """Redis restarts empty after the step's "data lost?" check and before its watermark
    write: the watermark must not be written over the loss, or objects the step did not
    touch would stay missing for good."""
    await seed_base(harness)
    await harness.catch_up()
    assert (await harness.redis_doc("voucher", P, "v_1"))["code"] == "SUMMER-1"
    redis = harness.clients.cache.store.redis
    prefix = harness.settings.redis_key_prefix
    emptied: list[int] = []

    async def empty_redis(transactions: list[Any]) -> None:
        if transactions and not emptied:
            keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
            emptied.append(await redis.delete(*keys))

    harness.indexer.before_advance = empty_redis
    await harness.execute("UPDATE vouchers SET active = false WHERE id = 'card_2'")
    await harness.catch_up()
    harness.indexer.before_advance = None
    assert emptied and emptied[0] > 5
    assert (await harness.redis_doc("voucher", P, "v_1"))["code"] == "SUMMER-1"
    assert (await harness.redis_doc("voucher", P, "card_2"))["active"] is False
    assert await harness.clients.cache.store.get_watermark() is not None
    report = await harness.verify()
    assert report.ok, report.differences


async def test_indices_of_an_older_mapping_are_loaded_again_at_start_up(
    harness: IndexerHarness,
) -> None:
    """Indices written before a mapping change (here: before the filter view) would answer
    segment queries with nothing: a start-up finds their version and loads again (in the
    background, as ``indexer reindex`` does)."""
    await seed_base(harness)
    await harness.catch_up()
    search = harness.clients.search
    meta = await search.indices_ready()
    assert meta is not None and meta["mapping"] == MAPPING_VERSION
    alias = search.alias(ObjectKind.CUSTOMER)

    async def index_uuids() -> set[str]:
        found = await search.client.indices.get_settings(index=alias, name="index.uuid")
        return {body["settings"]["index"]["uuid"] for body in found.body.values()}

    before = await index_uuids()
    # What an indexer of the previous version left: the same meta without a mapping version.
    await search.set_meta({k: v for k, v in meta.items() if k != "mapping"})

    # The same state, with the current version, is kept as it is.
    same = Indexer(harness.settings, search, harness.clients.cache)
    await search.set_meta(meta)
    await same.prepare()
    assert await index_uuids() == before
    await same.close()

    await search.set_meta({k: v for k, v in meta.items() if k != "mapping"})
    upgraded = Indexer(harness.settings, search, harness.clients.cache)
    try:
        await upgraded.prepare()
        assert upgraded.upgrade.running
        await upgraded.upgrade.wait()
        after = await index_uuids()
        assert after and after != before  # a new index behind the alias
        loaded = await search.indices_ready()
        assert loaded is not None and loaded["state"] == "complete"
        assert loaded["mapping"] == MAPPING_VERSION
        assert (await harness.es_doc("customer", "cust_1")) is not None
        report = await harness.verify()
        assert report.ok, report.differences
    finally:
        await upgraded.close()
