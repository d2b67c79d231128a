"""Pure functions between the cache's value types and the bytes kept in Redis or published.

Envelope bytes are a plain msgpack map ``{"v": version, "s": schema, "d": data}`` that any
msgpack reader decodes, written in one fixed order with the version always as a uint64:

    83 a1 76 cf <8 bytes big-endian version> a1 73 <schema> a1 64 <data>

so ``cache/lua/versioned_set.lua`` reads the version from bytes 5-12 of the stored value
without decoding the document (see the comment there). Decoders raise ``CacheDecodeError``
on anything this module did not write; nothing here does I/O.
"""

from __future__ import annotations

import re
from typing import Any

import msgpack

from cache.errors import CacheDecodeError
from cache.records import MAX_VERSION, ApiKeyRecord, Envelope, Invalidation

# fixmap with 3 entries, fixstr "v", uint64 marker: the prefix the Lua scripts check.
ENVELOPE_HEAD = b"\x83\xa1v\xcf"
ENVELOPE_HEADER_SIZE = len(ENVELOPE_HEAD) + 8
_SCHEMA_KEY = b"\xa1s"
_DATA_KEY = b"\xa1d"

INVALIDATION_FORMAT = 1
API_KEY_SCHEMA = 1
WATERMARK_DIGITS = 16
_WATERMARK_TEXT = re.compile(rb"[0-9a-f]{%d}" % WATERMARK_DIGITS)


def _check_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"version must be an int, not {type(version).__name__}")
    if not 0 <= version <= MAX_VERSION:
        raise ValueError(f"version out of the unsigned 64-bit range: {version}")
    return version


def encode_envelope(envelope: Envelope) -> bytes:
    """Bytes of ``envelope`` in the fixed layout above (raises ``TypeError`` on data that
    msgpack cannot hold)."""
    version = _check_version(envelope.version)
    return b"".join((
        ENVELOPE_HEAD,
        version.to_bytes(8, "big"),
        _SCHEMA_KEY,
        msgpack.packb(envelope.schema),
        _DATA_KEY,
        msgpack.packb(envelope.data),
    ))


def decode_envelope(blob: bytes) -> Envelope:
    """The envelope held in ``blob``; any msgpack map with exactly ``v``, ``s``, ``d`` is read."""
    try:
        obj = msgpack.unpackb(blob)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise CacheDecodeError(f"not a msgpack value: {exc}") from exc
    if type(obj) is not dict or len(obj) != 3:
        raise CacheDecodeError("envelope is not a map of v, s, d")
    version = obj.get("v")
    schema = obj.get("s")
    if type(version) is not int or not 0 <= version <= MAX_VERSION:
        raise CacheDecodeError(f"envelope version is not an unsigned 64-bit int: {version!r}")
    if type(schema) is not int or "d" not in obj:
        raise CacheDecodeError("envelope lacks an int schema or a data entry")
    return Envelope(version, schema, obj["d"])


def envelope_version(head: object) -> int | None:
    """The version in the first ``ENVELOPE_HEADER_SIZE`` bytes of a stored value, or ``None``
    when they are not an envelope's header (read without decoding the document)."""
    if (
        not isinstance(head, bytes)
        or len(head) != ENVELOPE_HEADER_SIZE
        or not head.startswith(ENVELOPE_HEAD)
    ):
        return None
    return int.from_bytes(head[len(ENVELOPE_HEAD) :], "big")


def encode_invalidation(message: Invalidation) -> bytes:
    """``[format, [key, version, key, version, ...], watermark | nil]`` as msgpack."""
    flat: list[str | int] = []
    for key, version in message.entries:
        flat.append(key)
        flat.append(_check_version(version))
    watermark = None if message.watermark is None else _check_version(message.watermark)
    return msgpack.packb([INVALIDATION_FORMAT, flat, watermark])


def decode_invalidation(blob: bytes) -> Invalidation:
    try:
        obj = msgpack.unpackb(blob)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise CacheDecodeError(f"not a msgpack value: {exc}") from exc
    if type(obj) is not list or len(obj) != 3 or obj[0] != INVALIDATION_FORMAT:
        raise CacheDecodeError("not an invalidation message of a known format")
    flat, watermark = obj[1], obj[2]
    if type(flat) is not list or len(flat) % 2:
        raise CacheDecodeError("invalidation entries are not key/version pairs")
    keys = flat[0::2]
    versions = flat[1::2]
    for key, version in zip(keys, versions, strict=True):
        if type(key) is not str or type(version) is not int or not 0 <= version <= MAX_VERSION:
            raise CacheDecodeError(f"invalid invalidation entry: {key!r} {version!r}")
    if watermark is not None and (
        type(watermark) is not int or not 0 <= watermark <= MAX_VERSION
    ):
        raise CacheDecodeError(f"invalid watermark: {watermark!r}")
    return Invalidation(tuple(zip(keys, versions, strict=True)), watermark)


def api_key_to_data(record: ApiKeyRecord) -> list[Any]:
    """Envelope data of an API key record (schema ``API_KEY_SCHEMA``): a compact array."""
    return [
        record.app_id,
        record.project_id,
        record.token_sha256,
        record.rate_limit_per_minute,
        record.revoked,
    ]


def api_key_from_data(data: Any) -> ApiKeyRecord:
    if type(data) is not list or len(data) != 5:
        raise CacheDecodeError("API key data is not a 5-item array")
    app_id, project_id, token_sha256, limit, revoked = data
    if (
        type(app_id) is not str
        or type(project_id) is not str
        or type(token_sha256) is not str
        or not (limit is None or type(limit) is int)
        or type(revoked) is not bool
    ):
        raise CacheDecodeError("API key data has fields of the wrong types")
    return ApiKeyRecord(app_id, project_id, token_sha256, limit, revoked)


def encode_watermark(lsn: int) -> bytes:
    """Fixed-width lower-case hex, so ``cache/lua/advance_watermark.lua`` compares it exactly."""
    return b"%016x" % _check_version(lsn)


def decode_watermark(blob: bytes) -> int:
    if _WATERMARK_TEXT.fullmatch(blob) is None:
        raise CacheDecodeError(f"watermark is not {WATERMARK_DIGITS} hex digits: {blob!r}")
    return int(blob, 16)
