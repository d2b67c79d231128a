"""Tenant isolation and key life cycle: every endpoint answers only the caller's project;
a revoked key is refused once the indexer applied the revoking commit."""

from __future__ import annotations

import pytest

from cache.types import Lsn
from tests.fixtures.readapi import KEY_A, KEY_B, ApiHarness, assert_error, sha256_hex
from tests.fixtures.readapi import api_fixture as api_fixture  # the "api" fixture

pytestmark = pytest.mark.services


async def seed_two_projects(api: ApiHarness) -> dict[str, str]:
    h = api.indexer
    await h.execute(
        "INSERT INTO campaigns (id, project_id, name, type) VALUES "
        "('ca', 'proj_a', 'A camp', 'DISCOUNT_COUPONS'),"
        " ('cb', 'proj_b', 'B camp', 'GIFT_VOUCHERS')"
    )
    await h.execute(
        "INSERT INTO customers (id, project_id, source_id, email, name) VALUES "
        "('cu_a', 'proj_a', 'src-a', 'a@example.com', 'Ann'),"
        "('cu_b', 'proj_b', 'src-b', 'b@example.com', 'Bob')"
    )
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, campaign_id, type, holder_id) VALUES "
        "('va', 'proj_a', 'CODE-A', 'ca', 'DISCOUNT_VOUCHER', 'cu_a'),"
        "('vb', 'proj_b', 'CODE-B', 'cb', 'GIFT_VOUCHER', 'cu_b')"
    )
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type) VALUES "
        "('sa', 'proj_a', 'SA', 'static'), ('sb', 'proj_b', 'SB', 'static')"
    )
    await h.execute(
        "INSERT INTO segment_members VALUES ('sa', 'cu_a'), ('sb', 'cu_b')"
    )
    lsn = await api.catch_up()
    return {"X-Min-Watermark": str(lsn)}


async def test_every_endpoint_answers_only_the_callers_project(api: ApiHarness) -> None:
    fresh = await seed_two_projects(api)
    own = {KEY_A: ("va", "CODE-A", "cu_a", "src-a", "ca", "sa"),
           KEY_B: ("vb", "CODE-B", "cu_b", "src-b", "cb", "sb")}
    for key, (voucher, code, customer, source, campaign, segment) in own.items():
        other_key = KEY_B if key == KEY_A else KEY_A
        o_voucher, o_code, o_customer, o_source, o_campaign, o_segment = own[other_key]
        for path in (f"/v1/vouchers/{voucher}", f"/v1/vouchers/{code}",
                     f"/v1/customers/{customer}", f"/v1/customers/{source}",
                     f"/v1/campaigns/{campaign}", f"/v1/segments/{segment}",
                     f"/v1/customers/{customer}/segments"):
            assert (await api.get(path, key=key)).status == 200, path
        for path in (f"/v1/vouchers/{o_voucher}", f"/v1/vouchers/{o_code}",
                     f"/v1/customers/{o_customer}", f"/v1/customers/{o_source}",
                     f"/v1/campaigns/{o_campaign}", f"/v1/segments/{o_segment}",
                     f"/v1/customers/{o_customer}/segments",
                     f"/v1/customers/{o_customer}/vouchers"):
            await assert_error(await api.get(path, key=key), 404, "not_found")
        vouchers = await (await api.get("/v1/vouchers", key=key, headers=fresh)).json()
        assert [v["id"] for v in vouchers["vouchers"]] == [voucher]
        customers = await (await api.get("/v1/customers", key=key, headers=fresh)).json()
        assert [c["id"] for c in customers["customers"]] == [customer]
        held = await (
            await api.get(f"/v1/customers/{customer}/vouchers", key=key, headers=fresh)
        ).json()
        assert [v["id"] for v in held["vouchers"]] == [voucher]
        segments = await (await api.get(f"/v1/customers/{customer}/segments", key=key)).json()
        assert [s["id"] for s in segments["data"]] == [segment]
        # Filters naming the other project's ids find nothing.
        foreign = await (
            await api.get("/v1/vouchers", key=key, headers=fresh, campaign_id=o_campaign)
        ).json()
        assert foreign["vouchers"] == [] and foreign["total"] == 0
        foreign = await (
            await api.get("/v1/customers", key=key, headers=fresh, segment_id=o_segment)
        ).json()
        assert foreign["customers"] == []
        count = (await (await api.get(f"/v1/segments/{segment}", key=key)).json())["count"]
        assert count == 1


async def test_wrong_token_and_unknown_app_are_401(api: ApiHarness) -> None:
    await assert_error(
        await api.get("/v1/vouchers", key=(KEY_A[0], KEY_B[1])), 401, "unauthorized"
    )
    await assert_error(await api.get("/v1/vouchers", key=("app_x", "token")), 401, "unauthorized")
    assert (await api.get("/v1/vouchers")).status == 200  # the right token still works


async def test_revoked_key_is_refused_after_the_revoking_commit(api: ApiHarness) -> None:
    assert (await api.get("/v1/vouchers")).status == 200  # the key record is in L1 now
    await api.indexer.execute("UPDATE api_keys SET revoked_at = now() WHERE id = 'app_a'")
    await api.catch_up()
    await assert_error(await api.get("/v1/vouchers"), 401, "unauthorized")
    assert (await api.get("/v1/vouchers", key=KEY_B)).status == 200


async def test_revocation_seen_by_a_request_carrying_the_watermark(api: ApiHarness) -> None:
    assert (await api.get("/v1/vouchers")).status == 200
    await api.indexer.execute("UPDATE api_keys SET revoked_at = now() WHERE id = 'app_a'")
    lsn = await api.indexer.catch_up()  # the app is not waited for: the header does it
    response = await api.get("/v1/vouchers", headers={"X-Min-Watermark": str(Lsn(lsn))})
    await assert_error(response, 401, "unauthorized")


async def test_new_and_rotated_keys_take_effect(api: ApiHarness) -> None:
    await assert_error(await api.get("/v1/vouchers", key=("app_c", "tc")), 401, "unauthorized")
    await api.indexer.execute(
        "INSERT INTO api_keys (id, project_id, token_sha256) VALUES ('app_c', 'proj_a', %s)",
        (sha256_hex("tc"),),
    )
    await api.indexer.execute(
        "UPDATE api_keys SET token_sha256 = %s WHERE id = 'app_a'", (sha256_hex("rotated"),)
    )
    await api.catch_up()
    assert (await api.get("/v1/vouchers", key=("app_c", "tc"))).status == 200
    await assert_error(await api.get("/v1/vouchers"), 401, "unauthorized")
    assert (await api.get("/v1/vouchers", key=("app_a", "rotated"))).status == 200
