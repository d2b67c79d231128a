"""``indexer seed`` against real Postgres: deterministic, complete, consistent, safe to script."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from indexer.cli import main
from indexer.seed import SeedError, SeedPlan, seed_database
from indexer.seed_rows import TABLES

pytestmark = pytest.mark.services

PLAN = SeedPlan(
    seed=11,
    projects=3,
    customers=900,
    campaigns=9,
    vouchers=2_500,
    redemptions=1_500,
    segments=6,
    keys=2,
)
ORDER = {table: "id" for table in TABLES} | {"segment_members": "segment_id, customer_id"}


@pytest.fixture
def new_database(pg_dsn: str, pg_template: str) -> Iterator[Callable[[], str]]:
    """Makes more fresh migrated databases (clones of the test template); drops them after."""
    admin_dsn = psycopg.conninfo.make_conninfo(pg_dsn, dbname="postgres")
    names: list[str] = []

    def make() -> str:
        name = f"t_seed_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(pg_template)
                )
            )
        names.append(name)
        return psycopg.conninfo.make_conninfo(pg_dsn, dbname=name)

    yield make
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        for name in names:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def table_digests(dsn: str) -> dict[str, str]:
    """An md5 per table over every row, in primary-key order."""
    digests = {}
    with psycopg.connect(dsn) as conn:
        for table in TABLES:
            query = sql.SQL(
                "SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY {}), '')) FROM {} t"
            ).format(sql.SQL(ORDER[table]), sql.Identifier(table))
            row = conn.execute(query).fetchone()
            assert row is not None
            digests[table] = row[0]
    return digests


def counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {
            table: _scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            for table in TABLES
        }


def _scalar(conn: psycopg.Connection[tuple[Any, ...]], query: sql.Composed | sql.SQL) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_same_seed_same_rows_whatever_the_chunks_or_key_checks(
    pg_dsn: str, new_database: Callable[[], str]
) -> None:
    other = new_database()
    seed_database(pg_dsn, PLAN)
    seed_database(other, PLAN, chunk_rows=333, per_row_key_checks=True)
    assert table_digests(pg_dsn) == table_digests(other)


def test_another_seed_gives_other_rows(pg_dsn: str, new_database: Callable[[], str]) -> None:
    other = new_database()
    seed_database(pg_dsn, PLAN)
    seed_database(other, SeedPlan(**{**_counts(PLAN), "seed": PLAN.seed + 1}))
    mine, theirs = table_digests(pg_dsn), table_digests(other)
    assert all(mine[table] != theirs[table] for table in TABLES)


def test_row_counts_follow_the_plan(pg_dsn: str) -> None:
    report = seed_database(pg_dsn, PLAN)
    found = counts(pg_dsn)
    assert dict(report.rows) == found
    assert found == {
        "projects": 3,
        "api_keys": 6,
        "customers": 900,
        "campaigns": 9,
        "vouchers": 2_500,
        "redemptions": 1_500,
        "segments": 6,
        "segment_members": found["segment_members"],
    }
    assert found["segment_members"] > 0
    assert report.total_rows == sum(found.values())
    assert report.key_checks == "per table"  # the test role may skip row triggers


def test_seeded_rows_are_consistent(pg_dsn: str) -> None:
    seed_database(pg_dsn, PLAN)
    with psycopg.connect(pg_dsn) as conn:
        mismatches = _scalar(
            conn,
            sql.SQL("""
            SELECT (SELECT count(*) FROM vouchers v JOIN campaigns c ON c.id = v.campaign_id
                    WHERE c.project_id <> v.project_id
                       OR (c.type, v.type) NOT IN (('DISCOUNT_COUPONS', 'DISCOUNT_VOUCHER'),
                           ('GIFT_VOUCHERS', 'GIFT_VOUCHER'), ('LOYALTY_PROGRAM', 'LOYALTY_CARD')))
                 + (SELECT count(*) FROM vouchers v JOIN customers c ON c.id = v.holder_id
                    WHERE c.project_id <> v.project_id)
                 + (SELECT count(*) FROM redemptions r JOIN vouchers v ON v.id = r.voucher_id
                    WHERE v.project_id <> r.project_id)
                 + (SELECT count(*) FROM segment_members m JOIN segments s ON s.id = m.segment_id
                    WHERE s.type <> 'static')
                 + (SELECT count(*) FROM customers
                    WHERE address IS NOT NULL AND (SELECT array_agg(k ORDER BY k)
                          FROM jsonb_object_keys(address) k) <> ARRAY[
                          'city', 'country', 'line_1', 'line_2', 'postal_code', 'state'])
                 + (SELECT count(*) FROM segments
                    WHERE (type = 'static') <> (filter IS NULL))"""),
        )
        per_project = conn.execute("SELECT count(DISTINCT project_id) FROM vouchers").fetchone()
    assert mismatches == 0
    assert per_project == (PLAN.projects,)


def test_seed_command_prints_a_working_demo_key(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sizes = ["--customers", "200", "--vouchers", "500", "--redemptions", "300"]
    assert main(["seed", "--dsn", pg_dsn, *sizes]) == 0
    out = capsys.readouterr().out
    printed = dict(line.split(": ", 1) for line in out.splitlines() if line.startswith("demo "))
    app_id, token = printed["demo app id"], printed["demo token"]
    with psycopg.connect(pg_dsn) as conn:
        key = conn.execute(
            "SELECT token_sha256, revoked_at FROM api_keys WHERE id = %s", (app_id,)
        ).fetchone()
        stored_in_clear = _scalar(
            conn,
            sql.SQL("SELECT count(*) FROM api_keys WHERE token_sha256 = {}").format(
                sql.Literal(token)
            ),
        )
    assert key == (hashlib.sha256(token.encode()).hexdigest(), None)
    assert stored_in_clear == 0
    assert "vouchers" in out and "rows/s" in out


def test_truncate_reseeds_and_a_second_load_fails_in_one_line(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["seed", "--dsn", pg_dsn, "--customers", "100", "--vouchers", "200"]
    assert main(args) == 0
    before = table_digests(pg_dsn)
    assert main(args) == 1  # the same ids again: the database refuses
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("indexer seed: projects: ")
    assert main([*args, "--truncate"]) == 0
    assert table_digests(pg_dsn) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--customers", "-1"], "customers must be between 0"),
        (["--projects", "0"], "need at least one project"),
        (["--vouchers", "0", "--redemptions", "5"], "redemptions need at least one voucher"),
        (["--chunk-rows", "0"], "--chunk-rows must be at least 1"),
    ],
)
def test_bad_arguments_fail_in_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # No database is needed to refuse a plan: the DSN is never used.
    assert main(["seed", "--dsn", "postgresql://postgres@127.0.0.1:1/none", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith("indexer seed: ") and message in captured.err


def test_non_numeric_counts_are_argparse_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["seed", "--vouchers", "many"])
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_unreachable_database_fails_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seed", "--dsn", "postgresql://postgres@127.0.0.1:1/none"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("indexer seed: connect: ")
    with pytest.raises(SeedError):
        seed_database("postgresql://postgres@127.0.0.1:1/none", PLAN)


def test_missing_schema_fails_in_one_line(pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("DROP TABLE segment_members")
    assert main(["seed", "--dsn", pg_dsn, "--customers", "50", "--vouchers", "50"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("indexer seed: segment_members: ") and "indexer migrate" in err


def _counts(plan: SeedPlan) -> dict[str, int]:
    return {name: getattr(plan, name) for name in plan.__dataclass_fields__}
