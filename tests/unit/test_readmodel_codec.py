"""Codec: round trips, the fixed header the Lua scripts read, and garbage refused cleanly."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache.errors import CacheDecodeError
from cache.readmodel.codec import (
    ENVELOPE_HEAD,
    ENVELOPE_HEADER_SIZE,
    MAX_TIMESTAMP_US,
    api_key_from_data,
    api_key_to_data,
    decode_envelope,
    decode_invalidation,
    decode_membership,
    decode_segment_event,
    decode_segment_job,
    decode_served,
    decode_watermark,
    encode_envelope,
    encode_invalidation,
    encode_membership,
    encode_watermark,
    envelope_version,
    is_stream_cursor,
    membership_update_args,
    segment_event_fields,
    segment_event_id,
    segment_job_field,
    segment_job_value,
    version_hex,
)
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
)
from cache.types import Lsn

versions = st.integers(min_value=0, max_value=MAX_VERSION)
json_like: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=MAX_VERSION)
    # Finite: an API object comes from JSON, which holds no infinity (and JSON writes none).
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# SERVED_SCHEMA is the codec's own: what it writes an API object as, never given.
schemas = st.integers(min_value=0, max_value=1000).filter(lambda schema: schema != SERVED_SCHEMA)
envelopes = st.builds(Envelope, versions, schemas, json_like | st.binary())


@given(envelopes)
def test_envelope_round_trip(envelope: Envelope) -> None:
    assert decode_envelope(encode_envelope(envelope)) == envelope


@given(envelopes)
def test_envelope_is_a_plain_msgpack_map_with_a_fixed_header(envelope: Envelope) -> None:
    blob = encode_envelope(envelope)
    assert blob[:4] == ENVELOPE_HEAD
    assert int.from_bytes(blob[4:12], "big") == envelope.version
    expected = {"v": envelope.version, "s": envelope.schema, "d": envelope.data}
    if envelope.schema == DOCUMENT_SCHEMA and isinstance(envelope.data, dict):
        # An API object is stored ready to serve: its JSON and its code or source_id.
        served = [orjson.dumps(envelope.data), match_of(envelope.data)]
        expected = {"v": envelope.version, "s": SERVED_SCHEMA, "d": served}
    assert msgpack.unpackb(blob) == expected


@given(versions, st.dictionaries(st.text(max_size=8), json_like, max_size=6))
def test_an_api_object_is_stored_as_its_response_body(version: int, body: dict[str, Any]) -> None:
    blob = encode_envelope(Envelope(version, DOCUMENT_SCHEMA, body))
    served = decode_served(blob)
    assert served.version == version and served.target is None
    assert served.body is not None and orjson.loads(served.body) == body
    assert decode_envelope(blob) == Envelope(version, DOCUMENT_SCHEMA, body)


def test_served_values_of_objects_aliases_and_tombstones() -> None:
    voucher = {"id": "v_1", "object": "voucher", "code": "SUMMER", "metadata": {"code": "x"}}
    customer = {"id": "c_1", "object": "customer", "source_id": "ext-1"}
    campaign = {"id": "camp_1", "object": "campaign", "code": "not an alias"}
    assert decode_served(encode_envelope(Envelope(3, DOCUMENT_SCHEMA, voucher))).match == "SUMMER"
    assert decode_served(encode_envelope(Envelope(3, DOCUMENT_SCHEMA, customer))).match == "ext-1"
    assert decode_served(encode_envelope(Envelope(3, DOCUMENT_SCHEMA, campaign))).match is None
    assert decode_served(encode_envelope(Envelope(4, DOCUMENT_SCHEMA, "v_1"))) == (
        4, None, None, "v_1"
    )
    assert decode_served(encode_envelope(Envelope.tombstone(5))) == (5, None, None, None)
    # Written before objects were stored ready to serve: a msgpack map, encoded on read.
    legacy = msgpack.packb({"v": 6, "s": DOCUMENT_SCHEMA, "d": voucher})
    assert decode_served(legacy) == (6, orjson.dumps(voucher), "SUMMER", None)
    assert decode_envelope(legacy) == Envelope(6, DOCUMENT_SCHEMA, voucher)


@pytest.mark.parametrize(
    "blob",
    [
        msgpack.packb({"v": 1, "s": SERVED_SCHEMA, "d": {"not": "served"}}),
        msgpack.packb({"v": 1, "s": SERVED_SCHEMA, "d": [b"{}", 7]}),
        msgpack.packb({"v": 1, "s": SERVED_SCHEMA, "d": ["{}", None]}),
        msgpack.packb({"v": 1, "s": DOCUMENT_SCHEMA, "d": [1, 2]}),
        msgpack.packb({"v": 1, "s": 41, "d": "x"}),
        b"\xc1",
    ],
)
def test_served_values_refuse_what_the_codec_did_not_write(blob: bytes) -> None:
    with pytest.raises(CacheDecodeError):
        decode_served(blob)
    if blob != b"\xc1" and msgpack.unpackb(blob)["s"] == SERVED_SCHEMA:
        with pytest.raises(CacheDecodeError):
            decode_envelope(blob)


def test_tombstone() -> None:
    tombstone = Envelope.tombstone(7)
    assert tombstone.is_tombstone
    assert msgpack.unpackb(encode_envelope(tombstone)) == {"v": 7, "s": 1, "d": None}
    assert decode_envelope(encode_envelope(tombstone)).is_tombstone


def test_lsn_is_a_version() -> None:
    lsn = Lsn.parse("16/B374D848")
    assert decode_envelope(encode_envelope(Envelope(lsn, 1, "x"))).version == lsn


def test_envelopes_written_by_another_msgpack_writer_are_read() -> None:
    assert decode_envelope(msgpack.packb({"d": [1], "v": 3, "s": 5})) == Envelope(3, 5, [1])


@pytest.mark.parametrize("version", [-1, MAX_VERSION + 1])
def test_versions_outside_64_bits_are_refused(version: int) -> None:
    with pytest.raises(ValueError):
        encode_envelope(Envelope(version, 1, None))


def test_bool_is_not_a_version() -> None:
    with pytest.raises(TypeError):
        encode_envelope(Envelope(True, 1, None))


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"v": 1, "s": 1}),
        msgpack.packb({"v": 1, "s": 1, "x": None}),
        msgpack.packb({"v": -1, "s": 1, "d": None}),
        msgpack.packb({"v": True, "s": 1, "d": None}),
        msgpack.packb({"v": 1.0, "s": 1, "d": None}),
        msgpack.packb({"v": 1, "s": "1", "d": None}),
        msgpack.packb({"v": 1, "s": 1, "d": None, "e": 0}),
        encode_envelope(Envelope(1, 1, "x")) + b"\x00",
        encode_envelope(Envelope(1, 1, "x"))[:-1],
    ],
)
def test_garbage_envelopes_raise_the_project_error(blob: bytes) -> None:
    with pytest.raises(CacheDecodeError):
        decode_envelope(blob)


@given(st.binary())
def test_arbitrary_bytes_decode_or_raise_the_project_error(blob: bytes) -> None:
    for decode in (decode_envelope, decode_invalidation, decode_membership):
        with contextlib.suppress(CacheDecodeError):
            decode(blob)


invalidations = st.builds(
    Invalidation,
    st.lists(st.tuples(st.text(), versions), max_size=20).map(tuple),
    st.none() | versions,
)


@given(invalidations)
def test_invalidation_round_trip(message: Invalidation) -> None:
    assert decode_invalidation(encode_invalidation(message)) == message


@pytest.mark.parametrize(
    "obj",
    [
        [2, [], None],
        [1, ["k"], None],
        [1, ["k", -1], None],
        [1, [1, 1], None],
        [1, [], -5],
        [1, []],
        {"k": 1},
        # One bad entry among good ones: the bulk checks must still find it.
        [1, ["a", 1, "b", True], None],
        [1, ["a", 1, "b", 1.5], None],
        [1, ["a", 1, b"b", 2], None],
        [1, ["a", 1, "b", -2], None],
        [1, ["a", 1, "b", None], None],
    ],
)
def test_garbage_invalidations_raise_the_project_error(obj: object) -> None:
    with pytest.raises(CacheDecodeError):
        decode_invalidation(msgpack.packb(obj))


@given(
    st.builds(
        ApiKeyRecord,
        st.text(),
        st.text(),
        st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
        st.none() | st.integers(min_value=0, max_value=2**31),
        st.booleans(),
    )
)
def test_api_key_record_round_trip(record: ApiKeyRecord) -> None:
    blob = encode_envelope(Envelope(1, 1, api_key_to_data(record)))
    assert api_key_from_data(decode_envelope(blob).data) == record


@pytest.mark.parametrize("data", [None, [], ["a", "p", "h", None], ["a", "p", "h", "10", False]])
def test_garbage_api_key_data_raises_the_project_error(data: object) -> None:
    with pytest.raises(CacheDecodeError):
        api_key_from_data(data)


def test_api_key_record_never_prints_its_hash() -> None:
    record = ApiKeyRecord("app", "p", "ab" * 32, 100, False)
    assert "ab" * 32 not in repr(record)


@given(versions)
def test_watermark_round_trip(lsn: int) -> None:
    blob = encode_watermark(lsn)
    assert len(blob) == 16
    assert decode_watermark(blob) == lsn


@pytest.mark.parametrize("blob", [b"", b"12", b"zzzzzzzzzzzzzzzz", b"00000000000000001"])
def test_garbage_watermark_raises_the_project_error(blob: bytes) -> None:
    with pytest.raises(CacheDecodeError):
        decode_watermark(blob)


# -- segment membership ---------------------------------------------------------------------

segment_ids = st.text(min_size=1, max_size=8)
timestamps = st.integers(min_value=0, max_value=MAX_TIMESTAMP_US)


@given(versions, st.lists(segment_ids, max_size=6))
def test_membership_record_round_trip(base: int, ids: list[str]) -> None:
    blob = encode_membership(base, ids)
    assert decode_membership(blob) == (base, frozenset(ids))
    assert msgpack.unpackb(blob) == [f"{base:016x}", sorted(set(ids))]
    # Never read as an envelope by the scans of envelope headers.
    assert envelope_version(blob[:ENVELOPE_HEADER_SIZE]) is None


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        ["0000000000000001"],
        ["0000000000000001", ["a"], 1],
        ["1", ["a"]],
        ["000000000000000G", ["a"]],
        ["0000000000000001", "a"],
        ["0000000000000001", ["a", 1]],
        ["0000000000000001", ["a", ""]],
        ["0000000000000001", ["a", "a"]],
        {"v": 1, "s": 1, "d": None},
    ],
)
def test_garbage_membership_records_raise_the_project_error(obj: object) -> None:
    with pytest.raises(CacheDecodeError):
        decode_membership(msgpack.packb(obj))


events = st.builds(
    lambda *args: args,
    st.sampled_from(SegmentEventType),
    st.text(max_size=8),
    segment_ids,
    st.sampled_from(EventCause),
    versions,
    timestamps,
)


@given(events, st.integers(min_value=0, max_value=2**48), st.integers(0, 2**20))
def test_segment_event_round_trip(
    event: tuple[SegmentEventType, str, str, EventCause, int, int], ms: int, seq: int
) -> None:
    event_type, customer_id, segment_id, cause, cause_lsn, occurred_at_us = event
    fields = segment_event_fields(*event)
    decoded = decode_segment_event(f"{ms}-{seq}".encode(), fields)
    assert decoded == SegmentEvent(
        cursor=f"{ms}-{seq}",
        id=segment_event_id(cause, cause_lsn, occurred_at_us, event_type, segment_id, customer_id),
        type=event_type,
        customer_id=customer_id,
        segment_id=segment_id,
        cause=cause,
        cause_lsn=cause_lsn,
        occurred_at_us=occurred_at_us,
    )
    assert set(fields) == {b"t", b"c", b"s", b"k", b"l", b"o"}


def test_segment_event_ids_follow_the_cause() -> None:
    entered, left = SegmentEventType.ENTERED, SegmentEventType.LEFT
    change, clock = EventCause.CHANGE, EventCause.CLOCK
    base = segment_event_id(change, 10, 5, entered, "s", "c")
    assert re.fullmatch(r"evt_[0-9a-f]{20}", base)
    assert base == segment_event_id(change, 10, 5, entered, "s", "c")
    # A change is its LSN: a replay with another commit time read is the same event.
    assert base == segment_event_id(change, 10, 6, entered, "s", "c")
    # Ticks share the watermark as LSN: their time tells them apart.
    assert segment_event_id(clock, 10, 5, entered, "s", "c") != segment_event_id(
        clock, 10, 6, entered, "s", "c"
    )
    others = {
        segment_event_id(clock, 10, 5, entered, "s", "c"),
        segment_event_id(change, 11, 5, entered, "s", "c"),
        segment_event_id(change, 10, 5, left, "s", "c"),
        segment_event_id(change, 10, 5, entered, "t", "c"),
        segment_event_id(change, 10, 5, entered, "s", "d"),
        segment_event_id(change, 10, 5, entered, "sc", ""),
        segment_event_id(change, 10, 5, entered, "", "sc"),
    }
    assert base not in others and len(others) == 7


def test_segment_event_id_is_stable_across_releases() -> None:
    # Consumers keep these ids: a change of the derivation would replay every event as new.
    payload = msgpack.packb(["change", 10, None, "customer.segment.entered", "s", "c"])
    expected = "evt_" + hashlib.blake2b(payload, digest_size=10).hexdigest()
    entered = SegmentEventType.ENTERED
    assert segment_event_id(EventCause.CHANGE, 10, 5, entered, "s", "c") == expected


good_fields = segment_event_fields(SegmentEventType.LEFT, "c", "s", EventCause.CLOCK, 1, 2)


@pytest.mark.parametrize(
    ("entry_id", "fields"),
    [
        (b"1-0", {**good_fields, b"t": b"x"}),
        (b"1-0", {**good_fields, b"k": b"change"}),
        (b"1-0", {k: v for k, v in good_fields.items() if k != b"c"}),
        (b"1-0", {**good_fields, b"l": b"-1"}),
        (b"1-0", {**good_fields, b"l": b"18446744073709551616"}),
        (b"1-0", {**good_fields, b"o": b"1.5"}),
        (b"1-0", {**good_fields, b"o": b"01"}),
        (b"1-0", {**good_fields, b"s": b"\xff"}),
        (b"1", good_fields),
        (b"a-b", good_fields),
        (b"1-0", None),
    ],
)
def test_garbage_segment_events_raise_the_project_error(entry_id: bytes, fields: Any) -> None:
    with pytest.raises(CacheDecodeError):
        decode_segment_event(entry_id, fields)


def test_stream_cursors() -> None:
    assert is_stream_cursor("1700000000000-0")
    assert not is_stream_cursor("1700000000000")
    assert not is_stream_cursor("(1-0")
    assert not is_stream_cursor("1-0 ")


@given(st.text(), segment_ids, versions, timestamps)
def test_segment_job_round_trip(
    project_id: str, segment_id: str, version: int, occurred_at_us: int
) -> None:
    job = SegmentJob(project_id, segment_id, version, occurred_at_us)
    field = segment_job_field(project_id, segment_id)
    value = segment_job_value(job)
    assert value[:16] == version_hex(version).encode()
    assert decode_segment_job(field, value) == job


def test_segment_job_fields_are_one_per_project_and_segment() -> None:
    assert segment_job_field("a:b", "c") != segment_job_field("a", "b:c")
    assert segment_job_field("p", "s") == segment_job_field("p", "s")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (msgpack.packb(["p"]), b"0000000000000001:0"),
        (msgpack.packb(["p", 1]), b"0000000000000001:0"),
        (b"\xc1", b"0000000000000001:0"),
        (msgpack.packb(["p", "s"]), b"0000000000000001"),
        (msgpack.packb(["p", "s"]), b"1:0"),
        (msgpack.packb(["p", "s"]), b"0000000000000001:x"),
        (msgpack.packb(["p", "s"]), b"\xff"),
    ],
)
def test_garbage_segment_jobs_raise_the_project_error(field: bytes, value: bytes) -> None:
    with pytest.raises(CacheDecodeError):
        decode_segment_job(field, value)


def _update(**changes: Any) -> MembershipUpdate:
    update = MembershipUpdate("p", "c1", 0x10, MembershipMode.REPLACE, ("b", "a", "b"))
    return dataclasses.replace(update, **{"cause_lsn": 7, "occurred_at_us": 9, **changes})


def test_membership_update_args() -> None:
    head = ["0000000000000010", "1", "c", "7", "9", "c1"]
    assert membership_update_args(_update()) == ["r", *head, "2", "a", "b"]
    silent_tick = _update(emit=False, cause=EventCause.CLOCK, segment_ids=())
    assert membership_update_args(silent_tick)[2:4] == ["0", "t"]
    assert membership_update_args(silent_tick)[7:] == ["0"]
    one = _update(mode=MembershipMode.SET_ONE, segment_ids=(), segment_id="s", member=True)
    assert membership_update_args(one) == ["s", *head, "1", "s"]


@pytest.mark.parametrize(
    "changes",
    [
        {"version": -1},
        {"version": MAX_VERSION + 1},
        {"cause_lsn": MAX_VERSION + 1},
        {"occurred_at_us": -1},
        {"segment_ids": ("a", "")},
        {"segment_id": "a"},
        {"member": True},
        {"mode": "sometimes"},
        {"mode": MembershipMode.SET_ONE},
        {"mode": MembershipMode.SET_ONE, "segment_ids": (), "segment_id": ""},
    ],
)
def test_updates_that_cannot_apply_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        membership_update_args(_update(**changes))


def test_update_fields_of_the_wrong_type_are_refused() -> None:
    for changes in ({"version": True}, {"segment_ids": "ab"}, {"customer_id": 1}):
        with pytest.raises(TypeError):
            membership_update_args(_update(**changes))
