"""The OpenAPI 3.1 description of the read API (docs/api.md §2-3).

Interface (pure; the app serves the result):

- ``build_openapi() -> dict``: the document served at ``GET /openapi.json``; a fresh dict on
  each call, JSON-serialisable. Parameter bounds come from ``readapi.search_query`` so the
  description and the validation cannot drift apart. It describes every route the app
  serves, the service routes too; ``/docs`` renders it (``readapi.docs_page``), and the
  ``AppId``/``AppToken`` API key schemes are what that page's "Authorize" asks for.

This module only describes; routing, headers and errors are the app's.
"""

from __future__ import annotations

from typing import Any

from cache.records import EventCause
from cache.store import RATE_LIMIT_WINDOW_SECONDS
from cache.types import CampaignType, SegmentType, VoucherType
from readapi.cursor import MAX_CURSOR_LENGTH
from readapi.docs_page import ASSET_NAMES
from readapi.events import (
    EVENT_CURSOR_PATTERN,
    EVENT_TYPES,
    MAX_EVENT_CURSOR_LENGTH,
    MAX_EVENTS_WAIT_MS,
    SCAN_ENTRIES,
)
from readapi.freshness import DEFAULT_WAIT_MS, MAX_WAIT_MS
from readapi.search_query import (
    CREATED_AFTER,
    CREATED_BEFORE,
    DEFAULT_LIMIT,
    INSTANT_PATTERN,
    MAX_EMAIL_LENGTH,
    MAX_ID_LENGTH,
    MAX_LIMIT,
    MAX_Q_LENGTH,
    MAX_TIMESTAMP_LENGTH,
    MIN_PREFIX_LENGTH,
    Q_PATTERN,
    TEXT_PATTERN,
)

API_VERSION = "1.0.0"
ERROR_KEYS = (
    "invalid_request",
    "unauthorized",
    "not_found",
    "method_not_allowed",
    "rate_limited",
    "not_yet_indexed",
    "unavailable",
    "internal_error",
)
LSN_PATTERN = "^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"
# ``readapi.endpoint``: an incoming ``X-Request-Id`` matching this is echoed; every answer's
# id matches it (a made one is ``<12 hex digits>-<counter>``).
REQUEST_ID_PATTERN = "^[A-Za-z0-9._:+=/-]{1,128}$"
CURSOR_PATTERN = "^[A-Za-z0-9_-]+$"
MAX_RATE_LIMIT = 2**31 - 1  # ``api_keys.rate_limit_per_minute`` is a Postgres integer

_JSON = "application/json"


def _ref(section: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{section}/{name}"}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _maybe_string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": ["string", "null"], "description": description, **extra}


def _timestamp(description: str, *, nullable: bool = False) -> dict[str, Any]:
    kind: str | list[str] = ["string", "null"] if nullable else "string"
    return {"type": kind, "format": "date-time", "description": description}


def _object(
    properties: dict[str, Any],
    description: str,
    *,
    required: list[str] | None = None,
    additional: bool = False,
) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "required": list(properties) if required is None else required,
        "properties": properties,
        "additionalProperties": additional,
    }


# ---------------------------------------------------------------------------------------
# Schemas


def _metadata() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Tenant metadata, as stored: any JSON object.",
        "additionalProperties": True,
    }


