"""The migrated schema is exactly the contract of docs/api.md §1, and migrations apply once."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from indexer.cli import main
from indexer.migrate import Migration, MigrationError, apply_migrations, bundled_migrations

pytestmark = pytest.mark.services

# docs/api.md §1, table -> column -> (data type, nullable, has a default), in contract order.
TS, TEXT, JSONB, BOOL = "timestamp with time zone", "text", "jsonb", "boolean"
CONTRACT: dict[str, dict[str, tuple[str, bool, bool]]] = {
    "projects": {
        "id": (TEXT, False, False),
        "name": (TEXT, False, False),
        "created_at": (TS, False, True),
    },
    "api_keys": {
        "id": (TEXT, False, False),
        "project_id": (TEXT, False, False),
        "token_sha256": (TEXT, False, False),
        "rate_limit_per_minute": ("integer", True, False),
        "created_at": (TS, False, True),
        "revoked_at": (TS, True, False),
    },
    "customers": {
        "id": (TEXT, False, False),
        "project_id": (TEXT, False, False),
        "source_id": (TEXT, True, False),
        "name": (TEXT, True, False),
        "email": (TEXT, True, False),
        "phone": (TEXT, True, False),
        "address": (JSONB, True, False),
        "metadata": (JSONB, False, True),
        "created_at": (TS, False, True),
        "updated_at": (TS, False, True),
    },
    "campaigns": {
        "id": (TEXT, False, False),
        "project_id": (TEXT, False, False),
        "name": (TEXT, False, False),
        "type": (TEXT, False, False),
        "active": (BOOL, False, True),
        "start_date": (TS, True, False),
        "expiration_date": (TS, True, False),
        "metadata": (JSONB, False, True),
        "created_at": (TS, False, True),
        "updated_at": (TS, False, True),
    },
    "vouchers": {
        "id": (TEXT, False, False),
        "project_id": (TEXT, False, False),
        "code": (TEXT, False, False),
        "campaign_id": (TEXT, True, False),
        "type": (TEXT, False, False),
        "discount": (JSONB, True, False),
        "gift_amount": ("bigint", True, False),
        "gift_balance": ("bigint", True, False),
        "loyalty_points": ("bigint", True, False),
        "loyalty_balance": ("bigint", True, False),
        "active": (BOOL, False, True),
        "start_date": (TS, True, False),
        "expiration_date": (TS, True, False),
        "redemption_quantity": ("integer", True, False),
        "redeemed_quantity": ("integer", False, True),
        "holder_id": (TEXT, True, False),
        "metadata": (JSONB, False, True),
        "created_at": (TS, False, True),
        "updated_at": (TS, False, True),
    },
    "redemptions": {
        "id": (TEXT, False, False),
        "project_id": (TEXT, False, False),
        "voucher_id": (TEXT, False, False),
        "customer_id": (TEXT, True, False),
        "amount": ("bigint", True, False),
        "points": ("bigint", True, False),
        "result": (TEXT, False, False),
        "created_at": (TS, False, True),
    },
    "segments": {
        "id": (TEXT, False, False),
        "project_id": (TEXT, False, False),
        "name": (TEXT, False, False),
        "type": (TEXT, False, False),
        "filter": (JSONB, True, False),
        "created_at": (TS, False, True),
        "updated_at": (TS, False, True),
    },
    "segment_members": {
        "segment_id": (TEXT, False, False),
        "customer_id": (TEXT, False, False),
    },
}
PRIMARY_KEYS = {table: ("id",) for table in CONTRACT} | {
    "segment_members": ("segment_id", "customer_id")
}
UNIQUES = {("customers", ("project_id", "source_id")), ("vouchers", ("project_id", "code"))}
# (table, column, referenced table, delete rule): "c" cascade, "n" set null (pg_constraint).
FOREIGN_KEYS = {
    ("api_keys", "project_id", "projects", "c"),
    ("customers", "project_id", "projects", "c"),
    ("campaigns", "project_id", "projects", "c"),
    ("vouchers", "project_id", "projects", "c"),
    ("vouchers", "campaign_id", "campaigns", "n"),
    ("vouchers", "holder_id", "customers", "n"),
    ("redemptions", "project_id", "projects", "c"),
    ("redemptions", "voucher_id", "vouchers", "c"),
    ("redemptions", "customer_id", "customers", "n"),
    ("segments", "project_id", "projects", "c"),
    ("segment_members", "segment_id", "segments", "c"),
    ("segment_members", "customer_id", "customers", "c"),
}
JOIN_COLUMNS = {(table, column) for table, column, _, _ in FOREIGN_KEYS}


def fetch(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


@pytest.fixture
def empty_dsn(pg_dsn: str) -> Iterator[str]:
    """A database with nothing in it, not even the migrations."""
    admin_dsn = psycopg.conninfo.make_conninfo(pg_dsn, dbname="postgres")
    name = f"t_empty_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(pg_dsn, dbname=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --- structure ---------------------------------------------------------------------------


def test_tables_are_the_contract_and_the_migration_log(pg_dsn: str) -> None:
    tables = fetch(
        pg_dsn, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    assert {name for (name,) in tables} == set(CONTRACT) | {"schema_migrations"}


def test_columns_are_the_contract(pg_dsn: str) -> None:
    rows = fetch(
        pg_dsn,
        """
        SELECT table_name, column_name, data_type, is_nullable, column_default
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name <> 'schema_migrations'
        ORDER BY table_name, ordinal_position""",
    )
    found: dict[str, dict[str, tuple[str, bool, bool]]] = {}
    for table, column, data_type, nullable, default in rows:
        found.setdefault(table, {})[column] = (data_type, nullable == "YES", default is not None)
    assert found == CONTRACT
    for table, columns in CONTRACT.items():
        assert list(found[table]) == list(columns), table


def test_defaults_are_the_contract(pg_dsn: str) -> None:
    defaults = dict(
        ((table, column), default)
        for table, column, default in fetch(
            pg_dsn,
            """
        SELECT table_name, column_name, column_default FROM information_schema.columns
        WHERE table_schema = 'public' AND column_default IS NOT NULL""",
        )
    )
    assert {key for key, value in defaults.items() if value == "now()"} == {
        (table, column)
        for table, columns in CONTRACT.items()
        for column in columns
        if column in {"created_at", "updated_at"}
    } | {("schema_migrations", "applied_at")}
    assert {key for key, value in defaults.items() if value.startswith("'{}'")} == {
        (table, "metadata") for table in ("customers", "campaigns", "vouchers")
    }
    assert defaults[("campaigns", "active")] == defaults[("vouchers", "active")] == "true"
    assert defaults[("vouchers", "redeemed_quantity")] == "0"


def _constraints(dsn: str, kind: str) -> list[tuple[Any, ...]]:
    return fetch(
        dsn,
        """
        SELECT c.conrelid::regclass::text,
               ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(num, pos)
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num
                     ORDER BY k.pos)::text[],
               c.confrelid::regclass::text, c.confdeltype::text
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public' AND c.contype = %s
          AND c.conrelid <> 'schema_migrations'::regclass""",
        (kind,),
    )


def test_primary_keys(pg_dsn: str) -> None:
    found = {table: tuple(columns) for table, columns, _, _ in _constraints(pg_dsn, "p")}
    assert found == PRIMARY_KEYS


def test_unique_constraints(pg_dsn: str) -> None:
    found = {(table, tuple(columns)) for table, columns, _, _ in _constraints(pg_dsn, "u")}
    assert found == UNIQUES


def test_foreign_keys_and_their_delete_rules(pg_dsn: str) -> None:
    found = set()
    for table, columns, referenced, rule in _constraints(pg_dsn, "f"):
        assert len(columns) == 1
        found.add((table, columns[0], referenced, rule))
    assert found == FOREIGN_KEYS


def test_every_contract_table_logs_full_old_rows(pg_dsn: str) -> None:
    rows = fetch(
        pg_dsn,
        "SELECT relname, relreplident::text FROM pg_class "
        "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' "
        "AND relname <> 'schema_migrations'",
    )
    assert dict(rows) == dict.fromkeys(CONTRACT, "f")


def test_no_triggers(pg_dsn: str) -> None:
    rows = fetch(
        pg_dsn,
        "SELECT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal",
    )
    assert rows == []


def test_join_columns_lead_an_index(pg_dsn: str) -> None:
    rows = fetch(
        pg_dsn,
        """
        SELECT c.relname, a.attname FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE c.relnamespace = 'public'::regnamespace""",
    )
    assert set(rows) >= JOIN_COLUMNS


def test_enumerated_values_are_checked(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO projects (id, name) VALUES ('p', 'P')")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO campaigns (id, project_id, name, type) "
                "VALUES ('c', 'p', 'C', 'COUPONS')"
            )


def test_omitted_columns_take_their_defaults(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO projects (id, name) VALUES ('p', 'P')")
        row = conn.execute(
            "INSERT INTO vouchers (id, project_id, code, type) VALUES ('v', 'p', 'C', "
            "'GIFT_VOUCHER') RETURNING active, redeemed_quantity, metadata, "
            "created_at IS NOT NULL AND updated_at IS NOT NULL"
        ).fetchone()
    assert row == (True, 0, {}, True)


# --- applying migrations -----------------------------------------------------------------


def test_migrations_apply_once_in_order(empty_dsn: str) -> None:
    names = [migration.name for migration in bundled_migrations()]
    assert names == sorted(names) and names
    assert apply_migrations(empty_dsn) == names
    assert apply_migrations(empty_dsn) == []
    logged = fetch(empty_dsn, "SELECT name FROM schema_migrations ORDER BY applied_at, name")
    assert [name for (name,) in logged] == names


def test_an_applied_schema_has_nothing_pending(pg_dsn: str) -> None:
    assert apply_migrations(pg_dsn) == []


def test_concurrent_runs_apply_each_migration_once(empty_dsn: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(apply_migrations(empty_dsn))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(name for result in results for name in result) == sorted(
        migration.name for migration in bundled_migrations()
    )


def test_a_failed_migration_leaves_nothing_behind(empty_dsn: str) -> None:
    migrations = [
        Migration("0001_good", "CREATE TABLE good (id int)"),
        Migration("0002_bad", "CREATE TABLE half (id int); SELECT * FROM missing_table"),
        Migration("0003_later", "CREATE TABLE later (id int)"),
    ]
    with pytest.raises(MigrationError, match=r"^0002_bad: .*missing_table"):
        apply_migrations(empty_dsn, migrations)
    tables = fetch(empty_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert {name for (name,) in tables} == {"good", "schema_migrations"}
    assert fetch(empty_dsn, "SELECT name FROM schema_migrations") == [("0001_good",)]
    # Once fixed, the run resumes at the failed file.
    migrations[1] = Migration("0002_bad", "CREATE TABLE half (id int)")
    assert apply_migrations(empty_dsn, migrations) == ["0002_bad", "0003_later"]


def test_migrate_command(empty_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--dsn", empty_dsn]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"applied {migration.name}" for migration in bundled_migrations()
    ]
    assert main(["migrate", "--dsn", empty_dsn]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres@127.0.0.1:1/loyalty",  # nothing listens there
        "host=127.0.0.1 port=5433 user=postgres dbname=no_such_database_here",
        "this is not a dsn",
    ],
)
def test_migrate_command_fails_in_one_line(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--dsn", dsn]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith("indexer migrate: ")


def test_migrate_command_reports_a_failed_migration(
    empty_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(empty_dsn) as conn:
        conn.execute("CREATE TABLE projects (id int)")  # written by someone else
    assert main(["migrate", "--dsn", empty_dsn]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("indexer migrate: 0001_") and "projects" in err


# --- delete rules ------------------------------------------------------------------------

GRAPH = """
INSERT INTO projects (id, name) VALUES ('p1', 'One'), ('p2', 'Two');
INSERT INTO api_keys (id, project_id, token_sha256) VALUES ('k1', 'p1', 'aa'), ('k2', 'p2', 'bb');
INSERT INTO customers (id, project_id, source_id) VALUES
    ('c1', 'p1', 's1'), ('c2', 'p1', 's2'), ('c9', 'p2', 's1');
