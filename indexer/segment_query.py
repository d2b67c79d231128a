"""A parsed segment filter as an Elasticsearch query over the customers' indexed filter view.

Pure: builds query bodies, sends nothing. The customer index holds each customer's view
(``indexer.segment_view``) as the nested field ``Field.FILTER_VIEW``, one entry per leaf
``{p: path, s, n, o, t, b}``. A path has at most one leaf per customer, so "the leaf at P
passes test Q" is one nested query, ``nested(term p = P and Q)``, and every operator maps to
core query DSL only (no scripts):

==========================  ============================================================
operator                    query
==========================  ============================================================
``$has_value``              ``nested(p = P)``
``$is_unknown``             ``not nested(p = P)``
``$is``, ``$in``            ``nested(p = P and (terms s | terms n | terms b))``, per type
``$is_not``, ``$not_in``    ``not`` the above: an unknown field satisfies them
``$in: []``                 ``match_none`` (``$not_in: []``: ``match_all``)
ordering                    ``range`` on ``o`` from the lowest or highest value
``$before``, ``$after``     ``range`` on ``t`` (epoch microseconds) from the bound at ``now_us``
``$starts_with``            ``prefix`` on ``s``
``$contains``               ``wildcard *text*`` on ``s`` (``*``, ``?`` and ``\\`` escaped)
``$ends_with``              ``wildcard *text`` on ``s``
==========================  ============================================================

A node is a ``bool`` ``filter`` ("and") or ``should`` with ``minimum_should_match: 1``
("or") of its conditions and children; a node without any is ``match_all``. Equality strings
longer than ``MAX_VIEW_STRING`` are left out (no ``s`` holds them, and Elasticsearch refuses a
term longer than a keyword can index). The wildcard and prefix queries need
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
from indexer.segment_view import MAX_VIEW_STRING

MATCH_ALL: Final[dict[str, Any]] = {"match_all": {}}
MATCH_NONE: Final[dict[str, Any]] = {"match_none": {}}

_PATH: Final = f"{Field.FILTER_VIEW}.{ViewLeaf.P}"
_STRING: Final = f"{Field.FILTER_VIEW}.{ViewLeaf.S}"
_NUMBER: Final = f"{Field.FILTER_VIEW}.{ViewLeaf.N}"
_ORDER: Final = f"{Field.FILTER_VIEW}.{ViewLeaf.O}"
_INSTANT: Final = f"{Field.FILTER_VIEW}.{ViewLeaf.T}"
_BOOLEAN: Final = f"{Field.FILTER_VIEW}.{ViewLeaf.B}"
_RANGE_KEY: Final = {
    MORE_THAN: "gt",
    MORE_THAN_EQUAL: "gte",
    LESS_THAN: "lt",
    LESS_THAN_EQUAL: "lte",
}


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
    if condition.operator == HAS_VALUE:
        return _leaf(condition.path, None)
    if condition.operator == IS_UNKNOWN:
        return _not(_leaf(condition.path, None))
    test = _test(condition, now_us)
    positive = MATCH_NONE if test is None else _leaf(condition.path, test)
    if condition.operator in NEGATED:
        return MATCH_ALL if test is None else _not(positive)
    return positive


def _leaf(path: str, test: dict[str, Any] | None) -> dict[str, Any]:
    """The customers whose leaf at ``path`` exists and passes ``test``."""
    filters: list[dict[str, Any]] = [{"term": {_PATH: path}}]
    if test is not None:
        filters.append(test)
    return {"nested": {"path": Field.FILTER_VIEW, "query": {"bool": {"filter": filters}}}}


def _not(query: dict[str, Any]) -> dict[str, Any]:
    return {"bool": {"must_not": [query]}}


def _any(queries: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not queries:
        return None
    if len(queries) == 1:
        return queries[0]
    return {"bool": {"should": queries, "minimum_should_match": 1}}


def _test(condition: FieldCondition, now_us: int) -> dict[str, Any] | None:
    """The test on one leaf's sub-fields; None when no leaf can pass it."""
    operator, values = condition.operator, condition.values
    if operator in EQUALITY:
        strings = [v for v in values if isinstance(v, str) and len(v) <= MAX_VIEW_STRING]
        flags = [v for v in values if isinstance(v, bool)]
        numbers = [v for v in values if isinstance(v, float)]
        terms = [
            {"terms": {name: sorted(set(found), key=repr)}}
            for name, found in ((_STRING, strings), (_NUMBER, numbers), (_BOOLEAN, flags))
            if found
        ]
        return _any(terms)
    if operator in ORDERED:
        bound = ordering_bound(operator, values)
        return {"range": {_ORDER: {_RANGE_KEY[operator]: bound}}}
    if operator in DATES:
        bound_us = date_bound(operator, values, now_us)
        return {"range": {_INSTANT: {"lt" if operator == BEFORE else "gt": bound_us}}}
    texts = sorted({v for v in values if isinstance(v, str)})
    if operator == STARTS_WITH:
        return _any([{"prefix": {_STRING: text}} for text in texts])
    if operator == CONTAINS:
        return _any([_wildcard(f"*{escape_wildcard(text)}*") for text in texts])
    if operator == ENDS_WITH:
        return _any([_wildcard(f"*{escape_wildcard(text)}") for text in texts])
    raise AssertionError(f"operator without a query: {operator}")  # parse_filter refuses it


def _wildcard(pattern: str) -> dict[str, Any]:
    return {"wildcard": {_STRING: {"value": pattern}}}


def escape_wildcard(text: str) -> str:
    """``text`` as a literal in a wildcard pattern: ``\\``, ``*`` and ``?`` escaped."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
