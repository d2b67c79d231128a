"""Unit tests of ``indexer/segment_filter.py``: operator semantics, structure, limits, totality,
relative dates, and the filter view's caps as filters see them."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from indexer.errors import IndexerError
from indexer.segment_filter import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_TEXT_VALUE,
    DateBound,
    FieldCondition,
    InvalidSegmentFilter,
    Node,
    SegmentFilter,
    compile_filter,
    parse_filter,
)
from indexer.segment_view import (
    MAX_PATH_LENGTH,
    MAX_PATH_NAMES,
    MAX_TENANT_LEAVES,
    MAX_VIEW_STRING,
    filter_view,
)

# No example database: these tests must leave no files behind in the work tree.
PROPERTY = settings(database=None, max_examples=300, deadline=None)
NOW_US = 1_717_243_200_000_000  # 2024-06-01T12:00:00Z
DAY_US = 86_400_000_000

OPERATORS = (
    "$is", "$is_not", "$in", "$not_in", "$more_than", "$more_than_equal", "$less_than",
    "$less_than_equal", "$contains", "$starts_with", "$ends_with", "$is_unknown", "$has_value",
    "$before", "$after",
)  # fmt: skip


def make_customer(**changes: Any) -> dict[str, Any]:
    """A customer object as docs/api.md §3 serves it; keyword arguments replace top-level fields."""
    customer: dict[str, Any] = {
        "id": "cust_1",
        "source_id": "src-1",
        "object": "customer",
        "name": "Ada Lovelace",
        "email": "Ada@Example.com",
        "phone": "+48 600 000 000",
        "address": {
            "city": "Warsaw",
            "state": None,
            "line_1": "Main 1",
            "line_2": None,
            "country": "PL",
            "postal_code": "00-001",
        },
        "metadata": {"tier": "gold", "visits": 12, "score": "7.5", "vip": True,
                     "nested": {"key": "deep"}, "tags": ["a", "b"]},
        "summary": {
            "redemptions": {
                "total_redeemed": 5,
                "total_succeeded": 4,
                "total_failed": 1,
                "gift": {"redeemed_amount": 2500},
                "loyalty_card": {"redeemed_points": 300},
            }
        },
        "loyalty": {"points": 120},
        "created_at": "2024-05-01T10:00:00.123456Z",
        "updated_at": "2024-05-02T08:30:00.000000Z",
    }  # fmt: skip
    customer.update(changes)
    return customer


def field(path: str, operator: str, values: object) -> dict[str, Any]:
    return {path: {"conditions": {operator: values}}}


def matches(raw: object, customer: Mapping[str, Any]) -> bool:
    return compile_filter(raw)(customer)


def holds(operator: str, values: object, value: object) -> bool:
    """Whether ``operator`` with ``values`` holds for a customer whose ``metadata.x`` is value."""
    return matches(field("metadata.x", operator, values), {"metadata": {"x": value}})


# --- operators --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "values", "value", "expected"),
    [
        # $is: exact JSON equality, numbers numerically, strings case-sensitively.
        ("$is", ["gold"], "gold", True),
        ("$is", ["gold"], "Gold", False),
        ("$is", ["gold"], "gold ", False),
        ("$is", [5], 5, True),
        ("$is", [5], 5.0, True),
        ("$is", [5.0], 5, True),
        ("$is", [5], 6, False),
        ("$is", [5], "5", False),
        ("$is", ["5"], 5, False),
        ("$is", [True], True, True),
        ("$is", [True], 1, False),
        ("$is", [1], True, False),
        ("$is", [False], 0, False),
        ("$is", [0], False, False),
        ("$is", [False], False, True),
        ("$is", ["a"], ["a"], False),
        ("$is", ["a"], {"a": 1}, False),
        ("$is", ["gold", "silver"], "silver", True),
        ("$is", "gold", "gold", True),
        # $is_not: the negation of $is.
        ("$is_not", ["gold"], "gold", False),
        ("$is_not", ["gold"], "silver", True),
        ("$is_not", ["gold"], "GOLD", True),
        ("$is_not", [1], True, True),
        ("$is_not", [5], 5.0, False),
        ("$is_not", ["gold", "silver"], "silver", False),
        ("$is_not", ["gold", "silver"], "bronze", True),
        ("$is_not", ["a"], ["a"], True),
        # $in / $not_in: membership.
        ("$in", ["gold", "silver"], "gold", True),
        ("$in", ["gold", "silver"], "bronze", False),
        ("$in", [1, 2, 3], 2.0, True),
        ("$in", [1, 2, 3], True, False),
        ("$in", [True], 1, False),
        ("$in", [], "gold", False),
        ("$not_in", ["gold", "silver"], "gold", False),
        ("$not_in", ["gold", "silver"], "bronze", True),
        ("$not_in", [1], True, True),
        ("$not_in", [], "gold", True),
        # Ordering: numbers, and numeric strings on either side.
        ("$more_than", [10], 11, True),
        ("$more_than", [10], 10, False),
        ("$more_than", [10], 10.5, True),
        ("$more_than", [10], "11", True),
        ("$more_than", ["10"], 11, True),
        ("$more_than", [10], "1e2", True),
        ("$more_than", [-1], "-0.5", True),
        ("$more_than", [0], ".5", True),
        ("$more_than", [10], "eleven", False),
        ("$more_than", [10], " 11", False),
        ("$more_than", [10], "1_1", False),
        ("$more_than", [10], "inf", False),
        ("$more_than", [10], "nan", False),
        ("$more_than", [10], "1e400", False),
        ("$more_than", [0], True, False),
        ("$more_than", [0], [1], False),
        ("$more_than", [10, 20], 15, True),  # any of the values: more than the lowest
        ("$more_than_equal", [10], 10, True),
        ("$more_than_equal", [10], 10.0, True),
        ("$more_than_equal", [10], 9.99, False),
        ("$less_than", [10], 9, True),
        ("$less_than", [10], 10, False),
        ("$less_than", [10], "-3", True),
        ("$less_than", [10, 20], 15, True),  # any of the values: less than the highest
        ("$less_than", [10], None, False),
        ("$less_than_equal", [10], 10, True),
        ("$less_than_equal", [10], 11, False),
        ("$less_than_equal", [2**70], 2**70, True),
        # Numbers are IEEE doubles, as in Elasticsearch: 2**53 + 1 is 2**53.
        ("$is", [2**53], 2**53 + 1, True),
        ("$is_not", [2**53], 2**53 + 1, False),
        ("$more_than", [2**53], 2**53 + 1, False),
        ("$more_than", ["9007199254740992"], "9007199254740993", False),
        # Signed zeros are one number, on both sides.
        ("$is", [0], -0.0, True),
        ("$is", [-0.0], 0, True),
        ("$in", [-0.0], 0.0, True),
        ("$more_than_equal", [0], -0.0, True),
        ("$more_than_equal", [0.0], "-0", True),
        ("$less_than", [0], -0.0, False),
        ("$less_than", [-0.0], "-0.0", False),
        ("$more_than", ["-0"], 0, False),
        # A number no double holds is a value that equals and orders nothing.
        ("$is", [1], 10**400, False),
        ("$is_not", [1], 10**400, True),
        ("$more_than", [0], 10**400, False),
        ("$has_value", [], 10**400, True),
        ("$has_value", [], math.nan, True),
        ("$is_not", [1], math.inf, True),
        # Text operators: strings only, case-sensitive.
        ("$contains", ["old"], "gold", True),
        ("$contains", ["OLD"], "gold", False),
        ("$contains", [""], "gold", True),
        ("$contains", ["x", "ol"], "gold", True),
        ("$contains", ["1"], 12, False),
        ("$contains", ["a"], ["a"], False),
        ("$starts_with", ["go"], "gold", True),
        ("$starts_with", ["Go"], "gold", False),
        ("$starts_with", ["x", "g"], "gold", True),
        ("$starts_with", ["1"], 12, False),
        ("$ends_with", ["ld"], "gold", True),
        ("$ends_with", ["LD"], "gold", False),
        ("$ends_with", ["2"], 12, False),
        # Wildcard characters are literal.
        ("$contains", ["a*b"], "xa*by", True),
        ("$contains", ["a*b"], "axxb", False),
        ("$contains", ["a?b"], "axb", False),
        ("$starts_with", ["a\\"], "a\\b", True),
        ("$ends_with", ["?"], "what?", True),
        ("$ends_with", ["?"], "whatx", False),
        # Strings over MAX_VIEW_STRING characters equal and contain nothing.
        ("$is", ["x" * MAX_VIEW_STRING], "x" * MAX_VIEW_STRING, True),
        ("$is", ["x" * (MAX_VIEW_STRING + 1)], "x" * (MAX_VIEW_STRING + 1), False),
        ("$ends_with", ["x"], "x" * MAX_VIEW_STRING, True),
        ("$ends_with", ["x"], "x" * (MAX_VIEW_STRING + 1), False),
        ("$contains", [""], "x" * (MAX_VIEW_STRING + 1), False),
        ("$is_not", ["x"], "x" * (MAX_VIEW_STRING + 1), True),
        ("$has_value", [], "x" * (MAX_VIEW_STRING + 1), True),
        # Presence.
        ("$is_unknown", [], None, True),
        ("$is_unknown", [], "", False),
        ("$is_unknown", [True], 0, False),
        ("$is_unknown", True, False, False),
        ("$has_value", [], None, False),
        ("$has_value", [], "", True),
        ("$has_value", [], 0, True),
        ("$has_value", None, False, True),
        ("$has_value", [], {}, True),
        # Objects and lists: only $is_not, $not_in and $has_value hold.
        ("$has_value", [], [], True),
        ("$is_not", ["a"], {"a": "a"}, True),
        ("$not_in", [1], [1], True),
        ("$in", [1], [1], False),
        ("$more_than_equal", [0], {"x": 1}, False),
        ("$contains", [""], [], False),
        ("$starts_with", [""], {}, False),
        ("$before", ["2100-01-01"], ["2024-01-01"], False),
    ],
)
def test_operator(operator: str, values: object, value: object, expected: bool) -> None:
    assert holds(operator, values, value) is expected


@pytest.mark.parametrize(
    ("operator", "values", "value", "expected"),
    [
        ("$after", ["2024-01-01"], "2024-05-01T10:00:00.123456Z", True),
        ("$after", ["2024-06-01"], "2024-05-01T10:00:00.123456Z", False),
        ("$before", ["2024-06-01"], "2024-05-01T10:00:00.123456Z", True),
        ("$before", ["2024-01-01"], "2024-05-01T10:00:00.123456Z", False),
        # Strict: the same instant is neither before nor after.
        ("$after", ["2024-05-01T10:00:00Z"], "2024-05-01T10:00:00Z", False),
        ("$before", ["2024-05-01T10:00:00Z"], "2024-05-01T10:00:00Z", False),
        # Instants, not text: offsets are honoured.
        ("$after", ["2024-05-01T10:00:00Z"], "2024-05-01T11:30:00+01:00", True),
        ("$before", ["2024-05-01T10:00:00Z"], "2024-05-01T11:30:00+02:00", True),
        ("$after", ["2024-05-01T12:00:00+02:00"], "2024-05-01T10:00:00.000001Z", True),
        # A date-only value is midnight UTC; a naive value is UTC.
        ("$after", ["2024-05-01"], "2024-05-01T00:00:00Z", False),
        ("$after", ["2024-05-01"], "2024-05-01T00:00:00.000001Z", True),
        ("$before", ["2024-05-01"], "2024-04-30T23:59:59.999999Z", True),
        ("$before", ["2024-05-01"], "2024-05-01T01:00:00+02:00", True),
        ("$after", ["2024-05-01T10:00:00"], "2024-05-01T10:00:01Z", True),
        ("$after", ["2024-05-01T10:00:00Z"], "2024-05-01T10:00:01", True),
        ("$after", ["2024-01-01"], "2024-01-02", True),
        # More than six fractional digits are truncated, not refused.
        ("$after", ["2024-01-01"], "2024-05-01T10:00:00.123456789Z", True),
        # Any of the values: after the earliest, before the latest.
        ("$after", ["2025-01-01", "2024-01-01"], "2024-05-01T00:00:00Z", True),
        ("$before", ["2024-01-01", "2025-01-01"], "2024-05-01T00:00:00Z", True),
        # Customer values that are not timestamps never match.
        ("$after", ["2024-01-01"], "yesterday", False),
        ("$after", ["2024-01-01"], "", False),
        ("$after", ["2024-01-01"], 1714557600, False),
        ("$after", ["2024-01-01"], None, False),
        ("$before", ["2024-01-01"], ["2023-01-01"], False),
        ("$before", "2024-01-01", "2023-12-31T23:59:59Z", True),
    ],
)
def test_date_operator(operator: str, values: object, value: object, expected: bool) -> None:
    assert matches(field("created_at", operator, values), {"created_at": value}) is expected


def test_every_operator_is_covered() -> None:
    # Each operator compiles with a fitting value: the list above is the contract's full set.
    sample: dict[str, object] = {"$before": ["2024-01-01"], "$after": ["2024-01-01"]}
    for operator in OPERATORS:
        values = sample.get(operator, [] if operator in ("$is_unknown", "$has_value") else ["1"])
        assert isinstance(compile_filter(field("email", operator, values)), SegmentFilter)


# --- unknown fields ---------------------------------------------------------------------------

UNKNOWN_FIELD = [
    ("$is", ["gold"], False),
    ("$is_not", ["gold"], True),
    ("$in", ["gold"], False),
    ("$not_in", ["gold"], True),
    ("$more_than", [0], False),
    ("$more_than_equal", [0], False),
    ("$less_than", [0], False),
    ("$less_than_equal", [0], False),
    ("$contains", [""], False),
    ("$starts_with", [""], False),
    ("$ends_with", [""], False),
    ("$is_unknown", [], True),
    ("$has_value", [], False),
    ("$before", ["2100-01-01"], False),
    ("$after", ["1900-01-01"], False),
]


@pytest.mark.parametrize(("operator", "values", "expected"), UNKNOWN_FIELD)
@pytest.mark.parametrize(
    ("path", "customer"),
    [
        ("metadata.missing", make_customer()),  # key absent
        ("metadata.tier", make_customer(metadata={"tier": None})),  # JSON null
        ("address.country", make_customer(address=None)),  # null object on the way
        ("metadata.tier.level", make_customer()),  # a string on the way
        ("metadata.tags.0", make_customer()),  # lists are not indexed into
        ("summary.redemptions.gift.redeemed_amount", make_customer(summary={})),
        ("email", {}),  # an empty customer
        ("no_such_top_level", make_customer()),
    ],
)
def test_unknown_field(
    path: str, customer: dict[str, Any], operator: str, values: object, expected: bool
) -> None:
    assert matches(field(path, operator, values), customer) is expected


@pytest.mark.parametrize(("operator", "values", "expected"), UNKNOWN_FIELD)
@pytest.mark.parametrize("customer", [None, "cust_1", 42, [], ["metadata"], object()])
def test_not_a_customer_object_reads_as_all_fields_unknown(
    customer: Any, operator: str, values: object, expected: bool
) -> None:
    assert compile_filter(field("metadata.tier", operator, values))(customer) is expected


# --- field paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "operator", "values"),
    [
        ("metadata.tier", "$is", ["gold"]),
        ("metadata.nested.key", "$is", ["deep"]),
        ("address.country", "$in", ["PL", "DE"]),
        ("summary.redemptions.total_succeeded", "$more_than_equal", [4]),
        ("summary.redemptions.gift.redeemed_amount", "$is", [2500]),
        ("summary.redemptions.loyalty_card.redeemed_points", "$less_than", [301]),
        ("loyalty.points", "$more_than", [100]),
        ("email", "$ends_with", ["@Example.com"]),
        ("created_at", "$after", ["2024-04-30"]),
        ("updated_at", "$before", ["2024-05-03"]),
        ("metadata.vip", "$is", [True]),
        ("metadata.score", "$more_than", [7]),
        ("address.state", "$is_unknown", []),
        ("object", "$is", ["customer"]),
    ],
)
def test_paths_into_the_customer_object(path: str, operator: str, values: object) -> None:
    assert matches(field(path, operator, values), make_customer())


def test_emails_compare_case_sensitively() -> None:
    assert not matches(field("email", "$is", ["ada@example.com"]), make_customer())
    assert matches(field("email", "$is", ["Ada@Example.com"]), make_customer())


def test_a_key_with_a_dot_is_not_reachable() -> None:
    # Dots always separate path segments: a metadata key "a.b" is read as a → b.
    customer = make_customer(metadata={"a.b": 1, "a": {"b": 2}})
    assert matches(field("metadata.a.b", "$is", [2]), customer)


def test_any_mapping_is_walked() -> None:
    class Frozen(Mapping[str, Any]):
        def __init__(self, data: dict[str, Any]) -> None:
            self._data = data

        def __getitem__(self, key: str) -> Any:
            return self._data[key]

        def __iter__(self) -> Any:
            return iter(self._data)

        def __len__(self) -> int:
            return len(self._data)

    customer = Frozen({"metadata": Frozen({"tier": "gold"})})
    assert matches(field("metadata.tier", "$is", ["gold"]), customer)


# --- conditions and junctions -----------------------------------------------------------------


def test_all_operators_of_one_conditions_object_must_hold() -> None:
    raw = {"loyalty.points": {"conditions": {"$more_than": [100], "$less_than": [200]}}}
    assert matches(raw, make_customer(loyalty={"points": 150}))
    assert not matches(raw, make_customer(loyalty={"points": 250}))
    assert not matches(raw, make_customer(loyalty={"points": 50}))
    assert not matches(raw, make_customer(loyalty=None))


def test_junction_defaults_to_and() -> None:
    raw = {**field("metadata.tier", "$is", ["gold"]), **field("loyalty.points", "$less_than", [9])}
    assert not matches(raw, make_customer())
    assert matches({**raw, "junction": "or"}, make_customer())
    assert not matches({**raw, "junction": "and"}, make_customer())


@pytest.mark.parametrize("junction", ["and", "or", None])
@pytest.mark.parametrize("nested", [False, True])
def test_an_empty_filter_matches_everyone(junction: str | None, nested: bool) -> None:
    raw: dict[str, Any] = {} if junction is None else {"junction": junction}
    if nested:
        raw = {"junction": "and", "filters": [raw]}
    predicate = compile_filter(raw)
    assert predicate(make_customer())
    assert predicate({})


def test_empty_nested_filters_list_is_no_condition() -> None:
    assert matches({"junction": "or", "filters": []}, {})
    assert not matches({"junction": "or", "filters": [], **field("email", "$has_value", [])}, {})


def test_nested_filters_with_mixed_junctions() -> None:
    # tier is gold AND (points > 1000 OR (country is PL AND succeeded >= 4))
    raw = {
        "junction": "and",
        **field("metadata.tier", "$is", ["gold"]),
        "filters": [
            {
                "junction": "or",
                **field("loyalty.points", "$more_than", [1000]),
                "filters": [
                    {
                        "junction": "and",
                        **field("address.country", "$is", ["PL"]),
                        **field("summary.redemptions.total_succeeded", "$more_than_equal", [4]),
                    }
                ],
            }
        ],
    }
    base = make_customer()
    assert matches(raw, base)
    assert not matches(raw, make_customer(metadata={"tier": "silver"}))
    assert not matches(raw, make_customer(address={"country": "DE"}))
    assert matches(raw, make_customer(address={"country": "DE"}, loyalty={"points": 1001}))
    redemptions = copy.deepcopy(base["summary"])
    redemptions["redemptions"]["total_succeeded"] = 3
    assert not matches(raw, make_customer(summary=redemptions))
    assert matches(raw, make_customer(summary=redemptions, loyalty={"points": 5000}))


def test_or_of_nested_filters() -> None:
    raw = {
        "junction": "or",
        "filters": [field("metadata.tier", "$is", ["vip"]), field("email", "$contains", ["@"])],
    }
    assert matches(raw, make_customer())
    assert not matches(raw, make_customer(email=None))


def test_depth_and_condition_limits_are_inclusive() -> None:
    raw: dict[str, Any] = field("email", "$has_value", [])
    for _ in range(MAX_DEPTH - 1):
        raw = {"filters": [raw]}
    assert matches(raw, make_customer())
    widest: dict[str, Any] = {
        f"metadata.k{i}": {"conditions": {"$is_unknown": []}} for i in range(MAX_CONDITIONS)
    }
    assert matches(widest, make_customer())


# --- malformed filters ------------------------------------------------------------------------


def deep(levels: int) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for _ in range(levels - 1):
        raw = {"filters": [raw]}
    return raw


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "filter: a filter must be an object, got null"),
        ([], "filter: a filter must be an object, got a list"),
        ("{}", "a filter must be an object, got '{}'"),
        ({"junction": "xor"}, "junction must be \"and\" or \"or\", got 'xor'"),
        ({"junction": "AND"}, "junction must be"),
        ({"junction": None}, "got null"),
        ({"junction": ["and"]}, "got a list"),
        (field("email", "$iss", ["a"]), "filter['email'].conditions: unknown operator '$iss'"),
        (field("email", "is", ["a"]), "unknown operator 'is'"),
        ({"email": {"conditions": {1: ["a"]}}}, "unknown operator 1"),
        ({"email": {"conditions": {}}}, "filter['email'].conditions: expected an object naming"),
        ({"email": {"conditions": []}}, "expected an object naming at least one operator"),
        ({"email": {"conditions": "$is"}}, "expected an object naming at least one operator"),
        ({"email": {"$is": ["a"]}}, "filter['email']: expected {\"conditions\""),
        ({"email": {"conditions": {"$is": ["a"]}, "extra": 1}}, "expected {\"conditions\""),
        ({"email": ["a"]}, "expected {\"conditions\""),
        ({"email": "a"}, "expected {\"conditions\""),
        ({"$is": ["a"]}, "filter['$is']: an operator must sit inside a field's conditions"),
        (field("", "$is", ["a"]), "a field path is dot-separated names, none empty"),
        (field("metadata.", "$is", ["a"]), "none empty"),
        (field(".email", "$is", ["a"]), "none empty"),
        (field("metadata..tier", "$is", ["a"]), "none empty"),
        ({1: {"conditions": {"$is": ["a"]}}}, "a field path must be a string, got 1"),
        ({"filters": {}}, "filter.filters: expected a list of filters, got an object"),
        ({"filters": "x"}, "expected a list of filters"),
        ({"filters": [field("email", "$is", ["a"]), 3]}, "filter.filters[1]: a filter must be"),
        ({"filters": [{"filters": [field("email", "$nope", [])]}]},
         "filter.filters[0].filters[0]['email'].conditions: unknown operator '$nope'"),
        # Wrong value types.
        (field("email", "$is", []), "filter['email'].$is: needs at least one value"),
        (field("email", "$is_not", []), "$is_not: needs at least one value"),
        (field("email", "$is", [None]), "$is: null is not a comparison value"),
        (field("email", "$is", None), "null is not a comparison value"),
        (field("email", "$in", ["a", None]), "$in: null is not a comparison value"),
        (field("email", "$is", [["a"]]), "expected a string, number or boolean, got a list"),
        (field("email", "$not_in", [{"a": 1}]), "got an object"),
        (field("email", "$is", [math.nan]), "got nan"),
        (field("email", "$in", [math.inf]), "got inf"),
        (field("email", "$is", {"a": 1}), "$is: expected a list of values, got an object"),
        (field("loyalty.points", "$more_than", ["many"]), "$more_than: expected a number, got"),
        (field("loyalty.points", "$more_than", [True]), "expected a number, got true"),
        (field("loyalty.points", "$less_than", [None]), "expected a number, got null"),
        (field("loyalty.points", "$less_than_equal", [math.inf]), "expected a number, got inf"),
        (field("loyalty.points", "$more_than_equal", []), "needs at least one value"),
        (field("loyalty.points", "$more_than", [[1]]), "expected a number, got a list"),
        (field("created_at", "$before", ["yesterday"]),
         "$before: expected an ISO 8601 date or timestamp, or a duration such as -P30D, "
         "got 'yesterday'"),
        (field("created_at", "$after", [1714557600]), "expected an ISO 8601 date or timestamp"),
        (field("created_at", "$after", ["2024-13-01"]), "expected an ISO 8601 date"),
        (field("created_at", "$after", []), "$after: needs at least one value"),
        (field("email", "$contains", [1]), "$contains: expected a string, got 1"),
        (field("email", "$starts_with", [None]), "$starts_with: expected a string, got null"),
        (field("email", "$ends_with", []), "$ends_with: needs at least one value"),
        (field("email", "$is_unknown", [False]), "$is_unknown: takes no values"),
        (field("email", "$has_value", ["x"]), "$has_value: takes no values"),
        (field("email", "$has_value", False), "takes no values"),
        # Relative dates: signed durations of fixed-length units only.
        (field("created_at", "$after", ["-P1M"]),
         "$after: '-P1M': years and months are not accepted in a relative date"),
        (field("created_at", "$after", ["P1Y"]), "years and months are not accepted"),
        (field("created_at", "$before", ["-P"]), "expected a signed ISO 8601 duration"),
        (field("created_at", "$before", ["PT0.1234567S"]), "at most six digits"),
        (field("created_at", "$before", ["-p30d"]), "expected an ISO 8601 date or timestamp"),
        # Numbers beyond the double range, text that is not Unicode, long text values.
        (field("email", "$is", [10**400]), "$is: a number must fit a double"),
        (field("loyalty.points", "$more_than", [10**400]), "expected a number, got a value"),
        (field("email", "$is", ["a\ud800"]), "$is: 'a\\ud800' is not valid Unicode text"),
        (field("email", "$contains", ["\udfff"]), "is not valid Unicode text"),
        (field("email", "$contains", ["x" * (MAX_TEXT_VALUE + 1)]),
         f"$contains: a text value has at most {MAX_TEXT_VALUE} characters"),
        # Field paths the filter view cannot hold.
        (field(".".join(["m"] * (MAX_PATH_NAMES + 1)), "$has_value", []),
         f"a field path has at most {MAX_PATH_NAMES} names, got {MAX_PATH_NAMES + 1}"),
        (field("m" * (MAX_PATH_LENGTH + 1), "$has_value", []),
         f"a field path has at most {MAX_PATH_LENGTH} characters"),
        (field("metadata.\ud800", "$has_value", []), "a field path must be valid Unicode text"),
        # Bounds.
        (deep(MAX_DEPTH + 1), f"nested too deep (at most {MAX_DEPTH} levels of filters)"),
        (deep(10_000), "nested too deep"),
        ({"filters": [{}] * (MAX_CONDITIONS + 1)},
         f"filter.filters[{MAX_CONDITIONS}]: too many conditions (at most {MAX_CONDITIONS}"),
        ({f"m.k{i}": {"conditions": {"$has_value": []}} for i in range(MAX_CONDITIONS + 1)},
         "too many conditions"),
        ({"email": {"conditions": {op: ["1"] for op in ("$is", "$in", "$contains")}},
          "filters": [{}] * (MAX_CONDITIONS - 2)}, "too many conditions"),
    ],
)  # fmt: skip
def test_malformed_filter_is_refused_with_a_clear_message(raw: object, message: str) -> None:
    with pytest.raises(InvalidSegmentFilter) as caught:
        compile_filter(raw)
    assert message in str(caught.value)


def test_messages_stay_short_on_huge_values() -> None:
    with pytest.raises(InvalidSegmentFilter) as caught:
        compile_filter(field("x" * MAX_PATH_LENGTH, "$contains", [10**5000]))
    assert len(str(caught.value)) < 200
    assert str(caught.value).endswith("$contains: expected a string, got a value of type int")
    with pytest.raises(InvalidSegmentFilter) as caught:
        compile_filter(field("x" * 10_000, "$contains", ["a"]))
    assert len(str(caught.value)) < 200
    with pytest.raises(InvalidSegmentFilter) as caught:
        compile_filter(field("email", "$" + "y" * 10_000, []))
    assert len(str(caught.value)) < 500


def test_invalid_filter_is_an_indexer_error() -> None:
    assert issubclass(InvalidSegmentFilter, IndexerError)
    assert issubclass(InvalidSegmentFilter, ValueError)


def test_the_raw_filter_is_not_kept_or_changed() -> None:
    raw = {"metadata.tier": {"conditions": {"$in": ["gold"]}}}
    snapshot = copy.deepcopy(raw)
    predicate = compile_filter(raw)
    raw["metadata.tier"]["conditions"]["$in"].append("silver")
    assert raw != snapshot
    assert not predicate(make_customer(metadata={"tier": "silver"}))


# --- properties -------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["5", "-2.5", "1e3", "2024-01-01", "2024-05-01T10:00:00Z", "", "$is"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
paths = st.sampled_from(
    ["email", "metadata.tier", "metadata.nested.key", "address.country", "loyalty.points",
     "summary.redemptions.total_succeeded", "created_at", "metadata.x", "", "a..b", "$is"]
)  # fmt: skip
operator_names = st.sampled_from([*OPERATORS, "$iss", "is", ""])
filter_values = json_scalars | st.lists(json_values, max_size=3)


def filter_shapes() -> st.SearchStrategy[Any]:
    """Mostly well-formed filters with occasional damage, to reach deep into the compiler."""
    conditions = st.dictionaries(operator_names, filter_values, min_size=1, max_size=3)
    field_spec = st.builds(lambda c: {"conditions": c}, conditions) | json_values
    node = st.dictionaries(paths, field_spec, max_size=3)

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.builds(
            lambda fields, junction, nested: {**fields, **junction, **nested},
            node,
            st.sampled_from([{}, {"junction": "and"}, {"junction": "or"}, {"junction": "xor"}]),
            st.lists(children, max_size=3).map(lambda items: {"filters": items}) | st.just({}),
        )

    return st.recursive(node | json_values, extend, max_leaves=12)


customer_values = json_values | st.sampled_from(
    ["gold", "Gold", "5", "5.0", "1e3", "2024-05-01T10:00:00.123456Z", "2024-01-01", "0" * 80]
)
customers = st.builds(
    lambda base, extra: {**base, **extra},
    st.fixed_dictionaries(
        {},
        optional={
            "email": customer_values,
            "metadata": st.dictionaries(
                st.sampled_from(["tier", "x", "nested"]), customer_values, max_size=3
            )
            | customer_values,
            "address": st.fixed_dictionaries({}, optional={"country": customer_values})
            | customer_values,
            "loyalty": st.fixed_dictionaries({}, optional={"points": customer_values}),
            "created_at": customer_values | st.datetimes().map(datetime.isoformat),
        },
    ),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
)


@PROPERTY
@given(raw=json_values)
def test_compile_raises_nothing_but_invalid_filter_on_arbitrary_json(raw: object) -> None:
    with contextlib.suppress(InvalidSegmentFilter):
        compile_filter(raw)


@settings(PROPERTY, suppress_health_check=[HealthCheck.too_slow])
@given(raw=filter_shapes(), customer=customers)
def test_compiled_predicates_never_raise(raw: object, customer: dict[str, Any]) -> None:
    try:
        predicate = compile_filter(raw)
    except InvalidSegmentFilter as error:
        assert str(error).startswith("filter")
        return
    assert predicate(customer) in (True, False)
    assert predicate(make_customer(**customer)) in (True, False)
    assert predicate.matches(filter_view(customer), NOW_US) in (True, False)
    assert isinstance(predicate.query(NOW_US), dict)


@PROPERTY
@given(values=st.lists(json_scalars.filter(lambda v: v is not None), min_size=1, max_size=3),
       value=customer_values)  # fmt: skip
def test_negated_operators_are_exact_negations(values: list[object], value: object) -> None:
    try:
        is_, in_ = holds("$is", values, value), holds("$in", values, value)
    except InvalidSegmentFilter:
        assume(False)
        return
    assert is_ is in_
    assert holds("$is_not", values, value) is not is_
    assert holds("$not_in", values, value) is not in_


@PROPERTY
@given(value=customer_values)
def test_has_value_is_the_opposite_of_is_unknown(value: object) -> None:
    assert holds("$has_value", [], value) is not holds("$is_unknown", [], value)
    assert holds("$is_unknown", [], value) is (value is None)


finite_numbers = st.integers(-(2**300), 2**300) | st.floats(allow_nan=False, allow_infinity=False)


@PROPERTY
@given(value=finite_numbers, bound=finite_numbers, as_text=st.booleans())
def test_ordering_matches_comparison_of_doubles(
    value: int | float, bound: int | float, as_text: bool
) -> None:
    # A numeric string counts as its number: repr() round-trips every finite float and int.
    shown: object = repr(value) if as_text else value
    assume(not as_text or len(repr(value)) <= 64)
    number, limit = float(value), float(bound)
    assert holds("$more_than", [bound], shown) is (number > limit)
    assert holds("$more_than_equal", [bound], shown) is (number >= limit)
    assert holds("$less_than", [bound], shown) is (number < limit)
    assert holds("$less_than_equal", [bound], shown) is (number <= limit)


offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
instants = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@PROPERTY
@given(value=instants, bound=instants, value_zone=offsets, bound_zone=offsets)
def test_before_and_after_compare_instants(
    value: datetime, bound: datetime, value_zone: timezone, bound_zone: timezone
) -> None:
    text = value.astimezone(value_zone).isoformat()
    limit = bound.astimezone(bound_zone).isoformat()
    assert matches(field("created_at", "$before", [limit]), {"created_at": text}) is (value < bound)
    assert matches(field("created_at", "$after", [limit]), {"created_at": text}) is (value > bound)


VALID_CONDITIONS = [
    field("metadata.tier", "$is", ["gold"]),
    field("metadata.tier", "$in", ["gold", "Gold"]),
    field("metadata.x", "$is_unknown", []),
    field("metadata.x", "$less_than_equal", ["5"]),
    field("email", "$contains", ["a"]),
    field("loyalty.points", "$more_than", [3]),
    field("address.country", "$not_in", ["PL"]),
    field("created_at", "$after", ["2024-01-01"]),
]


def valid_filters(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    fields = st.lists(st.sampled_from(VALID_CONDITIONS), max_size=3).map(
        lambda items: {key: spec for item in items for key, spec in item.items()}
    )
    nested = st.just([]) if depth == 0 else st.lists(valid_filters(depth - 1), max_size=3)
    return st.builds(
        lambda own, junction, children: {**own, **junction, "filters": children},
        fields,
        st.sampled_from([{}, {"junction": "and"}, {"junction": "or"}]),
        nested,
    )


@PROPERTY
@given(left=valid_filters(3), right=valid_filters(3), customer=customers)
def test_junctions_combine_like_and_and_or(left: Any, right: Any, customer: Any) -> None:
    first, second = compile_filter(left), compile_filter(right)
    both = compile_filter({"junction": "and", "filters": [left, right]})
    either = compile_filter({"junction": "or", "filters": [left, right]})
    assert both(customer) is (first(customer) and second(customer))
    assert either(customer) is (first(customer) or second(customer))


def _get(customer: Any, path: str) -> Any:
    value = customer
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    # The compiler reads plain ASCII decimal notation of at most 64 characters.
    if not isinstance(value, str) or not value.isascii() or len(value) > 64:
        return None
    if value.strip() != value or "_" in value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _after_2024(value: Any) -> bool:
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return False
    if parsed is None:
        return False
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return parsed > datetime(2024, 1, 1, tzinfo=UTC)


# What each entry of VALID_CONDITIONS means, written independently of the compiler.
REFERENCE = {
    "metadata.tier$is": lambda v: isinstance(v, str) and v == "gold",
    "metadata.tier$in": lambda v: isinstance(v, str) and v in ("gold", "Gold"),
    "metadata.x$is_unknown": lambda v: v is None,
    "metadata.x$less_than_equal": lambda v: (n := _number_or_none(v)) is not None and n <= 5,
    "email$contains": lambda v: isinstance(v, str) and "a" in v,
    "loyalty.points$more_than": lambda v: (n := _number_or_none(v)) is not None and n > 3,
    "address.country$not_in": lambda v: not (isinstance(v, str) and v == "PL"),
    "created_at$after": _after_2024,
}


def reference(raw: dict[str, Any], customer: Any) -> bool:
    results = [
        REFERENCE[path + operator](_get(customer, path))
        for path, spec in raw.items()
        if path not in ("junction", "filters")
        for operator in spec["conditions"]
    ]
    results += [reference(child, customer) for child in raw.get("filters", [])]
    if not results:
        return True
    return any(results) if raw.get("junction") == "or" else all(results)


@PROPERTY
@given(raw=valid_filters(3), customer=customers)
def test_nested_filters_agree_with_a_reference_evaluation(raw: Any, customer: Any) -> None:
    assert compile_filter(raw)(customer) is reference(raw, customer)


def test_deeply_nested_values_are_refused_without_recursing() -> None:
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    for raw in (field("email", "$in", [value]), {"email": value}, field("email", "$is", value)):
        with pytest.raises(InvalidSegmentFilter, match=r"got a list|expected"):
            compile_filter(raw)


# --- size caps ---------------------------------------------------------------------------


def test_a_filter_with_too_many_values_is_malformed() -> None:
    from indexer.segment_filter import MAX_FILTER_VALUES

    ok = field("id", "$in", [str(i) for i in range(MAX_FILTER_VALUES)])
    assert matches(ok, make_customer(id="7"))
    too_many = rf"too many values \(at most {MAX_FILTER_VALUES}"
    with pytest.raises(InvalidSegmentFilter, match=too_many):
        compile_filter(field("id", "$in", [str(i) for i in range(MAX_FILTER_VALUES + 1)]))
    # Counted over the whole tree: operators, fields and nested filters together; a bare
    # scalar counts as one value.
    half = MAX_FILTER_VALUES // 2
    spread = {
        "id": {"conditions": {"$in": list(range(half)), "$is_not": "x"}},
        "filters": [field("email", "$not_in", [f"{i}@x" for i in range(half)])],
    }
    with pytest.raises(InvalidSegmentFilter, match="too many values"):
        compile_filter(spread)


def test_an_in_of_100000_strings_is_refused_quickly() -> None:
    import time

    raw = field("id", "$in", [f"customer-{i}" for i in range(100_000)])
    started = time.perf_counter()
    with pytest.raises(InvalidSegmentFilter, match="too many values"):
        compile_filter(raw)
    assert time.perf_counter() - started < 1.0


def test_a_filter_over_the_byte_cap_is_malformed() -> None:
    from indexer.segment_filter import MAX_FILTER_BYTES

    long_values = [("x" * 200) + str(i) for i in range(400)]  # 400 values, ~80 KiB
    with pytest.raises(
        InvalidSegmentFilter, match=rf"too large: \d+ bytes as JSON \(at most {MAX_FILTER_BYTES}"
    ):
        compile_filter(field("name", "$in", long_values))
    fits = [("x" * 100) + str(i) for i in range(400)]  # ~42 KiB
    assert not matches(field("name", "$in", fits), make_customer())


# --- relative dates ---------------------------------------------------------------------


def at(raw: object, customer: Mapping[str, Any], now_us: int) -> bool:
    return compile_filter(raw).matches(filter_view(customer), now_us)


def iso(micros: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)).isoformat()


@pytest.mark.parametrize(
    ("operator", "values", "offset_us", "expected"),
    [
        # The bound is now + duration; strict on both sides, as for instants.
        ("$after", "-P30D", -29 * DAY_US, True),
        ("$after", "-P30D", -30 * DAY_US, False),
        ("$after", "-P30D", -30 * DAY_US + 1, True),
        ("$before", "-P30D", -30 * DAY_US - 1, True),
        ("$before", "-P30D", -30 * DAY_US, False),
        ("$after", "P7D", 7 * DAY_US + 1, True),
        ("$before", "+P7D", 7 * DAY_US - 1, True),
        ("$after", "-P2W", -13 * DAY_US, True),
        ("$after", "PT12H", 12 * 3_600_000_000, False),
        ("$before", "P1DT2H30M", DAY_US + 9_000_000_000 - 1, True),
        ("$after", "PT0.5S", 500_001, True),
        ("$after", "PT0,5S", 500_000, False),
        ("$after", "P0D", 1, True),
        # Several values: after the earliest bound, before the latest, mixed with instants.
        ("$after", ["-P10D", "-P40D"], -35 * DAY_US, True),
        ("$before", ["-P10D", "-P40D"], -35 * DAY_US, True),
        ("$before", ["-P10D", "-P40D"], -5 * DAY_US, False),
        ("$after", ["-P10D", iso(NOW_US - 50 * DAY_US)], -45 * DAY_US, True),
        ("$before", ["-P10D", iso(NOW_US + DAY_US)], 0, True),
    ],
)
def test_relative_dates_are_bounds_from_now(
    operator: str, values: object, offset_us: int, expected: bool
) -> None:
    customer = {"created_at": iso(NOW_US + offset_us)}
    assert at(field("created_at", operator, values), customer, NOW_US) is expected


def test_a_relative_bound_moves_with_now() -> None:
    raw = field("created_at", "$after", ["-P30D"])
    customer = {"created_at": "2024-05-10T00:00:00Z"}
    assert at(raw, customer, NOW_US)
    assert not at(raw, customer, NOW_US + 30 * DAY_US)


def test_calling_a_filter_on_a_body_uses_the_current_time() -> None:
    now = datetime.now(UTC)
    recent = {"created_at": (now - timedelta(days=1)).isoformat()}
    old = {"created_at": (now - timedelta(days=3)).isoformat()}
    compiled = compile_filter(field("created_at", "$after", ["-P2D"]))
    assert compiled(recent)
    assert not compiled(old)


def test_relative_conditions_are_listed_with_their_bounds() -> None:
    raw = {
        "created_at": {"conditions": {"$after": ["-P30D", "2024-01-01"], "$is_unknown": []}},
        "updated_at": {"conditions": {"$before": ["2024-01-01"]}},
        "filters": [{"junction": "or", **field("metadata.seen", "$before", "PT1H")}],
    }
    compiled = compile_filter(raw)
    assert compiled.has_relative
    relative = compiled.relative_conditions()
    assert [(c.path, c.operator) for c in relative] == [
        ("created_at", "$after"),
        ("metadata.seen", "$before"),
    ]
    january = 1_704_067_200_000_000
    # $after holds after the earliest bound: the fixed one once it is the earlier.
    assert relative[0].bound_us(NOW_US) == january
    assert relative[0].bound_us(january) == january - 30 * DAY_US
    assert relative[1].bound_us(NOW_US) == NOW_US + 3_600_000_000
    assert not compile_filter(field("created_at", "$after", ["2024-01-01"])).has_relative
    assert compile_filter({}).relative_conditions() == ()


# --- the parsed tree --------------------------------------------------------------------


def test_the_parsed_tree_holds_normalised_values() -> None:
    raw = {
        "junction": "or",
        "email": {"conditions": {"$in": ["a", 5, True, -0.0]}},
        "loyalty.points": {"conditions": {"$more_than": ["10"], "$less_than": [20]}},
        "filters": [field("created_at", "$after", ["-P1D", "2024-01-01"])],
    }
    parsed = parse_filter(raw)
    assert parsed == Node(
        "or",
        (FieldCondition("email", "$in", ("a", 5.0, True, 0.0)),),
        (
            # All operators of one field must hold, whatever the junction: an "and" node.
            Node(
                "and",
                (
                    FieldCondition("loyalty.points", "$more_than", (10.0,)),
                    FieldCondition("loyalty.points", "$less_than", (20.0,)),
                ),
                (),
            ),
            Node(
                "and",
                (
                    FieldCondition(
                        "created_at",
                        "$after",
                        (DateBound(-DAY_US, relative=True), DateBound(1_704_067_200_000_000)),
                    ),
                ),
                (),
            ),
        ),
    )
    assert compile_filter(raw).parsed == parsed
    sign = parse_filter(field("x", "$is", [-0.0])).conditions[0].values[0]
    assert isinstance(sign, float) and math.copysign(1.0, sign) == 1.0


def test_several_operators_of_one_field_stay_together_under_or() -> None:
    raw = {
        "junction": "or",
        "loyalty.points": {"conditions": {"$more_than": [100], "$less_than": [200]}},
        **field("email", "$is", ["x"]),
    }
    assert not matches(raw, make_customer(loyalty={"points": 300}))
    assert matches(raw, make_customer(loyalty={"points": 150}))


# --- the filter view's caps, as filters see them -----------------------------------------


def test_paths_of_the_longest_accepted_length_reach_their_values() -> None:
    names = ["k"] * (MAX_PATH_NAMES - 1)
    value: Any = "deep"
    for name in names[1:]:
        value = {name: value}
    customer = {"metadata": {names[0]: value}}
    assert matches(field(".".join(["metadata", *names]), "$is", ["deep"]), customer)
    # One level more is refused in a filter and left out of the view.
    assert ".".join(["metadata", *names, "k"]) not in filter_view({"metadata": {"k": customer}})


def test_values_beyond_the_tenant_cap_are_unknown() -> None:
    metadata = {f"k{i}": i for i in range(MAX_TENANT_LEAVES + 10)}
    customer = make_customer(address=None, metadata=metadata)
    last = f"metadata.k{MAX_TENANT_LEAVES - 1}"
    dropped = f"metadata.k{MAX_TENANT_LEAVES}"
    assert matches(field(last, "$is", [MAX_TENANT_LEAVES - 1]), customer)
    assert matches(field(dropped, "$is_unknown", []), customer)
    assert not matches(field(dropped, "$has_value", []), customer)
    assert matches(field(dropped, "$not_in", [MAX_TENANT_LEAVES]), customer)
    # The object's own fields are never dropped.
    assert matches(field("loyalty.points", "$is", [120]), customer)
    assert matches(field("metadata", "$has_value", []), customer)


def test_address_and_metadata_share_the_tenant_cap_in_document_order() -> None:
    address = {f"a{i}": "x" for i in range(MAX_TENANT_LEAVES - 1)}
    customer = make_customer(address=address, metadata={"tier": "gold", "vip": True})
    assert matches(field("metadata.tier", "$is", ["gold"]), customer)
    assert matches(field("metadata.vip", "$is_unknown", []), customer)


def test_a_filter_never_names_a_value_the_view_leaves_out_by_depth() -> None:
    chain: Any = "end"
    for _ in range(MAX_PATH_NAMES + 2):
        chain = {"k": chain}
    view = filter_view({"metadata": chain})
    assert max(len(path.split(".")) for path in view) == MAX_PATH_NAMES
    with pytest.raises(InvalidSegmentFilter, match="at most"):
        compile_filter(field("metadata" + ".k" * MAX_PATH_NAMES, "$has_value", []))
