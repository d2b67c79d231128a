"""The lookup of a voucher (by code or id) and of a customer (by id or source_id) on an L1
miss: one Redis call answers it (``cache/lua/lookup.lua``), from the objects stored ready to
serve, and what speed must not break still holds: a stale alias, a tombstone, a code that is
another voucher's id, a read racing a newer write."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from redis.asyncio.client import Pipeline

from cache.readmodel.documents import DOCUMENT_SCHEMA, AliasKind
from cache.records import Envelope, VersionedWrite
from cache.types import ObjectKind
from readapi.lookups import CachedObject
from tests.fixtures.readapi import ApiHarness
from tests.fixtures.readapi import api_fixture as api_fixture  # the "api" fixture

pytestmark = pytest.mark.services

P = "proj_a"
WAIT = 10.0


async def seed(api: ApiHarness) -> None:
    h = api.indexer
    await h.execute(
        "INSERT INTO customers (id, project_id, source_id, name) VALUES "
        "('cust_1', 'proj_a', 'crm-1', 'Ann'), ('cust_2', 'proj_a', 'cust_1', 'Bo')"
    )
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, type, active, redeemed_quantity, metadata)"
        " VALUES ('v_1', 'proj_a', 'SUMMER-1', 'DISCOUNT_VOUCHER', true, 0, '{\"n\": 1}'),"
        # Its code is another voucher's id: a code match wins.
        " ('v_2', 'proj_a', 'v_1', 'DISCOUNT_VOUCHER', true, 0, '{}')"
    )
    await api.catch_up()


@contextmanager
def counted_redis_calls(api: ApiHarness) -> Iterator[list[tuple[Any, ...]]]:
    """Every round trip the API's Redis client makes meanwhile: a command's arguments, or
    the names of a pipeline's commands."""
    redis = api.services.store.redis
    calls: list[tuple[Any, ...]] = []
    send = redis.execute_command
    send_pipeline = Pipeline.execute

    async def counting(*args: Any, **options: Any) -> Any:
        calls.append(args)
        return await send(*args, **options)

    async def counting_pipeline(self: Pipeline, raise_on_error: bool = True) -> Any:
        if self.connection_pool is redis.connection_pool:
            calls.append(tuple(args[0] for args, _ in self.command_stack))
        return await send_pipeline(self, raise_on_error)

    redis.execute_command = counting  # type: ignore[method-assign]
    Pipeline.execute = counting_pipeline  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del redis.execute_command
        Pipeline.execute = send_pipeline  # type: ignore[method-assign]


async def voucher(api: ApiHarness, code: str) -> CachedObject:
    keys = api.services.store.layout.project_keys(P)
    return await api.services.lookups.voucher(keys, P, code, fresh=False)


async def customer(api: ApiHarness, value: str) -> CachedObject:
    keys = api.services.store.layout.project_keys(P)
    return await api.services.lookups.customer(keys, P, value, fresh=False)


def field(found: CachedObject, name: str) -> Any:
    assert found.body is not None
    return orjson.loads(found.body)[name]


async def test_an_l1_miss_is_one_redis_call(api: ApiHarness) -> None:
    await seed(api)
    api.services.l1.flush()
    with counted_redis_calls(api) as calls:
        found = await voucher(api, "SUMMER-1")
    assert field(found, "id") == "v_1" and found.object_id == "v_1"
    assert [call[0] for call in calls] == ["EVALSHA"]
    # The code that is another voucher's id: the code wins, in the same one call.
    api.services.l1.flush()
    with counted_redis_calls(api) as calls:
        assert field(await voucher(api, "v_1"), "code") == "v_1"
    assert len(calls) == 1
    # A customer by id; by source_id once Redis knows the value is no customer's id (the
    # first such lookup asks Elasticsearch and leaves that absence in Redis).
    api.services.l1.flush()
    with counted_redis_calls(api) as calls:
        assert field(await customer(api, "cust_2"), "source_id") == "cust_1"
    assert len(calls) == 1
    assert field(await customer(api, "crm-1"), "id") == "cust_1"
    api.services.l1.flush()
    with counted_redis_calls(api) as calls:
        found = await customer(api, "crm-1")
    assert field(found, "id") == "cust_1" and found.object_id == "cust_1"
    assert len(calls) == 1
    # An id wins over a source_id.
    assert field(await customer(api, "cust_1"), "id") == "cust_1"
    # Then L1 answers alone.
    await voucher(api, "SUMMER-1")
    with counted_redis_calls(api) as calls:
        assert field(await voucher(api, "SUMMER-1"), "id") == "v_1"
        assert field(await customer(api, "crm-1"), "id") == "cust_1"
    assert calls == []


