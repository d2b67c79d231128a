"""The OpenAPI document: valid 3.1, complete for docs/api.md §3, consistent with the validation
and with the objects the indexer builds; and the documentation page."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from cache.records import EventCause, SegmentEvent, SegmentEventType
from indexer.documents import (
    campaign_document,
    customer_document,
    segment_document,
    voucher_document,
)
from readapi.docs_page import ASSET_NAMES, PAGE_CSP, load_assets, page
from readapi.errors import ApiError
from readapi.events import ALLOWED_EVENT_PARAMETERS, event_body, parse_events_query
from readapi.freshness import parse_min_watermark, parse_wait_ms
from readapi.openapi import LSN_PATTERN, build_openapi
from readapi.params import path_id
from readapi.search_query import (
    ALLOWED_PARAMETERS,
    CREATED_AFTER,
    CREATED_BEFORE,
    InvalidParameter,
    ListKind,
    parse_customer_list,
    parse_voucher_list,
)

CONTRACT_PATHS = {
    "/v1/vouchers/{code}",
    "/v1/vouchers",
    "/v1/customers/{id}",
    "/v1/customers",
    "/v1/customers/{id}/vouchers",
    "/v1/customers/{id}/segments",
    "/v1/segments/{id}",
    "/v1/campaigns/{id}",
    "/v1/events",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/static/{file}",
}
ERROR_KEYS = {
    "invalid_request",
    "unauthorized",
    "not_found",
    "method_not_allowed",
    "rate_limited",
    "not_yet_indexed",
    "unavailable",
    "internal_error",
}
V1_ERROR_STATUSES = {"400", "401", "405", "429", "503", "500"}
LIST_PATHS = {
    "/v1/vouchers": ListKind.VOUCHERS,
    "/v1/customers": ListKind.CUSTOMERS,
    "/v1/customers/{id}/vouchers": ListKind.CUSTOMER_VOUCHERS,
}
T0 = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return build_openapi()


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in {"get", "put", "post", "delete", "patch", "head", "options", "trace"}:
                yield path, method, operation


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    assert spec["openapi"].startswith("3.1.")
    validator.validate(spec)


def test_document_is_plain_json_and_fresh_each_call(spec: dict[str, Any]) -> None:
    assert json.loads(json.dumps(spec)) == spec
    other = build_openapi()
    other["paths"].clear()
    assert build_openapi() == spec


def test_every_contract_path_is_described(spec: dict[str, Any]) -> None:
    assert set(spec["paths"]) == CONTRACT_PATHS


def test_every_reference_resolves(spec: dict[str, Any]) -> None:
    refs = set(_refs(spec))
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/"), ref
        _resolve(spec, {"$ref": ref})


def test_every_component_is_used(spec: dict[str, Any]) -> None:
    refs = set(_refs(spec))
    for section, entries in spec["components"].items():
        if section == "securitySchemes":
            continue
        for name in entries:
            assert f"#/components/{section}/{name}" in refs, (section, name)


def test_every_operation_has_an_id_responses_and_a_summary(spec: dict[str, Any]) -> None:
    ids = []
    for path, method, operation in _operations(spec):
        assert method == "get", path
        ids.append(operation["operationId"])
        assert operation["summary"]
        assert "200" in operation["responses"], path
        for response in operation["responses"].values():
            assert _resolve(spec, response)["description"]
    assert len(ids) == len(set(ids)) == len(CONTRACT_PATHS)


def test_v1_operations_need_both_credential_headers(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["AppId"] == {
        **schemes["AppId"],
        "type": "apiKey",
        "in": "header",
        "name": "X-App-Id",
    }
    assert schemes["AppToken"] == {
        **schemes["AppToken"],
        "type": "apiKey",
        "in": "header",
        "name": "X-App-Token",
    }
    for path, _, operation in _operations(spec):
        if path.startswith("/v1/"):
            assert operation["security"] == [{"AppId": [], "AppToken": []}], path
        else:
            assert operation["security"] == [], path


def test_v1_operations_document_freshness_headers_and_errors(spec: dict[str, Any]) -> None:
    for path, _, operation in _operations(spec):
        if not path.startswith("/v1/"):
            continue
        names = {(p := _resolve(spec, param))["name"]: p for param in operation["parameters"]}
        assert names["X-Min-Watermark"]["in"] == "header"
        assert names["X-Wait-Timeout-Ms"]["in"] == "header"
        responses = operation["responses"]
        assert set(responses) >= V1_ERROR_STATUSES, path
        if "{" in path:
            assert "404" in responses, path
        ok = _resolve(spec, responses["200"])
        assert set(ok["headers"]) >= {
            "X-Request-Id",
            "X-Read-Watermark",
            "X-Rate-Limit-Limit",
            "X-Rate-Limit-Remaining",
        }
        limited = _resolve(spec, responses["429"])
        assert "Retry-After" in limited["headers"]
        for status, response in responses.items():
            resolved = _resolve(spec, response)
            assert "X-Request-Id" in resolved["headers"], (path, status)
            if status != "200":
                schema = resolved["content"]["application/json"]["schema"]
                assert {"$ref": "#/components/schemas/Error"} in schema["allOf"]


def test_path_parameters_are_declared(spec: dict[str, Any]) -> None:
    for path, _, operation in _operations(spec):
        declared = {
            p["name"]
            for p in (_resolve(spec, param) for param in operation.get("parameters", []))
            if p["in"] == "path"
        }
        assert declared == set(re.findall(r"{([^}]+)}", path)), path


@pytest.mark.parametrize(("path", "kind"), list(LIST_PATHS.items()))
def test_list_query_parameters_match_the_validation(
    spec: dict[str, Any], path: str, kind: ListKind
) -> None:
    parameters = [_resolve(spec, p) for p in spec["paths"][path]["get"]["parameters"]]
    query = {p["name"] for p in parameters if p["in"] == "query"}
    assert query == set(ALLOWED_PARAMETERS[kind])
    limit = next(p for p in parameters if p["name"] == "limit")["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 100, 10)


def test_voucher_filters_are_typed(spec: dict[str, Any]) -> None:
    parameters = {
        (p := _resolve(spec, raw))["name"]: p
        for raw in spec["paths"]["/v1/vouchers"]["get"]["parameters"]
    }
    assert parameters["type"]["schema"]["enum"] == [
        "DISCOUNT_VOUCHER",
        "GIFT_VOUCHER",
        "LOYALTY_CARD",
    ]
    assert parameters["active"]["schema"] == {"type": "string", "enum": ["true", "false"]}
    # q is bounded by its pattern: 1 to 200 characters once trimmed, whatever surrounds them.
    assert "{0,198}" in parameters["q"]["schema"]["pattern"]
    assert parameters["campaign_id"]["schema"]["maxLength"] == 200


def test_error_schema(spec: dict[str, Any]) -> None:
    error = spec["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "key", "message", "details", "request_id"}
    assert set(error["properties"]["key"]["enum"]) == ERROR_KEYS


def test_list_schemas(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for name, data_ref in (("VoucherList", "vouchers"), ("CustomerList", "customers")):
        schema = schemas[name]
        assert set(schema["required"]) == {
            "object",
            "data_ref",
            data_ref,
            "total",
            "has_more",
            "next_cursor",
        }
        assert schema["properties"]["data_ref"]["const"] == data_ref
    segments = schemas["CustomerSegmentList"]
    assert set(segments["required"]) == {"object", "data_ref", "data", "total"}
    assert set(schemas["SegmentRef"]["required"]) == {"id", "name", "object"}


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        (
            "Voucher",
            "id, code, object, campaign, campaign_id, type, discount, gift, loyalty_card, "
            "start_date, expiration_date, active, redemption, holder_id, metadata, created_at, "
            "updated_at",
        ),
        (
            "Customer",
            "id, source_id, object, name, email, phone, address, metadata, summary, loyalty, "
            "created_at, updated_at",
        ),
        ("Segment", "id, name, type, filter, count, created_at, object"),
        (
            "Campaign",
            "id, name, type, active, start_date, expiration_date, metadata, vouchers_count, "
            "created_at, updated_at, object",
        ),
    ],
)
def test_object_schemas_have_the_contract_fields(
    spec: dict[str, Any], name: str, fields: str
) -> None:
    schema = spec["components"]["schemas"][name]
    assert set(schema["required"]) == set(fields.split(", "))
    assert set(schema["properties"]) == set(fields.split(", "))


def _schema_validator(schema: dict[str, Any]) -> Any:
    # jsonschema comes with openapi-spec-validator; without it these checks are skipped.
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _validator(spec: dict[str, Any], name: str) -> Any:
    return _schema_validator(
        {"components": spec["components"], "$ref": f"#/components/schemas/{name}"}
    )


def _voucher_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "v_1",
        "project_id": "p_1",
        "code": "SUMMER-24",
        "campaign_name": "Summer",
        "campaign_id": "camp_1",
        "type": "DISCOUNT_VOUCHER",
        "discount": {"type": "PERCENT", "percent_off": 10},
        "gift_amount": None,
        "gift_balance": None,
        "loyalty_points": None,
        "loyalty_balance": None,
        "start_date": None,
        "expiration_date": T0,
        "active": True,
        "redemption_quantity": None,
        "redeemed_quantity": 0,
        "holder_id": None,
        "metadata": {"tier": "gold", "nested": {"n": 1}},
        "created_at": T0,
        "updated_at": T0,
    }
    return {**row, **overrides}


def test_indexed_objects_validate_against_their_schemas(spec: dict[str, Any]) -> None:
    vouchers = [
        _voucher_row(),
        _voucher_row(
            type="GIFT_VOUCHER",
            discount=None,
            gift_amount=5000,
            gift_balance=1200,
            campaign_id=None,
            campaign_name=None,
            holder_id="c_1",
            redemption_quantity=3,
        ),
        _voucher_row(type="LOYALTY_CARD", discount=None, loyalty_points=10, loyalty_balance=None),
    ]
    for row in vouchers:
        _validator(spec, "Voucher").validate(voucher_document(row).body)
    customer = {
        "id": "c_1",
        "project_id": "p_1",
        "source_id": None,
        "name": "Ann Lee",
        "email": "ann@example.com",
        "phone": None,
        "address": {"city": "Oslo", "country": "NO"},
        "metadata": {},
        "total_redeemed": 3,
        "total_succeeded": 2,
        "total_failed": 1,
        "redeemed_amount": 100,
        "redeemed_points": None,
        "loyalty_points": 40,
        "created_at": T0,
        "updated_at": T0,
        "static_segment_ids": ["s_1"],
    }
    _validator(spec, "Customer").validate(customer_document(customer, []).body)
    _validator(spec, "Customer").validate(customer_document({**customer, "address": None}, []).body)
    campaign = {
        "id": "camp_1",
        "project_id": "p_1",
        "name": "Summer",
        "type": "DISCOUNT_COUPONS",
        "active": True,
        "start_date": T0,
        "expiration_date": None,
        "metadata": {},
        "vouchers_count": 3,
        "created_at": T0,
        "updated_at": T0,
    }
    _validator(spec, "Campaign").validate(campaign_document(campaign).body)
    segment = {
        "id": "s_1",
        "project_id": "p_1",
        "name": "Gold",
        "type": "auto-update",
        "filter": {"junction": "and", "metadata.tier": {"conditions": {"$is": ["gold"]}}},
        "created_at": T0,
    }
    # The read API adds the member count to the stored body.
    _validator(spec, "Segment").validate({**segment_document(segment).body, "count": 4})


def test_list_and_error_examples_validate(spec: dict[str, Any]) -> None:
    voucher = voucher_document(_voucher_row()).body
    _validator(spec, "VoucherList").validate(
        {
            "object": "list",
            "data_ref": "vouchers",
            "vouchers": [voucher],
            "total": 1,
            "has_more": False,
            "next_cursor": None,
        }
    )
    _validator(spec, "CustomerSegmentList").validate(
        {
            "object": "list",
            "data_ref": "data",
            "data": [{"id": "s_1", "name": "Gold", "object": "segment"}],
            "total": 1,
        }
    )
    for path, _, operation in _operations(spec):
        for status, response in operation["responses"].items():
            resolved = _resolve(spec, response)
            if status == "200":
                continue
            media = resolved["content"]["application/json"]
            root = {"components": spec["components"], **media["schema"]}
            _schema_validator(root).validate(media["example"])
            assert media["example"]["code"] == int(status), (path, status)


def test_docs_page_loads_only_files_of_this_origin() -> None:
    text = page().decode("utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    loaded = re.findall(r'(?:src|href)="/docs/static/([^"]+)"', text)
    assert set(loaded) == set(ASSET_NAMES)
    assert "<script>" not in text  # no inline script: the page's CSP allows none
    assert "script-src 'self';" in PAGE_CSP and "connect-src 'self'" in PAGE_CSP
    init = load_assets()["docs-init.js"].body.decode()
    assert 'url: "/openapi.json"' in init and "validatorUrl: null" in init


def test_docs_files_are_read_once_with_their_types() -> None:
    assets = load_assets()
    assert load_assets() is assets
    assert set(assets) == set(ASSET_NAMES)
    for name, asset in assets.items():
        assert asset.body, name
        suffix = name.rsplit(".", 1)[1]
        assert asset.content_type.startswith(
            {"js": "text/javascript", "css": "text/css", "png": "image/png"}[suffix]
        )
        if asset.gzipped is not None:
            assert gzip.decompress(asset.gzipped) == asset.body
            assert len(asset.gzipped) < len(asset.body)
    # Swagger UI 4 refuses OpenAPI 3.1 documents ("Unable to render this definition").
    bundle = assets["swagger-ui-bundle.js"].body
    assert re.search(rb'PACKAGE_VERSION:"5\.\d+\.\d+"', bundle)


def test_docs_files_are_described(spec: dict[str, Any]) -> None:
    (parameter,) = spec["paths"]["/docs/static/{file}"]["get"]["parameters"]
    assert parameter["in"] == "path"
    assert parameter["schema"]["enum"] == list(ASSET_NAMES)


# ---------------------------------------------------------------------------------------
# The published formats are the validation's: every value a parameter's schema admits is
# accepted, every value it refuses is answered 400 (a client may generate requests from the
# document, as the fuzzing suite does).

_STRING_KEYWORDS = {"type", "minLength", "maxLength", "pattern", "enum", "examples", "default"}


def _parameters_of(spec: dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    return {
        (p := _resolve(spec, raw))["name"]: p for raw in spec["paths"][path]["get"]["parameters"]
    }


def _admits(schema: dict[str, Any], value: str) -> bool:
    """JSON Schema's verdict on a string (ECMA-262: ``$`` is the end of the text only)."""
    assert set(schema) <= _STRING_KEYWORDS, schema
    assert schema["type"] == "string"
    if "enum" in schema:
        return value in schema["enum"]
    if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
        return False
    pattern = schema.get("pattern")
    if pattern is None:
        return True
    assert pattern.startswith("^") and pattern.endswith("$")
    return re.search(pattern[:-1] + r"\Z", value) is not None


