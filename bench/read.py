"""Read path benchmark: the voucher lookup against the framework's ceiling and plain baselines,
and the list endpoints against a plain Postgres handler.

Runs in one go on this machine, with its own data:

1. a scratch database is created and migrated (``indexer migrate``), seeded (``indexer
   seed``) and given a benchmark key with a limit high enough never to throttle;
2. ``indexer run`` indexes it into Elasticsearch and Redis under unique prefixes, until its
   watermark passes the last commit; then it is stopped;
3. each server is one process pinned to one core (``taskset``), loaded with ``wrk`` (pinned
   to the other core) at a fixed concurrency for ``--duration``; with ``--workers N`` above
   1 the ceiling and the read API run N processes sharing the port and nothing is pinned
   (the other servers stay one process); the scenarios
   (``--scenarios``; default the lookup ones, ceiling to cold-es):
   - ceiling: a bare aiohttp endpoint answering a constant JSON body of a voucher's size;
   - hot: ``readapi serve --workers 1``, one voucher code again and again (L1 hits);
   - naive: an aiohttp app answering the lookup from Postgres per request (psycopg pool);
   - cold-l2: the read API with L1 off (max age 1 ms), codes in turn (Redis per request);
   - plain-redis: the plainest Redis-backed handler a user could write, to compare the L1
     miss with: aiohttp + uvloop + ``redis.asyncio`` (hiredis), one ``GET`` of the code's
     key per request answered as is; the keys (under their own prefix) hold each code's
     voucher JSON as the read API answers it, copied once before the rounds from the
     documents the indexer stored (the read API answers those bytes as stored; a sample of
     codes is checked through the API); codes in turn as for cold-l2;
   - random: ``readapi serve --workers 1`` with its default L1, codes drawn uniformly at
     random (seeded: ``--seed``) among all the project's vouchers: with a million of them,
     a working set far larger than L1, as a real tenant's is;
   - random-plain: the plain-redis server loaded with the same random codes;
   - turn: ``readapi serve --workers 1`` with its default L1 (its default backstop age),
     codes in turn: each code comes back after ``vouchers / rate`` seconds, so whether L1
     answers it depends on the backstop age (``LOYALTY_L1_MAX_AGE_MS``);
   - turn-long: the same with a backstop age of 60 s (``LONG_MAX_AGE_MS``): the price of
     the default age, side by side;
   - cold-es: L1 off and the benchmark project's Redis documents deleted first, unique codes
     (alias miss, Elasticsearch search and realtime GET, Redis fill per request);
   - list-api: ``readapi serve --workers 1``, ``GET /v1/vouchers?campaign_id=C&limit=10``
     again and again, C being the campaign with the most vouchers in the benchmark project
     (ties: the first id in code point order);
   - list-naive: the same path on ``NAIVE_LIST_APP``, a plain aiohttp + uvloop + psycopg
     pool handler (below);
   - search-api: ``readapi serve --workers 1``, ``GET /v1/customers?q=W&limit=10`` again and
     again, W being the most common word of the project's customer names (lower-cased,
     ASCII letters only, at least 3 of them, so that Elasticsearch's standard analyzer and
     Postgres's text parser cut it alike; ties: the first in code point order);
   - search-naive: the same path on ``NAIVE_LIST_APP``;
   - cluster-cold, cluster-random: cold-l2 and random with the read API on a Redis Cluster
     (``--redis-cluster-url``, default the local stack's: ``stack up redis-cluster``), the
     indexed keys copied there from the single Redis first (DUMP/RESTORE);
   the list and cluster scenarios run only when named, e.g. ``--scenarios
   list-api,list-naive,search-api,search-naive`` (add lookup ones to the list to run both);
   every scenario but cold-es runs side by side (all chosen servers up at once, pinned to
   the same core) and is loaded in turn for ``--rounds`` rounds (the order reversed every
   other round); the median of each is reported, and the ratios are taken within each
   round, between runs seconds apart, and their median reported: on a shared machine whose
   speed drifts by tens of percent over a minute, a ratio of runs far apart in time measures
   the drift as much as the servers; cold-es runs once, after the rounds;
4. the hot lookup and the random lookup (when they ran) run again at half their peak rate
   (wrk's ``delay()`` hook throttles each connection) to read their p99 when not saturated.

The naive list handler (``NAIVE_LIST_APP``) is what a user would write with aiohttp and a
psycopg pool, with the indexes it needs: per request, on one pooled connection, the key's
row (as the naive lookup), the page (``limit + 1`` rows, for ``has_more``) and the exact
``total`` (``count(*)`` with the same filter), the objects built in the API's shape and
serialized with orjson (timestamps in UTC with a ``Z``; ``next_cursor`` is the last
object's ``created_at`` and id in base64, unsigned, and never read back: the bench loads
first pages only). Both lists are in the API's order, ``created_at`` descending then ``id``
descending in code point order (``COLLATE "C"``, whatever the database's collation):

- ``/v1/vouchers?campaign_id=C&limit=N``: the campaign's vouchers of the key's project
  (``LEFT JOIN campaigns`` for the name), served by the index ``(project_id, campaign_id,
  created_at DESC, id COLLATE "C" DESC)``, which also answers the count (index only);
- ``/v1/customers?q=W&limit=N``: the API's search (every word of ``q`` among the words of
  name, email and source_id, or the email equal to ``q`` case-insensitively, or the
  source_id equal to ``q``) as Postgres full-text search, no extension needed:
  ``to_tsvector('simple', name || ' ' || email || ' ' || source_id) @@
  plainto_tsquery('simple', q) OR lower(email) = lower(q) OR source_id = q`` (each column
  coalesced to ``''``: ``CUSTOMER_TSVECTOR``), served by a GIN index on that ``to_tsvector``
  expression, an index ``(project_id, lower(email))`` and the
  schema's unique ``(project_id, source_id)``; the page's ``summary`` and ``loyalty`` are
  aggregated for its rows only (``LEFT JOIN LATERAL`` on redemptions and loyalty cards, by
  the schema's indexes), as the indexer computes them. Postgres's text parser is not
  Elasticsearch's standard tokenizer: to Postgres an e-mail address is one word (to
  Elasticsearch, its local part and its domain), ``O'Brien`` two words (one), a hyphenated
  word one word besides its parts (its parts only); hence the choice of W above, a word
  both cut alike.

The bench creates these indexes in the scratch database before the rounds when a naive list
scenario runs, then runs ``VACUUM (ANALYZE)`` on the two tables (what autovacuum would have
done on a database in use: statistics, and the visibility map the index-only count needs),
and prints how long each took. Before the rounds it also fetches the first page from both
servers of a pair run together (list-api and list-naive, search-api and search-naive) and
compares ``total``, ``has_more`` and the ids of the page: a difference is printed as a
warning with both totals (the comparison is then not like for like), not a failure.

Prints a table of requests/s, p50, p99 and non-2xx answers of every run (the median round of
each scenario run in rounds, every round's rate in its note), then the per-round ratios and
their medians: hot/ceiling, hot/naive, cold-l2/plain-redis, random/random-plain,
list-api/list-naive and
search-api/search-naive (each when both ran), the p99 at half peak, and, when list scenarios
ran, the paths loaded, the page comparison and the index build times.
Everything it created (database, indices, Redis keys) is removed at the end, also when a run
fails or the bench is stopped (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
from elasticsearch import Elasticsearch
from redis.cluster import ClusterNode
from scratchdb import unwind_on_sigterm

from cache.config import DEFAULT_ES_URL, DEFAULT_REDIS_URL
from cache.connect import cluster_address
from cache.readmodel.codec import decode_served
from cache.readmodel.keys import KeyLayout
from cache.types import ObjectKind
from indexer.settings import DEFAULT_PG_ADMIN_DSN
from stack.config import StackConfig
from stack.redis_cluster import cluster_url

REPO = Path(__file__).resolve().parent.parent
# Creates and drops its scratch database, and the indexer runs as its owner there: the admin.
PG_DSN = os.environ.get("LOYALTY_PG_ADMIN_DSN") or DEFAULT_PG_ADMIN_DSN
REDIS_URL = os.environ.get("LOYALTY_REDIS_URL") or DEFAULT_REDIS_URL
ES_URL = os.environ.get("LOYALTY_ES_URL") or DEFAULT_ES_URL
DEFAULT_CLUSTER_URL = cluster_url(StackConfig.from_env().redis_cluster_ports)
BENCH_APP_ID = "bench_app"
BENCH_TOKEN = "bench-token-not-secret"
# api_keys.rate_limit_per_minute is an int: the largest, so the benchmark is never throttled.
NO_LIMIT = 2**31 - 1

# argv: port, body size, worker processes (sharing the port, as ``readapi serve`` does).
CEILING_APP = '''
import os, sys, uvloop, asyncio
from aiohttp import web
BODY = b"x" * int(sys.argv[2])
for _ in range(int(sys.argv[3]) - 1):
    if os.fork() == 0:
        break
async def handler(request):
    return web.Response(body=BODY, content_type="application/json", charset="utf-8")
app = web.Application()
app.router.add_get("/v1/vouchers/{code}", handler)
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
            reuse_port=True)
'''

NAIVE_APP = '''
import sys, uvloop, asyncio, orjson
from aiohttp import web
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
SQL = """
SELECT v.id, v.code, 'voucher' AS object, c.name AS campaign, v.campaign_id, v.type,
       v.discount, v.gift_amount, v.gift_balance, v.loyalty_points, v.loyalty_balance,
       v.start_date, v.expiration_date, v.active, v.redemption_quantity,
       v.redeemed_quantity, v.holder_id, v.metadata, v.created_at, v.updated_at
