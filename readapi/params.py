"""Validation of what a lookup request carries: its path id and (no) query parameters.

List parameters are validated by ``readapi.search_query``; this covers the rest, with the
same bounds: ids and codes are 1 to 200 characters without control characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from readapi.errors import invalid_request

MAX_ID_LENGTH = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def has_control_characters(value: str) -> bool:
    """Control characters (U+0000-U+001F, U+007F-U+009F) or lone surrogates: refused in
    every id and parameter value."""
    return _CONTROL.search(value) is not None


def plainly_valid_id(value: str) -> bool:
    """True for the common valid id at the cost of two C calls (1 to 200 characters, all
    printable: ``isprintable()`` is false for every character ``_CONTROL`` matches). False is
    no verdict: ``path_id`` decides."""
    return 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


def path_id(value: str, name: str) -> str:
    """A path segment naming an object (``{code}``, ``{id}``)."""
    if plainly_valid_id(value):
        return value
    if not value or len(value) > MAX_ID_LENGTH:
        raise invalid_request(
            f"Path parameter {name} must be 1 to {MAX_ID_LENGTH} characters.",
            f"Got {len(value)} characters.",
        )
    if has_control_characters(value):
        raise invalid_request(
            f"Path parameter {name} must not contain control characters.", ""
        )
    return value


def no_query(query: Mapping[str, str]) -> None:
    """Endpoints without query parameters refuse any."""
    for name in query:
        shown = name if len(name) <= 60 else name[:60] + "..."
        raise invalid_request(
            f"Unknown query parameter {shown!r}.", "This endpoint takes no query parameters."
        )
