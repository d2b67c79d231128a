"""Unit tests of ``indexer/segment_query.py``: the Elasticsearch query of each operator and
junction, escaping, and the project filter. ``tests/integration/test_segment_query_es.py``
holds these queries against a real index."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from cache.readmodel.indices import Field, ViewLeaf
from indexer.segment_filter import compile_filter, parse_filter
from indexer.segment_query import (
    MATCH_ALL,
    MATCH_NONE,
    customer_query,
    escape_wildcard,
    to_query,
)

NOW_US = 1_717_243_200_000_000  # 2024-06-01T12:00:00Z
DAY_US = 86_400_000_000
FV = Field.FILTER_VIEW
PATH, STRING, NUMBER, ORDER, INSTANT, FLAG = (
    f"{FV}.{name}" for name in ("p", "s", "n", "o", "t", "b")
)


def query(raw: Any, now_us: int = NOW_US) -> dict[str, Any]:
    return to_query(parse_filter(raw), now_us)


def field(path: str, operator: str, values: object) -> dict[str, Any]:
    return {path: {"conditions": {operator: values}}}


def leaf(path: str, *tests: dict[str, Any]) -> dict[str, Any]:
    return {"nested": {"path": FV, "query": {"bool": {"filter": [{"term": {PATH: path}}, *tests]}}}}


def negated(inner: dict[str, Any]) -> dict[str, Any]:
    return {"bool": {"must_not": [inner]}}


def any_of(*queries: dict[str, Any]) -> dict[str, Any]:
    return {"bool": {"should": list(queries), "minimum_should_match": 1}}


def test_sub_field_names_are_the_read_models() -> None:
    names = (ViewLeaf.P, ViewLeaf.S, ViewLeaf.N, ViewLeaf.O, ViewLeaf.T, ViewLeaf.B)
    assert names == ("p", "s", "n", "o", "t", "b")


@pytest.mark.parametrize(
    ("operator", "values", "expected"),
    [
        ("$has_value", [], leaf("m.x")),
        ("$is_unknown", True, negated(leaf("m.x"))),
        ("$is", "gold", leaf("m.x", {"terms": {STRING: ["gold"]}})),
        ("$is", [5], leaf("m.x", {"terms": {NUMBER: [5.0]}})),
        ("$is", [True], leaf("m.x", {"terms": {FLAG: [True]}})),
        (
            "$in",
            ["a", 1, False, "a", 1.0],
            leaf(
                "m.x",
                any_of(
                    {"terms": {STRING: ["a"]}},
                    {"terms": {NUMBER: [1.0]}},
                    {"terms": {FLAG: [False]}},
                ),
            ),
        ),
        ("$is_not", ["a"], negated(leaf("m.x", {"terms": {STRING: ["a"]}}))),
        ("$not_in", [-0.0], negated(leaf("m.x", {"terms": {NUMBER: [0.0]}}))),
        ("$in", [], MATCH_NONE),
        ("$not_in", [], MATCH_ALL),
        # A string no view value holds (and no keyword term may be) is left out.
        ("$is", ["x" * 513], MATCH_NONE),
        ("$is_not", ["x" * 513], MATCH_ALL),
        ("$is", ["x" * 513, "y"], leaf("m.x", {"terms": {STRING: ["y"]}})),
        ("$more_than", [3, "1"], leaf("m.x", {"range": {ORDER: {"gt": 1.0}}})),
        ("$more_than_equal", [3, 1], leaf("m.x", {"range": {ORDER: {"gte": 1.0}}})),
        ("$less_than", ["-0", -5], leaf("m.x", {"range": {ORDER: {"lt": 0.0}}})),
        ("$less_than_equal", [2**53 + 1], leaf("m.x", {"range": {ORDER: {"lte": 2.0**53}}})),
        ("$starts_with", ["a*"], leaf("m.x", {"prefix": {STRING: "a*"}})),
        ("$contains", ["a*b"], leaf("m.x", {"wildcard": {STRING: {"value": "*a\\*b*"}}})),
        ("$ends_with", ["?"], leaf("m.x", {"wildcard": {STRING: {"value": "*\\?"}}})),
        ("$contains", [""], leaf("m.x", {"wildcard": {STRING: {"value": "**"}}})),
        (
            "$starts_with",
            ["b", "a", "b"],
            leaf("m.x", any_of({"prefix": {STRING: "a"}}, {"prefix": {STRING: "b"}})),
        ),
        (
            "$before",
            ["2024-05-01"],
            leaf("m.x", {"range": {INSTANT: {"lt": 1_714_521_600_000_000}}}),
        ),
        (
            "$after",
            ["2024-05-01T02:00:00+02:00", "2025-01-01"],
            leaf("m.x", {"range": {INSTANT: {"gt": 1_714_521_600_000_000}}}),
        ),
    ],
)
def test_operator_queries(operator: str, values: object, expected: dict[str, Any]) -> None:
    assert query(field("m.x", operator, values)) == expected


def test_relative_dates_are_bounds_at_now() -> None:
    raw = field("created_at", "$after", ["-P30D", "-P40D"])
    assert query(raw) == leaf("created_at", {"range": {INSTANT: {"gt": NOW_US - 40 * DAY_US}}})
    later = query(raw, NOW_US + DAY_US)
    assert later == leaf("created_at", {"range": {INSTANT: {"gt": NOW_US - 39 * DAY_US}}})
    mixed = field("created_at", "$before", ["-P1D", "2024-01-01"])
    assert query(mixed) == leaf("created_at", {"range": {INSTANT: {"lt": NOW_US - DAY_US}}})


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("plain", "plain"),
        ("a*b", "a\\*b"),
        ("a?b", "a\\?b"),
        ("a\\b", "a\\\\b"),
        ("\\*", "\\\\\\*"),
        ("*?\\", "\\*\\?\\\\"),
        ("zażółć \U0001f600", "zażółć \U0001f600"),
    ],
)
def test_wildcard_escaping(text: str, pattern: str) -> None:
    assert escape_wildcard(text) == pattern


def test_junctions() -> None:
    gold = field("m.tier", "$is", ["gold"])
    rich = field("loyalty.points", "$more_than", [100])
    gold_query = leaf("m.tier", {"terms": {STRING: ["gold"]}})
    rich_query = leaf("loyalty.points", {"range": {ORDER: {"gt": 100.0}}})
    assert query({**gold, **rich}) == {"bool": {"filter": [gold_query, rich_query]}}
    assert query({"junction": "or", **gold, **rich}) == any_of(gold_query, rich_query)
    nested = {"junction": "or", **gold, "filters": [{**rich, "junction": "and"}]}
    assert query(nested) == any_of(gold_query, rich_query)
    assert query({"filters": [gold, {"junction": "or", **rich, **field("m.x", "$is", [1])}]}) == {
        "bool": {
            "filter": [
                gold_query,
                any_of(rich_query, leaf("m.x", {"terms": {NUMBER: [1.0]}})),
            ]
        }
    }


def test_several_operators_of_one_field_are_all_required() -> None:
    raw = {"loyalty.points": {"conditions": {"$more_than": [1], "$is_not": [5]}}}
    both = {
        "bool": {
            "filter": [
                leaf("loyalty.points", {"range": {ORDER: {"gt": 1.0}}}),
                negated(leaf("loyalty.points", {"terms": {NUMBER: [5.0]}})),
            ]
        }
    }
    assert query(raw) == both
    # Under "or" the field's operators form an "and" of their own, after the other fields.
    assert query({"junction": "or", **raw, **field("m.x", "$has_value", [])}) == any_of(
        leaf("m.x"), both
    )


@pytest.mark.parametrize(
    "raw", [{}, {"junction": "or"}, {"filters": []}, {"junction": "or", "filters": [{}]}]
)
def test_a_filter_without_conditions_matches_everyone(raw: dict[str, Any]) -> None:
    assert query(raw) == MATCH_ALL


def test_customer_query_adds_the_project() -> None:
    raw = field("email", "$has_value", [])
    project = {"term": {Field.PROJECT_ID: "proj_1"}}
    expected = {"bool": {"filter": [project, leaf("email")]}}
    assert customer_query("proj_1", compile_filter(raw), NOW_US) == expected
    assert customer_query("proj_1", parse_filter(raw), NOW_US) == expected
    assert compile_filter(raw).query(NOW_US) == leaf("email")


def test_queries_are_json() -> None:
    raw = {
        "junction": "or",
        "metadata.é": {"conditions": {"$contains": ["\U0001f600"], "$is": [1e308, True]}},
        "filters": [field("created_at", "$before", ["PT0.5S"])],
    }
    encoded = orjson.dumps(customer_query("p", compile_filter(raw), NOW_US))
    assert orjson.loads(encoded) == customer_query("p", compile_filter(raw), NOW_US)
