"""Segment filters (docs/api.md §4): parse once, evaluate in Python or in Elasticsearch.

Pure logic, no I/O. :func:`parse_filter` validates a decoded ``segments.filter`` value into
an immutable tree (:class:`Node`, :class:`FieldCondition`); :func:`compile_filter` turns that
tree into a :class:`SegmentFilter`, which evaluates it two ways that select the same
customers: :meth:`SegmentFilter.matches`, a predicate over a customer's filter view
(``indexer.segment_view``), and :meth:`SegmentFilter.query`, an Elasticsearch query over the
indexed copy of that view (``indexer.segment_query``). Both read only the view, so its caps
and typed values are shared by construction. The indexer compiles each segment's filter
once and calls the predicate for every changed customer, so all validation and value parsing
happen here; a compiled predicate only looks up precomputed paths and never raises.

Semantics decided here (tests in ``tests/unit/test_segment_filter.py`` pin each one):

* ``junction`` defaults to ``"and"``. A filter with no field conditions and no nested filters
  matches every customer of the project, whatever its junction (like an empty WHERE).
* A field path is a dotted path through objects (``metadata.nested.key``) of at most
  ``MAX_PATH_NAMES`` names and ``MAX_PATH_LENGTH`` characters. A missing key, a non-object on
  the way and JSON null are all "unknown"; lists are not indexed into. Beyond the view's caps
  (tenant leaves, long strings; see ``indexer.segment_view``) values read as the view says.
* A list of values means "any of them"; for ``$is_not``/``$not_in``, "none of them". A bare
  scalar is read as a one-value list.
* ``$is``/``$in`` compare JSON values exactly: strings case-sensitively (emails included),
  numbers as IEEE doubles like Elasticsearch (``5 == 5.0``, and ``2**53 + 1 == 2**53``: a
  deliberate change from the exact integer comparison of old), a boolean never equals a
  number, a string never equals a number. ``$is_not``/``$not_in`` are their negations, so an
  unknown field satisfies them. A string longer than ``MAX_VIEW_STRING`` equals nothing.
* ``$more_than``/``$more_than_equal``/``$less_than``/``$less_than_equal`` compare numbers as
  doubles; a numeric string (ASCII decimal notation, at most 64 characters: ``"5"``,
  ``"-2.5"``, ``"1e3"``) on either side counts as its number; any other value (booleans
  included) never matches.
* ``$before``/``$after`` compare instants in microseconds parsed from ISO 8601; date-only and
  naive values are UTC (``2024-01-01`` is midnight UTC). A filter value may instead be a
  signed duration relative to now (``"-P30D"``, ``indexer.durations``): its bound is
  ``now_us + duration``, ``now_us`` being what the caller passes to ``matches``/``query``.
  A customer value that does not parse never matches.
* ``$contains``/``$starts_with``/``$ends_with`` apply to strings only, case-sensitively; their
  values have at most ``MAX_TEXT_VALUE`` characters (Elasticsearch refuses the automaton of a
  longer ``*...*`` pattern).
* ``$is_unknown`` holds when the field is unknown, ``$has_value`` otherwise (an empty string is
  a value). They take no values: ``[]``, ``[true]``, ``true`` or ``null``.
* An unknown field fails every operator but ``$is_not``, ``$not_in`` and ``$is_unknown``. An
  object or list value is never looked into: only ``$is_not``, ``$not_in``, ``$has_value`` hold.
* Null is not a comparison value (use ``$is_unknown``); nor is a number beyond the double
  range or a string that is not valid Unicode. ``$in: []`` matches no one and ``$not_in: []``
  everyone; every other operator that compares needs at least one value.
* Size: at most :data:`MAX_FILTER_VALUES` values over all operators (a bare scalar is one)
  and :data:`MAX_FILTER_BYTES` bytes as compact JSON; a larger filter is malformed (a
  ``$in`` of 100,000 ids would cost every customer rebuild of its project).
* :func:`parse_filter` and :func:`compile_filter` raise only :class:`InvalidSegmentFilter`,
  for any input: a null or non-object filter included (the caller decides what null means).

The tree: a :class:`Node` combines its ``conditions`` and ``children`` with its junction. A
field with several operators is one :class:`FieldCondition` per operator; under an ``"or"``
node they become a child ``"and"`` node of their own (they must all hold). Condition values
are normalised: equality values are ``str``, ``bool`` or ``float`` (``-0.0`` as ``0.0``),
ordering values ``float``, text values ``str``, date values :class:`DateBound`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import orjson

from indexer.durations import InvalidDuration, looks_like_duration, parse_duration
from indexer.errors import IndexerError
from indexer.segment_view import (
    MAX_PATH_LENGTH,
    MAX_PATH_NAMES,
    FilterView,
    Leaf,
    as_double,
    as_instant_us,
    as_order_number,
    filter_view,
)

MAX_DEPTH: Final = 8
"""Filter objects from the root down (the root counts as 1)."""
MAX_CONDITIONS: Final = 200
"""Operators plus nested filters over the whole tree: bounds the cost of every evaluation."""
MAX_FILTER_VALUES: Final = 1000
"""Values over all operators of the whole tree (a bare scalar counts as one)."""
MAX_FILTER_BYTES: Final = 64 * 1024
"""The filter's size as compact JSON (UTF-8): bounds compiling, caching and logging it."""
MAX_TEXT_VALUE: Final = 256
"""Characters of a ``$contains``/``$starts_with``/``$ends_with`` value. Elasticsearch
determinizes a ``*text*`` pattern with bounded effort, about (n + 1)(n + 2) for the most
self-overlapping text of n characters (``aaaa...``): it refuses one past 314 characters."""

