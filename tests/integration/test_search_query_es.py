"""The list searches of ``readapi.search_query`` against the real Elasticsearch.

Indices are created by the indexer's own sink with its mappings, and documents are built by
the indexer's own document functions, so the queries run against exactly what production
indexes. Covers filters, text search, cursor pagination (every document once, in order,
ties on ``created_at`` broken by id, microsecond order), index rebuilds and project isolation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from elasticsearch import AsyncElasticsearch

from indexer.documents import Document, customer_document, epoch_micros, voucher_document
from indexer.sinks.elastic import ElasticSink
from readapi.search_query import (
    CREATED_AFTER,
    CREATED_BEFORE,
    InvalidParameter,
    ListParams,
    Page,
    build_search,
    decode_starting_after,
    encode_next_cursor,
    page_from_response,
    parse_customer_list,
    parse_holder_voucher_list,
    parse_voucher_list,
)

pytestmark = pytest.mark.services

SECRET = "integration-cursor-secret"
A = "proj_a"
B = "proj_b"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def _voucher(
    project: str,
    voucher_id: str,
    code: str,
    created_at: datetime,
    *,
    campaign_id: str | None = "camp_1",
    holder_id: str | None = None,
    voucher_type: str = "DISCOUNT_VOUCHER",
    active: bool = True,
    metadata: dict[str, Any] | None = None,
) -> Document:
    return voucher_document(
        {
            "id": voucher_id,
            "project_id": project,
            "code": code,
            "campaign_name": None if campaign_id is None else f"Campaign {campaign_id}",
            "campaign_id": campaign_id,
            "type": voucher_type,
            "discount": {"type": "AMOUNT", "amount_off": 500},
            "gift_amount": None,
            "gift_balance": None,
            "loyalty_points": None,
            "loyalty_balance": None,
            "start_date": None,
            "expiration_date": None,
            "active": active,
            "redemption_quantity": None,
            "redeemed_quantity": 0,
            "holder_id": holder_id,
            "metadata": metadata or {},
            "created_at": created_at,
            "updated_at": created_at,
        }
    )


def _customer(
    project: str,
    customer_id: str,
    created_at: datetime,
    *,
    name: str | None = None,
    email: str | None = None,
    source_id: str | None = None,
    segments: tuple[str, ...] = (),
) -> Document:
    return customer_document(
        {
            "id": customer_id,
            "project_id": project,
            "source_id": source_id,
            "name": name,
            "email": email,
            "phone": None,
            "address": None,
            "metadata": {},
            "total_redeemed": 0,
            "total_succeeded": 0,
            "total_failed": 0,
            "redeemed_amount": 0,
            "redeemed_points": 0,
            "loyalty_points": 0,
            "created_at": created_at,
            "updated_at": created_at,
            "static_segment_ids": list(segments),
        },
        [],
    )


def _project_vouchers(project: str) -> list[Document]:
    """23 vouchers: a group of six sharing one instant, pairs 1 µs apart, varied fields."""
    p = project[-1]
    docs: list[Document] = []
    # Six vouchers created at the very same instant: only the id orders them.
    for i in range(6):
        docs.append(_voucher(project, f"{p}_tie_{i}", f"TIE-{i}", T0, campaign_id="camp_tie"))
    # Same millisecond, one microsecond apart; ids sort the opposite way from time.
    docs.append(_voucher(project, f"{p}_us_a", "MICRO-A", T0 + timedelta(microseconds=2)))
    docs.append(_voucher(project, f"{p}_us_b", "MICRO-B", T0 + timedelta(microseconds=1)))
    docs.append(
        _voucher(
            project,
            f"{p}_summer_24",
            "SUMMER-24",
            T0 - timedelta(days=1),
            metadata={"tier": "gold", "city": "Oslo"},
        )
    )
    docs.append(
        _voucher(
            project,
            f"{p}_summer_25",
            "Summer25",
            T0 - timedelta(days=2),
            metadata={"tier": "silver", "city": "Oslo"},
        )
    )
    docs.append(
        _voucher(
            project,
            f"{p}_gift_1",
            "GIFT-ONE",
            T0 - timedelta(days=3),
            voucher_type="GIFT_VOUCHER",
            holder_id=f"{p}_cust_1",
            metadata={"note": "birthday present gold"},
        )
    )
    docs.append(
        _voucher(
            project,
            f"{p}_card_1",
            "CARD-1",
            T0 - timedelta(days=4),
            voucher_type="LOYALTY_CARD",
            holder_id=f"{p}_cust_1",
            campaign_id="camp_2",
        )
    )
    docs.append(
        _voucher(
            project,
            f"{p}_card_2",
            "CARD-2",
            T0 - timedelta(days=4, microseconds=1),
            voucher_type="LOYALTY_CARD",
            holder_id=f"{p}_cust_2",
            campaign_id="camp_2",
            active=False,
        )
    )
    for i in range(10):
        docs.append(
            _voucher(
                project,
                f"{p}_bulk_{i:02d}",
                f"BULK-{i:02d}",
                T0 - timedelta(days=10 + i // 3, milliseconds=i),
                campaign_id=None,
                active=i % 2 == 0,
                holder_id=f"{p}_cust_1" if i < 4 else None,
            )
        )
    return docs


def _project_customers(project: str) -> list[Document]:
    p = project[-1]
    return [
        _customer(
            project,
            f"{p}_cust_1",
            T0,
            name="Ann Lee",
            email="Ann.Lee@Example.com",
            source_id="crm-1",
            segments=("seg_gold",),
        ),
        _customer(
            project,
            f"{p}_cust_2",
            T0,
            name="Bob Stone",
            email="bob@example.com",
            source_id="CRM-2",
            segments=("seg_gold", "seg_new"),
        ),
        _customer(
            project,
            f"{p}_cust_3",
            T0 - timedelta(days=1),
            name="Ann Marie",
            email=None,
            source_id=None,
        ),
        _customer(
            project,
            f"{p}_cust_4",
            T0 - timedelta(days=2),
            name=None,
            email="lee@example.org",
            source_id="crm-4",
            segments=("seg_new",),
        ),
        _customer(
            project,
            f"{p}_cust_5",
            T0 - timedelta(days=2, microseconds=1),
            name="Carl",
            email="carl@example.net",
        ),
    ]


def _expected(docs: list[Document], keep: Callable[[Document], bool] = lambda d: True) -> list[str]:
    chosen = [d for d in docs if keep(d)]
    chosen.sort(key=lambda d: (d.fields["created_at_us"], d.object_id), reverse=True)
    return [d.object_id for d in chosen]


class Lists:
    """Runs list queries the way the read API does, cursors included."""

    def __init__(self, client: AsyncElasticsearch, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def page(self, params: ListParams, project: str) -> tuple[Page, str | None]:
        after = decode_starting_after(params, project, SECRET)
        body = build_search(params.kind, params, project, after=after)
        response = await self.client.search(
            index=f"{self.prefix}{params.kind.object_kind}s", body=body
        )
        page = page_from_response(response.body, params.limit)
        return page, encode_next_cursor(params, project, page.next_sort_key, SECRET)

    async def walk(
        self,
        parse: Callable[[Mapping[str, str]], ListParams],
        query: Mapping[str, str],
        project: str,
        limits: tuple[int, ...] = (),
    ) -> tuple[list[str], int]:
        """Every id of a list, page by page; checks total, has_more and next_cursor agree."""
        ids: list[str] = []
        cursor: str | None = None
        total: int | None = None
        for page_number in range(1000):
            page_query = dict(query)
            if limits:
                page_query["limit"] = str(limits[page_number % len(limits)])
            if cursor is not None:
                page_query["starting_after"] = cursor
            page, cursor = await self.page(parse(page_query), project)
            ids.extend(doc["id"] for doc in page.docs)
            assert total in (None, page.total)
            total = page.total
            assert page.has_more == (cursor is not None)
            if not page.has_more:
                break
        assert total is not None
        return ids, total

    async def ids(
        self,
        parse: Callable[[Mapping[str, str]], ListParams],
        query: Mapping[str, str],
        project: str = A,
    ) -> list[str]:
        ids, total = await self.walk(parse, {**query, "limit": "100"}, project)
        assert total == len(ids)
        return ids


async def _load(
    client: AsyncElasticsearch, prefix: str, docs: list[Document], generation: int = 1
) -> ElasticSink:
    sink = ElasticSink(client, prefix)
    await sink.create_indices(generation, {})
    await sink.apply([(doc, 1) for doc in docs], [])
    await sink.refresh()
    await sink.switch_to(generation)  # readers move once the generation is loaded
    return sink


@pytest.fixture
async def lists(es_client: AsyncElasticsearch, es_prefix: str) -> Lists:
    docs = [
        *_project_vouchers(A),
        *_project_vouchers(B),
        *_project_customers(A),
        *_project_customers(B),
    ]
    await _load(es_client, es_prefix, docs)
    return Lists(es_client, es_prefix)


def _holder_list(customer_id: str) -> Callable[[Mapping[str, str]], ListParams]:
    return lambda query: parse_holder_voucher_list(query, customer_id)


# ---------------------------------------------------------------------------------------
# Pagination


@pytest.mark.parametrize("limits", [(1,), (4,), (10,), (100,), (3, 1, 7)])
async def test_pages_visit_every_voucher_once_in_order(
    lists: Lists, limits: tuple[int, ...]
) -> None:
    ids, total = await lists.walk(parse_voucher_list, {}, A, limits)
    expected = _expected(_project_vouchers(A))
    assert ids == expected
    assert total == len(expected) == 23


async def test_ties_on_created_at_are_broken_by_id_descending(lists: Lists) -> None:
    ids, _ = await lists.walk(parse_voucher_list, {"campaign_id": "camp_tie"}, A, (2,))
    assert ids == [f"a_tie_{i}" for i in reversed(range(6))]


async def test_order_keeps_microseconds(lists: Lists) -> None:
    ids = await lists.ids(parse_voucher_list, {"q": "micro"})
    # Same millisecond: the later instant first although its id sorts lower.
    assert ids == ["a_us_a", "a_us_b"]


async def test_customers_paginate_in_order(lists: Lists) -> None:
    ids, total = await lists.walk(parse_customer_list, {}, A, (2,))
    assert ids == ["a_cust_2", "a_cust_1", "a_cust_3", "a_cust_4", "a_cust_5"]
    assert total == 5


async def test_customer_vouchers_paginate(lists: Lists) -> None:
    ids, total = await lists.walk(_holder_list("a_cust_1"), {}, A, (2,))
    expected = _expected(_project_vouchers(A), lambda d: d.fields["holder_id"] == "a_cust_1")
    assert ids == expected
    assert total == 6


async def test_cursor_survives_an_index_rebuild(
    es_client: AsyncElasticsearch, es_prefix: str, lists: Lists
) -> None:
    first, cursor = await lists.page(parse_voucher_list({"limit": "5"}), A)
    assert cursor is not None
    rebuilt = _project_vouchers(A)
    newer = _voucher(A, "a_new", "NEW-1", T0 + timedelta(days=1))
    older = _voucher(A, "a_old", "OLD-1", T0 - timedelta(days=100))
    await _load(es_client, es_prefix, [*rebuilt, newer, older], generation=2)
    rest, total = await lists.walk(parse_voucher_list, {"starting_after": cursor}, A, (5,))
    assert total == 25
    expected = _expected([*rebuilt, newer, older])
    assert [doc["id"] for doc in first.docs] + rest == [i for i in expected if i != "a_new"]


async def test_a_rebuild_deletes_every_older_generation(
    es_client: AsyncElasticsearch, es_prefix: str
) -> None:
    # A generation left by a load that crashed before its alias switch, then two loads.
    await es_client.indices.create(index=f"{es_prefix}vouchers_v1")
    await _load(es_client, es_prefix, [], generation=2)
    await _load(es_client, es_prefix, [], generation=3)
    found = await es_client.indices.get(index=f"{es_prefix}*", expand_wildcards="all")
    assert sorted(found.body) == sorted(
        f"{es_prefix}{kind}_v3" for kind in ("vouchers", "customers", "campaigns", "segments")
    )
    aliases = await es_client.indices.get_alias(name=f"{es_prefix}vouchers")
    assert list(aliases.body) == [f"{es_prefix}vouchers_v3"]


async def test_cursor_from_another_list_is_refused(lists: Lists) -> None:
    _, cursor = await lists.page(parse_voucher_list({"limit": "2"}), A)
    assert cursor is not None
    params = parse_voucher_list({"limit": "2", "type": "GIFT_VOUCHER", "starting_after": cursor})
    with pytest.raises(InvalidParameter):
        await lists.page(params, A)
    with pytest.raises(InvalidParameter):
        await lists.page(parse_voucher_list({"starting_after": cursor}), B)


# ---------------------------------------------------------------------------------------
# Filters


@pytest.mark.parametrize(
    ("query", "keep"),
    [
        ({"campaign_id": "camp_2"}, lambda d: d.fields["campaign_id"] == "camp_2"),
        ({"holder_id": "a_cust_1"}, lambda d: d.fields["holder_id"] == "a_cust_1"),
        ({"type": "LOYALTY_CARD"}, lambda d: d.fields["type"] == "LOYALTY_CARD"),
        ({"type": "GIFT_VOUCHER"}, lambda d: d.fields["type"] == "GIFT_VOUCHER"),
        ({"active": "false"}, lambda d: d.fields["active"] is False),
        ({"active": "true"}, lambda d: d.fields["active"] is True),
        (
            {"active": "true", "holder_id": "a_cust_1", "type": "DISCOUNT_VOUCHER"},
            lambda d: (
                d.fields["active"]
                and d.fields["holder_id"] == "a_cust_1"
                and d.fields["type"] == "DISCOUNT_VOUCHER"
            ),
        ),
        ({"campaign_id": "nope"}, lambda d: False),
    ],
)
async def test_voucher_filters(
    lists: Lists, query: dict[str, str], keep: Callable[[Document], bool]
) -> None:
    expected = _expected(_project_vouchers(A), keep)
    assert await lists.ids(parse_voucher_list, query) == expected


async def test_created_at_bounds_are_exclusive_to_the_microsecond(lists: Lists) -> None:
    micro_b = epoch_micros(T0 + timedelta(microseconds=1))
    docs = _project_vouchers(A)
    # after T0 (the ties) excludes them, keeps the two created 1 and 2 µs later.
    after = await lists.ids(parse_voucher_list, {CREATED_AFTER: "2024-05-01T12:00:00Z"})
    assert after == ["a_us_a", "a_us_b"]
    after_b = await lists.ids(
        parse_voucher_list, {CREATED_AFTER: "2024-05-01T12:00:00.000001+00:00"}
    )
    assert after_b == ["a_us_a"]
    # Naive means UTC; another offset names the same instant.
    before = await lists.ids(
        parse_voucher_list, {CREATED_BEFORE: "2024-05-01T14:00:00.000001+02:00"}
    )
    assert before == _expected(docs, lambda d: d.fields["created_at_us"] < micro_b)
    assert "a_us_b" not in before and "a_tie_0" in before
    # Naive means UTC; a date alone is midnight; sub-microsecond digits count exactly.
    naive = await lists.ids(parse_voucher_list, {CREATED_AFTER: "2024-05-01T12:00:00"})
    assert naive == after
    window = await lists.ids(
        parse_voucher_list,
        {CREATED_AFTER: "2024-04-26", CREATED_BEFORE: "2024-04-30T12:00:00.0000001"},
    )
    assert window == ["a_summer_24", "a_summer_25", "a_gift_1", "a_card_1", "a_card_2"]
    window = await lists.ids(
        parse_voucher_list,
        {CREATED_AFTER: "2024-04-27T12:00:00", CREATED_BEFORE: "2024-04-30T12:00:00Z"},
    )
    assert window == ["a_summer_25", "a_gift_1"]
    empty = await lists.ids(
        parse_voucher_list, {CREATED_AFTER: "2024-06-01", CREATED_BEFORE: "2024-05-01"}
    )
    assert empty == []


async def test_customer_filters(lists: Lists) -> None:
    assert await lists.ids(parse_customer_list, {"email": "ann.lee@EXAMPLE.com"}) == ["a_cust_1"]
    assert await lists.ids(parse_customer_list, {"email": "ann.lee@example"}) == []
    assert await lists.ids(parse_customer_list, {"segment_id": "seg_gold"}) == [
        "a_cust_2",
        "a_cust_1",
    ]
    assert await lists.ids(parse_customer_list, {"segment_id": "seg_new"}) == [
        "a_cust_2",
        "a_cust_4",
    ]
    assert await lists.ids(
        parse_customer_list, {"segment_id": "seg_new", CREATED_BEFORE: "2024-05-01T12:00:00Z"}
    ) == ["a_cust_4"]
    assert await lists.ids(parse_customer_list, {CREATED_AFTER: "2024-04-29T12:00:00Z"}) == [
        "a_cust_2",
        "a_cust_1",
        "a_cust_3",
    ]
    assert await lists.ids(parse_customer_list, {CREATED_AFTER: "2024-04-29T11:59:59.999999Z"}) == [
        "a_cust_2",
        "a_cust_1",
        "a_cust_3",
        "a_cust_4",
    ]


# ---------------------------------------------------------------------------------------
# Text search


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("SUMMER-24", ["a_summer_24"]),
        ("summer-24", ["a_summer_24"]),
        ("summer", ["a_summer_24", "a_summer_25"]),
        ("Summ", ["a_summer_24", "a_summer_25"]),
        ("gold", ["a_summer_24", "a_gift_1"]),
        ("GOLD oslo", ["a_summer_24"]),
        ("oslo", ["a_summer_24", "a_summer_25"]),
        ("birthday present", ["a_gift_1"]),
        ("present birthday", ["a_gift_1"]),
        ("birthday silver", []),
        ("card-2", ["a_card_2"]),
        ("zzz", []),
    ],
)
async def test_voucher_text_search(lists: Lists, q: str, expected: list[str]) -> None:
    assert await lists.ids(parse_voucher_list, {"q": q}) == expected


async def test_voucher_text_search_combines_with_filters(lists: Lists) -> None:
    assert await lists.ids(parse_voucher_list, {"q": "card", "active": "false"}) == ["a_card_2"]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("ann", ["a_cust_1", "a_cust_3"]),
        ("Ann Lee", ["a_cust_1"]),
        ("ANN.LEE@example.com", ["a_cust_1"]),
        ("bob@example.com", ["a_cust_2"]),
        ("crm-1", ["a_cust_1"]),
        ("CRM-2", ["a_cust_2"]),
        ("carl", ["a_cust_5"]),
        ("nobody", []),
    ],
)
async def test_customer_text_search(lists: Lists, q: str, expected: list[str]) -> None:
    assert await lists.ids(parse_customer_list, {"q": q}) == expected


@pytest.mark.parametrize(
    "q",
    [
        "code:* OR (a AND b)",
        "*",
        "?",
        '"unbalanced',
        "a~2 b^3 -c +d",
        "/.*/",
        "\\",
        '{"query": {"match_all": {}}}',
        "!!!",
        "x" * 200,
        "ünïcödé 日本語 🎉",
    ],
)
async def test_hostile_text_is_only_ever_searched_for(lists: Lists, q: str) -> None:
    assert await lists.ids(parse_voucher_list, {"q": q}) == []
    assert await lists.ids(parse_customer_list, {"q": q}) == []


# ---------------------------------------------------------------------------------------
# Tenancy


async def test_projects_never_see_each_other(lists: Lists) -> None:
    for parse, query in (
        (parse_voucher_list, {}),
        (parse_voucher_list, {"campaign_id": "camp_tie"}),
        (parse_voucher_list, {"q": "summer"}),
        (parse_voucher_list, {"holder_id": "a_cust_1"}),
        (parse_customer_list, {}),
        (parse_customer_list, {"segment_id": "seg_gold"}),
        (parse_customer_list, {"q": "ann"}),
        (parse_customer_list, {"email": "bob@example.com"}),
    ):
        ids_a = await lists.ids(parse, query, A)
        ids_b = await lists.ids(parse, query, B)
        assert all(i.startswith("a_") for i in ids_a), (query, ids_a)
        assert all(i.startswith("b_") for i in ids_b), (query, ids_b)
        if "holder_id" not in query:
            assert [i[2:] for i in ids_a] == [i[2:] for i in ids_b]
    # Another project's holder id matches nothing here.
    assert await lists.ids(_holder_list("b_cust_1"), {}, A) == []
    assert await lists.ids(parse_voucher_list, {}, "proj_missing") == []


async def test_limit_plus_one_detects_the_last_page_exactly(lists: Lists) -> None:
    params = parse_voucher_list({"campaign_id": "camp_tie", "limit": "6"})
    page, cursor = await lists.page(params, A)
    assert (len(page.docs), page.has_more, cursor, page.total) == (6, False, None, 6)
    page, cursor = await lists.page(replace(params, limit=5), A)
    assert (len(page.docs), page.has_more, page.total) == (5, True, 6)
    assert cursor is not None
