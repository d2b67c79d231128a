"""Unit tests of ``indexer/pgtypes.py``: Postgres text output forms to Python values."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from indexer.pgtypes import (
    BOOL,
    BYTEA,
    DATE,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    JSON,
    JSONB,
    NUMERIC,
    TEXT,
    TIMESTAMP,
    TIMESTAMPTZ,
    VARCHAR,
    from_text,
)


@pytest.mark.parametrize(
    ("type_oid", "text", "expected"),
    [
        (BOOL, "t", True),
        (BOOL, "f", False),
        (INT2, "-32768", -32768),
        (INT4, "42", 42),
        (INT8, "9223372036854775807", 2**63 - 1),
        (FLOAT8, "0.1", 0.1),
        (FLOAT8, "-Infinity", float("-inf")),
        (NUMERIC, "100.00", 100),
        (NUMERIC, "-7", -7),
        (NUMERIC, "12.50", Decimal("12.50")),
        (NUMERIC, "123456789012345678901234567890.000000001",
         Decimal("123456789012345678901234567890.000000001")),
        (NUMERIC, "Infinity", Decimal("Infinity")),
        (TEXT, "Zürich ☕", "Zürich ☕"),
        (VARCHAR, "", ""),
        (JSONB, '{"a": [1, 2.5, null, true]}', {"a": [1, 2.5, None, True]}),
        (JSON, '  "x"  ', "x"),
        (BYTEA, "\\x00ff", b"\x00\xff"),
        (TIMESTAMPTZ, "2024-01-02 03:04:05.123456+00",
         datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
        (TIMESTAMPTZ, "2024-01-02 03:04:05.1+05:30",
         datetime(2024, 1, 1, 21, 34, 5, 100000, tzinfo=UTC)),
        (TIMESTAMPTZ, "1900-01-01 00:00:00+00:53:28",
         datetime(1899, 12, 31, 23, 6, 32, tzinfo=UTC)),
        (TIMESTAMP, "2024-01-02 03:04:05", datetime(2024, 1, 2, 3, 4, 5)),
        (DATE, "2024-02-29", date(2024, 2, 29)),
        (1009, '{a,"b c"}', '{a,"b c"}'),  # text[] stays text
        (999_999, "whatever", "whatever"),  # unknown oids (enums, domains) stay text
    ],
)
def test_converts_text_forms(type_oid: int, text: str, expected: Any) -> None:
    value = from_text(type_oid, text)
    assert value == expected
    assert type(value) is type(expected)


def test_timestamptz_is_normalized_to_utc() -> None:
    value = from_text(TIMESTAMPTZ, "2024-06-01 12:00:00-03")
    assert value.tzinfo is UTC and value.utcoffset() == timedelta(0)
    assert value == datetime(2024, 6, 1, 12, tzinfo=timezone(timedelta(hours=-3)))


def test_numeric_nan_is_a_decimal() -> None:
    value = from_text(NUMERIC, "NaN")
    assert isinstance(value, Decimal) and value.is_nan()


def test_json_beyond_double_range_falls_back_to_the_standard_parser() -> None:
    assert from_text(JSONB, '{"big": 1e400}') == {"big": float("inf")}


@pytest.mark.parametrize("type_oid", [TIMESTAMPTZ, TIMESTAMP, DATE])
@pytest.mark.parametrize("text", ["infinity", "-infinity", "0044-03-15 BC", "12024-01-01"])
def test_values_python_cannot_hold_stay_text(type_oid: int, text: str) -> None:
    assert from_text(type_oid, text) == text


@pytest.mark.parametrize("type_oid", [TIMESTAMPTZ, TIMESTAMP, DATE])
def test_non_iso_datestyle_is_refused(type_oid: int) -> None:
    with pytest.raises(ValueError, match="DateStyle"):
        from_text(type_oid, "Tue Jan 02 03:04:05 2024 UTC")


@pytest.mark.parametrize("type_oid", [JSON, JSONB])
def test_json_nested_too_deep_is_a_marker_not_a_recursion_error(type_oid: int) -> None:
    from indexer.jsonvalues import MAX_JSON_DEPTH, TooDeepJson

    for levels in (MAX_JSON_DEPTH + 1, 1000, 1100, 200_000):
        value = from_text(type_oid, "[" * levels + "]" * levels)
        assert isinstance(value, TooDeepJson) and value.depth == levels
    shallow = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert isinstance(from_text(type_oid, shallow), list)


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    text = '{"a": "' + "[{" * 5000 + '\\"", "b": ["]]]]"]}'
    assert from_text(JSONB, text) == {"a": "[{" * 5000 + '"', "b": ["]]]]"]}
