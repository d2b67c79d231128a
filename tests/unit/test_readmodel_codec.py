"""Codec: round trips, the fixed header the Lua scripts read, and garbage refused cleanly."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache.errors import CacheDecodeError
from cache.readmodel.codec import (
    ENVELOPE_HEAD,
    api_key_from_data,
    api_key_to_data,
    decode_envelope,
    decode_invalidation,
    decode_watermark,
    encode_envelope,
    encode_invalidation,
    encode_watermark,
)
from cache.records import MAX_VERSION, ApiKeyRecord, Envelope, Invalidation
from cache.types import Lsn

versions = st.integers(min_value=0, max_value=MAX_VERSION)
json_like: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=MAX_VERSION)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
envelopes = st.builds(
    Envelope, versions, st.integers(min_value=0, max_value=1000), json_like | st.binary()
)


@given(envelopes)
def test_envelope_round_trip(envelope: Envelope) -> None:
    assert decode_envelope(encode_envelope(envelope)) == envelope


@given(envelopes)
def test_envelope_is_a_plain_msgpack_map_with_a_fixed_header(envelope: Envelope) -> None:
    blob = encode_envelope(envelope)
    assert blob[:4] == ENVELOPE_HEAD
    assert int.from_bytes(blob[4:12], "big") == envelope.version
    expected = {"v": envelope.version, "s": envelope.schema, "d": envelope.data}
    assert msgpack.unpackb(blob) == expected


def test_tombstone() -> None:
    tombstone = Envelope.tombstone(7)
    assert tombstone.is_tombstone
    assert msgpack.unpackb(encode_envelope(tombstone)) == {"v": 7, "s": 1, "d": None}
    assert decode_envelope(encode_envelope(tombstone)).is_tombstone


def test_lsn_is_a_version() -> None:
    lsn = Lsn.parse("16/B374D848")
    assert decode_envelope(encode_envelope(Envelope(lsn, 1, "x"))).version == lsn


def test_envelopes_written_by_another_msgpack_writer_are_read() -> None:
    assert decode_envelope(msgpack.packb({"d": [1], "v": 3, "s": 2})) == Envelope(3, 2, [1])


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
    for decode in (decode_envelope, decode_invalidation):
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
