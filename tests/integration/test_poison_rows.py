"""Rows that cannot become a document never stop the indexer: values the contract can carry
are carried (timestamps beyond Python's range, docs/api.md §3), the others are quarantined
in ``loyalty_indexer.quarantine`` while every other change keeps flowing, and
``indexer quarantine retry`` indexes them once they build."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from cache.types import Lsn
from indexer.pgoutput import Transaction
from tests.fixtures.faults import REPO_ROOT, indexer_environment
from tests.fixtures.indexer import IndexerHarness
from tests.fixtures.readapi import ApiHarness
from tests.fixtures.readapi import api_fixture as api_fixture  # the "api" fixture

pytestmark = pytest.mark.services

CLI_TIMEOUT = 120


def deep_json(levels: int, leaf: str = "1") -> str:
    """A JSON object nested ``levels`` objects deep."""
    return '{"a":' * levels + leaf + "}" * levels


def deep_list(levels: int) -> str:
    return "[" * levels + "]" * levels


async def quarantine_cli(h: IndexerHarness, *args: str) -> subprocess.CompletedProcess[str]:
    """``indexer quarantine ...`` as a child process, with this test's settings."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "indexer.cli", "quarantine", *args],
        cwd=REPO_ROOT,
        env=indexer_environment(h.settings),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


async def quarantined(h: IndexerHarness) -> list[dict[str, Any]]:
    result = await quarantine_cli(h, "list", "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = orjson.loads(result.stdout)
    return rows


def quarantined_total(table: str) -> float:
    value = REGISTRY.get_sample_value("indexer_quarantined_rows_total", {"table": table})
    return value or 0.0


async def fresh(api: ApiHarness) -> dict[str, str]:
    """Catch up and return the header that makes a request see it (L1 bypassed)."""
    lsn = await api.catch_up()
    return {"X-Min-Watermark": str(Lsn(lsn))}


async def voucher_status(api: ApiHarness, code: str, headers: dict[str, str]) -> int:
    return (await api.get(f"/v1/vouchers/{code}", headers=headers)).status


# --- timestamps beyond Python's range are served in their documented form -------------------

OUT_OF_RANGE = [
    ("infinity", "infinity"),
    ("-infinity", "-infinity"),
    ("10000-01-01 00:00:00+00", "+10000-01-01T00:00:00.000000Z"),
    ("294276-12-31 23:59:59.999999+00", "+294276-12-31T23:59:59.999999Z"),
    ("0044-03-15 12:30:00.25+00 BC", "-0043-03-15T12:30:00.250000Z"),
    ("0001-12-31 23:00:00+00 BC", "0000-12-31T23:00:00.000000Z"),
    ("4714-11-24 00:00:00+00 BC", "-4713-11-24T00:00:00.000000Z"),
]


@pytest.mark.parametrize(("stored", "served"), OUT_OF_RANGE, ids=[s for s, _ in OUT_OF_RANGE])
async def test_out_of_range_timestamps_are_served_in_their_documented_form(
    api: ApiHarness, stored: str, served: str
) -> None:
    h = api.indexer
    await h.execute(
        "INSERT INTO campaigns (id, project_id, name, type, start_date, expiration_date)"
        " VALUES ('camp', 'proj_a', 'C', 'GIFT_VOUCHERS', %s, %s)",
        (stored, stored),
    )
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, type, campaign_id, expiration_date,"
        " created_at, updated_at) VALUES ('v_odd', 'proj_a', 'ODD', 'GIFT_VOUCHER', 'camp',"
        " %s, %s, %s)",
        (stored, stored, stored),
    )
    await h.execute(
        "INSERT INTO customers (id, project_id, source_id, created_at, updated_at)"
        " VALUES ('c_odd', 'proj_a', 'src-odd', %s, %s)",
        (stored, stored),
    )
    headers = await fresh(api)
    voucher = await (await api.get("/v1/vouchers/ODD", headers=headers)).json()
    assert voucher["expiration_date"] == served
    assert voucher["created_at"] == served and voucher["updated_at"] == served
    assert voucher["start_date"] is None
    campaign = await (await api.get("/v1/campaigns/camp", headers=headers)).json()
    assert (campaign["start_date"], campaign["expiration_date"]) == (served, served)
    customer = await (await api.get("/v1/customers/src-odd", headers=headers)).json()
    assert (customer["created_at"], customer["updated_at"]) == (served, served)
    listed = await (await api.get("/v1/vouchers", headers=headers)).json()
    assert [v["id"] for v in listed["vouchers"]] == ["v_odd"]
    assert listed["vouchers"][0]["created_at"] == served
    assert await quarantined(h) == []


