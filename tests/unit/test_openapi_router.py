"""The OpenAPI document served at ``/openapi.json`` against the router that serves the API.

Every (method, path) the router serves is described and every described one is served, with
the same path parameters; and every operation declares exactly the query parameters its
handler accepts. Adding a route, a path parameter or a query parameter without describing it
(or describing one that is not served) fails here.

No service is needed: ``create_app`` builds its clients without connecting and the app is
never started. Requests are made with ``make_mocked_request``, resolved by the app's own
router and handed to the route's handler; credentials, the rate limiter and every object
that could reach Redis or Elasticsearch are replaced by stubs, so a probe that got past
validation shows up as a 500 answer instead of a network call.

How the accepted query parameters are found. The /v1 handlers refuse an unknown parameter
with 400 ``invalid_request`` and say what they accept (the list endpoints name the allowed
parameters, the others say they take none). That answer is read, then checked by probing
every known parameter name one by one: a name is accepted when the handler does not refuse
it as unknown (an empty value is sent, so validation stops before any I/O). The service
endpoints (/healthz, /readyz, ...) never read the query string: their handlers' source is
checked for that, and the document must declare no query parameter for them.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from aiohttp import hdrs, web
from aiohttp.test_utils import make_mocked_request

from readapi.app import create_app
from readapi.auth import Caller
from readapi.search_query import ALLOWED_PARAMETERS
from readapi.services import SERVICES, Services
from readapi.settings import ApiSettings

OPENAPI_PATH = "/openapi.json"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
PROBE = "zz_undocumented_probe"
UNKNOWN_PARAMETER = re.compile(r"unknown query parameter", re.IGNORECASE)
ALLOWED_LIST = re.compile(r"; allowed: (.*)$")
TAKES_NONE = "This endpoint takes no query parameters."
READS_QUERY = re.compile(r"\bquery|\brel_url\b|\.url\b")
PLACEHOLDER = re.compile(r"{([^}:]+)(?::[^}]*)?}")


class ReachedBackingService(AssertionError):
    """A probe went past validation into a lookup or a search (answered as a 500)."""


class NoIO:
    """Stands for Redis, Elasticsearch and the objects reading them: any use raises."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        raise ReachedBackingService(f"{self._name}.{attribute} used by a probe")


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.body)
        return value


