"""Unit tests of ``indexer/segment_query.py``: the Elasticsearch query of each operator and
junction, the order-preserving keys, escaping, and the project filter.
``tests/integration/test_segment_query_es.py`` holds these queries against a real index."""

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
from indexer.segment_view import instant_key, number_key

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


def known(path: str) -> dict[str, Any]:
    valued = [{"prefix": {name: f"{path}\x00"}} for name in (STRING, NUMBER, FLAG)]
    return {"bool": {"should": [{"term": {PATH: path}}, *valued], "minimum_should_match": 1}}


def terms(field_name: str, path: str, *values: str) -> dict[str, Any]:
    return {"terms": {field_name: sorted(f"{path}\x00{value}" for value in values)}}


def above(field_name: str, path: str, key: str, *, inclusive: bool = False) -> dict[str, Any]:
    edge = f"{path}\x00{key}"
    return {"range": {field_name: {"gte" if inclusive else "gt": edge, "lt": f"{path}\x01"}}}


def below(field_name: str, path: str, key: str, *, inclusive: bool = False) -> dict[str, Any]:
    edge = f"{path}\x00{key}"
    return {"range": {field_name: {"gte": f"{path}\x00", "lte" if inclusive else "lt": edge}}}


def ordered(path: str, key: str, *, up: bool, inclusive: bool = False) -> dict[str, Any]:
    """Numbers in ``n`` and numeric strings in ``o``."""
    side = above if up else below
    return any_of(*(side(name, path, key, inclusive=inclusive) for name in (NUMBER, ORDER)))


def negated(inner: dict[str, Any]) -> dict[str, Any]:
    return {"bool": {"must_not": [inner]}}


def any_of(*queries: dict[str, Any]) -> dict[str, Any]:
    return {"bool": {"should": list(queries), "minimum_should_match": 1}}


def test_sub_field_names_are_the_read_models() -> None:
    names = (ViewLeaf.P, ViewLeaf.S, ViewLeaf.N, ViewLeaf.O, ViewLeaf.T, ViewLeaf.B)
    assert names == ("p", "s", "n", "o", "t", "b")


@pytest.mark.parametrize(
    ("number", "key"),
    [
        (0.0, "8000000000000000"),
        (-0.0, "8000000000000000"),
        (1.0, "bff0000000000000"),
        (-1.0, "400fffffffffffff"),
        (float("inf"), "fff0000000000000"),
        (float("-inf"), "000fffffffffffff"),
    ],
)
def test_number_keys(number: float, key: str) -> None:
    assert number_key(number) == key


def test_number_and_instant_keys_sort_as_their_values() -> None:
    numbers = [-1e308, -2.5, -1.0, -5e-324, 0.0, 5e-324, 1.0, 2.0, 1e15, 2.0**53, 1e308]
    assert sorted(numbers, key=number_key) == numbers
    assert len({number_key(n) for n in numbers}) == len(numbers)
    instants = [-(2**63), -1, 0, 1, NOW_US, 2**63 - 1]
    assert sorted(instants, key=instant_key) == instants
    assert instant_key(2**70) == instant_key(2**63 - 1)  # clamped
    assert instant_key(-(2**70)) == instant_key(-(2**63))


K1, K3, K5, K0, K53 = (number_key(n) for n in (1.0, 3.0, 5.0, 0.0, 2.0**53))
T_MAY = instant_key(1_714_521_600_000_000)


@pytest.mark.parametrize(
    ("operator", "values", "expected"),
    [
        ("$has_value", [], known("m.x")),
        ("$is_unknown", True, negated(known("m.x"))),
        ("$is", "gold", terms(STRING, "m.x", "gold")),
        ("$is", [5], terms(NUMBER, "m.x", K5)),
        ("$is", [True], terms(FLAG, "m.x", "true")),
        (
            "$in",
            ["a", 1, False, "a", 1.0],
            any_of(
                terms(STRING, "m.x", "a"), terms(NUMBER, "m.x", K1), terms(FLAG, "m.x", "false")
            ),
        ),
        ("$is_not", ["a"], negated(terms(STRING, "m.x", "a"))),
        ("$not_in", [-0.0], negated(terms(NUMBER, "m.x", K0))),
        ("$in", [], MATCH_NONE),
        ("$not_in", [], MATCH_ALL),
        # A string no view value holds is left out.
        ("$is", ["x" * 513], MATCH_NONE),
        ("$is_not", ["x" * 513], MATCH_ALL),
        ("$is", ["x" * 513, "y"], terms(STRING, "m.x", "y")),
        ("$more_than", [3, "1"], ordered("m.x", K1, up=True)),
        ("$more_than_equal", [3, 1], ordered("m.x", K1, up=True, inclusive=True)),
        ("$less_than", ["-0", -5], ordered("m.x", K0, up=False)),
        ("$less_than_equal", [2**53 + 1], ordered("m.x", K53, up=False, inclusive=True)),
        ("$starts_with", ["a*"], {"prefix": {STRING: "m.x\x00a*"}}),
        ("$contains", ["a*b"], {"wildcard": {STRING: {"value": "m.x\x00*a\\*b*"}}}),
        ("$ends_with", ["?"], {"wildcard": {STRING: {"value": "m.x\x00*\\?"}}}),
        ("$contains", [""], {"wildcard": {STRING: {"value": "m.x\x00**"}}}),
        (
            "$starts_with",
            ["b", "a", "b"],
            any_of({"prefix": {STRING: "m.x\x00a"}}, {"prefix": {STRING: "m.x\x00b"}}),
        ),
        ("$before", ["2024-05-01"], below(INSTANT, "m.x", T_MAY)),
        ("$after", ["2024-05-01T02:00:00+02:00", "2025-01-01"], above(INSTANT, "m.x", T_MAY)),
    ],
)
def test_operator_queries(operator: str, values: object, expected: dict[str, Any]) -> None:
    assert query(field("m.x", operator, values)) == expected


