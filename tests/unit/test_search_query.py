"""List parameters and search bodies: validation of every parameter, the built queries."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict, MultiDictProxy

from cache.types import ObjectKind, VoucherType
from readapi.cursor import MAX_CURSOR_LENGTH, SortKey, encode_cursor
from readapi.search_query import (
    ALLOWED_PARAMETERS,
    CREATED_AFTER,
    CREATED_BEFORE,
    CustomerListParams,
    HolderVoucherListParams,
    InvalidParameter,
    ListKind,
    ListParams,
    MalformedSearchResponse,
    VoucherListParams,
    build_search,
    cursor_scope,
    decode_starting_after,
    encode_next_cursor,
    page_from_response,
    parse_customer_list,
    parse_holder_voucher_list,
    parse_instant,
    parse_voucher_list,
)

SECRET = "unit-test-secret"
PROJECT = "proj_1"


def _us(text: str) -> int:
    instant = datetime.fromisoformat(text)
    delta = instant - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _vouchers(**query: str) -> VoucherListParams:
    return parse_voucher_list(query)


def _customers(**query: str) -> CustomerListParams:
    return parse_customer_list(query)


def _rejects(
    parse: Callable[[Mapping[str, str]], object],
    query: Mapping[str, str],
    name: str,
    match: str | None = None,
) -> InvalidParameter:
    with pytest.raises(InvalidParameter, match=match) as caught:
        parse(query)
    assert caught.value.name == name
    assert caught.value.message == str(caught.value)
    return caught.value


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


# ---------------------------------------------------------------------------------------
# Defaults, names, repetitions


def test_defaults() -> None:
    assert parse_voucher_list({}) == VoucherListParams()
    assert parse_customer_list({}) == CustomerListParams()
    assert parse_holder_voucher_list({}, "c_1") == HolderVoucherListParams(customer_id="c_1")
    assert VoucherListParams().limit == 10


@pytest.mark.parametrize(
    ("parse", "name"),
    [
        (parse_voucher_list, "email"),
        (parse_voucher_list, "created_at"),
        (parse_voucher_list, "Limit"),
        (parse_customer_list, "campaign_id"),
        (parse_customer_list, "type"),
        (parse_customer_list, "active"),
        (parse_customer_list, "holder_id"),
        (lambda q: parse_holder_voucher_list(q, "c_1"), "q"),
        (lambda q: parse_holder_voucher_list(q, "c_1"), "created_at[after]"),
    ],
)
def test_unknown_parameters_are_refused_by_name(
    parse: Callable[[Mapping[str, str]], object], name: str
) -> None:
    error = _rejects(parse, {name: "x"}, name, match="unknown query parameter")
    assert f'"{name}"' in error.message


def test_unknown_parameter_with_a_huge_name_is_reported_bounded() -> None:
    name = "x" * 10_000
    error = _rejects(parse_voucher_list, {name: "1"}, "x" * 60)
    assert len(error.message) < 500


@pytest.mark.parametrize("name", ["limit", "q", "campaign_id", CREATED_AFTER, "starting_after"])
def test_repeated_parameters_are_refused(name: str) -> None:
    query = MultiDictProxy(MultiDict([(name, "1"), ("type", "GIFT_VOUCHER"), (name, "2")]))
    error = _rejects(parse_voucher_list, query, name, match="given 2 times")
    assert name in error.message


def test_repeated_parameter_of_customer_list() -> None:
    query = MultiDict([("email", "a@b.c"), ("email", "a@b.c")])
    _rejects(parse_customer_list, query, "email", match="give it once")


def test_multidict_with_single_values_is_accepted() -> None:
    query = MultiDictProxy(MultiDict([("limit", "5"), ("type", "LOYALTY_CARD")]))
    assert parse_voucher_list(query) == VoucherListParams(type=VoucherType.LOYALTY_CARD, limit=5)


# ---------------------------------------------------------------------------------------
# Each parameter


@pytest.mark.parametrize("name", ["campaign_id", "holder_id"])
def test_voucher_id_filters(name: str) -> None:
    assert getattr(_vouchers(**{name: "camp_1"}), name) == "camp_1"
    assert getattr(_vouchers(**{name: "x" * 200}), name) == "x" * 200
    _rejects(parse_voucher_list, {name: ""}, name, match="must not be empty")
    _rejects(parse_voucher_list, {name: "x" * 201}, name, match="at most 200")
    _rejects(parse_voucher_list, {name: "a\x00b"}, name, match="control characters")
    _rejects(parse_voucher_list, {name: "a\ud800"}, name, match="control characters")


def test_voucher_type() -> None:
    for member in VoucherType:
        assert _vouchers(type=member.value).type is member
    for bad in ("", "gift_voucher", "GIFT", "DISCOUNT_COUPONS", "GIFT_VOUCHER "):
        error = _rejects(parse_voucher_list, {"type": bad}, "type")
        assert "DISCOUNT_VOUCHER, GIFT_VOUCHER, LOYALTY_CARD" in error.message


def test_active() -> None:
    assert _vouchers(active="true").active is True
    assert _vouchers(active="false").active is False
    for bad in ("", "True", "1", "yes", "false ", "FALSE"):
        _rejects(parse_voucher_list, {"active": bad}, "active", match="true or false")


@pytest.mark.parametrize("parse", [parse_voucher_list, parse_customer_list])
def test_q(parse: Callable[[Mapping[str, str]], VoucherListParams | CustomerListParams]) -> None:
    assert parse({"q": "  summer sale\t"}).q == "summer sale"
    assert parse({"q": "x" * 200}).q == "x" * 200
    assert parse({"q": "  " + "x" * 200 + "  "}).q == "x" * 200
    assert parse({"q": "a\tb\nc"}).q == "a\tb\nc"
    _rejects(parse, {"q": ""}, "q", match="must not be empty")
    _rejects(parse, {"q": "   \t "}, "q", match="must not be empty")
    _rejects(parse, {"q": "x" * 201}, "q", match="at most 200")
    _rejects(parse, {"q": "a\x1bb"}, "q", match="control characters")


def test_email_is_lower_cased_like_the_indexer() -> None:
    assert _customers(email="Ann.Lee@Example.COM").email_lower == "ann.lee@example.com"
    assert _customers(email="ÉLODIE@exemple.fr").email_lower == "élodie@exemple.fr"
    _rejects(parse_customer_list, {"email": ""}, "email")
    _rejects(parse_customer_list, {"email": "a" * 321}, "email", match="at most 320")


def test_segment_id() -> None:
    assert _customers(segment_id="seg_1").segment_id == "seg_1"
    _rejects(parse_customer_list, {"segment_id": ""}, "segment_id")
    _rejects(parse_customer_list, {"segment_id": "s" * 201}, "segment_id")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", 1),
        ("10", 10),
        ("100", 100),
        ("007", 7),
    ],
)
def test_limit_valid(value: str, expected: int) -> None:
    assert _vouchers(limit=value).limit == expected
    assert _customers(limit=value).limit == expected
    assert parse_holder_voucher_list({"limit": value}, "c").limit == expected


@pytest.mark.parametrize(
    "value", ["", "0", "101", "1000", "-1", "+5", " 5", "5 ", "1.0", "1e2", "ten", "٣", "0010"]
)
def test_limit_invalid(value: str) -> None:
    _rejects(parse_voucher_list, {"limit": value}, "limit", match="integer from 1 to 100")
    _rejects(parse_customer_list, {"limit": value}, "limit")
    _rejects(lambda q: parse_holder_voucher_list(q, "c"), {"limit": value}, "limit")


def test_starting_after_is_kept_as_text_and_bounded() -> None:
    assert _vouchers(starting_after="abc").starting_after == "abc"
    _rejects(parse_voucher_list, {"starting_after": ""}, "starting_after")
    _rejects(
        parse_voucher_list,
        {"starting_after": "a" * (MAX_CURSOR_LENGTH + 1)},
        "starting_after",
        match="too long",
    )


def test_holder_id_from_the_path_is_validated() -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_holder_voucher_list({}, "")
    assert caught.value.name == "id"
    with pytest.raises(InvalidParameter):
        parse_holder_voucher_list({}, "c" * 201)


# ---------------------------------------------------------------------------------------
# created_at bounds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01", "2024-05-01T00:00:00+00:00"),
        ("2024-05-01T10:00:00", "2024-05-01T10:00:00+00:00"),
        ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00+00:00"),
        ("2024-05-01T10:00:00.123456Z", "2024-05-01T10:00:00.123456+00:00"),
        ("2024-05-01T10:00:00.5+02:00", "2024-05-01T08:00:00.5+00:00"),
        ("2024-05-01T10:00:00-05:30", "2024-05-01T15:30:00+00:00"),
        ("2024-05-01T10:00", "2024-05-01T10:00:00+00:00"),
        ("2024-05-01 10:00:00", "2024-05-01T10:00:00+00:00"),
        ("20240501T100000Z", "2024-05-01T10:00:00+00:00"),
        ("2024-05-01T10:00:00 02:00", "2024-05-01T08:00:00+00:00"),
        ("1969-12-31T23:59:59.999999Z", "1969-12-31T23:59:59.999999+00:00"),
        ("0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00+01:00"),
    ],
)
def test_instants(text: str, expected: str) -> None:
    assert parse_instant(CREATED_AFTER, text) == (_us(expected), False)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2024-13-01",
        "2024-02-30",
        "2024-05-01T25:00:00",
        "2024-05-01T10:00:00+25:00",
        "1714557600",
        "2024-05-01T10:00:00.1.2",
        "2024-05-01T10:00:00Z trailing",
        "\uff12\uff10\uff12\uff14-05-01",  # full-width digits
        "2024-05-01\x00",
        "2024-05-01T10:00:00+02:00" + "0" * 60,
    ],
)
def test_invalid_instants(text: str) -> None:
    for name in (CREATED_AFTER, CREATED_BEFORE):
        error = _rejects(parse_voucher_list, {name: text}, name, match="ISO 8601")
        assert name in error.message
        _rejects(parse_customer_list, {name: text}, name)


def test_bounds_are_exclusive_microseconds() -> None:
    params = _vouchers(
        **{CREATED_AFTER: "2024-05-01T00:00:00Z", CREATED_BEFORE: "2024-06-01T00:00:00.000001Z"}
    )
    assert params.created_after_us == _us("2024-05-01T00:00:00+00:00")
    assert params.created_before_us == _us("2024-06-01T00:00:00.000001+00:00")
    body = build_search(ListKind.VOUCHERS, params, PROJECT, after=None)
    ranges = [c["range"] for c in body["query"]["bool"]["filter"] if "range" in c]
    assert ranges == [
        {"created_at_us": {"gt": params.created_after_us, "lt": params.created_before_us}}
    ]


def test_sub_microsecond_digits_are_honoured_exactly() -> None:
    base = _us("2024-05-01T10:00:00.123456+00:00")
    params = _customers(
        **{
            CREATED_AFTER: "2024-05-01T10:00:00.123456789Z",
            CREATED_BEFORE: "2024-05-01T10:00:00.123456001Z",
        }
    )
    # after .123456789: .123456 is earlier, .123457 later; before .123456001: .123456 earlier.
    assert params.created_after_us == base
    assert params.created_before_us == base + 1
    exact = _customers(**{CREATED_BEFORE: "2024-05-01T10:00:00.123456000Z"})
    assert exact.created_before_us == base


def test_inverted_bounds_give_an_empty_list_not_an_error() -> None:
    params = _vouchers(**{CREATED_AFTER: "2024-06-01", CREATED_BEFORE: "2024-05-01"})
    assert params.created_after_us is not None and params.created_before_us is not None
    assert params.created_after_us > params.created_before_us


# ---------------------------------------------------------------------------------------
# Search bodies


def test_voucher_search_body() -> None:
    params = _vouchers(
        campaign_id="camp_1",
        holder_id="cust_1",
        type="GIFT_VOUCHER",
        active="false",
        limit="25",
    )
    body = build_search(ListKind.VOUCHERS, params, PROJECT, after=None)
    assert body == {
        "query": {
            "bool": {
                "filter": [
                    {"term": {"project_id": {"value": PROJECT}}},
                    {"term": {"campaign_id": {"value": "camp_1"}}},
                    {"term": {"holder_id": {"value": "cust_1"}}},
                    {"term": {"type": {"value": "GIFT_VOUCHER"}}},
                    {"term": {"active": {"value": False}}},
                ]
            }
        },
        "sort": [{"created_at_us": {"order": "desc"}}, {"id": {"order": "desc"}}],
        "size": 26,
        "track_total_hits": True,
        "_source": ["doc"],
    }


def test_search_after_comes_from_the_sort_key() -> None:
    body = build_search(
        ListKind.CUSTOMER_VOUCHERS,
        parse_holder_voucher_list({"limit": "3"}, "cust_9"),
        PROJECT,
        after=SortKey(1_714_557_600_000_001, "v_3"),
    )
    assert body["search_after"] == [1_714_557_600_000_001, "v_3"]
    assert body["size"] == 4
    assert body["query"]["bool"]["filter"] == [
        {"term": {"project_id": {"value": PROJECT}}},
        {"term": {"holder_id": {"value": "cust_9"}}},
    ]


def test_customer_search_body() -> None:
    params = _customers(email="Ann@Example.com", segment_id="seg_1")
    filters = build_search(ListKind.CUSTOMERS, params, PROJECT, after=None)["query"]["bool"][
        "filter"
    ]
    assert filters == [
        {"term": {"project_id": {"value": PROJECT}}},
        {"term": {"email_lower": {"value": "ann@example.com"}}},
        {"term": {"segment_ids": {"value": "seg_1"}}},
    ]


def test_voucher_text_search_matches_words_or_a_code_prefix() -> None:
    filters = build_search(ListKind.VOUCHERS, _vouchers(q=" SUMMER-24 "), PROJECT, after=None)[
        "query"
    ]["bool"]["filter"]
    assert filters[1] == {
        "bool": {
            "should": [
                {"match": {"search_text": {"query": "SUMMER-24", "operator": "and"}}},
                {"prefix": {"code_lower": {"value": "summer-24"}}},
            ],
            "minimum_should_match": 1,
        }
    }


def test_voucher_text_search_with_spaces_matches_the_whole_code() -> None:
    filters = build_search(ListKind.VOUCHERS, _vouchers(q="Black Friday"), PROJECT, after=None)[
        "query"
    ]["bool"]["filter"]
    assert filters[1]["bool"]["should"][1] == {"term": {"code_lower": {"value": "black friday"}}}


@pytest.mark.parametrize("q", ["a", "Z", " 7 ", "é"])
def test_a_one_character_q_matches_the_whole_code_not_a_prefix(q: str) -> None:
    """A prefix of one character would walk most of the index's codes."""
    filters = build_search(ListKind.VOUCHERS, _vouchers(q=q), PROJECT, after=None)[
        "query"
    ]["bool"]["filter"]
    code = q.strip().lower()
    assert filters[1]["bool"]["should"][1] == {"term": {"code_lower": {"value": code}}}
    assert "prefix" not in {node for node in _walk(filters) if isinstance(node, str)}


