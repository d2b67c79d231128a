"""Signed ISO 8601 durations: the relative dates of ``$before``/``$after`` (docs/api.md §4).

``"-P30D"`` is 30 days before now, ``"P7D"`` a week after, ``"PT12H"``, ``"-P2W"``,
``"P1DT2H30M"``, ``"PT0.5S"``. Only units of a fixed length are accepted: weeks, days, hours,
minutes and seconds, with a fraction (``.`` or ``,``, at most six digits) on seconds only.
Years and months are refused: their length depends on the calendar and the month one
starts from, so a bound would move by days with no change in the data. A day is 86,400
seconds (no time zone, no leap seconds). Weeks may be combined with other units (as
ISO 8601-2 allows). A leading ``-`` counts back, ``+`` or nothing forward. At most
:data:`MAX_DURATION_TEXT` characters and :data:`MAX_DURATION_DAYS` days either way.
"""

from __future__ import annotations

import re
from typing import Final

MAX_DURATION_TEXT: Final = 64
MAX_DURATION_DAYS: Final = 3_660_000
"""About 10,000 years: any bound stays far inside the 64-bit range Elasticsearch compares."""

_SECOND_US: Final = 1_000_000
_UNIT_US: Final = {
    "weeks": 7 * 86_400 * _SECOND_US,
    "days": 86_400 * _SECOND_US,
    "hours": 3_600 * _SECOND_US,
    "minutes": 60 * _SECOND_US,
    "seconds": _SECOND_US,
}
_MAX_US: Final = MAX_DURATION_DAYS * _UNIT_US["days"]

# A hand-written pattern rather than a library: the accepted subset is small, calendar units
# must be refused with their own message, and the result must be exact microseconds (no
# float seconds, no calendar arithmetic). [0-9], not \d: \d also matches non-ASCII digits.
_SHAPE: Final = re.compile(r"[+-]?P")
_CALENDAR: Final = re.compile(r"[+-]?P[^T]*[YM]")
_DURATION: Final = re.compile(
    r"(?P<sign>[+-]?)P"
    r"(?:(?P<weeks>[0-9]+)W)?(?:(?P<days>[0-9]+)D)?"
    r"(?:T(?:(?P<hours>[0-9]+)H)?(?:(?P<minutes>[0-9]+)M)?"
    r"(?:(?P<seconds>[0-9]+)(?:[.,](?P<fraction>[0-9]+))?S)?)?"
)


class InvalidDuration(ValueError):
    """Text that looks like a duration (``P`` after an optional sign) but is not one we take."""


def looks_like_duration(text: str) -> bool:
    """Whether ``text`` is meant as a duration: an ISO 8601 date never starts with ``P``."""
    return _SHAPE.match(text) is not None


def parse_duration(text: str) -> int:
    """The signed duration in microseconds; :class:`InvalidDuration` says what is wrong."""
    if len(text) > MAX_DURATION_TEXT:
        raise InvalidDuration(f"a duration has at most {MAX_DURATION_TEXT} characters")
    if _CALENDAR.match(text):
        raise InvalidDuration(
            "years and months are not accepted in a relative date (their length depends on "
            "the calendar): use weeks, days, hours, minutes or seconds"
        )
    found = _DURATION.fullmatch(text)
    if found is None or not any(found.group(unit) for unit in (*_UNIT_US, "fraction")):
        raise InvalidDuration(
            "expected a signed ISO 8601 duration in weeks, days, hours, minutes and seconds "
            "such as -P30D or PT12H"
        )
    if text.endswith("T"):
        raise InvalidDuration("a T must be followed by hours, minutes or seconds")
    fraction = found.group("fraction") or ""
    if len(fraction) > 6:
        raise InvalidDuration("at most six digits after the seconds' decimal sign (microseconds)")
    micros = sum(int(found.group(unit) or 0) * size for unit, size in _UNIT_US.items())
    micros += int(fraction.ljust(6, "0")) if fraction else 0
    if micros > _MAX_US:
        raise InvalidDuration(f"a duration of at most {MAX_DURATION_DAYS} days")
    return -micros if found.group("sign") == "-" else micros
