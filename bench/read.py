"""Read path benchmark: the voucher lookup against the framework's ceiling and a naive baseline.

Runs in one go on this machine, with its own data:

1. a scratch database is created and migrated (``indexer migrate``), seeded (``indexer
   seed``) and given a benchmark key with a limit high enough never to throttle;
2. ``indexer run`` indexes it into Elasticsearch and Redis under unique prefixes, until its
   watermark passes the last commit; then it is stopped;
3. each server is started alone, as one process pinned to one core (``taskset``), and
   loaded with ``wrk`` (pinned to the other core) at a fixed concurrency for ``--duration``:
   - ceiling: a bare aiohttp endpoint answering a constant JSON body of a voucher's size;
   - hot: ``readapi serve --workers 1``, one voucher code again and again (L1 hits);
   - cold-l2: the same with L1 off (max age 1 ms), codes in turn (Redis per request);
   - cold-es: L1 off and the benchmark project's Redis documents deleted first, unique codes
     (alias miss, Elasticsearch search and realtime GET, Redis fill per request);
   - naive: an aiohttp app answering the lookup from Postgres per request (psycopg pool);
   ceiling, hot and naive run side by side and are loaded in turn for ``--rounds`` rounds
   (the order reversed every other round); the median of each is reported, and the ratios
   are taken within each round, between runs seconds apart, and their median reported: on a
   shared machine whose speed drifts by tens of percent over a minute, a ratio of runs far
   apart in time measures the drift as much as the servers;
4. the hot lookup runs again at half its peak rate (wrk's ``delay()`` hook throttles each
   connection) to read its p99 when not saturated.

Prints a table of requests/s, p50 and p99, and the ratios hot/ceiling and hot/naive.
Everything it created (database, indices, Redis keys) is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
from elasticsearch import Elasticsearch

from cache.config import DEFAULT_ES_URL, DEFAULT_REDIS_URL
from indexer.settings import DEFAULT_PG_ADMIN_DSN

REPO = Path(__file__).resolve().parent.parent
# Creates and drops its scratch database, and the indexer runs as its owner there: the admin.
PG_DSN = os.environ.get("LOYALTY_PG_ADMIN_DSN") or DEFAULT_PG_ADMIN_DSN
REDIS_URL = os.environ.get("LOYALTY_REDIS_URL") or DEFAULT_REDIS_URL
ES_URL = os.environ.get("LOYALTY_ES_URL") or DEFAULT_ES_URL
BENCH_APP_ID = "bench_app"
BENCH_TOKEN = "bench-token-not-secret"
# api_keys.rate_limit_per_minute is an int: the largest, so the benchmark is never throttled.
NO_LIMIT = 2**31 - 1

CEILING_APP = '''
import sys, uvloop, asyncio
from aiohttp import web
BODY = b"x" * int(sys.argv[2])
async def handler(request):
    return web.Response(body=BODY, content_type="application/json", charset="utf-8")
app = web.Application()
app.router.add_get("/v1/vouchers/{code}", handler)
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
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

# wrk script: the benchmark key's headers, and the request path taken in turn from a file.
WRK_SCRIPT = '''
local paths = {}
local i = 0
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
wrk.headers["X-App-Id"] = os.getenv("BENCH_APP_ID")
wrk.headers["X-App-Token"] = os.getenv("BENCH_TOKEN")
function setup(thread) thread:set("offset", math.random(#paths)) end
request = function()
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


def wait_http(port: int, path: str = "/", timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
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
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_http(port, ready_path)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def parse_latency(text: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {percentile}% latency in wrk output:\n{text}")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(
    name: str, port: int, paths_file: Path, script: Path, *, connections: int, seconds: int,
    wrk_core: int | None, delay_ms: int = 0,
) -> Result:
    env = {
        **os.environ,
        "BENCH_PATHS": str(paths_file),
        "BENCH_APP_ID": BENCH_APP_ID,
        "BENCH_TOKEN": BENCH_TOKEN,
        "BENCH_DELAY_MS": str(delay_ms),
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
        with psycopg.connect(dsn_for("postgres"), autocommit=True) as admin:
            for (slot,) in admin.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s",
                (self.database,),
            ).fetchall():
                admin.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        es = Elasticsearch(ES_URL)
        es.options(ignore_status=404).indices.delete(
            index=f"{self.es_prefix}*", expand_wildcards="all"
        )
        es.close()
        delete_keys(self.redis_prefix + "*")


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
         "--customers", str(max(100, args.vouchers // 5)), "--redemptions", "1000"],
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/read.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=int, default=3,
                        help="seconds per run (default 3: short runs keep a round's runs "
                        "close in time)")
    parser.add_argument("--connections", type=int, default=64,
                        help="wrk connections (default 64)")
    parser.add_argument("--vouchers", type=int, default=20_000,
                        help="vouchers to seed (default 20000)")
    parser.add_argument("--server-core", type=int, default=0,
                        help="core the server under test is pinned to (default 0)")
    parser.add_argument("--wrk-core", type=int, default=1,
                        help="core wrk is pinned to (default 1)")
    parser.add_argument("--rounds", type=int, default=11,
                        help="rounds of ceiling, hot and naive runs, medians reported "
                        "(default 11)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch data")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench/read.py: wrk is not installed", file=sys.stderr)
        return 2
    scratch = Scratch()
    scratch.create()
    try:
        _project_id, codes = prepare_data(scratch, args)
        results, samples = run_all(scratch, codes, args)
    finally:
        if not args.keep:
            scratch.drop()
    print_table(results, samples, args)
    return 0


def run_all(
    scratch: Scratch, codes: list[str], args: argparse.Namespace
) -> tuple[list[Result], Samples]:
    """Every result to print, and the side-by-side runs of each server in round order."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_read_"))
    script = tmp / "bench.lua"
    script.write_text(WRK_SCRIPT)
    hot_paths = tmp / "hot.txt"
    hot_paths.write_text(f"/v1/vouchers/{codes[0]}\n")
    all_paths = tmp / "all.txt"
    all_paths.write_text("".join(f"/v1/vouchers/{code}\n" for code in codes))
    core, wrk_core = args.server_core, args.wrk_core
    env = scratch.env()
    results: list[Result] = []

    def load(name: str, port: int, paths: Path, delay_ms: int = 0, conns: int | None = None
             ) -> Result:
        log(f"{name}: wrk for {args.duration} s")
        result = run_wrk(name, port, paths, script, connections=conns or args.connections,
                         seconds=args.duration, wrk_core=wrk_core, delay_ms=delay_ms)
        log(f"{name}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
            f"p99 {result.p99_ms:.2f} ms, non-2xx {result.non_2xx}")
        return result

    # Ceiling, hot lookup and naive baseline run side by side (three servers up, all pinned
    # to the same core) and are loaded in turn for ``--rounds`` rounds: a drift of the
    # machine's speed then hits all three alike, and the median of each is reported.
    body_size = 400
    api_cmd = ["readapi", "serve", "--workers", "1", "--log-level", "WARNING"]
    ceiling_port, hot_port, naive_port = free_port(), free_port(), free_port()
    ceiling_cmd = pinned(
        [sys.executable, "-c", CEILING_APP, str(ceiling_port), str(body_size)], core
    )
    naive_cmd = pinned([sys.executable, "-c", NAIVE_APP, str(naive_port), scratch.dsn], core)
    samples: Samples = {}
    with (
        server(ceiling_cmd, env, ceiling_port, "/v1/vouchers/x"),
        server(pinned([*api_cmd, "--port", str(hot_port)], core), env, hot_port, "/readyz"),
        server(naive_cmd, env, naive_port, "/v1/vouchers/x"),
    ):
        servers = [
            ("ceiling (bare aiohttp)", ceiling_port, hot_paths),
            ("hot lookup (L1)", hot_port, hot_paths),
            ("naive (Postgres per request)", naive_port, all_paths),
        ]
        for round_number in range(1, args.rounds + 1):
            # Reversed every other round: no server always runs right after another.
            for name, port, paths in servers if round_number % 2 else servers[::-1]:
                samples.setdefault(name, []).append(
                    load(f"{name} [round {round_number}]", port, paths)
                )
        for name, _port, _paths in servers:
            results.append(median_run(name, samples[name]))
        hot = results[1]
        # Half the peak rate: each connection waits ``delay`` ms after every answer, so the
        # rate is connections / (delay + latency); a short calibration run fixes the count.
        target = hot.rps / 2
        delay_ms = 5
        conns = max(1, round(target * (delay_ms + 0.5) / 1000))
        calibration = run_wrk("calibration", hot_port, hot_paths, script, connections=conns,
                              seconds=3, wrk_core=wrk_core, delay_ms=delay_ms)
        conns = max(1, round(conns * target / max(calibration.rps, 1.0)))
        half = load("hot lookup at half peak", hot_port, hot_paths, delay_ms=delay_ms,
                    conns=conns)
        half.note = f"target {target:,.0f}/s: {conns} conns, {delay_ms} ms pause each"
        results.append(half)

    cold_env = {**env, "LOYALTY_L1_MAX_AGE_MS": "1"}
    port = free_port()
    with server(pinned([*api_cmd, "--port", str(port)], core), cold_env, port, "/readyz"):
        results.append(load("cold lookup (L1 off, Redis)", port, all_paths))
    deleted = delete_keys(f"{scratch.redis_prefix}{{*}}:v*")
    log(f"deleted {deleted} voucher documents and aliases from Redis")
    port = free_port()
    with server(pinned([*api_cmd, "--port", str(port)], core), cold_env, port, "/readyz"):
        results.append(load("cold lookup (L1 off, ES + fill)", port, all_paths))

    shutil.rmtree(tmp, ignore_errors=True)
    return results, samples


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