def _accepted(check: Any, value: str) -> bool:
    try:
        check(value)
    except (InvalidParameter, ApiError) as error:
        if isinstance(error, ApiError):
            assert error.status == 400, error
        return False
    return True


def _list_check(parse: Any, name: str) -> Any:
    return lambda value: parse({name: value})


# Characters next to every boundary of the formats: controls, the whitespace q trims, digits
# and the letters of ISO 8601, separators, non-ASCII letters and spaces.
_EDGE_ALPHABET = st.sampled_from(
    list("\x00\x08\t\n\x0b\x0c\r\x1f \x7f\x80\x9f\xa0\u3000\u2028é漢")
    + list("0123456789-:.,+TZWtz/%aA_")
)
_EDGE_TEXT = st.text(_EDGE_ALPHABET, max_size=24) | st.text(max_size=12)


def _near(pattern: str) -> st.SearchStrategy[str]:
    """Values of ``pattern``, and the same with one character inserted, dropped or replaced."""
    valid = st.from_regex(pattern[:-1] + r"\Z", fullmatch=True)

    @st.composite
    def mutated(draw: st.DrawFn) -> str:
        value = draw(valid)
        where = draw(st.integers(0, len(value)))
        what = draw(_EDGE_ALPHABET)
        how = draw(st.sampled_from(["insert", "drop", "replace"]))
        if how == "insert":
            return value[:where] + what + value[where:]
        if how == "drop":
            return value[:where] + value[where + 1 :]
        return value[:where] + what + value[where + 1 :]

    return valid | mutated() | _EDGE_TEXT


