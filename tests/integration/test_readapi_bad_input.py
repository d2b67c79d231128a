"""Malformed and hostile requests get 4xx answers, never a 500: raw bytes on the socket
(bad UTF-8, huge headers, broken percent-encoding) and odd but parseable requests."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from cache.errors import SearchRejected, SearchUnavailable
from readapi.search_query import MalformedSearchResponse
from tests.fixtures.readapi import ERROR_KEYS, ApiHarness, assert_error, sha256_hex
from tests.fixtures.readapi import api_fixture as api_fixture  # the "api" fixture

pytestmark = pytest.mark.services

AUTH = b"X-App-Id: app_a\r\nX-App-Token: token-a\r\n"


async def raw_status(api: ApiHarness, request: bytes) -> tuple[int, bytes]:
    port = api.client.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.read(65536), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    status = int(head.split(b" ", 2)[1])
    return status, head


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /v1/vouchers/\xff\xfe HTTP/1.1",
        b"GET /v1/vouchers/%FF%FE HTTP/1.1",
        b"GET /v1/vouchers/%C0%AF HTTP/1.1",
        b"GET /v1/vouchers/% HTTP/1.1",
        b"GET /v1/vouchers/%zz%%25 HTTP/1.1",
        b"GET /v1/vouchers/a%00b HTTP/1.1",
        b"GET /v1/vouchers/%ED%A0%80 HTTP/1.1",
        b"GET /v1/vouchers?limit=%FF&q=%ED%A0%80 HTTP/1.1",
        b"GET /v1/vouchers?created_at%5Bafter%5D=%00 HTTP/1.1",
        b"GET /v1/vouchers?limit=1&limit=2 HTTP/1.1",
        b"GET /v1/customers?email=" + b"%41" * 3000 + b" HTTP/1.1",
        b"GET /v1/vouchers/" + b"x" * 7000 + b" HTTP/1.1",
        b"GET /v1/vouchers/" + b"x" * 20000 + b" HTTP/1.1",
        b"GET //v1//vouchers HTTP/1.1",
        b"GET /v1/../v1/vouchers HTTP/1.1",
        b"BREW /v1/vouchers HTTP/1.1",
        b"GET * HTTP/1.1",
        b"GARBAGE",
    ],
)
async def test_raw_requests_never_get_a_500(api: ApiHarness, request_line: bytes) -> None:
    status, _ = await raw_status(api, request_line + b"\r\nHost: x\r\n" + AUTH + b"\r\n")
    assert 400 <= status < 500 or status == 200, status


async def test_huge_and_broken_headers_are_4xx(api: ApiHarness) -> None:
    for extra in (
        b"X-Big: " + b"a" * 20000 + b"\r\n",
        b"X-Bad: \xff\xfe\r\n",
        b"X-App-Id: \xff\r\n",
        b"X-Min-Watermark: \xff/\xfe\r\n",
        b"".join(b"X-H%d: v\r\n" % i for i in range(500)),
    ):
        status, _ = await raw_status(
            api, b"GET /v1/vouchers/x HTTP/1.1\r\nHost: x\r\n" + AUTH + extra + b"\r\n"
        )
        assert 400 <= status < 500, status


async def test_odd_but_parseable_requests_answer_the_error_body(api: ApiHarness) -> None:
    await assert_error(await api.get("/v1/vouchers/" + "é" * 201), 400, "invalid_request")
    await assert_error(await api.get("/v1/vouchers/%FF"), 404, "not_found")
    await assert_error(await api.get("/v1/vouchers", q="a\x01b"), 400, "invalid_request")
    await assert_error(await api.get("/v1/vouchers", limit="1" * 50), 400, "invalid_request")
    response = await api.get("/v1/vouchers", headers={"X-Min-Watermark": "zz/1"})
    await assert_error(response, 400, "invalid_request")
    response = await api.get("/v1/vouchers", key=("é" * 300, "t"))
    await assert_error(response, 401, "unauthorized")


# ---------------------------------------------------------------------------------------
# Inputs that once answered 500: each is held here with the precise answer it must get.


async def raw_exchange(api: ApiHarness, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` (which asks ``Connection: close``) and read the whole answer."""
    port = api.client.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def assert_raw_error(
    answer: tuple[int, dict[str, str], bytes], status: int, key: str
) -> dict[str, Any]:
    got, headers, raw = answer
    assert got == status, (got, raw)
    assert headers["content-type"] == "application/json; charset=utf-8"
    body: dict[str, Any] = orjson.loads(raw)
    assert set(body) == ERROR_KEYS, body
    assert body["code"] == status and body["key"] == key, body
    assert body["request_id"] == headers["x-request-id"]
    return body


