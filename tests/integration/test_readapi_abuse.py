"""Bounded abuse of the read API: what a client can make it do is bounded by its own requests.

- ``/readyz`` costs O(1): no keyspace scan, whatever Redis holds;
- ``X-Min-Watermark`` values the index already shows never trigger a refresh;
- ids that match nothing leave short-lived tombstones in Redis (the indexer's delete
  tombstones keep the long TTL);
- failed authentications are limited per client address, and unknown app ids never take the
  place of valid keys in the key cache.

Connection timeouts of ``readapi serve`` are tested in ``test_readapi_serve.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cache.readmodel.documents import AliasKind
from cache.records import Envelope
from cache.types import ObjectKind
from readapi import services as services_module
from readapi.services import Services
from tests.fixtures.indexer import IndexerHarness
from tests.fixtures.readapi import (
    KEY_A,
    KEY_B,
    ApiHarness,
    assert_error,
    seed_tenants,
    settings_for,
    start_api,
)

pytestmark = pytest.mark.services


@contextlib.asynccontextmanager
async def api_with(harness: IndexerHarness, **overrides: Any) -> AsyncIterator[ApiHarness]:
    """The app on this test's prefixes with ``overrides`` of its settings."""
    app, client = await start_api(harness, settings_for(harness, **overrides))
    try:
        yield ApiHarness(harness, app, client)
    finally:
        await client.close()


@pytest.fixture
async def seeded(harness: IndexerHarness) -> IndexerHarness:
    await seed_tenants(harness)
    await harness.catch_up()
    return harness


def random_key() -> tuple[str, str]:
    return f"app_{uuid.uuid4().hex}", uuid.uuid4().hex


# -- /readyz ---------------------------------------------------------------------------------


async def test_readiness_scans_nothing_and_needs_only_a_completed_load(
    harness: IndexerHarness,
) -> None:
    """No API key at all, but the indexer's load is complete (the watermark is written after
    it, and the load writes every key first): ready, and no SCAN was sent."""
    await harness.catch_up()
    async with api_with(harness) as api:
        scans = 0
        scan = api.services.redis.scan

        async def counting_scan(*args: Any, **kwargs: Any) -> Any:
            nonlocal scans
            scans += 1
            return await scan(*args, **kwargs)

        api.services.redis.scan = counting_scan  # type: ignore[method-assign]
        for _ in range(3):
            response = await api.get("/readyz", key=None)
            assert response.status == 200, await response.text()
            body = await response.json()
            assert body["status"] == "ready" and all(body["checks"].values()), body
        assert scans == 0


async def test_readiness_waits_for_the_watermark(harness: IndexerHarness) -> None:
    async with api_with(harness) as api:
        api.services.watermark._value = None  # as a process that has heard none yet
        body = await assert_error(await api.get("/readyz", key=None), 503, "unavailable")
        assert "api_keys" in body["details"] and "watermark" in body["details"]


# -- refreshes -------------------------------------------------------------------------------


async def test_watermarks_already_reached_refresh_the_index_at_most_once(
    seeded: IndexerHarness,
) -> None:
    await seeded.execute(
        "INSERT INTO vouchers (id, project_id, code, type) VALUES "
        "('v_1', 'proj_a', 'C-1', 'GIFT_VOUCHER'), ('v_2', 'proj_a', 'C-2', 'GIFT_VOUCHER')"
    )
    await seeded.execute(
        "INSERT INTO segments (id, project_id, name, type) VALUES "
        "('seg_1', 'proj_a', 'S', 'static')"
    )
    async with api_with(seeded) as api:
        watermark = await api.catch_up()
        requests = api.services.search.requests
        before = requests["refresh"]
        for n in range(1, 51):  # 0/1 ... 0/50, each already reached
            response = await api.get("/v1/vouchers", headers={"X-Min-Watermark": f"0/{n:X}"})
            assert response.status == 200, await response.text()
            assert [v["id"] for v in (await response.json())["vouchers"]] == ["v_2", "v_1"]
        assert requests["refresh"] - before <= 1

        # Concurrent ones at the current watermark: no refresh either (the one above began
        # at or after it), and segment counts (the customers' index) at most one.
        before = requests["refresh"]
        answers = await asyncio.gather(*(
            api.get("/v1/vouchers", headers={"X-Min-Watermark": str(watermark)})
            for _ in range(25)
        ), *(
            api.get("/v1/segments/seg_1", headers={"X-Min-Watermark": str(watermark)})
            for _ in range(25)
        ))
        assert [a.status for a in answers] == [200] * 50
        assert requests["refresh"] - before <= 1

        # A write the last refresh may not show: its watermark refreshes (and is seen).
        await seeded.execute(
            "INSERT INTO vouchers (id, project_id, code, type) "
            "VALUES ('v_3', 'proj_a', 'C-3', 'GIFT_VOUCHER')"
        )
        newer = await api.catch_up()
        assert newer > watermark
        before = requests["refresh"]
        response = await api.get("/v1/vouchers", headers={"X-Min-Watermark": str(newer)})
        assert [v["id"] for v in (await response.json())["vouchers"]] == ["v_3", "v_2", "v_1"]
        assert requests["refresh"] - before == 1


# -- tombstones of misses ----------------------------------------------------------------------