IS: Final = "$is"
IS_NOT: Final = "$is_not"
IN: Final = "$in"
NOT_IN: Final = "$not_in"
MORE_THAN: Final = "$more_than"
MORE_THAN_EQUAL: Final = "$more_than_equal"
LESS_THAN: Final = "$less_than"
LESS_THAN_EQUAL: Final = "$less_than_equal"
CONTAINS: Final = "$contains"
STARTS_WITH: Final = "$starts_with"
ENDS_WITH: Final = "$ends_with"
IS_UNKNOWN: Final = "$is_unknown"
HAS_VALUE: Final = "$has_value"
BEFORE: Final = "$before"
AFTER: Final = "$after"

EQUALITY: Final = frozenset({IS, IS_NOT, IN, NOT_IN})
NEGATED: Final = frozenset({IS_NOT, NOT_IN})
"""Negations of ``$is``/``$in``: an unknown field satisfies them."""
ORDERED: Final = frozenset({MORE_THAN, MORE_THAN_EQUAL, LESS_THAN, LESS_THAN_EQUAL})
LOWEST_BOUND: Final = frozenset({MORE_THAN, MORE_THAN_EQUAL, AFTER})
"""Operators whose values combine into their lowest ("more than any" is "more than the
lowest"); the others take the highest."""
TEXT: Final = frozenset({CONTAINS, STARTS_WITH, ENDS_WITH})
PRESENCE: Final = frozenset({IS_UNKNOWN, HAS_VALUE})
DATES: Final = frozenset({BEFORE, AFTER})
OPERATORS: Final = (
    IS, IS_NOT, IN, NOT_IN, MORE_THAN, MORE_THAN_EQUAL, LESS_THAN, LESS_THAN_EQUAL,
    CONTAINS, STARTS_WITH, ENDS_WITH, IS_UNKNOWN, HAS_VALUE, BEFORE, AFTER,
)  # fmt: skip
_ALLOW_EMPTY: Final = frozenset({IN, NOT_IN})


class InvalidSegmentFilter(IndexerError, ValueError):
    """A segment filter that cannot be compiled; the message names the offending part.

    Bad data, not a fault of the indexer: the caller leaves that segment with no members."""


# --- the parsed tree ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DateBound:
    """A ``$before``/``$after`` value: an instant, or an offset from now (``relative``), in
    microseconds."""

    micros: int
    relative: bool = False

    def at(self, now_us: int) -> int:
        return now_us + self.micros if self.relative else self.micros


Value: TypeAlias = str | bool | float | DateBound


@dataclass(frozen=True, slots=True)
class FieldCondition:
    path: str
    """Dotted, as the filter spells it: the key of the customer's view."""
    operator: str
    values: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Node:
    junction: Literal["and", "or"]
    conditions: tuple[FieldCondition, ...]
    children: tuple[Node, ...]


ParsedFilter: TypeAlias = Node
"""A parsed filter is its root node."""


