"""Credentials and least privilege, on Postgres and Redis of our own (a private stack dir, so
these run whatever state the team's stack is in); Elasticsearch is the team's, under this
test's own index prefix.

- Redis refuses a client without its password, and runs with its memory bound and policy.
- Postgres asks every connection for a password; the indexer's role is not a superuser.
- ``indexer setup`` (as the admin) is enough for ``indexer run`` as that role: a change made
  after it reaches Redis and Elasticsearch; the role reads the contract tables, may not write
  them, and has its own schema.
- A cluster made before the stack had credentials is brought up to them by ``up``, data kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch
from psycopg import sql

import indexer.cli
from cache.config import DEFAULT_ES_URL
from cache.readmodel.keys import KeyLayout
from cache.store import CacheStore
from indexer.changes import WATCHED_TABLES
from indexer.errors import SlotError
from indexer.settings import IndexerSettings
from indexer.setup import INDEXER_SCHEMA
from indexer.slot import ensure_publication
from stack import config as stack_config
from stack.postgres import DATABASE, Postgres
from tests.fixtures.faults import (
    IndexerProcess,
    PrivateStack,
    free_port,
    private_stack_dir,
    wait_for_watermark,
    write_position,
)

pytestmark = [
    pytest.mark.services,
    # ``stack/`` starts Redis detached and lets go of its handle, as the ``stack`` command does.
    pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning"),
]

# The team's Elasticsearch, as the es_client fixture (which drops this test's indices) uses it.
ES_URL = os.environ.get("LOYALTY_ES_URL") or DEFAULT_ES_URL


@pytest.fixture(scope="module")
def own_stack() -> Iterator[PrivateStack]:
    """Postgres and Redis of our own, as ``stack up`` starts them."""
    with private_stack_dir() as stack:
        stack.postgres().up()
        stack.redis().up()
        yield stack


def _connect(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


def _without_password(dsn: str) -> str:
    options = psycopg.conninfo.conninfo_to_dict(dsn)
    options.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **options)


# --- Redis -------------------------------------------------------------------------------------


def test_redis_refuses_a_client_without_its_password(own_stack: PrivateStack) -> None:
    port = own_stack.config.redis_port
    for client in (redis.Redis(port=port), redis.Redis(port=port, password="wrong")):
        with client, pytest.raises(redis.AuthenticationError):
            client.ping()
    with redis.Redis.from_url(own_stack.redis_url) as client:
        assert client.ping()
        memory = client.config_get("maxmemory*")
    assert memory["maxmemory"] == str(4 * 1024**3)
    assert memory["maxmemory-policy"] == stack_config.REDIS_MAXMEMORY_POLICY == "noeviction"


# --- Postgres ----------------------------------------------------------------------------------


def test_postgres_asks_every_connection_for_a_password(own_stack: PrivateStack) -> None:
    postgres = own_stack.postgres()
    for dsn in (postgres.dsn(), postgres.indexer_dsn()):
        with pytest.raises(psycopg.OperationalError, match="password"):
            _connect(_without_password(dsn)).close()
        with _connect(dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_the_indexer_role_is_not_a_superuser(own_stack: PrivateStack) -> None:
    with _connect(own_stack.postgres().dsn()) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolreplication, "
            "rolcanlogin FROM pg_roles WHERE rolname = %s",
            (stack_config.PG_INDEXER_ROLE,),
        ).fetchone()
    assert row == (False, False, False, False, True, True)


# --- indexer setup, then indexer run as the role -----------------------------------------------


async def test_indexer_runs_as_its_role_after_setup(
    own_stack: PrivateStack,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    es_client: AsyncElasticsearch,
    es_prefix: str,
    redis_prefix: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    postgres = own_stack.postgres()
    database = f"cred_{unique_name}"
    with _connect(postgres.dsn("postgres")) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    admin_dsn, role_dsn = postgres.dsn(database), postgres.indexer_dsn(database)
    settings = dataclasses.replace(
        IndexerSettings(),
        pg_dsn=role_dsn,
        pg_admin_dsn=admin_dsn,
        redis_url=own_stack.redis_url,
        es_url=ES_URL,
        es_index_prefix=es_prefix,
        redis_key_prefix=redis_prefix,
        slot_name=f"slot_{unique_name}",
        publication=f"pub_{unique_name}",
        es_refresh_interval="100ms",
        metrics_port=0,
    )
    monkeypatch.setenv("LOYALTY_PG_DSN", role_dsn)
    monkeypatch.setenv("LOYALTY_PG_ADMIN_DSN", admin_dsn)
    monkeypatch.setenv("LOYALTY_PUBLICATION", settings.publication)

    # The command as run by hand (its own event loop: in a thread of its own here).
    assert await asyncio.to_thread(indexer.cli.main, ["setup"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("applied 0001_") for line in out), out
    assert f"publication {settings.publication}: created for public.projects" in "\n".join(out)
    # Idempotent.
    assert await asyncio.to_thread(indexer.cli.main, ["setup"]) == 0
    assert f"publication {settings.publication}: up to date" in capsys.readouterr().out

    with _connect(role_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM vouchers").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO projects (id, name) VALUES ('p_role', 'Role')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("DROP PUBLICATION {}").format(
                sql.Identifier(settings.publication)))

    process = IndexerProcess(settings, tmp_path / "indexer.log")
    store_client = aioredis.Redis.from_url(own_stack.redis_url)
    store = CacheStore(store_client, KeyLayout(redis_prefix))
    process.start()
    try:
        async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as writer:
            await writer.execute(
                "INSERT INTO projects (id, name) VALUES ('proj_cred', 'Credentials')")
            await writer.execute(
                "INSERT INTO vouchers (id, project_id, code, type) "
                "VALUES ('v_cred', 'proj_cred', 'CRED-1', 'DISCOUNT_VOUCHER')"
            )
            target = await write_position(writer)
        await wait_for_watermark(
            store, target, within=120, alive=lambda: process.running, describe=process.log_tail
        )
        envelope = await store.get_object("proj_cred", "voucher", "v_cred")
        assert envelope is not None and envelope.data is not None
        assert envelope.data["code"] == "CRED-1"
        found = await es_client.get(index=f"{es_prefix}vouchers", id="v_cred")
        assert found["found"] is True
        assert process.terminate() == 0, process.log_tail()
    finally:
        process.close()
        await store_client.aclose()

    # The role's own schema: tables the admin makes there later are the role's to use.
    with _connect(admin_dsn) as admin:
        admin.execute(sql.SQL("CREATE TABLE {}.probe (id int PRIMARY KEY)").format(
            sql.Identifier(INDEXER_SCHEMA)))
    with _connect(role_dsn) as conn:
        conn.execute(sql.SQL("INSERT INTO {}.probe VALUES (1)").format(
            sql.Identifier(INDEXER_SCHEMA)))
        conn.execute(sql.SQL("CREATE TABLE {}.own (id int)").format(
            sql.Identifier(INDEXER_SCHEMA)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.not_here (id int)")


async def test_without_setup_the_role_is_told_to_run_it(
    own_stack: PrivateStack, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Migrated by ``indexer migrate`` alone: no publication, and the role may not make one."""
    postgres = own_stack.postgres()
    database = f"nosetup_{unique_name}"
    with _connect(postgres.dsn("postgres")) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    assert indexer.cli.main(["migrate", "--dsn", postgres.dsn(database)]) == 0
    capsys.readouterr()
    async with await psycopg.AsyncConnection.connect(
        postgres.indexer_dsn(database), autocommit=True
    ) as conn:
        with pytest.raises(SlotError, match=r"run `indexer setup` as the tables' owner"):
            await ensure_publication(conn, f"pub_{unique_name}", WATCHED_TABLES)


