"""The daemon's HTTP listener: ``GET /metrics`` (Prometheus) and ``GET /healthz``.

``/healthz`` says whether the capture loop makes progress, not merely whether the process
answers: 503 ``starting`` until the publication, slot and indices are in place (a load,
first or a reload, included), 200 ``ok`` while steps succeed, 503 ``stalled`` once no step
succeeded for ``LOYALTY_HEALTH_STALL_SECONDS``. An idle indexer still steps (an empty peek
every ``LOYALTY_IDLE_SLEEP_MS``), so quiet tables never read as stalled; an outage the loop
keeps retrying does, once it has lasted that long.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

JSON_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Health:
    status: str  # starting, ok or stalled
    http_status: int
    body: dict[str, Any]


def assess(
    *,
    prepared_at: float | None,
    last_step_at: float | None,
    now: float,
    stall_seconds: float,
) -> Health:
    """The answer of ``/healthz``. Times are Unix seconds; ``prepared_at`` is None while the
    indexer prepares (or loads). Before the first step, the time since preparation counts:
    a loop that never manages one step stalls like one that stopped stepping."""
    if prepared_at is None:
        return Health("starting", 503, {"status": "starting"})
    since = prepared_at if last_step_at is None else max(last_step_at, prepared_at)
    age = round(max(0.0, now - since), 3)
    body: dict[str, Any] = {
        "last_step_age_seconds": None if last_step_at is None else age,
    }
    if age > stall_seconds:
        return Health("stalled", 503, {"status": "stalled", **body, "stall_seconds": stall_seconds})
    return Health("ok", 200, {"status": "ok", **body})


Probe = Callable[[], Health]
_PROBE: web.AppKey[Probe] = web.AppKey("probe")


async def _healthz(request: web.Request) -> web.Response:
    health = request.app[_PROBE]()
    return web.Response(
        status=health.http_status,
        body=orjson.dumps(health.body),
        headers={"Content-Type": JSON_TYPE, "Cache-Control": "no-store"},
    )


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def build_app(probe: Probe) -> web.Application:
    app = web.Application()
    app[_PROBE] = probe
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app


@contextlib.asynccontextmanager
async def serving(probe: Probe, host: str, port: int) -> AsyncIterator[list[Any]]:
    """The listener on ``host:port`` for the duration of the block; yields its addresses
    (port 0 picks a free port)."""
    runner = web.AppRunner(build_app(probe), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield list(runner.addresses)
    finally:
        await runner.cleanup()