def _long_text(length: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda pad, head, tail: pad + head + "x" * (length - len(pad) - len(head)) + tail,
        st.sampled_from(["", " ", "\t\n", " " * 3]),
        st.text(_EDGE_ALPHABET, max_size=3),
        st.sampled_from(["", "x", "xx", " ", "\r\n", "\x01"]),
    )


_LIST_STRINGS = [
    ("/v1/vouchers", "campaign_id", parse_voucher_list, 200),
    ("/v1/vouchers", "holder_id", parse_voucher_list, 200),
    ("/v1/vouchers", "q", parse_voucher_list, 200),
    ("/v1/vouchers", CREATED_AFTER, parse_voucher_list, 64),
    ("/v1/vouchers", CREATED_BEFORE, parse_voucher_list, 64),
    ("/v1/customers", "email", parse_customer_list, 320),
    ("/v1/customers", "segment_id", parse_customer_list, 200),
    ("/v1/customers", "q", parse_customer_list, 200),
    ("/v1/customers", CREATED_AFTER, parse_customer_list, 64),
]


@pytest.mark.parametrize(
    ("path", "name", "parse", "bound"),
    _LIST_STRINGS,
    ids=[f"{path} {name}" for path, name, _, _ in _LIST_STRINGS],
)
def test_list_parameter_schemas_admit_exactly_what_is_accepted(
    spec: dict[str, Any], path: str, name: str, parse: Any, bound: int
) -> None:
    schema = _parameters_of(spec, path)[name]["schema"]
    check = _list_check(parse, name)

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_near(schema["pattern"]) | _long_text(bound) | _long_text(bound + 1))
    def agree(value: str) -> None:
        assert _admits(schema, value) == _accepted(check, value), repr(value)

    agree()


