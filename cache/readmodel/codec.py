"""Pure functions between the cache's value types and the bytes kept in Redis or published.

Envelope bytes are a plain msgpack map ``{"v": version, "s": schema, "d": data}`` that any
msgpack reader decodes, written in one fixed order with the version always as a uint64:

    83 a1 76 cf <8 bytes big-endian version> a1 73 <schema> a1 64 <data>

so ``cache/lua/versioned_set.lua`` reads the version from bytes 5-12 of the stored value
without decoding the document (see the comment there). Decoders raise ``CacheDecodeError``
on anything this module did not write; nothing here does I/O.

An API object (an ``Envelope`` of ``DOCUMENT_SCHEMA`` whose data is a dict) is stored as
``SERVED_SCHEMA`` with data ``[JSON bytes, match]``: ``decode_served`` hands a lookup the
response body as stored, and ``decode_envelope`` turns it back into the same ``Envelope``
(data a dict again) for everyone else. Envelopes written before, data a msgpack map, are
read by both.

Segment membership (``cache/membership.py``; written by ``cache/lua/membership.lua`` and
``cache/lua/segment_job.lua``, read here). Versions travel and are stored as 16 lower-case
hex digits, which the scripts compare as two 32-bit halves (Lua numbers are doubles):

    record   msgpack [base, [segment id, ...]]: base = version of the last REPLACE applied
             (16 hex digits), segment ids distinct and in byte order. Never starts like an
             envelope (a fixarray, not a fixmap).
    event    stream entry fields t (type: e entered, l left), c (customer id), s (segment id),
             k (cause: c change, t clock), l (cause LSN), o (occurred at, epoch microseconds),
             numbers in decimal; the entry id is the reader's cursor. An event's ``id`` is
             not stored: ``segment_event_id`` derives it from those fields.
    job      a field of the jobs hash: msgpack [project id, segment id] -> b"<16 hex version>:
             <occurred at, decimal>" while pending, b"<16 hex version>" once done
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack
import orjson

from cache.errors import CacheDecodeError
from cache.readmodel.documents import DOCUMENT_SCHEMA, SERVED_SCHEMA, match_of
from cache.records import (
    MAX_VERSION,
    ApiKeyRecord,
    Envelope,
    EventCause,
    Invalidation,
    MembershipMode,
    MembershipUpdate,
    SegmentEvent,
    SegmentEventType,
    SegmentJob,
    Served,
)

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
    msgpack cannot hold); an API object is stored ready to serve (module notes)."""
    version = _check_version(envelope.version)
    schema, data = envelope.schema, envelope.data
    if schema == DOCUMENT_SCHEMA and type(data) is dict:
        schema, data = SERVED_SCHEMA, [orjson.dumps(data), match_of(data)]
    return b"".join((
        ENVELOPE_HEAD,
        version.to_bytes(8, "big"),
        _SCHEMA_KEY,
        msgpack.packb(schema),
        _DATA_KEY,
        msgpack.packb(data),
    ))


def _served_data(data: Any) -> tuple[bytes, str | None]:
    if (
        type(data) is not list
        or len(data) != 2
        or type(data[0]) is not bytes
        or not (data[1] is None or type(data[1]) is str)
    ):
        raise CacheDecodeError("served document data is not [JSON bytes, match]")
    return data[0], data[1]


def decode_envelope(blob: bytes) -> Envelope:
    """The envelope held in ``blob``; any msgpack map with exactly ``v``, ``s``, ``d`` is read."""
    version, schema, data = _envelope_fields(blob)
    if schema == SERVED_SCHEMA:
        body, _match = _served_data(data)
        try:
            return Envelope(version, DOCUMENT_SCHEMA, orjson.loads(body))
        except orjson.JSONDecodeError as exc:
            raise CacheDecodeError(f"served document is not JSON: {exc}") from exc
    return Envelope(version, schema, data)


def _envelope_fields(blob: bytes) -> tuple[int, int, Any]:
    """Version, schema and data of any msgpack map with exactly ``v``, ``s``, ``d``."""
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
    return version, schema, obj["d"]


def decode_served(blob: bytes) -> Served:
    """What a lookup needs of an object's or alias's envelope, without decoding the object:
    its version and, for an API object, the stored response body and match; for an alias,
    the target id; for a tombstone, neither. Raises ``CacheDecodeError`` like
    ``decode_envelope``."""
    version, schema, data = _envelope_fields(blob)
    if schema == SERVED_SCHEMA:
        body, match = _served_data(data)
        return Served(version, body, match, None)
    if schema != DOCUMENT_SCHEMA:
        raise CacheDecodeError(f"not a document envelope: schema {schema!r}")
    if data is None:
        return Served(version, None, None, None)
    if type(data) is str:
        return Served(version, None, None, data)
    if type(data) is dict:
        # Written before objects were stored ready to serve: encoded here, once per fill.
        return Served(version, orjson.dumps(data), match_of(data), None)
    raise CacheDecodeError("document envelope data is neither an object nor an alias")


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
    # Checked in bulk (map, set, min and max run in C): a batch names tens of thousands of
    # keys, and every read API process decodes every message on its event loop.
    if keys and (
        set(map(type, keys)) != {str}
        or set(map(type, versions)) != {int}
        or min(versions) < 0
        or max(versions) > MAX_VERSION
    ):
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


