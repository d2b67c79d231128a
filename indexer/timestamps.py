"""Timestamps Python's ``datetime`` cannot hold, read from the source as values of their own.

A ``timestamptz`` column may hold ``infinity``, ``-infinity``, years after 9999 (up to
294276) and dates BC (down to 4714 BC); ``datetime`` holds years 1 to 9999 only, and
psycopg's own loader raises ``DataError`` beyond. :class:`TimestamptzLoader`, installed on
every connection of the indexer (``indexer.source.connect``), returns a ``datetime`` as
before when it can and an :class:`OutOfRangeTimestamp` otherwise, so a rebuild query never
fails on a value. Its served form (docs/api.md §3) is ISO 8601 with expanded years:

- ``infinity`` and ``-infinity`` as those strings;
- years after 9999 with a ``+`` sign: ``+10000-01-01T00:00:00.000000Z``;
- dates BC in astronomical year numbering (1 BC is year 0, 2 BC is -1), with a ``-`` sign
  below zero: 44 BC is ``-0043-03-15T00:00:00.000000Z``, 1 BC is ``0000-...``.

The calendar is the proleptic Gregorian one Postgres uses for every date. The sort key of
such a value (microseconds since the epoch) is exact where it fits a signed 64-bit integer
and clamped to that range otherwise (the infinities, the last years before 294277).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import pq
from psycopg.adapt import Loader

MIN_MICROS: Final = -(2**63)
MAX_MICROS: Final = 2**63 - 1
_MICROS_PER_DAY: Final = 86_400_000_000

INFINITY: Final = "infinity"
MINUS_INFINITY: Final = "-infinity"

# ISO DateStyle output of timestamptz: years of 4 or more digits, an offset of the session's
# time zone (hours, and minutes and seconds when not whole), " BC" before year 1.
_PG_TEXT = re.compile(
    r"(?P<year>\d{4,})-(?P<month>\d\d)-(?P<day>\d\d) "
    r"(?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)(?:\.(?P<fraction>\d{1,6}))?"
    r"(?P<sign>[+-])(?P<oh>\d\d)(?::(?P<om>\d\d))?(?::(?P<os>\d\d))?(?P<bc> BC)?"
)


@dataclass(frozen=True, slots=True)
class OutOfRangeTimestamp:
    """A ``timestamptz`` beyond ``datetime``: its served text and its clamped sort key."""

    iso: str  # the served form (module docstring)
    micros: int  # microseconds since 1970-01-01 UTC, clamped to the signed 64-bit range

    @property
    def millis(self) -> int:
        """Milliseconds since the epoch: what an Elasticsearch ``date`` field takes."""
        return self.micros // 1000


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a proleptic Gregorian date (astronomical year numbering)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """The proleptic Gregorian date ``days`` after 1970-01-01 (astronomical year)."""
    days += 719_468
    era = days // 146_097
    day_of_era = days - era * 146_097
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096
    ) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + (3 if shifted_month < 10 else -9)
    return year_of_era + era * 400 + (month <= 2), month, day


def expanded_year(year: int) -> str:
    """ISO 8601 year: four digits from 0 to 9999, else a sign and at least four digits."""
    if year < 0:
        return f"-{-year:04d}"
    return f"{year:04d}" if year <= 9999 else f"+{year}"


def iso_from_micros(micros: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` for any instant, with expanded years."""
    days, within = divmod(micros, _MICROS_PER_DAY)
    year, month, day = civil_from_days(days)
    seconds, fraction = divmod(within, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return (
        f"{expanded_year(year)}-{month:02d}-{day:02d}"
        f"T{hour:02d}:{minute:02d}:{second:02d}.{fraction:06d}Z"
    )


def _clamp(micros: int) -> int:
    return min(MAX_MICROS, max(MIN_MICROS, micros))


def parse_timestamptz(text: str) -> OutOfRangeTimestamp:
    """Postgres's text of any ``timestamptz`` (ISO DateStyle); ``ValueError`` otherwise."""
    if text == INFINITY:
        return OutOfRangeTimestamp(INFINITY, MAX_MICROS)
    if text == MINUS_INFINITY:
        return OutOfRangeTimestamp(MINUS_INFINITY, MIN_MICROS)
    match = _PG_TEXT.fullmatch(text)
    if match is None:
        raise ValueError(f"not a timestamptz in ISO DateStyle: {text!r}")
    part = match.group
    year = int(part("year"))
    if part("bc"):
        year = 1 - year
    days = days_from_civil(year, int(part("month")), int(part("day")))
    seconds = int(part("hour")) * 3600 + int(part("minute")) * 60 + int(part("second"))
    offset = int(part("oh")) * 3600 + int(part("om") or 0) * 60 + int(part("os") or 0)
    if part("sign") == "-":
        offset = -offset
    fraction = int((part("fraction") or "0").ljust(6, "0"))
    micros = days * _MICROS_PER_DAY + (seconds - offset) * 1_000_000 + fraction
    return OutOfRangeTimestamp(iso_from_micros(micros), _clamp(micros))


_TIMESTAMPTZ_OID: Final = 1184
_BUILT_IN = psycopg.adapters.get_loader(_TIMESTAMPTZ_OID, pq.Format.TEXT)


class TimestamptzLoader(Loader):
    """psycopg's own ``timestamptz`` loader, falling back to :class:`OutOfRangeTimestamp`
    for the values it refuses as out of range."""

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        if _BUILT_IN is None:  # pragma: no cover - psycopg always has one
            raise RuntimeError("psycopg has no timestamptz loader")
        self._load = _BUILT_IN(oid, context).load

    def load(self, data: Any) -> Any:
        try:
            return self._load(data)
        except psycopg.DataError:
            text = bytes(data).decode()
            try:
                return parse_timestamptz(text)
            except ValueError:
                raise psycopg.DataError(f"cannot read timestamptz {text!r}") from None


def install(conn: psycopg.AsyncConnection[Any] | psycopg.Connection[Any]) -> None:
    """Read this connection's ``timestamptz`` values with :class:`TimestamptzLoader`."""
    conn.adapters.register_loader("timestamptz", TimestamptzLoader)
