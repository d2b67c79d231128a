"""Seed plans and row generation, without any service: validation, determinism, consistency."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from indexer.queries import query
from indexer.seed_rows import (
    CAMPAIGN_TYPES,
    EPOCH,
    MAX_ROWS,
    TABLES,
    VOUCHER_TYPES,
    SeedPlan,
    SeedPlanError,
    SeedRows,
    at,
    code_maker,
    id_maker,
    split_evenly,
    token_sha256,
)

SMALL = SeedPlan(
    seed=7,
    projects=3,
    customers=300,
    campaigns=10,
    vouchers=900,
    redemptions=700,
    segments=7,
    keys=3,
)
OPERATORS = {
    "$is",
    "$is_not",
    "$in",
    "$not_in",
    "$more_than",
    "$more_than_equal",
    "$less_than",
    "$less_than_equal",
    "$contains",
    "$starts_with",
    "$ends_with",
    "$is_unknown",
    "$has_value",
    "$before",
    "$after",
}


def all_rows(plan: SeedPlan) -> dict[str, list[tuple[Any, ...]]]:
    rows = SeedRows(plan)
    return {table: list(rows.rows(table)) for table in TABLES}


@pytest.fixture(scope="module")
def small() -> dict[str, list[tuple[Any, ...]]]:
    return all_rows(SMALL)


# --- plan validation ---------------------------------------------------------------------


def test_default_plan_is_valid() -> None:
    assert SeedPlan().projects > 0


@pytest.mark.parametrize(
    "name", ["projects", "customers", "campaigns", "vouchers", "redemptions", "segments", "keys"]
)
def test_negative_counts_are_refused(name: str) -> None:
    with pytest.raises(SeedPlanError, match=name):
        SeedPlan(**{name: -1})


def test_counts_above_the_limit_are_refused() -> None:
    with pytest.raises(SeedPlanError, match="customers"):
        SeedPlan(customers=MAX_ROWS + 1)


@pytest.mark.parametrize("value", [1.5, "3", True, None])
def test_counts_must_be_integers(value: object) -> None:
    with pytest.raises(SeedPlanError, match="vouchers"):
        SeedPlan(vouchers=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["customers", "campaigns", "vouchers", "segments"])
def test_rows_need_a_project(name: str) -> None:
    counts = {"customers": 0, "campaigns": 0, "vouchers": 0, "redemptions": 0, "segments": 0}
    with pytest.raises(SeedPlanError, match=f"{name} need at least one project"):
        SeedPlan(projects=0, **{**counts, name: 1})


def test_redemptions_need_vouchers() -> None:
    with pytest.raises(SeedPlanError, match="redemptions need at least one voucher"):
        SeedPlan(vouchers=0, redemptions=1)


def test_an_empty_plan_makes_no_rows() -> None:
    plan = SeedPlan(
        projects=0, customers=0, campaigns=0, vouchers=0, redemptions=0, segments=0, keys=5
    )
    rows = SeedRows(plan)
    assert all(list(rows.rows(table)) == [] for table in TABLES)
    assert rows.demo_key() is None


# --- building blocks ---------------------------------------------------------------------


@given(total=st.integers(0, 10_000), parts=st.integers(1, 50))
def test_split_evenly_covers_every_index_once(total: int, parts: int) -> None:
    ranges = split_evenly(total, parts)
    assert len(ranges) == parts
    assert [i for block in ranges for i in block] == list(range(total))
    assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


@given(
    seed=st.integers(-(2**63), 2**63),
    first=st.integers(0, MAX_ROWS),
    second=st.integers(0, MAX_ROWS),
)
def test_ids_and_codes_are_unique_per_index(seed: int, first: int, second: int) -> None:
    make_id, make_code = id_maker(seed, "v_", "vouchers"), code_maker(seed)
    assert (make_id(first) == make_id(second)) == (first == second)
    assert (make_code(first) == make_code(second)) == (first == second)
    assert re.fullmatch(r"v_[0-9a-f]{16}", make_id(first))
    assert re.fullmatch(r"[0-9A-Z]{8}", make_code(first))


def test_ids_depend_on_the_seed_and_the_table() -> None:
    assert id_maker(1, "x_", "vouchers")(0) != id_maker(2, "x_", "vouchers")(0)
    assert id_maker(1, "x_", "vouchers")(0) != id_maker(1, "x_", "customers")(0)


@given(offset=st.integers(-(10**12), 10**12))
def test_timestamps_are_the_epoch_plus_the_offset(offset: int) -> None:
    parsed = datetime.fromisoformat(at(offset))
    assert parsed == EPOCH + timedelta(milliseconds=offset)


# --- determinism -------------------------------------------------------------------------


def test_same_plan_same_rows(small: dict[str, list[tuple[Any, ...]]]) -> None:
    assert all_rows(SMALL) == small


def test_another_seed_changes_every_table(small: dict[str, list[tuple[Any, ...]]]) -> None:
    other = all_rows(SeedPlan(**{**_counts(SMALL), "seed": SMALL.seed + 1}))
    for table in TABLES:
        assert other[table] != small[table], table


def test_rows_do_not_depend_on_the_order_tables_are_read(
    small: dict[str, list[tuple[Any, ...]]],
) -> None:
    rows = SeedRows(SMALL)
    for table in reversed(TABLES):  # redemptions before vouchers: facts made on demand
        assert list(rows.rows(table)) == small[table], table


def test_a_table_does_not_depend_on_counts_it_does_not_use(
    small: dict[str, list[tuple[Any, ...]]],
) -> None:
    more_vouchers = all_rows(SeedPlan(**{**_counts(SMALL), "vouchers": 5_000}))
    for table in ("projects", "api_keys", "customers", "campaigns", "segments", "segment_members"):
        assert more_vouchers[table] == small[table], table


# --- shape and consistency ---------------------------------------------------------------


def test_rows_fit_the_copy_statements(small: dict[str, list[tuple[Any, ...]]]) -> None:
    for table in TABLES:
        columns = re.search(r"\((.*?)\)\s*FROM STDIN", query(f"seed_copy_{table}"), re.S)
        assert columns is not None
        width = len(columns.group(1).split(","))
        assert {len(row) for row in small[table]} == {width}, table


def test_row_counts_follow_the_plan(small: dict[str, list[tuple[Any, ...]]]) -> None:
    rows = SeedRows(SMALL)
    for table in TABLES:
        expected = rows.expected_rows(table)
        if expected is not None:
            assert len(small[table]) == expected, table
    assert len(small["api_keys"]) == SMALL.projects * SMALL.keys


def test_rows_are_spread_over_the_projects(small: dict[str, list[tuple[Any, ...]]]) -> None:
    for table in ("customers", "campaigns", "vouchers", "segments", "redemptions"):
        per_project = Counter(row[1] for row in small[table])
        assert len(per_project) == SMALL.projects, table


def test_primary_keys_and_codes_are_unique(small: dict[str, list[tuple[Any, ...]]]) -> None:
    for table in TABLES:
        keys = [row[:2] if table == "segment_members" else row[0] for row in small[table]]
        assert len(set(keys)) == len(keys), table
    codes = [(row[1], row[2]) for row in small["vouchers"]]
    assert len(set(codes)) == len(codes)
    sources = [(row[1], row[2]) for row in small["customers"] if row[2] is not None]
    assert len(set(sources)) == len(sources)


def test_references_stay_inside_the_project(small: dict[str, list[tuple[Any, ...]]]) -> None:
    customer_project = {row[0]: row[1] for row in small["customers"]}
    campaign = {row[0]: (row[1], row[3]) for row in small["campaigns"]}
    voucher_project = {row[0]: row[1] for row in small["vouchers"]}
    segment = {row[0]: (row[1], row[3]) for row in small["segments"]}
    for row in small["vouchers"]:
        project, campaign_id, voucher_type, holder = row[1], row[3], row[4], row[15]
        if campaign_id is not None:
            campaign_project, campaign_type = campaign[campaign_id]
            assert campaign_project == project
            assert VOUCHER_TYPES.index(voucher_type) == CAMPAIGN_TYPES.index(campaign_type)
        if holder is not None:
            assert customer_project[holder] == project
    for row in small["redemptions"]:
        assert voucher_project[row[2]] == row[1]
        assert row[3] is None or customer_project[row[3]] == row[1]
    for segment_id, customer_id in small["segment_members"]:
        segment_project, segment_type = segment[segment_id]
        assert segment_type == "static"
        assert customer_project[customer_id] == segment_project


def test_voucher_values_match_their_type(small: dict[str, list[tuple[Any, ...]]]) -> None:
    for row in small["vouchers"]:
        voucher_type, discount, gift_amount, gift_balance, points, balance = row[4:10]
        quantity, redeemed = row[13], row[14]
        if voucher_type == "DISCOUNT_VOUCHER":
            parsed = json.loads(discount)
            assert parsed["type"] in {"AMOUNT", "PERCENT", "UNIT"}
            assert set(parsed) <= {
                "type",
                "amount_off",
                "percent_off",
                "amount_limit",
                "unit_off",
                "unit_type",
            }
            assert (gift_amount, gift_balance, points, balance) == (None,) * 4
        elif voucher_type == "GIFT_VOUCHER":
            assert discount is None and points is None and balance is None
            assert 0 <= gift_balance <= gift_amount
        else:
            assert discount is None and gift_amount is None and gift_balance is None
            assert 0 <= balance <= points
        assert quantity is None or 0 <= redeemed <= quantity
    assert {row[4] for row in small["vouchers"]} == set(VOUCHER_TYPES)


def test_customers_look_real(small: dict[str, list[tuple[Any, ...]]]) -> None:
    address_keys = {"city", "state", "line_1", "line_2", "country", "postal_code"}
    for row in small["customers"]:
        if row[6] is not None:
            assert set(json.loads(row[6])) == address_keys
        metadata = json.loads(row[7])
        assert metadata["tier"] in {"bronze", "silver", "gold", "platinum"}
        assert isinstance(metadata["vip"], bool)
        assert datetime.fromisoformat(metadata["signup_date"])
        assert row[4] is None or "@" in row[4]


def test_segments_are_static_or_filtered(small: dict[str, list[tuple[Any, ...]]]) -> None:
    types = Counter(row[3] for row in small["segments"])
    assert set(types) == {"static", "auto-update"}
    for row in small["segments"]:
        if row[3] == "static":
            assert row[4] is None
        else:
            _check_filter(json.loads(row[4]))
    assert small["segment_members"]


def test_the_demo_token_matches_the_first_key(small: dict[str, list[tuple[Any, ...]]]) -> None:
    demo = SeedRows(SMALL).demo_key()
    assert demo is not None
    app_id, token = demo
    first = small["api_keys"][0]
    assert first[0] == app_id and first[1] == small["projects"][0][0]
    assert first[2] == token_sha256(token) == hashlib.sha256(token.encode()).hexdigest()
    assert first[5] is None  # never revoked
    assert token not in json.dumps(small["api_keys"])


def _check_filter(segment_filter: dict[str, Any]) -> None:
    """docs/api.md §4: a junction, field paths with operator conditions, optional nested filters."""
    assert segment_filter.pop("junction") in {"and", "or"}
    for nested in segment_filter.pop("filters", []):
        _check_filter(nested)
    assert segment_filter
    for path, condition in segment_filter.items():
        assert re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", path)
        operators = condition["conditions"]
        assert operators and set(operators) <= OPERATORS
        assert all(isinstance(values, list) for values in operators.values())


def _counts(plan: SeedPlan) -> dict[str, int]:
    return {name: getattr(plan, name) for name in plan.__dataclass_fields__}
