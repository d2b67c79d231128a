"""Schemathesis against the served ``/openapi.json`` of ``readapi serve`` over indexed data:
every operation, every check, with valid credentials and with invalid ones.

What the run holds: no 5xx (a 503 ``not_yet_indexed`` for an ``X-Min-Watermark`` the indexer
has not reached is the contract's answer and the only one allowed), every answer conforms to
the document (status, content type, headers, body), every schema-valid request is accepted
(2xx, 404, 429 or that 503: never 400) and every schema-invalid one refused.

Two things the fuzzer cannot know are supplied here. A ``starting_after`` is a signed cursor:
in a schema-valid request it is replaced by a real cursor for the same list and filters. And
a waited-for watermark is waited for: ``X-Wait-Timeout-Ms`` is kept at most 20 ms so that the
run stays short (a schema-valid value either way), and so is the long poll of
``/v1/events`` (``wait_ms``).

Bounded and reproducible: ``MAX_EXAMPLES`` generated cases per operation and generation mode
(plus the examples and coverage phases), derandomized under a fixed seed. Each run prints how
many requests it sent, per operation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from requests.structures import CaseInsensitiveDict
from schemathesis import BaseSchema, Case, GenerationMode, Response
from schemathesis.checks import CheckContext
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok

from readapi.cursor import SortKey
from readapi.search_query import (
    InvalidParameter,
    ListParams,
    encode_next_cursor,
    parse_customer_list,
    parse_holder_voucher_list,
    parse_voucher_list,
)
from tests.fixtures.indexer import IndexerHarness
from tests.fixtures.readapi import KEY_A
from tests.integration.test_fuzz_raw_headers import (
    CURSOR_SECRET,
    logged_errors,
    seed_fuzz_data,
    served_api,
)

pytestmark = pytest.mark.services

AnyCase = Case[Any]

SEED = 20240501
MAX_EXAMPLES = 50
MAX_WAIT_MS = 20
VALID_CREDENTIALS = {"X-App-Id": KEY_A[0], "X-App-Token": KEY_A[1]}
INVALID_CREDENTIALS = {"X-App-Id": KEY_A[0], "X-App-Token": "not-the-token"}
PROJECT = "proj_a"
ERROR_KEYS = {"code", "key", "message", "details", "request_id"}
# Statuses a schema-valid request may get: never 400.
ACCEPTED = ["2xx", "404", "429", "503"]
# Statuses a schema-invalid one may get: 400, or 404 where the path names no route (an empty
# id, a documentation file of another name), or 503 ``not_yet_indexed`` when an
# ``X-Min-Watermark`` wait comes before the invalid part (docs/api.md §3, request pipeline).
REFUSED = ["400", "404", "503"]

def _config(accepted: list[str], refused: list[str]) -> schemathesis.Config:
    """The statuses a schema-valid request may get (``accepted``), an invalid one
    (``refused``)."""
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                # The credentials are the test's: valid ones, or invalid ones.
                "with-security-parameters": False,
            },
            "checks": {
                # 503 only as ``not_yet_indexed``, which ``only_not_yet_indexed`` holds.
                "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]},
                "positive_data_acceptance": {"expected-statuses": accepted},
                "negative_data_rejection": {"expected-statuses": refused},
            },
        }
    )


@pytest.fixture
async def served(harness: IndexerHarness, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    await seed_fuzz_data(harness)
    log_path = tmp_path / "readapi.log"
    async with served_api(harness, log_path) as base:
        yield base, log_path
        errors = logged_errors(log_path)  # while serving: what its stop logs is not ours
    assert not errors, "\n".join(errors[:10])


def load_schema(
    base: str, accepted: list[str] = ACCEPTED, refused: list[str] = REFUSED
) -> BaseSchema:
    config = _config(accepted, refused)
    return schemathesis.openapi.from_url(f"{base}/openapi.json", config=config)


# ---------------------------------------------------------------------------------------
# What the fuzzer is told


def _list_params(case: AnyCase) -> ListParams | None:
    query = {
        name: str(value)
        for name, value in (case.query or {}).items()
        if name != "starting_after"
    }
    path = case.operation.path
    try:
        if path == "/v1/vouchers":
            return parse_voucher_list(query)
        if path == "/v1/customers":
            return parse_customer_list(query)
        if path == "/v1/customers/{id}/vouchers":
            return parse_holder_voucher_list(query, str((case.path_parameters or {})["id"]))
    except InvalidParameter:
        return None
    return None


def prepare(case: AnyCase) -> None:
    """Supply what a schema cannot say (see the module's doc)."""
    meta = case.meta
    positive = meta is None or meta.generation.mode is GenerationMode.POSITIVE
    query = case.query or {}
    if positive and "starting_after" in query:
        params = _list_params(case)
        if params is not None:
            cursor = encode_next_cursor(params, PROJECT, SortKey(1 << 60, "v_~"), CURSOR_SECRET)
            assert cursor is not None
            case.query = {**query, "starting_after": cursor}
    headers = dict(case.headers or {})
    if meta is not None and not positive and not meta.is_negative_at(ParameterLocation.HEADER):
        # The wait comes before the handler's validation: without it, the invalid part is
        # what answers.
        headers.pop("X-Min-Watermark", None)
        case.headers = CaseInsensitiveDict(headers)
    wait_ms = str(query.get("wait_ms", ""))
    if positive and wait_ms.isascii() and wait_ms.isdigit():
        case.query = {**(case.query or {}), "wait_ms": min(int(wait_ms), MAX_WAIT_MS)}
    if "X-Min-Watermark" in headers:
        wait = str(headers.get("X-Wait-Timeout-Ms", MAX_WAIT_MS))
        if wait.isascii() and wait.isdigit() and int(wait) <= 5000:
            headers["X-Wait-Timeout-Ms"] = str(min(int(wait), MAX_WAIT_MS))
            case.headers = CaseInsensitiveDict(headers)


# ---------------------------------------------------------------------------------------
# Checks of the contract beyond the document


def error_body_is_the_contract(ctx: CheckContext, response: Response, case: AnyCase) -> bool:
    if response.status_code < 400:
        return True
    body = orjson.loads(response.content)
    assert isinstance(body, dict) and set(body) == ERROR_KEYS, body
    assert body["code"] == response.status_code, body
    assert body["request_id"] == response.headers["x-request-id"][0], body
    return True


def only_not_yet_indexed(ctx: CheckContext, response: Response, case: AnyCase) -> bool:
    if response.status_code < 500:
        return True
    body = orjson.loads(response.content)
    assert response.status_code == 503 and body["key"] == "not_yet_indexed", body
    assert "X-Min-Watermark" in (case.headers or {}), "503 without X-Min-Watermark"
    return True


def credentials_accepted(ctx: CheckContext, response: Response, case: AnyCase) -> bool:
    assert response.status_code != 401, response.text
    return True


def credentials_refused(ctx: CheckContext, response: Response, case: AnyCase) -> bool:
    if not case.operation.path.startswith("/v1/"):
        return True
    body = orjson.loads(response.content)
    if response.status_code == 404:
        # A path that another route or none serves (``..`` removed by the client).
        assert body["message"] == "No such resource.", body
        return True
    assert response.status_code == 401 and body["key"] == "unauthorized", body
    return True


def _runner(
    strategy: Any, base: str, credentials: dict[str, str], checks: list[Any], sent: Counter[str]
) -> Any:
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: AnyCase) -> None:
        prepare(case)
        sent["cases"] += 1
        response = case.call_and_validate(
            base_url=base, headers=credentials, additional_checks=checks
        )
        sent[str(response.status_code)] += 1

    return run


