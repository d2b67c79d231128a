"""docs/api.md §3 endpoint by endpoint: exact object and list shapes, parameters, errors, headers.

Data is written by plain SQL and indexed by the real indexer; the app reads the real Redis
and Elasticsearch. List requests send ``X-Min-Watermark`` so the search sees the writes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.fixtures.readapi import (
    KEY_B,
    ApiHarness,
    assert_error,
    assert_v1_headers,
)
from tests.fixtures.readapi import api_fixture as api_fixture

pytestmark = pytest.mark.services

VOUCHER_KEYS = {
    "id", "code", "object", "campaign", "campaign_id", "type", "discount", "gift",
    "loyalty_card", "start_date", "expiration_date", "active", "redemption", "holder_id",
    "metadata", "created_at", "updated_at",
}
CUSTOMER_KEYS = {
    "id", "source_id", "object", "name", "email", "phone", "address", "metadata", "summary",
    "loyalty", "created_at", "updated_at",
}
CAMPAIGN_KEYS = {
    "id", "name", "type", "active", "start_date", "expiration_date", "metadata",
    "vouchers_count", "created_at", "updated_at", "object",
}
SEGMENT_KEYS = {"id", "name", "type", "filter", "count", "created_at", "object"}
LIST_KEYS = {"object", "data_ref", "total", "has_more", "next_cursor"}


async def seed_catalog(api: ApiHarness) -> int:
    """Two projects' objects; returns the LSN after the last commit (indexed and heard)."""
    h = api.indexer
    await h.execute(
        "INSERT INTO campaigns (id, project_id, name, type, start_date, metadata) VALUES "
        "('camp_1', 'proj_a', 'Summer', 'DISCOUNT_COUPONS', '2024-06-01T00:00:00Z',"
        " '{\"season\": \"summer\"}'),"
        "('camp_l', 'proj_a', 'Points', 'LOYALTY_PROGRAM', NULL, '{}'),"
        "('camp_b', 'proj_b', 'Other', 'GIFT_VOUCHERS', NULL, '{}')"
    )
    await h.execute(
        "INSERT INTO customers (id, project_id, source_id, name, email, phone, address,"
        " metadata, created_at) VALUES "
        "('cust_1', 'proj_a', 'crm-1', 'Ann Lee', 'Ann@Example.com', '+100',"
        " '{\"city\": \"Oslo\", \"country\": \"NO\"}', '{\"tier\": \"gold\"}',"
        " '2024-01-01T10:00:00.123456Z'),"
        "('cust_2', 'proj_a', 'crm-2', 'Bob Stone', 'bob@example.com', NULL, NULL, '{}',"
        " '2024-02-01T10:00:00Z'),"
        "('cust_3', 'proj_a', 'cust_1', 'Cy', NULL, NULL, NULL, '{}', '2024-03-01T10:00:00Z'),"
        "('cust_b', 'proj_b', 'crm-1', 'Bea', 'bea@example.com', NULL, NULL, '{}',"
        " '2024-01-01T10:00:00Z')"
    )
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, campaign_id, type, discount, gift_amount,"
        " gift_balance, loyalty_points, loyalty_balance, active, redemption_quantity,"
        " redeemed_quantity, holder_id, metadata, created_at) VALUES "
        "('v_1', 'proj_a', 'SUMMER-1', 'camp_1', 'DISCOUNT_VOUCHER',"
        " '{\"type\": \"PERCENT\", \"percent_off\": 10}', NULL, NULL, NULL, NULL, true, 5, 1,"
        " NULL, '{\"color\": \"blue\"}', '2024-05-01T00:00:00Z'),"
        "('card_1', 'proj_a', 'CARD-1', 'camp_l', 'LOYALTY_CARD', NULL, NULL, NULL, 500, 300,"
        " true, NULL, 0, 'cust_1', '{}', '2024-05-02T00:00:00Z'),"
        "('gift_1', 'proj_a', 'GIFT-1', NULL, 'GIFT_VOUCHER', NULL, 1000, 800, NULL, NULL,"
        " false, NULL, 0, 'cust_1', '{\"note\": \"birthday gift\"}', '2024-05-03T00:00:00Z'),"
        # Its code is another voucher's id: a code match wins.
        "('v_2', 'proj_a', 'v_1', NULL, 'DISCOUNT_VOUCHER', NULL, NULL, NULL, NULL, NULL,"
        " true, NULL, 0, NULL, '{}', '2024-05-04T00:00:00Z'),"
        "('vb_1', 'proj_b', 'SUMMER-1', 'camp_b', 'GIFT_VOUCHER', NULL, 50, 50, NULL, NULL,"
        " true, NULL, 0, 'cust_b', '{}', '2024-05-01T00:00:00Z')"
    )
    await h.execute(
        "INSERT INTO redemptions (id, project_id, voucher_id, customer_id, amount, points,"
        " result) VALUES "
        "('r1', 'proj_a', 'v_1', 'cust_1', 1500, NULL, 'SUCCESS'),"
        "('r2', 'proj_a', 'card_1', 'cust_1', NULL, 40, 'SUCCESS'),"
        "('r3', 'proj_a', 'v_1', 'cust_1', 900, NULL, 'FAILURE')"
    )
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type, filter, created_at) VALUES "
        "('seg_s', 'proj_a', 'Static few', 'static', NULL, '2024-01-05T00:00:00Z'),"
        "('seg_a', 'proj_a', 'Gold', 'auto-update',"
        " '{\"junction\": \"and\", \"metadata.tier\": {\"conditions\": {\"$is\": [\"gold\"]}}}',"
        " '2024-01-06T00:00:00Z'),"
        "('seg_b', 'proj_b', 'B seg', 'static', NULL, '2024-01-05T00:00:00Z')"
    )
    await h.execute(
        "INSERT INTO segment_members (segment_id, customer_id) VALUES "
        "('seg_s', 'cust_1'), ('seg_s', 'cust_2'), ('seg_b', 'cust_b')"
    )
    return int(await api.catch_up())


