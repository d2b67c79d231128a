"""Cache races, forced with the lookup hooks: a fill racing a newer CDC write, a delete racing
a fill, and a stampede of cold lookups sharing one Elasticsearch request."""

from __future__ import annotations

import asyncio

import pytest

from cache.types import ObjectKind
from tests.fixtures.readapi import ApiHarness
from tests.fixtures.readapi import api_fixture as api_fixture  # the "api" fixture

pytestmark = pytest.mark.services

P = "proj_a"
WAIT = 10.0


async def seed_campaign(api: ApiHarness) -> str:
    await api.indexer.execute(
        "INSERT INTO campaigns (id, project_id, name, type) "
        "VALUES ('camp_1', 'proj_a', 'First', 'DISCOUNT_COUPONS')"
    )
    await api.catch_up()
    return api.services.store.layout.object_key(P, ObjectKind.CAMPAIGN, "camp_1")


class Pause:
    """A hook that holds the lookup of one key until released."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, key: str) -> None:
        if key == self.key:
            self.reached.set()
            await self.release.wait()


async def paused_lookup(api: ApiHarness, pause: Pause) -> asyncio.Task[dict[str, object]]:
    async def lookup() -> dict[str, object]:
        response = await api.get("/v1/campaigns/camp_1")
        assert response.status == 200
        body: dict[str, object] = await response.json()
        return body

    task = asyncio.create_task(lookup())
    async with asyncio.timeout(WAIT):
        await pause.reached.wait()
    return task


async def test_elasticsearch_fill_racing_a_newer_write_never_goes_back(api: ApiHarness) -> None:
    key = await seed_campaign(api)
    await api.services.redis.delete(key)  # an L2 miss: the lookup reads Elasticsearch
    pause = Pause(key)
    api.services.lookups.hooks.after_read = pause
    task = await paused_lookup(api, pause)
    # The lookup holds version 1 from Elasticsearch; a newer write lands meanwhile.
    await api.indexer.execute("UPDATE campaigns SET name = 'Second' WHERE id = 'camp_1'")
    await api.catch_up()
    pause.release.set()
    assert (await task)["name"] == "First"  # read before the write: a valid answer then
    api.services.lookups.hooks.after_read = None

    envelope = await api.services.store.get(key)
    assert envelope is not None and envelope.data["name"] == "Second"
    entry = api.services.l1.get(key)
    assert entry is None or (entry.value.body is not None and b"Second" in entry.value.body)
    for _ in range(2):  # from L2, then from L1
        body = await (await api.get("/v1/campaigns/camp_1")).json()
        assert body["name"] == "Second"


async def test_redis_read_racing_a_newer_write_is_not_installed_in_l1(api: ApiHarness) -> None:
    key = await seed_campaign(api)
    pause = Pause(key)
    api.services.lookups.hooks.after_read = pause
    task = await paused_lookup(api, pause)  # holds version 1 read from Redis
    await api.indexer.execute("UPDATE campaigns SET name = 'Second' WHERE id = 'camp_1'")
    await api.catch_up()
    pause.release.set()
    assert (await task)["name"] == "First"
    api.services.lookups.hooks.after_read = None
    assert api.services.l1.get(key) is None
    body = await (await api.get("/v1/campaigns/camp_1")).json()
    assert body["name"] == "Second"


async def test_delete_racing_a_fill_never_resurrects(api: ApiHarness) -> None:
    key = await seed_campaign(api)
    await api.services.redis.delete(key)
    pause = Pause(key)
    api.services.lookups.hooks.after_read = pause
    task = await paused_lookup(api, pause)
    await api.indexer.execute("DELETE FROM campaigns WHERE id = 'camp_1'")
    await api.catch_up()
    pause.release.set()
    await task
    api.services.lookups.hooks.after_read = None

    envelope = await api.services.store.get(key)
    assert envelope is not None and envelope.is_tombstone
    entry = api.services.l1.get(key)
    assert entry is None or entry.value.body is None
    for _ in range(2):
        response = await api.get("/v1/campaigns/camp_1")
        assert response.status == 404


async def test_negative_lookup_leaves_a_tombstone_at_the_watermark(api: ApiHarness) -> None:
    key = api.services.store.layout.object_key(P, ObjectKind.CAMPAIGN, "camp_9")
    assert (await api.get("/v1/campaigns/camp_9")).status == 404
    envelope = await api.services.store.get(key)
    watermark = api.services.watermark.value
    assert envelope is not None and envelope.is_tombstone
    assert watermark is not None and envelope.version <= watermark
    # A later insert has a higher LSN: the indexer's write replaces the tombstone.
    await api.indexer.execute(
        "INSERT INTO campaigns (id, project_id, name, type) "
        "VALUES ('camp_9', 'proj_a', 'Late', 'GIFT_VOUCHERS')"
    )
    await api.catch_up()
    body = await (await api.get("/v1/campaigns/camp_9")).json()
    assert body["name"] == "Late"


async def test_concurrent_cold_lookups_share_one_elasticsearch_request(api: ApiHarness) -> None:
    key = await seed_campaign(api)
    await api.services.redis.delete(key)
    services = api.services
    gate = asyncio.Event()

    async def hold(hook_key: str) -> None:
        if hook_key == key:
            await gate.wait()

    services.lookups.hooks.before_source = hold
    gets_before = services.search.requests["get"]
    waits_before = services.lookups.flights.waits
    tasks = [asyncio.create_task(api.get("/v1/campaigns/camp_1")) for _ in range(500)]
    try:
        # Every lookup has joined the one read held at the gate.
        async with asyncio.timeout(60):
            while True:
                if services.lookups.flights.waits - waits_before >= 499:
                    break
                await asyncio.sleep(0.01)
    finally:
        gate.set()
    responses = await asyncio.gather(*tasks)
    bodies = [await response.json() for response in responses]
    assert all(response.status == 200 for response in responses)
    assert all(body["name"] == "First" for body in bodies)
    assert services.search.requests["get"] - gets_before == 1
    metrics = await (await api.get("/metrics", key=None)).text()
    assert "readapi_singleflight_waits_total" in metrics
