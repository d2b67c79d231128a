"""Rate limiting per key and minute: the headers count down, then 429 with Retry-After."""

from __future__ import annotations

import pytest

from tests.fixtures.indexer import IndexerHarness
from tests.fixtures.readapi import (
    KEY_B,
    ApiHarness,
    assert_error,
    assert_v1_headers,
    seed_tenants,
    settings_for,
    start_api,
)

pytestmark = pytest.mark.services


async def test_limit_counts_down_then_refuses(harness: IndexerHarness) -> None:
    await seed_tenants(harness, limit_a=5)
    lsn = await harness.catch_up()
    app, client = await start_api(harness, settings_for(harness, rate_limit_default=7))
    api = ApiHarness(harness, app, client)
    try:
        await api.heard(lsn)
        remaining = []
        for _ in range(5):
            response = await api.get("/v1/vouchers/any")
            assert response.status == 404  # limited requests are answered normally
            assert response.headers["X-Rate-Limit-Limit"] == "5"
            remaining.append(int(response.headers["X-Rate-Limit-Remaining"]))
        assert remaining == [4, 3, 2, 1, 0]
        for path in ("/v1/vouchers/any", "/v1/vouchers"):
            response = await api.get(path)
            body = await assert_error(response, 429, "rate_limited")
            assert body["details"]
            assert 1 <= int(response.headers["Retry-After"]) <= 60
            assert response.headers["X-Rate-Limit-Remaining"] == "0"
            assert_v1_headers(response)
        # Another key has its own bucket, with the configured default.
        response = await api.get("/v1/vouchers/any", key=KEY_B)
        assert response.status == 404
        assert response.headers["X-Rate-Limit-Limit"] == "7"
        assert response.headers["X-Rate-Limit-Remaining"] == "6"
        # Bad credentials are refused before any bucket is charged.
        await assert_error(await api.get("/v1/vouchers", key=("app_a", "bad")), 401,
                           "unauthorized")
    finally:
        await client.close()