def test_enum_parameter_schemas_admit_exactly_what_is_accepted(spec: dict[str, Any]) -> None:
    parameters = _parameters_of(spec, "/v1/vouchers")
    for name in ("type", "active"):
        schema = parameters[name]["schema"]
        for value in [*schema["enum"], "", "TRUE", "True", "1", "yes", "gift_voucher", " true"]:
            check = _list_check(parse_voucher_list, name)
            assert _admits(schema, value) == _accepted(check, value), (name, value)


@pytest.mark.parametrize(
    "path", ["/v1/vouchers/{code}", "/v1/customers/{id}", "/v1/customers/{id}/vouchers"]
)
def test_path_id_schemas_admit_exactly_what_is_accepted(spec: dict[str, Any], path: str) -> None:
    (parameter,) = [
        p for p in _parameters_of(spec, path).values() if p["in"] == "path"
    ]
    schema = parameter["schema"]

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_near(schema["pattern"]) | _long_text(200) | _long_text(201))
    def agree(value: str) -> None:
        accepted = _accepted(lambda text: path_id(text, parameter["name"]), value)
        assert _admits(schema, value) == accepted, repr(value)

    agree()


def test_freshness_header_schemas_admit_exactly_what_is_accepted(spec: dict[str, Any]) -> None:
    parameters = _parameters_of(spec, "/v1/vouchers")
    lsn = parameters["X-Min-Watermark"]["schema"]

    def watermark(value: str) -> None:
        parse_min_watermark(CIMultiDict({"X-Min-Watermark": value}))

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_near(lsn["pattern"]))
    def agree(value: str) -> None:
        # HTTP strips the spaces and tabs around a header value before anyone reads it.
        value = value.strip(" \t")
        assert _admits(lsn, value) == _accepted(watermark, value), repr(value)

    agree()
    wait = parameters["X-Wait-Timeout-Ms"]["schema"]
    assert (wait["type"], wait["minimum"], wait["maximum"]) == ("integer", 0, 5000)
    for number in (0, 1, 999, 5000, 5001, 999999, -1):
        admitted = wait["minimum"] <= number <= wait["maximum"]
        assert _accepted(lambda v: parse_wait_ms({"X-Wait-Timeout-Ms": v}), str(number)) == (
            admitted
        ), number
    for text in ("", "1.5", "1e3", "+5", "0x10", "\u0663"):
        assert not _accepted(lambda v: parse_wait_ms({"X-Wait-Timeout-Ms": v}), text), text