FROM vouchers v LEFT JOIN campaigns c ON c.id = v.campaign_id
WHERE v.project_id = %s AND (v.code = %s OR v.id = %s)
ORDER BY (v.code = %s) DESC LIMIT 1
"""
KEY = """SELECT project_id, token_sha256, revoked_at FROM api_keys WHERE id = %s"""
import hashlib, hmac
async def handler(request):
    pool = request.app["pool"]
    code = request.match_info["code"]
    async with pool.connection() as conn:
        key = await (await conn.execute(KEY, (request.headers.get("X-App-Id", ""),))).fetchone()
        token = request.headers.get("X-App-Token", "").encode()
        if key is None or key["revoked_at"] is not None or not hmac.compare_digest(
            hashlib.sha256(token).hexdigest(), key["token_sha256"]):
            return web.Response(status=401)
        row = await (await conn.execute(SQL, (key["project_id"], code, code, code))).fetchone()
    if row is None:
        return web.Response(status=404)
    amount, gift_balance = row.pop("gift_amount"), row.pop("gift_balance")
    row["gift"] = None if amount is None and gift_balance is None else {
        "amount": amount, "balance": gift_balance}
    points, balance = row.pop("loyalty_points"), row.pop("loyalty_balance")
    row["loyalty_card"] = None if points is None and balance is None else {
        "points": points, "balance": balance}
    row["redemption"] = {"quantity": row.pop("redemption_quantity"),
                         "redeemed_quantity": row.pop("redeemed_quantity")}
    return web.Response(body=orjson.dumps(row, default=str), content_type="application/json")
async def pool_ctx(app):
    pool = AsyncConnectionPool(sys.argv[2], min_size=8, max_size=8, open=False,
                               kwargs={"row_factory": dict_row, "autocommit": True})
    await pool.open()
    app["pool"] = pool
    yield
    await pool.close()
app = web.Application()
app.cleanup_ctx.append(pool_ctx)
app.router.add_get("/v1/vouchers/{code}", handler)
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
'''

# The words of a customer the naive search matches ``q`` against: name, email and
# source_id, as the API's ``search_text``. The same expression in the GIN index and in the
# handler's WHERE, or the planner would not use the index.
CUSTOMER_TSVECTOR = (
    "to_tsvector('simple', coalesce(name, '') || ' ' || coalesce(email, '') || ' ' "
    "|| coalesce(source_id, ''))"
)
# The indexes the naive list handler needs, created in the scratch database before the
# rounds: (name, statement).
NAIVE_LIST_INDEXES = (
    ("bench_vouchers_campaign_order_idx",
     "CREATE INDEX bench_vouchers_campaign_order_idx ON vouchers "
     '(project_id, campaign_id, created_at DESC, id COLLATE "C" DESC)'),
    ("bench_customers_words_idx",
     f"CREATE INDEX bench_customers_words_idx ON customers USING gin (({CUSTOMER_TSVECTOR}))"),
    ("bench_customers_email_lower_idx",
     "CREATE INDEX bench_customers_email_lower_idx ON customers (project_id, lower(email))"),
)
# The tables VACUUM (ANALYZE) runs on once those indexes are built.
NAIVE_LIST_TABLES = ("vouchers", "customers")

# A plain list handler over Postgres: the key's row, one page (limit + 1 rows) and the exact
# total per request, on one pooled connection; objects in the API's shape, orjson.
NAIVE_LIST_APP = """
import sys, base64, hashlib, hmac, uvloop, asyncio, orjson
from aiohttp import web
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
KEY = "SELECT project_id, token_sha256, revoked_at FROM api_keys WHERE id = %(app)s"
VOUCHERS = '''
SELECT v.id, v.code, c.name AS campaign, v.campaign_id, v.type, v.discount, v.gift_amount,
       v.gift_balance, v.loyalty_points, v.loyalty_balance, v.start_date, v.expiration_date,
       v.active, v.redemption_quantity, v.redeemed_quantity, v.holder_id, v.metadata,
       v.created_at, v.updated_at
FROM vouchers v LEFT JOIN campaigns c ON c.id = v.campaign_id
WHERE v.project_id = %(project)s AND v.campaign_id = %(campaign)s
ORDER BY v.created_at DESC, v.id COLLATE "C" DESC
LIMIT %(size)s
'''
VOUCHERS_TOTAL = '''
SELECT count(*) AS total FROM vouchers
WHERE project_id = %(project)s AND campaign_id = %(campaign)s
'''
MATCH = '''
project_id = %(project)s
AND (@TSVECTOR@ @@ plainto_tsquery('simple', %(q)s)
     OR lower(email) = lower(%(q)s) OR source_id = %(q)s)
'''
CUSTOMERS = '''
SELECT p.id, p.source_id, p.name, p.email, p.phone, p.address, p.metadata, p.created_at,
       p.updated_at, r.total_redeemed, r.total_succeeded, r.total_failed, r.redeemed_amount,
       r.redeemed_points, l.points AS loyalty_points
FROM (
    SELECT id, source_id, name, email, phone, address, metadata, created_at, updated_at
    FROM customers WHERE ''' + MATCH + '''
    ORDER BY created_at DESC, id COLLATE "C" DESC
    LIMIT %(size)s
) p
LEFT JOIN LATERAL (
    SELECT count(*) AS total_redeemed,
           count(*) FILTER (WHERE result = 'SUCCESS') AS total_succeeded,
           count(*) FILTER (WHERE result = 'FAILURE') AS total_failed,
           coalesce(sum(amount) FILTER (WHERE result = 'SUCCESS'), 0)::bigint
               AS redeemed_amount,
           coalesce(sum(points) FILTER (WHERE result = 'SUCCESS'), 0)::bigint
               AS redeemed_points
    FROM redemptions WHERE customer_id = p.id
) r ON true
LEFT JOIN LATERAL (
    SELECT coalesce(sum(loyalty_balance), 0)::bigint AS points
    FROM vouchers WHERE holder_id = p.id AND type = 'LOYALTY_CARD'
) l ON true
ORDER BY p.created_at DESC, p.id COLLATE "C" DESC
'''
CUSTOMERS_TOTAL = "SELECT count(*) AS total FROM customers WHERE " + MATCH
def limit_of(request):
    text = request.query.get("limit", "10")
    if not (text.isascii() and text.isdigit() and len(text) <= 3 and 1 <= int(text) <= 100):
        return None
    return int(text)
