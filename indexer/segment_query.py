"""A parsed segment filter as an Elasticsearch query over the customers' indexed filter view.

Pure: builds query bodies, sends nothing. The customer index holds each customer's view
(``indexer.segment_view``) as keyword terms under ``Field.FILTER_VIEW``: ``<path>NUL<value>``
in ``s`` (strings), ``n`` (numbers), ``o`` (numeric strings' values), ``t`` (instants) and
``b`` (booleans), numbers and instants as order-preserving hexadecimal, and in ``p`` the
paths of the leaves with none of ``s``, ``n``, ``b`` (see
:func:`indexer.segment_view.view_terms`). A path has at most one leaf per customer, so "the
leaf at P passes test Q" is a query on P's terms, and every operator maps to core query DSL
only (no scripts, no nested documents):

==========================  ============================================================
operator                    query
==========================  ============================================================
``$has_value``              ``term p = P`` or a term of P in ``s``, ``n`` or ``b``
``$is_unknown``             ``not`` the above
``$is``, ``$in``            ``terms`` on ``s``, ``n`` or ``b`` of ``P NUL value``, per type
``$is_not``, ``$not_in``    ``not`` the above: an unknown field satisfies them
``$in: []``                 ``match_none`` (``$not_in: []``: ``match_all``)
ordering                    ``range`` on ``n`` or ``o`` from the bound to the end of P's
``$before``, ``$after``     ``range`` on ``t`` likewise, from the bound at ``now_us``
``$starts_with``            ``prefix`` on ``s`` of ``P NUL text``
``$contains``               ``wildcard P NUL *text*`` on ``s`` (``*``, ``?``, ``\\`` escaped)
``$ends_with``              ``wildcard P NUL *text`` on ``s``
==========================  ============================================================

A node is a ``bool`` ``filter`` ("and") or ``should`` with ``minimum_should_match: 1``
("or") of its conditions and children; a node without any is ``match_all``. Equality strings
longer than ``MAX_VIEW_STRING`` are left out (no ``s`` holds them). A path holding a NUL names
no leaf (the view skips such keys). Ranges of keyword terms, wildcard and prefix queries need
``search.allow_expensive_queries`` (on by default).
"""

from __future__ import annotations

from typing import Any, Final

from cache.readmodel.indices import Field, ViewLeaf
from indexer.segment_filter import (
    BEFORE,
    CONTAINS,
    DATES,
    ENDS_WITH,
    EQUALITY,
    HAS_VALUE,
    IS_UNKNOWN,
    LESS_THAN,
    LESS_THAN_EQUAL,
    MORE_THAN,
    MORE_THAN_EQUAL,
    NEGATED,
    ORDERED,
    STARTS_WITH,
    FieldCondition,
    Node,
    ParsedFilter,
    SegmentFilter,
    date_bound,
    ordering_bound,
)
from indexer.segment_view import (
    MAX_VIEW_STRING,
    PATH_END,
    SEPARATOR,
    boolean_key,
    instant_key,
    number_key,
    term,
)

MATCH_ALL: Final[dict[str, Any]] = {"match_all": {}}
MATCH_NONE: Final[dict[str, Any]] = {"match_none": {}}

_PATH: Final = f"{Field.FILTER_VIEW}.{ViewLeaf.P}"
_STRING: Final = f"{Field.FILTER_VIEW}.{ViewLeaf.S}"
_NUMBER: Final = f"{Field.FILTER_VIEW}.{ViewLeaf.N}"
_ORDER: Final = f"{Field.FILTER_VIEW}.{ViewLeaf.O}"
_INSTANT: Final = f"{Field.FILTER_VIEW}.{ViewLeaf.T}"
_BOOLEAN: Final = f"{Field.FILTER_VIEW}.{ViewLeaf.B}"
# Whether an ordering operator keeps the values above its bound, and the bound itself.
_ABOVE: Final = {MORE_THAN: True, MORE_THAN_EQUAL: True, LESS_THAN: False, LESS_THAN_EQUAL: False}
_INCLUSIVE: Final = frozenset({MORE_THAN_EQUAL, LESS_THAN_EQUAL})


def customer_query(
    project_id: str, parsed: ParsedFilter | SegmentFilter, now_us: int
) -> dict[str, Any]:
    """The customers of ``project_id`` the filter selects at ``now_us``."""
    root = parsed.parsed if isinstance(parsed, SegmentFilter) else parsed
    project = {"term": {Field.PROJECT_ID: project_id}}
    return {"bool": {"filter": [project, to_query(root, now_us)]}}