def test_a_path_is_escaped_in_wildcards() -> None:
    assert query(field("m.a*?", "$ends_with", ["z"])) == {
        "wildcard": {STRING: {"value": "m.a\\*\\?\x00*z"}}
    }


def test_relative_dates_are_bounds_at_now() -> None:
    raw = field("created_at", "$after", ["-P30D", "-P40D"])
    assert query(raw) == above(INSTANT, "created_at", instant_key(NOW_US - 40 * DAY_US))
    later = query(raw, NOW_US + DAY_US)
    assert later == above(INSTANT, "created_at", instant_key(NOW_US - 39 * DAY_US))
    mixed = field("created_at", "$before", ["-P1D", "2024-01-01"])
    assert query(mixed) == below(INSTANT, "created_at", instant_key(NOW_US - DAY_US))


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
    gold_query = terms(STRING, "m.tier", "gold")
    rich_query = ordered("loyalty.points", number_key(100.0), up=True)
    assert query({**gold, **rich}) == {"bool": {"filter": [gold_query, rich_query]}}
    assert query({"junction": "or", **gold, **rich}) == any_of(gold_query, rich_query)
    nested = {"junction": "or", **gold, "filters": [{**rich, "junction": "and"}]}
    assert query(nested) == any_of(gold_query, rich_query)
    assert query({"filters": [gold, {"junction": "or", **rich, **field("m.x", "$is", [1])}]}) == {
        "bool": {
            "filter": [
                gold_query,
                any_of(rich_query, terms(NUMBER, "m.x", K1)),
            ]
        }
    }


def test_several_operators_of_one_field_are_all_required() -> None:
    raw = {"loyalty.points": {"conditions": {"$more_than": [1], "$is_not": [5]}}}
    both = {
        "bool": {
            "filter": [
                ordered("loyalty.points", K1, up=True),
                negated(terms(NUMBER, "loyalty.points", K5)),
            ]
        }
    }
    assert query(raw) == both
    # Under "or" the field's operators form an "and" of their own, after the other fields.
    assert query({"junction": "or", **raw, **field("m.x", "$has_value", [])}) == any_of(
        known("m.x"), both
    )


@pytest.mark.parametrize(
    "raw", [{}, {"junction": "or"}, {"filters": []}, {"junction": "or", "filters": [{}]}]
)
def test_a_filter_without_conditions_matches_everyone(raw: dict[str, Any]) -> None:
    assert query(raw) == MATCH_ALL


def test_customer_query_adds_the_project() -> None:
    raw = field("email", "$has_value", [])
    project = {"term": {Field.PROJECT_ID: "proj_1"}}
    expected = {"bool": {"filter": [project, known("email")]}}
    assert customer_query("proj_1", compile_filter(raw), NOW_US) == expected
    assert customer_query("proj_1", parse_filter(raw), NOW_US) == expected
    assert compile_filter(raw).query(NOW_US) == known("email")


def test_a_path_holding_a_nul_names_no_leaf() -> None:
    assert query(field("m.a\x00b", "$has_value", [])) == MATCH_NONE
    assert query(field("m.a\x00b", "$is_unknown", True)) == MATCH_ALL
    assert query(field("m.a\x00b", "$is", ["c"])) == MATCH_NONE
    assert query(field("m.a\x00b", "$not_in", ["c"])) == MATCH_ALL


def test_queries_are_json() -> None:
    raw = {
        "junction": "or",
        "metadata.é": {"conditions": {"$contains": ["\U0001f600"], "$is": [1e308, True]}},
        "filters": [field("created_at", "$before", ["PT0.5S"])],
    }
    encoded = orjson.dumps(customer_query("p", compile_filter(raw), NOW_US))
    assert orjson.loads(encoded) == customer_query("p", compile_filter(raw), NOW_US)

