"""List endpoints: query-parameter validation and the Elasticsearch searches behind them.

Pure functions, no I/O. A list route (``readapi.routes``) parses the query string with
``parse_voucher_list``, ``parse_customer_list`` or ``parse_holder_voucher_list`` (for a
holder's vouchers, with the holder's resolved id), then hands the parameters to
``readapi.lists.ListReader.page``, which:

1. decodes ``starting_after`` (``decode_starting_after``) under the cursor secret;
2. builds the search body (``build_search``) and passes its parts (query, sort, size,
   ``track_total_hits``, ``_source``, ``search_after``) to ``readapi.elastic.SearchReader``,
   which searches the alias of ``params.kind.object_kind`` under the configured index
   prefix (after a refresh when the request waited for a watermark);
3. reads the page from the answer (``page_from_response``) and encodes the next cursor
   (``encode_next_cursor``) into ``{"object": "list", "data_ref", <data_ref>: docs,
   "total", "has_more", "next_cursor"}``.

Interface:

- ``parse_voucher_list(query: Mapping[str, str]) -> VoucherListParams``
- ``parse_customer_list(query: Mapping[str, str]) -> CustomerListParams``
- ``parse_holder_voucher_list(query: Mapping[str, str], customer_id: str)
  -> HolderVoucherListParams`` (``customer_id``: the holder's resolved id)
- ``decode_starting_after(params, project_id, secret) -> SortKey | None``
- ``build_search(kind: ListKind, params, project_id, *, after: SortKey | None) -> dict``
- ``page_from_response(response: Mapping[str, Any], limit: int) -> Page``, a NamedTuple
  ``(docs, has_more, next_sort_key, total)``; ``MalformedSearchResponse`` if the answer
  lacks what the body asked for (a server-side fault, not a client one)
- ``encode_next_cursor(params, project_id, sort_key: SortKey | None, secret) -> str | None``
- ``cursor_scope(params, project_id) -> str``, ``parse_instant(name, value)``, ``ListKind``
  (``.object_kind``, ``.data_ref``), ``ALLOWED_PARAMETERS`` and the ``MAX_*`` bounds.

Every validation failure raises ``InvalidParameter(name, message)`` (a ``ValueError``) whose
``message`` names the parameter and suits a 400 ``invalid_request`` answer; no input string
raises anything else. Unknown parameters and repeated parameters are refused.

Semantics (docs/api.md §3):

- Order: ``created_at`` descending, then ``id`` descending (the sort key is the exact epoch
  microseconds ``created_at_us``, so instants closer than a millisecond keep their order).
- ``created_at[after]=T`` keeps objects created strictly after T, ``created_at[before]=T``
  strictly before T (both bounds exclusive; together they form an open interval, empty when
  after >= before, which is an empty list, not an error). T is an ISO 8601 calendar date
  (midnight), or date and time, with or without an offset; without an offset it is UTC:
  exactly what ``INSTANT_PATTERN`` matches (the OpenAPI document publishes it). More
  than six fractional digits are honoured exactly. ``2024-05-01T10:00:00 02:00`` (a ``+``
  decoded to a space by a query string) is read as ``+02:00``.
- ``q`` (1 to 200 characters once surrounding spaces, tabs, CRs and LFs are trimmed; exactly
  what ``Q_PATTERN`` matches) narrows the list, it never reorders it. Vouchers: every word
  in the code or metadata values (``match`` on ``search_text``, operator and), or the code
  itself case-insensitively: the code starts with ``q`` when ``q`` has no whitespace and at
  least ``MIN_PREFIX_LENGTH`` (2) characters, equals it otherwise. Customers: every word in
  name, email or source_id, or
  the email equal to ``q`` case-insensitively, or the source_id equal to ``q``. User text is
  only ever a value of ``match``/``term``/``prefix``: no query syntax is interpreted.
- ``email`` is exact but case-insensitive (the lower-cased value against ``email_lower``).
- ``active`` is ``true`` or ``false`` exactly; ``type`` is one of the voucher type names
  exactly; ids and ``segment_id`` are 1 to 200 characters; ``limit`` is an integer 1 to 100
  (default 10); email is at most 320 characters, instants 64. Control characters are
  refused in every value (tab and newlines excepted inside ``q``).
- A cursor (``starting_after``) is bound to its list: the kind, the project and the filters
  (``cursor_scope``), not ``limit``, which may change from page to page.

``has_more`` is computed by fetching ``limit + 1`` hits; ``total`` counts every match
(``track_total_hits``), whatever the page.
"""