async def test_a_miss_leaves_a_short_lived_tombstone(seeded: IndexerHarness) -> None:
    async with api_with(seeded, miss_ttl_seconds=7) as api:
        services: Services = api.services
        layout = services.store.layout
        redis = services.redis
        await assert_error(await api.get("/v1/vouchers/NOPE-1"), 404, "not_found")
        await assert_error(await api.get("/v1/customers/nobody"), 404, "not_found")
        await assert_error(await api.get("/v1/campaigns/camp_none"), 404, "not_found")
        written = [
            layout.alias_key("proj_a", AliasKind.VOUCHER_CODE, "NOPE-1"),
            layout.object_key("proj_a", ObjectKind.VOUCHER, "NOPE-1"),
            layout.object_key("proj_a", ObjectKind.CUSTOMER, "nobody"),
            layout.alias_key("proj_a", AliasKind.CUSTOMER_SOURCE_ID, "nobody"),
            layout.object_key("proj_a", ObjectKind.CAMPAIGN, "camp_none"),
        ]
        for key in written:
            envelope = await services.store.get(key)
            assert envelope is not None and envelope.is_tombstone, key
            assert 0 < await redis.pttl(key) <= 7000, key

        # The indexer's tombstone of a deleted object keeps the long TTL.
        await seeded.execute(
            "INSERT INTO campaigns (id, project_id, name, type) "
            "VALUES ('camp_1', 'proj_a', 'C', 'DISCOUNT_COUPONS')"
        )
        await api.catch_up()
        await seeded.execute("DELETE FROM campaigns WHERE id = 'camp_1'")
        await api.catch_up()
        deleted = layout.object_key("proj_a", ObjectKind.CAMPAIGN, "camp_1")
        envelope = await services.store.get(deleted)
        assert envelope is not None and envelope.is_tombstone
        assert await redis.pttl(deleted) > 3_600_000


async def test_fill_takes_an_expiry(harness: IndexerHarness) -> None:
    store = harness.clients.cache.store
    key = store.layout.object_key("proj_x", ObjectKind.VOUCHER, f"v_{uuid.uuid4().hex}")
    assert await store.fill(key, Envelope.tombstone(5), ttl_seconds=3)
    assert 0 < await store.redis.pttl(key) <= 3000
    # Without one: the store's tombstone TTL, as before.
    assert await store.fill(key, Envelope.tombstone(6))
    assert await store.redis.pttl(key) > 3000


# -- failed authentications ------------------------------------------------------------------


async def test_failed_authentications_are_limited_per_address(seeded: IndexerHarness) -> None:
    async with api_with(seeded, auth_failures_per_minute=10) as api:
        statuses = []
        for _ in range(100):
            response = await api.get("/v1/vouchers/C-1", key=random_key())
            statuses.append(response.status)
            if response.status == 429:
                body = await assert_error(response, 429, "rate_limited")
                assert "failed authentications" in body["details"]
                assert 1 <= int(response.headers["Retry-After"]) <= 60
                # No key was identified: the default limit, nothing charged.
                assert response.headers["X-Rate-Limit-Limit"] == "600"
        assert statuses == [401] * 10 + [429] * 90
        # Any failed attempt from the address is limited: a wrong token, no credentials.
        await assert_error(await api.get("/v1/vouchers/C-1", key=(KEY_B[0], "wrong")), 429,
                           "rate_limited")
        await assert_error(await api.get("/v1/vouchers/C-1", key=None), 429, "rate_limited")
        # Valid credentials are checked first: the limit applies to failures only.
        response = await api.get("/v1/vouchers/C-1", key=KEY_A)
        await assert_error(response, 404, "not_found")
        assert (await api.get("/v1/customers", key=KEY_B)).status == 200
        metrics = await (await api.get("/metrics", key=None)).text()
        assert "readapi_auth_failures_total 102.0" in metrics
        assert "readapi_auth_throttled_total 92.0" in metrics


async def test_unknown_app_ids_never_evict_valid_keys(
    seeded: IndexerHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Entries outlive the test, so what it sees is eviction, never age.
    monkeypatch.setattr(services_module, "KEY_L1_MAX_AGE_SECONDS", 60.0)
    async with api_with(seeded, key_cache_entries=8, auth_failures_per_minute=1000) as api:
        services = api.services
        app_key = services.store.layout.app_key(KEY_A[0])
        assert (await api.get("/v1/customers", key=KEY_A)).status == 200
        read: list[str] = []
        get = services.store.get

        async def recording_get(key: str) -> Any:
            read.append(key)
            return await get(key)

        services.store.get = recording_get  # type: ignore[method-assign]
        for _ in range(100):
            await assert_error(await api.get("/v1/customers", key=random_key()), 401,
                               "unauthorized")
        assert len(read) == 100
        assert len(services.key_l1) == 1  # only the valid key
        hits = services.key_l1.hits
        assert (await api.get("/v1/customers", key=KEY_A)).status == 200
        assert app_key not in read and services.key_l1.hits > hits
        # A repeated unknown app id is answered from the small negative cache.
        unknown = random_key()
        read.clear()
        for _ in range(5):
            await assert_error(await api.get("/v1/customers", key=unknown), 401, "unauthorized")
        assert read == [services.store.layout.app_key(unknown[0])]


async def test_a_key_created_after_a_miss_authenticates_at_once(seeded: IndexerHarness) -> None:
    """The negative cache hears the indexer's invalidations like the key cache."""
    async with api_with(seeded) as api:
        new_key = ("app_new", "token-new")
        await assert_error(await api.get("/v1/customers", key=new_key), 401, "unauthorized")
        await seeded.execute(
            "INSERT INTO api_keys (id, project_id, token_sha256) VALUES "
            "('app_new', 'proj_a', encode(sha256('token-new'::bytea), 'hex'))"
        )
        await api.catch_up()
        assert (await api.get("/v1/customers", key=new_key)).status == 200