INSERT INTO campaigns (id, project_id, name, type) VALUES
    ('k1', 'p1', 'Gifts', 'GIFT_VOUCHERS'), ('k9', 'p2', 'Gifts', 'GIFT_VOUCHERS');
INSERT INTO vouchers (id, project_id, code, campaign_id, type, holder_id) VALUES
    ('v1', 'p1', 'A', 'k1', 'GIFT_VOUCHER', 'c1'), ('v2', 'p1', 'B', 'k1', 'GIFT_VOUCHER', 'c2'),
    ('v9', 'p2', 'A', 'k9', 'GIFT_VOUCHER', 'c9');
INSERT INTO redemptions (id, project_id, voucher_id, customer_id, result) VALUES
    ('r1', 'p1', 'v1', 'c1', 'SUCCESS'), ('r2', 'p1', 'v2', 'c1', 'FAILURE'),
    ('r3', 'p1', 'v2', 'c2', 'SUCCESS'), ('r9', 'p2', 'v9', 'c9', 'SUCCESS');
INSERT INTO segments (id, project_id, name, type) VALUES
    ('s1', 'p1', 'Static', 'static'), ('s2', 'p1', 'Other', 'static'),
    ('s9', 'p2', 'Static', 'static');
INSERT INTO segment_members (segment_id, customer_id) VALUES
    ('s1', 'c1'), ('s1', 'c2'), ('s2', 'c1'), ('s9', 'c9');