def print_table(results: list[Result], samples: Samples, args: argparse.Namespace) -> None:
    by_name = {r.name: r for r in results}
    print()
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s --latency; server pinned to core "
          f"{args.server_core}, wrk to core {args.wrk_core}; 1 worker")
    print(f"{'run':<34}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}  note")
    for r in results:
        print(f"{r.name:<34}{r.rps:>10,.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.non_2xx:>9}  "
              f"{r.note}")
    hot = by_name["hot lookup (L1)"]
    ceiling = by_name["ceiling (bare aiohttp)"]
    naive = by_name["naive (Postgres per request)"]
    half = by_name["hot lookup at half peak"]
    to_ceiling = round_ratios(samples, hot.name, ceiling.name)
    to_naive = round_ratios(samples, hot.name, naive.name)
    print()
    print("ratios within each round: " + " / ".join(f"{r:.0%}" for r in to_ceiling)
          + " (hot/ceiling); " + " / ".join(f"{r:.1f}x" for r in to_naive) + " (hot/naive)")
    print(f"hot lookup / ceiling: {statistics.median(to_ceiling):.0%} median of rounds, "
          f"{hot.rps / ceiling.rps:.0%} of the medians (goal >= 70%)")
    print(f"hot lookup / naive:   {statistics.median(to_naive):.1f}x median of rounds, "
          f"{hot.rps / naive.rps:.1f}x of the medians (goal >= 5x)")
    print(f"p99 at half peak:     {half.p99_ms:.2f} ms (goal < 5 ms)")


if __name__ == "__main__":
    raise SystemExit(main())