@pytest.fixture
async def app(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[web.Application]:
    app = create_app(ApiSettings())
    services: Services = app[SERVICES]
    redis, elastic = services.redis, services.elastic
    caller = Caller(
        app_id="probe-app",
        project_id="probe-project",
        rate_limit_per_minute=1000,
        keys=services.store.layout.project_keys("probe-project"),
        limit_text="1000",
    )
    # The /v1 pipeline holds these objects: patch them in place.
    monkeypatch.setattr(services.auth, "cached", lambda headers: caller)
    monkeypatch.setattr(services.limiter, "take_local", lambda app_id, limit: 999)
    # Handlers read these from the services on each request.
    for name in ("lookups", "search", "store", "redis", "elastic", "membership"):
        monkeypatch.setattr(services, name, NoIO(name))
    yield app
    # Never connected; closed so that nothing is left for the garbage collector to warn about.
    await redis.aclose()
    await elastic.close()


async def call(app: web.Application, method: str, url: str) -> tuple[web.AbstractRoute, Answer]:
    """The route the router picks for ``method url`` and what its handler answers."""
    probe = make_mocked_request(method, url, app=app)
    match = await app.router.resolve(probe)
    request = make_mocked_request(method, url, match_info=dict(match), app=app)
    response = await match.handler(request)
    assert isinstance(response, web.Response), (method, url, type(response))
    body = response.body
    assert isinstance(body, bytes), (method, url)
    return match.route, Answer(response.status, body)


def sample_url(path: str) -> str:
    """``path`` with every ``{name}`` replaced by a plain value of that name."""
    return PLACEHOLDER.sub(lambda m: f"sample-{m.group(1)}", path)


def placeholders(path: str) -> set[str]:
    return set(PLACEHOLDER.findall(path))


def is_catch_all(route: web.AbstractRoute) -> bool:
    return route.method == hdrs.METH_ANY


def served_routes(app: web.Application) -> dict[tuple[str, str], web.AbstractRoute]:
    """(METHOD, path template) -> route, without the catch-all and HEAD duplicates."""
    served: dict[tuple[str, str], web.AbstractRoute] = {}
    for route in app.router.routes():
        if is_catch_all(route) or route.method == hdrs.METH_HEAD:
            continue
        served[(route.method, route.resource.canonical)] = route
    return served


async def served_document(app: web.Application) -> dict[str, Any]:
    route, answer = await call(app, "GET", OPENAPI_PATH)
    assert not is_catch_all(route) and answer.status == 200, answer
    return answer.json()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def declared(
    document: dict[str, Any], path: str, operation: dict[str, Any], where: str
) -> set[str]:
    """Names of the parameters ``in: where`` of one operation (path-item level included)."""
    raw = [*document["paths"][path].get("parameters", []), *operation.get("parameters", [])]
    return {p["name"] for p in (resolve(document, r) for r in raw) if p["in"] == where}


def query_url(path: str, name: str) -> str:
    return f"{sample_url(path)}?{urlencode({name: ''})}"


def refused_as_unknown(answer: Answer) -> bool:
    if answer.status != 400:
        return False
    body = answer.json()
    return (
        body["key"] == "invalid_request" and UNKNOWN_PARAMETER.search(body["message"]) is not None
    )


async def accepted_by_refusal(app: web.Application, method: str, path: str) -> set[str]:
    """What the handler says it accepts when refusing a parameter it does not know."""
    _, answer = await call(app, method, query_url(path, PROBE))
    assert refused_as_unknown(answer), (
        f"{method} {path} did not refuse the unknown query parameter {PROBE!r} with 400 "
        f"invalid_request: {answer.status} {answer.body[:300]!r}"
    )
    body = answer.json()
    listed = ALLOWED_LIST.search(body["message"])
    if listed is not None:
        return set(listed.group(1).split(", "))
    if body["details"] == TAKES_NONE:
        return set()
    raise AssertionError(
        f"{method} {path}: cannot tell which query parameters the handler accepts from "
        f"{body!r}; teach this test how that handler declares them"
    )


async def accepted_by_probing(
    app: web.Application, method: str, path: str, candidates: set[str]
) -> set[str]:
    """The candidate names the handler does not refuse as unknown."""
    accepted = set()
    for name in sorted(candidates):
        _, answer = await call(app, method, query_url(path, name))
        if not refused_as_unknown(answer):
            accepted.add(name)
    return accepted


# ---------------------------------------------------------------------------------------


async def test_the_catch_all_route_is_the_only_one_for_any_method_and_comes_last(
    app: web.Application,
) -> None:
    routes = list(app.router.routes())
    catch_all = [route for route in routes if is_catch_all(route)]
    assert len(catch_all) == 1
    assert routes[-1] is catch_all[0]
    _, answer = await call(app, "GET", "/v1/not-a-documented-path")
    assert (answer.status, answer.json()["key"]) == (404, "not_found")


async def test_every_served_operation_is_documented_and_every_documented_one_served(
    app: web.Application,
) -> None:
    document = await served_document(app)
    served = set(served_routes(app))
    described = {(method, path) for method, path, _ in operations(document)}
    assert served, "the router serves nothing"
    assert not served - described, f"served but not in the OpenAPI document: {served - described}"
    assert not described - served, f"in the OpenAPI document but not served: {described - served}"


async def test_every_documented_path_resolves_to_its_route(app: web.Application) -> None:
    document = await served_document(app)
    for method, path, _ in operations(document):
        probe = make_mocked_request(method, sample_url(path), app=app)
        match = await app.router.resolve(probe)
        assert not is_catch_all(match.route), f"{method} {path} is only caught by the catch-all"
        assert match.route.method == method, (method, path, match.route.method)
        assert match.route.resource is not None
        assert match.route.resource.canonical == path, (path, match.route.resource.canonical)


async def test_path_parameters_match(app: web.Application) -> None:
    document = await served_document(app)
    served = served_routes(app)
    for method, path, operation in operations(document):
        route = served.get((method, path))
        assert route is not None, f"{method} {path} is not served"
        in_router = placeholders(route.resource.canonical)
        assert declared(document, path, operation, "path") == in_router, (method, path)
        assert placeholders(path) == in_router, (method, path)
        # The handler receives exactly these names, with the values of the URL.
        probe = make_mocked_request(method, sample_url(path), app=app)
        match = await app.router.resolve(probe)
        assert dict(match) == {name: f"sample-{name}" for name in in_router}, (method, path)


async def test_v1_query_parameters_match_what_each_handler_accepts(
    app: web.Application,
) -> None:
    document = await served_document(app)
    known_names = {name for names in ALLOWED_PARAMETERS.values() for name in names}
    for _, path, operation in operations(document):
        known_names |= declared(document, path, operation, "query")
    checked = 0
    for method, path, operation in operations(document):
        if not path.startswith("/v1/"):
            continue
        documented = declared(document, path, operation, "query")
        listed = await accepted_by_refusal(app, method, path)
        probed = await accepted_by_probing(app, method, path, known_names | listed)
        assert listed == probed, (
            f"{method} {path}: the handler lists {sorted(listed)} but does not refuse "
            f"{sorted(probed)}"
        )
        assert documented == listed, (
            f"{method} {path}: query parameters accepted but not documented: "
            f"{sorted(listed - documented)}; documented but refused: "
            f"{sorted(documented - listed)}"
        )
        checked += 1
    assert checked, "no /v1 operation was checked"


async def test_service_endpoints_read_and_declare_no_query_parameter(
    app: web.Application,
) -> None:
    """Outside /v1 the handlers neither accept nor refuse parameters: they never read the
    query. They are not called here (readiness would need Redis and Elasticsearch); their
    source is read instead, behind the ``guarded`` wrapper every service route has."""
    document = await served_document(app)
    served = served_routes(app)
    checked = 0
    for method, path, operation in operations(document):
        if path.startswith("/v1/"):
            continue
        assert declared(document, path, operation, "query") == set(), (method, path)
        wrapped = inspect.getclosurevars(served[(method, path)].handler).nonlocals.get("handler")
        assert callable(wrapped), f"{method} {path}: no handler found behind the route's wrapper"
        source = inspect.getsource(wrapped)
        assert READS_QUERY.search(source) is None, (
            f"{method} {path}: the handler reads the query; declare its parameters in the "
            "OpenAPI document and hold them here like the /v1 ones"
        )
        checked += 1
    assert checked, "no service operation was checked"