async def project_of(conn, request):
    key = await (await conn.execute(KEY, {"app": request.headers.get("X-App-Id", "")})
                 ).fetchone()
    token = request.headers.get("X-App-Token", "").encode()
    if key is None or key["revoked_at"] is not None or not hmac.compare_digest(
            hashlib.sha256(token).hexdigest(), key["token_sha256"]):
        return None
    return key["project_id"]
async def read_page(request, sql, total_sql, args):
    async with request.app["pool"].connection() as conn:
        project = await project_of(conn, request)
        if project is None:
            return None, None
        args["project"] = project
        rows = await (await conn.execute(sql, args)).fetchall()
        total = (await (await conn.execute(total_sql, args)).fetchone())["total"]
    return rows, total
def answer(ref, objects, rows, limit, total):
    has_more = len(rows) > limit
    cursor = None
    if has_more:
        last = rows[limit - 1]
        cursor = base64.urlsafe_b64encode(
            (last["created_at"].isoformat() + "|" + last["id"]).encode()).decode()
    body = {"object": "list", "data_ref": ref, ref: objects, "total": total,
            "has_more": has_more, "next_cursor": cursor}
    return web.Response(body=orjson.dumps(body, default=str, option=orjson.OPT_UTC_Z),
                        content_type="application/json")
def pair(first, second, a, b):
    return None if first is None and second is None else {a: first, b: second}
def voucher(row):
    return {
        "id": row["id"], "code": row["code"], "object": "voucher",
        "campaign": row["campaign"], "campaign_id": row["campaign_id"], "type": row["type"],
        "discount": row["discount"],
        "gift": pair(row["gift_amount"], row["gift_balance"], "amount", "balance"),
        "loyalty_card": pair(row["loyalty_points"], row["loyalty_balance"], "points",
                             "balance"),
        "start_date": row["start_date"], "expiration_date": row["expiration_date"],
        "active": row["active"],
        "redemption": {"quantity": row["redemption_quantity"],
                       "redeemed_quantity": row["redeemed_quantity"]},
        "holder_id": row["holder_id"], "metadata": row["metadata"],
        "created_at": row["created_at"], "updated_at": row["updated_at"],
    }
def customer(row):
    return {
        "id": row["id"], "source_id": row["source_id"], "object": "customer",
        "name": row["name"], "email": row["email"], "phone": row["phone"],
        "address": row["address"], "metadata": row["metadata"],
        "summary": {"redemptions": {
            "total_redeemed": row["total_redeemed"],
            "total_succeeded": row["total_succeeded"],
            "total_failed": row["total_failed"],
            "gift": {"redeemed_amount": row["redeemed_amount"]},
            "loyalty_card": {"redeemed_points": row["redeemed_points"]}}},
        "loyalty": {"points": row["loyalty_points"]},
        "created_at": row["created_at"], "updated_at": row["updated_at"],
    }
async def vouchers(request):
    campaign, limit = request.query.get("campaign_id", ""), limit_of(request)
    if not campaign or limit is None:
        return web.Response(status=400)
    rows, total = await read_page(request, VOUCHERS, VOUCHERS_TOTAL,
                                  {"campaign": campaign, "size": limit + 1})
    if rows is None:
        return web.Response(status=401)
    return answer("vouchers", [voucher(row) for row in rows[:limit]], rows, limit, total)
async def customers(request):
    q, limit = request.query.get("q", "").strip(" \\t\\n\\r"), limit_of(request)
    if not q or limit is None:
        return web.Response(status=400)
    rows, total = await read_page(request, CUSTOMERS, CUSTOMERS_TOTAL,
                                  {"q": q, "size": limit + 1})
    if rows is None:
        return web.Response(status=401)
    return answer("customers", [customer(row) for row in rows[:limit]], rows, limit, total)
async def utc(conn):
    # Timestamps come back in UTC, which orjson writes with a Z, as the API does.
    await conn.execute("SET TIME ZONE 'UTC'")
async def pool_ctx(app):
    pool = AsyncConnectionPool(sys.argv[2], min_size=8, max_size=8, open=False,
                               configure=utc,
                               kwargs={"row_factory": dict_row, "autocommit": True})
    await pool.open()
    app["pool"] = pool
    yield
    await pool.close()
