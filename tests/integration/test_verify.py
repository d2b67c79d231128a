"""``indexer verify`` finds what differs between Postgres and the sinks, and ``--repair``
rewrites it with versions that a later change still beats."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import pytest

from cache.readmodel.documents import DOCUMENT_SCHEMA
from cache.readmodel.indices import Field
from cache.records import ApiKeyRecord, Envelope, VersionedWrite
from cache.types import ObjectKind
from indexer.documents import Document
from indexer.verify import Verifier
from indexer.verify_report import VerifyScope
from tests.fixtures.indexer import IndexerHarness
from tests.integration.test_indexer_changes import seed_base

pytestmark = pytest.mark.services

P = "proj_a"
# Ann (cust_1 of ``seed_base``) is gold.
GOLD = (
    "INSERT INTO segments (id, project_id, name, type, filter) VALUES ('seg_gold', 'proj_a',"
    ' \'Gold\', \'auto-update\', \'{"metadata.tier": {"conditions": {"$is": "gold"}}}\')'
)


async def _index_of(h: IndexerHarness, kind: str) -> str:
    aliases = await h.clients.elastic.indices.get_alias(name=f"{h.settings.es_index_prefix}{kind}s")
    return next(iter(aliases))


async def _damage(h: IndexerHarness) -> None:
    """One search document corrupted (same version), one Redis object deleted, one object
    in both sinks that Postgres never had."""
    stored = await h.clients.elastic.get(index=f"{h.settings.es_index_prefix}vouchers", id="v_1")
    source = dict(stored["_source"])
    source[Field.DOC] = {**source[Field.DOC], "code": "FORGED"}
    await h.clients.elastic.index(
        index=await _index_of(h, "voucher"),
        id="v_1",
        document=source,
        version=stored["_version"],
        version_type="external_gte",
        refresh=True,
    )
    store = h.clients.cache.store
    await store.redis.delete(store.layout.object_key(P, ObjectKind.CUSTOMER, "cust_2"))
    ghost = Document(ObjectKind.VOUCHER, P, "v_ghost", {"id": "v_ghost", "code": "GHOST"}, {})
    watermark = await h.clients.cache.get_watermark()
    assert watermark is not None
    await h.clients.search.apply([(ghost, watermark)], [])
    await store.apply_writes(
        [
            VersionedWrite(
                store.layout.object_key(P, ObjectKind.VOUCHER, "v_ghost"),
                Envelope(watermark, DOCUMENT_SCHEMA, ghost.body),
            )
        ]
    )


def _cli_env(h: IndexerHarness) -> dict[str, str]:
    return {
        **os.environ,
        "LOYALTY_PG_DSN": h.settings.pg_dsn,
        "LOYALTY_ES_INDEX_PREFIX": h.settings.es_index_prefix,
        "LOYALTY_REDIS_KEY_PREFIX": h.settings.redis_key_prefix,
        "LOYALTY_SLOT_NAME": h.settings.slot_name,
        "LOYALTY_PUBLICATION": h.settings.publication,
    }


async def _cli(h: IndexerHarness, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "indexer.cli",
        "verify",
        "--settle",
        "0.2",
        *args,
        env=_cli_env(h),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_verify_reports_a_corrupted_a_deleted_and_an_extra_object(
    harness: IndexerHarness,
) -> None:
    await seed_base(harness)
    await harness.catch_up()
    clean = await harness.verify()
    assert clean.ok, clean.differences
    assert clean.checked[ObjectKind.VOUCHER] == 3 and clean.checked[ObjectKind.CUSTOMER] == 2

    await _damage(harness)
    verifier = Verifier(harness.db, harness.clients.search, harness.clients.cache)
    report = await verifier.run(VerifyScope())

    found = {
        (line.split(" (")[0], line.split(": ", 1)[1].split(":")[0]) for line in report.differences
    }
    assert found == {
        ("voucher v_1", "different in elasticsearch"),
        ("customer cust_2", "missing in redis"),
        ("voucher v_ghost", "extra in elasticsearch"),
        ("voucher v_ghost", "extra in redis"),
    }, report.differences
    voucher = report.tallies[ObjectKind.VOUCHER]
    assert (voucher.different, voucher.extra, voucher.missing) == (1, 2, 0)
    assert report.tallies[ObjectKind.CUSTOMER].missing == 1
    # The corrupted document is named with both digests of its API object.
    line = next(line for line in report.differences if line.startswith("voucher v_1 "))
    assert "expected " in line and ", found " in line


async def test_verify_command_repairs_and_a_second_run_is_clean(harness: IndexerHarness) -> None:
    await seed_base(harness)
    await harness.catch_up()
    await _damage(harness)

    status, out, err = await _cli(harness)
    assert status == 1, (out, err)
    assert "4 differences" in out and "v_ghost" in out and "cust_2" in out, out

    status, out, err = await _cli(harness, "--repair")
    assert status == 1, (out, err)
    assert "repaired" in out.splitlines()[0], out

    status, out, err = await _cli(harness)
    assert (status, out.splitlines()[-1]) == (0, "verify: clean"), (out, err)
    status, out, err = await _cli(harness, "--json", "--kind", "voucher")
    report = json.loads(out)
    assert (status, report["ok"], report["kinds"]["voucher"]["checked"]) == (0, True, 3), err
    assert await harness.redis_doc("voucher", P, "v_ghost") is None
    assert await harness.es_doc("voucher", "v_ghost") is None
    es_voucher = await harness.es_doc("voucher", "v_1")
    assert es_voucher is not None and es_voucher["doc"]["code"] == "SUMMER-1"
    customer = await harness.redis_doc("customer", P, "cust_2")
    assert customer is not None and customer["name"] == "Bob"

    # The repair wrote at the watermark: the next change of the same objects still lands.
    await harness.execute("UPDATE customers SET name = 'Robert' WHERE id = 'cust_2'")
    await harness.execute("UPDATE vouchers SET code = 'SUMMER-ONE' WHERE id = 'v_1'")
    await harness.catch_up()
    customer = await harness.redis_doc("customer", P, "cust_2")
    assert customer is not None and customer["name"] == "Robert"
    es_voucher = await harness.es_doc("voucher", "v_1")
    assert es_voucher is not None and es_voucher["doc"]["code"] == "SUMMER-ONE"
    assert (await harness.verify()).ok


async def test_a_change_in_flight_is_not_a_difference(harness: IndexerHarness) -> None:
    await seed_base(harness)
    await harness.catch_up()
    await harness.execute("UPDATE customers SET name = 'Anna' WHERE id = 'cust_1'")

    # The indexer applies the change between the two looks: nothing is reported.
    class Stepping(Verifier):
        async def _between_looks(self) -> None:
            await harness.catch_up()

    report = await Stepping(harness.db, harness.clients.search, harness.clients.cache).run(
        VerifyScope()
    )
    assert report.ok, report.differences

    # Left unapplied, the same change is a difference (the sinks are behind).
    await harness.execute("UPDATE customers SET name = 'Annie' WHERE id = 'cust_1'")
    report = await Verifier(harness.db, harness.clients.search, harness.clients.cache).run(
        VerifyScope()
    )
    assert not report.ok
    assert report.tallies[ObjectKind.CUSTOMER].different >= 1


async def test_a_repair_never_overwrites_a_newer_change(harness: IndexerHarness) -> None:
    """The indexer applies a newer change to the damaged objects after the repair read the
    source and before it writes: the repair, versioned at the watermark read before its
    source read, loses to it in both sinks."""
    await seed_base(harness)
    await harness.catch_up()
    store = harness.clients.cache.store
    await store.redis.delete(store.layout.object_key(P, ObjectKind.CUSTOMER, "cust_2"))
    await harness.clients.elastic.delete(
        index=f"{harness.settings.es_index_prefix}customers", id="cust_2", refresh=True
    )

    class Racing(Verifier):
        async def _repair_findings(self, *args: Any) -> None:
            await harness.execute("UPDATE customers SET name = 'Bobby' WHERE id = 'cust_2'")
            await harness.catch_up()
            await super()._repair_findings(*args)

    report = await Racing(
        harness.db, harness.clients.search, harness.clients.cache, repair=True
    ).run(VerifyScope())
    assert report.tallies[ObjectKind.CUSTOMER].missing == 2
    es_customer = await harness.es_doc("customer", "cust_2")
    assert es_customer is not None and es_customer["doc"]["name"] == "Bobby"
    customer = await harness.redis_doc("customer", P, "cust_2")
    assert customer is not None and customer["name"] == "Bobby"
    assert (await harness.verify()).ok


async def test_scope_by_project_kind_and_sample(harness: IndexerHarness) -> None:
    await seed_base(harness)
    await harness.execute(
        "INSERT INTO customers (id, project_id, source_id, name) VALUES ('cust_b', 'proj_b', "
        "'crm-b', 'Bea')"
    )
    await harness.catch_up()
    await _damage(harness)
    clients = harness.clients

    other = await Verifier(harness.db, clients.search, clients.cache).run(
        VerifyScope(project_id="proj_b")
    )
    assert other.ok, other.differences
    assert other.checked[ObjectKind.CUSTOMER] == 1 and other.checked[ObjectKind.VOUCHER] == 0

    customers = await Verifier(harness.db, clients.search, clients.cache).run(
        VerifyScope(kinds=(ObjectKind.CUSTOMER,), api_keys=False)
    )
    assert [line.split(":")[0] for line in customers.differences] == [
        "customer cust_2 (project proj_a)"
    ]

    # A sample as large as the table checks every row, and looks for no extra object.
    sampled = await Verifier(harness.db, clients.search, clients.cache).run(
        VerifyScope(kinds=(ObjectKind.VOUCHER,), sample=50, api_keys=False)
    )
    assert sampled.checked[ObjectKind.VOUCHER] == 3
    assert {line.split(" (")[0] for line in sampled.differences} == {"voucher v_1"}


async def test_membership_and_alias_damage_is_found_and_repaired(harness: IndexerHarness) -> None:
    await seed_base(harness)
    await harness.execute(GOLD)
    await harness.catch_up()
    assert (await harness.verify()).ok
    store = harness.clients.cache.store
    layout = store.layout
    await store.redis.delete(layout.membership_key(P, "cust_1"))
    await store.redis.delete(layout.alias_key(P, "voucher_code", "SUMMER-1"))

    report = await Verifier(harness.db, harness.clients.search, harness.clients.cache).run(
        VerifyScope()
    )
    parts = {
        (line.split(" (")[0], line.split(": ", 1)[1].split(":")[0]) for line in report.differences
    }
    assert parts == {
        ("customer cust_1", "different in redis membership"),
        ("voucher v_1", "missing in redis alias"),
    }, report.differences

    repaired = await Verifier(
        harness.db, harness.clients.search, harness.clients.cache, repair=True
    ).run(VerifyScope())
    assert repaired.tallies[ObjectKind.CUSTOMER].repaired == 1
    assert repaired.tallies[ObjectKind.VOUCHER].repaired == 1
    # The record deleted by hand had left its segment counted; rewriting the record counted
    # it again, and the counter check (last, once the project is quiet) set it right.
    assert repaired.tallies[ObjectKind.SEGMENT].repaired == 1
    after = await harness.verify()
    assert after.ok, after.differences
    record = await harness.clients.cache.membership.membership(P, "cust_1")
    assert record is not None and record[1] == frozenset({"seg_gold"})


async def test_an_api_key_left_live_for_a_deleted_app_is_found_and_removed(
    harness: IndexerHarness,
) -> None:
    """A key record Postgres no longer backs would still authenticate: verify reports it and
    --repair leaves a tombstone; a changed rate limit is found and rewritten too."""
    await seed_base(harness)
    await harness.execute(
        "INSERT INTO api_keys (id, project_id, token_sha256, rate_limit_per_minute) VALUES "
        "('app_1', 'proj_a', repeat('a', 64), 60)"
    )
    await harness.catch_up()
    store = harness.clients.cache.store
    watermark = await harness.clients.cache.get_watermark()
    assert watermark is not None
    await store.put_api_key(ApiKeyRecord("app_gone", P, "b" * 64, None, False), watermark)
    await store.put_api_key(ApiKeyRecord("app_1", P, "a" * 64, 6000, False), watermark)

    report = await Verifier(harness.db, harness.clients.search, harness.clients.cache).run(
        VerifyScope()
    )
    assert sorted(line.split(":")[0] for line in report.differences) == [
        "api_key app_1 (project proj_a)",
        "api_key app_gone (project proj_a)",
    ], report.differences
    assert (report.tallies["api_key"].different, report.tallies["api_key"].extra) == (1, 1)

    await Verifier(harness.db, harness.clients.search, harness.clients.cache, repair=True).run(
        VerifyScope()
    )
    assert await store.get_api_key("app_gone") is None
    record = await store.get_api_key("app_1")
    assert record is not None and record.rate_limit_per_minute == 60
    assert (await harness.verify()).ok