def test_a_two_character_q_matches_a_code_prefix() -> None:
    filters = build_search(ListKind.VOUCHERS, _vouchers(q="Ab"), PROJECT, after=None)[
        "query"
    ]["bool"]["filter"]
    assert filters[1]["bool"]["should"][1] == {"prefix": {"code_lower": {"value": "ab"}}}


def test_customer_text_search() -> None:
    filters = build_search(ListKind.CUSTOMERS, _customers(q="Ann@X.io"), PROJECT, after=None)[
        "query"
    ]["bool"]["filter"]
    assert filters[1] == {
        "bool": {
            "should": [
                {"match": {"search_text": {"query": "Ann@X.io", "operator": "and"}}},
                {"term": {"email_lower": {"value": "ann@x.io"}}},
                {"term": {"source_id": {"value": "Ann@X.io"}}},
            ],
            "minimum_should_match": 1,
        }
    }


@pytest.mark.parametrize(
    "q", ["code:* OR (a AND b)", '"quoted"', "a~2 b^3", "/re.*gex/", "\\", '{"json": 1}']
)
def test_user_text_never_reaches_a_query_parser(q: str) -> None:
    for kind, params in (
        (ListKind.VOUCHERS, _vouchers(q=q)),
        (ListKind.CUSTOMERS, _customers(q=q)),
    ):
        body = build_search(kind, params, PROJECT, after=None)
        keys = {node for node in _walk(body) if isinstance(node, str)}
        assert not keys & {"query_string", "simple_query_string", "regexp", "wildcard", "script"}