app = web.Application()
app.cleanup_ctx.append(pool_ctx)
app.router.add_get("/v1/vouchers", vouchers)
app.router.add_get("/v1/customers", customers)
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
""".replace("@TSVECTOR@", CUSTOMER_TSVECTOR)

# The plainest Redis-backed lookup: one GET of the code's key per request, its bytes
# answered as they are. The URL comes from the environment (LOYALTY_REDIS_URL), not the
# command line, which ``ps`` shows with its password.
PLAIN_REDIS_APP = '''
import os, sys, uvloop, asyncio
import redis.asyncio as aioredis
from aiohttp import web
PREFIX = sys.argv[2]
NOT_FOUND = b'{"error": "not_found"}'
async def handler(request):
    body = await request.app["redis"].get(PREFIX + request.match_info["code"])
    if body is None:
        return web.Response(status=404, body=NOT_FOUND, content_type="application/json")
    return web.Response(body=body, content_type="application/json")
async def redis_ctx(app):
    client = aioredis.Redis.from_url(os.environ["LOYALTY_REDIS_URL"], decode_responses=False)
    await client.ping()
    app["redis"] = client
    yield
    await client.aclose()
app = web.Application()
app.cleanup_ctx.append(redis_ctx)
app.router.add_get("/v1/vouchers/{code}", handler)
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
'''

# wrk script: the benchmark key's headers, and the request path taken in turn from a file.
WRK_SCRIPT = '''
local paths = {}
local i = 0
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local random_seed = tonumber(os.getenv("BENCH_RANDOM_SEED") or "")
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
if random_seed then math.randomseed(random_seed) end
wrk.headers["X-App-Id"] = os.getenv("BENCH_APP_ID")
wrk.headers["X-App-Token"] = os.getenv("BENCH_TOKEN")
function setup(thread) thread:set("offset", math.random(#paths)) end
request = function()
  if random_seed then return wrk.format("GET", paths[math.random(#paths)]) end
  i = i + 1
  return wrk.format("GET", paths[((i + (offset or 0)) % #paths) + 1])
end
if delay_ms > 0 then
  function delay() return delay_ms end
end
function done(summary, latency, requests)
  io.write(string.format("BENCH non2xx=%d\\n", summary.errors.status))
end
'''


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    note: str = ""


Samples = dict[str, list[Result]]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cmd: Sequence[str], core: int | None) -> list[str]:
    if core is None or shutil.which("taskset") is None:
        return list(cmd)
    return ["taskset", "-c", str(core), *cmd]


def dsn_for(database: str) -> str:
    return psycopg.conninfo.make_conninfo(PG_DSN, dbname=database)


def wait_http(
    port: int, path: str = "/", timeout: float = 60.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for port {port} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                status = sock.recv(64)[:12]
                # /readyz must say ready; other servers only need to answer at all.
                if status == b"HTTP/1.1 200" or (path != "/readyz" and status[:8] == b"HTTP/1.1"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not answer 200 on {path}")


@contextmanager
def server(cmd: Sequence[str], env: dict[str, str], port: int, ready_path: str) -> Iterator[None]:
    # stderr goes to a file, not a pipe nobody reads (a chatty server would block on a full
    # one mid-run), and its end is shown when the server does not come up.
    with tempfile.TemporaryFile() as errors:
        # Its own process group: a server of several processes is stopped whole.
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errors,
                                start_new_session=True)
        try:
            try:
                wait_http(port, ready_path, proc=proc)
            except RuntimeError as exc:
                errors.seek(0)
                tail = errors.read()[-3000:].decode(errors="replace")
                raise RuntimeError(f"{exc}; its stderr ends with:\n{tail}") from None
            yield
        finally:
            signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                signal_group(proc, signal.SIGKILL)
                proc.wait()


def signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def parse_latency(text: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {percentile}% latency in wrk output:\n{text}")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(
    name: str, port: int, paths_file: Path, script: Path, *, connections: int, seconds: int,
    wrk_core: int | None, delay_ms: int = 0, random_seed: int | None = None,
) -> Result:
    """``random_seed``: each request's path drawn at random from the file with this seed,
    else the paths in turn."""
    env = {
        **os.environ,
        "BENCH_PATHS": str(paths_file),
        "BENCH_APP_ID": BENCH_APP_ID,
        "BENCH_TOKEN": BENCH_TOKEN,
        "BENCH_DELAY_MS": str(delay_ms),
        "BENCH_RANDOM_SEED": "" if random_seed is None else str(random_seed),
    }
    cmd = pinned(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}/"],
        wrk_core,
    )
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    rps_match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non_2xx = re.search(r"BENCH non2xx=(\d+)", out)
    if rps_match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return Result(
        name, float(rps_match.group(1)), parse_latency(out, "50"), parse_latency(out, "99"),
        int(non_2xx.group(1)) if non_2xx else -1,
    )


class Scratch:
    """The database, index prefix and Redis prefix of this run, removed at the end."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.database = f"bench_read_{tag}"
        self.es_prefix = f"bench{tag}_"
        self.redis_prefix = f"bench{tag}:"
        # The plain-redis server's keys: outside the read model's prefix, so nothing of the
        # read API or indexer ever sees them.
        self.plain_prefix = f"bplain:{uuid.uuid4().hex}:"
        self.slot = f"bench_slot_{tag}"
        self.publication = f"bench_pub_{tag}"
        self.dsn = dsn_for(self.database)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "LOYALTY_PG_DSN": self.dsn,
            "LOYALTY_ES_INDEX_PREFIX": self.es_prefix,
            "LOYALTY_REDIS_KEY_PREFIX": self.redis_prefix,
            "LOYALTY_SLOT_NAME": self.slot,
            "LOYALTY_PUBLICATION": self.publication,
            "LOYALTY_METRICS_PORT": "0",
            "LOYALTY_REDIS_URL": REDIS_URL,
            "LOYALTY_ES_URL": ES_URL,
        }

    def create(self) -> None:
        with psycopg.connect(dsn_for("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')

    def drop(self) -> None:
        """Every step is tried even when one before it failed; the first failure is raised."""
        failures: list[BaseException] = []
        for step in (self._drop_database, self._drop_indices, self._drop_keys):
            try:
                step()
            except Exception as exc:
                log(f"clean-up: {step.__name__} failed: {exc!r}")
                failures.append(exc)
        if failures:
            raise failures[0]

    def _drop_database(self) -> None:
        with psycopg.connect(dsn_for("postgres"), autocommit=True) as admin:
            for (slot,) in admin.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s",
                (self.database,),
            ).fetchall():
                admin.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def _drop_indices(self) -> None:
        es = Elasticsearch(ES_URL)
        try:
            es.options(ignore_status=404).indices.delete(
                index=f"{self.es_prefix}*", expand_wildcards="all"
            )
        finally:
            es.close()

    def _drop_keys(self) -> None:
        delete_keys(self.redis_prefix + "*")
        delete_keys(self.plain_prefix + "*")


def delete_keys(pattern: str) -> int:
    client = redis.Redis.from_url(REDIS_URL)
    deleted = 0
    batch: list[Any] = []
    for key in client.scan_iter(match=pattern, count=5000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += int(client.delete(*batch))
            batch.clear()
    if batch:
        deleted += int(client.delete(*batch))
    client.close()
    return deleted


def copy_to_cluster(prefix: str, cluster_url: str, page: int = 2000) -> int:
    """Every key under ``prefix`` copied from the single Redis to the cluster, TTLs kept."""
    source = redis.Redis.from_url(REDIS_URL)
    target = redis_from_sync_url(cluster_url)
    copied = 0
    try:
        names: list[bytes] = []
        for key in source.scan_iter(match=f"{prefix}*", count=5000):
            names.append(key)
            if len(names) >= page:
                copied += _copy_page(source, target, names)
                names = []
        if names:
            copied += _copy_page(source, target, names)
    finally:
        source.close()
        target.close()
    return copied


def _copy_page(source: Any, target: Any, names: list[bytes]) -> int:
    with source.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.dump(name)
            pipe.pttl(name)
        answers = pipe.execute()
    with target.pipeline(transaction=False) as pipe:
        for index, name in enumerate(names):
            dumped, ttl = answers[2 * index], answers[2 * index + 1]
            if dumped is not None:
                pipe.restore(name, max(int(ttl), 0), dumped, replace=True)
        pipe.execute()
    return len(names)


def delete_cluster_keys(prefix: str, cluster_url: str) -> None:
    client = redis_from_sync_url(cluster_url)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=5000):
            client.delete(key)
    finally:
        client.close()


def redis_from_sync_url(cluster_url: str) -> Any:
    """A synchronous cluster client of a ``redis+cluster://`` URL (``cache/connect.py``)."""
    address = cluster_address(cluster_url)
    return redis.RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
        username=address.username, password=address.password, ssl=address.tls,
    )