def fresh(lsn: int) -> dict[str, str]:
    from cache.types import Lsn

    return {"X-Min-Watermark": str(Lsn(lsn))}


async def db_instant(api: ApiHarness, sql: str) -> datetime:
    cursor = await api.indexer.db.execute(sql)
    row = await cursor.fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- lookups ------------------------------------------------------------------------------


async def test_voucher_by_code_has_the_exact_shape(api: ApiHarness) -> None:
    await seed_catalog(api)
    response = await api.get("/v1/vouchers/SUMMER-1")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert_v1_headers(response)
    body = await response.json()
    assert set(body) == VOUCHER_KEYS
    assert body["id"] == "v_1" and body["code"] == "SUMMER-1" and body["object"] == "voucher"
    assert body["campaign"] == "Summer" and body["campaign_id"] == "camp_1"
    assert body["type"] == "DISCOUNT_VOUCHER"
    assert body["discount"] == {"type": "PERCENT", "percent_off": 10}
    assert body["gift"] is None and body["loyalty_card"] is None
    assert body["start_date"] is None and body["expiration_date"] is None
    assert body["active"] is True
    assert body["redemption"] == {"quantity": 5, "redeemed_quantity": 1}
    assert body["holder_id"] is None
    assert body["metadata"] == {"color": "blue"}
    assert instant(body["created_at"]) == await db_instant(
        api, "SELECT created_at FROM vouchers WHERE id = 'v_1'"
    )
    assert instant(body["updated_at"]) == await db_instant(
        api, "SELECT updated_at FROM vouchers WHERE id = 'v_1'"
    )


async def test_voucher_gift_and_loyalty_card_shapes(api: ApiHarness) -> None:
    await seed_catalog(api)
    gift = await (await api.get("/v1/vouchers/GIFT-1")).json()
    assert gift["gift"] == {"amount": 1000, "balance": 800}
    assert gift["loyalty_card"] is None and gift["campaign"] is None and gift["active"] is False
    card = await (await api.get("/v1/vouchers/card_1")).json()  # by id
    assert card["loyalty_card"] == {"points": 500, "balance": 300}
    assert card["code"] == "CARD-1" and card["holder_id"] == "cust_1"


async def test_voucher_code_match_wins_over_id_match(api: ApiHarness) -> None:
    await seed_catalog(api)
    body = await (await api.get("/v1/vouchers/v_1")).json()
    assert body["id"] == "v_2" and body["code"] == "v_1"
    # Asked twice: the second answer comes from the caches and must agree.
    again = await (await api.get("/v1/vouchers/v_1")).json()
    assert again == body


