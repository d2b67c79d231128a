"""Settings of both processes: declared once, documented as declared, validated at start, and
the only readers of the environment.

The configuration tables of docs/internals.md are held against ``SETTINGS`` of
``indexer/settings.py`` and ``readapi/settings.py``: every variable documented with its exact
default and the process that uses it, and nothing documented that no process reads.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

import indexer.cli
import readapi.cli
from cache.config import Setting, SettingsError
from indexer.settings import ENVIRONMENT_HELP as INDEXER_HELP
from indexer.settings import SETTINGS as INDEXER_SETTINGS
from indexer.settings import IndexerSettings
from readapi.settings import ENVIRONMENT_HELP as API_HELP
from readapi.settings import SETTINGS as API_SETTINGS
from readapi.settings import ApiSettings
from stack import config as stack_config

REPO = Path(__file__).resolve().parents[2]
INTERNALS = REPO / "docs" / "internals.md"
PACKAGES = ("indexer", "readapi", "cache")

PROCESSES: dict[str, tuple[type[Any], tuple[Setting[Any], ...]]] = {
    "indexer": (IndexerSettings, INDEXER_SETTINGS),
    "readapi": (ApiSettings, API_SETTINGS),
}
STACK_DEFAULTS = {
    stack_config.ENV_PG_PORT: f"`{stack_config.DEFAULT_PG_PORT}`",
    stack_config.ENV_PG_STANDBY_PORT: f"`{stack_config.DEFAULT_PG_STANDBY_PORT}`",
    stack_config.ENV_REDIS_CLUSTER_PORT: f"`{stack_config.DEFAULT_REDIS_CLUSTER_PORT}`",
    stack_config.ENV_REDIS_PORT: f"`{stack_config.DEFAULT_REDIS_PORT}`",
    stack_config.ENV_ES_PORT: f"`{stack_config.DEFAULT_ES_PORT}`",
    stack_config.ENV_STACK_DIR: "`<repo>/.stack`",
}


@dataclasses.dataclass(frozen=True)
class DocumentedVariable:
    default: str
    used_by: str


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def documented() -> dict[str, DocumentedVariable]:
    """Every variable of the tables of the Configuration section, with its default cell (as
    written, backticks included) and its "used by" cell."""
    text = INTERNALS.read_text()
    start = text.index("## Configuration")
    end = text.index("\n## ", start + 1)
    found: dict[str, DocumentedVariable] = {}
    header: list[str] | None = None
    for line in text[start:end].splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue  # the separator row
        row = dict(zip(header, cells, strict=True))
        variables = re.findall(r"`(LOYALTY_[A-Z0-9_]+)`", row["variable"])
        assert variables, f"no variable in row {line!r}"
        defaults = row["default"].split(" / ") if len(variables) > 1 else [row["default"]]
        assert len(defaults) == len(variables), f"one default per variable in {line!r}"
        for variable, default in zip(variables, defaults, strict=True):
            assert variable not in found, f"{variable} documented twice"
            found[variable] = DocumentedVariable(default, row["used by"])
    return found


def _shown(setting: Setting[Any]) -> str:
    """How the docs must show a setting's default."""
    if setting.shown_default is not None:
        return setting.shown_default
    return f"`{setting.default_text}`"


def _all_settings() -> list[tuple[str, Setting[Any]]]:
    return [(process, s) for process, (_, specs) in PROCESSES.items() for s in specs]


# -- (1) the docs list exactly the variables the processes read, with their defaults -----------


@pytest.mark.parametrize(
    ("process", "setting"), _all_settings(), ids=lambda v: getattr(v, "variable", v)
)
def test_every_setting_is_documented_with_its_default(process: str, setting: Setting[Any]) -> None:
    docs = documented()
    assert setting.variable in docs, f"{setting.variable} is missing from docs/internals.md"
    entry = docs[setting.variable]
    assert entry.default == _shown(setting)
    assert process in entry.used_by


