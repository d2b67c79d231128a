"""The one middleware: request ids, the JSON error body, /v1 headers on errors, metrics.

One middleware rather than several: each layer costs a coroutine per request on the hot path.
Every answer carries ``X-Request-Id`` (a sane incoming one is echoed, else one is made).
``ApiError``, aiohttp's own HTTP errors (404 for unknown paths, 405 for unknown methods) and
any unexpected exception become the error body of API.md; an unexpected exception is logged
with its request id and answers 500 ``internal_error``. ``/v1`` error answers also carry the
freshness and rate-limit headers.
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

from readapi.errors import ApiError, error_body, key_for_status
from readapi.ratelimit import RateDecision
from readapi.services import SERVICES

log = logging.getLogger(__name__)

JSON_TYPE = "application/json; charset=utf-8"
REQUEST_ID = web.RequestKey("request_id", str)
RATE = web.RequestKey("rate", RateDecision)

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Request ids made here: a per-process random prefix and a counter, cheaper than a uuid4.
_PROCESS_TAG = os.urandom(6).hex()
_counter = itertools.count(1)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_request_id() -> str:
    return f"{_PROCESS_TAG}-{next(_counter):x}"


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    incoming = request.headers.get("X-Request-Id")
    if incoming is not None and _SANE_REQUEST_ID.fullmatch(incoming):
        request_id = incoming
    else:
        request_id = new_request_id()
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except ApiError as error:
        response = _error_response(request, error.status, error.key, error.message,
                                   error.details, request_id)
        response.headers.update(error.headers)
    except web.HTTPException as error:
        response = _from_http_exception(request, error, request_id)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error", extra={"request_id": request_id})
        response = _error_response(
            request, 500, "internal_error", "The server failed to answer.",
            "The error is logged with this request id.", request_id,
        )
    response.headers["X-Request-Id"] = request_id
    method = request.method if request.method in _KNOWN_METHODS else "OTHER"
    request.app[SERVICES].metrics.observe_request(
        _route_of(request), method, response.status, time.perf_counter() - started
    )
    return response


def _from_http_exception(
    request: web.Request, error: web.HTTPException, request_id: str
) -> web.Response:
    status = error.status
    key = key_for_status(status)
    if status == 404:
        message, details = "No such resource.", f"Nothing is served at {request.path[:200]!r}."
    elif status == 405:
        message = "Method not allowed."
        details = f"{request.method[:20]} is not allowed here."
    else:
        message, details = error.reason, error.text or ""
    response = _error_response(request, status, key, message, details[:500], request_id)
    allow = error.headers.get("Allow")
    if allow is not None:
        response.headers["Allow"] = allow
    return response


def _error_response(
    request: web.Request, status: int, key: str, message: str, details: str, request_id: str
) -> web.Response:
    headers = {"Content-Type": JSON_TYPE}
    if request.path.startswith("/v1/") or request.path == "/v1":
        services = request.app[SERVICES]
        decision = request.get(RATE)
        if decision is None:
            # No key was identified: the default limit, and nothing was charged.
            limit = services.settings.rate_limit_default
            headers["X-Rate-Limit-Limit"] = str(limit)
            headers["X-Rate-Limit-Remaining"] = str(limit)
        else:
            headers["X-Rate-Limit-Limit"] = str(decision.limit)
            headers["X-Rate-Limit-Remaining"] = str(decision.remaining)
        headers["X-Read-Watermark"] = services.watermark_text.current()
    return web.Response(
        status=status,
        body=error_body(status, key, message, details, request_id),
        headers=headers,
    )