def test_kind_mismatch_and_missing_project_are_caller_errors() -> None:
    with pytest.raises(TypeError):
        build_search(ListKind.CUSTOMERS, VoucherListParams(), PROJECT, after=None)
    with pytest.raises(ValueError):
        build_search(ListKind.VOUCHERS, VoucherListParams(), "", after=None)


def test_list_kinds() -> None:
    assert ListKind.VOUCHERS.object_kind is ObjectKind.VOUCHER
    assert ListKind.CUSTOMER_VOUCHERS.object_kind is ObjectKind.VOUCHER
    assert ListKind.CUSTOMERS.object_kind is ObjectKind.CUSTOMER
    assert ListKind.CUSTOMER_VOUCHERS.data_ref == "vouchers"
    assert ListKind.CUSTOMERS.data_ref == "customers"
    assert VoucherListParams.kind is ListKind.VOUCHERS
    assert HolderVoucherListParams(customer_id="c").kind is ListKind.CUSTOMER_VOUCHERS


# ---------------------------------------------------------------------------------------
# Cursors bound to their list


def test_cursor_round_trip_through_the_list_functions() -> None:
    params = _vouchers(campaign_id="camp_1", limit="5")
    cursor = encode_next_cursor(params, PROJECT, SortKey(10, "v_1"), SECRET)
    assert cursor is not None
    assert encode_next_cursor(params, PROJECT, None, SECRET) is None
    # The page size may change between pages.
    again = _vouchers(campaign_id="camp_1", limit="50", starting_after=cursor)
    assert decode_starting_after(again, PROJECT, SECRET) == SortKey(10, "v_1")
    assert decode_starting_after(params, PROJECT, SECRET) is None


