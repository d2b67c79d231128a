"""Opaque, signed pagination cursors for ``search_after`` lists (``starting_after``).

A cursor holds the sort values of the last hit of a page (``created_at_us``, ``id``): values,
never a point-in-time id, so it stays valid across index rebuilds and restarts. It is signed
with HMAC-SHA256 under a secret the caller passes (the app reads ``LOYALTY_CURSOR_SECRET``).

The secret may be several, separated by commas, newest first: the first signs, every one
verifies. Rotating is then putting a new secret in front, and dropping the old one once the
cursors it signed no longer matter; dropping a secret invalidates every cursor it signed.
A secret therefore cannot contain a comma, and an empty one is a configuration error.

A cursor is bound to the list it came from: the caller passes a ``scope`` string (list kind,
project and filters; see ``readapi.search_query.cursor_scope``) whose hash is signed into the
cursor, and a cursor presented with another scope is refused. The cursor is signed, not
encrypted: it reveals the id and creation time of the last item of the page, which the
client has just been shown anyway.

Interface (pure, no I/O):

- ``SortKey(created_at_us: int, id: str)``: the sort values of one hit;
  ``SortKey.from_sort_values(values)`` reads a hit's ``sort`` array (``ValueError`` if it is
  not ``[int, str]``), ``key.search_after()`` gives the ``search_after`` array.
- ``encode_cursor(key, secret, *, scope) -> str``: URL-safe base64 text, at most
  ``MAX_CURSOR_LENGTH`` characters, signed under the first secret; ``ValueError`` only for a
  key the format cannot carry (id longer than ``MAX_ID_BYTES`` UTF-8 bytes, timestamp outside
  a signed 64-bit long) or an empty secret.
- ``decode_cursor(text, secret, *, scope) -> SortKey``: raises ``InvalidCursor`` (a
  ``ValueError`` with a message fit for a 400 answer) for any text that is not a cursor this
  service issued for this scope under one of the secrets, and never any other exception for
  any text; ``ValueError`` for an empty secret (a configuration error, not a client one).

Wire format, before base64url without padding::

    version (1 byte) | scope hash (8) | created_at_us (8, signed big-endian) | id (UTF-8)
    | tag (16: HMAC-SHA256 over everything before it, truncated)
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

CURSOR_VERSION = 1
MAX_ID_BYTES = 1024

_SCOPE_HASH_BYTES = 8
_TAG_BYTES = 16
_HEADER = struct.Struct(">B8sq")
_MIN_RAW = _HEADER.size + 1 + _TAG_BYTES
_MAX_RAW = _HEADER.size + MAX_ID_BYTES + _TAG_BYTES
# Characters of the unpadded base64 text of the longest payload; longer text is refused
# before any decoding work.
MAX_CURSOR_LENGTH = (_MAX_RAW * 4 + 2) // 3
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_LONG_MIN = -(1 << 63)
_LONG_MAX = (1 << 63) - 1


class InvalidCursor(ValueError):
    """The text is not a cursor issued by this service for this list."""


@dataclass(frozen=True, slots=True)
class SortKey:
    """Sort values of one hit: ``created_at`` in epoch microseconds, then the id."""

    created_at_us: int
    id: str

    @classmethod
    def from_sort_values(cls, values: object) -> SortKey:
        """Read a hit's ``sort`` array, ``[created_at_us, id]``."""
        if not isinstance(values, Sequence) or isinstance(values, str | bytes):
            raise ValueError(f"sort values must be a list, got {values!r}")
        if len(values) != 2:
            raise ValueError(f"expected two sort values, got {values!r}")
        created_at_us, object_id = values
        # bool is an int subclass, and never a timestamp.
        if not isinstance(created_at_us, int) or isinstance(created_at_us, bool):
            raise ValueError(f"created_at_us sort value must be an integer: {values!r}")
        if not isinstance(object_id, str):
            raise ValueError(f"id sort value must be a string: {values!r}")
        return cls(created_at_us, object_id)

    def search_after(self) -> list[int | str]:
        return [self.created_at_us, self.id]