def test_limit_schema_admits_exactly_what_is_accepted(spec: dict[str, Any]) -> None:
    limit = _parameters_of(spec, "/v1/vouchers")["limit"]["schema"]
    for number in range(-3, 130):
        admitted = limit["minimum"] <= number <= limit["maximum"]
        assert _accepted(_list_check(parse_voucher_list, "limit"), str(number)) == admitted
    for text in ("", "1.0", "+5", " 5", "5e1", "\u0665"):
        assert not _accepted(_list_check(parse_voucher_list, "limit"), text), text


def test_response_headers_carry_their_formats(spec: dict[str, Any]) -> None:
    headers = spec["components"]["headers"]
    assert headers["X-Request-Id"]["schema"]["pattern"] == "^[A-Za-z0-9._:+=/-]{1,128}$"
    assert headers["X-Read-Watermark"]["schema"]["pattern"] == LSN_PATTERN
    assert headers["X-Rate-Limit-Limit"]["schema"]["minimum"] == 0
    assert headers["X-Rate-Limit-Remaining"]["schema"]["minimum"] == 0
    assert headers["Retry-After"]["schema"]["minimum"] == 1


# ---------------------------------------------------------------------------------------
# GET /v1/events (an addition to the contract): the same agreement, and its objects.


def test_event_query_parameters_match_the_validation(spec: dict[str, Any]) -> None:
    parameters = _parameters_of(spec, "/v1/events")
    assert {p["name"] for p in parameters.values() if p["in"] == "query"} == set(
        ALLOWED_EVENT_PARAMETERS
    )
    assert spec["paths"]["/v1/events"]["get"]["responses"]["200"]["content"][
        "application/json"
    ]["schema"] == {"$ref": "#/components/schemas/EventList"}


