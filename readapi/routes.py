"""The endpoints of docs/api.md §3 (and the events extension) and the /v1 pipeline in front
of them.

Every /v1 request goes: credentials (401) → rate limit (429) → ``X-Min-Watermark`` wait
(400/503) → the handler, which returns the JSON body; the answer carries
``X-Read-Watermark`` (read before the data, so it never claims more than the data shows)
and the rate-limit headers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter

from aiohttp import web
from aiohttp.hdrs import CONTENT_TYPE
from multidict import istr

from cache.errors import SearchRejected, SearchUnavailable
from cache.types import ObjectKind
from readapi.auth import Caller
from readapi.endpoint import (
    JSON_TYPE,
    REQUEST_ID_HEADER,
    error_response,
    new_request_id,
    sane_request_id,
)
from readapi.errors import ApiError, invalid_request, not_found, unavailable
from readapi.events import parse_events_query
from readapi.freshness import (
    MIN_WATERMARK_HEADER,
    parse_min_watermark,
    parse_wait_ms,
    wait_for_watermark,
)
from readapi.lists import ListReader
from readapi.params import no_query, path_id, plainly_valid_id
from readapi.ratelimit import RateDecision
from readapi.search_query import (
    InvalidParameter,
    MalformedSearchResponse,
    parse_customer_list,
    parse_holder_voucher_list,
    parse_voucher_list,
)
from readapi.services import SERVICES, Services

log = logging.getLogger(__name__)

# (request, caller, watermark waited for or None) -> JSON body
V1Handler = Callable[[web.Request, Caller, int | None], Awaitable[bytes]]
# (services, request, caller) -> JSON body when the in-process state answers alone, else None
# (then the handler runs). Synchronous: the hot path creates no coroutine for it.
FastPath = Callable[[Services, web.Request, Caller], bytes | None]


# Header names as multidict's case-insensitive strings, made once: the response's header
# map then skips folding each name on every answer.
READ_WATERMARK_HEADER = istr("X-Read-Watermark")
RATE_LIMIT_HEADER = istr("X-Rate-Limit-Limit")
RATE_REMAINING_HEADER = istr("X-Rate-Limit-Remaining")
WAIT_TIMEOUT_HEADER = istr("X-Wait-Timeout-Ms")


def v1(
    route: str, handler: V1Handler, services: Services, fast: FastPath | None = None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The /v1 pipeline around ``handler``, with what ``endpoint.guarded`` does inlined:
    this is the hot path, where every call and lookup per request shows in the throughput."""
    stats = services.metrics.requests.route(route, "GET")
    auth, limiter, watermark = services.auth, services.limiter, services.watermark

    async def endpoint(request: web.Request) -> web.Response:
        started = perf_counter()
        headers = request.headers
        request_id = headers.get(REQUEST_ID_HEADER)
        if request_id is None or not sane_request_id(request_id):
            request_id = new_request_id()
        limit = -1  # the caller's limit, once known
        remaining = -1  # tokens left after this request's, once taken
        try:
            wants_fresh = MIN_WATERMARK_HEADER in headers
            # The awaits are taken only when the in-process state cannot answer alone.
            caller = None if wants_fresh else auth.cached(headers)
            if caller is None:
                caller = await auth.authenticate(
                    headers, bypass_l1=wants_fresh, remote=request.remote
                )
            limit = caller.rate_limit_per_minute
            if limit < 0:
                limit = 0  # a negative limit in api_keys refuses every request (§2)
            remaining = limiter.take_local(caller.app_id, limit)
            if remaining < 0:
                decision = await limiter.acquire(caller.app_id, limit)
                if not decision.allowed:
                    remaining = 0
                    raise ApiError(
                        429, "rate_limited", "Rate limit exceeded.",
                        f"At most {decision.limit} requests per minute for this key.",
                        headers={"Retry-After": str(decision.retry_after)},
                    )
                remaining = decision.remaining
            fresh_at = None
            if wants_fresh:
                fresh_at = parse_min_watermark(headers)
                if fresh_at is not None:
                    await wait_for_watermark(watermark, fresh_at, parse_wait_ms(headers))
            elif WAIT_TIMEOUT_HEADER in headers:
                parse_wait_ms(headers)  # checked alone too (400 when malformed); no effect
            watermark_text = watermark.text
            body = None if fast is None or wants_fresh else fast(services, request, caller)
            if body is None:
                body = await handler(request, caller, fresh_at)
            response = web.Response(
                body=body,
                headers={
                    CONTENT_TYPE: JSON_TYPE,
                    REQUEST_ID_HEADER: request_id,
                    READ_WATERMARK_HEADER: watermark_text,
                    RATE_LIMIT_HEADER: caller.limit_text,
                    RATE_REMAINING_HEADER: str(remaining),
                },
            )
            status = 200
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # Rate headers: what this request took, when it got that far.
            rate = RateDecision(True, limit, remaining) if remaining >= 0 else None
            response = error_response(request, _translated(error, request_id), request_id, rate)
            status = response.status
        stats.observe(status, perf_counter() - started)
        return response

    return endpoint