def to_query(parsed: ParsedFilter, now_us: int) -> dict[str, Any]:
    """The query of a parsed filter at ``now_us``; see the module docstring."""
    return _node(parsed, now_us)


def _node(node: Node, now_us: int) -> dict[str, Any]:
    clauses = [_condition(condition, now_us) for condition in node.conditions]
    clauses += [_node(child, now_us) for child in node.children]
    if not clauses:
        return MATCH_ALL
    if len(clauses) == 1:
        return clauses[0]
    if node.junction == "and":
        return {"bool": {"filter": clauses}}
    return {"bool": {"should": clauses, "minimum_should_match": 1}}


def _condition(condition: FieldCondition, now_us: int) -> dict[str, Any]:
    path = condition.path
    # A path holding the separator names no leaf: it is unknown for every customer.
    known = MATCH_NONE if SEPARATOR in path else _known(path)
    if condition.operator == HAS_VALUE:
        return known
    if condition.operator == IS_UNKNOWN:
        return MATCH_ALL if known is MATCH_NONE else _not(known)
    test = None if known is MATCH_NONE else _test(condition, now_us)
    if condition.operator in NEGATED:
        return MATCH_ALL if test is None else _not(test)
    return MATCH_NONE if test is None else test


def _known(path: str) -> dict[str, Any]:
    """The customers with a leaf at ``path``: see ``view_terms`` for where it is."""
    head = path + SEPARATOR
    valued = [{"prefix": {name: head}} for name in (_STRING, _NUMBER, _BOOLEAN)]
    return {"bool": {"should": [{"term": {_PATH: path}}, *valued], "minimum_should_match": 1}}


def _not(query: dict[str, Any]) -> dict[str, Any]:
    return {"bool": {"must_not": [query]}}


def _any(queries: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not queries:
        return None
    if len(queries) == 1:
        return queries[0]
    return {"bool": {"should": queries, "minimum_should_match": 1}}


def range_of_terms(
    field: str, path: str, bound: str, *, above: bool, inclusive: bool
) -> dict[str, Any]:
    """The terms of ``path`` in ``field`` above (or below) ``term(path, bound)``: a path's
    terms all lie between ``path NUL`` and ``path PATH_END``."""
    edge = term(path, bound)
    if above:
        limits = {"gte" if inclusive else "gt": edge, "lt": path + PATH_END}
    else:
        limits = {"gte": path + SEPARATOR, "lte" if inclusive else "lt": edge}
    return {"range": {field: limits}}


def _test(condition: FieldCondition, now_us: int) -> dict[str, Any] | None:
    """The query of a leaf at the condition's path passing it; None when none can."""
    operator, values, path = condition.operator, condition.values, condition.path
    if operator in EQUALITY:
        strings = [v for v in values if isinstance(v, str) and len(v) <= MAX_VIEW_STRING]
        flags = [v for v in values if isinstance(v, bool)]
        numbers = [v for v in values if isinstance(v, float)]
        keyed = (
            (_STRING, {term(path, v) for v in strings}),
            (_NUMBER, {term(path, number_key(v)) for v in numbers}),
            (_BOOLEAN, {term(path, boolean_key(v)) for v in flags}),
        )
        return _any([{"terms": {name: sorted(found)}} for name, found in keyed if found])
    if operator in ORDERED:
        key = number_key(ordering_bound(operator, values))
        above, inclusive = _ABOVE[operator], operator in _INCLUSIVE
        return _any(
            [
                range_of_terms(name, path, key, above=above, inclusive=inclusive)
                for name in (_NUMBER, _ORDER)
            ]
        )
    if operator in DATES:
        bound_us = date_bound(operator, values, now_us)
        return range_of_terms(
            _INSTANT, path, instant_key(bound_us), above=operator != BEFORE, inclusive=False
        )
    texts = sorted({v for v in values if isinstance(v, str)})
    head = escape_wildcard(path + SEPARATOR)
    if operator == STARTS_WITH:
        return _any([{"prefix": {_STRING: term(path, text)}} for text in texts])
    if operator == CONTAINS:
        return _any([_wildcard(f"{head}*{escape_wildcard(text)}*") for text in texts])
    if operator == ENDS_WITH:
        return _any([_wildcard(f"{head}*{escape_wildcard(text)}") for text in texts])
    raise AssertionError(f"operator without a query: {operator}")  # parse_filter refuses it


def _wildcard(pattern: str) -> dict[str, Any]:
    return {"wildcard": {_STRING: {"value": pattern}}}


def escape_wildcard(text: str) -> str:
    """``text`` as a literal in a wildcard pattern: ``\\``, ``*`` and ``?`` escaped."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