# -- segment membership ---------------------------------------------------------------------

MAX_TIMESTAMP_US = (1 << 63) - 1
_VERSION_HEX = re.compile(r"[0-9a-f]{16}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
EVENT_ID_PREFIX = "evt_"
_EVENT_ID_BYTES = 10

# Stream entry field names and the one-letter codes of the values; the Lua script writes the
# same letters (its header comment lists them).
EVENT_TYPE_CODES: dict[SegmentEventType, str] = {
    SegmentEventType.ENTERED: "e",
    SegmentEventType.LEFT: "l",
}
EVENT_CAUSE_CODES: dict[EventCause, str] = {EventCause.CHANGE: "c", EventCause.CLOCK: "t"}
_EVENT_TYPES = {code.encode(): kind for kind, code in EVENT_TYPE_CODES.items()}
_EVENT_CAUSES = {code.encode(): cause for cause, code in EVENT_CAUSE_CODES.items()}
_MODE_CODES: dict[MembershipMode, str] = {MembershipMode.REPLACE: "r", MembershipMode.SET_ONE: "s"}


def _check_timestamp(occurred_at_us: int) -> int:
    if isinstance(occurred_at_us, bool) or not isinstance(occurred_at_us, int):
        raise TypeError(f"a timestamp must be an int, not {type(occurred_at_us).__name__}")
    if not 0 <= occurred_at_us <= MAX_TIMESTAMP_US:
        raise ValueError(f"timestamp out of range (epoch microseconds): {occurred_at_us}")
    return occurred_at_us


def version_hex(version: int) -> str:
    """The 16 lower-case hex digits the membership scripts compare a version as."""
    return f"{_check_version(version):016x}"


def _segment_id(segment_id: str) -> str:
    if not isinstance(segment_id, str) or not segment_id:
        raise ValueError(f"a segment id must be a non-empty string, got {segment_id!r}")
    return segment_id


def _byte_order(segment_ids: Iterable[str]) -> list[str]:
    # Code point order is UTF-8 byte order, the order the Lua script compares in.
    return sorted({_segment_id(segment_id) for segment_id in segment_ids})


def membership_update_args(update: MembershipUpdate) -> list[str]:
    """The script arguments of one update (``cache/lua/membership.lua`` reads them in this
    order): mode, version, emit, cause, cause LSN, occurred at, customer id, then for REPLACE
    the number of segments and the segment ids in byte order, for SET_ONE the member flag and
    the segment id. Raises ``ValueError``/``TypeError`` on an update that cannot be applied."""
    if not isinstance(update.customer_id, str) or not isinstance(update.project_id, str):
        raise TypeError("project and customer ids must be strings")
    head = [
        _MODE_CODES[MembershipMode(update.mode)],
        version_hex(update.version),
        "1" if update.emit else "0",
        EVENT_CAUSE_CODES[EventCause(update.cause)],
        str(_check_version(update.cause_lsn)),
        str(_check_timestamp(update.occurred_at_us)),
        update.customer_id,
    ]
    if update.mode == MembershipMode.REPLACE:
        if update.segment_id or update.member:
            raise ValueError("a REPLACE names its segments in segment_ids, not segment_id")
        if isinstance(update.segment_ids, str):
            raise TypeError("segment_ids must be a sequence of ids, not one string")
        segment_ids = _byte_order(update.segment_ids)
        return [*head, str(len(segment_ids)), *segment_ids]
    if update.segment_ids:
        raise ValueError("a SET_ONE names its segment in segment_id, not segment_ids")
    return [*head, "1" if update.member else "0", _segment_id(update.segment_id)]


def encode_membership(base: int, segment_ids: Iterable[str]) -> bytes:
    """A membership record as the script writes it (for tests and tools)."""
    return msgpack.packb([version_hex(base), _byte_order(segment_ids)])


def decode_membership(blob: bytes) -> tuple[int, frozenset[str]]:
    """The base version and the segment ids of a membership record."""
    try:
        obj = msgpack.unpackb(blob)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise CacheDecodeError(f"not a msgpack value: {exc}") from exc
    if type(obj) is not list or len(obj) != 2:
        raise CacheDecodeError("membership record is not a [base, segments] array")
    base, segment_ids = obj
    if type(base) is not str or _VERSION_HEX.fullmatch(base) is None:
        raise CacheDecodeError(f"membership base is not 16 hex digits: {base!r}")
    if type(segment_ids) is not list or any(type(s) is not str or not s for s in segment_ids):
        raise CacheDecodeError("membership segments are not an array of non-empty strings")
    if len(set(segment_ids)) != len(segment_ids):
        raise CacheDecodeError("membership segments repeat an id")
    return int(base, 16), frozenset(segment_ids)


def segment_event_id(
    cause: EventCause,
    cause_lsn: int,
    occurred_at_us: int,
    event_type: SegmentEventType,
    segment_id: str,
    customer_id: str,
) -> str:
    """The identity of a transition, from what caused it: a replay of the same change (or of
    the same clock tick) gives the same id, so a consumer can drop a repeat by id. A change
    is named by its LSN alone; ticks share the watermark as LSN, so their time counts too."""
    occurred = occurred_at_us if cause == EventCause.CLOCK else None
    payload = msgpack.packb(
        [str(cause), cause_lsn, occurred, str(event_type), segment_id, customer_id]
    )
    digest = hashlib.blake2b(payload, digest_size=_EVENT_ID_BYTES).hexdigest()
    return EVENT_ID_PREFIX + digest


def segment_event_fields(
    event_type: SegmentEventType,
    customer_id: str,
    segment_id: str,
    cause: EventCause,
    cause_lsn: int,
    occurred_at_us: int,
) -> dict[bytes, bytes]:
    """The stream entry fields of an event as the script writes them (for tests and tools)."""
    return {
        b"t": EVENT_TYPE_CODES[event_type].encode(),
        b"c": customer_id.encode(),
        b"s": segment_id.encode(),
        b"k": EVENT_CAUSE_CODES[cause].encode(),
        b"l": str(_check_version(cause_lsn)).encode(),
        b"o": str(_check_timestamp(occurred_at_us)).encode(),
    }


def _text(value: object, what: str) -> str:
    if not isinstance(value, bytes):
        raise CacheDecodeError(f"segment event {what} is missing or not bytes")
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise CacheDecodeError(f"segment event {what} is not UTF-8") from exc


def _number(value: object, what: str, limit: int) -> int:
    text = _text(value, what)
    if _DECIMAL.fullmatch(text) is None or int(text) > limit:
        raise CacheDecodeError(f"segment event {what} is not a number in range: {text!r}")
    return int(text)


def is_stream_cursor(text: str) -> bool:
    """Whether ``text`` is a stream entry id (``<ms>-<seq>``), a reader's cursor."""
    return _STREAM_ID.fullmatch(text) is not None


def stream_cursor(entry_id: bytes | str) -> str:
    """A stream entry id read from Redis, as text."""
    text = entry_id.decode(errors="replace") if isinstance(entry_id, bytes) else entry_id
    if not is_stream_cursor(text):
        raise CacheDecodeError(f"not a stream entry id: {entry_id!r}")
    return text


def decode_segment_event(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> SegmentEvent:
    """The event held in one stream entry, with its derived ``id``."""
    if not isinstance(fields, Mapping):
        raise CacheDecodeError("segment event fields are not a map")
    event_type = _EVENT_TYPES.get(fields.get(b"t", b""))
    cause = _EVENT_CAUSES.get(fields.get(b"k", b""))
    if event_type is None or cause is None:
        raise CacheDecodeError("segment event has an unknown type or cause")
    customer_id = _text(fields.get(b"c"), "customer id")
    segment_id = _text(fields.get(b"s"), "segment id")
    cause_lsn = _number(fields.get(b"l"), "cause LSN", MAX_VERSION)
    occurred_at_us = _number(fields.get(b"o"), "time", MAX_TIMESTAMP_US)
    return SegmentEvent(
        cursor=stream_cursor(entry_id),
        id=segment_event_id(cause, cause_lsn, occurred_at_us, event_type, segment_id, customer_id),
        type=event_type,
        customer_id=customer_id,
        segment_id=segment_id,
        cause=cause,
        cause_lsn=cause_lsn,
        occurred_at_us=occurred_at_us,
    )


def segment_job_field(project_id: str, segment_id: str) -> bytes:
    """The jobs hash field of one (project, segment): one job per segment at a time."""
    return msgpack.packb([project_id, _segment_id(segment_id)])


def segment_job_value(job: SegmentJob) -> bytes:
    """``<16 hex version>:<occurred at>``: the script compares the first 16 bytes."""
    return f"{version_hex(job.version)}:{_check_timestamp(job.occurred_at_us)}".encode()


def is_done_segment_job(value: bytes) -> bool:
    """A jobs hash value that is only a version: that job is done."""
    return len(value) == 16


def decode_segment_job(field: bytes, value: bytes) -> SegmentJob:
    try:
        key = msgpack.unpackb(field)
        text = value.decode()
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise CacheDecodeError(f"not a segment job: {exc}") from exc
    if type(key) is not list or len(key) != 2 or any(type(part) is not str for part in key):
        raise CacheDecodeError("segment job field is not a [project, segment] array")
    version, colon, occurred = text.partition(":")
    if (
        not colon
        or _VERSION_HEX.fullmatch(version) is None
        or _DECIMAL.fullmatch(occurred) is None
        or int(occurred) > MAX_TIMESTAMP_US
    ):
        raise CacheDecodeError(f"segment job value is not <version>:<time>: {text!r}")
    return SegmentJob(key[0], key[1], int(version, 16), int(occurred))
