"""Raw-socket fuzzing of ``readapi serve``: random bytes in request lines, paths, header names
and header values, each request on its own connection to a served process (so the protocol
handler of ``readapi/serving.py`` answers what aiohttp's parser refuses).

Every request gets an answer: a 4xx with the JSON error body, a 2xx or a 404 for a request
that is valid after all, or a 503 ``not_yet_indexed`` for a valid future ``X-Min-Watermark``;
never a 5xx otherwise, never a connection closed without an answer. The process logs no
error, and still serves afterwards. The generator is seeded: a failure names the request that
caused it, and the same run reproduces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.fixtures.faults import free_port
from tests.fixtures.indexer import IndexerHarness
from tests.fixtures.readapi import KEY_A, seed_tenants

pytestmark = pytest.mark.services

SEED = 20240501
REQUESTS = 500
ANSWER_TIMEOUT_SECONDS = 10.0
CURSOR_SECRET = "fuzz-cursor-secret"
ERROR_KEYS = {"code", "key", "message", "details", "request_id"}
LSN = re.compile(rb"[ \t]*[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}[ \t]*")


# ---------------------------------------------------------------------------------------
# The served API over indexed data (shared with test_fuzz_schemathesis)


async def seed_fuzz_data(h: IndexerHarness) -> None:
    """Two tenants (key A: app_a/token-a) and a few objects of every kind in project A."""
    await seed_tenants(h)
    await h.execute(
        "INSERT INTO campaigns (id, project_id, name, type, start_date, metadata) VALUES "
        "('camp_1', 'proj_a', 'Summer', 'DISCOUNT_COUPONS', '2024-06-01T00:00:00Z',"
        " '{\"season\": \"summer\"}'),"
        "('camp_2', 'proj_a', 'Points', 'LOYALTY_PROGRAM', NULL, '{}')"
    )
    await h.execute(
        "INSERT INTO customers (id, project_id, source_id, name, email, address, metadata,"
        " created_at) VALUES "
        "('cust_1', 'proj_a', 'crm-1', 'Ann Lee', 'ann@example.com',"
        " '{\"city\": \"Oslo\", \"country\": \"NO\"}', '{\"tier\": \"gold\"}',"
        " '2024-01-01T10:00:00.123456Z'),"
        "('cust_2', 'proj_a', NULL, NULL, NULL, NULL, '{}', '2024-02-01T10:00:00Z')"
    )
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, campaign_id, type, discount, gift_amount,"
        " gift_balance, loyalty_points, loyalty_balance, redemption_quantity, holder_id,"
        " metadata, created_at) VALUES "
        "('v_1', 'proj_a', 'SUMMER-1', 'camp_1', 'DISCOUNT_VOUCHER',"
        " '{\"type\": \"PERCENT\", \"percent_off\": 10}', NULL, NULL, NULL, NULL, 5, NULL,"
        " '{\"color\": \"blue\"}', '2024-05-01T00:00:00Z'),"
        "('v_2', 'proj_a', 'CARD-1', 'camp_2', 'LOYALTY_CARD', NULL, NULL, NULL, 500, 300,"
        " NULL, 'cust_1', '{}', '2024-05-02T00:00:00Z'),"
        "('v_3', 'proj_a', 'GIFT-1', NULL, 'GIFT_VOUCHER', NULL, 1000, 800, NULL, NULL, NULL,"
        " 'cust_1', '{\"note\": \"birthday gift\"}', '2024-05-03T00:00:00Z')"
    )
    await h.execute(
        "INSERT INTO redemptions (id, project_id, voucher_id, customer_id, amount, points,"
        " result) VALUES ('r_1', 'proj_a', 'v_3', 'cust_1', 200, NULL, 'SUCCESS')"
    )
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type, filter) VALUES "
        "('seg_1', 'proj_a', 'Gold', 'auto-update',"
        " '{\"metadata.tier\": {\"conditions\": {\"$is\": [\"gold\"]}}}'),"
        "('seg_2', 'proj_a', 'Picked', 'static', NULL)"
    )
    await h.execute(
        "INSERT INTO segment_members (segment_id, customer_id) VALUES ('seg_2', 'cust_2')"
    )
    await h.catch_up()


@contextlib.asynccontextmanager
async def served_api(harness: IndexerHarness, log_path: Path) -> AsyncIterator[str]:
    """``readapi serve`` (one worker) on this test's prefixes; yields its base URL once it is
    ready. Its log (JSON lines, level INFO) goes to ``log_path``."""
    port = free_port()
    env = {
        **os.environ,
        "LOYALTY_REDIS_URL": harness.settings.redis_url,
        "LOYALTY_ES_URL": harness.settings.es_url,
        "LOYALTY_ES_INDEX_PREFIX": harness.settings.es_index_prefix,
        "LOYALTY_REDIS_KEY_PREFIX": harness.settings.redis_key_prefix,
        "LOYALTY_CURSOR_SECRET": CURSOR_SECRET,
        # The fuzzers send thousands of requests, many with wrong credentials.
        "LOYALTY_RATE_LIMIT_DEFAULT": "1000000",
        "LOYALTY_AUTH_FAILURES_PER_MINUTE": "1000000",
    }
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "readapi.cli", "serve", "--workers", "1",
            "--port", str(port), "--log-level", "INFO",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log_file,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            await _wait_ready(base, process)
            yield base
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


async def _wait_ready(base: str, process: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(60):
        while True:
            assert process.returncode is None, "readapi serve exited"
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)


def logged_errors(log_path: Path) -> list[str]:
    """Lines the served process logged at level error or above (a 500 logs one)."""
    lines = log_path.read_bytes().splitlines()
    return [
        line.decode("utf-8", "replace")
        for line in lines
        if b'"level":"error"' in line or b'"level":"critical"' in line or b"Traceback" in line
    ]


# ---------------------------------------------------------------------------------------
# Requests


HEADER_NAMES = [
    b"X-App-Id", b"X-App-Token", b"X-Min-Watermark", b"X-Wait-Timeout-Ms", b"X-Request-Id",
    b"Host", b"Accept", b"Accept-Encoding", b"User-Agent", b"Cookie", b"Authorization",
]
# Names whose values change how the request is framed: a random value could make the
# server wait for a body that never comes. They are fuzzed apart, with framing kept whole.
FRAMING = {b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"connection"}
PATHS = [
    b"/v1/vouchers/SUMMER-1", b"/v1/vouchers", b"/v1/customers/cust_1",
    b"/v1/customers", b"/v1/customers/cust_1/vouchers", b"/v1/customers/crm-1/segments",
    b"/v1/segments/seg_1", b"/v1/campaigns/camp_1", b"/healthz", b"/readyz",
    b"/docs/static/docs-init.js", b"/nope",
]
PREFIXES = [
    b"/v1/vouchers/", b"/v1/customers/", b"/v1/customers/cust_1/", b"/v1/segments/",
    b"/v1/campaigns/", b"/v1/", b"/", b"/docs/static/", b"", b"*", b"http://x/v1/vouchers/",
]
METHODS = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT",
    b"PROPFIND", b"get", b"G ET", b"GET\x00", b"\xffGET", b"BREW",
]
VERSIONS = [
    b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/9.9",
    b"http/1.1", b"HTTP/11", b"HTTP/1.1 extra", b"HTTP/", b"", b"HTTP/1.\xff",
]
BASE_HEADERS = [
    b"X-App-Id: " + KEY_A[0].encode(),
    b"X-App-Token: " + KEY_A[1].encode(),
    b"X-Wait-Timeout-Ms: 0",
]


class Fuzz:
    """Random request parts from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choice(self, options: list[bytes]) -> bytes:
        return self.rng.choice(options)

    def chunk(self, size: int) -> bytes:
        """Bytes of one kind, never CR or LF (framing is fuzzed apart)."""
        rng = self.rng
        kind = rng.randrange(7)
        if kind == 0:  # printable ASCII
            return bytes(rng.randrange(0x20, 0x7F) for _ in range(size))
        if kind == 1:  # bytes over 0x7F: not UTF-8 on their own
            return bytes(rng.randrange(0x80, 0x100) for _ in range(size))
        if kind == 2:  # control characters
            controls = [*range(0, 10), 11, 12, *range(14, 32), 127]
            return bytes(rng.choice(controls) for _ in range(size))
        if kind == 3:  # valid UTF-8 beyond ASCII
            return "".join(
                chr(rng.choice([rng.randrange(0xA0, 0x800), rng.randrange(0x800, 0xD800),
                                rng.randrange(0x10000, 0x10FFFF)]))
                for _ in range(max(1, size // 2))
            ).encode()
        if kind == 4:  # invalid UTF-8: surrogates, overlongs, truncated sequences
            return b"".join(
                rng.choice([b"\xed\xa0\x80", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf4\x90\x80\x80",
                            b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98"])
                for _ in range(max(1, size // 2))
            )
        if kind == 5:  # percent escapes, valid or not
            return b"".join(
                rng.choice([b"%%%02X" % rng.randrange(256), b"%", b"%G1", b"%2", b"%2E",
                            b"%2F", b"%00", b"..", b"/", b"?", b"#", b"+", b"%25"])
                for _ in range(max(1, size // 2))
            )
        return bytes(rng.choice([b for b in range(256) if b not in (10, 13)]) for _ in range(size))

    def data(self, longest: int = 48) -> bytes:
        rng = self.rng
        parts = [self.chunk(rng.randrange(0, longest // 3 + 1)) for _ in range(rng.randrange(1, 4))]
        return b"".join(parts)

    def name(self) -> bytes:
        while True:
            name = self.data(24).replace(b":", b"") or b"X"
            if name.strip().lower() not in FRAMING:
                return name


@dataclass(frozen=True)
class Probe:
    kind: str
    raw: bytes
    head_only: bool = False  # HEAD: the answer has no body


def request(line: bytes, headers: list[bytes]) -> bytes:
    # Connection: close first, so that the server ends the exchange after one answer.
    return line + b"\r\nConnection: close\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def header_value_probe(f: Fuzz) -> Probe:
    name = f.choice(HEADER_NAMES)
    headers = [h for h in BASE_HEADERS if not h.lower().startswith(name.lower() + b":")]
    value = f.data(300 if f.rng.random() < 0.1 else 48)
    return Probe("header value", request(
        b"GET " + f.choice(PATHS) + b" HTTP/1.1", [b"Host: x", *headers, name + b": " + value]
    ))


def header_name_probe(f: Fuzz) -> Probe:
    return Probe("header name", request(
        b"GET " + f.choice(PATHS) + b" HTTP/1.1",
        [b"Host: x", *BASE_HEADERS, f.name() + b": " + f.data(16)],
    ))


def request_line_probe(f: Fuzz) -> Probe:
    method = f.choice(METHODS) if f.rng.random() < 0.7 else f.data(12).replace(b" ", b"")
    target = f.choice(PATHS) if f.rng.random() < 0.5 else f.choice(PREFIXES) + f.data()
    version = f.choice(VERSIONS)
    separator = f.choice([b" ", b" ", b" ", b"  ", b"\t"])
    line = method + separator + target + (b" " + version if version else b"")
    return Probe("request line", request(line, [b"Host: x", *BASE_HEADERS]), method == b"HEAD")


def path_probe(f: Fuzz) -> Probe:
    target = f.choice(PREFIXES[:8]) + f.data()
    if f.rng.random() < 0.4:
        target += b"?" + f.data() + b"=" + f.data()
    return Probe("path", request(b"GET " + target + b" HTTP/1.1", [b"Host: x", *BASE_HEADERS]))


def line_ending_probe(f: Fuzz) -> Probe:
    path = f.choice(PATHS)
    value = f.data(16)
    variants = [
        # Bare LF line ends throughout.
        b"GET " + path + b" HTTP/1.1\nConnection: close\nHost: x\nX-App-Id: app_a\n"
        b"X-App-Token: token-a\n\n",
        # A bare CR inside a value.
        request(b"GET " + path + b" HTTP/1.1", [b"Host: x", *BASE_HEADERS, b"X-A: a\rb" + value]),
        # Obsolete line folding.
        request(b"GET " + path + b" HTTP/1.1",
                [b"Host: x", b"X-App-Id: app_a", b" continued", b"X-App-Token: token-a"]),
        # CRLF injected into a value: two header lines.
        request(b"GET " + path + b" HTTP/1.1",
                [b"Host: x", *BASE_HEADERS, b"X-Request-Id: a\r\nX-Min-Watermark: " + value]),
        # A NUL inside the request line.
        request(b"GET " + path + b"\x00" + value + b" HTTP/1.1", [b"Host: x", *BASE_HEADERS]),
    ]
    return Probe("line endings", f.rng.choice(variants))


def structure_probe(f: Fuzz) -> Probe:
    path = f.choice(PATHS)
    rng = f.rng
    variants = [
        [b"Host: x", *BASE_HEADERS, b"X-App-Id: " + f.data(16)],  # repeated credentials
        [b"Host: x", *BASE_HEADERS, b": " + f.data(8)],  # empty name
        [b"Host: x", *BASE_HEADERS, b"X-No-Colon " + f.data(8)],  # no colon
        [b"Host: x", b"X-App-Id : app_a", b"X-App-Token: token-a"],  # space before colon
        [b"Host: x", *BASE_HEADERS, *(b"X-H%d: %s" % (i, f.data(8)) for i in range(200))],
        [b"Host: x", *BASE_HEADERS, b"X-Big: " + b"a" * rng.randrange(8000, 20000)],
        [b"Host: x", *BASE_HEADERS, b"Content-Length: " + f.choice(
            [b"abc", b"-1", b"1, 2", b"99999999999999999999", b"\xff", b" "])],
        [b"Host: x", *BASE_HEADERS, b"Transfer-Encoding: " + f.choice(
            [b"gzip", b"chunked, chunked", b"identity", b"\xff", b"chunkedx"])],
        [b"Host: " + f.data(16), *BASE_HEADERS],
        [*BASE_HEADERS],  # no Host at all
    ]
    return Probe("structure", request(b"GET " + path + b" HTTP/1.1", rng.choice(variants)))


def garbage_probe(f: Fuzz) -> Probe:
    return Probe("garbage", f.data(200) + b"\r\n\r\n")


GENERATORS: list[tuple[Callable[[Fuzz], Probe], int]] = [
    (header_value_probe, 35),
    (header_name_probe, 15),
    (request_line_probe, 15),
    (path_probe, 20),
    (line_ending_probe, 5),
    (structure_probe, 6),
    (garbage_probe, 4),
]


def probes(seed: int, count: int) -> list[Probe]:
    f = Fuzz(seed)
    makers = [maker for maker, weight in GENERATORS for _ in range(weight)]
    return [f.rng.choice(makers)(f) for _ in range(count)]


# ---------------------------------------------------------------------------------------
# Answers


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class NoAnswer(AssertionError):
    """The connection ended (or went silent) before a whole answer came."""


async def exchange(port: int, probe: Probe) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(probe.raw)
            await writer.drain()
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head[:-4].decode("latin-1").split("\r\n")
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                status = int(lines[0].split(" ", 2)[1])
                if probe.head_only:
                    body = b""
                elif "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                else:
                    body = await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as error:
            raise NoAnswer(f"{type(error).__name__}: no whole answer") from error
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return Answer(status, headers, body)


def verdict(answer: Answer, probe: Probe) -> str | None:
    """What is wrong with ``answer``, None when it is a fine one."""
    status = answer.status
    if 200 <= status < 300:
        return None
    if not 400 <= status < 600:
        return f"unexpected status {status}"
    if probe.head_only:
        return None if status < 500 else f"status {status}"
    if answer.headers.get("content-type") != "application/json; charset=utf-8":
        return f"{status} without the JSON error body: {answer.headers.get('content-type')}"
    try:
        body = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return f"{status} with a body that is not JSON: {answer.body[:100]!r}"
    if not isinstance(body, dict) or set(body) != ERROR_KEYS or body["code"] != status:
        return f"{status} with a malformed error body: {body!r}"
    if body["request_id"] != answer.headers.get("x-request-id"):
        return f"{status}: request_id {body['request_id']!r} is not the X-Request-Id"
    if status >= 500 and not (status == 503 and body["key"] == "not_yet_indexed"):
        return f"server error {status} {body['key']}"
    return None


async def test_random_bytes_in_requests_always_get_a_4xx_json_answer(
    harness: IndexerHarness, tmp_path: Path
) -> None:
    await seed_fuzz_data(harness)
    log_path = tmp_path / "readapi.log"
    statuses: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    failures: list[str] = []
    async with served_api(harness, log_path) as base:
        port = int(base.rsplit(":", 1)[1])
        for number, probe in enumerate(probes(SEED, REQUESTS)):
            kinds[probe.kind] += 1
            try:
                answer = await exchange(port, probe)
            except NoAnswer as error:
                failures.append(f"#{number} {probe.kind}: {error}: {probe.raw[:300]!r}")
                continue
            statuses[answer.status] += 1
            problem = verdict(answer, probe)
            if problem is not None:
                failures.append(f"#{number} {probe.kind}: {problem}: {probe.raw[:300]!r}")
        # Still serving, and valid requests still answered.
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/readyz") as response:
                assert response.status == 200
            headers = {"X-App-Id": KEY_A[0], "X-App-Token": KEY_A[1]}
            async with session.get(f"{base}/v1/vouchers", headers=headers) as response:
                assert response.status == 200, await response.text()
        errors = logged_errors(log_path)  # while serving: what its stop logs is not ours
    print(f"raw fuzzing: {REQUESTS} requests, kinds {dict(kinds)}, statuses {dict(statuses)}")
    assert not failures, "\n".join(failures[:30])
    assert sum(statuses.values()) == REQUESTS
    assert not errors, "\n".join(errors[:10])
    # The fuzzing reached both the parser's refusals and the routes.
    assert statuses[400] > 0 and (statuses[401] + statuses[404] + statuses[200]) > 0