async def test_customer_object_and_derived_values(api: ApiHarness) -> None:
    await seed_catalog(api)
    response = await api.get("/v1/customers/cust_1")
    assert response.status == 200
    assert_v1_headers(response)
    body = await response.json()
    assert set(body) == CUSTOMER_KEYS
    assert body["id"] == "cust_1" and body["source_id"] == "crm-1"
    assert body["object"] == "customer" and body["name"] == "Ann Lee"
    assert body["email"] == "Ann@Example.com" and body["phone"] == "+100"
    assert body["address"] == {"city": "Oslo", "country": "NO"}
    assert body["metadata"] == {"tier": "gold"}
    assert body["summary"] == {"redemptions": {
        "total_redeemed": 3, "total_succeeded": 2, "total_failed": 1,
        "gift": {"redeemed_amount": 1500}, "loyalty_card": {"redeemed_points": 40},
    }}
    assert body["loyalty"] == {"points": 300}
    assert instant(body["created_at"]) == await db_instant(
        api, "SELECT created_at FROM customers WHERE id = 'cust_1'"
    )
    assert body["created_at"].startswith("2024-01-01T10:00:00.123")


async def test_customer_id_match_wins_over_source_id(api: ApiHarness) -> None:
    await seed_catalog(api)
    # cust_3's source_id is "cust_1": the id match (cust_1) wins.
    assert (await (await api.get("/v1/customers/cust_1")).json())["id"] == "cust_1"
    by_source = await (await api.get("/v1/customers/crm-2")).json()
    assert by_source["id"] == "cust_2"


async def test_campaign_object(api: ApiHarness) -> None:
    await seed_catalog(api)
    response = await api.get("/v1/campaigns/camp_1")
    assert response.status == 200
    assert_v1_headers(response)
    body = await response.json()
    assert set(body) == CAMPAIGN_KEYS
    assert body["id"] == "camp_1" and body["name"] == "Summer"
    assert body["type"] == "DISCOUNT_COUPONS" and body["active"] is True
    assert instant(body["start_date"]) == instant("2024-06-01T00:00:00Z")
    assert body["expiration_date"] is None
    assert body["metadata"] == {"season": "summer"}
    assert body["vouchers_count"] == 1
    assert body["object"] == "campaign"
    assert (await (await api.get("/v1/campaigns/camp_l")).json())["vouchers_count"] == 1


async def test_segment_object_counts_current_members(api: ApiHarness) -> None:
    lsn = await seed_catalog(api)
    response = await api.get("/v1/segments/seg_s", headers=fresh(lsn))
    assert response.status == 200
    assert_v1_headers(response)
    body = await response.json()
    assert set(body) == SEGMENT_KEYS
    assert body == {
        "id": "seg_s", "name": "Static few", "type": "static", "filter": None, "count": 2,
        "created_at": body["created_at"], "object": "segment",
    }
    assert instant(body["created_at"]) == instant("2024-01-05T00:00:00Z")
    auto = await (await api.get("/v1/segments/seg_a", headers=fresh(lsn))).json()
    assert auto["type"] == "auto-update" and auto["count"] == 1
    assert auto["filter"] == {"junction": "and", "metadata.tier": {"conditions": {"$is": ["gold"]}}}
    await api.indexer.execute("DELETE FROM segment_members WHERE customer_id = 'cust_2'")
    lsn = int(await api.catch_up())
    assert (await (await api.get("/v1/segments/seg_s", headers=fresh(lsn))).json())["count"] == 1


async def test_customer_segments_list(api: ApiHarness) -> None:
    await seed_catalog(api)
    response = await api.get("/v1/customers/cust_1/segments")
    assert response.status == 200
    assert_v1_headers(response)
    body = await response.json()
    assert set(body) == {"object", "data_ref", "data", "total"}
    assert body["object"] == "list" and body["data_ref"] == "data"
    assert sorted(body["data"], key=lambda s: s["id"]) == [
        {"id": "seg_a", "name": "Gold", "object": "segment"},
        {"id": "seg_s", "name": "Static few", "object": "segment"},
    ]
    assert body["total"] == 2
    by_source = await (await api.get("/v1/customers/crm-2/segments")).json()
    assert by_source["data"] == [{"id": "seg_s", "name": "Static few", "object": "segment"}]
    none = await (await api.get("/v1/customers/cust_3/segments")).json()
    assert none == {"object": "list", "data_ref": "data", "data": [], "total": 0}
    await assert_error(await api.get("/v1/customers/nobody/segments"), 404, "not_found")