async def test_lists_sort_and_filter_out_of_range_creation_times(api: ApiHarness) -> None:
    h = api.indexer
    created = {
        "c_inf": "infinity",
        "c_far": "10000-01-01 00:00:00+00",
        "c_now": "2024-05-01 10:00:00+00",
        "c_bc": "0044-03-15 00:00:00+00 BC",
        "c_ninf": "-infinity",
    }
    for customer_id, stamp in created.items():
        await h.execute(
            "INSERT INTO customers (id, project_id, created_at) VALUES (%s, 'proj_a', %s)",
            (customer_id, stamp),
        )
    headers = await fresh(api)
    listed = await (await api.get("/v1/customers", headers=headers)).json()
    assert [c["id"] for c in listed["customers"]] == list(created)
    after = await (
        await api.get("/v1/customers", headers=headers, **{"created_at[after]": "2024-01-01"})
    ).json()
    assert [c["id"] for c in after["customers"]] == ["c_inf", "c_far", "c_now"]
    before = await (
        await api.get("/v1/customers", headers=headers, **{"created_at[before]": "0001-01-01"})
    ).json()
    assert [c["id"] for c in before["customers"]] == ["c_bc", "c_ninf"]
    # Paging through the clamped sort values keeps every object exactly once.
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2"} | ({"starting_after": cursor} if cursor else {})
        page = await (await api.get("/v1/customers", headers=headers, **params)).json()
        seen.extend(c["id"] for c in page["customers"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(created)


async def test_an_update_to_infinity_keeps_the_batch_flowing(harness: IndexerHarness) -> None:
    h = harness
    await h.execute("INSERT INTO projects (id, name) VALUES ('p', 'P')")
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, type) VALUES ('v1', 'p', 'A', 'GIFT_VOUCHER')"
    )
    await h.catch_up()
    await h.execute("UPDATE vouchers SET expiration_date = 'infinity' WHERE id = 'v1'")
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, type) VALUES ('v2', 'p', 'B', 'GIFT_VOUCHER')"
    )
    await h.catch_up()
    assert (await h.redis_doc("voucher", "p", "v1"))["expiration_date"] == "infinity"
    assert (await h.redis_doc("voucher", "p", "v2"))["code"] == "B"
    report = await h.verify()
    assert report.ok, report.differences


# --- JSON nested too deep is quarantined, everything else flows ------------------------------

DEEP_CASES = [
    # (table, column, levels): beyond the limit of what the sinks can encode, and far beyond
    # what Python's recursive parsers follow (the change stream's decoder included).
    ("vouchers", "metadata", 300),
    ("vouchers", "discount", 1000),
    ("customers", "address", 300),
    ("customers", "metadata", 5000),
    ("segments", "filter", 300),
    ("segments", "filter", 1000),
    ("campaigns", "metadata", 2000),
]

INSERTS = {
    "vouchers": "INSERT INTO vouchers (id, project_id, code, type, {column}) "
    "VALUES (%s, 'proj_a', %s, 'GIFT_VOUCHER', %s::jsonb)",
    "customers": "INSERT INTO customers (id, project_id, source_id, {column}) "
    "VALUES (%s, 'proj_a', %s, %s::jsonb)",
    "segments": "INSERT INTO segments (id, project_id, name, type, {column}) "
    "VALUES (%s, 'proj_a', %s, 'auto-update', %s::jsonb)",
    "campaigns": "INSERT INTO campaigns (id, project_id, name, type, {column}) "
    "VALUES (%s, 'proj_a', %s, 'GIFT_VOUCHERS', %s::jsonb)",
}
PATHS = {
    "vouchers": "/v1/vouchers/{id}",
    "customers": "/v1/customers/{id}",
    "segments": "/v1/segments/{id}",
    "campaigns": "/v1/campaigns/{id}",
}