def get_request(path: bytes, headers: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n"


@pytest.mark.parametrize(
    ("headers", "status", "key"),
    [
        # Credentials: bytes that are not UTF-8 reached Redis as lone surrogates (a 500).
        (b"X-App-Id: \xff\r\nX-App-Token: token-a\r\n", 401, "unauthorized"),
        (b"X-App-Id: app_\xed\xa0\x80\r\nX-App-Token: token-a\r\n", 401, "unauthorized"),
        (b"X-App-Id: app_\xc3\xa9\r\nX-App-Token: token-a\r\n", 401, "unauthorized"),
        (b"X-App-Id: app_a\r\nX-App-Token: token-\xff\r\n", 401, "unauthorized"),
        (b"X-App-Id: app_a\r\nX-App-Token: \xc3\xa9\r\n", 401, "unauthorized"),
        (b"X-App-Id: app\ta\r\nX-App-Token: token-a\r\n", 401, "unauthorized"),
        (b"X-App-Id: app_a\r\nX-App-Token: token\t-a\r\n", 401, "unauthorized"),
        # Freshness headers.
        (AUTH + b"X-Min-Watermark: \xff/1\r\n", 400, "invalid_request"),
        (AUTH + b"X-Min-Watermark: 0/\xd9\xa3\r\n", 400, "invalid_request"),
        (AUTH + b"X-Min-Watermark: 0/1\r\nX-Wait-Timeout-Ms: \xff\r\n", 400, "invalid_request"),
        (AUTH + b"X-Min-Watermark: 0/1\r\nX-Wait-Timeout-Ms: \xd9\xa3\r\n", 400,
         "invalid_request"),
        # A request id that is not sane is replaced, whatever its bytes.
        (AUTH + b"X-Request-Id: \xff\xfe\r\n", 404, "not_found"),
        (AUTH + b"X-Request-Id: \xc3\xa9t\xc3\xa9\r\n", 404, "not_found"),
    ],
)
async def test_header_bytes_that_are_not_printable_ascii_are_refused(
    api: ApiHarness, headers: bytes, status: int, key: str
) -> None:
    answer = await raw_exchange(api, get_request(b"/v1/vouchers/x", headers))
    body = assert_raw_error(answer, status, key)
    assert body["request_id"].isascii() and body["request_id"].isprintable()
    assert answer[1]["x-read-watermark"]


async def test_a_negative_rate_limit_refuses_every_request(api: ApiHarness) -> None:
    await api.indexer.execute(
        "INSERT INTO api_keys (id, project_id, token_sha256, rate_limit_per_minute) "
        "VALUES ('app_neg', 'proj_a', %s, -5)",
        (sha256_hex("token-neg"),),
    )
    await api.catch_up()
    for path in ("/v1/vouchers/x", "/v1/vouchers", "/v1/vouchers/x"):
        response = await api.get(path, key=("app_neg", "token-neg"))
        await assert_error(response, 429, "rate_limited")
        assert response.headers["X-Rate-Limit-Limit"] == "0"
        assert response.headers["X-Rate-Limit-Remaining"] == "0"
        assert 1 <= int(response.headers["Retry-After"]) <= 60
    # The other keys are not affected.
    assert (await api.get("/v1/vouchers/x")).status == 404


DOT_IDS = [b".", b"..", b"...", b"%2E", b"%2e", b"%2E%2E", b".%2E", b"%2E."]
PATH_TEMPLATES = [
    b"/v1/vouchers/%s",
    b"/v1/customers/%s",
    b"/v1/customers/%s/vouchers",
    b"/v1/customers/%s/segments",
    b"/v1/segments/%s",
    b"/v1/campaigns/%s",
]


async def test_dot_ids_are_not_found_and_leave_elasticsearch_up(api: ApiHarness) -> None:
    # One object of each kind, so that a dot id reaching another endpoint would show.
    await api.indexer.execute(
        "INSERT INTO customers (id, project_id, name) VALUES ('cust_1', 'proj_a', 'Ann');"
        "INSERT INTO campaigns (id, project_id, name, type) "
        "VALUES ('camp_1', 'proj_a', 'C', 'GIFT_VOUCHERS');"
        "INSERT INTO segments (id, project_id, name, type) VALUES ('seg_1', 'proj_a', 'S', "
        "'static');"
        "INSERT INTO vouchers (id, project_id, code, type) "
        "VALUES ('v_1', 'proj_a', 'C-1', 'GIFT_VOUCHER')"
    )
    await api.catch_up()
    auth = b"X-App-Id: app_a\r\nX-App-Token: token-a\r\n"
    for template in PATH_TEMPLATES:
        for dots in DOT_IDS:
            for fresh in (b"", b"X-Min-Watermark: 0/1\r\n"):
                answer = await raw_exchange(api, get_request(template % dots, auth + fresh))
                assert_raw_error(answer, 404, "not_found")
    # Elasticsearch was not marked down: a list still answers.
    assert api.services.es_gate.up and api.services.es_gate.failures == 0
    assert api.services.search.requests["mget"] > 0  # dot ids were read by multi-get
    response = await api.get("/v1/vouchers")
    assert response.status == 200, await response.text()
    assert (await response.json())["total"] == 1
    response = await api.get("/v1/segments/seg_1")
    assert response.status == 200, await response.text()


@pytest.mark.parametrize(
    ("error", "status", "key"),
    [
        (SearchRejected("elasticsearch: [parsing_exception] SECRET-INTERNAL-TEXT"), 400,
         "invalid_request"),
        (SearchUnavailable("elasticsearch: node es-7.internal:9300 SECRET-INTERNAL-TEXT"), 503,
         "unavailable"),
        (MalformedSearchResponse("unexpected search response: SECRET-INTERNAL-TEXT"), 503,
         "unavailable"),
    ],
)
async def test_no_dependency_text_reaches_the_client(
    api: ApiHarness,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    status: int,
    key: str,
) -> None:
    async def fail(*_args: object, **_kwargs: object) -> dict[str, Any]:
        raise error

    monkeypatch.setattr(api.services.search, "search", fail)
    with caplog.at_level(logging.INFO, logger="readapi"):
        response = await api.get("/v1/vouchers", headers={"X-Request-Id": "req-leak-1"})
    body = await assert_error(response, status, key)
    assert "SECRET" not in await response.text()
    assert "elasticsearch" not in (body["message"] + body["details"]).lower()
    assert body["details"]
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == "req-leak-1"]
    assert logged, caplog.records
    assert any("SECRET-INTERNAL-TEXT" in record.getMessage() for record in logged)
