"""Build the API objects of docs/api.md §3 and their search fields from recomputed source rows.

Pure functions over the rows of ``sql/documents.sql``: no I/O here. A document has two
parts: ``body``, the API object exactly as the read API serves it, and ``fields``, the flat,
bounded set of values Elasticsearch indexes for lists, filters and search.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cache.readmodel.indices import Field
from cache.types import ObjectKind
from indexer.errors import IndexerError
from indexer.jsonvalues import TooDeepJson
from indexer.segment_filter import SegmentFilter
from indexer.segment_view import filter_view, view_terms
from indexer.timestamps import OutOfRangeTimestamp

Row = Mapping[str, Any]
SegmentMatcher = Callable[[Mapping[str, Any]], bool]
# A timestamptz as the source reads it: beyond datetime's years 1 to 9999 (infinity, BC,
# year 10000 and later) it is an ``OutOfRangeTimestamp`` (``indexer.timestamps``).
Timestamp = datetime | OutOfRangeTimestamp

# Bounds on what tenant metadata may add to an indexed document: a tenant with thousands of
# keys or huge values must not grow the mapping or a document without limit.
MAX_METADATA_PAIRS = 64
MAX_METADATA_DEPTH = 3
MAX_INDEXED_STRING = 256


class UnindexableRow(IndexerError, ValueError):
    """A source row no document can carry (a JSON column nested too deep): the indexer
    quarantines the row instead of writing it (``indexer.quarantine``)."""


@dataclass(frozen=True, slots=True)
class Document:
    kind: ObjectKind
    project_id: str
    object_id: str
    body: dict[str, Any]
    fields: dict[str, Any]


def iso_timestamp(value: Timestamp | None) -> str | None:
    """ISO 8601 in UTC with microseconds and a ``Z``: the instant Postgres stored, unrounded.

    Beyond years 1 to 9999: ``infinity``, ``-infinity`` or an expanded year
    (``+10000-01-01T00:00:00.000000Z``, ``-0043-03-15T00:00:00.000000Z`` for 44 BC)."""
    if value is None:
        return None
    if isinstance(value, OutOfRangeTimestamp):
        return value.iso
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # isoformat is several times cheaper than strftime on the per-document path.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def epoch_micros(value: Timestamp) -> int:
    """Exact sort key: Elasticsearch dates keep milliseconds, Postgres keeps microseconds.

    Clamped to the signed 64-bit range (the ``long`` field) beyond it: the infinities."""
    if isinstance(value, OutOfRangeTimestamp):
        return value.micros
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def search_date(value: Timestamp | None, served: str | None) -> str | int | None:
    """The value of an Elasticsearch ``date`` field: the served text, or for a timestamp
    beyond years 1 to 9999 (which that field cannot parse) its epoch milliseconds, clamped
    like :func:`epoch_micros`."""
    if isinstance(value, OutOfRangeTimestamp):
        return value.millis
    return served


def json_column(row: Row, column: str) -> Any:
    """A JSON column's value; ``UnindexableRow`` when it is nested too deep to carry."""
    value = row[column]
    if isinstance(value, TooDeepJson):
        raise UnindexableRow(value.reason(column))
    return value


def _pair_or_none(first: Any, second: Any, first_name: str, second_name: str) -> Any:
    if first is None and second is None:
        return None
    return {first_name: first, second_name: second}


def voucher_document(row: Row) -> Document:
    body = {
        "id": row["id"],
        "code": row["code"],
        "object": "voucher",
        "campaign": row["campaign_name"],
        "campaign_id": row["campaign_id"],
        "type": row["type"],
        "discount": json_column(row, "discount"),
        "gift": _pair_or_none(row["gift_amount"], row["gift_balance"], "amount", "balance"),
        "loyalty_card": _pair_or_none(
            row["loyalty_points"], row["loyalty_balance"], "points", "balance"
        ),
        "start_date": iso_timestamp(row["start_date"]),
        "expiration_date": iso_timestamp(row["expiration_date"]),
        "active": row["active"],
        "redemption": {
            "quantity": row["redemption_quantity"],
            "redeemed_quantity": row["redeemed_quantity"],
        },
        "holder_id": row["holder_id"],
        "metadata": json_column(row, "metadata"),
        "created_at": iso_timestamp(row["created_at"]),
        "updated_at": iso_timestamp(row["updated_at"]),
    }
    metadata = body["metadata"] or {}
    fields = {
        Field.CODE: row["code"],
        Field.CODE_LOWER: row["code"].lower(),
        Field.CAMPAIGN_ID: row["campaign_id"],
        Field.HOLDER_ID: row["holder_id"],
        Field.TYPE: row["type"],
        Field.ACTIVE: row["active"],
        Field.CREATED_AT: search_date(row["created_at"], body["created_at"]),
        Field.CREATED_AT_US: epoch_micros(row["created_at"]),
        Field.SEARCH_TEXT: " ".join([row["code"], *metadata_strings(metadata)]),
    }
    return Document(ObjectKind.VOUCHER, row["project_id"], row["id"], body, fields)