@pytest.mark.parametrize(
    ("table", "column", "levels"), DEEP_CASES, ids=[f"{t}.{c}-{n}" for t, c, n in DEEP_CASES]
)
async def test_deep_json_is_quarantined_and_retried_once_fixed(
    api: ApiHarness, caplog: pytest.LogCaptureFixture, table: str, column: str, levels: int
) -> None:
    from indexer.jsonvalues import MAX_JSON_DEPTH

    h = api.indexer
    statement = INSERTS[table].format(column=column)
    ok_value = (
        '{"name": {"conditions": {"$is": "x"}}}' if column == "filter" else '{"tier": "gold"}'
    )
    await h.execute(statement, ("good_1", "good-1", ok_value))
    headers = await fresh(api)
    before = quarantined_total(table)
    captured: list[list[Transaction]] = []

    async def keep(transactions: list[Transaction]) -> None:
        if transactions:
            captured.append(transactions)

    h.indexer.before_advance = keep
    caplog.set_level(logging.INFO, logger="indexer")
    # The bad row, then a good one in the same batch and one in a later transaction; then an
    # update of the bad row (its old and new values both too deep) and more good rows.
    await h.execute(statement, ("bad_1", "bad-1", deep_json(levels)))
    await h.execute(statement, ("good_2", "good-2", ok_value))
    await h.execute(
        f"UPDATE {table} SET name = 'renamed' WHERE id = 'good_1'"
        if table != "vouchers"
        else "UPDATE vouchers SET code = 'good-1b' WHERE id = 'good_1'"
    )
    headers = await fresh(api)
    await h.execute(
        f"UPDATE {table} SET {column} = %s::jsonb WHERE id = 'bad_1'", (deep_json(levels, "2"),)
    )
    await h.execute(statement, ("good_3", "good-3", ok_value))
    headers = await fresh(api)

    path = PATHS[table]
    for good in ("good_1", "good_2", "good_3"):
        response = await api.get(path.format(id=good), headers=headers)
        assert response.status == 200, (good, await response.text())
    assert (await api.get(path.format(id="bad_1"), headers=headers)).status == 404

    rows = await quarantined(h)
    assert [(r["table"], r["row_id"], r["project_id"]) for r in rows] == [
        (table, "bad_1", "proj_a")
    ]
    assert f"nested more than {MAX_JSON_DEPTH} levels" in rows[0]["reason"]
    assert column in rows[0]["reason"]
    assert Lsn.parse(rows[0]["lsn"]) <= Lsn.parse(headers["X-Min-Watermark"])
    logged = [r for r in caplog.records if r.getMessage() == "row quarantined"]
    assert len(logged) == 2  # the insert, then the update: one line per quarantined change
    assert quarantined_total(table) == before + 2

    # Applying a batch again (as after an outage) logs and counts nothing new.
    await h.indexer.apply(captured[-1])
    assert len([r for r in caplog.records if r.getMessage() == "row quarantined"]) == 2
    assert quarantined_total(table) == before + 2

    # A retry of a row that still does not build leaves it quarantined.
    retried = await quarantine_cli(h, "retry", "--all")
    assert retried.returncode == 0, retried.stderr
    assert "still quarantined 1" in retried.stdout
    again = await quarantined(h)
    assert [r["row_id"] for r in again] == ["bad_1"]
    assert again[0]["attempts"] == rows[0]["attempts"] + 1 == 3  # insert, update, retry

    # Fixed in the source (the indexer is not stepped): the retry indexes it.
    await h.execute(f"UPDATE {table} SET {column} = %s::jsonb WHERE id = 'bad_1'", (ok_value,))
    retried = await quarantine_cli(h, "retry", str(rows[0]["id"]))
    assert retried.returncode == 0, retried.stderr
    assert "indexed 1" in retried.stdout
    assert await quarantined(h) == []
    bypass = {"X-Min-Watermark": headers["X-Min-Watermark"]}
    response = await api.get(path.format(id="bad_1"), headers=bypass)
    assert response.status == 200, await response.text()
    assert (await response.json())[column] == orjson.loads(ok_value)
    # The fix's own change is indexed too, and the sinks equal the source.
    await api.catch_up()
    report = await h.verify()
    assert report.ok, report.differences


async def test_deep_json_within_the_limit_is_served(api: ApiHarness) -> None:
    from indexer.jsonvalues import MAX_JSON_DEPTH

    h = api.indexer
    value = deep_json(MAX_JSON_DEPTH - 1)
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, type, metadata, discount) "
        "VALUES ('v_deep', 'proj_a', 'DEEP', 'GIFT_VOUCHER', %s::jsonb, %s::jsonb)",
        (value, deep_list(MAX_JSON_DEPTH)),
    )
    headers = await fresh(api)
    response = await api.get("/v1/vouchers/DEEP", headers=headers)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["metadata"] == orjson.loads(value)
    assert await quarantined(h) == []


async def test_a_deep_auto_update_filter_leaves_the_segment_empty(api: ApiHarness) -> None:
    h = api.indexer
    await h.execute(
        "INSERT INTO customers (id, project_id, email) VALUES ('c1', 'proj_a', 'a@example.com')"
    )
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type, filter) VALUES "
        "('s_all', 'proj_a', 'All', 'auto-update', '{}'),"
        "('s_deep', 'proj_a', 'Deep', 'auto-update', %s::jsonb)",
        (deep_json(3000),),
    )
    await h.execute(
        "INSERT INTO customers (id, project_id, email) VALUES ('c2', 'proj_a', 'b@example.com')"
    )
    headers = await fresh(api)
    segments = await (await api.get("/v1/customers/c2/segments", headers=headers)).json()
    assert [s["id"] for s in segments["data"]] == ["s_all"]
    assert [r["row_id"] for r in await quarantined(h)] == ["s_deep"]
    invalid = REGISTRY.get_sample_value("indexer_invalid_segment_filters_total")
    assert invalid is not None and invalid >= 1


async def test_quarantine_list_is_readable_and_retry_names_unknown_ids(
    harness: IndexerHarness,
) -> None:
    h = harness
    await h.execute("INSERT INTO projects (id, name) VALUES ('proj_a', 'A')")
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, type, metadata) "
        "VALUES ('bad', 'proj_a', 'BAD', 'GIFT_VOUCHER', %s::jsonb)",
        (deep_json(400),),
    )
    await h.catch_up()
    listed = await quarantine_cli(h, "list")
    assert listed.returncode == 0, listed.stderr
    assert "vouchers" in listed.stdout and "bad" in listed.stdout
    missing = await quarantine_cli(h, "retry", "999999")
    assert missing.returncode == 1
    assert "999999" in missing.stderr
    nothing = await quarantine_cli(h, "retry")
    assert nothing.returncode == 2  # ids or --all are required
    gauge = REGISTRY.get_sample_value("indexer_quarantine_rows")
    assert gauge == 1
