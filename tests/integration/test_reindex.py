"""``indexer reindex``: a new generation built beside the serving one while readers and a
writer go on, caught up through its own slot and switched at once; resumable after SIGKILL
or SIGTERM, abortable; copied from the index; one tenant rebuilt in place."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import re
import signal
import sys
from collections import Counter
from typing import Any

import pytest

from cache.readmodel.indices import Field
from cache.readmodel.keys import KeyLayout
from cache.types import ObjectKind
from indexer.commands import gather_status
from indexer.reindex import (
    Outcome,
    Reindexer,
    ReindexError,
    ReindexPlan,
    catch_up_slot_name,
)
from indexer.reindex_state import CheckpointStore, ReindexState, Source
from indexer.slot import slot_exists
from tests.fixtures.indexer import IndexerHarness
from tests.fixtures.readapi import ApiHarness
from tests.fixtures.readapi import api_fixture as api_fixture  # the "api" fixture
from tests.integration.test_verify import _damage

pytestmark = pytest.mark.services

P = "proj_a"
VOUCHERS = 400
CUSTOMERS = 200
WAIT = 60.0


async def seed_many(
    h: IndexerHarness, vouchers: int = VOUCHERS, customers: int = CUSTOMERS
) -> None:
    """A campaign, ``vouchers`` vouchers, ``customers`` customers (every third one gold) and
    an auto-update segment of the gold ones, in proj_a (which must exist)."""
    await h.execute(
        "INSERT INTO campaigns (id, project_id, name, type) "
        "VALUES ('camp_1', 'proj_a', 'Summer', 'DISCOUNT_COUPONS')"
    )
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, campaign_id, type) "
        "SELECT 'v_' || lpad(i::text, 6, '0'), 'proj_a', 'CODE-' || i, 'camp_1', "
        "'DISCOUNT_VOUCHER' FROM generate_series(1, %s) i",
        (vouchers,),
    )
    await h.execute(
        "INSERT INTO customers (id, project_id, source_id, name, metadata) "
        "SELECT 'c_' || lpad(i::text, 6, '0'), 'proj_a', 'crm-' || i, 'Customer ' || i, "
        "jsonb_build_object('tier', CASE WHEN i %% 3 = 0 THEN 'gold' ELSE 'silver' END) "
        "FROM generate_series(1, %s) i",
        (customers,),
    )
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type, filter) VALUES ('seg_gold', 'proj_a',"
        ' \'Gold\', \'auto-update\', \'{"metadata.tier": {"conditions": {"$is": "gold"}}}\')'
    )


async def _serving_indices(h: IndexerHarness) -> dict[str, str]:
    """Alias -> the index behind it, for every alias of this test's prefix."""
    found = await h.clients.elastic.indices.get_alias(name=f"{h.settings.es_index_prefix}*")
    return {alias: index for index, body in found.items() for alias in body["aliases"]}


async def _all_indices(h: IndexerHarness) -> set[str]:
    found = await h.clients.elastic.indices.get(
        index=f"{h.settings.es_index_prefix}*", expand_wildcards="all"
    )
    return set(found)


async def _settled_verify(h: IndexerHarness) -> None:
    await h.catch_up()
    await h.clients.search.refresh()
    report = await h.verify()
    assert report.ok, report.differences


class _Stepper:
    """The running indexer: steps in a loop until stopped, as ``indexer run`` does."""

    def __init__(self, h: IndexerHarness) -> None:
        self._h = h
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while not self._stop.is_set():
            await self._h.indexer.step()
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._stop.set()
        await self.task