def fuzz(
    base: str,
    credentials: dict[str, str],
    checks: list[Any],
    accepted: list[str],
    refused: list[str],
) -> tuple[dict[str, Counter[str]], list[str]]:
    """Every operation of the served document in both generation modes: per operation and
    mode, the cases sent and the statuses answered; and the failures (each shrunk)."""
    loaded = load_schema(base, accepted, refused)
    counts: dict[str, Counter[str]] = {}
    failures: list[str] = []
    for result in loaded.get_all_operations():
        if not isinstance(result, Ok):
            failures.append(f"an operation of the document cannot be tested: {result.err()}")
            continue
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{operation.label} {mode.value}"
            sent: Counter[str] = Counter()
            strategy = operation.as_strategy(generation_mode=mode)
            run = _runner(strategy, base, credentials, checks, sent)
            try:
                run()
            except Unsatisfiable:
                # Nothing can violate a schema without parameters: no negative case exists.
                assert mode is GenerationMode.NEGATIVE, label
            except (Exception, BaseExceptionGroup) as error:  # checks' failures, shrunk
                failures.append(f"{label}: {type(error).__name__}: {error}")
            counts[label] = sent
    return counts, failures


def _report(name: str, counts: dict[str, Counter[str]]) -> None:
    total = sum(sent["cases"] for sent in counts.values())
    print(f"\nschemathesis, {name}: {total} cases (answers by status)")
    for label, sent in sorted(counts.items()):
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(sent.items()) if s != "cases")
        print(f"  {sent['cases']:4d}  {label}  ({statuses})")


