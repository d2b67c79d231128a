"""``create_app(settings)``: the aiohttp application of the read API.

Tests build one per test on their own prefixes; ``readapi serve`` builds one per worker.
Starting the app starts the invalidation listener and the watermark poller; cleanup stops
them and closes the clients.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from readapi.endpoint import add_catch_all_route
from readapi.health import add_service_routes
from readapi.routes import add_v1_routes
from readapi.services import SERVICES, Services
from readapi.settings import ApiSettings


def create_app(settings: ApiSettings | None = None) -> web.Application:
    settings = ApiSettings.from_env() if settings is None else settings
    app = web.Application(client_max_size=64 * 1024)
    services = Services.build(settings)
    app[SERVICES] = services
    add_v1_routes(app)
    add_service_routes(app)
    add_catch_all_route(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.close()

    app.cleanup_ctx.append(lifecycle)
    return app