@pytest.mark.parametrize(
    "path",
    ["/v1/vouchers/NOPE", "/v1/customers/nobody", "/v1/campaigns/none", "/v1/segments/none"],
)
async def test_missing_objects_are_404(api: ApiHarness, path: str) -> None:
    await seed_catalog(api)
    for _ in range(2):  # the second answer comes from the negative caches
        response = await api.get(path)
        await assert_error(response, 404, "not_found")
        assert_v1_headers(response)


# -- lists -------------------------------------------------------------------------------


def assert_list(body: dict[str, Any], ref: str) -> list[dict[str, Any]]:
    assert set(body) == LIST_KEYS | {ref}
    assert body["object"] == "list" and body["data_ref"] == ref
    assert isinstance(body["total"], int) and isinstance(body["has_more"], bool)
    assert body["next_cursor"] is None or isinstance(body["next_cursor"], str)
    items: list[dict[str, Any]] = body[ref]
    return items


async def list_ids(api: ApiHarness, path: str, lsn: int, **params: str) -> list[str]:
    response = await api.get(path, headers=fresh(lsn), **params)
    assert response.status == 200, await response.text()
    assert_v1_headers(response)
    ref = "customers" if path == "/v1/customers" else "vouchers"
    return [item["id"] for item in assert_list(await response.json(), ref)]


async def test_voucher_list_order_shape_and_filters(api: ApiHarness) -> None:
    lsn = await seed_catalog(api)
    response = await api.get("/v1/vouchers", headers=fresh(lsn))
    body = await response.json()
    items = assert_list(body, "vouchers")
    assert [v["id"] for v in items] == ["v_2", "gift_1", "card_1", "v_1"]  # created_at desc
    assert body["total"] == 4 and body["has_more"] is False and body["next_cursor"] is None
    assert all(set(item) == VOUCHER_KEYS for item in items)
    direct = await (await api.get("/v1/vouchers/SUMMER-1")).json()
    assert next(v for v in items if v["id"] == "v_1") == direct

    assert await list_ids(api, "/v1/vouchers", lsn, campaign_id="camp_1") == ["v_1"]
    assert await list_ids(api, "/v1/vouchers", lsn, holder_id="cust_1") == ["gift_1", "card_1"]
    assert await list_ids(api, "/v1/vouchers", lsn, type="LOYALTY_CARD") == ["card_1"]
    assert await list_ids(api, "/v1/vouchers", lsn, active="false") == ["gift_1"]
    assert await list_ids(api, "/v1/vouchers", lsn, active="true") == ["v_2", "card_1", "v_1"]
    assert await list_ids(api, "/v1/vouchers", lsn, q="birthday") == ["gift_1"]
    assert await list_ids(api, "/v1/vouchers", lsn, q="blue") == ["v_1"]
    assert await list_ids(api, "/v1/vouchers", lsn, q="card") == ["card_1"]
    assert await list_ids(
        api, "/v1/vouchers", lsn,
        **{"created_at[after]": "2024-05-01T00:00:00Z", "created_at[before]": "2024-05-04"},
    ) == ["gift_1", "card_1"]


async def test_voucher_list_pages_with_cursors(api: ApiHarness) -> None:
    lsn = await seed_catalog(api)
    seen: list[str] = []
    cursor: str | None = None
    for expected_more in (True, True, False):
        params = {"limit": "2"} if cursor is None else {"limit": "2", "starting_after": cursor}
        if not expected_more:
            params["limit"] = "3"
        body = await (await api.get("/v1/vouchers", headers=fresh(lsn), **params)).json()
        items = assert_list(body, "vouchers")
        assert body["total"] == 4
        seen.extend(item["id"] for item in items)
        if not body["has_more"]:
            assert body["next_cursor"] is None
            break
        cursor = body["next_cursor"]
        assert cursor
    assert seen == ["v_2", "gift_1", "card_1", "v_1"]
    # A cursor belongs to its list: other filters refuse it.
    first = await (await api.get("/v1/vouchers", headers=fresh(lsn), limit="1")).json()
    response = await api.get(
        "/v1/vouchers", starting_after=first["next_cursor"], type="GIFT_VOUCHER"
    )
    await assert_error(response, 400, "invalid_request")


