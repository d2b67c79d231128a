"""Segment filters: compile an ``auto-update`` segment's filter (docs/api.md §4) into a predicate.

Pure logic, no I/O. The indexer compiles each segment's filter once and calls the predicate for
every changed customer, so all validation and value parsing happen in :func:`compile_filter`;
a compiled predicate only walks precomputed paths and never raises.

Semantics decided here (tests in ``tests/unit/test_segment_filter.py`` pin each one):

* ``junction`` defaults to ``"and"``. A filter with no field conditions and no nested filters
  matches every customer of the project, whatever its junction (like an empty WHERE).
* A field path is a dotted path through objects (``metadata.nested.key``). A missing key, a
  non-object on the way and JSON null are all "unknown"; lists are not indexed into.
* A list of values means "any of them"; for ``$is_not``/``$not_in``, "none of them". A bare
  scalar is read as a one-value list.
* ``$is``/``$in`` compare JSON values exactly: strings case-sensitively (emails included),
  numbers numerically (``5 == 5.0``), a boolean never equals a number, a string never equals a
  number. ``$is_not``/``$not_in`` are their negations, so an unknown field satisfies them.
* ``$more_than``/``$more_than_equal``/``$less_than``/``$less_than_equal`` compare numbers; a
  numeric string (ASCII decimal notation, at most 64 characters: ``"5"``, ``"-2.5"``, ``"1e3"``)
  on either side counts as its number; any other value (booleans included) never matches.
* ``$before``/``$after`` compare instants parsed from ISO 8601; date-only and naive values are
  UTC (``2024-01-01`` is midnight UTC). A customer value that does not parse never matches.
* ``$contains``/``$starts_with``/``$ends_with`` apply to strings only, case-sensitively.
* ``$is_unknown`` holds when the field is unknown, ``$has_value`` otherwise (an empty string is
  a value). They take no values: ``[]``, ``[true]``, ``true`` or ``null``.
* An unknown field fails every operator but ``$is_not``, ``$not_in`` and ``$is_unknown``. An
  object or list value is never looked into: only ``$is_not``, ``$not_in``, ``$has_value`` hold.
* Null is not a comparison value (use ``$is_unknown``). ``$in: []`` matches no one and
  ``$not_in: []`` everyone; every other operator that compares needs at least one value.
* Size: at most :data:`MAX_FILTER_VALUES` values over all operators (a bare scalar is one)
  and :data:`MAX_FILTER_BYTES` bytes as compact JSON; a larger filter is malformed (a
  ``$in`` of 100,000 ids would cost every customer rebuild of its project).
* :func:`compile_filter` raises only :class:`InvalidSegmentFilter`, never anything else, for
  any input: a null or non-object filter included (the caller decides what null means).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from indexer.errors import IndexerError

MAX_DEPTH: Final = 8
"""Filter objects from the root down (the root counts as 1)."""
MAX_CONDITIONS: Final = 200
"""Operators plus nested filters over the whole tree: bounds the cost of every evaluation."""
MAX_FILTER_VALUES: Final = 1000
"""Values over all operators of the whole tree (a bare scalar counts as one)."""
MAX_FILTER_BYTES: Final = 64 * 1024
"""The filter's size as compact JSON (UTF-8): bounds compiling, caching and logging it."""

# Longer strings are neither numbers nor timestamps; the cap also keeps int() far from
# Python's digit limit, which would raise.
_MAX_SCALAR_TEXT: Final = 64
_NUMBER: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
# Booleans get their own keys in equality sets: Python's True == 1 would otherwise leak in.
_TRUE: Final = ("bool", True)
_FALSE: Final = ("bool", False)

_Test = Callable[[Mapping[str, Any]], bool]
_Check = Callable[[object], bool]
_Builder = Callable[[list[object], str], _Check]


class InvalidSegmentFilter(IndexerError, ValueError):
    """A segment filter that cannot be compiled; the message names the offending part.

    Bad data, not a fault of the indexer: the caller leaves that segment with no members."""


class CustomerPredicate:
    """A compiled segment filter: ``predicate(customer) -> bool``, never raising."""

    __slots__ = ("_test",)

    def __init__(self, test: _Test) -> None:
        self._test = test

    def __call__(self, customer: Mapping[str, Any]) -> bool:
        return self._test(customer)


def compile_filter(raw: object) -> CustomerPredicate:
    """Validate a decoded ``segments.filter`` value and compile it; see the module docstring."""
    # The budget counts conditions (operators and nested filters), then values.
    test = _compile_node(raw, "filter", 1, [0, 0])
    _check_size(raw)  # after the structure: its messages say more, and it bounds the values
    return CustomerPredicate(test)