class _Reader:
    """Lookups and lists of objects that exist throughout, through the HTTP API."""

    def __init__(self, api: ApiHarness, vouchers: int, customers: int) -> None:
        self._api = api
        self._vouchers = vouchers
        self._customers = customers
        self.statuses: Counter[int] = Counter()
        self.problems: list[str] = []
        self.requests = 0
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._loop())

    async def _check(self, path: str, **params: str) -> dict[str, Any] | None:
        response = await self._api.get(path, **params)
        self.requests += 1
        self.statuses[response.status] += 1
        if response.status != 200:
            self.problems.append(f"{path} {params}: {response.status} {await response.text()}")
            return None
        body: dict[str, Any] = await response.json()
        return body

    async def _loop(self) -> None:
        rng = random.Random(7)
        while not self._stop.is_set():
            number = rng.randint(1, self._vouchers)
            await self._check(f"/v1/vouchers/CODE-{number}")
            await self._check(f"/v1/customers/c_{rng.randint(1, self._customers):06d}")
            await self._check("/v1/campaigns/camp_1")
            await self._check("/v1/segments/seg_gold")
            for path, total in (
                ("/v1/vouchers", self._vouchers),
                ("/v1/customers", self._customers),
            ):
                body = await self._check(path, limit="5")
                if body is not None and body["total"] < total:
                    self.problems.append(f"{path}: total {body['total']} < {total}")
            gold = await self._check("/v1/customers", segment_id="seg_gold", limit="1")
            if gold is not None and gold["total"] < self._customers // 3:
                self.problems.append(f"gold customers: total {gold['total']}")

    async def stop(self) -> None:
        self._stop.set()
        await self.task


class _Writer:
    """Commits changes to existing objects and new vouchers until stopped."""

    def __init__(self, h: IndexerHarness) -> None:
        self._h = h
        self.commits = 0
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        rng = random.Random(11)
        while not self._stop.is_set():
            self.commits += 1
            n = self.commits
            await self._h.execute(
                "UPDATE vouchers SET metadata = jsonb_build_object('n', %s::int) WHERE id = %s",
                (n, f"v_{rng.randint(1, VOUCHERS):06d}"),
            )
            await self._h.execute(
                "UPDATE customers SET name = %s WHERE id = %s",
                (f"Renamed {n}", f"c_{rng.randint(1, CUSTOMERS):06d}"),
            )
            await self._h.execute(
                "INSERT INTO vouchers (id, project_id, code, campaign_id, type) "
                "VALUES (%s, 'proj_a', %s, 'camp_1', 'DISCOUNT_VOUCHER')",
                (f"w_{n:06d}", f"NEW-{n}"),
            )
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop.set()
        await self.task


def _reindexer(h: IndexerHarness, **options: Any) -> Reindexer:
    settings = dataclasses.replace(h.settings, snapshot_chunk_rows=50, batch_changes=200)
    return Reindexer.for_settings(
        settings, h.clients.search, h.clients.cache, h.clients.redis, progress=False, **options
    )


async def test_full_reindex_while_reading_and_writing(api: ApiHarness) -> None:
    h = api.indexer
    await seed_many(h)
    # The reader sends thousands of requests a minute: far over the default limit.
    await h.execute("UPDATE api_keys SET rate_limit_per_minute = 10000000 WHERE id = 'app_a'")
    await api.catch_up()
    await h.clients.search.refresh()  # lists see the seed from the first request on
    before = await _serving_indices(h)
    stepper = _Stepper(h)
    reader = _Reader(api, VOUCHERS, CUSTOMERS)
    writer = _Writer(h)
    reindexer = _reindexer(h)
    pages = 0

    async def during_load(state: ReindexState) -> None:
        nonlocal pages
        pages += 1
        if pages == 3:
            # The gold segment changes during the load: customers the reindex already
            # loaded keep the old membership unless the catch-up rebuilds them.
            await h.execute(
                "UPDATE segments SET filter = "
                '\'{"metadata.tier": {"conditions": {"$in": ["gold", "silver"]}}}\' '
                "WHERE id = 'seg_gold'"
            )
        await asyncio.sleep(0.02)  # readers and the writer run between pages

    reindexer.after_page = during_load
    try:
        result = await reindexer.start(ReindexPlan())
        await asyncio.sleep(0.5)  # readers go on against the new generation
    finally:
        await writer.stop()
        await reader.stop()
        await stepper.stop()

    assert result.outcome is Outcome.COMPLETE
    assert pages >= (VOUCHERS + CUSTOMERS) // 50
    assert writer.commits > 0 and reader.requests > 100
    assert not reader.problems, reader.problems[:5]
    assert set(reader.statuses) == {200}
    after = await _serving_indices(h)
    assert set(after) == set(before)
    for alias, index in after.items():
        assert index != before[alias] and index.endswith(f"_v{result.generation}")
    assert await _all_indices(h) == set(after.values())  # the old generation is gone
    assert not await slot_exists(h.db, catch_up_slot_name(h.settings))
    checkpoints = CheckpointStore(
        h.clients.redis, KeyLayout(h.settings.redis_key_prefix).reindex_key
    )
    assert await checkpoints.load() is None
    await _settled_verify(h)
    # Every customer is a member after the filter change, whether the reindex loaded it
    # before or after the change.
    gold = await h.clients.elastic.count(
        index=f"{h.settings.es_index_prefix}customers",
        query={"term": {Field.SEGMENT_IDS: "seg_gold"}},
    )
    assert gold["count"] == CUSTOMERS