@pytest.mark.parametrize(
    "other",
    [
        _vouchers(campaign_id="camp_2"),
        _vouchers(),
        _vouchers(campaign_id="camp_1", active="true"),
        _customers(),
        HolderVoucherListParams(customer_id="camp_1"),
    ],
)
def test_cursor_of_another_list_is_refused(other: ListParams) -> None:
    cursor = encode_next_cursor(_vouchers(campaign_id="camp_1"), PROJECT, SortKey(1, "v"), SECRET)
    assert cursor is not None
    with pytest.raises(InvalidParameter, match="another list") as caught:
        decode_starting_after(replace(other, starting_after=cursor), PROJECT, SECRET)
    assert caught.value.name == "starting_after"


def test_cursor_of_another_project_is_refused() -> None:
    params = _vouchers()
    cursor = encode_next_cursor(params, PROJECT, SortKey(1, "v"), SECRET)
    assert cursor is not None
    with pytest.raises(InvalidParameter):
        decode_starting_after(_vouchers(starting_after=cursor), "proj_2", SECRET)


def test_garbage_cursor_is_an_invalid_parameter() -> None:
    with pytest.raises(InvalidParameter, match="not a valid cursor") as caught:
        decode_starting_after(_vouchers(starting_after="garbage"), PROJECT, SECRET)
    assert caught.value.name == "starting_after"