async def test_the_body_served_is_the_stored_bytes(api: ApiHarness) -> None:
    await seed(api)
    key = api.services.store.layout.object_key(P, ObjectKind.VOUCHER, "v_1")
    stored = await api.services.store.redis.get(key)
    api.services.l1.flush()
    response = await api.get("/v1/vouchers/SUMMER-1")
    assert response.status == 200
    body = await response.read()
    assert stored is not None and body in stored  # the JSON inside the envelope, as is
    assert orjson.loads(body)["metadata"] == {"n": 1}


async def test_a_stale_alias_is_never_served(api: ApiHarness) -> None:
    await seed(api)
    store = api.services.store
    # An alias newer than anything, naming a voucher whose code is something else.
    stale = store.layout.alias_key(P, AliasKind.VOUCHER_CODE, "OLD-CODE")
    await store.apply_writes([VersionedWrite(stale, Envelope(2**62, DOCUMENT_SCHEMA, "v_1"))])
    api.services.l1.flush()
    for _ in range(2):  # from Redis, then with L1 holding the alias
        assert (await voucher(api, "OLD-CODE")).body is None
        assert (await api.get("/v1/vouchers/OLD-CODE")).status == 404
    assert field(await voucher(api, "SUMMER-1"), "id") == "v_1"
    # A code moved to another voucher: the old alias now names an object without it.
    await api.indexer.execute("UPDATE vouchers SET code = 'AUTUMN-1' WHERE id = 'v_1'")
    await api.catch_up()
    api.services.l1.flush()
    assert (await voucher(api, "SUMMER-1")).body is None
    assert field(await voucher(api, "AUTUMN-1"), "id") == "v_1"


async def test_tombstones_answer_absent_in_one_call(api: ApiHarness) -> None:
    await seed(api)
    await api.indexer.execute("DELETE FROM vouchers WHERE id = 'v_2'")
    await api.indexer.execute("DELETE FROM customers WHERE id = 'cust_2'")
    await api.catch_up()
    api.services.l1.flush()
    # "v_1" is no longer a code (a tombstoned alias): the id decides, in the same call.
    with counted_redis_calls(api) as calls:
        assert field(await voucher(api, "v_1"), "code") == "SUMMER-1"
    assert len(calls) == 1
    # A deleted id: whether "cust_2" is another customer's source_id is asked once, and
    # that absence is left in Redis; then one call answers.
    assert (await customer(api, "cust_2")).body is None
    api.services.l1.flush()
    with counted_redis_calls(api) as calls:
        assert (await customer(api, "cust_2")).body is None
    assert len(calls) == 1
    for path in ("/v1/vouchers/v_2", "/v1/customers/cust_2"):
        assert (await api.get(path)).status == 404
    await api.indexer.execute("DELETE FROM vouchers WHERE id = 'v_1'")
    await api.catch_up()
    for _ in range(2):
        assert (await api.get("/v1/vouchers/SUMMER-1")).status == 404
        assert (await api.get("/v1/vouchers/v_1")).status == 404


async def test_a_read_racing_a_newer_write_is_not_installed_in_l1(api: ApiHarness) -> None:
    await seed(api)
    layout = api.services.store.layout
    alias_key = layout.alias_key(P, AliasKind.VOUCHER_CODE, "SUMMER-1")
    object_key = layout.object_key(P, ObjectKind.VOUCHER, "v_1")
    reached, release = asyncio.Event(), asyncio.Event()

    async def pause(key: str) -> None:
        if key == alias_key:
            reached.set()
            await release.wait()

    api.services.l1.flush()
    api.services.lookups.hooks.after_read = pause
    task = asyncio.create_task(voucher(api, "SUMMER-1"))
    try:
        async with asyncio.timeout(WAIT):
            await reached.wait()
        await api.indexer.execute("UPDATE vouchers SET metadata = '{\"n\": 2}' WHERE id = 'v_1'")
        await api.catch_up()
    finally:
        release.set()
        api.services.lookups.hooks.after_read = None
    assert field(await task, "metadata") == {"n": 1}  # read before the write: valid then
    entry = api.services.l1.get(object_key)
    assert entry is None or b'"n":2' in entry.value.body
    assert field(await voucher(api, "SUMMER-1"), "metadata") == {"n": 2}
    body = await (await api.get("/v1/vouchers/SUMMER-1")).json()
    assert body["metadata"] == {"n": 2}
