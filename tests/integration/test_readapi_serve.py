"""``readapi serve --workers 2`` as a user runs it: both workers answer on one port, /metrics
counts every worker's requests whichever worker answers the scrape, SIGTERM lets a
request in flight finish before the processes exit, a worker that dies is replaced while
the other one keeps answering, and slow request heads and idle connections are cut."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import random
import re
import signal
import sys
import tempfile
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import orjson
import pytest

from readapi.cli import RESTART_DELAY_MAX_SECONDS, restart_delay
from tests.fixtures.faults import free_port
from tests.fixtures.indexer import IndexerHarness
from tests.fixtures.readapi import KEY_A, assert_error, seed_tenants

pytestmark = pytest.mark.services

BOUND_SECONDS = 30.0
ROUTE_200 = re.compile(
    r'^readapi_requests_total\{method="GET",route="/v1/vouchers/\{code\}",status="200"\} '
    r"([0-9.]+)$",
    re.MULTILINE,
)


def worker_of(response: aiohttp.ClientResponse) -> str:
    """The answering process: request ids made here start with a per-process tag."""
    return response.headers["X-Request-Id"].split("-")[0]


@contextlib.asynccontextmanager
async def serve_two_workers(
    harness: IndexerHarness,
    log_level: str = "WARNING",
    *,
    capture_logs: bool = False,
    rate_limit: int | None = None,
    env_overrides: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[Process, str]]:
    """``readapi serve --workers 2`` over a seeded tenant with voucher C-1 (key A limited to
    ``rate_limit`` requests a minute); its stderr piped when ``capture_logs`` (the caller
    reads it); ``env_overrides``: more variables of its environment."""
    await seed_tenants(harness, limit_a=rate_limit)
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
        **(env_overrides or {}),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "readapi.cli", "serve", "--workers", "2", "--port", str(port),
        "--log-level", log_level,
        env=env,
        stderr=asyncio.subprocess.PIPE if capture_logs else None,
        start_new_session=True,  # its own process group, so that clean-up reaches the workers
    )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


@pytest.fixture
async def served(harness: IndexerHarness) -> AsyncIterator[tuple[Process, str]]:
    async with serve_two_workers(harness) as (process, base):
        yield process, base


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


class LogLines:
    """The JSON lines a process writes to stderr, read as they come."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[dict[str, object]] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.ensure_future(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            with contextlib.suppress(orjson.JSONDecodeError):
                parsed = orjson.loads(line)
                if isinstance(parsed, dict):
                    async with self._changed:
                        self.lines.append(parsed)
                        self._changed.notify_all()

    def matching(self, msg: str) -> list[dict[str, object]]:
        return [line for line in self.lines if line.get("msg") == msg]

    async def wait_for(self, msg: str, count: int = 1) -> list[dict[str, object]]:
        async with asyncio.timeout(BOUND_SECONDS), self._changed:
            await self._changed.wait_for(lambda: len(self.matching(msg)) >= count)
        return self.matching(msg)

    async def until_closed(self) -> None:
        """Every line, once every process writing them has exited."""
        await asyncio.wait_for(asyncio.shield(self._task), BOUND_SECONDS)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def running_child_of(pid: int, parent: int) -> bool:
    """Whether ``pid`` is a live (not zombie) child of ``parent``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return state != "Z" and int(ppid) == parent


async def test_a_dead_worker_is_restarted_while_the_other_answers(
    harness: IndexerHarness,
) -> None:
    headers = {"X-App-Id": KEY_A[0], "X-App-Token": KEY_A[1]}
    async with serve_two_workers(
        harness, "INFO", capture_logs=True, rate_limit=1_000_000
    ) as (process, base):
        assert process.stderr is not None
        logs = LogLines(process.stderr)
        try:
            async with fresh_session() as session:
                await both_workers_ready(session, base)
                started = await logs.wait_for("worker started", 2)
                pids = {line["worker"]: line["pid"] for line in started}
                assert set(pids) == {0, 1}
                assert all(running_child_of(int(str(p)), process.pid) for p in pids.values())
                tags_before: set[str] = set()
                while len(tags_before) < 2:
                    async with session.get(f"{base}/healthz") as response:
                        tags_before.add(worker_of(response))

                victim = int(str(pids[0]))
                os.kill(victim, signal.SIGKILL)
                (death,) = await logs.wait_for("worker died")
                assert death["worker"] == 0 and death["pid"] == victim
                assert death["signal"] == "SIGKILL"
                # The first death in a row: 0.5 s, drawn up to 25 % shorter.
                assert 0.375 <= float(str(death["restart_in_seconds"])) <= 0.5

                # Every request is answered while the worker is away and once it is back;
                # the new worker (a new request id tag) answers some of them.
                answered = 0
                new_tags: set[str] = set()
                async with asyncio.timeout(BOUND_SECONDS):
                    while not new_tags:
                        async with session.get(
                            f"{base}/v1/vouchers/C-1", headers=headers
                        ) as response:
                            assert response.status == 200, await response.text()
                            assert (await response.json())["id"] == "v_1"
                            tag = worker_of(response)
                            if tag not in tags_before:
                                new_tags.add(tag)
                        answered += 1
                        await asyncio.sleep(0.02)
                assert answered > 1
                (restart,) = await logs.wait_for("worker restarted")
                assert restart["worker"] == 0 and restart["previous_pid"] == victim
                replacement = int(str(restart["pid"]))
                assert replacement != victim
                assert not running_child_of(victim, process.pid)
                assert running_child_of(replacement, process.pid)
                survivor = int(str(pids[1]))

            # SIGTERM stops every worker, the replacement too, and nothing is restarted.
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), BOUND_SECONDS)
            assert code == 0
            for pid in (survivor, replacement):
                assert not running_child_of(pid, process.pid), pid
            await logs.until_closed()
            assert len(logs.matching("stopping the workers")) == 1
            assert len(logs.matching("worker restarted")) == 1
            assert len(logs.matching("worker died")) == 1
        finally:
            await logs.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One answer with a ``Content-Length`` from a kept-alive connection: status, body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(line.partition(":")[2]) for line in lines if line.lower().startswith("content-length:")
    )
    return int(lines[0].split()[1]), await reader.readexactly(length)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (sending nothing more)."""
    try:
        async with asyncio.timeout(seconds):
            return await reader.read() == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_a_slow_request_head_is_cut_and_idle_connections_close(
    harness: IndexerHarness,
) -> None:
    """A client sending its headers a byte at a time is cut once the header deadline
    passes; a kept-alive connection is closed once idle for the keep-alive timeout, and
    idling between requests for less does not count against the header deadline."""
    overrides = {"LOYALTY_HEADER_TIMEOUT_SECONDS": "1", "LOYALTY_KEEPALIVE_TIMEOUT_SECONDS": "4"}
    async with serve_two_workers(harness, env_overrides=overrides) as (_process, base):
        port = int(base.rsplit(":", 1)[1])
        async with fresh_session() as session:
            await both_workers_ready(session, base)

        # Slowloris: the request line, then one header byte every 0.1 s.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            started = asyncio.get_running_loop().time()
            cut = False
            async with asyncio.timeout(BOUND_SECONDS):
                while not cut:
                    try:
                        writer.write(b"a")
                        await writer.drain()
                    except ConnectionError:
                        cut = True
                        break
                    cut = await closed_within(reader, 0.1)
            elapsed = asyncio.get_running_loop().time() - started
            # Cut by the header deadline, well before the keep-alive timeout would.
            assert 0.9 <= elapsed <= 3.0, elapsed
        finally:
            writer.close()

        # Keep-alive: two requests 1.5 s apart (more than the header deadline) on one
        # connection, then the connection closes after 4 s of idling.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            writer.write(request)
            assert await read_answer(reader) == (200, b'{"status":"ok"}')
            assert not await closed_within(reader, 1.5)
            writer.write(request)
            assert await read_answer(reader) == (200, b'{"status":"ok"}')
            idle_from = asyncio.get_running_loop().time()
            assert await closed_within(reader, BOUND_SECONDS)
            idle = asyncio.get_running_loop().time() - idle_from
            assert 3.5 <= idle <= 8.0, idle
        finally:
            writer.close()


def test_restart_delays_double_up_to_a_bound_with_jitter() -> None:
    rng = random.Random(7)
    for deaths_before, nominal in ((0, 0.5), (1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0), (99, 30.0)):
        delays = [restart_delay(deaths_before, rng) for _ in range(200)]
        assert min(delays) >= nominal * 0.75, deaths_before
        assert max(delays) <= nominal <= RESTART_DELAY_MAX_SECONDS
        assert len(set(delays)) > 100  # jittered: workers dying together come back apart