def test_scope_ignores_paging_and_sees_every_filter() -> None:
    base = cursor_scope(_customers(q="ann"), PROJECT)
    assert cursor_scope(_customers(q="ann", limit="3", starting_after="x"), PROJECT) == base
    assert cursor_scope(_customers(q="bob"), PROJECT) != base
    assert cursor_scope(_customers(q="ann", segment_id="s"), PROJECT) != base
    assert cursor_scope(_customers(q="ann"), "proj_2") != base
    assert cursor_scope(_customers(q="é ✓"), PROJECT).isascii()


# ---------------------------------------------------------------------------------------
# Pages


def _response(count: int, total: int) -> dict[str, Any]:
    hits = [
        {"_id": f"v{i}", "_source": {"doc": {"id": f"v{i}"}}, "sort": [1000 - i, f"v{i}"]}
        for i in range(count)
    ]
    return {"hits": {"total": {"value": total, "relation": "eq"}, "hits": hits}}


def test_page_with_more() -> None:
    page = page_from_response(_response(4, 9), 3)
    assert page.docs == [{"id": "v0"}, {"id": "v1"}, {"id": "v2"}]
    assert page.has_more is True
    assert page.next_sort_key == SortKey(998, "v2")
    assert page.total == 9
    docs, has_more, next_key, total = page
    assert (len(docs), has_more, next_key, total) == (3, True, SortKey(998, "v2"), 9)


