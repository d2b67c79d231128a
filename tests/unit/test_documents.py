"""API objects of docs/api.md §3 built from recomputed rows, without any service."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from indexer.documents import (
    customer_document,
    epoch_micros,
    iso_timestamp,
    voucher_document,
)

T0 = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)


def voucher_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "v1",
        "project_id": "p",
        "code": "SUMMER",
        "campaign_id": "k",
        "campaign_name": "Summer",
        "type": "GIFT_VOUCHER",
        "discount": None,
        "gift_amount": 1000,
        "gift_balance": None,
        "loyalty_points": None,
        "loyalty_balance": None,
        "active": True,
        "start_date": None,
        "expiration_date": None,
        "redemption_quantity": None,
        "redeemed_quantity": 2,
        "holder_id": None,
        "metadata": {"color": "red", "n": 3},
        "created_at": T0,
        "updated_at": T0,
    }
    row.update(overrides)
    return row


def test_voucher_object_shape() -> None:
    body = voucher_document(voucher_row()).body
    assert list(body) == [
        "id",
        "code",
        "object",
        "campaign",
        "campaign_id",
        "type",
        "discount",
        "gift",
        "loyalty_card",
        "start_date",
        "expiration_date",
        "active",
        "redemption",
        "holder_id",
        "metadata",
        "created_at",
        "updated_at",
    ]
    assert body["object"] == "voucher"
    assert body["gift"] == {"amount": 1000, "balance": None}
    assert body["loyalty_card"] is None
    assert body["redemption"] == {"quantity": None, "redeemed_quantity": 2}
    assert body["created_at"] == "2024-05-01T10:00:00.123456Z"


def test_search_text_holds_code_and_metadata_values() -> None:
    fields = voucher_document(voucher_row()).fields
    assert fields["search_text"] == "SUMMER red 3"
    assert fields["code_lower"] == "summer"


def test_timestamps_keep_the_instant_in_utc() -> None:
    local = datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert iso_timestamp(local) == "2024-05-01T10:00:00.000005Z"
    assert iso_timestamp(None) is None
    assert epoch_micros(T0) == int(T0.timestamp()) * 1_000_000 + 123456


def test_customer_summary_and_segments() -> None:
    row = {
        "id": "c1",
        "project_id": "p",
        "source_id": "crm",
        "name": "Ann",
        "email": "Ann@Example.com",
        "phone": None,
        "address": None,
        "metadata": {"tier": "gold"},
        "created_at": T0,
        "updated_at": T0,
        "total_redeemed": 3,
        "total_succeeded": 2,
        "total_failed": 1,
        "redeemed_amount": 150,
        "redeemed_points": 0,
        "loyalty_points": 40,
        "static_segment_ids": ["s_static"],
    }
    document = customer_document(
        row, [("s_gold", lambda c: c["metadata"]["tier"] == "gold"), ("s_none", lambda c: False)]
    )
    assert document.body["summary"]["redemptions"]["total_succeeded"] == 2
    assert document.body["loyalty"] == {"points": 40}
    assert document.fields["segment_ids"] == ["s_gold", "s_static"]
    assert document.fields["email_lower"] == "ann@example.com"


def customer_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "c1",
        "project_id": "p",
        "source_id": "crm",
        "name": "Ann",
        "email": "Ann@Example.com",
        "phone": None,
        "address": {"country": "PL"},
        "metadata": {"tier": "gold", "seen": "2024-05-01T10:00:00Z"},
        "created_at": T0,
        "updated_at": T0,
        "total_redeemed": 3,
        "total_succeeded": 2,
        "total_failed": 1,
        "redeemed_amount": 150,
        "redeemed_points": 0,
        "loyalty_points": 40,
        "static_segment_ids": [],
    }
    row.update(overrides)
    return row


def test_customer_documents_carry_their_filter_view() -> None:
    from cache.readmodel.indices import Field
    from indexer.segment_view import filter_view, view_terms

    document = customer_document(customer_row(), [])
    assert document.fields[Field.FILTER_VIEW] == view_terms(filter_view(document.body))
    indexed = document.fields[Field.FILTER_VIEW]
    paths = {value.split("\x00")[0] for values in indexed.values() for value in values}
    assert {"metadata.tier", "address.country", "loyalty.points", "created_at"} <= set(paths)
    assert "phone" not in paths  # null: unknown


def test_auto_segments_are_evaluated_at_the_given_instant() -> None:
    from indexer.segment_filter import compile_filter

    recent = compile_filter({"metadata.seen": {"conditions": {"$after": ["-P7D"]}}})
    may_3 = epoch_micros(datetime(2024, 5, 3, tzinfo=UTC))
    june = epoch_micros(datetime(2024, 6, 1, tzinfo=UTC))
    row = customer_row()
    assert customer_document(row, [("s_recent", recent)], may_3).fields["segment_ids"] == [
        "s_recent"
    ]
    assert customer_document(row, [("s_recent", recent)], june).fields["segment_ids"] == []
    # Without an instant: now, long after May 2024.
    assert customer_document(row, [("s_recent", recent)]).fields["segment_ids"] == []
    # A filter and a plain predicate on the body mix.
    gold = compile_filter({"metadata.tier": {"conditions": {"$is": ["gold"]}}})
    segments = [("s_gold", gold), ("s_plain", lambda body: body["name"] == "Ann")]
    assert customer_document(row, segments, june).fields["segment_ids"] == ["s_gold", "s_plain"]


def test_jsonb_numbers_every_sink_can_encode() -> None:
    import msgpack
    import orjson

    from indexer.source import load_jsonb

    value = load_jsonb('{"big": 123456789012345678901234567890, "huge": 1e400, "n": -5, "f": 1.5}')
    assert value == {"big": 1.2345678901234568e29, "huge": "1e400", "n": -5, "f": 1.5}
    assert orjson.loads(orjson.dumps(value)) == value
    assert msgpack.unpackb(msgpack.packb(value)) == value


def test_timestamps_beyond_datetime_are_served_in_their_documented_form() -> None:
    from cache.readmodel.indices import Field
    from indexer.timestamps import MAX_MICROS, MIN_MICROS, parse_timestamptz

    row = voucher_row(
        expiration_date=parse_timestamptz("infinity"),
        start_date=parse_timestamptz("-infinity"),
        created_at=parse_timestamptz("10000-01-01 00:00:00+00"),
        updated_at=parse_timestamptz("0044-03-15 00:00:00+00 BC"),
    )
    document = voucher_document(row)
    assert document.body["expiration_date"] == "infinity"
    assert document.body["start_date"] == "-infinity"
    assert document.body["created_at"] == "+10000-01-01T00:00:00.000000Z"
    assert document.body["updated_at"] == "-0043-03-15T00:00:00.000000Z"
    assert document.fields[Field.CREATED_AT_US] == 253_402_300_800_000_000
    # The date field takes epoch milliseconds: it cannot parse an expanded year.
    assert document.fields[Field.CREATED_AT] == 253_402_300_800_000
    infinite = voucher_document(voucher_row(created_at=parse_timestamptz("-infinity")))
    assert infinite.fields[Field.CREATED_AT_US] == MIN_MICROS
    assert (
        voucher_document(voucher_row(created_at=parse_timestamptz("infinity"))).fields[
            Field.CREATED_AT_US
        ]
        == MAX_MICROS
    )


def test_json_nested_too_deep_makes_the_row_unindexable() -> None:
    import pytest

    from indexer.documents import UnindexableRow, segment_document
    from indexer.jsonvalues import MAX_JSON_DEPTH
    from indexer.source import load_jsonb

    deep = load_jsonb('{"a":' * 300 + "1" + "}" * 300)
    for column in ("metadata", "discount"):
        with pytest.raises(UnindexableRow, match=rf"^{column}: JSON nested more than"):
            voucher_document(voucher_row(**{column: deep}))
    segment = {
        "id": "s",
        "project_id": "p",
        "name": "S",
        "type": "auto-update",
        "filter": deep,
        "created_at": T0,
        "updated_at": T0,
    }
    with pytest.raises(UnindexableRow, match=f"filter: .*{MAX_JSON_DEPTH}"):
        segment_document(segment)
    within = load_jsonb("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
    assert voucher_document(voucher_row(metadata=within)).body["metadata"] == within

