"""JSON values nested too deep to index, found before any recursive code sees them.

Every encoder and parser on the read path is recursive and bounded: orjson encodes at most
254 levels (``TypeError: Recursion limit reached`` beyond), parses at most 1024, Python's
``json`` stops near its recursion limit (``RecursionError``) and msgpack at 511. jsonb has no
such bound. A column value is therefore measured on its text first, without recursion, and
one nested more than :data:`MAX_JSON_DEPTH` levels is never parsed: it becomes a
:class:`TooDeepJson` marker, which the document builders refuse (the row is quarantined,
docs/api.md §3) and the change decoder only compares. The limit leaves room for the levels a
document adds around a column (``_source`` → ``doc`` → ``metadata``, a list answer's
envelope) under the smallest bound, orjson's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

MAX_JSON_DEPTH: Final = 200
"""Levels of arrays and objects a JSON column value may nest (``{}`` is 1, a scalar 0)."""

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")
_OPENING = frozenset(b"[{")


@dataclass(frozen=True, slots=True)
class TooDeepJson:
    """A JSON value nested more than :data:`MAX_JSON_DEPTH` levels, left unparsed.

    Equal markers hold the same text, so a change decoder can still tell whether a column
    changed."""

    depth: int
    text: bytes = field(repr=False)

    def reason(self, column: str) -> str:
        return (
            f"{column}: JSON nested more than {MAX_JSON_DEPTH} levels deep "
            f"({self.depth} levels); documents carry at most {MAX_JSON_DEPTH}"
        )


def _as_bytes(text: str | bytes | bytearray | memoryview) -> bytes:
    return text.encode() if isinstance(text, str) else bytes(text)


def nesting_depth(text: str | bytes | bytearray | memoryview) -> int:
    """How many arrays and objects the JSON text nests at its deepest point (no recursion).

    The text is assumed to be valid JSON (as jsonb and json columns are): brackets inside
    strings are skipped, nothing else is checked.
    """
    data = _as_bytes(text)
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub(b"", data)):
        if bracket[0] in _OPENING:
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def too_deep(text: str | bytes | bytearray) -> TooDeepJson | None:
    """The marker for a JSON text nested beyond the limit, else None (cheap when shallow:
    fewer opening brackets than the limit cannot nest deeper than it)."""
    if isinstance(text, str):
        if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
            return None
    elif text.count(b"[") + text.count(b"{") <= MAX_JSON_DEPTH:
        return None
    data = _as_bytes(text)
    depth = nesting_depth(data)
    return TooDeepJson(depth, data) if depth > MAX_JSON_DEPTH else None