async def test_customer_list_and_filters(api: ApiHarness) -> None:
    lsn = await seed_catalog(api)
    response = await api.get("/v1/customers", headers=fresh(lsn))
    body = await response.json()
    items = assert_list(body, "customers")
    assert [c["id"] for c in items] == ["cust_3", "cust_2", "cust_1"]
    assert all(set(item) == CUSTOMER_KEYS for item in items)
    assert body["total"] == 3
    assert await list_ids(api, "/v1/customers", lsn, email="ann@EXAMPLE.com") == ["cust_1"]
    assert await list_ids(api, "/v1/customers", lsn, segment_id="seg_s") == ["cust_2", "cust_1"]
    assert await list_ids(api, "/v1/customers", lsn, segment_id="seg_a") == ["cust_1"]
    assert await list_ids(api, "/v1/customers", lsn, q="stone") == ["cust_2"]
    assert await list_ids(api, "/v1/customers", lsn, q="crm-1") == ["cust_1"]
    assert await list_ids(
        api, "/v1/customers", lsn, **{"created_at[before]": "2024-02-01T10:00:00Z"}
    ) == ["cust_1"]
    assert await list_ids(api, "/v1/customers", lsn, limit="1") == ["cust_3"]


async def test_customer_vouchers_list(api: ApiHarness) -> None:
    lsn = await seed_catalog(api)
    assert await list_ids(api, "/v1/customers/cust_1/vouchers", lsn) == ["gift_1", "card_1"]
    assert await list_ids(api, "/v1/customers/crm-1/vouchers", lsn) == ["gift_1", "card_1"]
    assert await list_ids(api, "/v1/customers/cust_2/vouchers", lsn) == []
    body = await (
        await api.get("/v1/customers/cust_1/vouchers", headers=fresh(lsn), limit="1")
    ).json()
    assert body["has_more"] is True and body["total"] == 2 and body["next_cursor"]
    await assert_error(await api.get("/v1/customers/nobody/vouchers"), 404, "not_found")
    await assert_error(
        await api.get("/v1/customers/cust_1/vouchers", type="GIFT_VOUCHER"), 400,
        "invalid_request",
    )


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/vouchers", {"limit": "0"}),
        ("/v1/vouchers", {"limit": "101"}),
        ("/v1/vouchers", {"limit": "ten"}),
        ("/v1/vouchers", {"active": "yes"}),
        ("/v1/vouchers", {"type": "COUPON"}),
        ("/v1/vouchers", {"q": "x" * 201}),
        ("/v1/vouchers", {"q": ""}),
        ("/v1/vouchers", {"campaign_id": "c" * 201}),
        ("/v1/vouchers", {"created_at[after]": "yesterday"}),
        ("/v1/vouchers", {"starting_after": "not-a-cursor"}),
        ("/v1/vouchers", {"unknown": "1"}),
        ("/v1/customers", {"email": "e" * 400}),
        ("/v1/customers", {"holder_id": "x"}),
        ("/v1/customers", {"created_at[before]": "2024-13-01"}),
        ("/v1/vouchers/SUMMER-1", {"expand": "1"}),
        ("/v1/customers/cust_1", {"x": "1"}),
        ("/v1/campaigns/camp_1", {"x": "1"}),
        ("/v1/segments/seg_s", {"x": "1"}),
        ("/v1/customers/cust_1/segments", {"limit": "1"}),
    ],
)
async def test_invalid_parameters_are_400(
    api: ApiHarness, path: str, params: dict[str, str]
) -> None:
    response = await api.get(path, **params)
    await assert_error(response, 400, "invalid_request")
    assert_v1_headers(response)


async def test_overlong_path_ids_are_400(api: ApiHarness) -> None:
    for path in ("/v1/vouchers/", "/v1/customers/", "/v1/campaigns/", "/v1/segments/"):
        await assert_error(await api.get(path + "x" * 201), 400, "invalid_request")
    await assert_error(await api.get("/v1/vouchers/a%00b"), 400, "invalid_request")


# -- errors and headers ------------------------------------------------------------------


async def test_unknown_path_and_method_answer_the_error_body(api: ApiHarness) -> None:
    response = await api.get("/v1/nothing")
    await assert_error(response, 404, "not_found")
    assert_v1_headers(response)
    await assert_error(await api.get("/elsewhere", key=None), 404, "not_found")
    response = await api.client.post("/v1/vouchers/x")
    body = await assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"] and body["details"]
    await assert_error(await api.client.delete("/healthz"), 405, "method_not_allowed")


