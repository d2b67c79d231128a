"""docker-compose.yml matches the local stack and the configuration contract of docs/internals.md.

Compose cannot run on the build machines, so the file is checked by reading it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pytest
import yaml

from cache.config import DEFAULT_REDIS_URL
from indexer.settings import DEFAULT_PG_ADMIN_DSN, DEFAULT_PG_DSN
from stack import config as stack_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
INTERNALS = REPO / "docs" / "internals.md"

# Host ports must equal the stack's defaults so the same LOYALTY_* defaults work with either.
PUBLISHED = {"postgres": 5433, "redis": 6380, "elasticsearch": 9200}
APPS = ("indexer", "readapi")
# Read by the indexer's admin commands only (`indexer setup`): the `setup` service gets it, the
# long-running indexer never holds the admin's password.
ADMIN_ONLY = frozenset({"LOYALTY_PG_ADMIN_DSN"})
_CONTRACT_ROW = re.compile(r"^\|\s*`(LOYALTY_[A-Z_]+)`\s*\|[^|]*\|([^|]*)\|\s*$")
_DEFAULTED = re.compile(r"\$\{([A-Z_]+):-([^}]*)\}")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(compose, dict)
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def _variables_used_by(component: str) -> set[str]:
    """The LOYALTY_* variables docs/internals.md lists as used by ``component``."""
    found = set()
    for line in INTERNALS.read_text().splitlines():
        if line.startswith("Tuning"):
            break  # the tuning table that follows has defaults every deployment can keep
        match = _CONTRACT_ROW.match(line.strip())
        if match and component in match.group(2):
            found.add(match.group(1))
    return found


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(key): str(value) for key, value in env.items()}


def _defaults(value: str) -> str:
    """``value`` as compose reads it when no variable is set: ``${NAME:-default}`` is the
    default (every variable of the file has one)."""
    assert "${" not in _DEFAULTED.sub("", value), f"a variable without a default in {value!r}"
    return _DEFAULTED.sub(lambda match: match.group(2), value)


def _host_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for mapping in service.get("ports", []):
        # "127.0.0.1:5433:5432" or "5433:5432": the host port is the second field from the end.
        ports.add(int(str(mapping).split(":")[-2]))
    return ports


def test_all_services_are_declared(services: dict[str, Any]) -> None:
    assert {"postgres", "redis", "elasticsearch", *APPS} <= set(services)


def test_official_images(services: dict[str, Any]) -> None:
    assert services["postgres"]["image"] == "postgres:15"
    assert services["redis"]["image"] == "redis:7"
    assert services["elasticsearch"]["image"] == (
        "docker.elastic.co/elasticsearch/elasticsearch:8.19.9")


def test_postgres_is_set_up_for_logical_decoding(services: dict[str, Any]) -> None:
    command = " ".join(services["postgres"]["command"])
    for setting in ("wal_level=logical", "max_replication_slots=64", "max_wal_senders=64",
                    "max_connections=300", "fsync=off", "synchronous_commit=on",
                    "full_page_writes=off", "max_slot_wal_keep_size=8GB"):
        assert setting in command
    assert _environment(services["postgres"])["POSTGRES_DB"] == "loyalty"


def test_elasticsearch_single_node_without_security(services: dict[str, Any]) -> None:
    env = _environment(services["elasticsearch"])
    assert env["discovery.type"] == "single-node"
    assert env["xpack.security.enabled"] == "false"


@pytest.mark.parametrize(("name", "port"), sorted(PUBLISHED.items()))
def test_published_ports_match_the_stack(services: dict[str, Any], name: str, port: int) -> None:
    assert port in _host_ports(services[name])


@pytest.mark.parametrize("name", ["postgres", "redis", "elasticsearch", *APPS])
def test_long_running_services_have_healthchecks(services: dict[str, Any], name: str) -> None:
    healthcheck = services[name].get("healthcheck")
    assert healthcheck, f"{name} has no healthcheck"
    assert healthcheck["test"]


@pytest.mark.parametrize(("name", "command"), [("indexer", "indexer run"),
                                               ("readapi", "readapi serve")])
def test_apps_are_built_here(services: dict[str, Any], name: str, command: str) -> None:
    service = services[name]
    assert service["build"] in (".", {"context": "."})
    assert " ".join(service["command"]).startswith(command)


@pytest.mark.parametrize("name", APPS)
def test_apps_get_every_variable_they_use(services: dict[str, Any], name: str) -> None:
    needed = _variables_used_by(name) - ADMIN_ONLY
    assert needed, f"docs/internals.md lists no variable for {name}"
    missing = needed - set(_environment(services[name]))
    assert not missing


@pytest.mark.parametrize("name", APPS)
def test_apps_point_at_compose_services(services: dict[str, Any], name: str) -> None:
    env = _environment(services[name])
    for variable, host in (("LOYALTY_PG_DSN", "postgres"), ("LOYALTY_REDIS_URL", "redis"),
                           ("LOYALTY_ES_URL", "elasticsearch")):
        if variable in env:
            assert urlsplit(env[variable]).hostname == host


def test_readapi_holds_no_postgres_dsn(services: dict[str, Any]) -> None:
    assert "LOYALTY_PG_DSN" not in _environment(services["readapi"])


def test_readapi_healthcheck_asks_for_readiness(services: dict[str, Any]) -> None:
    probe = " ".join(services["readapi"]["healthcheck"]["test"])
    assert "/readyz" in probe and "/healthz" not in probe


def test_indexer_healthcheck_asks_whether_the_loop_steps(services: dict[str, Any]) -> None:
    indexer = services["indexer"]
    probe = " ".join(indexer["healthcheck"]["test"])
    env = _environment(indexer)
    assert f"127.0.0.1:{env['LOYALTY_METRICS_PORT']}/healthz" in probe
    # The probe runs inside the container: any bind address that includes loopback answers it.
    assert env.get("LOYALTY_METRICS_HOST", "127.0.0.1") in ("127.0.0.1", "0.0.0.0")


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (keyword, arguments), continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        pending += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
            pending = ""
    return instructions


def _index(instructions: list[tuple[str, str]], keyword: str, contains: str) -> int:
    for index, (found, arguments) in enumerate(instructions):
        if found == keyword and contains in arguments:
            return index
    raise AssertionError(f"no {keyword} with {contains!r} in the Dockerfile")


def test_dockerfile_installs_the_project_on_python_311_slim() -> None:
    instructions = _instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    _index(instructions, "RUN", "pip install --no-deps .")


def test_dockerfile_installs_the_dependencies_before_copying_the_code() -> None:
    instructions = _instructions()
    pyproject = _index(instructions, "COPY", "pyproject.toml")
    dependencies = _index(instructions, "RUN", "pip install -r")
    code = _index(instructions, "COPY", ". .")
    project = _index(instructions, "RUN", "pip install --no-deps .")
    assert pyproject < dependencies < code < project
    # Nothing before the dependency layer depends on the code.
    assert not any(
        keyword in ("COPY", "ADD") for keyword, _ in instructions[pyproject + 1 : dependencies]
    )


def test_dockerfile_serves_on_every_interface_with_a_healthcheck_as_a_user() -> None:
    instructions = _instructions()
    (command,) = [arguments for keyword, arguments in instructions if keyword == "CMD"]
    assert json.loads(command)[:2] == ["readapi", "serve"]
    assert "--host 0.0.0.0" in " ".join(json.loads(command))
    (healthcheck,) = [arguments for keyword, arguments in instructions if keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck or "/readyz" in healthcheck
    assert "curl" not in healthcheck  # the slim image has none
    user = _index(instructions, "USER", "")
    assert instructions[user][1] not in ("", "root", "0")
    assert user > _index(instructions, "RUN", "pip install --no-deps .")


# -- credentials (docs/internals.md, "Credentials") ---------------------------------------------


def _option(command: list[str], name: str) -> str:
    return _defaults(str(command[command.index(name) + 1]))


def test_postgres_asks_for_passwords(services: dict[str, Any]) -> None:
    env = _environment(services["postgres"])
    assert env["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    assert _defaults(env["POSTGRES_PASSWORD"])


def test_redis_requires_its_password_and_never_evicts(services: dict[str, Any]) -> None:
    command = [str(part) for part in services["redis"]["command"]]
    password = _option(command, "--requirepass")
    assert password
    assert _option(command, "--maxmemory") == stack_config.REDIS_MAXMEMORY
    assert _option(command, "--maxmemory-policy") == stack_config.REDIS_MAXMEMORY_POLICY
    assert _defaults(_environment(services["redis"])["REDISCLI_AUTH"]) == password
    for name in APPS:
        url = urlsplit(_defaults(_environment(services[name])["LOYALTY_REDIS_URL"]))
        assert unquote(url.password or "") == password


def test_the_indexer_runs_as_its_own_role(services: dict[str, Any]) -> None:
    admin_password = _defaults(_environment(services["postgres"])["POSTGRES_PASSWORD"])
    indexer_env = _environment(services["indexer"])
    role = psycopg.conninfo.conninfo_to_dict(_defaults(indexer_env["LOYALTY_PG_DSN"]))
    assert role["user"] == stack_config.PG_INDEXER_ROLE != "postgres"
    assert role.get("password")
    for name in APPS:
        assert not ADMIN_ONLY & set(_environment(services[name]))
    setup = services["setup"]
    assert " ".join(setup["command"]) == "indexer setup"
    setup_env = _environment(setup)
    admin = psycopg.conninfo.conninfo_to_dict(_defaults(setup_env["LOYALTY_PG_ADMIN_DSN"]))
    assert (admin["user"], admin["password"], admin["host"]) == (
        "postgres", admin_password, "postgres")
    # The role it grants (and creates) is the one the indexer logs in as, with that password.
    assert setup_env["LOYALTY_PG_DSN"] == indexer_env["LOYALTY_PG_DSN"]
    assert setup_env["LOYALTY_PUBLICATION"] == indexer_env["LOYALTY_PUBLICATION"]
    depends = services["indexer"]["depends_on"]["setup"]
    assert depends["condition"] == "service_completed_successfully"


def test_credentials_default_to_the_stack_ones(services: dict[str, Any]) -> None:
    """The host's defaults (docs/internals.md) work against compose's services too."""
    indexer_env = _environment(services["indexer"])
    setup_env = _environment(services["setup"])
    pairs = (
        (setup_env["LOYALTY_PG_ADMIN_DSN"], DEFAULT_PG_ADMIN_DSN),
        (indexer_env["LOYALTY_PG_DSN"], DEFAULT_PG_DSN),
    )
    for composed, default in pairs:
        got = psycopg.conninfo.conninfo_to_dict(_defaults(composed))
        want = psycopg.conninfo.conninfo_to_dict(default)
        assert (got["user"], got["password"]) == (want["user"], want["password"])
    got_url = urlsplit(_defaults(indexer_env["LOYALTY_REDIS_URL"]))
    want_url = urlsplit(DEFAULT_REDIS_URL)
    assert (got_url.username, got_url.password) == (want_url.username, want_url.password)