def voucher_bodies(port: int, codes: Sequence[str]) -> list[bytes]:
    """Each code's voucher JSON as the read API on ``port`` answers it (one keep-alive
    connection, the benchmark key)."""
    headers = {"X-App-Id": BENCH_APP_ID, "X-App-Token": BENCH_TOKEN}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    bodies: list[bytes] = []
    try:
        for code in codes:
            conn.request("GET", f"/v1/vouchers/{code}", headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"voucher {code!r}: HTTP {response.status}: {body[:200]!r}")
            bodies.append(body)
    finally:
        conn.close()
    return bodies


def copy_plain_bodies(scratch: Scratch, chunk: int = 2000) -> dict[str, int]:
    """``plain_prefix + code`` -> the voucher's body as the indexer stored it, for every
    voucher of the benchmark key's project, pipelined in chunks; the bodies' sizes by code.
    Read from the stored documents rather than through the API: a million HTTP requests
    would take longer than the runs."""
    layout = KeyLayout(scratch.redis_prefix)
    with psycopg.connect(scratch.dsn, autocommit=True) as conn:
        vouchers = conn.execute(
            "SELECT v.project_id, v.id, v.code FROM vouchers v"
            " JOIN api_keys k ON k.project_id = v.project_id WHERE k.id = %s",
            (BENCH_APP_ID,),
        ).fetchall()
    sizes: dict[str, int] = {}
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for start in range(0, len(vouchers), chunk):
            part = vouchers[start : start + chunk]
            stored = client.mget(
                [layout.object_key(project, ObjectKind.VOUCHER, id_) for project, id_, _ in part]
            )
            pipe = client.pipeline(transaction=False)
            for (_, id_, code), blob in zip(part, stored, strict=True):
                body = None if blob is None else decode_served(blob).body
                if body is None:
                    raise RuntimeError(f"voucher {id_!r} is not stored ready to serve")
                pipe.set(scratch.plain_prefix + code, body)
                sizes[code] = len(body)
            pipe.execute()
    finally:
        client.close()
    return sizes


def current_wal_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        return int(row[0])


def indexed_watermark(prefix: str) -> int:
    client = redis.Redis.from_url(REDIS_URL)
    raw = client.get(f"{prefix}wm")
    client.close()
    return int(raw, 16) if raw else 0


