"""Which package may import which, checked on the source of every module of the product.

``readapi`` answers from Redis and Elasticsearch only: it never imports the indexer or the
Postgres driver. ``cache`` is shared by both sides and depends on neither. ``indexer`` never
imports the API. No product package imports the local-stack manager or the tests.

Every import counts: at module level, inside functions and classes, under ``if TYPE_CHECKING``,
relative ones (resolved against the module's package) and ``importlib.import_module`` or
``__import__`` called with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_DRIVER = ("psycopg", "psycopg_pool", "psycopg2")
NOT_PRODUCT = ("stack", "tests")
# package -> top-level modules it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "readapi": ("indexer", *POSTGRES_DRIVER, *NOT_PRODUCT),
    "cache": ("indexer", "readapi", *POSTGRES_DRIVER, *NOT_PRODUCT),
    "indexer": ("readapi", *NOT_PRODUCT),
}
DYNAMIC_IMPORTS = ("importlib.import_module", "import_module", "__import__")


def imported_modules(source: str, module: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, the code of ``module``."""
    package = module.split(".")[:-1]  # for an __init__ module, the package itself
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.lineno, node.module or ""
                continue
            base = package[: len(package) - (node.level - 1)] if node.level <= len(package) else []
            name = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, name or "." * node.level
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in DYNAMIC_IMPORTS:
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value


def violations(package: str) -> list[str]:
    forbidden = FORBIDDEN[package]
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT)
        module = ".".join(relative.with_suffix("").parts)
        for line, name in imported_modules(path.read_text(), module):
            top = name.split(".")[0]
            if top in forbidden:
                found.append(f"{relative}:{line}: imports {name} "
                             f"({package} must not import {', '.join(forbidden)})")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_it_may(package: str) -> None:
    assert (ROOT / package / "__init__.py").is_file()
    problems = violations(package)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_every_kind_of_import_is_seen() -> None:
    source = '''
from __future__ import annotations
import importlib
from typing import TYPE_CHECKING
import readapi.app as app
from .. import types
from ..readmodel import keys
from .sibling import thing
if TYPE_CHECKING:
    from indexer.commands import Clients
def later():
    import psycopg
    from stack import cli
    return importlib.import_module("tests.fixtures"), __import__("psycopg_pool")
class Lazy:
    def method(self):
        from indexer import runner
'''
    found = list(imported_modules(source, "cache.readmodel.codec"))
    assert {name for _, name in found} >= {
        "readapi.app", "cache", "cache.readmodel", "cache.readmodel.sibling",
        "indexer.commands", "psycopg", "stack", "tests.fixtures", "psycopg_pool", "indexer",
    }
    assert {(10, "indexer.commands"), (12, "psycopg"), (17, "indexer")} <= set(found)
