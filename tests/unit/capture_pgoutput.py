"""Capture real pgoutput v1 messages into ``data/pgoutput_capture.json`` (run by hand).

    python tests/unit/capture_pgoutput.py [--dsn postgresql://postgres@127.0.0.1:5433/postgres]

Creates a scratch database with a few tables, runs one scenario per transaction group,
reads each group's messages with ``pg_logical_slot_get_binary_changes`` and stores them as
hex, then drops the slot, the replication origin and the database. ``test_pgoutput.py``
decodes the file and checks every value: the scenarios here write only deterministic data.
Not collected by pytest (the file name does not start with ``test_``).
"""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

OUTPUT = Path(__file__).parent / "data" / "pgoutput_capture.json"
SLOT = "pgoutput_capture"
PUBLICATION = "pgoutput_capture"
ORIGIN = "pgoutput_capture_origin"
# The TOASTed value: 400 md5 hex digests, 12,800 characters, stored out of line.
BIG_BODY = (
    "jsonb_build_object('blob', "
    "(SELECT string_agg(md5(i::text), '' ORDER BY i) FROM generate_series(1, 400) AS i))"
)

SCHEMA = f"""
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE items (
    id int PRIMARY KEY, name text NOT NULL, note varchar(40), payload jsonb, raw json,
    happened_at timestamptz, local_at timestamp, day date, amount numeric(12, 2),
    qty bigint, small smallint, ratio double precision, flag boolean, tags text[]
);
ALTER TABLE items REPLICA IDENTITY FULL;
CREATE TABLE plain (id int PRIMARY KEY, label text);
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent);
CREATE TABLE docs_plain (id int PRIMARY KEY, title text, body jsonb);
CREATE TABLE docs_full (id int PRIMARY KEY, title text, body jsonb);
ALTER TABLE docs_full REPLICA IDENTITY FULL;
CREATE TABLE evolving (id int PRIMARY KEY, a text);
CREATE TABLE reshaped (id int PRIMARY KEY, a text);
CREATE TABLE moods (id int PRIMARY KEY, m mood);
CREATE PUBLICATION {PUBLICATION} FOR TABLE
    items, plain, parent, child, docs_plain, docs_full, evolving, reshaped, moods;
"""

SETUP = f"""
INSERT INTO plain VALUES (1, 'a');
INSERT INTO parent VALUES (1), (2);
INSERT INTO child VALUES (1, 1), (2, 2);
INSERT INTO docs_plain VALUES (1, 't1', {BIG_BODY});
INSERT INTO docs_full VALUES (1, 't1', {BIG_BODY});
"""

# Each scenario: transactions (lists of statements), all read back in one decoding call.
SCENARIOS: dict[str, list[list[str]]] = {
    "insert": [[
        """INSERT INTO items VALUES (
            1, 'Zürich ☕', NULL,
            '{"tier": "gold", "nested": {"n": [1, 2.5, null]}, "emoji": "🎉"}',
            '{"b": 1,  "a": [true]}',
            '2024-01-02 03:04:05.123456+00', '2024-01-02 03:04:05', '2024-02-29', 12.50,
            9007199254740993, -7, 0.25, true, '{a,"b c"}')""",
        """INSERT INTO items (id, name, happened_at, amount, qty, flag)
           VALUES (2, 'second', '2024-01-02 03:04:05+05:30', 100, 0, false)""",
    ]],
    "update_full": [["UPDATE items SET name = 'renamed', flag = false WHERE id = 1"]],
    "update_default": [["UPDATE plain SET label = 'b' WHERE id = 1"]],
    "update_default_key": [["UPDATE plain SET id = 10 WHERE id = 1"]],
    "delete": [["DELETE FROM items WHERE id = 2", "DELETE FROM plain WHERE id = 10"]],
    "truncate": [["TRUNCATE parent CASCADE"]],
    "toast_default": [["UPDATE docs_plain SET title = 't2' WHERE id = 1"]],
    "toast_full": [["UPDATE docs_full SET title = 't2' WHERE id = 1"]],
    "alter_columns": [
        ["INSERT INTO evolving VALUES (1, 'a1')"],
        ["ALTER TABLE evolving ADD COLUMN b text"],
        ["INSERT INTO evolving VALUES (2, 'a2', 'b2')"],
        ["ALTER TABLE evolving DROP COLUMN a"],
        ["INSERT INTO evolving VALUES (3, 'b3')", "UPDATE evolving SET b = 'bb' WHERE id = 2"],
    ],
    "alter_in_transaction": [[
        "INSERT INTO reshaped VALUES (1, 'a1')",
        "ALTER TABLE reshaped ADD COLUMN c int",
        "INSERT INTO reshaped VALUES (2, 'a2', 7)",
    ]],
    "custom_type": [["INSERT INTO moods VALUES (1, 'happy')"]],
    "logical_message": [[
        "SELECT pg_logical_emit_message(true, 'loyalty', 'hello')",
        "INSERT INTO moods VALUES (2, 'ok')",
    ]],
}
# Extra output plugin options per scenario.
OPTIONS: dict[str, tuple[str, ...]] = {"logical_message": ("messages", "true")}
ORIGIN_SCENARIO = "origin"