@functools.lru_cache(maxsize=16)
def _secret_keys(secret: bytes | str) -> tuple[bytes, ...]:
    """The HMAC keys of ``secret``, newest first (cached: a process has one or two texts)."""
    text = secret.encode() if isinstance(secret, str) else bytes(secret)
    keys = tuple(text.split(b","))
    if not all(keys):
        raise ValueError("the cursor secrets must not be empty")
    return keys


def _scope_hash(scope: str) -> bytes:
    # surrogatepass: a scope is built from request text and must hash, whatever it holds.
    return hashlib.sha256(scope.encode("utf-8", "surrogatepass")).digest()[:_SCOPE_HASH_BYTES]


def _tag(key: bytes, signed: bytes) -> bytes:
    return hmac.new(key, signed, hashlib.sha256).digest()[:_TAG_BYTES]


def encode_cursor(sort_key: SortKey, secret: bytes | str, *, scope: str) -> str:
    """The cursor text for ``sort_key`` in the list described by ``scope``."""
    key = _secret_keys(secret)[0]
    if not _LONG_MIN <= sort_key.created_at_us <= _LONG_MAX:
        raise ValueError(f"created_at_us out of range: {sort_key.created_at_us}")
    id_bytes = sort_key.id.encode("utf-8")
    if not 0 < len(id_bytes) <= MAX_ID_BYTES:
        raise ValueError(f"id must be 1 to {MAX_ID_BYTES} UTF-8 bytes long")
    signed = _HEADER.pack(CURSOR_VERSION, _scope_hash(scope), sort_key.created_at_us) + id_bytes
    raw = signed + _tag(key, signed)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(text: str, secret: bytes | str, *, scope: str) -> SortKey:
    """The sort key a cursor holds; ``InvalidCursor`` unless it is genuine and for ``scope``."""
    keys = _secret_keys(secret)
    if not isinstance(text, str):
        raise InvalidCursor("cursor must be a string")
    if not text:
        raise InvalidCursor("cursor is empty")
    if len(text) > MAX_CURSOR_LENGTH:
        raise InvalidCursor(f"cursor is too long (at most {MAX_CURSOR_LENGTH} characters)")
    if _BASE64URL.fullmatch(text) is None:
        raise InvalidCursor("cursor is not URL-safe base64 text")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as error:
        raise InvalidCursor("cursor is not valid base64") from error
    # Unused trailing bits would let several texts carry the same bytes; only the canonical
    # spelling is accepted, so that altering any character of a cursor invalidates it.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        raise InvalidCursor("cursor is not canonical base64")
    if len(raw) < _MIN_RAW:
        raise InvalidCursor("cursor is truncated")
    if len(raw) > _MAX_RAW:
        raise InvalidCursor("cursor is too long")
    version, scope_hash, created_at_us = _HEADER.unpack_from(raw)
    if version != CURSOR_VERSION:
        raise InvalidCursor(f"unsupported cursor version {version}")
    signed, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
    # Every key is tried, matching or not: the time taken does not tell which one signed.
    genuine = False
    for key in keys:
        genuine |= hmac.compare_digest(tag, _tag(key, signed))
    if not genuine:
        raise InvalidCursor("cursor signature does not match (altered or from elsewhere)")
    if not hmac.compare_digest(scope_hash, _scope_hash(scope)):
        raise InvalidCursor("cursor belongs to another list (different endpoint or filters)")
    try:
        object_id = signed[_HEADER.size :].decode("utf-8")
    except UnicodeDecodeError as error:
        # Only reachable with a leaked secret; still refused as a cursor, not a crash.
        raise InvalidCursor("cursor id is not UTF-8") from error
    return SortKey(created_at_us, object_id)