def _voucher_schemas() -> dict[str, Any]:
    discount = {
        "type": "object",
        "description": "The `discount` column as stored; these keys are the usual ones.",
        "properties": {
            "type": {"type": "string", "enum": ["AMOUNT", "PERCENT", "UNIT"]},
            "amount_off": {"type": ["integer", "null"], "description": "In cents."},
            "percent_off": {"type": ["number", "null"]},
            "amount_limit": {"type": ["integer", "null"], "description": "In cents."},
            "unit_off": {"type": ["number", "null"]},
            "unit_type": {"type": ["string", "null"]},
        },
        "additionalProperties": True,
    }
    gift = _object(
        {
            "amount": {"type": ["integer", "null"], "description": "`gift_amount`, in cents."},
            "balance": {"type": ["integer", "null"], "description": "`gift_balance`, in cents."},
        },
        "Present when `gift_amount` or `gift_balance` is set.",
    )
    loyalty_card = _object(
        {
            "points": {"type": ["integer", "null"], "description": "`loyalty_points`."},
            "balance": {"type": ["integer", "null"], "description": "`loyalty_balance`."},
        },
        "Present when `loyalty_points` or `loyalty_balance` is set.",
    )
    redemption = _object(
        {
            "quantity": {
                "type": ["integer", "null"],
                "description": "`redemption_quantity`; null means unlimited.",
            },
            "redeemed_quantity": {"type": "integer"},
        },
        "Redemption counters.",
    )
    voucher = _object(
        {
            "id": _string("Voucher id."),
            "code": _string("Voucher code, unique within the project."),
            "object": {"type": "string", "const": "voucher"},
            "campaign": _maybe_string("Name of the campaign, null without one."),
            "campaign_id": _maybe_string("Campaign id, null without one."),
            "type": {"type": "string", "enum": [t.value for t in VoucherType]},
            "discount": _nullable(_schema("Discount")),
            "gift": _nullable(_schema("GiftBalance")),
            "loyalty_card": _nullable(_schema("LoyaltyCardBalance")),
            "start_date": _timestamp("Start of validity.", nullable=True),
            "expiration_date": _timestamp("End of validity.", nullable=True),
            "active": {"type": "boolean"},
            "redemption": _schema("VoucherRedemption"),
            "holder_id": _maybe_string("Id of the customer holding the voucher."),
            "metadata": _metadata(),
            "created_at": _timestamp("Creation instant (microsecond precision)."),
            "updated_at": _timestamp("Last update instant."),
        },
        "A voucher, coupon, gift card or loyalty card.",
    )
    return {
        "Discount": discount,
        "GiftBalance": gift,
        "LoyaltyCardBalance": loyalty_card,
        "VoucherRedemption": redemption,
        "Voucher": voucher,
    }


def _customer_schemas() -> dict[str, Any]:
    address = {
        "type": "object",
        "description": "The `address` column as stored.",
        "properties": {
            key: {"type": ["string", "null"]}
            for key in ("city", "state", "line_1", "line_2", "country", "postal_code")
        },
        "additionalProperties": True,
    }
    summary = _object(
        {
            "redemptions": _object(
                {
                    "total_redeemed": {
                        "type": "integer",
                        "description": "Every redemption of the customer.",
                    },
                    "total_succeeded": {"type": "integer", "description": "Result SUCCESS."},
                    "total_failed": {"type": "integer", "description": "Result FAILURE."},
                    "gift": _object(
                        {
                            "redeemed_amount": {
                                "type": "integer",
                                "description": "Sum of `amount` over successful ones, cents.",
                            }
                        },
                        "Gift card redemptions.",
                    ),
                    "loyalty_card": _object(
                        {
                            "redeemed_points": {
                                "type": "integer",
                                "description": "Sum of `points` over successful ones.",
                            }
                        },
                        "Loyalty card redemptions.",
                    ),
                },
                "Counts and sums over the customer's redemptions.",
            )
        },
        "Derived from the customer's redemptions.",
    )
    customer = _object(
        {
            "id": _string("Customer id."),
            "source_id": _maybe_string("The platform's own id, unique within the project."),
            "object": {"type": "string", "const": "customer"},
            "name": _maybe_string("Name."),
            "email": _maybe_string("Email address."),
            "phone": _maybe_string("Phone number."),
            "address": _nullable(_schema("Address")),
            "metadata": _metadata(),
            "summary": _schema("CustomerSummary"),
            "loyalty": _object(
                {
                    "points": {
                        "type": "integer",
                        "description": "Sum of `loyalty_balance` over the LOYALTY_CARD "
                        "vouchers the customer holds.",
                    }
                },
                "Loyalty balance.",
            ),
            "created_at": _timestamp("Creation instant."),
            "updated_at": _timestamp("Last update instant."),
        },
        "A customer of the project.",
    )
    return {"Address": address, "CustomerSummary": summary, "Customer": customer}