from __future__ import annotations

import enum
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, NamedTuple

from cache.readmodel.indices import Field
from cache.types import ObjectKind, VoucherType
from readapi.cursor import (
    MAX_CURSOR_LENGTH,
    InvalidCursor,
    SortKey,
    decode_cursor,
    encode_cursor,
)

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_ID_LENGTH = 200
MAX_EMAIL_LENGTH = 320
MAX_Q_LENGTH = 200
# Shorter ``q`` matches a code exactly, not as a prefix: one character would walk the codes
# of most of the index.
MIN_PREFIX_LENGTH = 2
MAX_TIMESTAMP_LENGTH = 64

CREATED_AFTER = "created_at[after]"
CREATED_BEFORE = "created_at[before]"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Tab, CR and LF are whitespace to the analyzer; other control characters stay refused.
_CONTROL_IN_Q = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# What surrounds ``q`` and is trimmed: ASCII whitespace only (the rest are refused above).
_Q_TRIMMED = " \t\n\r"

# The formats the validation accepts, as regular expressions that are valid both for Python and
# for ECMA-262 (JSON Schema ``pattern``): ``readapi.openapi`` publishes these very strings, so
# the published formats and the validation cannot drift apart.
#
# Ids, codes, emails: no control character (with minLength/maxLength for the length).
TEXT_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
# ``q``: 1 to MAX_Q_LENGTH characters once surrounding spaces, tabs, CRs and LFs are trimmed;
# inside, tab, CR and LF are the only control characters allowed.
Q_PATTERN = (
    "^[ \\t\\n\\r]*[^\\u0000-\\u0020\\u007f-\\u009f]"
    "(?:[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]"
    f"{{0,{MAX_Q_LENGTH - 2}}}"
    "[^\\u0000-\\u0020\\u007f-\\u009f])?[ \\t\\n\\r]*$"
)
# ``limit``: 1 to 3 ASCII digits (the value 1 to MAX_LIMIT is checked apart).
_LIMIT = re.compile(r"[0-9]{1,3}")


def _instant_pattern() -> str:
    """``created_at[after]``/``[before]``: an ISO 8601 calendar date, optionally with a time
    and an offset, that exists (month lengths and leap years included), so that every string
    matching the pattern is an instant and every other string is refused."""
    year = "(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"  # 0001 to 9999
    leap = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"

    def month_day(sep: str) -> str:
        return (
            f"(?:(?:0[1-9]|1[0-2]){sep}(?:0[1-9]|1[0-9]|2[0-8])"
            f"|(?:0[13-9]|1[0-2]){sep}(?:29|30)|(?:0[13578]|1[02]){sep}31)"
        )

    date = f"(?:{year}-{month_day('-')}|{leap}-02-29|{year}{month_day('')}|{leap}0229)"
    hour, minute = "(?:[01][0-9]|2[0-3])", "[0-5][0-9]"
    fraction = "(?:[.,][0-9]+)?"
    time = (
        f"{hour}(?::{minute}(?::{minute}{fraction})?|{minute}(?:{minute}{fraction})?)?"
    )
    offset = f"(?:Z|[+-]{hour}(?::?{minute})?)"
    # `` 02:00``: the ``+`` of an offset that the query string decoded to a space.
    decoded_plus = f" {hour}(?::?{minute})?"
    return f"^{date}(?:[T ]{time}{offset}?|T{time}{decoded_plus})?$"


