from tests.fixtures.readapi import ApiHarness, api  # noqa: F401


async def test_smoke(api: ApiHarness) -> None:
    h = api.indexer
    await h.execute("INSERT INTO vouchers (id, project_id, code, type) VALUES ('v1','proj_a','CODE1','DISCOUNT_VOUCHER')")
    await api.catch_up()
    r = await api.get("/v1/vouchers/CODE1")
    print(r.status, dict(r.headers), await r.text())
    r = await api.get("/v1/vouchers/v1")
    print(r.status, dict(r.headers), await r.text())
    r = await api.get("/v1/vouchers/CODE1")
    print(r.status, await r.text())
    r = await api.get("/v1/vouchers")
    print(r.status, await r.text())
    r = await api.get("/v1/nope")
    print(r.status, await r.text())
    r = await api.client.post("/v1/vouchers")
    print(r.status, await r.text())
    r = await api.get("/readyz")
    print(r.status, await r.text())
    r = await api.get("/metrics")
    print(r.status, (await r.text())[:3000])