def _segment_and_campaign_schemas() -> dict[str, Any]:
    segment = _object(
        {
            "id": _string("Segment id."),
            "name": _string("Segment name."),
            "type": {"type": "string", "enum": [t.value for t in SegmentType]},
            "filter": {
                "type": ["object", "null"],
                "description": "Filter of an auto-update segment (docs/api.md §4), as stored.",
                "additionalProperties": True,
            },
            "count": {"type": "integer", "minimum": 0, "description": "Current members."},
            "created_at": _timestamp("Creation instant."),
            "object": {"type": "string", "const": "segment"},
        },
        "A customer segment.",
    )
    segment_ref = _object(
        {
            "id": _string("Segment id."),
            "name": _string("Segment name."),
            "object": {"type": "string", "const": "segment"},
        },
        "A segment the customer belongs to.",
    )
    campaign = _object(
        {
            "id": _string("Campaign id."),
            "name": _string("Campaign name."),
            "type": {"type": "string", "enum": [t.value for t in CampaignType]},
            "active": {"type": "boolean"},
            "start_date": _timestamp("Start of the campaign.", nullable=True),
            "expiration_date": _timestamp("End of the campaign.", nullable=True),
            "metadata": _metadata(),
            "vouchers_count": {
                "type": "integer",
                "minimum": 0,
                "description": "Vouchers of the campaign.",
            },
            "created_at": _timestamp("Creation instant."),
            "updated_at": _timestamp("Last update instant."),
            "object": {"type": "string", "const": "campaign"},
        },
        "A campaign.",
    )
    return {"Segment": segment, "SegmentRef": segment_ref, "Campaign": campaign}


def _list_schema(name: str, item: str) -> dict[str, Any]:
    return _object(
        {
            "object": {"type": "string", "const": "list"},
            "data_ref": {"type": "string", "const": name},
            name: {"type": "array", "items": _schema(item)},
            "total": {
                "type": "integer",
                "minimum": 0,
                "description": "Every match of the filters, not only this page.",
            },
            "has_more": {"type": "boolean", "description": "Whether another page follows."},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Pass as `starting_after` for the next page; null on the last.",
            },
        },
        f"A page of {name}: `created_at` descending, then id descending.",
    )


def _event_schemas() -> dict[str, Any]:
    cursor = {"type": "string", "pattern": EVENT_CURSOR_PATTERN}
    event = _object(
        {
            "id": _string(
                "Identity of the transition, derived from its cause (the change or the clock "
                "tick): a repeat of the same transition has the same id."
            ),
            "object": {"type": "string", "const": "event"},
            "type": {"type": "string", "enum": list(EVENT_TYPES)},
            "customer_id": _string("The customer that entered or left the segment."),
            "segment_id": _string("The segment."),
            "cause": {
                "type": "string",
                "enum": [cause.value for cause in EventCause],
                "description": "`change`: a committed write; `clock`: time passing (a filter "
                "on dates).",
            },
            "lsn": _string(
                "WAL position (`X/Y`) of the change, or the watermark of the clock tick.",
                pattern=LSN_PATTERN,
            ),
            "occurred_at": _timestamp("Commit time of the change, or time of the tick."),
            "cursor": {**cursor, "description": "Pass as `after` to read what follows."},
        },
        "A customer entering or leaving a segment.",
    )
    events = _object(
        {
            "object": {"type": "string", "const": "list"},
            "data_ref": {"type": "string", "const": "data"},
            "data": {"type": "array", "items": _schema("Event")},
            "has_more": {
                "type": "boolean",
                "description": "Whether entries followed `next_cursor` when the stream was read.",
            },
            "next_cursor": {
                "type": ["string", "null"],
                "pattern": EVENT_CURSOR_PATTERN,
                "description": "The last entry examined (matching or not), else `after`; pass "
                "it as `after` next. Null only when the stream was empty and no `after` was "
                "given.",
            },
        },
        "Events, oldest first.",
    )
    return {"Event": event, "EventList": events}


