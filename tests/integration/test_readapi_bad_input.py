"""Malformed and hostile requests get 4xx answers, never a 500: raw bytes on the socket
(bad UTF-8, huge headers, broken percent-encoding) and odd but parseable requests."""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.readapi import ApiHarness, assert_error
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