# What the client is told instead of a dependency's own error text (which may name hosts,
# indices or fields): the text is logged with the request id the answer carries.
SEARCH_REFUSED_DETAILS = "The refusal is logged with this request id."
SEARCH_UNAVAILABLE_DETAILS = "The cause is logged with this request id."


def _translated(error: Exception, request_id: str) -> Exception:
    """Exceptions of the modules below the HTTP layer, as the answers they mean."""
    if isinstance(error, InvalidParameter):
        return invalid_request(error.message, f"parameter: {error.name}")
    if isinstance(error, SearchRejected):
        log.warning("search refused: %s", error, extra={"request_id": request_id})
        return invalid_request("The search was refused.", SEARCH_REFUSED_DETAILS)
    if isinstance(error, SearchUnavailable | MalformedSearchResponse):
        # The outage itself is logged once by the dependency gate: one line per request here
        # at info level, so that an answer can still be traced to its cause.
        log.info("search unavailable: %s", error, extra={"request_id": request_id})
        return unavailable(SEARCH_UNAVAILABLE_DETAILS)
    return error


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


def _lists(request: web.Request) -> ListReader:
    services = request.app[SERVICES]
    return ListReader(services.search, services.settings.cursor_secret)


def voucher_from_l1(services: Services, request: web.Request, caller: Caller) -> bytes | None:
    """The hot path of ``get_voucher``: a voucher L1 holds, by code (or id)."""
    if request.query_string:
        return None  # the handler refuses it
    code = request.match_info["code"]
    if not plainly_valid_id(code):
        return None  # the handler validates it
    return services.lookups.voucher_in_l1(caller.keys, code)


async def get_voucher(request: web.Request, caller: Caller, fresh_at: int | None) -> bytes:
    if request.query_string:
        no_query(request.query)
    code = path_id(request.match_info["code"], "code")
    found = await _services(request).lookups.voucher(
        caller.keys, caller.project_id, code, fresh=fresh_at is not None
    )
    if found.body is None:
        raise not_found("Voucher")
    return found.body


async def get_customer(request: web.Request, caller: Caller, fresh_at: int | None) -> bytes:
    no_query(request.query)
    customer_id = path_id(request.match_info["id"], "id")
    found = await _services(request).lookups.customer(
        caller.keys, caller.project_id, customer_id, fresh=fresh_at is not None
    )
    if found.body is None:
        raise not_found("Customer")
    return found.body


async def _by_id(
    request: web.Request, caller: Caller, fresh_at: int | None, kind: ObjectKind, label: str
) -> tuple[str, bytes]:
    """The id in the path and the cached body of that object of the caller's project."""
    no_query(request.query)
    object_id = path_id(request.match_info["id"], "id")
    found = await _services(request).lookups.by_id(
        kind, caller.project_id, object_id, fresh=fresh_at is not None
    )
    if found.body is None:
        raise not_found(label)
    return object_id, found.body