def _schemas() -> dict[str, Any]:
    customer_segments = _object(
        {
            "object": {"type": "string", "const": "list"},
            "data_ref": {"type": "string", "const": "data"},
            "data": {"type": "array", "items": _schema("SegmentRef")},
            "total": {"type": "integer", "minimum": 0},
        },
        "Every segment the customer belongs to.",
    )
    error = _object(
        {
            "code": {"type": "integer", "description": "The HTTP status."},
            "key": {"type": "string", "enum": list(ERROR_KEYS)},
            "message": _string("What went wrong, for people."),
            "details": _string("More on the cause: the parameter or header at fault."),
            "request_id": _string("The `X-Request-Id` of the answer."),
        },
        "Body of every error answer.",
    )
    return {
        **_voucher_schemas(),
        **_customer_schemas(),
        **_segment_and_campaign_schemas(),
        "VoucherList": _list_schema("vouchers", "Voucher"),
        "CustomerList": _list_schema("customers", "Customer"),
        "CustomerSegmentList": customer_segments,
        **_event_schemas(),
        "Error": error,
    }


# ---------------------------------------------------------------------------------------
# Headers, parameters, responses


def _headers() -> dict[str, Any]:
    def header(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "schema": schema}

    return {
        "X-Request-Id": {
            **header(
                "Identifies this answer in logs; on every answer. The request's own "
                "`X-Request-Id` when it matches this pattern, else a new one.",
                {"type": "string", "pattern": REQUEST_ID_PATTERN},
            ),
            "required": True,
        },
        "X-Read-Watermark": header(
            "WAL position (`X/Y`) up to which every committed change had been indexed.",
            {"type": "string", "pattern": LSN_PATTERN},
        ),
        "X-Rate-Limit-Limit": header(
            "Requests allowed per minute for this key (a negative limit in `api_keys` counts "
            "as 0); the configured default when no key was identified.",
            {"type": "integer", "minimum": 0, "maximum": MAX_RATE_LIMIT},
        ),
        "X-Rate-Limit-Remaining": header(
            "Requests left in the current minute.",
            {"type": "integer", "minimum": 0, "maximum": MAX_RATE_LIMIT},
        ),
        "Retry-After": header(
            "Seconds to wait before retrying, at least 1.",
            {"type": "integer", "minimum": 1, "maximum": RATE_LIMIT_WINDOW_SECONDS},
        ),
    }


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"{description} One path segment, percent-decoded: 1 to "
        f"{MAX_ID_LENGTH} characters without control characters.",
        "schema": _id_schema(),
    }