"""


@pytest.fixture
def graph(pg_dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(GRAPH)
        yield conn


def rows_of(conn: psycopg.Connection[tuple[Any, ...]], query: str) -> set[tuple[Any, ...]]:
    return set(conn.execute(query).fetchall())


def test_deleting_a_customer_detaches_its_vouchers_and_redemptions(
    graph: psycopg.Connection[tuple[Any, ...]],
) -> None:
    graph.execute("DELETE FROM customers WHERE id = 'c1'")
    assert rows_of(graph, "SELECT id, holder_id FROM vouchers WHERE project_id = 'p1'") == {
        ("v1", None),
        ("v2", "c2"),
    }
    assert rows_of(graph, "SELECT id, customer_id FROM redemptions WHERE project_id = 'p1'") == {
        ("r1", None),
        ("r2", None),
        ("r3", "c2"),
    }
    assert rows_of(graph, "SELECT * FROM segment_members") == {("s1", "c2"), ("s9", "c9")}


def test_deleting_a_campaign_keeps_its_vouchers(
    graph: psycopg.Connection[tuple[Any, ...]],
) -> None:
    graph.execute("DELETE FROM campaigns WHERE id = 'k1'")
    assert rows_of(graph, "SELECT id, campaign_id FROM vouchers") == {
        ("v1", None),
        ("v2", None),
        ("v9", "k9"),
    }


def test_deleting_a_voucher_deletes_its_redemptions(
    graph: psycopg.Connection[tuple[Any, ...]],
) -> None:
    graph.execute("DELETE FROM vouchers WHERE id = 'v2'")
    assert rows_of(graph, "SELECT id FROM redemptions") == {("r1",), ("r9",)}


def test_deleting_a_segment_deletes_its_members(
    graph: psycopg.Connection[tuple[Any, ...]],
) -> None:
    graph.execute("DELETE FROM segments WHERE id = 's1'")
    assert rows_of(graph, "SELECT * FROM segment_members") == {("s2", "c1"), ("s9", "c9")}


def test_deleting_a_project_deletes_everything_it_owns(
    graph: psycopg.Connection[tuple[Any, ...]],
) -> None:
    graph.execute("DELETE FROM projects WHERE id = 'p1'")
    survivors = {
        "projects": "p2",
        "api_keys": "k2",
        "customers": "c9",
        "campaigns": "k9",
        "vouchers": "v9",
        "redemptions": "r9",
        "segments": "s9",
    }
    for table, survivor in survivors.items():
        assert rows_of(graph, f"SELECT id FROM {table}") == {(survivor,)}, table
    assert rows_of(graph, "SELECT * FROM segment_members") == {("s9", "c9")}