async def get_campaign(request: web.Request, caller: Caller, fresh_at: int | None) -> bytes:
    return (await _by_id(request, caller, fresh_at, ObjectKind.CAMPAIGN, "Campaign"))[1]


async def get_segment(request: web.Request, caller: Caller, fresh_at: int | None) -> bytes:
    segment_id, body = await _by_id(request, caller, fresh_at, ObjectKind.SEGMENT, "Segment")
    # The indexer's counter: it moves with the membership before the watermark does, so the
    # X-Min-Watermark wait of the pipeline is all a fresh count needs.
    count = await _services(request).membership.count(caller.project_id, segment_id)
    # The cached body is a JSON object without ``count``: add it before the closing brace.
    return b"%s,\"count\":%d}" % (body[:-1], count)


async def list_vouchers(request: web.Request, caller: Caller, fresh_at: int | None) -> bytes:
    params = parse_voucher_list(request.query)
    return await _lists(request).page(params, caller.project_id, fresh_at=fresh_at)


async def list_customers(request: web.Request, caller: Caller, fresh_at: int | None) -> bytes:
    params = parse_customer_list(request.query)
    return await _lists(request).page(params, caller.project_id, fresh_at=fresh_at)


async def _customer_id(request: web.Request, caller: Caller, fresh_at: int | None) -> str:
    """The id of the customer named by ``{id}`` (an id, else a source_id), or 404."""
    value = path_id(request.match_info["id"], "id")
    found = await _services(request).lookups.customer(
        caller.keys, caller.project_id, value, fresh=fresh_at is not None
    )
    if found.body is None or found.object_id is None:
        raise not_found("Customer")
    return found.object_id


async def list_customer_vouchers(
    request: web.Request, caller: Caller, fresh_at: int | None
) -> bytes:
    # Parameters first: a bad query is a 400 whether or not the customer exists.
    parse_holder_voucher_list(request.query, "-")
    customer_id = await _customer_id(request, caller, fresh_at)
    params = parse_holder_voucher_list(request.query, customer_id)
    return await _lists(request).page(params, caller.project_id, fresh_at=fresh_at)


async def list_customer_segments(
    request: web.Request, caller: Caller, fresh_at: int | None
) -> bytes:
    no_query(request.query)
    customer_id = await _customer_id(request, caller, fresh_at)
    body = await _lists(request).customer_segments(caller.project_id, customer_id)
    if body is None:
        raise not_found("Customer")
    return body


async def list_events(request: web.Request, caller: Caller, fresh_at: int | None) -> bytes:
    query = parse_events_query(request.query)
    return await _services(request).membership.events(caller.project_id, query)


_V1_ROUTES: tuple[tuple[str, V1Handler, FastPath | None], ...] = (
    # The voucher lookup first: aiohttp tries the routes of one path prefix in this order.
    ("/v1/vouchers/{code}", get_voucher, voucher_from_l1),
    ("/v1/vouchers", list_vouchers, None),
    ("/v1/customers", list_customers, None),
    ("/v1/customers/{id}", get_customer, None),
    ("/v1/customers/{id}/vouchers", list_customer_vouchers, None),
    ("/v1/customers/{id}/segments", list_customer_segments, None),
    ("/v1/campaigns/{id}", get_campaign, None),
    ("/v1/segments/{id}", get_segment, None),
    ("/v1/events", list_events, None),
)


def add_v1_routes(app: web.Application) -> None:
    """Call once ``app[SERVICES]`` is set: the handlers hold the services from here on."""
    services = app[SERVICES]
    for path, handler, fast in _V1_ROUTES:
        app.router.add_get(path, v1(path, handler, services, fast), allow_head=False)

    async def end_long_polls(app: web.Application) -> None:
        # Shutdown waits for requests in flight: a long poll must not hold it up to 30 s.
        services.membership.stop_waiting()

    app.on_shutdown.append(end_long_polls)