INSTANT_PATTERN = _instant_pattern()
_INSTANT = re.compile(INSTANT_PATTERN)
_FRACTION = re.compile(r"([.,])([0-9]+)")
# A time followed by a space and an offset: the ``+`` of ``+02:00`` after form decoding.
_DECODED_PLUS = re.compile(
    r"([0-9]{4}-?[0-9]{2}-?[0-9]{2}T[0-9:.,]+) ([0-9]{2}(?::?[0-9]{2}){0,2})"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_NAME_SHOWN = 60


class InvalidParameter(ValueError):
    """A query parameter is unknown, repeated, missing a valid value or out of bounds."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


class ListKind(enum.StrEnum):
    """The list endpoints: which index they search and under which key they answer."""

    VOUCHERS = "vouchers"  # GET /v1/vouchers
    CUSTOMERS = "customers"  # GET /v1/customers
    CUSTOMER_VOUCHERS = "customer_vouchers"  # GET /v1/customers/{id}/vouchers

    @property
    def object_kind(self) -> ObjectKind:
        """Kind of the listed objects; the index alias is ``<prefix><object_kind>s``."""
        return ObjectKind.CUSTOMER if self is ListKind.CUSTOMERS else ObjectKind.VOUCHER

    @property
    def data_ref(self) -> str:
        """The ``data_ref`` of the list answer, also the key holding the objects."""
        return "customers" if self is ListKind.CUSTOMERS else "vouchers"


@dataclass(frozen=True, slots=True)
class VoucherListParams:
    """``GET /v1/vouchers``. Bounds are exclusive epoch microseconds (see module doc)."""

    kind: ClassVar[ListKind] = ListKind.VOUCHERS

    campaign_id: str | None = None
    holder_id: str | None = None
    type: VoucherType | None = None
    active: bool | None = None
    q: str | None = None
    created_after_us: int | None = None
    created_before_us: int | None = None
    limit: int = DEFAULT_LIMIT
    starting_after: str | None = None


@dataclass(frozen=True, slots=True)
class CustomerListParams:
    """``GET /v1/customers``. ``email_lower`` is the ``email`` parameter lower-cased."""

    kind: ClassVar[ListKind] = ListKind.CUSTOMERS

    email_lower: str | None = None
    segment_id: str | None = None
    q: str | None = None
    created_after_us: int | None = None
    created_before_us: int | None = None
    limit: int = DEFAULT_LIMIT
    starting_after: str | None = None


@dataclass(frozen=True, slots=True)
class HolderVoucherListParams:
    """``GET /v1/customers/{id}/vouchers``; ``customer_id`` is the holder's resolved id."""

    kind: ClassVar[ListKind] = ListKind.CUSTOMER_VOUCHERS

    customer_id: str
    limit: int = DEFAULT_LIMIT
    starting_after: str | None = None


ListParams = VoucherListParams | CustomerListParams | HolderVoucherListParams

_PAGING = ("limit", "starting_after")
ALLOWED_PARAMETERS: dict[ListKind, tuple[str, ...]] = {
    ListKind.VOUCHERS: (
        "campaign_id",
        "holder_id",
        "type",
        "active",
        "q",
        CREATED_AFTER,
        CREATED_BEFORE,
        *_PAGING,
    ),
    ListKind.CUSTOMERS: ("email", "segment_id", "q", CREATED_AFTER, CREATED_BEFORE, *_PAGING),
    ListKind.CUSTOMER_VOUCHERS: _PAGING,
}


class Page(NamedTuple):
    """One page of a list: the API objects, whether more follow, the cursor key, the total."""

    docs: list[dict[str, Any]]
    has_more: bool
    next_sort_key: SortKey | None
    total: int


class MalformedSearchResponse(ValueError):
    """The search answer lacks what the built query asks for (a server-side fault)."""


# ---------------------------------------------------------------------------------------
# Parsing


def _shown(name: str) -> str:
    """A parameter name as quoted in messages: bounded, since clients choose the names."""
    if len(name) > _MAX_NAME_SHOWN:
        name = name[:_MAX_NAME_SHOWN] + "..."
    return json.dumps(name)


def _check_names(query: Mapping[str, str], kind: ListKind) -> None:
    allowed = ALLOWED_PARAMETERS[kind]
    # A MultiDict yields one item per value (its keys() may be deduplicated), and getall()
    # sees every value whatever the version; a plain mapping never repeats a name.
    counts = Counter(name for name, _ in query.items())
    getall = getattr(query, "getall", None)
    if callable(getall):
        for name in counts:
            counts[name] = max(counts[name], len(getall(name)))
    for name in counts:
        if name not in allowed:
            listed = ", ".join(allowed)
            raise InvalidParameter(
                name[:_MAX_NAME_SHOWN],
                f"unknown query parameter {_shown(name)}; allowed: {listed}",
            )
    for name, count in counts.items():
        if count > 1:
            raise InvalidParameter(
                name, f"query parameter {_shown(name)} is given {count} times; give it once"
            )


def _text(name: str, value: object, max_length: int, *, control: re.Pattern[str] = _CONTROL) -> str:
    if not isinstance(value, str):
        raise InvalidParameter(name, f"query parameter {_shown(name)} must be text")
    if not value:
        raise InvalidParameter(name, f"query parameter {_shown(name)} must not be empty")
    if len(value) > max_length:
        raise InvalidParameter(
            name, f"query parameter {_shown(name)} is too long (at most {max_length} characters)"
        )
    if control.search(value) is not None:
        raise InvalidParameter(
            name, f"query parameter {_shown(name)} must not contain control characters"
        )
    return value


def _query_text(name: str, value: object) -> str:
    if isinstance(value, str):
        # Control characters are refused before trimming: trimmed, they would pass unseen.
        if _CONTROL_IN_Q.search(value) is not None:
            raise InvalidParameter(
                name, f"query parameter {_shown(name)} must not contain control characters"
            )
        value = value.strip(_Q_TRIMMED)
    return _text(name, value, MAX_Q_LENGTH, control=_CONTROL_IN_Q)


def _limit(value: object) -> int:
    message = f'query parameter "limit" must be an integer from 1 to {MAX_LIMIT}'
    if not isinstance(value, str) or _LIMIT.fullmatch(value) is None:
        raise InvalidParameter("limit", message)
    limit = int(value)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidParameter("limit", message)
    return limit


def _cursor_text(value: object) -> str:
    return _text("starting_after", value, MAX_CURSOR_LENGTH)


def _boolean(name: str, value: object) -> bool:
    if value == "true":
        return True
    if value == "false":
        return False
    raise InvalidParameter(name, f"query parameter {_shown(name)} must be true or false")


def _voucher_type(value: object) -> VoucherType:
    if isinstance(value, str):
        for member in VoucherType:
            if value == member.value:
                return member
    names = ", ".join(member.value for member in VoucherType)
    raise InvalidParameter("type", f'query parameter "type" must be one of {names}')


def parse_instant(name: str, value: object) -> tuple[int, bool]:
    """An ISO 8601 instant as ``(whole epoch microseconds, sub-microsecond remainder?)``."""
    invalid = InvalidParameter(
        name,
        f"query parameter {_shown(name)} must be an ISO 8601 date or date-time, "
        "e.g. 2024-05-01 or 2024-05-01T10:00:00Z (no offset means UTC)",
    )
    if not isinstance(value, str) or not value or len(value) > MAX_TIMESTAMP_LENGTH:
        raise invalid
    if _INSTANT.fullmatch(value) is None:
        raise invalid
    text = value
    decoded_plus = _DECODED_PLUS.fullmatch(text)
    if decoded_plus is not None:
        text = f"{decoded_plus.group(1)}+{decoded_plus.group(2)}"
    remainder = False
    fractions = _FRACTION.findall(text)
    if len(fractions) > 1:
        raise invalid
    if fractions and len(fractions[0][1]) > 6:
        separator, digits = fractions[0]
        remainder = digits[6:].strip("0") != ""
        text = text.replace(separator + digits, separator + digits[:6], 1)
    try:
        instant = datetime.fromisoformat(text)
    except (ValueError, OverflowError) as error:
        raise invalid from error
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    try:
        delta: timedelta = instant - _EPOCH
    except OverflowError as error:
        raise invalid from error
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros, remainder


def _created_bounds(query: Mapping[str, str]) -> tuple[int | None, int | None]:
    after_us = before_us = None
    if CREATED_AFTER in query:
        # created_at > T.f (f < 1 µs) holds for whole microseconds exactly when > T.
        after_us, _ = parse_instant(CREATED_AFTER, query[CREATED_AFTER])
    if CREATED_BEFORE in query:
        # created_at < T.f with f > 0 holds for whole microseconds exactly when < T + 1.
        floor_us, remainder = parse_instant(CREATED_BEFORE, query[CREATED_BEFORE])
        before_us = floor_us + 1 if remainder else floor_us
    return after_us, before_us


def _optional(query: Mapping[str, str], name: str) -> str | None:
    return query.get(name)


def _paging(query: Mapping[str, str]) -> tuple[int, str | None]:
    limit = _limit(query["limit"]) if "limit" in query else DEFAULT_LIMIT
    cursor = _cursor_text(query["starting_after"]) if "starting_after" in query else None
    return limit, cursor


def parse_voucher_list(query: Mapping[str, str]) -> VoucherListParams:
    """Validate the query of ``GET /v1/vouchers``."""
    _check_names(query, ListKind.VOUCHERS)
    campaign_id = _optional(query, "campaign_id")
    holder_id = _optional(query, "holder_id")
    voucher_type = _optional(query, "type")
    active = _optional(query, "active")
    q = _optional(query, "q")
    after_us, before_us = _created_bounds(query)
    limit, cursor = _paging(query)
    return VoucherListParams(
        campaign_id=None
        if campaign_id is None
        else _text("campaign_id", campaign_id, MAX_ID_LENGTH),
        holder_id=None if holder_id is None else _text("holder_id", holder_id, MAX_ID_LENGTH),
        type=None if voucher_type is None else _voucher_type(voucher_type),
        active=None if active is None else _boolean("active", active),
        q=None if q is None else _query_text("q", q),
        created_after_us=after_us,
        created_before_us=before_us,
        limit=limit,
        starting_after=cursor,
    )


def parse_customer_list(query: Mapping[str, str]) -> CustomerListParams:
    """Validate the query of ``GET /v1/customers``."""
    _check_names(query, ListKind.CUSTOMERS)
    email = _optional(query, "email")
    segment_id = _optional(query, "segment_id")
    q = _optional(query, "q")
    after_us, before_us = _created_bounds(query)
    limit, cursor = _paging(query)
    return CustomerListParams(
        # str.lower, as the indexer lower-cases ``email_lower``: both sides must agree.
        email_lower=None if email is None else _text("email", email, MAX_EMAIL_LENGTH).lower(),
        segment_id=None if segment_id is None else _text("segment_id", segment_id, MAX_ID_LENGTH),
        q=None if q is None else _query_text("q", q),
        created_after_us=after_us,
        created_before_us=before_us,
        limit=limit,
        starting_after=cursor,
    )


def parse_holder_voucher_list(
    query: Mapping[str, str], customer_id: str
) -> HolderVoucherListParams:
    """Validate the query of ``GET /v1/customers/{id}/vouchers``.

    ``customer_id`` is the holder's id as stored (after resolving a ``source_id``); an id
    that is empty, longer than 200 characters or holds control characters raises
    ``InvalidParameter("id", ...)``.
    """
    _check_names(query, ListKind.CUSTOMER_VOUCHERS)
    holder = _text("id", customer_id, MAX_ID_LENGTH)
    limit, cursor = _paging(query)
    return HolderVoucherListParams(customer_id=holder, limit=limit, starting_after=cursor)


# ---------------------------------------------------------------------------------------
# Cursors bound to their list


def cursor_scope(params: ListParams, project_id: str) -> str:
    """What a cursor is bound to: the list kind, the project and every filter."""
    scope: dict[str, Any] = {"kind": params.kind.value, "project_id": project_id}
    for field in fields(params):
        if field.name not in ("limit", "starting_after"):
            scope[field.name] = getattr(params, field.name)
    # ensure_ascii keeps the text encodable whatever the values hold.
    return json.dumps(scope, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def decode_starting_after(
    params: ListParams, project_id: str, secret: bytes | str
) -> SortKey | None:
    """The sort key of ``starting_after``, None without one; ``InvalidParameter`` if invalid."""
    if params.starting_after is None:
        return None
    try:
        return decode_cursor(params.starting_after, secret, scope=cursor_scope(params, project_id))
    except InvalidCursor as error:
        raise InvalidParameter(
            "starting_after", f'query parameter "starting_after" is not a valid cursor: {error}'
        ) from error


def encode_next_cursor(
    params: ListParams, project_id: str, sort_key: SortKey | None, secret: bytes | str
) -> str | None:
    """The ``next_cursor`` of a page: None when no page follows."""
    if sort_key is None:
        return None
    return encode_cursor(sort_key, secret, scope=cursor_scope(params, project_id))


# ---------------------------------------------------------------------------------------
# Search bodies


def _created_range(after_us: int | None, before_us: int | None) -> list[dict[str, Any]]:
    bounds: dict[str, int] = {}
    if after_us is not None:
        bounds["gt"] = after_us
    if before_us is not None:
        bounds["lt"] = before_us
    return [{"range": {Field.CREATED_AT_US: bounds}}] if bounds else []


def _any_of(clauses: list[dict[str, Any]]) -> dict[str, Any]:
    return {"bool": {"should": clauses, "minimum_should_match": 1}}


def _words(q: str) -> dict[str, Any]:
    # Every analyzed word must be present; no fuzziness and no query syntax.
    return {"match": {Field.SEARCH_TEXT: {"query": q, "operator": "and"}}}


def _voucher_text(q: str) -> dict[str, Any]:
    code = q.lower()
    code_clause: dict[str, Any] = (
        {"term": {Field.CODE_LOWER: {"value": code}}}
        if len(q) < MIN_PREFIX_LENGTH or any(char.isspace() for char in code)
        else {"prefix": {Field.CODE_LOWER: {"value": code}}}
    )
    return _any_of([_words(q), code_clause])


def _customer_text(q: str) -> dict[str, Any]:
    return _any_of(
        [
            _words(q),
            {"term": {Field.EMAIL_LOWER: {"value": q.lower()}}},
            {"term": {Field.SOURCE_ID: {"value": q}}},
        ]
    )


def _term(field: str, value: object) -> dict[str, Any]:
    return {"term": {field: {"value": value}}}


def _filters(params: ListParams) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = []
    if isinstance(params, VoucherListParams):
        if params.campaign_id is not None:
            filters.append(_term(Field.CAMPAIGN_ID, params.campaign_id))
        if params.holder_id is not None:
            filters.append(_term(Field.HOLDER_ID, params.holder_id))
        if params.type is not None:
            filters.append(_term(Field.TYPE, params.type.value))
        if params.active is not None:
            filters.append(_term(Field.ACTIVE, params.active))
        filters.extend(_created_range(params.created_after_us, params.created_before_us))
        if params.q is not None:
            filters.append(_voucher_text(params.q))
    elif isinstance(params, CustomerListParams):
        if params.email_lower is not None:
            filters.append(_term(Field.EMAIL_LOWER, params.email_lower))
        if params.segment_id is not None:
            filters.append(_term(Field.SEGMENT_IDS, params.segment_id))
        filters.extend(_created_range(params.created_after_us, params.created_before_us))
        if params.q is not None:
            filters.append(_customer_text(params.q))
    else:
        filters.append(_term(Field.HOLDER_ID, params.customer_id))
    return filters


def search_sort() -> list[dict[str, Any]]:
    """The contract's order; ``id`` breaks ties so every hit has a distinct, stable place."""
    return [{Field.CREATED_AT_US: {"order": "desc"}}, {Field.ID: {"order": "desc"}}]


def build_search(
    kind: ListKind, params: ListParams, project_id: str, *, after: SortKey | None
) -> dict[str, Any]:
    """The search body (``es.search(index=..., body=...)``) of one page of a list.

    Every clause is a filter (the order is fixed by the contract, scores are never used);
    the first is always ``term project_id``. ``TypeError``/``ValueError`` only for caller
    mistakes: ``params`` of another kind, an empty ``project_id``.
    """
    if params.kind is not kind:
        raise TypeError(f"{type(params).__name__} are not parameters of the {kind} list")
    if not isinstance(project_id, str) or not project_id:
        raise ValueError("project_id must be a non-empty string")
    body: dict[str, Any] = {
        "query": {"bool": {"filter": [_term(Field.PROJECT_ID, project_id), *_filters(params)]}},
        "sort": search_sort(),
        "size": params.limit + 1,
        "track_total_hits": True,
        "_source": [Field.DOC],
    }
    if after is not None:
        body["search_after"] = after.search_after()
    return body


def page_from_response(response: Mapping[str, Any], limit: int) -> Page:
    """Read one page from a search answer (``response.body``) of ``build_search``'s body."""
    try:
        hits_section = response["hits"]
        hits: Sequence[Mapping[str, Any]] = hits_section["hits"]
        total_section = hits_section["total"]
        total = int(total_section["value"] if isinstance(total_section, Mapping) else total_section)
        docs = [dict(hit["_source"][Field.DOC]) for hit in hits[:limit]]
        has_more = len(hits) > limit
        next_key = SortKey.from_sort_values(hits[limit - 1]["sort"]) if has_more else None
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise MalformedSearchResponse(f"unexpected search response: {error!r}") from error
    return Page(docs, has_more, next_key, total)