def _check_size(raw: object) -> None:
    try:
        size = len(orjson.dumps(raw))
    except TypeError as error:  # orjson.JSONEncodeError is one
        if "recursion" in str(error).lower():
            raise _fail("filter", "nested too deep to encode as JSON") from None
        return  # not JSON (tests feed any object): the structure checks say what is wrong
    if size > MAX_FILTER_BYTES:
        raise _fail(
            "filter", f"too large: {size} bytes as JSON (at most {MAX_FILTER_BYTES} in a filter)"
        )


# --- reading customer values: total functions, any input, never raise --------------------


def _resolve(customer: object, path: tuple[str, ...]) -> object:
    value = customer
    for key in path:
        # The exact-type test first: a plain dict (the usual case) skips the slower ABC check.
        if type(value) is not dict and not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _eq_key(value: object) -> object:
    """A hashable key, equal for equal JSON values; None when the value is not comparable."""
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if isinstance(value, str | int | float):
        return value
    return None


def _as_number(value: object) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if len(value) > _MAX_SCALAR_TEXT or _NUMBER.fullmatch(value) is None:
            return None
        if _INTEGER.fullmatch(value):
            return int(value)
        value = float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def _as_instant(value: object) -> datetime | None:
    if not isinstance(value, str) or len(value) > _MAX_SCALAR_TEXT:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# --- operators: a builder validates its values once and returns a check on one value -----


def _fail(where: str, problem: str) -> InvalidSegmentFilter:
    return InvalidSegmentFilter(f"{where}: {problem}")