async def test_reindex_from_the_index_copies_every_document_with_its_version(
    harness: IndexerHarness,
) -> None:
    await harness.execute("INSERT INTO projects (id, name) VALUES ('proj_a', 'A')")
    await seed_many(harness, vouchers=120, customers=60)
    await harness.catch_up()
    await harness.execute("UPDATE vouchers SET active = false WHERE id = 'v_000007'")
    await harness.catch_up()
    old = await harness.clients.elastic.get(
        index=f"{harness.settings.es_index_prefix}vouchers", id="v_000007"
    )
    stepper = _Stepper(harness)
    try:
        result = await _reindexer(harness).start(
            ReindexPlan(kinds=(ObjectKind.VOUCHER,), source=Source.INDEX)
        )
    finally:
        await stepper.stop()
    assert result.outcome is Outcome.COMPLETE and result.rows_read == 120
    serving = await _serving_indices(harness)
    assert serving[f"{harness.settings.es_index_prefix}vouchers"].endswith(f"_v{result.generation}")
    assert not serving[f"{harness.settings.es_index_prefix}customers"].endswith(
        f"_v{result.generation}"
    )
    new = await harness.clients.elastic.get(
        index=f"{harness.settings.es_index_prefix}vouchers", id="v_000007"
    )
    assert new["_version"] == old["_version"] and new["_source"] == old["_source"]
    await _settled_verify(harness)


async def test_a_project_is_rebuilt_in_place(harness: IndexerHarness) -> None:
    from tests.integration.test_indexer_changes import seed_base

    await seed_base(harness)
    await harness.execute(
        "INSERT INTO vouchers (id, project_id, code, campaign_id, type) "
        "VALUES ('v_b', 'proj_b', 'B-1', NULL, 'DISCOUNT_VOUCHER')"
    )
    await harness.catch_up()
    before = await _serving_indices(harness)
    await _damage(harness)  # v_1 forged, cust_2 gone from Redis, v_ghost in both sinks
    written, _ = await _reindexer(harness).rebuild_project(
        P, (ObjectKind.VOUCHER, ObjectKind.CUSTOMER), settle_seconds=0.1
    )
    assert written == 5  # three vouchers, two customers
    assert await _serving_indices(harness) == before  # in place: no new generation
    assert await harness.redis_doc("customer", P, "cust_2") is not None
    await harness.clients.search.refresh()
    assert await harness.es_doc("voucher", "v_ghost") is None
    doc = await harness.es_doc("voucher", "v_1")
    assert doc is not None and doc[Field.DOC]["code"] == "SUMMER-1"
    await _settled_verify(harness)


async def test_a_second_reindex_is_refused_while_one_is_in_progress(
    harness: IndexerHarness,
) -> None:
    await harness.execute("INSERT INTO projects (id, name) VALUES ('proj_a', 'A')")
    await seed_many(harness, vouchers=120, customers=30)
    await harness.catch_up()
    stop = asyncio.Event()
    reindexer = _reindexer(harness, stop=stop)

    async def pause(state: ReindexState) -> None:
        stop.set()  # as SIGTERM does

    reindexer.after_page = pause
    paused = await reindexer.start(ReindexPlan())
    assert paused.outcome is Outcome.PAUSED
    with pytest.raises(ReindexError, match="in progress"):
        await _reindexer(harness).start(ReindexPlan())
    removed = await _reindexer(harness).abort()
    assert any(name.endswith(f"_v{paused.generation}") for name in removed)
    assert f"slot {catch_up_slot_name(harness.settings)}" in removed
    with pytest.raises(ReindexError, match="no reindex to resume"):
        await _reindexer(harness).resume()


