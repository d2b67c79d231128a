"""Text cells of pgoutput to Python values, chosen by the column's type oid.

pgoutput sends each value in the type's text output form, so the result depends on the
decoding session's settings: ``DateStyle`` must be ``ISO`` (the server default, and what
psycopg itself requires). Choices, all made so that no precision is lost:

- ``bool`` -> bool; ``int2/int4/int8/oid`` -> int; ``float4/float8`` -> float.
- ``numeric`` -> int when integral (``10.00`` -> 10), else ``Decimal`` (exact; ``orjson``
  needs a ``default`` hook to serialize it). ``NaN``/``Infinity`` -> ``Decimal``.
- ``json/jsonb`` -> parsed with orjson; integers beyond 64 bits come back as float (orjson's
  rule); a document orjson refuses (a number beyond double range, valid in jsonb) falls back
  to the standard library's parser. A value nested more than ``MAX_JSON_DEPTH`` levels is
  not parsed at all: it becomes a ``TooDeepJson`` marker (equal for equal texts), so no
  depth of jsonb makes decoding fail (``indexer.jsonvalues``).
- ``timestamptz`` -> aware ``datetime`` in UTC (microsecond precision kept);
  ``timestamp`` -> naive ``datetime``; ``date`` -> ``date``. Values Python cannot hold
  (``infinity``, ``-infinity``, BC dates, years past 9999) stay as Postgres text.
- ``bytea`` (hex output) -> bytes.
- Everything else (text, varchar, uuid, enums, domains, arrays, ...) stays text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson

from indexer.jsonvalues import too_deep

Converter = Callable[[str], Any]

BOOL, BYTEA, INT8, INT2, INT4, TEXT, OID, JSON = 16, 17, 20, 21, 23, 25, 26, 114
FLOAT4, FLOAT8, BPCHAR, VARCHAR, DATE, TIMESTAMP = 700, 701, 1042, 1043, 1082, 1114
TIMESTAMPTZ, NUMERIC, JSONB = 1184, 1700, 3802


def _text(text: str) -> str:
    return text


def _bool(text: str) -> bool:
    return text == "t"


def _numeric(text: str) -> int | Decimal:
    if "." not in text:
        try:
            return int(text)
        except ValueError:  # NaN, Infinity, -Infinity
            return Decimal(text)
    value = Decimal(text)
    return int(value) if value == value.to_integral_value() else value


def _json(text: str) -> Any:
    # Nested beyond what the sinks can encode: not parsed (both parsers recurse; Python's
    # raises RecursionError near 1000 levels), kept as a marker a change can be compared by.
    deep = too_deep(text)
    if deep is not None:
        return deep
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _out_of_python_range(text: str) -> bool:
    # infinity / -infinity, "... BC", or a year of five digits or more.
    return text in ("infinity", "-infinity") or text.endswith(" BC") or text[:5].isdigit()


def _unparsable(text: str, kind: str) -> str:
    if _out_of_python_range(text):
        return text
    raise ValueError(f"unexpected {kind} text {text!r} (is DateStyle ISO?)")


def _timestamptz(text: str) -> datetime | str:
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return _unparsable(text, "timestamptz")


def _timestamp(text: str) -> datetime | str:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return _unparsable(text, "timestamp")


def _date(text: str) -> date | str:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return _unparsable(text, "date")


def _bytea(text: str) -> bytes | str:
    # bytea_output=hex is the default; the old escape format stays text.
    return bytes.fromhex(text[2:]) if text.startswith("\\x") else text


_CONVERTERS: dict[int, Converter] = {
    BOOL: _bool,
    BYTEA: _bytea,
    INT2: int,
    INT4: int,
    INT8: int,
    OID: int,
    FLOAT4: float,
    FLOAT8: float,
    NUMERIC: _numeric,
    JSON: _json,
    JSONB: _json,
    TIMESTAMPTZ: _timestamptz,
    TIMESTAMP: _timestamp,
    DATE: _date,
}


def converter_for(type_oid: int) -> Converter:
    """The function turning this type's text form into a Python value (text if unknown)."""
    return _CONVERTERS.get(type_oid, _text)


def from_text(type_oid: int, text: str) -> Any:
    return converter_for(type_oid)(text)
