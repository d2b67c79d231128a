"""Reads of the source database for rebuilding documents (never for the read API).

Every derived value is recomputed here from the source tables, in batches of ids; driver
errors are translated by ``indexer.errors.postgres_boundary``, which every public method
carries.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import psycopg
import psycopg.types.json
from psycopg import sql
from psycopg.rows import dict_row

from cache.types import ObjectKind
from indexer import timestamps
from indexer.errors import postgres_boundary
from indexer.jsonvalues import too_deep
from indexer.queries import query
from indexer.tables import CONTRACT_TABLES

_BY_IDS = {
    ObjectKind.VOUCHER: "vouchers_by_ids",
    ObjectKind.CUSTOMER: "customers_by_ids",
    ObjectKind.CAMPAIGN: "campaigns_by_ids",
    ObjectKind.SEGMENT: "segments_by_ids",
}
_PRIMARY_KEYS = {
    ObjectKind.VOUCHER: "primary_keys_vouchers",
    ObjectKind.CUSTOMER: "primary_keys_customers",
    ObjectKind.CAMPAIGN: "primary_keys_campaigns",
    ObjectKind.SEGMENT: "primary_keys_segments",
}

# Every named query a batch's rebuild may run (``DocumentSource`` on a live connection), and
# the primary's visibility check that a rebuild from a standby makes unneeded: what
# ``pg_stat_statements`` shows of the rebuild (each carries its name in a leading comment).
REBUILD_QUERIES = (
    *_BY_IDS.values(),
    "auto_segments_of_projects",
    "api_keys_by_ids",
    "voucher_ids_of_campaign",
    "customer_ids_of_segments",
    "transactions_still_invisible",
)

_INT64 = range(-(2**63), 2**63)


def _json_int(text: str) -> int | float | str:
    value = int(text)
    if value in _INT64:
        return value
    # jsonb keeps numbers of any size; the sinks' encoders (orjson, msgpack) stop at 64 bits.
    as_float = float(text)
    return as_float if math.isfinite(as_float) else text


def _json_float(text: str) -> float | str:
    value = float(text)
    # 1e400 is valid jsonb but not a finite double: keep its text rather than infinity.
    return value if math.isfinite(value) else text


# Numbers orjson would read otherwise than the rules above: integers of 16 digits or more
# (past 2**63 they must become floats) and exponents of 3 digits (past a double's range).
# Any other text orjson reads to the same values, several times faster.
_SPECIAL_NUMBERS_TEXT = re.compile(r"\d{16,}|[eE][+-]?\d{3,}")
_SPECIAL_NUMBERS_BYTES = re.compile(rb"\d{16,}|[eE][+-]?\d{3,}")


def load_jsonb(data: str | bytes) -> Any:
    """Parse a jsonb value into what every sink can encode, identically in each.

    A value nested deeper than the sinks can encode is not parsed (the parser is recursive
    too): it comes back as a ``TooDeepJson`` marker, which the document builders refuse."""
    deep = too_deep(data)
    if deep is not None:
        return deep
    special = (
        _SPECIAL_NUMBERS_BYTES.search(data)
        if isinstance(data, bytes)
        else _SPECIAL_NUMBERS_TEXT.search(data)
    )
    if special is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # a lone surrogate escape, which jsonb keeps and orjson refuses
    return json.loads(data, parse_int=_json_int, parse_float=_json_float)


psycopg.types.json.set_json_loads(load_jsonb)

Row = dict[str, Any]
AnyConnection = psycopg.AsyncConnection[Any]


def _sql(name: str) -> str:
    # Named queries come from files shipped with the package, never from input.
    return query(name)


@postgres_boundary
async def connect(dsn: str, *, autocommit: bool = False) -> AnyConnection:
    """A connection to the source database, in UTC (timestamps are read as instants); its
    ``timestamptz`` values beyond ``datetime`` load as ``OutOfRangeTimestamp``."""
    conn = await psycopg.AsyncConnection.connect(
        dsn, autocommit=autocommit, options="-c timezone=UTC"
    )
    timestamps.install(conn)
    return conn


@contextlib.asynccontextmanager
async def server_cursor(
    conn: psycopg.AsyncConnection[Any], name: str
) -> AsyncIterator[psycopg.AsyncServerCursor[Any]]:
    """A named cursor that ends closed even when its connection broke under it.

    psycopg marks a server-side cursor closed only once its CLOSE went through, and one
    collected while open warns. A connection that failed the CLOSE is of no further use:
    closing it lets the cursor close locally before the error goes on.
    """
    cursor = conn.cursor(name=name)
    try:
        yield cursor
    finally:
        try:
            await cursor.close()
        except psycopg.Error:
            await conn.close()
            await cursor.close()
            raise


class DocumentSource:
    """Document rows and fan-out ids, read on one connection (a snapshot's, or a live one)."""

    def __init__(self, conn: AnyConnection) -> None:
        self._conn = conn
        # Whoever opened the connection: its timestamps beyond datetime load as values too.
        timestamps.install(conn)

    async def _fetch(self, name: str, params: dict[str, Any]) -> list[Row]:
        async with contextlib.AsyncExitStack() as stack:
            if not self._conn.autocommit:
                # Inside a snapshot's transaction a failed statement would abort it: a
                # savepoint keeps one failed read (a poison row, retried row by row) local.
                await stack.enter_async_context(self._conn.transaction())
            cursor = await stack.enter_async_context(self._conn.cursor(row_factory=dict_row))
            await cursor.execute(_sql(name), params)
            return await cursor.fetchall()

    @postgres_boundary
    async def rows_by_ids(self, kind: ObjectKind, ids: Sequence[str]) -> list[Row]:
        return await self._fetch(_BY_IDS[kind], {"ids": list(ids)})

    @postgres_boundary
    async def api_keys_by_ids(self, ids: Sequence[str]) -> list[Row]:
        return await self._fetch("api_keys_by_ids", {"ids": list(ids)})

    @postgres_boundary
    async def customer_ids_of_segments(self, segment_ids: Sequence[str]) -> list[Row]:
        return await self._fetch("customer_ids_of_segments", {"ids": list(segment_ids)})

    @postgres_boundary
    async def auto_segments(self, project_ids: Sequence[str]) -> list[Row]:
        return await self._fetch("auto_segments_of_projects", {"project_ids": list(project_ids)})

    @postgres_boundary
    async def primary_key_chunks(
        self, name: str, chunk_size: int, params: dict[str, Any] | None = None
    ) -> AsyncIterator[list[str]]:
        """The first column of a named query's rows (primary keys), through a server-side
        cursor: memory stays bounded by one chunk whatever the table size."""
        # A server-side cursor lives in a transaction: a snapshot reader already has one;
        # on an autocommit connection a short one is opened for the scan.
        async with contextlib.AsyncExitStack() as stack:
            if self._conn.autocommit:
                await stack.enter_async_context(self._conn.transaction())
            cursor = await stack.enter_async_context(server_cursor(self._conn, f"pk_{name}"))
            await cursor.execute(_sql(name), params)
            while True:
                rows = await cursor.fetchmany(chunk_size)
                if not rows:
                    return
                yield [str(row[0]) for row in rows]

    # The verification reads below have one shape over five tables, with optional filters:
    # composed here from identifiers rather than written out twenty times as named queries.

    @postgres_boundary
    async def key_page(
        self, table: str, *, after: str | None, project_id: str | None, limit: int
    ) -> list[str]:
        """Up to ``limit`` primary keys after ``after`` in key order (keyset paging: each page
        is one short index scan, and memory stays at one page whatever the table size)."""
        conditions, params = _filters(project_id)
        if after is not None:
            conditions.append(sql.SQL("id > %(after)s"))
            params["after"] = after
        statement = sql.SQL("SELECT id FROM {} {} ORDER BY id LIMIT %(limit)s").format(
            _contract_table(table), _where(conditions)
        )
        cursor = await self._conn.execute(statement, {**params, "limit": limit})
        return [str(row[0]) for row in await cursor.fetchall()]

    @postgres_boundary
    async def sample_keys(self, table: str, *, project_id: str | None, size: int) -> list[str]:
        """``size`` primary keys drawn at random (one pass over the keys, a top-N in memory),
        in key order."""
        conditions, params = _filters(project_id)
        statement = sql.SQL(
            "SELECT id FROM (SELECT id FROM {} {} ORDER BY random() LIMIT %(size)s) s ORDER BY id"
        ).format(_contract_table(table), _where(conditions))
        cursor = await self._conn.execute(statement, {**params, "size": size})
        return [str(row[0]) for row in await cursor.fetchall()]

    @postgres_boundary
    async def owners(self, table: str, ids: Sequence[str]) -> dict[str, str]:
        """The project of each of these rows the table holds (absent ids: no such row)."""
        statement = sql.SQL("SELECT id, project_id FROM {} WHERE id = ANY(%(ids)s)").format(
            _contract_table(table)
        )
        cursor = await self._conn.execute(statement, {"ids": list(ids)})
        return {str(row[0]): str(row[1]) for row in await cursor.fetchall()}

    @postgres_boundary
    async def row_count(self, table: str, project_id: str | None = None) -> int:
        """Rows of one of the contract's tables (``indexer.tables``), of one project or of
        all, counted exactly."""
        conditions, params = _filters(project_id)
        statement = sql.SQL("SELECT count(*) FROM {} {}").format(
            _contract_table(table), _where(conditions)
        )
        cursor = await self._conn.execute(statement, params)
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    def voucher_id_chunks(self, campaign_id: str, chunk_size: int) -> AsyncIterator[list[str]]:
        """The ids of a campaign's vouchers, a chunk at a time."""
        return self.primary_key_chunks(
            "voucher_ids_of_campaign", chunk_size, {"campaign_id": campaign_id}
        )

    def primary_keys_query(self, kind: ObjectKind) -> str:
        return _PRIMARY_KEYS[kind]


def _contract_table(table: str) -> sql.Identifier:
    if table not in CONTRACT_TABLES:
        raise ValueError(f"not a table of the contract: {table!r}")
    return sql.Identifier(table)


def _filters(project_id: str | None) -> tuple[list[sql.Composable], dict[str, Any]]:
    if project_id is None:
        return [], {}
    return [sql.SQL("project_id = %(project_id)s")], {"project_id": project_id}


def _where(conditions: list[sql.Composable]) -> sql.Composable:
    if not conditions:
        return sql.SQL("")
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(conditions)