def prepare_data(scratch: Scratch, args: argparse.Namespace) -> tuple[str, list[str]]:
    env = scratch.env()
    log(f"database {scratch.database}: migrate and seed {args.vouchers} vouchers")
    subprocess.run(["indexer", "migrate", "--dsn", scratch.dsn], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(
        ["indexer", "seed", "--dsn", scratch.dsn, "--vouchers", str(args.vouchers),
         "--customers", str(max(100, args.vouchers // 5)), "--redemptions", "1000",
         "--projects", str(args.projects)],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )
    import hashlib

    with psycopg.connect(scratch.dsn, autocommit=True) as conn:
        project = conn.execute("SELECT id FROM projects ORDER BY id LIMIT 1").fetchone()
        assert project is not None
        project_id = str(project[0])
        conn.execute(
            "INSERT INTO api_keys (id, project_id, token_sha256, rate_limit_per_minute) "
            "VALUES (%s, %s, %s, %s)",
            (BENCH_APP_ID, project_id, hashlib.sha256(BENCH_TOKEN.encode()).hexdigest(),
             NO_LIMIT),
        )
        codes = [
            str(row[0]) for row in conn.execute(
                "SELECT code FROM vouchers WHERE project_id = %s ORDER BY id", (project_id,)
            ).fetchall()
        ]
    target = current_wal_lsn(scratch.dsn)
    log("indexer run until caught up")
    indexer = subprocess.Popen(["indexer", "run", "--log-level", "WARNING"], env=env)
    try:
        deadline = time.monotonic() + 600
        while indexed_watermark(scratch.redis_prefix) < target:
            if indexer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the indexer stopped or did not catch up")
            time.sleep(0.2)
    finally:
        indexer.send_signal(signal.SIGTERM)
        indexer.wait(timeout=60)
    return project_id, codes


@dataclass
class ListTargets:
    """What the list scenarios ask for: a campaign and a search text of the benchmark
    project, and how many objects each matches in Postgres."""

    campaign_id: str
    campaign_vouchers: int
    search_text: str
    search_names: int
    limit: int = 10

    @property
    def list_path(self) -> str:
        query = urllib.parse.urlencode({"campaign_id": self.campaign_id, "limit": self.limit})
        return f"/v1/vouchers?{query}"

    @property
    def search_path(self) -> str:
        query = urllib.parse.urlencode({"q": self.search_text, "limit": self.limit})
        return f"/v1/customers?{query}"


def list_targets(dsn: str, project_id: str) -> ListTargets:
    """The campaign with the most vouchers in the project, and the word found in the most
    customer names of the project (lower-cased; ASCII letters only, at least 3, which
    Elasticsearch's standard analyzer and Postgres's text parser cut alike); ties: the
    first in code point order."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        campaign = conn.execute(
            "SELECT campaign_id, count(*) FROM vouchers "
            "WHERE project_id = %s AND campaign_id IS NOT NULL "
            "GROUP BY campaign_id ORDER BY count(*) DESC, campaign_id COLLATE \"C\" LIMIT 1",
            (project_id,),
        ).fetchone()
        word = conn.execute(
            "SELECT lower(word), count(DISTINCT id) FROM customers, "
            "regexp_split_to_table(name, '[[:space:]]+') AS word "
            "WHERE project_id = %s AND word ~ '^[A-Za-z]{3,}$' "
            "GROUP BY lower(word) ORDER BY count(DISTINCT id) DESC, lower(word) COLLATE \"C\" "
            "LIMIT 1",
            (project_id,),
        ).fetchone()
    if campaign is None:
        raise RuntimeError(f"no voucher of project {project_id} belongs to a campaign")
    if word is None:
        raise RuntimeError(f"no customer name of project {project_id} has a plain word")
    return ListTargets(str(campaign[0]), int(campaign[1]), str(word[0]), int(word[1]))


def build_naive_list_indexes(dsn: str) -> str:
    """Creates the indexes of the naive list handler and runs VACUUM (ANALYZE) on their
    tables; returns what it did and how long each step took."""
    steps: list[str] = []
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, statement in NAIVE_LIST_INDEXES:
            began = time.monotonic()
            conn.execute(statement)
            steps.append(f"{name} {time.monotonic() - began:.2f} s")
        began = time.monotonic()
        conn.execute(f"VACUUM (ANALYZE) {', '.join(NAIVE_LIST_TABLES)}")
        steps.append(f"VACUUM (ANALYZE) {', '.join(NAIVE_LIST_TABLES)} "
                     f"{time.monotonic() - began:.2f} s")
    return f"{time.monotonic() - started:.2f} s in all: " + "; ".join(steps)


def fetch_page(port: int, path: str) -> tuple[int, bytes]:
    """Status and body of one GET with the benchmark key."""
    headers = {"X-App-Id": BENCH_APP_ID, "X-App-Token": BENCH_TOKEN}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def page_summary(status: int, body: bytes, data_ref: str) -> tuple[Any, bool | None, list[Any]]:
    """(total, has_more, ids of the page) of a list answer; (None, None, []) if it is not
    one."""
    if status != 200:
        return None, None, []
    try:
        page = json.loads(body)
        return page["total"], page["has_more"], [item["id"] for item in page[data_ref]]
    except (ValueError, KeyError, TypeError):
        return None, None, []


def compare_pages(label: str, path: str, api_port: int, naive_port: int, data_ref: str) -> str:
    """Fetches ``path`` from both servers and says whether they answer the same page
    (``total``, ``has_more``, the ids in order); a difference is a warning, not a failure."""
    api_status, api_body = fetch_page(api_port, path)
    naive_status, naive_body = fetch_page(naive_port, path)
    api_total, api_more, api_ids = page_summary(api_status, api_body, data_ref)
    naive_total, naive_more, naive_ids = page_summary(naive_status, naive_body, data_ref)
    sizes = f"bodies: API {len(api_body):,} B, naive {len(naive_body):,} B"
    problems: list[str] = []
    if api_status != 200 or naive_status != 200:
        problems.extend(
            f"HTTP {status} from {side}: {body[:300]!r}"
            for side, status, body in (("the API", api_status, api_body),
                                       ("naive", naive_status, naive_body))
            if status != 200
        )
    elif api_total is None or naive_total is None:
        problems.append("an answer is not a list page")
    else:
        if api_total != naive_total:
            problems.append("totals differ")
        if api_more != naive_more:
            problems.append(f"has_more differs (API {api_more}, naive {naive_more})")
        if api_ids != naive_ids:
            common = min(len(api_ids), len(naive_ids))
            at = next((i for i in range(common) if api_ids[i] != naive_ids[i]), common)
            problems.append(f"ids of the page differ from position {at} "
                            f"({len(api_ids)} on the API's page, {len(naive_ids)} on naive's)")
    if problems:
        line = (f"WARNING: {label} pages differ, the comparison is not like for like: "
                f"{'; '.join(problems)}; total: API {api_total}, naive {naive_total}; {sizes}")
    else:
        line = (f"{label} pages agree: total {api_total}, has_more {api_more}, "
                f"the same {len(api_ids)} ids in the same order; {sizes}")
    log(line)
    return line


# Scenario -> the name its runs carry in the table.
RUN_NAMES = {
    "ceiling": "ceiling (bare aiohttp)",
    "hot": "hot lookup (L1)",
    "naive": "naive (Postgres per request)",
    "cold-l2": "cold lookup (L1 off, Redis)",
    "plain-redis": "plain Redis (aiohttp + GET)",
    "random": "random lookup (all codes, L1)",
    "random-plain": "plain Redis, random codes",
    "turn": "codes in turn (L1, default age)",
    "turn-long": "codes in turn (L1, 60 s age)",
    "cold-es": "cold lookup (L1 off, ES + fill)",
    "list-api": "list by campaign (API, ES)",
    "list-naive": "list by campaign (naive Postgres)",
    "search-api": "customer search (API, ES)",
    "search-naive": "customer search (naive Postgres)",
    "cluster-cold": "cold lookup (L1 off, Redis Cluster)",
    "cluster-random": "random lookup (L1, Redis Cluster)",
}
SCENARIOS = tuple(RUN_NAMES)
# The list scenarios run only when named in --scenarios.
LIST_SCENARIOS = ("list-api", "list-naive", "search-api", "search-naive")
# The read API on a Redis Cluster (``--redis-cluster-url``), also run only when named: the
# indexed keys are copied there (DUMP/RESTORE: the key layout is the same) before the rounds.
CLUSTER_SCENARIOS = ("cluster-cold", "cluster-random")
DEFAULT_SCENARIOS = tuple(
    name for name in SCENARIOS if name not in LIST_SCENARIOS + CLUSTER_SCENARIOS
)
# Run side by side over the rounds, in this order (reversed every other round); cold-es
# deletes the Redis documents the others read, so it runs once, after the rounds.
ROUND_SCENARIOS = (
    "ceiling", "hot", "naive", "cold-l2", "plain-redis", "random", "random-plain", "turn",
    "turn-long", *LIST_SCENARIOS, *CLUSTER_SCENARIOS,
)
# The turn-long scenario's L1 backstop age.
LONG_MAX_AGE_MS = 60_000
# Loaded with paths drawn at random (seeded), not in turn.
RANDOM_SCENARIOS = ("random", "random-plain", "cluster-random")
# Served from the plain-redis keys, filled once before the rounds.
PLAIN_SCENARIOS = ("plain-redis", "random-plain")
# Scenario -> the name of its run at half its peak rate, and that run's p99 goal (ms).
HALF_PEAK = {"hot": "hot lookup at half peak", "random": "random lookup at half peak"}
HALF_PEAK_GOAL_MS = {"hot": 5.0, "random": 10.0}
# Ratios printed when both of their scenarios ran: (top, bottom, label, format, goal).
RATIOS = (
    ("hot", "ceiling", "hot lookup / ceiling", "{:.0%}", "goal >= 80%"),
    ("hot", "naive", "hot lookup / naive", "{:.1f}x", "goal >= 5x"),
    ("cold-l2", "plain-redis", "cold-l2 / plain-redis", "{:.0%}",
     "the L1 miss against one GET; goal >= 100%"),
    ("random", "random-plain", "random / random-plain", "{:.0%}",
     "uniform random codes against one GET; goal >= 100%"),
    ("turn", "turn-long", "turn / turn-long", "{:.0%}",
     "the default backstop age against 60 s, codes in turn"),
    ("list-api", "list-naive", "list-api / list-naive", "{:.2f}x",
     "voucher list by campaign against plain SQL"),
    ("search-api", "search-naive", "search-api / search-naive", "{:.2f}x",
     "customer search against plain SQL"),
    ("cluster-cold", "cold-l2", "cluster-cold / cold-l2", "{:.0%}",
     "the L1 miss on a 3-primary Redis Cluster against one Redis"),
    ("cluster-random", "random", "cluster-random / random", "{:.0%}",
     "uniform random codes on a Redis Cluster against one Redis"),
)
# The pairs whose first pages are compared before the rounds:
# (label, API scenario, naive scenario, data_ref).
PAGE_PAIRS = (
    ("list", "list-api", "list-naive", "vouchers"),
    ("search", "search-api", "search-naive", "customers"),
)


def scenario_list(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown) or '(none given)'}; "
            f"choose among {', '.join(SCENARIOS)}"
        )
    return chosen


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/read.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=positive, default=3,
                        help="seconds per run (default 3: short runs keep a round's runs "
                        "close in time)")
    parser.add_argument("--connections", type=positive, default=64,
                        help="wrk connections (default 64)")
    parser.add_argument("--vouchers", type=positive, default=20_000,
                        help="vouchers to seed (default 20000)")
    parser.add_argument("--projects", type=positive, default=2,
                        help="projects the vouchers are spread over (default 2); the "
                        "benchmark key reads the first, so 1 puts every voucher in reach "
                        "of the lookups")
    parser.add_argument("--server-core", type=int, default=0,
                        help="core the server under test is pinned to (default 0)")
    parser.add_argument("--wrk-core", type=int, default=1,
                        help="core wrk is pinned to (default 1)")
    parser.add_argument("--rounds", type=positive, default=11,
                        help="rounds of the side-by-side runs (every chosen scenario but "
                        "cold-es), medians reported (default 11)")
    parser.add_argument("--scenarios", type=scenario_list, default=list(DEFAULT_SCENARIOS),
                        metavar="NAME[,NAME...]",
                        help="comma-separated scenarios to run, among "
                        f"{', '.join(SCENARIOS)} (default the lookup ones: "
                        f"{','.join(DEFAULT_SCENARIOS)}); the list scenarios run only when "
                        f"named, e.g. --scenarios {','.join(LIST_SCENARIOS)}")
    parser.add_argument("--workers", type=positive, default=1,
                        help="worker processes of the ceiling and of the read API (default "
                        "1: pinned to --server-core, wrk to --wrk-core; more: nothing is "
                        "pinned)")
    parser.add_argument("--seed", type=int, default=7,
                        help="seed of the random scenarios' draws (default 7)")
    parser.add_argument("--redis-cluster-url", default=DEFAULT_CLUSTER_URL,
                        help="the Redis Cluster of the cluster scenarios (default the local "
                        f"stack's, `stack up redis-cluster`: {DEFAULT_CLUSTER_URL})")
    parser.add_argument("--keep", action="store_true", help="keep the scratch data")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench/read.py: wrk is not installed", file=sys.stderr)
        return 2
    unwind_on_sigterm()
    scratch = Scratch()
    scratch.create()
    try:
        project_id, codes = prepare_data(scratch, args)
        targets = None
        if set(args.scenarios) & set(LIST_SCENARIOS):
            targets = list_targets(scratch.dsn, project_id)
            log(f"list: campaign {targets.campaign_id} ({targets.campaign_vouchers} vouchers); "
                f"search: {targets.search_text!r} (in {targets.search_names} customer names)")
        results, samples, remarks = run_all(scratch, codes, targets, args)
    finally:
        if not args.keep:
            scratch.drop()
            if set(args.scenarios) & set(CLUSTER_SCENARIOS):
                delete_cluster_keys(scratch.redis_prefix, args.redis_cluster_url)
    print_table(results, samples, remarks, args)
    return 0


def run_all(
    scratch: Scratch, codes: list[str], targets: ListTargets | None, args: argparse.Namespace
) -> tuple[list[Result], Samples, list[str]]:
    """Every result to print, the side-by-side runs of each server in round order, and the
    lines to print after the table."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_read_"))
    try:
        return run_scenarios(scratch, codes, targets, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_scenarios(
    scratch: Scratch, codes: list[str], targets: ListTargets | None,
    args: argparse.Namespace, tmp: Path,
) -> tuple[list[Result], Samples, list[str]]:
    script = tmp / "bench.lua"
    script.write_text(WRK_SCRIPT)
    hot_paths = tmp / "hot.txt"
    hot_paths.write_text(f"/v1/vouchers/{codes[0]}\n")
    all_paths = tmp / "all.txt"
    all_paths.write_text("".join(f"/v1/vouchers/{code}\n" for code in codes))
    # One worker: the server pinned to one core, wrk to the other. Several: nothing pinned,
    # the servers' processes and wrk share the cores as a deployment's would.
    core, wrk_core = (args.server_core, args.wrk_core) if args.workers == 1 else (None, None)
    env = scratch.env()
    cold_env = {**env, "LOYALTY_L1_MAX_AGE_MS": "1"}
    wanted = set(args.scenarios)
    results: list[Result] = []
    remarks: list[str] = []
    # The list scenarios load one fixed path each.
    list_paths = tmp / "list.txt"
    search_paths = tmp / "search.txt"
    if targets is not None:
        list_paths.write_text(f"{targets.list_path}\n")
        search_paths.write_text(f"{targets.search_path}\n")
        remarks.append(f"list paths: GET {targets.list_path} (the campaign with the most "
                       f"vouchers in the bench project: {targets.campaign_vouchers}); "
                       f"GET {targets.search_path} (the commonest word of the project's "
                       f"customer names: in {targets.search_names} names)")

    def load(name: str, port: int, paths: Path, delay_ms: int = 0, conns: int | None = None,
             random_seed: int | None = None) -> Result:
        log(f"{name}: wrk for {args.duration} s")
        result = run_wrk(name, port, paths, script, connections=conns or args.connections,
                         seconds=args.duration, wrk_core=wrk_core, delay_ms=delay_ms,
                         random_seed=random_seed)
        log(f"{name}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
            f"p99 {result.p99_ms:.2f} ms, non-2xx {result.non_2xx}")
        return result

    def at_half_peak(scenario: str, port: int, paths: Path, results: list[Result]) -> Result:
        """``scenario`` again at half its median rate: each connection waits ``delay`` ms
        after every answer, so the rate is connections / (delay + latency); a short
        calibration run fixes the count."""
        seed = args.seed if scenario in RANDOM_SCENARIOS else None
        peak = next(r for r in results if r.name == RUN_NAMES[scenario])
        target = peak.rps / 2
        delay_ms = 5
        conns = max(1, round(target * (delay_ms + 0.5) / 1000))
        calibration = run_wrk("calibration", port, paths, script, connections=conns,
                              seconds=3, wrk_core=wrk_core, delay_ms=delay_ms,
                              random_seed=seed)
        conns = max(1, round(conns * target / max(calibration.rps, 1.0)))
        half = load(HALF_PEAK[scenario], port, paths, delay_ms=delay_ms, conns=conns,
                    random_seed=seed)
        half.note = f"target {target:,.0f}/s: {conns} conns, {delay_ms} ms pause each"
        return half

    body_size = 400
    api_cmd = ["readapi", "serve", "--workers", str(args.workers), "--log-level", "WARNING"]

    def started(scenario: str, port: int) -> tuple[list[str], dict[str, str], str, Path]:
        """The command, environment, readiness path and request paths of a scenario."""
        if scenario == "ceiling":
            cmd = [sys.executable, "-c", CEILING_APP, str(port), str(body_size),
                   str(args.workers)]
            return cmd, env, "/v1/vouchers/x", hot_paths
        if scenario == "hot":
            return [*api_cmd, "--port", str(port)], env, "/readyz", hot_paths
        if scenario == "naive":
            cmd = [sys.executable, "-c", NAIVE_APP, str(port), scratch.dsn]
            return cmd, env, "/v1/vouchers/x", all_paths
        if scenario in ("plain-redis", "random-plain"):
            cmd = [sys.executable, "-c", PLAIN_REDIS_APP, str(port), scratch.plain_prefix]
            return cmd, env, "/v1/vouchers/x", all_paths
        if scenario in ("random", "turn"):
            return [*api_cmd, "--port", str(port)], env, "/readyz", all_paths
        if scenario == "turn-long":
            long_env = {**env, "LOYALTY_L1_MAX_AGE_MS": str(LONG_MAX_AGE_MS)}
            return [*api_cmd, "--port", str(port)], long_env, "/readyz", all_paths
        if scenario in ("list-api", "search-api"):
            paths = list_paths if scenario == "list-api" else search_paths
            return [*api_cmd, "--port", str(port)], env, "/readyz", paths
        if scenario in ("list-naive", "search-naive"):
            cmd = [sys.executable, "-c", NAIVE_LIST_APP, str(port), scratch.dsn]
            paths = list_paths if scenario == "list-naive" else search_paths
            return cmd, env, "/v1/vouchers", paths
        if scenario == "cluster-cold":
            cluster_env = {**cold_env, "LOYALTY_REDIS_URL": args.redis_cluster_url}
            return [*api_cmd, "--port", str(port)], cluster_env, "/readyz", all_paths
        if scenario == "cluster-random":
            cluster_env = {**env, "LOYALTY_REDIS_URL": args.redis_cluster_url}
            return [*api_cmd, "--port", str(port)], cluster_env, "/readyz", all_paths
        # cold-l2 and cold-es: the read API with L1 off.
        return [*api_cmd, "--port", str(port)], cold_env, "/readyz", all_paths

    def fill_plain_redis(api_port: int) -> str:
        """Writes every code's voucher JSON, as stored, under the plain-redis prefix, and
        checks a sample against what the read API on ``api_port`` answers; returns a note on
        the bodies' sizes."""
        log(f"plain-redis: copy {len(codes)} stored voucher bodies")
        by_code = copy_plain_bodies(scratch)
        sample = random.Random(args.seed).sample(codes, min(200, len(codes)))
        plain = redis.Redis.from_url(REDIS_URL)
        try:
            for code, body in zip(sample, voucher_bodies(api_port, sample), strict=True):
                if plain.get(scratch.plain_prefix + code) != body:
                    raise RuntimeError(f"plain-redis: {code!r} is not what the API answers")
        finally:
            plain.close()
        sizes = sorted(by_code.values())
        return (f"bodies {sizes[0]}-{sizes[-1]} B, median {sizes[len(sizes) // 2]} "
                f"(ceiling {body_size} B)")

    # The servers run in rounds side by side (all up at once, pinned to the same core) and
    # are loaded in turn for ``--rounds`` rounds: a drift of the machine's speed then hits
    # them all alike, and the median of each is reported.
    in_rounds = [scenario for scenario in ROUND_SCENARIOS if scenario in wanted]
    samples: Samples = {}
    notes: dict[str, str] = {}
    if wanted & {"list-naive", "search-naive"}:
        # Before the naive list servers start: their first plans see the indexes.
        log("naive list indexes: create, then VACUUM (ANALYZE)")
        built = build_naive_list_indexes(scratch.dsn)
        log(f"naive list indexes: {built}")
        remarks.append(f"naive list indexes: {built}")
    if wanted & set(CLUSTER_SCENARIOS):
        copied = copy_to_cluster(scratch.redis_prefix, args.redis_cluster_url)
        log(f"redis cluster: copied {copied} keys of the bench prefix")
        remarks.append(f"Redis Cluster: {copied} keys copied from the single Redis")
    with ExitStack() as stack:
        servers: list[tuple[str, int, Path]] = []
        for scenario in in_rounds:
            if scenario in PLAIN_SCENARIOS and not notes:
                # Through the cold-l2 server when it is up (L1 off: nothing kept), else
                # through one started for this alone.
                cold_l2 = [port for name, port, _ in servers if name == "cold-l2"]
                if cold_l2:
                    note = fill_plain_redis(cold_l2[0])
                else:
                    port = free_port()
                    cmd, server_env, ready, _paths = started("cold-l2", port)
                    with server(cmd, server_env, port, ready):
                        note = fill_plain_redis(port)
                notes.update(dict.fromkeys(PLAIN_SCENARIOS, note))
            port = free_port()
            cmd, server_env, ready, paths = started(scenario, port)
            stack.enter_context(server(pinned(cmd, core), server_env, port, ready))
            servers.append((scenario, port, paths))
        ports = {scenario: port for scenario, port, _paths in servers}
        for label, api, naive, data_ref in PAGE_PAIRS:
            # The comparison is only fair when both answer the same page.
            if targets is not None and api in ports and naive in ports:
                path = targets.list_path if label == "list" else targets.search_path
                remarks.append(compare_pages(label, path, ports[api], ports[naive], data_ref))
            elif api in ports or naive in ports:
                missing = naive if api in ports else api
                remarks.append(f"{label} pages not compared: {missing} did not run")
        for round_number in range(1, args.rounds + 1):
            # Reversed every other round: no server always runs right after another.
            for scenario, port, paths in servers if round_number % 2 else servers[::-1]:
                samples.setdefault(RUN_NAMES[scenario], []).append(load(
                    f"{RUN_NAMES[scenario]} [round {round_number}]", port, paths,
                    random_seed=args.seed if scenario in RANDOM_SCENARIOS else None,
                ))
        for scenario, _port, _paths in servers:
            result = median_run(RUN_NAMES[scenario], samples[RUN_NAMES[scenario]])
            if scenario in notes and scenario in ports:
                result.note += f"; {notes[scenario]}"
            results.append(result)
        for scenario, port, paths in servers:
            if scenario in HALF_PEAK:
                results.append(at_half_peak(scenario, port, paths, results))
    if "cold-es" in wanted:
        deleted = delete_keys(f"{scratch.redis_prefix}{{*}}:v*")
        log(f"deleted {deleted} voucher documents and aliases from Redis")
        port = free_port()
        cmd, server_env, ready, paths = started("cold-es", port)
        with server(pinned(cmd, core), server_env, port, ready):
            results.append(load(RUN_NAMES["cold-es"], port, paths))
    return results, samples, remarks


def round_ratios(samples: Samples, top: str, bottom: str) -> list[float]:
    """``top``/``bottom`` throughput within each round."""
    return [t.rps / b.rps for t, b in zip(samples[top], samples[bottom], strict=True)]


def median_run(name: str, runs: list[Result]) -> Result:
    """The run with the median throughput, its latencies as measured, every rate noted."""
    ordered = sorted(runs, key=lambda r: r.rps)
    chosen = ordered[len(ordered) // 2]
    chosen.name = name
    chosen.note = f"median of {len(runs)}: " + " / ".join(f"{r.rps:,.0f}" for r in runs)
    return chosen


def print_table(
    results: list[Result], samples: Samples, remarks: list[str], args: argparse.Namespace
) -> None:
    by_name = {r.name: r for r in results}
    print()
    if args.workers == 1:
        placement = (f"server pinned to core {args.server_core}, wrk to core {args.wrk_core}; "
                     "1 worker")
    else:
        placement = f"nothing pinned; {args.workers} workers (ceiling and read API)"
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s --latency; {placement}")
    print(f"{'run':<34}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}  note")
    for r in results:
        print(f"{r.name:<34}{r.rps:>10,.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.non_2xx:>9}  "
              f"{r.note}")
    ratios = [
        (f"{top}/{bottom}", round_ratios(samples, RUN_NAMES[top], RUN_NAMES[bottom]),
         by_name[RUN_NAMES[top]].rps / by_name[RUN_NAMES[bottom]].rps, label, shown, goal)
        for top, bottom, label, shown, goal in RATIOS
        if RUN_NAMES[top] in samples and RUN_NAMES[bottom] in samples
    ]
    if ratios:
        print()
        print("ratios within each round: " + "; ".join(
            " / ".join(shown.format(r) for r in per_round) + f" ({pair})"
            for pair, per_round, _of_medians, _label, shown, _goal in ratios
        ))
    for _pair, per_round, of_medians, label, shown, goal in ratios:
        print(f"{label + ':':<27}{shown.format(statistics.median(per_round))} median of rounds, "
              f"{shown.format(of_medians)} of the medians ({goal})")
    for scenario, name in HALF_PEAK.items():
        if name in by_name:
            print(f"{f'p99 at half peak, {scenario}:':<27}{by_name[name].p99_ms:.2f} ms "
                  f"(goal < {HALF_PEAK_GOAL_MS[scenario]:.0f} ms)")
    if remarks:
        print()
        for remark in remarks:
            print(remark)


if __name__ == "__main__":
    raise SystemExit(main())