def test_last_page() -> None:
    page = page_from_response(_response(3, 3), 3)
    assert len(page.docs) == 3
    assert page.has_more is False
    assert page.next_sort_key is None
    assert page_from_response(_response(0, 0), 10) == ([], False, None, 0)


@pytest.mark.parametrize(
    "response",
    [
        {},
        {"hits": {}},
        {"hits": {"total": {"value": 1}, "hits": [{"_source": {}}]}},
        {"hits": {"total": {"value": 2}, "hits": [{"_source": {"doc": {}}}] * 2}},
        {"hits": {"total": {"value": 2}, "hits": [{"_source": {"doc": {}}, "sort": [1.5, 2]}] * 2}},
    ],
)
def test_malformed_responses(response: dict[str, Any]) -> None:
    with pytest.raises(MalformedSearchResponse):
        page_from_response(response, 1)


# ---------------------------------------------------------------------------------------
# Properties over random parameter combinations

_ids = st.text(min_size=1, max_size=200).filter(lambda s: s.isprintable())
_instants = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.isoformat())

_voucher_queries = st.fixed_dictionaries(
    {},
    optional={
        "campaign_id": _ids,
        "holder_id": _ids,
        "type": st.sampled_from([t.value for t in VoucherType]),
        "active": st.sampled_from(["true", "false"]),
        "q": _ids.filter(lambda s: s.strip() != ""),
        CREATED_AFTER: _instants,
        CREATED_BEFORE: _instants,
        "limit": st.integers(1, 100).map(str),
    },
)
_customer_queries = st.fixed_dictionaries(
    {},
    optional={
        "email": _ids,
        "segment_id": _ids,
        "q": _ids.filter(lambda s: s.strip() != ""),
        CREATED_AFTER: _instants,
        CREATED_BEFORE: _instants,
        "limit": st.integers(1, 100).map(str),
    },
)
_projects = st.text(min_size=1, max_size=40)
_after = st.none() | st.builds(SortKey, st.integers(-(2**63), 2**63 - 1), _ids)


