"""Unit tests of ``indexer/segment_view.py``: which leaves a customer's filter view holds, their
typed values, the caps, and the nested entries the index receives."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cache.readmodel.indices import ViewLeaf
from indexer.segment_view import (
    COMPOSITE,
    MAX_PATH_LENGTH,
    MAX_PATH_NAMES,
    MAX_TENANT_LEAVES,
    MAX_VIEW_STRING,
    Leaf,
    as_instant_us,
    filter_view,
    instant_key,
    leaf_of,
    number_key,
    view_terms,
)

PROPERTY = settings(database=None, max_examples=300, deadline=None)
MAY_1 = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z in epoch microseconds


def test_a_small_customer_object() -> None:
    body = {
        "id": "c1",
        "email": None,
        "address": {"country": "PL", "state": None},
        "metadata": {"tier": "gold", "visits": 12, "vip": True, "tags": ["a"], "n": {}},
        "loyalty": {"points": 0},
        "created_at": "2024-05-01T00:00:00.000000Z",
    }
    assert filter_view(body) == {
        "id": Leaf(s="c1"),
        "address": COMPOSITE,
        "address.country": Leaf(s="PL"),
        "metadata": COMPOSITE,
        "metadata.tier": Leaf(s="gold"),
        "metadata.visits": Leaf(n=12.0, o=12.0),
        "metadata.vip": Leaf(b=True),
        "metadata.tags": COMPOSITE,
        "metadata.n": COMPOSITE,
        "loyalty": COMPOSITE,
        "loyalty.points": Leaf(n=0.0, o=0.0),
        "created_at": Leaf(s="2024-05-01T00:00:00.000000Z", t=MAY_1),
    }


def test_keys_no_dotted_path_can_name_are_left_out() -> None:
    body = {"metadata": {"": 1, "a.b": 2, 3: "x", "a": {"b": 4}, "ok": 5}}
    assert set(filter_view(body)) == {"metadata", "metadata.a", "metadata.a.b", "metadata.ok"}
    assert filter_view(body)["metadata.a.b"] == Leaf(n=4.0, o=4.0)


def test_lists_are_values_never_walked_into() -> None:
    view = filter_view({"metadata": {"tags": [{"a": 1}, "b"], "empty": []}})
    assert view == {"metadata": COMPOSITE, "metadata.tags": COMPOSITE, "metadata.empty": COMPOSITE}


def test_anything_but_an_object_has_an_empty_view() -> None:
    for body in (None, "c1", 42, [], [{"id": "c1"}], object()):
        assert filter_view(body) == {}


def test_any_mapping_is_walked() -> None:
    class Frozen(Mapping[str, Any]):
        def __init__(self, data: dict[str, Any]) -> None:
            self._data = data

        def __getitem__(self, key: str) -> Any:
            return self._data[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self._data)

        def __len__(self) -> int:
            return len(self._data)

    view = filter_view(Frozen({"metadata": Frozen({"tier": "gold"})}))
    assert view == {"metadata": COMPOSITE, "metadata.tier": Leaf(s="gold")}


# --- typed values -----------------------------------------------------------------------------


def test_strings() -> None:
    assert leaf_of("") == Leaf(s="")
    assert leaf_of("gold") == Leaf(s="gold")
    assert leaf_of("5") == Leaf(s="5", o=5.0)
    assert leaf_of("-2.5e1") == Leaf(s="-2.5e1", o=-25.0)
    assert leaf_of(".5") == Leaf(s=".5", o=0.5)
    assert leaf_of("1e400") == Leaf(s="1e400")  # not a finite double
    assert leaf_of(" 5") == Leaf(s=" 5")
    assert leaf_of("\u0663") == Leaf(s="\u0663")  # ASCII digits only
    assert leaf_of("1" * 65) == Leaf(s="1" * 65)  # over 64 characters: no number
    # An eight-digit date is a number too: each operator reads its own field.
    assert leaf_of("20240501") == Leaf(s="20240501", o=20240501.0, t=MAY_1)


def test_long_strings_keep_no_text() -> None:
    assert leaf_of("x" * MAX_VIEW_STRING) == Leaf(s="x" * MAX_VIEW_STRING)
    assert leaf_of("x" * (MAX_VIEW_STRING + 1)) == COMPOSITE


def test_numbers_are_doubles() -> None:
    assert leaf_of(5) == leaf_of(5.0) == Leaf(n=5.0, o=5.0)
    assert leaf_of(2**53 + 1) == Leaf(n=2.0**53, o=2.0**53)
    assert leaf_of(1e308) == Leaf(n=1e308, o=1e308)
    negative_zero = leaf_of(-0.0)
    assert negative_zero == Leaf(n=0.0, o=0.0)
    assert negative_zero is not None and negative_zero.n is not None
    assert math.copysign(1.0, negative_zero.n) == 1.0
    signed_text = leaf_of("-0")
    assert signed_text is not None and signed_text.o is not None
    assert math.copysign(1.0, signed_text.o) == 1.0
    # No double holds these: the value exists and compares as nothing.
    assert leaf_of(10**400) == COMPOSITE
    assert leaf_of(math.nan) == COMPOSITE
    assert leaf_of(-math.inf) == COMPOSITE


def test_booleans_are_not_numbers() -> None:
    assert leaf_of(True) == Leaf(b=True)
    assert leaf_of(False) == Leaf(b=False)


def test_null_is_no_leaf_and_other_values_are_composite() -> None:
    assert leaf_of(None) is None
    assert filter_view({"a": None}) == {}
    for value in ({}, [], {"a": 1}, [1], object(), b"x"):
        assert leaf_of(value) == COMPOSITE


def test_instants() -> None:
    assert as_instant_us("2024-05-01") == MAY_1
    assert as_instant_us("2024-05-01T00:00:00Z") == MAY_1
    assert as_instant_us("2024-05-01T00:00:00") == MAY_1  # naive is UTC
    assert as_instant_us("2024-05-01T02:00:00+02:00") == MAY_1
    assert as_instant_us("2024-05-01T00:00:00.1234567Z") == MAY_1 + 123456  # truncated
    assert as_instant_us("2024-W18-3") == MAY_1
    assert as_instant_us("1969-12-31T23:59:59.999999Z") == -1
    assert as_instant_us("0001-01-01T00:00:00+01:00") == -62135600400000000
    for text in ("", "yesterday", "2024-13-01", "infinity", "2024", "+10000-01-01", " 2024-05-01"):
        assert as_instant_us(text) is None
    assert as_instant_us("2024-05-01T00:00:00" + "0" * 60) is None  # over 64 characters
    assert as_instant_us(1714521600) is None


# --- caps -------------------------------------------------------------------------------------


def chain(depth: int) -> Any:
    value: Any = "end"
    for _ in range(depth):
        value = {"k": value}
    return value


def test_paths_have_at_most_max_path_names() -> None:
    view = filter_view({"metadata": chain(MAX_PATH_NAMES + 3)})
    deepest = "metadata" + ".k" * (MAX_PATH_NAMES - 1)
    assert view[deepest] == COMPOSITE  # an object at the last level: a value, not walked
    assert max(len(path.split(".")) for path in view) == MAX_PATH_NAMES
    # The object's own fields are held to the same depth.
    own = filter_view({"summary": chain(MAX_PATH_NAMES + 3)})
    assert max(len(path.split(".")) for path in own) == MAX_PATH_NAMES


def test_paths_have_at_most_max_path_length() -> None:
    fits = "k" * (MAX_PATH_LENGTH - len("metadata."))
    too_long = fits + "k"
    view = filter_view({"metadata": {fits: 1, too_long: {"a": 1}}})
    assert set(view) == {"metadata", f"metadata.{fits}"}


def test_tenant_leaves_are_capped_in_document_order_depth_first() -> None:
    metadata = {"first": {"inner": 1}, **{f"k{i}": i for i in range(MAX_TENANT_LEAVES)}}
    body = {"metadata": metadata, "summary": {"redemptions": {"total_redeemed": 1}}}
    view = filter_view(body)
    kept = [path for path in view if path.startswith("metadata.")]
    assert len(kept) == MAX_TENANT_LEAVES
    assert kept[:3] == ["metadata.first", "metadata.first.inner", "metadata.k0"]
    assert kept[-1] == f"metadata.k{MAX_TENANT_LEAVES - 3}"
    # The object's own fields, before and after, are all there.
    assert {
        "metadata",
        "summary",
        "summary.redemptions",
        "summary.redemptions.total_redeemed",
    } <= set(view)


def test_address_and_metadata_share_one_cap() -> None:
    address = {f"a{i}": i for i in range(MAX_TENANT_LEAVES - 1)}
    view = filter_view({"address": address, "metadata": {"x": 1, "y": 2}, "name": "n"})
    assert "metadata.x" in view
    assert "metadata.y" not in view
    assert view["name"] == Leaf(s="n")


def test_other_top_level_objects_are_not_capped() -> None:
    summary = {f"s{i}": i for i in range(MAX_TENANT_LEAVES + 50)}
    assert len(filter_view({"summary": summary})) == MAX_TENANT_LEAVES + 51


# --- the indexed terms ---------------------------------------------------------------------------


def test_view_terms_write_each_value_once() -> None:
    view = filter_view(
        {"a": "5", "b": 1.5, "c": True, "d": {"e": "2024-05-01"}, "f": [1], "g": "x" * 600}
    )
    assert view_terms(view) == {
        # Only the leaves without a string, number or boolean: what tells them from unknown.
        ViewLeaf.P: ["d", "f", "g"],
        ViewLeaf.S: ["a\x005", "d.e\x002024-05-01"],
        ViewLeaf.N: [f"b\x00{number_key(1.5)}"],
        ViewLeaf.O: [f"a\x00{number_key(5.0)}"],  # numeric strings only: a number has its n
        ViewLeaf.T: [f"d.e\x00{instant_key(MAY_1)}"],
        ViewLeaf.B: ["c\x00true"],
    }
    assert view_terms({}) == {}


def test_a_key_holding_a_nul_is_skipped() -> None:
    # NUL ends the path in an indexed term (Postgres jsonb holds none anyway).
    assert filter_view({"metadata": {"a\x00b": 1, "c": 2}}) == {
        "metadata": COMPOSITE,
        "metadata.c": Leaf(n=2.0, o=2.0),
    }


@PROPERTY
@given(st.floats(allow_nan=False), st.floats(allow_nan=False))
def test_number_keys_order_as_the_numbers(a: float, b: float) -> None:
    assert (number_key(a) < number_key(b)) == (a < b)
    assert (number_key(a) == number_key(b)) == (a == b)


@PROPERTY
@given(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1))
def test_instant_keys_order_as_the_instants(a: int, b: int) -> None:
    assert (instant_key(a) < instant_key(b)) == (a < b)


# --- the view holds what a dotted path reaches ---------------------------------------------------

keys = st.sampled_from(["a", "b", "", "a.b", "é", "tier", "a\x00"])
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=2) | st.dictionaries(keys, children, max_size=3),
    max_leaves=15,
)
bodies = st.dictionaries(st.sampled_from(["id", "metadata", "address", "summary", "x.y"]), values)


def resolve(body: Any, path: str) -> Any:
    """What a dotted path reaches, as the filter compiler of old read it."""
    value = body
    for key in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def reachable(value: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted path that reaches a non-null value (within the depth cap)."""
    if not isinstance(value, Mapping) or len(prefix.split(".")) >= MAX_PATH_NAMES:
        return
    for key, item in value.items():
        named = isinstance(key, str) and key and "." not in key and "\x00" not in key
        if named and item is not None:
            path = f"{prefix}.{key}" if prefix else key
            yield path
            yield from reachable(item, path)


@PROPERTY
@given(body=bodies)
def test_the_view_is_exactly_what_dotted_paths_reach(body: dict[str, Any]) -> None:
    view = filter_view(body)
    assert set(view) == set(reachable(body))  # the tenant cap is far: every leaf is kept
    for path, leaf in view.items():
        assert leaf == leaf_of(resolve(body, path))
