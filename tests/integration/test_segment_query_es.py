"""Segment filters select the same customers in Python and in a real Elasticsearch index.

A property test: generated customers (the shape ``customer_body`` serves: tenant metadata and
address with nested objects, lists, numbers of every kind, numeric strings, dates with and
without offsets, unicode text, wildcard characters, long strings, many keys) are indexed as
the indexer writes them (``customer_document`` and ``search_source`` into an index created
with ``index_mappings``); generated filters (every operator, nested filters with both
junctions, several operators per field, paths that hit and miss, relative dates) are run
as ``customer_query`` and compared, id by id, with ``SegmentFilter.matches`` over the same
view at the same injected ``now_us``. Several filters share one indexed batch of customers.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from elasticsearch import Elasticsearch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cache.config import DEFAULT_ES_URL
from cache.readmodel.indices import IndexNames, index_mappings, index_settings, search_source
from cache.types import ObjectKind
from indexer.documents import customer_document, epoch_micros
from indexer.segment_filter import InvalidSegmentFilter, SegmentFilter, compile_filter
from indexer.segment_query import customer_query
from indexer.segment_view import MAX_TENANT_LEAVES, Leaf, filter_view
from indexer.timestamps import parse_timestamptz

pytestmark = pytest.mark.services

ES_URL = os.environ.get("LOYALTY_ES_URL") or DEFAULT_ES_URL
MAX_CUSTOMERS = 24
FILTERS_PER_BATCH = 12

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
DAY_US = 86_400_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# --- customers ----------------------------------------------------------------------------

text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10
)
SPECIAL_STRINGS = [
    "gold", "Gold", "gold ", "", "5", "5.0", "-0", "-0.0", "1e3", ".5", "1e400", "0x10",
    "2024-05-01", "2024-05-01T10:00:00Z", "2024-05-01T10:00:00+02:00", "2024-05-01T10:00:00",
    "20240501", "2024-W18", "yesterday", "a*b", "a?b", "a\\b", "*", "?", "\\", "\\*", "ł",
    "zażółć", "\U0001f600 smile", "x" * 512, "x" * 513, "y" * 300 + "tail", "P7D", "-P30D",
]  # fmt: skip
SPECIAL_NUMBERS = [
    0, -0.0, 0.0, 5, 5.0, -1.5, 2**53, 2**53 + 1, -(2**63), 2**63 - 1, 1e308, -1e308,
    5e-324, 0.1, 1e16, 123456789.123,
]  # fmt: skip
numbers = (
    st.sampled_from(SPECIAL_NUMBERS)
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
)


def near_now_iso(now_us: int) -> st.SearchStrategy[str]:
    """Timestamps within 60 days of now, with and without an offset, or a date alone."""
    offsets = st.integers(-60 * DAY_US, 60 * DAY_US)
    zones = st.sampled_from([None, UTC, *(timezone(timedelta(hours=h)) for h in (-7, 2, 5))])

    def show(offset: int, zone: Any, date_only: bool) -> str:
        instant = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=now_us + offset)
        if date_only:
            return instant.date().isoformat()
        if zone is None:
            return instant.replace(tzinfo=None).isoformat()
        return instant.astimezone(zone).isoformat()

    return st.builds(show, offsets, zones, st.booleans())


def scalars(now_us: int) -> st.SearchStrategy[Any]:
    return (
        st.none()
        | st.booleans()
        | numbers
        | text
        | st.sampled_from(SPECIAL_STRINGS)
        | near_now_iso(now_us)
        | st.sampled_from([str(n) for n in SPECIAL_NUMBERS])
    )


KEYS = ["tier", "n", "x", "d", "list", "nested", "é", "a b", "", "a.b", "deep", "a\x00b"]


def json_values(now_us: int) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars(now_us),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.sampled_from(KEYS), children, max_size=4)
        ),
        max_leaves=12,
    )


def deep_chain(depth: int, leaf: Any) -> dict[str, Any]:
    value: Any = leaf
    for _ in range(depth):
        value = {"deep": value}
    return value  # type: ignore[no-any-return]


def metadata(now_us: int) -> st.SearchStrategy[Any]:
    plain = st.dictionaries(st.sampled_from(KEYS), json_values(now_us), max_size=6)
    # Around the tenant cap: keys k0, k1, ... numbered in document order.
    many = st.integers(MAX_TENANT_LEAVES - 20, MAX_TENANT_LEAVES + 20).map(
        lambda count: {f"k{i}": i for i in range(count)}
    )
    chain = st.builds(deep_chain, st.integers(4, 10), scalars(now_us))
    mixed = st.builds(lambda a, b: {**a, **b}, plain, many)
    # Mostly small objects, as tenants' metadata mostly is.
    return st.none() | plain | plain | plain | plain | many | chain | mixed


def address(now_us: int) -> st.SearchStrategy[Any]:
    fields = st.fixed_dictionaries(
        {},
        optional={
            "city": st.none() | st.sampled_from(["Warsaw", "Oslo", "gold"]) | text,
            "country": st.none() | st.sampled_from(["PL", "DE", "pl"]),
            "postal_code": st.none() | st.sampled_from(["00-001", "5", "1e3"]),
            "tier": scalars(now_us),
        },
    )
    many = st.integers(0, 30).map(lambda count: {f"k{i}": f"a{i}" for i in range(count)})
    return st.none() | fields | st.builds(lambda a, b: {**b, **a}, fields, many)


def timestamps(now_us: int) -> st.SearchStrategy[Any]:
    near = st.integers(-60 * DAY_US, 60 * DAY_US).map(
        lambda offset: datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=now_us + offset)
    )
    far = st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    )
    beyond = st.sampled_from(["infinity", "-infinity", "10000-01-01 00:00:00+00"]).map(
        parse_timestamptz
    )
    return near | far | beyond


def rows(now_us: int) -> st.SearchStrategy[dict[str, Any]]:
    counts = st.integers(0, 20) | st.sampled_from([0, 2**53 + 1, 2**63 - 1])
    return st.fixed_dictionaries(
        {
            "source_id": st.none() | text | st.sampled_from(["src-1", "gold"]),
            "name": st.none() | text | st.sampled_from(["Ada", "Gold", "a*b"]),
            "email": st.none() | st.sampled_from(["Ada@Example.com", "a@x", "x" * 600]) | text,
            "phone": st.none() | st.sampled_from(["+48 600", "5"]),
            "address": address(now_us),
            "metadata": metadata(now_us),
            "total_redeemed": counts,
            "total_succeeded": counts,
            "total_failed": counts,
            "redeemed_amount": counts,
            "redeemed_points": counts,
            "loyalty_points": counts | st.none(),
            "created_at": timestamps(now_us),
            "updated_at": timestamps(now_us),
            "static_segment_ids": st.just([]),
        }
    )


def edge_rows(now_us: int) -> list[dict[str, Any]]:
    """Customers in every batch whose values sit on the edges the two evaluators could
    disagree on: signed zeros, wildcard characters, doubles next to each other, the string
    cap, an instant as text with an offset."""
    near = EPOCH + timedelta(microseconds=now_us - DAY_US)
    tiers = [
        {"tier": "a*b", "n": -0.0, "x": "-0", "nested": {"tier": "a?b", "n": 0.0, "x": "\\"},
         "d": "x" * 513, "é": 2**53 + 1},
        {"tier": "axb", "n": 0, "x": "0", "nested": {"tier": "a\\b", "n": -1.5, "x": "*"},
         "d": "x" * 512, "é": 2**53},
        {"tier": "a?b", "n": 5, "x": "5.0", "nested": {"tier": "ab", "n": 1e308, "x": "?"},
         "d": near.astimezone(timezone(timedelta(hours=2))).isoformat(), "é": -0.0},
    ]  # fmt: skip
    return [
        {**EDGE_ROW, "metadata": metadata, "created_at": near, "updated_at": near}
        for metadata in tiers
    ]


EDGE_PATHS = [
    "metadata.tier", "metadata.n", "metadata.x", "metadata.d", "metadata.é",
    "metadata.nested.tier", "metadata.nested.n", "metadata.nested.x", "name", "email", "phone",
    "summary.redemptions.total_succeeded", "summary.redemptions.total_failed", "created_at",
]  # fmt: skip
EDGE_ROW: dict[str, Any] = {
    "source_id": None, "name": "a*b", "email": "a\\b", "phone": "-0", "address": None,
    "total_redeemed": 0, "total_succeeded": 2**53, "total_failed": 2**53 + 1,
    "redeemed_amount": 0, "redeemed_points": 0, "loyalty_points": None,
    "static_segment_ids": [],
}  # fmt: skip


# --- filters ------------------------------------------------------------------------------
# Values are drawn from the indexed customers' own views most of the time (equal values,
# bounds equal to a value, substrings, the instant of a value as a duration from now), so
# conditions split a batch instead of matching everyone or no one.

MISSES = [
    "missing",
    "metadata.missing.x",
    "metadata.k215",
    "metadata.k185",
    "address.k3",
    "metadata.deep.deep.deep.deep.deep.deep.deep",
    "metadata.tier.x",
    "metadata.list.0",
    "metadata.a\x00b",  # a key the view skips: NUL ends a path in the indexed terms
]
TEXTS = [
    "", "g", "old", "Go", "ld", "a*", "*", "?", "\\", "*b", "a?b", "\\*", "é", "ż",
    "\U0001f600", "2024-05", "T10", "+02:00", "x" * 256, "y" * 200, "tail", "0", "5", ".",
]  # fmt: skip
DURATIONS = ["-P30D", "P7D", "PT12H", "-P2W", "P1DT2H30M", "PT0.5S", "-PT1S", "P0D", "-P59D"]
EQUALITY = ["$is", "$is_not", "$in", "$not_in"]
ORDERING = ["$more_than", "$more_than_equal", "$less_than", "$less_than_equal"]
TEXTUAL = ["$contains", "$starts_with", "$ends_with"]
DATING = ["$before", "$after"]
OPERATORS = [*EQUALITY, *ORDERING, *TEXTUAL, *DATING, "$is_unknown", "$has_value"]


def as_duration(micros: int, parts: int) -> str:
    """A signed ISO 8601 duration of exactly ``micros``, spelled with more or fewer units."""
    sign, rest = ("-" if micros < 0 else ""), abs(micros)
    days, rest = divmod(rest, DAY_US)
    if parts == 0:
        seconds, fraction = divmod(days * DAY_US + rest, 1_000_000)
        return f"{sign}PT{seconds}.{fraction:06d}S"
    hours, rest = divmod(rest, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds, fraction = divmod(rest, 1_000_000)
    weeks, days = divmod(days, 7) if parts == 2 else (0, days)
    return f"{sign}P{weeks}W{days}DT{hours}H{minutes}M{seconds}.{fraction:06d}S"


def as_iso(micros: int, hours: int | None) -> str:
    instant = EPOCH + timedelta(microseconds=micros)
    if hours is None:
        return instant.replace(tzinfo=None).isoformat()
    return instant.astimezone(timezone(timedelta(hours=hours))).isoformat()


def _values(draw: st.DrawFn, operator: str, leaves: list[Leaf], now_us: int) -> Any:
    """Values for ``operator``, mostly taken from the leaves customers have at the path."""
    count = draw(st.integers(0 if operator in ("$in", "$not_in") else 1, 3))
    values: list[Any] = []
    for _ in range(count):
        own = draw(st.booleans()) and leaves
        leaf = draw(st.sampled_from(leaves)) if own else None
        if operator in EQUALITY:
            known = [v for v in (leaf.s, leaf.n, leaf.b) if v is not None] if leaf else []
            picked = draw(st.sampled_from(known)) if known else draw(scalars(now_us))
            if isinstance(picked, float) and picked.is_integer() and draw(st.booleans()):
                picked = int(picked)  # 5 and 5.0 are one number
            values.append(picked)
        elif operator in ORDERING:
            if leaf is not None and leaf.o is not None:
                nudge = draw(st.sampled_from([0.0, 0.0, 1.0, -1.0, 0.5]))
                bound = leaf.o + nudge if nudge else leaf.o  # -0.0 + 0.0 would be 0.0
                values.append(bound if draw(st.booleans()) else repr(bound))
            else:
                values.append(draw(numbers | st.sampled_from(["5", "-0", "1e3", ".5"])))
        elif operator in TEXTUAL:
            if leaf is not None and leaf.s is not None and len(leaf.s) <= 256:
                start = draw(st.integers(0, len(leaf.s)))
                stop = draw(st.integers(start, len(leaf.s)))
                part = leaf.s[start:stop]
                if part and draw(st.integers(0, 2)) == 0:
                    # A wildcard character in place of one: literal in Python, so it must be
                    # escaped in the query.
                    at = draw(st.integers(0, len(part) - 1))
                    part = part[:at] + draw(st.sampled_from("*?\\")) + part[at + 1 :]
                values.append(part)
            else:
                values.append(draw(st.sampled_from(TEXTS) | text))
        elif operator in DATING:
            if leaf is not None and leaf.t is not None:
                nudge = draw(st.sampled_from([0, 0, 1, -1, 1000]))
                instant = leaf.t + nudge
                if draw(st.booleans()):
                    values.append(as_duration(instant - now_us, draw(st.integers(0, 2))))
                else:
                    values.append(as_iso(instant, draw(st.sampled_from([None, 0, 2, -7]))))
            else:
                values.append(draw(near_now_iso(now_us) | st.sampled_from(DURATIONS)))
    if operator in ("$is_unknown", "$has_value"):
        return draw(st.sampled_from([[], [True], True, None]))
    if len(values) == 1 and draw(st.booleans()):
        return values[0]  # a bare scalar
    return values


NUMBERED = re.compile(r"(address|metadata)\.k[0-9]+")
CAP_PATHS = ["metadata.k0", "metadata.k5", "metadata.k170", "metadata.k180", "metadata.k199",
             "metadata.k200", "address.k2", "address.k29"]  # fmt: skip


def _families_for(leaf: Leaf) -> list[list[str]]:
    """Operators that can hold for this leaf, by family, the typed ones more often: how a
    condition gets customers on both sides."""
    families = [["$is_unknown", "$has_value"], EQUALITY]
    if leaf.s is not None:
        families += [TEXTUAL, TEXTUAL]
    if leaf.o is not None:
        families += [ORDERING, ORDERING]
    if leaf.t is not None:
        families += [DATING, DATING, DATING]
    return families


def filters(
    draw: st.DrawFn, pick: random.Random, views: list[dict[str, Leaf]], now_us: int, depth: int = 0
) -> dict[str, Any]:
    """A filter whose paths and operators ``pick`` chooses uniformly (hypothesis favours
    the first items of a list) and whose values hypothesis draws."""
    # Paths customers have (the numbered keys of big objects only around the tenant cap),
    # and paths no customer has.
    present = sorted({path for view in views for path in view if not NUMBERED.fullmatch(path)})
    raw: dict[str, Any] = {}
    for _ in range(draw(st.integers(0 if depth else 1, 2))):
        chance = pick.random()
        if chance < 0.4:
            path = pick.choice(list(pick.choice(views)) or present)
        elif chance < 0.6:
            path = pick.choice(present)
        elif chance < 0.85:
            path = pick.choice(EDGE_PATHS)
        else:
            path = pick.choice(CAP_PATHS + MISSES)
        leaves = [view[path] for view in views if path in view]
        if leaves and pick.random() < 0.8:
            fitting = pick.choice(_families_for(pick.choice(leaves)))
        else:
            fitting = OPERATORS
        names = pick.sample(fitting, k=min(len(fitting), pick.choice([1, 1, 2])))
        conditions = {name: _values(draw, name, leaves, now_us) for name in names}
        raw[path] = {"conditions": conditions}
    junction = pick.choice([None, "and", "or", "or"])
    if junction is not None:
        raw["junction"] = junction
    if depth < 2 and pick.random() < 0.3:
        count = pick.randint(0, 3)
        raw["filters"] = [filters(draw, pick, views, now_us, depth + 1) for _ in range(count)]
    return raw


# --- the index ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index() -> Iterator[tuple[Elasticsearch, str]]:
    client = Elasticsearch(ES_URL, request_timeout=60)
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    name = IndexNames(prefix).generation(ObjectKind.CUSTOMER, 1)
    client.indices.create(
        index=name, mappings=index_mappings(ObjectKind.CUSTOMER), settings=index_settings("-1")
    )
    try:
        yield client, name
    finally:
        client.options(ignore_status=404).indices.delete(index=f"{prefix}*")
        client.close()


_projects = itertools.count()


class Batch:
    """One example: customers and the filters run against them at ``now_us``. A plain class:
    hypothesis prints dataclasses field by field, and these fields are large."""

    def __init__(
        self, now_us: int, rows: list[dict[str, Any]], filters: list[dict[str, Any]]
    ) -> None:
        self.now_us = now_us
        self.rows = rows
        self.filters = filters

    def __repr__(self) -> str:
        # What hypothesis prints for a failure: the failure message has the details.
        return f"Batch(now_us={self.now_us}, {len(self.rows)} rows, {len(self.filters)} filters)"


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    now_us = epoch_micros(NOW) + draw(st.integers(-400 * DAY_US, 400 * DAY_US))
    generated = draw(st.lists(rows(now_us), min_size=10, max_size=MAX_CUSTOMERS - 3))
    customers = [*edge_rows(now_us), *generated]
    # The views of the bodies the test indexes (ids and project do not change them).
    views = [filter_view(customer_document({**row, "id": "c", "project_id": "p"}, []).body)
             for row in customers]  # fmt: skip
    pick = random.Random(draw(st.integers(0, 2**64 - 1)))
    raw_filters = [filters(draw, pick, views, now_us) for _ in range(FILTERS_PER_BATCH)]
    return Batch(now_us, customers, raw_filters)


def _index_batch(client: Elasticsearch, index: str, project: str, rows_: list[dict[str, Any]],
                 now_us: int) -> dict[str, dict[str, Any]]:  # fmt: skip
    bodies: dict[str, dict[str, Any]] = {}
    lines: list[bytes] = []
    for number, row in enumerate(rows_):
        customer_id = f"{project}-c{number:02d}"
        document = customer_document({**row, "id": customer_id, "project_id": project}, [], now_us)
        bodies[customer_id] = document.body
        source = search_source(customer_id, project, document.body, document.fields)
        lines.append(orjson.dumps({"index": {"_index": index, "_id": customer_id}}))
        lines.append(orjson.dumps(source))
    response = client.bulk(operations=b"\n".join(lines) + b"\n", refresh=True)
    assert not response["errors"], [i for i in response["items"] if i["index"].get("error")][:1]
    return bodies


# No shrinking: each step would index a batch again, and the failure already names the
# filter and the differing customers' leaves at its paths.
@settings(
    max_examples=250,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=batches())
def test_elasticsearch_selects_what_the_predicate_selects(
    index: tuple[Elasticsearch, str], batch: Batch
) -> None:
    client, name = index
    now_us, rows_, raw_filters = batch.now_us, batch.rows, batch.filters
    compiled: list[tuple[dict[str, Any], SegmentFilter]] = []
    for raw in raw_filters:
        try:
            compiled.append((raw, compile_filter(raw)))
        except InvalidSegmentFilter:
            continue
    if not compiled:
        return
    project = f"p{next(_projects)}"
    bodies = _index_batch(client, name, project, rows_, now_us)
    views = {customer_id: filter_view(body) for customer_id, body in bodies.items()}
    for raw, segment_filter in compiled:
        expected = {cid for cid, view in views.items() if segment_filter.matches(view, now_us)}
        response = client.search(
            index=name,
            query=customer_query(project, segment_filter, now_us),
            size=MAX_CUSTOMERS + 1,
            source=False,
        )
        found = {hit["_id"] for hit in response["hits"]["hits"]}
        if found != expected:
            named = _paths(raw)
            detail = {
                cid: {
                    "python": cid in expected,
                    "leaves": {p: leaf for p, leaf in views[cid].items() if p in named},
                }
                for cid in sorted(found ^ expected)
            }
            pytest.fail(f"filter {raw!r} at now_us={now_us}: {detail!r}")


def _paths(raw: dict[str, Any]) -> set[str]:
    """The field paths a filter names, nested filters included."""
    named = {key for key in raw if key not in ("junction", "filters")}
    for child in raw.get("filters", []):
        named |= _paths(child)
    return named
