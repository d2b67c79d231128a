"""What every route runs in: request ids, the JSON error body, /v1 headers on errors, metrics.

No aiohttp middleware: a middleware (and the one aiohttp adds whenever there is one) costs
two coroutine layers per request on the hot path. Each handler is wrapped instead
(``guarded`` here, ``readapi.routes.v1`` for /v1), and a catch-all route answers unknown
paths (404 ``not_found``) and methods (405 ``method_not_allowed``) with the same body.

Every answer carries ``X-Request-Id`` (a sane incoming one is echoed, else one is made).
An unexpected exception is logged with its request id and answers 500 ``internal_error``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import istr

from readapi.errors import ApiError, error_body, key_for_status
from readapi.ratelimit import RateDecision
from readapi.services import SERVICES

log = logging.getLogger(__name__)

JSON_TYPE = "application/json; charset=utf-8"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUEST_ID_HEADER = istr("X-Request-Id")
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")
# Request ids made here: a per-process random prefix and a counter, cheaper than a uuid4.
_REQUEST_ID_HEAD = os.urandom(6).hex() + "-"
_counter = itertools.count(1)

_CATCH_ALL = "unrouted"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


sane_request_id = _SANE_REQUEST_ID.fullmatch


def new_request_id() -> str:
    return _REQUEST_ID_HEAD + str(next(_counter))


def request_id_of(request: web.Request) -> str:
    """The sane incoming ``X-Request-Id``, else a new one."""
    incoming = request.headers.get(REQUEST_ID_HEADER)
    if incoming is not None and sane_request_id(incoming):
        return incoming
    return new_request_id()


def method_label(method: str) -> str:
    """Bounded label values: clients may send any method name."""
    return method if method in KNOWN_METHODS else "OTHER"


def error_response(
    request: web.Request,
    error: BaseException,
    request_id: str,
    rate: RateDecision | None = None,
) -> web.Response:
    """The answer for an exception raised while handling ``request``."""
    headers = {"Content-Type": JSON_TYPE, "X-Request-Id": request_id}
    if isinstance(error, ApiError):
        status, key, message, details = error.status, error.key, error.message, error.details
        headers.update(error.headers)
    elif isinstance(error, web.HTTPException):
        status, key = error.status, key_for_status(error.status)
        message, details = error.reason, (error.text or "")[:300]
    else:
        log.error("unexpected error", exc_info=error, extra={"request_id": request_id})
        status, key = 500, "internal_error"
        message, details = "The server failed to answer.", "The error is logged with this id."
    if request.path.startswith("/v1/") or request.path == "/v1":
        services = request.app[SERVICES]
        if rate is None:
            # No key was identified: the default limit, and nothing was charged.
            limit = services.settings.rate_limit_default
            headers["X-Rate-Limit-Limit"] = headers["X-Rate-Limit-Remaining"] = str(limit)
        else:
            headers["X-Rate-Limit-Limit"] = str(rate.limit)
            headers["X-Rate-Limit-Remaining"] = str(rate.remaining)
        headers["X-Read-Watermark"] = services.watermark.text
    return web.Response(
        status=status, body=error_body(status, key, message, details, request_id), headers=headers
    )


def guarded(route: str, handler: Handler) -> Handler:
    """``handler`` with request id, error body and metrics (service routes)."""

    async def run(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request_id_of(request)
        try:
            response = await handler(request)
            response.headers["X-Request-Id"] = request_id
        except asyncio.CancelledError:
            raise
        except Exception as error:
            response = error_response(request, error, request_id)
        request.app[SERVICES].metrics.requests.observe(
            route, method_label(request.method), response.status, time.perf_counter() - started
        )
        return response

    return run


async def _unrouted(request: web.Request) -> web.StreamResponse:
    """Catch-all: 405 when another route serves the path with other methods, else 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.name == _CATCH_ALL:
            continue
        match, methods = await resource.resolve(request)
        if match is None:
            allowed.update(methods)
    if allowed:
        raise ApiError(
            405, "method_not_allowed", "Method not allowed.",
            f"{request.method[:20]} is not allowed here; allowed: {', '.join(sorted(allowed))}.",
            headers={"Allow": ",".join(sorted(allowed))},
        )
    raise ApiError(404, "not_found", "No such resource.",
                   f"Nothing is served at {request.path[:200]!r}.")


def add_catch_all_route(app: web.Application) -> None:
    """Must be added last: routes are tried in order."""
    app.router.add_route("*", "/{tail:.*}", guarded("unmatched", _unrouted), name=_CATCH_ALL)
