"""Service endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document and docs.

``/readyz`` is ready when Redis and Elasticsearch answer a ping, the indexer has loaded API
keys and the invalidation listener is subscribed (without it L1 is off and revocations would
reach this process only through Redis reads). Not ready answers 503 with the error body.

Every check is O(1), whatever Redis holds. "API keys loaded" is "a watermark is known": the
indexer writes the watermark only once a load (the initial one, or the reload after Redis
lost its data) has written every API key record, and its steps only advance a watermark
already stored (``indexer/snapshot.py``, ``indexer/runner.py``). So ``api_keys`` and
``watermark`` are one fact, reported under both names; a deployment without any key is ready.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from cache.errors import StoreError
from readapi.docs_page import docs_routes
from readapi.endpoint import JSON_TYPE, guarded
from readapi.errors import ApiError
from readapi.metrics import CONTENT_TYPE as METRICS_TYPE
from readapi.openapi import build_openapi
from readapi.services import SERVICES, Services

_PROBE_TIMEOUT = 2.0


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', headers={"Content-Type": JSON_TYPE})


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    redis_ok, es_ok = await asyncio.gather(_redis_answers(services), services.search.ping())
    loaded = services.watermark.value is not None
    checks = {
        "redis": redis_ok,
        "elasticsearch": es_ok,
        "api_keys": loaded,
        "watermark": loaded,
        "invalidation_listener": services.listener.connected,
    }
    if all(checks.values()):
        return web.Response(
            body=orjson.dumps({"status": "ready", "checks": checks}),
            headers={"Content-Type": JSON_TYPE},
        )
    failing = ", ".join(name for name, ok in checks.items() if not ok)
    raise ApiError(503, "unavailable", "Not ready.", f"Failing checks: {failing}.")


async def _redis_answers(services: Services) -> bool:
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            await services.store.ping()
    except (StoreError, TimeoutError):
        return False
    return True


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICES].render_metrics()
    return web.Response(body=body, headers={"Content-Type": METRICS_TYPE})


async def openapi_json(request: web.Request) -> web.Response:
    static = request.app[SERVICES].static
    body = static.get("openapi")
    if body is None:
        body = static["openapi"] = orjson.dumps(build_openapi())
    return web.Response(body=body, headers={"Content-Type": JSON_TYPE})


def add_service_routes(app: web.Application) -> None:
    router = app.router
    for path, handler in (
        ("/healthz", healthz),
        ("/readyz", readyz),
        ("/metrics", metrics),
        ("/openapi.json", openapi_json),
        *docs_routes(),  # /docs and its files
    ):
        router.add_get(path, guarded(path, handler), allow_head=False)