def test_no_documented_variable_is_unknown() -> None:
    read = {s.variable for _, s in _all_settings()}
    for variable, entry in documented().items():
        if variable in STACK_DEFAULTS:
            assert entry.default == STACK_DEFAULTS[variable]
            assert entry.used_by == "stack"
            continue
        assert variable in read, f"docs/internals.md documents {variable}, which nothing reads"
        for process, (_, specs) in PROCESSES.items():
            if process in entry.used_by:
                assert variable in {s.variable for s in specs}, f"{process} reads no {variable}"


def test_a_variable_both_processes_read_means_the_same_to_both() -> None:
    api = {s.variable: s for s in API_SETTINGS}
    shared = [s for s in INDEXER_SETTINGS if s.variable in api]
    assert {s.variable for s in shared} >= {"LOYALTY_REDIS_URL", "LOYALTY_TOMBSTONE_TTL_SECONDS"}
    for setting in shared:
        other = api[setting.variable]
        assert (setting.field, setting.default, setting.format.allowed, setting.help) == (
            other.field, other.default, other.format.allowed, other.help)


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_each_setting_is_declared_once_and_is_a_field(process: str) -> None:
    cls, specs = PROCESSES[process]
    variables = [s.variable for s in specs]
    fields = [s.field for s in specs]
    assert len(set(variables)) == len(variables) and len(set(fields)) == len(fields)
    assert set(fields) <= {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize(("help_text", "specs"), [(INDEXER_HELP, INDEXER_SETTINGS),
                                                  (API_HELP, API_SETTINGS)])
def test_help_lists_every_variable_with_its_default(
    help_text: str, specs: tuple[Setting[Any], ...]
) -> None:
    lines = help_text.splitlines()
    assert lines[0] == "environment:"
    assert len(lines) == len(specs) + 1
    for setting, line in zip(specs, lines[1:], strict=True):
        assert line.split()[0] == setting.variable
        assert line.endswith(f"(default: {setting.default_text})")


# -- (2) invalid values: one line naming the variable and what it allows ----------------------


@pytest.mark.parametrize(
    ("process", "variable", "value", "allowed"),
    [
        ("indexer", "LOYALTY_BATCH_CHANGES", "many", "an integer from 1 to 1000000"),
        ("indexer", "LOYALTY_BATCH_CHANGES", "0", "an integer from 1 to 1000000"),
        ("indexer", "LOYALTY_BATCH_CHANGES", "5_000", "an integer"),
        ("indexer", "LOYALTY_METRICS_PORT", "70000", "an integer from 0 to 65535"),
        ("indexer", "LOYALTY_IDLE_SLEEP_MS", "-1", "an integer from 0 to 60000"),
        ("indexer", "LOYALTY_ES_REFRESH", "250", "a duration"),
        ("indexer", "LOYALTY_ES_REFRESH", "1h", "a duration"),
        ("indexer", "LOYALTY_ES_REFRESH", "-1", "a duration"),
        ("indexer", "LOYALTY_REDIS_KEY_PREFIX", "a{b}:", "without braces"),
        ("indexer", "LOYALTY_SLOT_NAME", "Slot-1", "[a-z0-9_]"),
        ("indexer", "LOYALTY_PG_DSN", "mysql://u@h/db", "a libpq connection string"),
        ("indexer", "LOYALTY_PG_DSN", "host=127.0.0.1 port", "a libpq connection string"),
        ("indexer", "LOYALTY_ES_INDEX_PREFIX", "_x", "starting with a letter or digit"),
        ("indexer", "LOYALTY_TOMBSTONE_TTL_SECONDS", "0.5", "an integer from 1 to"),
        ("readapi", "LOYALTY_REDIS_KEY_PREFIX", "{x}", "without braces"),
        ("readapi", "LOYALTY_REDIS_KEY_PREFIX", "a\nb", "without braces"),
        ("readapi", "LOYALTY_API_PORT", "70000", "an integer from 0 to 65535"),
        ("readapi", "LOYALTY_L1_MAX_AGE_MS", "0", "an integer from 1 to 3600000"),
        ("readapi", "LOYALTY_RATE_LIMIT_DEFAULT", "many", "an integer"),
        ("readapi", "LOYALTY_REDIS_URL", "http://127.0.0.1:6380/0", "scheme redis or rediss"),
        ("readapi", "LOYALTY_REDIS_URL", "redis://127.0.0.1:port/0", "scheme redis or rediss"),
        ("readapi", "LOYALTY_ES_URL", "http:///nohost", "and a host"),
    ],
)
def test_an_invalid_value_is_one_line_naming_the_variable(
    process: str, variable: str, value: str, allowed: str
) -> None:
    cls, _ = PROCESSES[process]
    with pytest.raises(SettingsError) as info:
        cls.from_env({variable: value})
    message = str(info.value)
    assert message.startswith(f"{variable} must be ")
    assert allowed in message
    assert "\n" not in message and len(message) < 200


def test_a_refused_url_is_not_echoed() -> None:
    """A DSN may carry a password: the error names the variable, not the value."""
    with pytest.raises(SettingsError) as info:
        IndexerSettings.from_env({"LOYALTY_PG_DSN": "mysql://user:secret@db/loyalty"})
    assert "secret" not in str(info.value)


def test_valid_values_are_read() -> None:
    indexer_env = {
        "LOYALTY_PG_DSN": "host=127.0.0.1 port=5433 dbname=loyalty",
        "LOYALTY_REDIS_URL": "rediss://cache.internal:6379/2",
        "LOYALTY_ES_URL": "https://search.internal:9243",
        "LOYALTY_ES_INDEX_PREFIX": "t0a1_",
        "LOYALTY_REDIS_KEY_PREFIX": "t0a1:",
        "LOYALTY_SLOT_NAME": "slot_t0a1",
        "LOYALTY_PUBLICATION": "pub_t0a1",
        "LOYALTY_TOMBSTONE_TTL_SECONDS": "3600",
        "LOYALTY_BATCH_CHANGES": "300",
        "LOYALTY_IDLE_SLEEP_MS": "0",
        "LOYALTY_ES_REFRESH": "1s",
        "LOYALTY_METRICS_PORT": "0",
    }
    settings = IndexerSettings.from_env(indexer_env)
    assert settings.pg_dsn == "host=127.0.0.1 port=5433 dbname=loyalty"
    assert settings.redis_key_prefix == "t0a1:" and settings.slot_name == "slot_t0a1"
    assert (settings.tombstone_ttl_seconds, settings.batch_changes) == (3600, 300)
    assert (settings.idle_sleep_ms, settings.es_refresh_interval) == (0, "1s")
    api = ApiSettings.from_env({"LOYALTY_TOMBSTONE_TTL_SECONDS": "3600", "LOYALTY_API_PORT": "0"})
    assert (api.tombstone_ttl_seconds, api.port) == (3600, 0)


def test_an_empty_variable_counts_as_unset() -> None:
    assert IndexerSettings.from_env({"LOYALTY_BATCH_CHANGES": ""}) == IndexerSettings()
    assert ApiSettings.from_env({"LOYALTY_API_PORT": ""}) == ApiSettings()


def test_indexer_cli_refuses_an_invalid_variable_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOYALTY_ES_REFRESH", "fast")
    assert indexer.cli.main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("indexer status: LOYALTY_ES_REFRESH must be")


def test_readapi_cli_refuses_an_invalid_variable_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOYALTY_REDIS_KEY_PREFIX", "{all}:")
    assert readapi.cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("readapi serve: LOYALTY_REDIS_KEY_PREFIX")


# -- (3) no variable set: the documented defaults -------------------------------------------------


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_defaults_are_the_documented_ones(process: str) -> None:
    cls, specs = PROCESSES[process]
    settings = cls.from_env({})
    assert settings == cls()
    docs = documented()
    for setting in specs:
        value = getattr(settings, setting.field)
        assert value == setting.default
        if setting.shown_default is None:
            assert docs[setting.variable].default == f"`{setting.format.show(value)}`"


# -- (4) nothing but the settings modules reads the environment ----------------------------------

_ENVIRONMENT_READ = re.compile(
    r"\bos\.(environb?|getenvb?)\b|\bgetenv\s*\(|\bfrom\s+os\s+import\s[^\n]*\b(environb?|getenv)\b"
)


def test_only_settings_modules_read_the_environment() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name == "settings.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if _ENVIRONMENT_READ.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "read the environment outside settings.py:\n" + "\n".join(offenders)
