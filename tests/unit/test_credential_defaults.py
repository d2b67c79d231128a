"""Credentials without a service: the defaults agree with the local stack, the stack writes
them where its servers read them, and every client takes its credentials from the URL.

Elasticsearch: both processes build their client from the URL alone; a user and password in
it must reach the server as HTTP basic auth (checked against a small local HTTP server).
"""

from __future__ import annotations

import base64
import dataclasses
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from cache.config import DEFAULT_REDIS_URL
from indexer.commands import open_clients
from indexer.settings import DEFAULT_PG_ADMIN_DSN, DEFAULT_PG_DSN, IndexerSettings
from readapi.services import Services
from readapi.settings import ApiSettings
from stack import config as stack_config
from stack.postgres import HBA_RULES, Postgres
from stack.redis import Redis

DEFAULT_STACK = stack_config.StackConfig.from_env({})


def _noop(service: str, message: str) -> None:
    del service, message


# -- the defaults are the local stack's ---------------------------------------------------------


def test_default_redis_url_carries_the_stack_password() -> None:
    parts = urlsplit(DEFAULT_REDIS_URL)
    assert (parts.hostname, parts.port) == (stack_config.HOST, stack_config.DEFAULT_REDIS_PORT)
    assert parts.username in (None, "")
    assert unquote(parts.password or "") == stack_config.REDIS_PASSWORD


def test_default_dsns_are_the_stack_roles() -> None:
    postgres = Postgres(DEFAULT_STACK, _noop)
    assert postgres.dsn() == DEFAULT_PG_ADMIN_DSN
    assert postgres.indexer_dsn() == DEFAULT_PG_DSN
    admin = psycopg.conninfo.conninfo_to_dict(DEFAULT_PG_ADMIN_DSN)
    role = psycopg.conninfo.conninfo_to_dict(DEFAULT_PG_DSN)
    assert (admin["user"], admin["password"]) == (
        stack_config.PG_ADMIN_USER, stack_config.PG_ADMIN_PASSWORD)
    assert (role["user"], role["password"]) == (
        stack_config.PG_INDEXER_ROLE, stack_config.PG_INDEXER_PASSWORD)
    assert role["user"] != admin["user"]


def test_settings_default_to_the_role_and_keep_the_admin_apart() -> None:
    settings = IndexerSettings.from_env({})
    assert settings.pg_dsn == DEFAULT_PG_DSN
    assert settings.pg_admin_dsn == DEFAULT_PG_ADMIN_DSN
    assert ApiSettings.from_env({}).redis_url == settings.redis_url == DEFAULT_REDIS_URL


# -- the stack writes them where its servers read them ------------------------------------------


def test_postgres_rules_ask_every_connection_for_a_password() -> None:
    rules = [line.split() for line in HBA_RULES.splitlines() if not line.startswith("#")]
    assert rules, "no rule"
    for rule in rules:
        assert rule[0] == "host" and rule[-1] == "scram-sha-256", rule
        assert rule[3] == f"{stack_config.HOST}/32", rule


def test_redis_config_holds_password_and_memory_policy(tmp_path: Path) -> None:
    config = dataclasses.replace(DEFAULT_STACK, stack_dir=tmp_path)
    redis = Redis(config, _noop)
    redis.data_dir.mkdir(parents=True)
    redis._write_config()
    path = redis.config_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    settings = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            settings[name] = value.strip('"')
    assert settings["requirepass"] == stack_config.REDIS_PASSWORD
    assert settings["maxmemory"] == stack_config.REDIS_MAXMEMORY == "4gb"
    assert settings["maxmemory-policy"] == stack_config.REDIS_MAXMEMORY_POLICY == "noeviction"
    assert settings["bind"] == stack_config.HOST


# -- clients take their credentials from the URL ------------------------------------------------


@pytest.mark.parametrize(
    ("url", "username", "password"),
    [
        ("redis://:loyalty-local@127.0.0.1:6380/0", None, "loyalty-local"),
        ("redis://indexer:s%40cret@cache.internal:6379/2", "indexer", "s@cret"),
        ("rediss://api:pw@cache.internal:6380/0", "api", "pw"),
    ],
)
async def test_redis_client_takes_user_and_password_from_the_url(
    url: str, username: str | None, password: str
) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs.get("username"), kwargs.get("password")) == (username, password)
    finally:
        await client.aclose()


@pytest.fixture
async def fake_elasticsearch() -> AsyncIterator[tuple[str, list[str | None]]]:
    """A server answering ``GET /`` as Elasticsearch does, recording each Authorization."""
    seen: list[str | None] = []

    async def info(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        body = {"name": "fake", "cluster_name": "fake", "version": {"number": "8.19.9"},
                "tagline": "You Know, for Search"}
        return web.json_response(body, headers={"X-Elastic-Product": "Elasticsearch"})

    app = web.Application()
    app.router.add_get("/", info)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"127.0.0.1:{server.port}", seen
    finally:
        await server.close()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_indexer_elasticsearch_client_sends_url_credentials(
    fake_elasticsearch: tuple[str, list[str | None]],
) -> None:
    address, seen = fake_elasticsearch
    settings = IndexerSettings(es_url=f"http://indexer:p%40ss@{address}")
    async with open_clients(settings) as clients:
        await clients.elastic.info()
    assert seen == [_basic("indexer", "p@ss")]


async def test_readapi_elasticsearch_client_sends_url_credentials(
    fake_elasticsearch: tuple[str, list[str | None]],
) -> None:
    address, seen = fake_elasticsearch
    services = Services.build(ApiSettings(es_url=f"http://reader:secret@{address}"))
    try:
        await services.elastic.info()
    finally:
        await services.elastic.close()
        await services.redis.aclose()
    assert seen == [_basic("reader", "secret")]


async def test_elasticsearch_client_without_credentials_sends_none(
    fake_elasticsearch: tuple[str, list[str | None]],
) -> None:
    address, seen = fake_elasticsearch
    async with open_clients(IndexerSettings(es_url=f"http://{address}")) as clients:
        await clients.elastic.info()
    assert seen == [None]