def _get_changes(conn: psycopg.Connection[Any], *options: str) -> list[list[Any]]:
    rows = conn.execute(
        sql.SQL(
            "SELECT lsn::text, xid::text::bigint, encode(data, 'hex') "
            "FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, {})"
        ).format(sql.SQL(", ").join(sql.Literal(o) for o in
                                     ("proto_version", "1", "publication_names", PUBLICATION,
                                      *options))),
        (SLOT,),
    ).fetchall()
    return [list(row) for row in rows]


def _run(conn: psycopg.Connection[Any], transactions: list[list[str]]) -> None:
    for statements in transactions:
        with conn.transaction():
            for statement in statements:
                conn.execute(statement)


def _capture_origin(conn: psycopg.Connection[Any]) -> list[list[Any]]:
    conn.execute("SELECT pg_replication_origin_create(%s)", (ORIGIN,))
    conn.execute("SELECT pg_replication_origin_session_setup(%s)", (ORIGIN,))
    try:
        with conn.transaction():
            conn.execute(
                "SELECT pg_replication_origin_xact_setup('0/AB12CD34', "
                "'2024-05-06 07:08:09.5+00')"
            )
            conn.execute("INSERT INTO plain VALUES (20, 'from elsewhere')")
    finally:
        conn.execute("SELECT pg_replication_origin_session_reset()")
    return _get_changes(conn)


def capture(admin_dsn: str) -> dict[str, Any]:
    database = f"pgoutput_capture_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=database)
    try:
        with psycopg.connect(dsn, autocommit=True, options="-c timezone=UTC") as conn:
            # Commits must be flushed before a decoding call can see them.
            conn.execute("SET synchronous_commit = on")
            conn.execute(SCHEMA)
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT,))
            try:
                conn.execute(SETUP)
                _get_changes(conn)  # consume the setup
                relations: dict[str, int] = dict(conn.execute(
                    "SELECT relname, oid::int FROM pg_class"
                    " WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
                ).fetchall())
                scenarios = {}
                for name, transactions in SCENARIOS.items():
                    _run(conn, transactions)
                    scenarios[name] = _get_changes(conn, *OPTIONS.get(name, ()))
                scenarios[ORIGIN_SCENARIO] = _capture_origin(conn)
                mood_oid = conn.execute("SELECT 'mood'::regtype::oid::int").fetchone()
                version = conn.execute("SHOW server_version").fetchone()
            finally:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))
                conn.execute(
                    "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin"
                    " WHERE roname = %s", (ORIGIN,),
                )
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(database)))
    return {
        "server_version": version[0] if version else None,
        "relations": relations,
        "mood_type_oid": mood_oid[0] if mood_oid else None,
        "scenarios": scenarios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5433/postgres")
    args = parser.parse_args()
    result = capture(args.dsn)
    OUTPUT.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUTPUT}: {', '.join(result['scenarios'])}")


if __name__ == "__main__":
    main()