# -- the command, killed and signalled --------------------------------------------------------

BIG = 6000


def _env(h: IndexerHarness) -> dict[str, str]:
    return {
        **os.environ,
        "LOYALTY_PG_DSN": h.settings.pg_dsn,
        "LOYALTY_ES_INDEX_PREFIX": h.settings.es_index_prefix,
        "LOYALTY_REDIS_KEY_PREFIX": h.settings.redis_key_prefix,
        "LOYALTY_SLOT_NAME": h.settings.slot_name,
        "LOYALTY_PUBLICATION": h.settings.publication,
        "LOYALTY_REINDEX_METRICS_PORT": "0",
    }


async def _start(h: IndexerHarness, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "indexer.cli",
        "reindex",
        *args,
        env=_env(h),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _finish(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(WAIT * 3):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _checkpoint_after(h: IndexerHarness, rows: int) -> ReindexState:
    """Wait until the running reindex checkpointed at least ``rows`` rows."""
    store = CheckpointStore(h.clients.redis, KeyLayout(h.settings.redis_key_prefix).reindex_key)
    async with asyncio.timeout(WAIT):
        while True:
            state = await store.load()
            if state is not None and state.rows_done >= rows:
                return state
            await asyncio.sleep(0.05)


async def _seed_big(h: IndexerHarness) -> None:
    await h.execute("INSERT INTO projects (id, name) VALUES ('proj_a', 'A')")
    await seed_many(h, vouchers=BIG, customers=100)
    await h.catch_up()


async def test_a_reindex_killed_halfway_resumes_from_its_checkpoint(
    harness: IndexerHarness,
) -> None:
    await _seed_big(harness)
    # 2,000-row pages at 2,000 rows/s: the kill lands between pages, mid-table.
    process = await _start(harness, "--max-rows-per-second", "2000")
    reached = await _checkpoint_after(harness, 4000)
    process.kill()
    await process.wait()
    assert reached.stage == "vouchers"
    # A change committed while no reindex runs reaches the new generation on resume.
    await harness.execute("UPDATE vouchers SET metadata = '{\"late\": 1}' WHERE id = 'v_000010'")
    status, out, err = await _finish(await _start(harness, "--resume"))
    assert status == 0, err
    read, skipped = (
        int(n) for n in re.findall(r"(\d+) rows read by this run, (\d+) skipped", out)[0]
    )
    total = BIG + 100 + 2  # vouchers, customers, the campaign and the segment
    assert skipped >= 4000 and read < total and read + skipped >= total
    await _settled_verify(harness)
    doc = await harness.es_doc("voucher", "v_000010")
    assert doc is not None and doc[Field.DOC]["metadata"] == {"late": 1}


async def test_sigterm_pauses_a_reindex_and_abort_leaves_no_index_behind(
    harness: IndexerHarness,
) -> None:
    await _seed_big(harness)
    before = await _all_indices(harness)
    process = await _start(harness, "--kind", "voucher", "--max-rows-per-second", "2000")
    await _checkpoint_after(harness, 2000)
    process.send_signal(signal.SIGTERM)
    status, out, _ = await _finish(process)
    assert status == 3 and "--resume" in out
    assert len(await _all_indices(harness)) == len(before) + 1  # the half-built vouchers
    shown = (await gather_status(harness.settings))["reindex"]
    assert shown["phase"] == "loading" and shown["kinds"] == "voucher"
    assert shown["rows_done"] >= 2000 and shown["stage"] == "vouchers"

    status, _, err = await _finish(await _start(harness))
    assert status == 2 and "in progress" in err
    status, out, _ = await _finish(await _start(harness, "--abort"))
    assert status == 0 and "aborted" in out
    assert await _all_indices(harness) == before
    assert not await slot_exists(harness.db, catch_up_slot_name(harness.settings))
    status, _, err = await _finish(await _start(harness, "--resume"))
    assert status == 2 and "no reindex to resume" in err
    with contextlib.suppress(ProcessLookupError):
        process.kill()