def customer_body(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "source_id": row["source_id"],
        "object": "customer",
        "name": row["name"],
        "email": row["email"],
        "phone": row["phone"],
        "address": json_column(row, "address"),
        "metadata": json_column(row, "metadata"),
        "summary": {
            "redemptions": {
                "total_redeemed": int(row["total_redeemed"] or 0),
                "total_succeeded": int(row["total_succeeded"] or 0),
                "total_failed": int(row["total_failed"] or 0),
                "gift": {"redeemed_amount": int(row["redeemed_amount"] or 0)},
                "loyalty_card": {"redeemed_points": int(row["redeemed_points"] or 0)},
            }
        },
        "loyalty": {"points": int(row["loyalty_points"] or 0)},
        "created_at": iso_timestamp(row["created_at"]),
        "updated_at": iso_timestamp(row["updated_at"]),
    }


def customer_document(
    row: Row, auto_segments: Iterable[tuple[str, SegmentMatcher]], now_us: int | None = None
) -> Document:
    """``auto_segments`` holds the compiled filters of the project's auto-update segments,
    evaluated at ``now_us`` (epoch microseconds; the current time when None)."""
    body = customer_body(row)
    # Computed once: every filter of the project reads it, and so does the index.
    view = filter_view(body)
    at = time.time_ns() // 1000 if now_us is None else now_us
    segment_ids = set(row["static_segment_ids"] or ())
    for segment_id, matcher in auto_segments:
        if matcher.matches(view, at) if isinstance(matcher, SegmentFilter) else matcher(body):
            segment_ids.add(segment_id)
    fields = {
        Field.SOURCE_ID: row["source_id"],
        Field.EMAIL_LOWER: row["email"].lower() if row["email"] else None,
        Field.CREATED_AT: search_date(row["created_at"], body["created_at"]),
        Field.CREATED_AT_US: epoch_micros(row["created_at"]),
        Field.SEGMENT_IDS: sorted(segment_ids),
        Field.SEARCH_TEXT: " ".join(
            part for part in (row["name"], row["email"], row["source_id"]) if part
        ),
        Field.FILTER_VIEW: view_terms(view),
    }
    return Document(ObjectKind.CUSTOMER, row["project_id"], row["id"], body, fields)


def campaign_document(row: Row) -> Document:
    body = {
        "id": row["id"],
        "name": row["name"],
        "type": row["type"],
        "active": row["active"],
        "start_date": iso_timestamp(row["start_date"]),
        "expiration_date": iso_timestamp(row["expiration_date"]),
        "metadata": json_column(row, "metadata"),
        "vouchers_count": int(row["vouchers_count"]),
        "created_at": iso_timestamp(row["created_at"]),
        "updated_at": iso_timestamp(row["updated_at"]),
        "object": "campaign",
    }
    fields = {
        Field.TYPE: row["type"],
        Field.CREATED_AT: search_date(row["created_at"], body["created_at"]),
    }
    return Document(ObjectKind.CAMPAIGN, row["project_id"], row["id"], body, fields)


def segment_document(row: Row) -> Document:
    """``count`` is not part of the stored body: membership lives on customer documents and
    the read API counts it, so a customer change never has to rewrite its segments."""
    body = {
        "id": row["id"],
        "name": row["name"],
        "type": row["type"],
        "filter": json_column(row, "filter"),
        "created_at": iso_timestamp(row["created_at"]),
        "object": "segment",
    }
    fields = {
        Field.TYPE: row["type"],
        Field.NAME: row["name"],
        Field.CREATED_AT: search_date(row["created_at"], body["created_at"]),
    }
    return Document(ObjectKind.SEGMENT, row["project_id"], row["id"], body, fields)


def metadata_strings(metadata: Any, depth: int = 0) -> list[str]:
    """Leaf values of the metadata as text, for the bounded full-text field."""
    out: list[str] = []
    if depth > MAX_METADATA_DEPTH:
        return out
    if isinstance(metadata, Mapping):
        for value in metadata.values():
            out.extend(metadata_strings(value, depth + 1))
    elif isinstance(metadata, list):
        for value in metadata[:MAX_METADATA_PAIRS]:
            out.extend(metadata_strings(value, depth + 1))
    elif isinstance(metadata, bool):
        out.append("true" if metadata else "false")
    elif isinstance(metadata, str | int | float):
        out.append(str(metadata)[:MAX_INDEXED_STRING])
    return out[:MAX_METADATA_PAIRS]