async def test_credentials_are_required(api: ApiHarness) -> None:
    response = await api.get("/v1/vouchers/SUMMER-1", key=None)
    await assert_error(response, 401, "unauthorized")
    assert_v1_headers(response)
    await assert_error(await api.get("/v1/vouchers", key=("app_a", "wrong")), 401, "unauthorized")
    await assert_error(await api.get("/v1/vouchers", key=("nobody", "x")), 401, "unauthorized")
    await assert_error(
        await api.get("/v1/vouchers", key=("app_a", "t" * 5000)), 401, "unauthorized"
    )


async def test_request_ids_are_echoed_when_sane(api: ApiHarness) -> None:
    response = await api.get("/healthz", key=None, headers={"X-Request-Id": "abc-123"})
    assert response.status == 200 and response.headers["X-Request-Id"] == "abc-123"
    response = await api.get("/healthz", key=None, headers={"X-Request-Id": "bad id\u00e9" * 50})
    assert response.headers["X-Request-Id"] != "bad id"
    assert len(response.headers["X-Request-Id"]) < 64
    first = (await api.get("/healthz", key=None)).headers["X-Request-Id"]
    second = (await api.get("/healthz", key=None)).headers["X-Request-Id"]
    assert first != second


async def test_unexpected_errors_answer_500_with_the_body(api: ApiHarness) -> None:
    await seed_catalog(api)

    async def explode(_key: str) -> None:
        raise RuntimeError("boom")

    api.services.lookups.hooks.after_read = explode
    response = await api.get("/v1/campaigns/camp_1")
    body = await assert_error(response, 500, "internal_error")
    assert "boom" not in body["message"] + body["details"]
    assert_v1_headers(response)


async def test_service_endpoints(api: ApiHarness) -> None:
    response = await api.get("/healthz", key=None)
    assert response.status == 200 and (await response.json()) == {"status": "ok"}
    assert response.headers["X-Request-Id"]
    response = await api.get("/readyz", key=None)
    assert response.status == 200, await response.text()
    ready = await response.json()
    assert ready["status"] == "ready" and all(ready["checks"].values())
    await api.get("/v1/vouchers/NOPE")
    response = await api.get("/metrics", key=None)
    assert response.status == 200
    text = await response.text()
    for name in (
        "readapi_requests_total", "readapi_request_duration_seconds_bucket",
        "readapi_lookup_source_total", "readapi_stale_serves_total", "readapi_fills_total",
        "readapi_singleflight_waits_total", "readapi_es_requests_total",
    ):
        assert name in text, name
    assert 'route="/v1/vouchers/{code}"' in text
    response = await api.get("/openapi.json", key=None)
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1") and "/v1/vouchers/{code}" in document["paths"]
    response = await api.get("/docs", key=None)
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")


async def test_min_watermark_validation_and_timeout(api: ApiHarness) -> None:
    for bad in ("nope", "1/", "/1", "123456789/1", "0/0/0", "x" * 300):
        response = await api.get("/v1/vouchers", headers={"X-Min-Watermark": bad})
        await assert_error(response, 400, "invalid_request")
    for bad in ("-1", "5001", "abc", "1.5", "9" * 30):
        response = await api.get(
            "/v1/vouchers", headers={"X-Min-Watermark": "0/1", "X-Wait-Timeout-Ms": bad}
        )
        await assert_error(response, 400, "invalid_request")
    response = await api.get(
        "/v1/vouchers", headers={"X-Min-Watermark": "FFFFFFFF/0", "X-Wait-Timeout-Ms": "0"}
    )
    await assert_error(response, 503, "not_yet_indexed")
    assert_v1_headers(response)
    response = await api.get(
        "/v1/vouchers", headers={"X-Min-Watermark": "FFFFFFFF/0", "X-Wait-Timeout-Ms": "50"}
    )
    await assert_error(response, 503, "not_yet_indexed")
    response = await api.get("/v1/vouchers", headers={"X-Min-Watermark": "0/1"})
    assert response.status == 200


async def test_other_key_sees_only_its_project(api: ApiHarness) -> None:
    lsn = await seed_catalog(api)
    body = await (await api.get("/v1/vouchers/SUMMER-1", key=KEY_B)).json()
    assert body["id"] == "vb_1" and body["gift"] == {"amount": 50, "balance": 50}
    assert await list_ids(api, "/v1/vouchers", lsn) == ["v_2", "gift_1", "card_1", "v_1"]