def _id_schema(max_length: int = MAX_ID_LENGTH) -> dict[str, Any]:
    """Ids, codes and emails: no control character (U+0000-U+001F, U+007F-U+009F)."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_length,
        "pattern": TEXT_PATTERN,
    }


def _timestamp_param(name: str, relation: str) -> dict[str, Any]:
    return _query(
        name,
        f"Only objects created strictly {relation} this instant (bound excluded): an ISO 8601 "
        "calendar date (`2024-05-01`, midnight) or date and time (`2024-05-01T10:00:00Z`), "
        "extended or basic (`20240501T100000Z`), `T` or a space between them; the time is "
        "`HH`, `HH:MM` or `HH:MM:SS` with any number of fractional digits; the offset `Z`, "
        "`+HH`, `+HH:MM` or `+HHMM` (or `-`), none meaning UTC. An unencoded `+` that the "
        "query string turned into a space is read as `+`. The date must exist. At most "
        f"{MAX_TIMESTAMP_LENGTH} characters.",
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TIMESTAMP_LENGTH,
            "pattern": INSTANT_PATTERN,
            "examples": ["2024-05-01", "2024-05-01T10:00:00Z"],
        },
    )


def _parameters() -> dict[str, Any]:
    return {
        "MinWatermark": {
            "name": "X-Min-Watermark",
            "in": "header",
            "required": False,
            "description": "Answer only once the indexer has reached this WAL position "
            "(e.g. the LSN of your own write); 503 `not_yet_indexed` if it does not within "
            "`X-Wait-Timeout-Ms`.",
            "schema": {
                "type": "string",
                "minLength": 3,
                "maxLength": 17,
                "pattern": LSN_PATTERN,
                "examples": ["0/1A2B3C8"],
            },
        },
        "WaitTimeoutMs": {
            "name": "X-Wait-Timeout-Ms",
            "in": "header",
            "required": False,
            "description": "How long to wait for `X-Min-Watermark`, in milliseconds "
            f"(default {DEFAULT_WAIT_MS}, at most {MAX_WAIT_MS}; larger values are refused, "
            "not clamped). Checked even without `X-Min-Watermark`, where it has no effect.",
            "schema": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_WAIT_MS,
                "default": DEFAULT_WAIT_MS,
            },
        },
        "RequestId": {
            "name": "X-Request-Id",
            "in": "header",
            "required": False,
            "description": "Echoed in the answer's `X-Request-Id` when it matches "
            f"`{REQUEST_ID_PATTERN}`; any other value is replaced by a new id (never refused).",
            "schema": {"type": "string"},
        },
        "Limit": _query(
            "limit",
            f"Page size, 1 to {MAX_LIMIT} (1 to 3 digits).",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        ),
        "StartingAfter": _query(
            "starting_after",
            "The `next_cursor` of the previous page, with the same filters (a cursor is "
            "bound to its list; `limit` may change). Cursors survive index rebuilds. A cursor "
            "is signed: any other text of this shape is refused with 400.",
            {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_CURSOR_LENGTH,
                "pattern": CURSOR_PATTERN,
            },
        ),
        "CreatedAfter": _timestamp_param(CREATED_AFTER, "after"),
        "CreatedBefore": _timestamp_param(CREATED_BEFORE, "before"),
        "SearchText": _query(
            "q",
            f"Text search: 1 to {MAX_Q_LENGTH} characters once surrounding spaces, tabs, "
            "CRs and LFs are trimmed, without other control characters; every word must "
            "match. Narrows the list without reordering it.",
            {"type": "string", "minLength": 1, "pattern": Q_PATTERN},
        ),
    }


_ERRORS: dict[int, tuple[str, str, tuple[str, ...]]] = {
    400: ("InvalidRequest", "Invalid parameter or header.", ("invalid_request",)),
    401: ("Unauthorized", "Missing, unknown or revoked credentials.", ("unauthorized",)),
    404: (
        "NotFound",
        "No such object in the key's project (another project's objects answer the same).",
        ("not_found",),
    ),
    405: ("MethodNotAllowed", "Only GET is served on this path.", ("method_not_allowed",)),
    429: (
        "RateLimited",
        "Over the key's rate limit; retry after `Retry-After`.",
        ("rate_limited",),
    ),
    503: (
        "Unavailable",
        "`not_yet_indexed`: `X-Min-Watermark` not reached in time; `unavailable`: a backing "
        "service is down.",
        ("not_yet_indexed", "unavailable"),
    ),
    500: ("InternalError", "Unexpected server fault.", ("internal_error",)),
}
_V1_STATUSES = (400, 401, 404, 405, 429, 503, 500)
_V1_LIST_STATUSES = (400, 401, 405, 429, 503, 500)
_OPS_STATUSES = (405, 500)


def _error_response(
    status: int, *, v1: bool, description: str | None = None
) -> dict[str, Any]:
    _, default_description, keys = _ERRORS[status]
    description = default_description if description is None else description
    headers: dict[str, Any] = {"X-Request-Id": _ref("headers", "X-Request-Id")}
    if v1:
        headers.update(
            {
                "X-Read-Watermark": _ref("headers", "X-Read-Watermark"),
                "X-Rate-Limit-Limit": _ref("headers", "X-Rate-Limit-Limit"),
                "X-Rate-Limit-Remaining": _ref("headers", "X-Rate-Limit-Remaining"),
            }
        )
    if status == 429:
        headers["Retry-After"] = _ref("headers", "Retry-After")
    example_key = keys[-1]
    return {
        "description": description,
        "headers": headers,
        "content": {
            _JSON: {
                "schema": {
                    "allOf": [
                        _schema("Error"),
                        {"properties": {"code": {"const": status}, "key": {"enum": list(keys)}}},
                    ]
                },
                "example": {
                    "code": status,
                    "key": example_key,
                    "message": description,
                    "details": "",
                    "request_id": "3f1c2a9e6b7d4e0f",
                },
            }
        },
    }


def _responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, (name, _, _) in _ERRORS.items():
        responses[name] = _error_response(status, v1=True)
        if status in _OPS_STATUSES or status == 503:
            responses[f"Service{name}"] = _error_response(status, v1=False)
    # Only the documentation files have a 404 among the service routes: an unknown name.
    responses["ServiceNotFound"] = _error_response(404, v1=False, description="No such file.")
    return responses


def _ok_v1(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {
            name: _ref("headers", name)
            for name in (
                "X-Request-Id",
                "X-Read-Watermark",
                "X-Rate-Limit-Limit",
                "X-Rate-Limit-Remaining",
            )
        },
        "content": {_JSON: {"schema": _schema(schema)}},
    }


def _error_refs(statuses: tuple[int, ...], *, v1: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        name = _ERRORS[status][0]
        out[str(status)] = _ref("responses", name if v1 else f"Service{name}")
    return out


# ---------------------------------------------------------------------------------------
# Operations


def _v1_operation(
    operation_id: str,
    tag: str,
    summary: str,
    description: str,
    parameters: list[dict[str, Any]],
    ok_schema: str,
    ok_description: str,
    *,
    statuses: tuple[int, ...] = _V1_STATUSES,
) -> dict[str, Any]:
    return {
        "get": {
            "operationId": operation_id,
            "tags": [tag],
            "summary": summary,
            "description": description,
            "security": [{"AppId": [], "AppToken": []}],
            "parameters": [
                *parameters,
                _ref("parameters", "MinWatermark"),
                _ref("parameters", "WaitTimeoutMs"),
                _ref("parameters", "RequestId"),
            ],
            "responses": {
                "200": _ok_v1(ok_schema, ok_description),
                **_error_refs(statuses, v1=True),
            },
        }
    }


def _service_operation(
    operation_id: str,
    summary: str,
    description: str,
    content: dict[str, Any],
    *,
    unavailable: bool = False,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    statuses = (405, 503, 500) if unavailable else _OPS_STATUSES
    if parameters is not None:
        statuses = (404, *statuses)
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": ["Service"],
        "summary": summary,
        "description": description,
        "security": [],
        "responses": {
            "200": {
                "description": summary,
                "headers": {"X-Request-Id": _ref("headers", "X-Request-Id")},
                "content": content,
            },
            **_error_refs(statuses, v1=False),
        },
    }
    if parameters is not None:
        operation["parameters"] = parameters
    return {"get": operation}


_LIST_ORDER = (
    "Ordered by `created_at` descending, then id descending. Page with `limit` and "
    "`starting_after` (the previous page's `next_cursor`); `total` counts every match."
)


def _paths() -> dict[str, Any]:
    paging = [_ref("parameters", "Limit"), _ref("parameters", "StartingAfter")]
    created = [_ref("parameters", "CreatedAfter"), _ref("parameters", "CreatedBefore")]
    status_object = {"type": "object", "additionalProperties": True}
    return {
        "/v1/vouchers/{code}": _v1_operation(
            "getVoucher",
            "Vouchers",
            "Get a voucher by code or id",
            "`{code}` is matched against voucher codes first, then against voucher ids.",
            [_path("code", "Voucher code, or voucher id.")],
            "Voucher",
            "The voucher.",
        ),
        "/v1/vouchers": _v1_operation(
            "listVouchers",
            "Vouchers",
            "List vouchers",
            f"Filters combine with AND. {_LIST_ORDER}",
            [
                _query("campaign_id", "Vouchers of this campaign.", _id_schema()),
                _query("holder_id", "Vouchers held by this customer.", _id_schema()),
                _query(
                    "type",
                    "Voucher type.",
                    {"type": "string", "enum": [t.value for t in VoucherType]},
                ),
                _query(
                    "active",
                    "Active (`true`) or inactive (`false`) only, spelled exactly so.",
                    {"type": "string", "enum": ["true", "false"]},
                ),
                {
                    **_ref("parameters", "SearchText"),
                    "description": "Words of the code or of metadata values; a code starting "
                    f"with `q` (case-insensitive; from {MIN_PREFIX_LENGTH} characters without "
                    "whitespace, else a code equal to `q`) also matches.",
                },
                *created,
                *paging,
            ],
            "VoucherList",
            "A page of vouchers.",
            statuses=_V1_LIST_STATUSES,
        ),
        "/v1/customers/{id}": _v1_operation(
            "getCustomer",
            "Customers",
            "Get a customer by id or source_id",
            "`{id}` is matched against customer ids first, then against `source_id`.",
            [_path("id", "Customer id, or source_id.")],
            "Customer",
            "The customer.",
        ),
        "/v1/customers": _v1_operation(
            "listCustomers",
            "Customers",
            "List customers",
            f"Filters combine with AND. {_LIST_ORDER}",
            [
                _query(
                    "email",
                    "Exact email, compared case-insensitively.",
                    _id_schema(MAX_EMAIL_LENGTH),
                ),
                _query("segment_id", "Members of this segment.", _id_schema()),
                {
                    **_ref("parameters", "SearchText"),
                    "description": "Words of the name, email or source_id; an email (any "
                    "case) or source_id equal to `q` also matches.",
                },
                *created,
                *paging,
            ],
            "CustomerList",
            "A page of customers.",
            statuses=_V1_LIST_STATUSES,
        ),
        "/v1/customers/{id}/vouchers": _v1_operation(
            "listCustomerVouchers",
            "Customers",
            "List a customer's vouchers",
            f"Vouchers whose `holder_id` is this customer. {_LIST_ORDER}",
            [_path("id", "Customer id, or source_id."), *paging],
            "VoucherList",
            "A page of the customer's vouchers.",
        ),
        "/v1/customers/{id}/segments": _v1_operation(
            "listCustomerSegments",
            "Customers",
            "List a customer's segments",
            "Every segment the customer currently belongs to, static or auto-update.",
            [_path("id", "Customer id, or source_id.")],
            "CustomerSegmentList",
            "The customer's segments.",
        ),
        "/v1/segments/{id}": _v1_operation(
            "getSegment",
            "Segments",
            "Get a segment",
            "`count` is the current number of members.",
            [_path("id", "Segment id.")],
            "Segment",
            "The segment.",
        ),
        "/v1/campaigns/{id}": _v1_operation(
            "getCampaign",
            "Campaigns",
            "Get a campaign",
            "`vouchers_count` is the current number of vouchers of the campaign.",
            [_path("id", "Campaign id.")],
            "Campaign",
            "The campaign.",
        ),
        "/v1/events": _v1_operation(
            "listEvents",
            "Events",
            "List segment events",
            "Customers entering and leaving the project's segments, oldest first (an addition "
            "to the contract). Filters are applied while the stream is read, and at most "
            f"{SCAN_ENTRIES} entries are examined per request: a page may hold fewer than "
            "`limit` events (even none) while `has_more` is true; go on from `next_cursor`. "
            "With `wait_ms`, a request that found nothing waits up to that long for a new "
            "entry, then reads once more.",
            [
                _query(
                    "type",
                    "Only events of this type.",
                    {"type": "string", "enum": list(EVENT_TYPES)},
                ),
                _query("segment_id", "Only events of this segment.", _id_schema()),
                _query(
                    "after",
                    "Events after this cursor (a `next_cursor` or an event's `cursor`): "
                    "`<digits>-<digits>`, at most 20 digits each. Without it, from the oldest "
                    "event kept.",
                    {
                        "type": "string",
                        "minLength": 3,
                        "maxLength": MAX_EVENT_CURSOR_LENGTH,
                        "pattern": EVENT_CURSOR_PATTERN,
                    },
                ),
                _ref("parameters", "Limit"),
                _query(
                    "wait_ms",
                    f"Long poll: when nothing matched, wait up to this long (0 to "
                    f"{MAX_EVENTS_WAIT_MS} ms, 1 to 5 digits) for a new entry. Default 0.",
                    {"type": "integer", "minimum": 0, "maximum": MAX_EVENTS_WAIT_MS, "default": 0},
                ),
            ],
            "EventList",
            "A page of events.",
            statuses=_V1_LIST_STATUSES,
        ),
        "/healthz": _service_operation(
            "getHealth",
            "Liveness",
            "200 while the process serves requests.",
            {_JSON: {"schema": status_object}},
        ),
        "/readyz": _service_operation(
            "getReadiness",
            "Readiness",
            "200 when Redis and Elasticsearch are reachable and API keys are loaded; "
            "503 otherwise.",
            {_JSON: {"schema": status_object}},
            unavailable=True,
        ),
        "/metrics": _service_operation(
            "getMetrics",
            "Prometheus metrics",
            "Metrics in the Prometheus text exposition format.",
            {"text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "string"}}},
        ),
        "/openapi.json": _service_operation(
            "getOpenApi",
            "This OpenAPI description",
            "The OpenAPI 3.1 description of the API.",
            {_JSON: {"schema": {"type": "object"}}},
        ),
        "/docs": _service_operation(
            "getDocs",
            "API documentation page",
            "Swagger UI rendering `/openapi.json`; \"Try it out\" sends requests to this API "
            "with the credentials entered under \"Authorize\". It loads its files from "
            "`/docs/static/{file}`.",
            {"text/html; charset=utf-8": {"schema": {"type": "string"}}},
        ),
        "/docs/static/{file}": _service_operation(
            "getDocsFile",
            "A file of the documentation page",
            "Swagger UI's script, style and icon, and the script starting it, as `/docs` "
            "loads them: gzip-encoded when accepted, cacheable for an hour.",
            {
                "text/javascript; charset=utf-8": {"schema": {"type": "string"}},
                "text/css; charset=utf-8": {"schema": {"type": "string"}},
                "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}},
            },
            parameters=[
                {
                    "name": "file",
                    "in": "path",
                    "required": True,
                    "description": "The file's name; any other answers 404.",
                    "schema": {"type": "string", "enum": list(ASSET_NAMES)},
                }
            ],
        ),
    }


_DESCRIPTION = """\
Read API of the promotions and loyalty platform: vouchers, customers, campaigns and segments
as indexed from the platform's database.

Every `/v1` request carries `X-App-Id` and `X-App-Token`; a key sees only its own project
(another project's object answers 404, like a missing one). Every `/v1` answer carries
`X-Rate-Limit-Limit`, `X-Rate-Limit-Remaining` and `X-Read-Watermark`; every answer carries
`X-Request-Id`. Bodies are JSON; timestamps are ISO 8601 with a time zone; money is in
integer cents. Errors share one body: `{"code", "key", "message", "details", "request_id"}`.
"""


def build_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every endpoint of docs/api.md §3."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Loyalty read API",
            "version": API_VERSION,
            "description": _DESCRIPTION,
        },
        "tags": [
            {"name": "Vouchers"},
            {"name": "Customers"},
            {"name": "Segments"},
            {"name": "Campaigns"},
            {"name": "Events", "description": "Segment membership changes (an addition)."},
            {"name": "Service", "description": "Health, metrics and documentation."},
        ],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "AppId": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-App-Id",
                    "description": "The application id (`api_keys.id`).",
                },
                "AppToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-App-Token",
                    "description": "The application's secret token.",
                },
            },
            "schemas": _schemas(),
            "parameters": _parameters(),
            "headers": _headers(),
            "responses": _responses(),
        },
    }