# --- a cluster older than the credentials ------------------------------------------------------


@contextlib.contextmanager
def _stack_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="loyalty-cred-stack-"))
    root.chmod(0o755)  # Postgres runs as its own user, who must reach its folder in here
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_up_brings_a_cluster_without_credentials_up_to_them() -> None:
    """What ``up`` made before the stack had credentials: a cluster trusting every loopback
    connection, no password, no indexer role, and data. The next ``up`` keeps the data and
    sets all of it."""
    with _stack_dir() as root:
        config = stack_config.StackConfig(
            stack_dir=root, pg_port=free_port(), redis_port=free_port(), es_port=free_port())
        postgres = Postgres(config, lambda service, message: None)
        old_dsn = f"postgresql://postgres@127.0.0.1:{config.pg_port}/{DATABASE}"
        try:
            # As the stack did then: initdb trusting everyone, its settings, start, database.
            postgres._initdb()
            postgres._write_settings()
            postgres._prepare_log()
            postgres._pg_ctl("start", "-l", str(postgres.log_path), "-w")
            with psycopg.connect(old_dsn.replace(f"/{DATABASE}", "/postgres"),
                                 autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
            with psycopg.connect(old_dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE kept (note text)")
                conn.execute("INSERT INTO kept VALUES ('from before')")
            assert postgres.notice() is not None  # status and up say: restart it
            assert postgres.stop()

            postgres.up()

            assert postgres.notice() is None
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(old_dsn, connect_timeout=10).close()
            with _connect(postgres.dsn()) as conn:
                assert conn.execute("SELECT note FROM kept").fetchall() == [("from before",)]
                role = conn.execute(
                    "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = %s",
                    (stack_config.PG_INDEXER_ROLE,),
                ).fetchone()
            assert role == (False, True)
            with _connect(postgres.indexer_dsn()) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (
                    stack_config.PG_INDEXER_ROLE,)
            # And again: nothing to do twice, nothing broken by doing it.
            assert postgres.stop()
            postgres.up()
            with _connect(postgres.indexer_dsn()) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            postgres.stop()