def ordering_bound(operator: str, values: tuple[Value, ...]) -> float:
    """The one number an ordering operator compares with (its values are floats)."""
    numbers = [value for value in values if isinstance(value, float)]
    return min(numbers) if operator in LOWEST_BOUND else max(numbers)


def date_bound(operator: str, values: tuple[Value, ...], now_us: int) -> int:
    """The instant (epoch microseconds) a date operator compares with at ``now_us``."""
    bounds = [value.at(now_us) for value in values if isinstance(value, DateBound)]
    return min(bounds) if operator in LOWEST_BOUND else max(bounds)


@dataclass(frozen=True, slots=True)
class RelativeCondition:
    """A ``$before``/``$after`` condition whose bound moves with the clock."""

    path: str
    operator: str
    values: tuple[DateBound, ...]

    def bound_us(self, now_us: int) -> int:
        """The bound at ``now_us``: a customer's instant crosses it when it passes
        ``bound_us`` between two ticks."""
        return date_bound(self.operator, self.values, now_us)


# --- the compiled filter ------------------------------------------------------------------

_Test = Callable[[FilterView, int], bool]
_Check = Callable[[Leaf, int], bool]


class SegmentFilter:
    """A compiled segment filter; see the module docstring."""

    __slots__ = ("_relative", "_test", "parsed")

    def __init__(self, parsed: ParsedFilter) -> None:
        self.parsed: Final = parsed
        self._test = _node_test(parsed)
        self._relative = tuple(_relative_conditions(parsed))

    def matches(self, view: FilterView, now_us: int) -> bool:
        """Whether the customer whose view this is matches, at ``now_us`` (never raises)."""
        return self._test(view, now_us)

    def __call__(self, body: object) -> bool:
        """Whether a customer object matches now, for callers holding a body (anything but
        an object reads as a customer whose every field is unknown)."""
        return self._test(filter_view(body), time.time_ns() // 1000)

    def query(self, now_us: int) -> dict[str, Any]:
        """The Elasticsearch query selecting the customers :meth:`matches` accepts at
        ``now_us`` (without the project: ``indexer.segment_query.customer_query`` adds it)."""
        # Imported here: indexer.segment_query reads this module's tree at import time.
        from indexer.segment_query import to_query

        return to_query(self.parsed, now_us)

    def relative_conditions(self) -> tuple[RelativeCondition, ...]:
        return self._relative

    @property
    def has_relative(self) -> bool:
        return bool(self._relative)


def compile_filter(raw: object) -> SegmentFilter:
    """Validate a decoded ``segments.filter`` value and compile it; see the module docstring."""
    return SegmentFilter(parse_filter(raw))


def _relative_conditions(node: Node) -> list[RelativeCondition]:
    found = [
        RelativeCondition(
            c.path, c.operator, tuple(v for v in c.values if isinstance(v, DateBound))
        )
        for c in node.conditions
        if c.operator in DATES and any(isinstance(v, DateBound) and v.relative for v in c.values)
    ]
    for child in node.children:
        found.extend(_relative_conditions(child))
    return found


# The loops below are deliberate (noqa SIM110): cheaper per call than all()/any() over a
# generator, and they run for every changed customer against every auto-update segment.


def _node_test(node: Node) -> _Test:
    tests = [_condition_test(c) for c in node.conditions]
    tests += [_node_test(child) for child in node.children]
    if not tests:
        return lambda view, now_us: True
    if len(tests) == 1:
        return tests[0]
    frozen = tuple(tests)

    def test_all(view: FilterView, now_us: int) -> bool:
        for test in frozen:  # noqa: SIM110
            if not test(view, now_us):
                return False
        return True

    def test_any(view: FilterView, now_us: int) -> bool:
        for test in frozen:  # noqa: SIM110
            if test(view, now_us):
                return True
        return False

    return test_all if node.junction == "and" else test_any


def _condition_test(condition: FieldCondition) -> _Test:
    path = condition.path
    if condition.operator == IS_UNKNOWN:
        return lambda view, now_us: path not in view
    if condition.operator == HAS_VALUE:
        return lambda view, now_us: path in view
    check = _leaf_check(condition)
    if condition.operator in NEGATED:

        def negated(view: FilterView, now_us: int) -> bool:
            leaf = view.get(path)
            return leaf is None or not check(leaf, now_us)

        return negated

    def positive(view: FilterView, now_us: int) -> bool:
        leaf = view.get(path)
        return leaf is not None and check(leaf, now_us)

    return positive


def _leaf_check(condition: FieldCondition) -> _Check:
    """The test of a present leaf (for a negated operator: of its positive form)."""
    operator, values = condition.operator, condition.values
    if operator in EQUALITY:
        # One set per type: None (the leaf lacks that type) is in none of them, and True
        # never meets 1.0 because booleans and numbers are looked up in different sets.
        strings = frozenset(v for v in values if isinstance(v, str))
        flags = frozenset(v for v in values if isinstance(v, bool))
        numbers = frozenset(v for v in values if isinstance(v, float))
        return lambda leaf, now_us: leaf.s in strings or leaf.n in numbers or leaf.b in flags
    if operator in ORDERED:
        return _ordering_check(operator, ordering_bound(operator, values))
    if operator in TEXT:
        texts = tuple(v for v in values if isinstance(v, str))
        if operator == STARTS_WITH:
            return lambda leaf, now_us: leaf.s is not None and leaf.s.startswith(texts)
        if operator == ENDS_WITH:
            return lambda leaf, now_us: leaf.s is not None and leaf.s.endswith(texts)
        return lambda leaf, now_us: leaf.s is not None and _contains(leaf.s, texts)
    return _date_check(operator, tuple(v for v in values if isinstance(v, DateBound)))


def _contains(value: str, texts: tuple[str, ...]) -> bool:
    for text in texts:  # noqa: SIM110
        if text in value:
            return True
    return False


def _ordering_check(operator: str, bound: float) -> _Check:
    if operator == MORE_THAN:
        return lambda leaf, now_us: leaf.o is not None and leaf.o > bound
    if operator == MORE_THAN_EQUAL:
        return lambda leaf, now_us: leaf.o is not None and leaf.o >= bound
    if operator == LESS_THAN:
        return lambda leaf, now_us: leaf.o is not None and leaf.o < bound
    return lambda leaf, now_us: leaf.o is not None and leaf.o <= bound


def _date_check(operator: str, values: tuple[DateBound, ...]) -> _Check:
    before = operator == BEFORE
    if not any(value.relative for value in values):
        fixed = date_bound(operator, values, 0)
        if before:
            return lambda leaf, now_us: leaf.t is not None and leaf.t < fixed
        return lambda leaf, now_us: leaf.t is not None and leaf.t > fixed

    def check(leaf: Leaf, now_us: int) -> bool:
        instant = leaf.t
        if instant is None:
            return False
        bound = date_bound(operator, values, now_us)
        return instant < bound if before else instant > bound

    return check


# --- parsing: validation happens here, once per filter -------------------------------------


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


def _unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (no lone surrogate): Elasticsearch must read it."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _equality_value(value: object, where: str) -> Value:
    if value is None:
        raise _fail(where, "null is not a comparison value; use $is_unknown or $has_value")
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if not _unicode(value):
            raise _fail(where, f"{_show(value)} is not valid Unicode text")
        return value
    number = as_double(value)
    if number is None:
        if isinstance(value, int):
            raise _fail(where, "a number must fit a double (about 1.8e308 at most)")
        raise _fail(where, f"expected a string, number or boolean, got {_show(value)}")
    return number


def _parse_values(operator: str, values: list[object], where: str) -> tuple[Value, ...]:
    if operator in PRESENCE:
        # Refuse [false]: reading it like [true] would silently invert the author's intent.
        if any(value is not True and value is not None for value in values):
            raise _fail(where, "takes no values (give [] or [true])")
        return ()
    if not values and operator not in _ALLOW_EMPTY:
        raise _fail(where, "needs at least one value")
    if operator in EQUALITY:
        return tuple(_equality_value(value, where) for value in values)
    if operator in ORDERED:
        numbers: list[Value] = []
        for value in values:
            number = as_order_number(value)
            if number is None:
                raise _fail(where, f"expected a number, got {_show(value)}")
            numbers.append(number)
        return tuple(numbers)
    if operator in TEXT:
        for value in values:
            if not isinstance(value, str):
                raise _fail(where, f"expected a string, got {_show(value)}")
            if not _unicode(value):
                raise _fail(where, f"{_show(value)} is not valid Unicode text")
            if len(value) > MAX_TEXT_VALUE:
                raise _fail(where, f"a text value has at most {MAX_TEXT_VALUE} characters")
        return tuple(str(value) for value in values)
    return tuple(_date_value(value, where) for value in values)


def _date_value(value: object, where: str) -> DateBound:
    if isinstance(value, str) and looks_like_duration(value):
        try:
            return DateBound(parse_duration(value), relative=True)
        except InvalidDuration as error:
            raise _fail(where, f"{_show(value)}: {error}") from None
    instant = as_instant_us(value)
    if instant is None:
        raise _fail(
            where,
            f"expected an ISO 8601 date or timestamp, or a duration such as -P30D, "
            f"got {_show(value)}",
        )
    return DateBound(instant)


class _Budget:
    """Conditions (operators and nested filters) and values spent over the whole tree."""

    __slots__ = ("conditions", "values")

    def __init__(self) -> None:
        self.conditions = 0
        self.values = 0

    def spend(self, where: str) -> None:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise _fail(where, f"too many conditions (at most {MAX_CONDITIONS} in a filter)")

    def spend_values(self, count: int, where: str) -> None:
        self.values += count
        if self.values > MAX_FILTER_VALUES:
            raise _fail(where, f"too many values (at most {MAX_FILTER_VALUES} in a filter)")


def parse_filter(raw: object) -> ParsedFilter:
    """Validate a decoded ``segments.filter`` value into its tree; see the module docstring."""
    parsed = _parse_node(raw, "filter", 1, _Budget())
    _check_size(raw)  # after the structure: its messages say more, and it bounds the values
    return parsed


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


def _parse_node(raw: object, where: str, depth: int, budget: _Budget) -> Node:
    if depth > MAX_DEPTH:
        raise _fail(where, f"nested too deep (at most {MAX_DEPTH} levels of filters)")
    if not isinstance(raw, Mapping):
        raise _fail(where, f"a filter must be an object, got {_show(raw)}")
    junction = raw.get("junction", "and")
    if junction not in ("and", "or"):
        raise _fail(where, f'junction must be "and" or "or", got {_show(junction)}')
    conditions: list[FieldCondition] = []
    children: list[Node] = []
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
                budget.spend(at)
                children.append(_parse_node(child, at, depth + 1, budget))
            continue
        field = _parse_field(key, spec, f"{where}[{_show(key)}]", budget)
        if junction == "and" or len(field) == 1:
            conditions.extend(field)
        else:  # all operators of one field must hold, whatever the node's junction
            children.append(Node("and", tuple(field), ()))
    return Node("and" if junction == "and" else "or", tuple(conditions), tuple(children))


def _parse_field(key: str, spec: object, where: str, budget: _Budget) -> list[FieldCondition]:
    if key.startswith("$"):
        raise _fail(where, "an operator must sit inside a field's conditions")
    names = key.split(".")
    if not all(names):
        raise _fail(where, "a field path is dot-separated names, none empty")
    if len(names) > MAX_PATH_NAMES:
        raise _fail(where, f"a field path has at most {MAX_PATH_NAMES} names, got {len(names)}")
    if len(key) > MAX_PATH_LENGTH:
        raise _fail(where, f"a field path has at most {MAX_PATH_LENGTH} characters")
    if not _unicode(key):
        raise _fail(where, "a field path must be valid Unicode text")
    if not isinstance(spec, Mapping) or set(spec) != {"conditions"}:
        raise _fail(where, 'expected {"conditions": {"<operator>": [values...]}}')
    conditions = spec["conditions"]
    if not isinstance(conditions, Mapping) or not conditions:
        raise _fail(f"{where}.conditions", "expected an object naming at least one operator")
    parsed: list[FieldCondition] = []
    for name, raw_values in conditions.items():
        known = isinstance(name, str) and name in OPERATORS
        at = f"{where}.{name}" if known else f"{where}.conditions"
        budget.spend(at)
        if not known:
            raise _fail(at, f"unknown operator {_show(name)} (known: {', '.join(OPERATORS)})")
        if isinstance(raw_values, Mapping):
            raise _fail(at, f"expected a list of values, got {_show(raw_values)}")
        values = list(raw_values) if isinstance(raw_values, list | tuple) else [raw_values]
        budget.spend_values(len(values), at)
        parsed.append(FieldCondition(key, str(name), _parse_values(str(name), values, at)))
    return parsed