@pytest.mark.parametrize(("name", "bound"), [("after", 41), ("segment_id", 200)])
def test_event_string_parameter_schemas_admit_exactly_what_is_accepted(
    spec: dict[str, Any], name: str, bound: int
) -> None:
    schema = _parameters_of(spec, "/v1/events")[name]["schema"]
    check = _list_check(parse_events_query, name)
    # Cursors near the 20-digit bound and above the 64 bits of a stream id (still accepted).
    long_cursors = st.from_regex(r"[0-9]{18,22}-[0-9]{18,22}", fullmatch=True)

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_near(schema["pattern"]) | _long_text(bound) | _long_text(bound + 1) | long_cursors)
    def agree(value: str) -> None:
        assert _admits(schema, value) == _accepted(check, value), repr(value)

    agree()


def test_event_type_and_number_schemas_admit_exactly_what_is_accepted(
    spec: dict[str, Any],
) -> None:
    parameters = _parameters_of(spec, "/v1/events")
    kind = parameters["type"]["schema"]
    assert kind["enum"] == ["customer.segment.entered", "customer.segment.left"]
    for value in [*kind["enum"], "", "customer.segment.ENTERED", "entered", " left"]:
        assert _admits(kind, value) == _accepted(_list_check(parse_events_query, "type"), value)
    for name, default, maximum in (("limit", 10, 100), ("wait_ms", 0, 30_000)):
        schema = _resolve(spec, parameters[name])["schema"]
        assert (schema["type"], schema["default"], schema["maximum"]) == (
            "integer", default, maximum
        )
        check = _list_check(parse_events_query, name)
        for number in (-1, 0, 1, 99, 100, 101, 29_999, 30_000, 30_001, 99_999, 100_000):
            admitted = schema["minimum"] <= number <= schema["maximum"]
            assert _accepted(check, str(number)) == admitted, (name, number)
        for text in ("", "1.0", "+5", " 5", "5e1", "\u0665", "0x10"):
            assert not _accepted(check, text), (name, text)


def test_events_validate_against_their_schemas(spec: dict[str, Any]) -> None:
    event = SegmentEvent(
        cursor="1714557600123-0",
        id="evt_0123456789abcdef0123",
        type=SegmentEventType.LEFT,
        customer_id="c_1",
        segment_id="s_1",
        cause=EventCause.CLOCK,
        cause_lsn=(0x16 << 32) | 0xB374D848,
        occurred_at_us=1_714_557_600_123_456,
    )
    body = event_body(event)
    assert body["lsn"] == "16/B374D848"
    assert body["occurred_at"] == "2024-05-01T10:00:00.123456Z"
    _validator(spec, "Event").validate(body)
    page = {
        "object": "list",
        "data_ref": "data",
        "data": [body],
        "has_more": False,
        "next_cursor": body["cursor"],
    }
    _validator(spec, "EventList").validate(page)
    _validator(spec, "EventList").validate({**page, "data": [], "next_cursor": None})