def _assert_project_scoped(body: dict[str, Any], project: str, limit: int) -> None:
    filters = body["query"]["bool"]["filter"]
    assert filters[0] == {"term": {"project_id": {"value": project}}}
    assert set(body["query"]) == {"bool"}
    assert set(body["query"]["bool"]) == {"filter"}
    assert body["size"] == limit + 1
    assert body["sort"] == [{"created_at_us": {"order": "desc"}}, {"id": {"order": "desc"}}]


@given(_voucher_queries, _projects, _after)
def test_voucher_queries_always_carry_the_project_filter(
    query: dict[str, str], project: str, after: SortKey | None
) -> None:
    params = parse_voucher_list(query)
    body = build_search(ListKind.VOUCHERS, params, project, after=after)
    _assert_project_scoped(body, project, params.limit)
    terms = {"campaign_id", "holder_id", "type", "active", "q"} & set(query)
    ranged = {CREATED_AFTER, CREATED_BEFORE} & set(query)
    assert len(body["query"]["bool"]["filter"]) == 1 + len(terms) + (1 if ranged else 0)


@given(_customer_queries, _projects, _after)
def test_customer_queries_always_carry_the_project_filter(
    query: dict[str, str], project: str, after: SortKey | None
) -> None:
    params = parse_customer_list(query)
    body = build_search(ListKind.CUSTOMERS, params, project, after=after)
    _assert_project_scoped(body, project, params.limit)


@given(_ids, st.integers(1, 100), _projects)
def test_holder_queries_always_carry_the_project_filter(
    customer_id: str, limit: int, project: str
) -> None:
    params = parse_holder_voucher_list({"limit": str(limit)}, customer_id)
    body = build_search(ListKind.CUSTOMER_VOUCHERS, params, project, after=None)
    _assert_project_scoped(body, project, limit)
    assert body["query"]["bool"]["filter"][1] == {"term": {"holder_id": {"value": customer_id}}}


_names = st.sampled_from(sorted({n for names in ALLOWED_PARAMETERS.values() for n in names}))
_any_queries = st.dictionaries(_names | st.text(max_size=20), st.text(max_size=300), max_size=6)


@given(_any_queries)
def test_arbitrary_queries_only_ever_raise_invalid_parameter(query: dict[str, str]) -> None:
    for kind, parse in (
        (ListKind.VOUCHERS, parse_voucher_list),
        (ListKind.CUSTOMERS, parse_customer_list),
        (ListKind.CUSTOMER_VOUCHERS, lambda q: parse_holder_voucher_list(q, "c_1")),
    ):
        try:
            params = parse(query)
        except InvalidParameter as error:
            # An empty name is a real parameter name too (``?=x``).
            assert error.name in query or error.name in ALLOWED_PARAMETERS[kind]
            continue
        try:
            decode_starting_after(params, PROJECT, SECRET)
        except InvalidParameter as error:
            assert error.name == "starting_after"
        body = build_search(kind, params, PROJECT, after=None)
        assert body["query"]["bool"]["filter"][0] == {"term": {"project_id": {"value": PROJECT}}}


@given(st.text(max_size=80))
def test_arbitrary_instants_only_ever_raise_invalid_parameter(text: str) -> None:
    try:
        micros, _ = parse_instant(CREATED_BEFORE, text)
    except InvalidParameter:
        return
    assert -(2**63) <= micros < 2**63


def test_valid_cursor_in_arbitrary_position_is_accepted() -> None:
    cursor = encode_cursor(SortKey(5, "v"), SECRET, scope=cursor_scope(_vouchers(), PROJECT))
    params = parse_voucher_list({"starting_after": cursor})
    assert decode_starting_after(params, PROJECT, SECRET) == SortKey(5, "v")
