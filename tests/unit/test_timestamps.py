"""Unit tests of ``indexer/timestamps.py``: timestamptz values beyond ``datetime``, their
served form (docs/api.md §3) and their clamped sort key, against Postgres's own text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.documents import epoch_micros, iso_timestamp, search_date
from indexer.timestamps import (
    MAX_MICROS,
    MIN_MICROS,
    OutOfRangeTimestamp,
    civil_from_days,
    days_from_civil,
    parse_timestamptz,
)

PROPERTY = settings(database=None, max_examples=500, deadline=None)


@pytest.mark.parametrize(
    ("text", "iso", "micros"),
    [
        ("infinity", "infinity", MAX_MICROS),
        ("-infinity", "-infinity", MIN_MICROS),
        ("10000-01-01 00:00:00+00", "+10000-01-01T00:00:00.000000Z", 253_402_300_800_000_000),
        # Postgres's largest timestamp: beyond the long range, so clamped.
        ("294276-12-31 23:59:59.999999+00", "+294276-12-31T23:59:59.999999Z", MAX_MICROS),
        # Astronomical years: 1 BC is year 0, 44 BC is -43 (epochs from Postgres's extract).
        ("0044-03-15 12:30:00.25+00 BC", "-0043-03-15T12:30:00.250000Z", -63_517_778_999_750_000),
        ("0001-12-31 23:00:00+00 BC", "0000-12-31T23:00:00.000000Z", -62_135_600_400_000_000),
        ("4714-11-24 00:00:00+00 BC", "-4713-11-24T00:00:00.000000Z", -210_866_803_200_000_000),
        # An offset moves the instant across the year boundary.
        ("10000-01-01 00:30:00+01", "9999-12-31T23:30:00.000000Z", 253_402_299_000_000_000),
        ("0001-01-01 00:30:00+01 BC", "-0001-12-31T23:30:00.000000Z", -62_167_221_000_000_000),
        ("12345-06-07 08:09:10.5-05:30", "+12345-06-07T13:39:10.500000Z", 327_416_996_350_500_000),
    ],
)
def test_out_of_range_forms(text: str, iso: str, micros: int) -> None:
    value = parse_timestamptz(text)
    assert value == OutOfRangeTimestamp(iso, micros)
    assert iso_timestamp(value) == iso
    assert epoch_micros(value) == micros
    assert search_date(value, iso) == micros // 1000


@pytest.mark.parametrize("text", ["", "tomorrow", "2024-01-01", "2024-01-01 10:00:00", "Infinity"])
def test_other_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="ISO DateStyle"):
        parse_timestamptz(text)


@PROPERTY
@given(st.datetimes(timezones=st.just(UTC)), st.integers(-15 * 60, 15 * 60))
def test_agrees_with_datetime_where_both_can_hold_the_value(
    instant: datetime, offset_minutes: int
) -> None:
    offset = timedelta(minutes=offset_minutes)
    try:
        local = instant + offset
    except OverflowError:
        return
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    text = (
        f"{local.year:04d}-{local:%m-%d %H:%M:%S}.{local.microsecond:06d}"
        f"{sign}{hours:02d}:{minutes:02d}"
    )
    value = parse_timestamptz(text)
    assert value.iso == iso_timestamp(instant)
    assert value.micros == epoch_micros(instant)


@PROPERTY
@given(st.integers(-(10**8), 10**8))
def test_calendar_functions_are_inverse(days: int) -> None:
    assert days_from_civil(*civil_from_days(days)) == days


def test_in_range_values_keep_their_datetime_forms() -> None:
    instant = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert iso_timestamp(instant) == "2024-05-01T10:00:00.123456Z"
    assert search_date(instant, "2024-05-01T10:00:00.123456Z") == "2024-05-01T10:00:00.123456Z"