def test_valid_credentials(served: tuple[str, Path]) -> None:
    base, _ = served
    counts, failures = fuzz(
        base,
        VALID_CREDENTIALS,
        [error_body_is_the_contract, only_not_yet_indexed, credentials_accepted],
        ACCEPTED,
        REFUSED,
    )
    _report("valid credentials", counts)
    assert not failures, "\n\n".join(failures)
    assert len(counts) >= 2 * 9  # every /v1 operation ran in both modes


def test_invalid_credentials(served: tuple[str, Path]) -> None:
    base, _ = served
    counts, failures = fuzz(
        base,
        INVALID_CREDENTIALS,
        [error_body_is_the_contract, only_not_yet_indexed, credentials_refused],
        # ``credentials_refused`` holds that every /v1 answer is a 401 (or a route's 404).
        [*ACCEPTED, "401"],
        ["401", "404"],
    )
    _report("invalid credentials", counts)
    assert not failures, "\n\n".join(failures)


def test_indexed_objects_conform(served: tuple[str, Path]) -> None:
    """The fuzzer's ids name no object: the seeded ones are looked up here, against the same
    document and checks, so that 200 answers of every kind are held too."""
    base, _ = served
    loaded = load_schema(base)
    lookups: list[tuple[str, dict[str, str], dict[str, Any]]] = [
        ("/v1/vouchers/{code}", {"code": "SUMMER-1"}, {}),
        ("/v1/vouchers/{code}", {"code": "v_3"}, {}),
        ("/v1/customers/{id}", {"id": "crm-1"}, {}),
        ("/v1/customers/{id}", {"id": "cust_2"}, {}),
        ("/v1/customers/{id}/vouchers", {"id": "cust_1"}, {"limit": 1}),
        ("/v1/customers/{id}/segments", {"id": "cust_2"}, {}),
        ("/v1/segments/{id}", {"id": "seg_1"}, {}),
        ("/v1/campaigns/{id}", {"id": "camp_2"}, {}),
        ("/v1/vouchers", {}, {"limit": 2}),
        ("/v1/vouchers", {}, {"q": "S", "active": "true"}),
        ("/v1/customers", {}, {"created_at[after]": "2024-01-01T10:00:00 01:00"}),
        ("/v1/customers", {}, {"q": "ann@example.com", "created_at[before]": "20240201"}),
        ("/v1/events", {}, {"limit": 1}),
        ("/v1/events", {}, {"type": "customer.segment.entered", "after": "0-0", "wait_ms": 1}),
        ("/openapi.json", {}, {}),
        ("/healthz", {}, {}),
    ]
    for path, path_parameters, query in lookups:
        case = loaded[path]["GET"].Case(path_parameters=path_parameters, query=query)
        response = case.call_and_validate(
            base_url=base,
            headers=VALID_CREDENTIALS,
            additional_checks=[error_body_is_the_contract, credentials_accepted],
        )
        assert response.status_code == 200, (path, path_parameters, response.text)
        body = response.json()
        if body.get("has_more"):
            # The next page, through the cursor the answer gave.
            follow = "after" if path == "/v1/events" else "starting_after"
            case = loaded[path]["GET"].Case(
                path_parameters=path_parameters,
                query={**query, follow: body["next_cursor"]},
            )
            response = case.call_and_validate(base_url=base, headers=VALID_CREDENTIALS)
            assert response.status_code == 200, response.text
            assert response.json()[body["data_ref"]], response.text
    assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