def _show(value: object) -> str:
    """A short description of a filter value for messages (safe on huge or deep values)."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    if isinstance(value, float) or (isinstance(value, int) and abs(value) < 10**18):
        return repr(value)
    if isinstance(value, Mapping | list | tuple):
        return "an object" if isinstance(value, Mapping) else "a list"
    return f"a value of type {type(value).__name__}"


def _equality(negate: bool, allow_empty: bool) -> _Builder:
    def build(values: list[object], where: str) -> _Check:
        if not values and not allow_empty:
            raise _fail(where, "needs at least one value")
        keys: set[object] = set()
        for value in values:
            if value is None:
                raise _fail(where, "null is not a comparison value; use $is_unknown or $has_value")
            finite = not isinstance(value, float) or math.isfinite(value)
            if not finite or not isinstance(value, str | int | float):
                raise _fail(where, f"expected a string, number or boolean, got {_show(value)}")
            keys.add(_eq_key(value))
        frozen = frozenset(keys)
        if negate:
            return lambda value: _eq_key(value) not in frozen
        return lambda value: _eq_key(value) in frozen

    return build


def _ordered(
    parse: Callable[[object], Any], compare: Callable[[Any, Any], bool], lowest: bool, kind: str
) -> _Builder:
    # "More than any of the values" is "more than the lowest": one comparison per call.
    def build(values: list[object], where: str) -> _Check:
        if not values:
            raise _fail(where, "needs at least one value")
        bounds = [parse(value) for value in values]
        for value, parsed in zip(values, bounds, strict=True):
            if parsed is None:
                raise _fail(where, f"expected {kind}, got {_show(value)}")
        bound = min(bounds) if lowest else max(bounds)

        def check(value: object) -> bool:
            parsed = parse(value)
            return parsed is not None and compare(parsed, bound)

        return check

    return build


def _text(match: Callable[[str, tuple[str, ...]], bool]) -> _Builder:
    def build(values: list[object], where: str) -> _Check:
        if not values:
            raise _fail(where, "needs at least one value")
        texts: list[str] = []
        for value in values:
            if not isinstance(value, str):
                raise _fail(where, f"expected a string, got {_show(value)}")
            texts.append(value)
        frozen = tuple(texts)
        return lambda value: isinstance(value, str) and match(value, frozen)

    return build


def _presence(unknown: bool) -> _Builder:
    def build(values: list[object], where: str) -> _Check:
        # Refuse [false]: reading it like [true] would silently invert the author's intent.
        if any(value is not True and value is not None for value in values):
            raise _fail(where, "takes no values (give [] or [true])")
        if unknown:
            return lambda value: value is None
        return lambda value: value is not None

    return build


_A_NUMBER: Final = "a number"
_AN_INSTANT: Final = "an ISO 8601 date or timestamp"
_OPERATORS: Final[Mapping[str, _Builder]] = {
    "$is": _equality(negate=False, allow_empty=False),
    "$is_not": _equality(negate=True, allow_empty=False),
    "$in": _equality(negate=False, allow_empty=True),
    "$not_in": _equality(negate=True, allow_empty=True),
    "$more_than": _ordered(_as_number, operator.gt, lowest=True, kind=_A_NUMBER),
    "$more_than_equal": _ordered(_as_number, operator.ge, lowest=True, kind=_A_NUMBER),
    "$less_than": _ordered(_as_number, operator.lt, lowest=False, kind=_A_NUMBER),
    "$less_than_equal": _ordered(_as_number, operator.le, lowest=False, kind=_A_NUMBER),
    "$contains": _text(lambda value, texts: any(text in value for text in texts)),
    "$starts_with": _text(str.startswith),
    "$ends_with": _text(str.endswith),
    "$is_unknown": _presence(unknown=True),
    "$has_value": _presence(unknown=False),
    "$before": _ordered(_as_instant, operator.lt, lowest=False, kind=_AN_INSTANT),
    "$after": _ordered(_as_instant, operator.gt, lowest=True, kind=_AN_INSTANT),
}


# --- filter structure --------------------------------------------------------------------


def _spend(budget: list[int], where: str) -> None:
    budget[0] += 1
    if budget[0] > MAX_CONDITIONS:
        raise _fail(where, f"too many conditions (at most {MAX_CONDITIONS} in a filter)")


def _spend_values(budget: list[int], count: int, where: str) -> None:
    budget[1] += count
    if budget[1] > MAX_FILTER_VALUES:
        raise _fail(where, f"too many values (at most {MAX_FILTER_VALUES} in a filter)")


def _compile_node(raw: object, where: str, depth: int, budget: list[int]) -> _Test:
    if depth > MAX_DEPTH:
        raise _fail(where, f"nested too deep (at most {MAX_DEPTH} levels of filters)")
    if not isinstance(raw, Mapping):
        raise _fail(where, f"a filter must be an object, got {_show(raw)}")
    junction = raw.get("junction", "and")
    if junction not in ("and", "or"):
        raise _fail(where, f'junction must be "and" or "or", got {_show(junction)}')
    tests: list[_Test] = []
    for key, spec in raw.items():
        if not isinstance(key, str):
            raise _fail(where, f"a field path must be a string, got {_show(key)}")
        if key == "junction":
            continue
        if key == "filters":
            if not isinstance(spec, list | tuple):
                raise _fail(f"{where}.filters", f"expected a list of filters, got {_show(spec)}")
            for index, child in enumerate(spec):
                at = f"{where}.filters[{index}]"
                _spend(budget, at)
                tests.append(_compile_node(child, at, depth + 1, budget))
        else:
            tests.append(_compile_field(key, spec, f"{where}[{_show(key)}]", budget))
    return _combine(junction == "and", tests)


def _compile_field(key: str, spec: object, where: str, budget: list[int]) -> _Test:
    if key.startswith("$"):
        raise _fail(where, "an operator must sit inside a field's conditions")
    path = tuple(key.split("."))
    if not all(path):
        raise _fail(where, "a field path is dot-separated names, none empty")
    if not isinstance(spec, Mapping) or set(spec) != {"conditions"}:
        raise _fail(where, 'expected {"conditions": {"<operator>": [values...]}}')
    conditions = spec["conditions"]
    if not isinstance(conditions, Mapping) or not conditions:
        raise _fail(f"{where}.conditions", "expected an object naming at least one operator")
    checks: list[_Check] = []
    for name, raw_values in conditions.items():
        build = _OPERATORS.get(name) if isinstance(name, str) else None
        at = f"{where}.{name}" if build is not None else f"{where}.conditions"
        _spend(budget, at)
        if build is None:
            raise _fail(at, f"unknown operator {_show(name)} (known: {', '.join(_OPERATORS)})")
        if isinstance(raw_values, Mapping):
            raise _fail(at, f"expected a list of values, got {_show(raw_values)}")
        values = list(raw_values) if isinstance(raw_values, list | tuple) else [raw_values]
        _spend_values(budget, len(values), at)
        checks.append(build(values, at))
    return _field_test(path, tuple(checks))


# The loops below are deliberate (noqa SIM110): cheaper per call than all()/any() over a
# generator, and they run for every changed customer against every auto-update segment.


def _field_test(path: tuple[str, ...], checks: tuple[_Check, ...]) -> _Test:
    if len(checks) == 1:
        (check,) = checks
        return lambda customer: check(_resolve(customer, path))

    def test(customer: Mapping[str, Any]) -> bool:
        value = _resolve(customer, path)  # once for all operators of this field
        for check in checks:  # noqa: SIM110
            if not check(value):
                return False
        return True

    return test


def _combine(conjunction: bool, tests: list[_Test]) -> _Test:
    if not tests:
        return lambda customer: True
    if len(tests) == 1:
        return tests[0]
    frozen = tuple(tests)

    def test_all(customer: Mapping[str, Any]) -> bool:
        for test in frozen:  # noqa: SIM110
            if not test(customer):
                return False
        return True

    def test_any(customer: Mapping[str, Any]) -> bool:
        for test in frozen:  # noqa: SIM110
            if test(customer):
                return True
        return False

    return test_all if conjunction else test_any
