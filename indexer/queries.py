"""Named SQL, loaded once from ``indexer/sql/*.sql``.

Each file holds blocks that start with a ``-- name: <query_name>`` line; the text up to the
next header is the query. Keeping SQL out of Python lets it be read and tested as SQL.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

_HEADER = re.compile(r"^--\s*name:\s*(?P<name>[a-z0-9_]+)\s*$", re.MULTILINE)
# Commands of the replication protocol (CREATE_REPLICATION_SLOT, ...) take no comment.
_REPLICATION_COMMAND = re.compile(r"[A-Z]+_[A-Z_]+\b")


def parse_queries(text: str) -> dict[str, str]:
    """Split one ``.sql`` file into ``{name: query}``; text before the first header is ignored."""
    queries: dict[str, str] = {}
    headers = list(_HEADER.finditer(text))
    for index, header in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        name = header.group("name")
        if name in queries:
            raise ValueError(f"duplicate query name {name!r}")
        queries[name] = text[header.end() : end].strip()
    return queries


@functools.cache
def all_queries() -> dict[str, str]:
    queries: dict[str, str] = {}
    for entry in sorted(resources.files("indexer").joinpath("sql").iterdir(), key=str):
        if entry.name.endswith(".sql"):
            for name, query in parse_queries(entry.read_text(encoding="utf-8")).items():
                if name in queries:
                    raise ValueError(f"query {name!r} defined twice")
                queries[name] = query
    return queries


@functools.cache
def query(name: str) -> str:
    """The SQL text of a named query, led by its name in a comment (so that
    ``pg_stat_statements`` and ``pg_stat_activity`` say which query ran); a missing name is a
    programming error."""
    text = all_queries()[name]
    if _REPLICATION_COMMAND.match(text):
        return text
    return f"/* {name} */ {text}"
