"""Unit tests of ``indexer/durations.py``: the signed ISO 8601 durations of relative dates."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.durations import (
    MAX_DURATION_DAYS,
    InvalidDuration,
    looks_like_duration,
    parse_duration,
)

SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("-P30D", -30 * DAY),
        ("P7D", 7 * DAY),
        ("+P7D", 7 * DAY),
        ("PT12H", 12 * HOUR),
        ("-P2W", -14 * DAY),
        ("P1DT2H30M", DAY + 2 * HOUR + 30 * MINUTE),
        ("PT0.5S", SECOND // 2),
        ("PT0,5S", SECOND // 2),
        ("-PT1.000001S", -SECOND - 1),
        ("PT90M", 90 * MINUTE),
        ("PT1M", MINUTE),  # minutes after the T, not months
        ("P1W2DT3H4M5.6S", 9 * DAY + 3 * HOUR + 4 * MINUTE + 5 * SECOND + 600_000),
        ("P0D", 0),
        ("-PT0S", 0),
        (f"P{MAX_DURATION_DAYS}D", MAX_DURATION_DAYS * DAY),
    ],
)
def test_durations(text: str, micros: int) -> None:
    assert looks_like_duration(text)
    assert parse_duration(text) == micros


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("P1Y", "years and months are not accepted"),
        ("-P1M", "years and months are not accepted"),
        ("P1Y2M3D", "their length depends on the calendar"),
        ("P1MT1H", "years and months"),
        ("P", "expected a signed ISO 8601 duration"),
        ("-PT", "expected a signed ISO 8601 duration"),
        ("P1DT", "a T must be followed by hours, minutes or seconds"),
        ("P1.5D", "expected a signed ISO 8601 duration"),
        ("PT1.5H", "expected a signed ISO 8601 duration"),
        ("P1H", "expected a signed ISO 8601 duration"),
        ("PT1D", "expected a signed ISO 8601 duration"),
        ("P1D2W", "expected a signed ISO 8601 duration"),  # units in order
        ("P 1D", "expected a signed ISO 8601 duration"),
        ("P\u0661D", "expected a signed ISO 8601 duration"),  # ASCII digits only
        ("P1d", "expected a signed ISO 8601 duration"),
        ("--P1D", "expected a signed ISO 8601 duration"),
        ("PT0.1234567S", "at most six digits after the seconds' decimal sign"),
        (f"P{MAX_DURATION_DAYS + 1}D", f"at most {MAX_DURATION_DAYS} days"),
        ("P" + "9" * 62 + "W", "at most"),
        ("PT" + "1" * 70 + "S", "at most 64 characters"),
    ],
)
def test_refused_durations(text: str, message: str) -> None:
    with pytest.raises(InvalidDuration, match=message):
        parse_duration(text)


@pytest.mark.parametrize("text", ["2024-05-01", "20240501", "", "p1D", "yesterday", "T10:00"])
def test_dates_do_not_look_like_durations(text: str) -> None:
    assert not looks_like_duration(text)


@settings(database=None, max_examples=300, deadline=None)
@given(
    sign=st.sampled_from(["", "+", "-"]),
    weeks=st.integers(0, 500),
    days=st.integers(0, 500),
    hours=st.integers(0, 100),
    minutes=st.integers(0, 100),
    seconds=st.integers(0, 100),
    fraction=st.text("0123456789", min_size=1, max_size=6) | st.none(),
)
def test_every_unit_counts_exactly(
    sign: str, weeks: int, days: int, hours: int, minutes: int, seconds: int, fraction: str | None
) -> None:
    tail = f"{seconds}.{fraction}S" if fraction is not None else f"{seconds}S"
    text = f"{sign}P{weeks}W{days}DT{hours}H{minutes}M{tail}"
    micros = (
        (7 * weeks + days) * DAY + hours * HOUR + minutes * MINUTE + seconds * SECOND
        + (int(fraction.ljust(6, "0")) if fraction else 0)
    )  # fmt: skip
    assert parse_duration(text) == (-micros if sign == "-" else micros)
