"""``readapi serve --workers 2`` as a user runs it: both workers answer on one port, /metrics
counts every worker's requests whichever worker answers the scrape, and SIGTERM lets a
request in flight finish before the processes exit."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import re
import signal
import sys
import tempfile
from asyncio.subprocess import Process
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from tests.fixtures.faults import free_port
from tests.fixtures.indexer import IndexerHarness
from tests.fixtures.readapi import KEY_A, assert_error, seed_tenants

BOUND_SECONDS = 30.0
ROUTE_200 = re.compile(
    r'^readapi_requests_total\{method="GET",route="/v1/vouchers/\{code\}",status="200"\} '
    r"([0-9.]+)$",
    re.MULTILINE,
)


def worker_of(response: aiohttp.ClientResponse) -> str:
    """The answering process: request ids made here start with a per-process tag."""
    return response.headers["X-Request-Id"].split("-")[0]


@pytest.fixture
async def served(harness: IndexerHarness) -> AsyncIterator[tuple[Process, str]]:
    await seed_tenants(harness)
    await harness.execute(
        "INSERT INTO vouchers (id, project_id, code, type) "
        "VALUES ('v_1', 'proj_a', 'C-1', 'GIFT_VOUCHER')"
    )
    await harness.catch_up()
    port = free_port()
    env = {
        **os.environ,
        "LOYALTY_REDIS_URL": harness.settings.redis_url,
        "LOYALTY_ES_URL": harness.settings.es_url,
        "LOYALTY_ES_INDEX_PREFIX": harness.settings.es_index_prefix,
        "LOYALTY_REDIS_KEY_PREFIX": harness.settings.redis_key_prefix,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "readapi.cli", "serve", "--workers", "2", "--port", str(port),
        "--log-level", "WARNING",
        env=env,
        start_new_session=True,  # its own process group, so that clean-up reaches the workers
    )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


def fresh_session() -> aiohttp.ClientSession:
    """A new connection per request, so that the kernel may pick either worker each time."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def raw_exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` bytes, read the whole answer (the server closes after an error)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(BOUND_SECONDS):
            answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


async def both_workers_ready(session: aiohttp.ClientSession, base: str) -> None:
    ready: set[str] = set()
    async with asyncio.timeout(BOUND_SECONDS):
        while len(ready) < 2:
            try:
                async with session.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        ready.add(worker_of(response))
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.02)


async def test_workers_share_the_port_the_metrics_and_a_graceful_stop(
    served: tuple[Process, str],
) -> None:
    process, base = served
    headers = {"X-App-Id": KEY_A[0], "X-App-Token": KEY_A[1]}
    metrics_dirs_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "readapi-metrics-*")))
    async with fresh_session() as session:
        await both_workers_ready(session, base)

        answered: dict[str, int] = {}
        sent = 0
        while len(answered) < 2 or sent < 20:
            assert sent < 400, answered
            async with session.get(f"{base}/v1/vouchers/C-1", headers=headers) as response:
                assert response.status == 200
                assert (await response.json())["id"] == "v_1"
                worker = worker_of(response)
                answered[worker] = answered.get(worker, 0) + 1
            sent += 1

        # Each worker's scrape shows all ``sent`` lookups, not its own share.
        complete_from: set[str] = set()
        async with asyncio.timeout(BOUND_SECONDS):
            while len(complete_from) < 2:
                async with session.get(f"{base}/metrics") as response:
                    assert response.status == 200
                    found = ROUTE_200.search(await response.text())
                    if found is not None and float(found.group(1)) == sent:
                        complete_from.add(worker_of(response))
                await asyncio.sleep(0.05)

        # Requests aiohttp's parser refuses still get the error body and a request id.
        port = int(base.rsplit(":", 1)[1])
        for raw in (
            b"GET /v1/vouchers/" + b"A" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-Long: " + b"b" * 9000 + b"\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
        ):
            status, answer_headers, body = await raw_exchange(port, raw)
            assert status == 400, body
            assert answer_headers["content-type"] == "application/json; charset=utf-8"
            error = orjson.loads(body)
            assert set(error) == {"code", "key", "message", "details", "request_id"}
            assert error["code"] == 400 and error["key"] == "invalid_request"
            assert error["request_id"] == answer_headers["x-request-id"]

        # SIGTERM while a request waits for a watermark that will not come: it still gets
        # its whole answer, then every process exits cleanly.
        waiting = asyncio.ensure_future(session.get(
            f"{base}/v1/vouchers/C-1",
            headers={**headers, "X-Min-Watermark": "FFFFFFFF/0", "X-Wait-Timeout-Ms": "1500"},
        ))
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        response = await waiting
        await assert_error(response, 503, "not_yet_indexed")
        response.release()
    code = await asyncio.wait_for(process.wait(), BOUND_SECONDS)
    assert code == 0
    metrics_dirs_after = set(glob.glob(os.path.join(tempfile.gettempdir(), "readapi-metrics-*")))
    assert metrics_dirs_after <= metrics_dirs_before  # the shared metrics are cleaned up


async def test_workers_stop_when_their_parent_is_killed(served: tuple[Process, str]) -> None:
    """SIGKILL to the parent cannot be passed on: the workers stop by themselves."""
    process, base = served
    async with fresh_session() as session:
        await both_workers_ready(session, base)
        process.kill()  # the parent only
        await process.wait()
        async with asyncio.timeout(BOUND_SECONDS):
            while True:
                try:
                    async with session.get(f"{base}/healthz"):
                        pass
                except aiohttp.ClientConnectionError:
                    break  # nobody listens any more
                await asyncio.sleep(0.1)
