"""Signed pagination cursors: round trips, tampering, list binding, arbitrary input."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from readapi.cursor import (
    CURSOR_VERSION,
    MAX_CURSOR_LENGTH,
    MAX_ID_BYTES,
    InvalidCursor,
    SortKey,
    decode_cursor,
    encode_cursor,
)

SECRET = "test-cursor-secret"
SCOPE = '{"kind":"vouchers","project_id":"proj_1"}'
LONG_MIN = -(1 << 63)
LONG_MAX = (1 << 63) - 1

sort_keys = st.builds(
    SortKey,
    created_at_us=st.integers(min_value=LONG_MIN, max_value=LONG_MAX),
    id=st.text(min_size=1, max_size=MAX_ID_BYTES // 4),
)


def _raw(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def test_round_trip() -> None:
    key = SortKey(1_714_557_600_123_456, "v_0001")
    text = encode_cursor(key, SECRET, scope=SCOPE)
    assert decode_cursor(text, SECRET, scope=SCOPE) == key
    assert set(text) <= set(string.ascii_letters + string.digits + "-_")
    assert len(text) < 64


@given(sort_keys, st.text(max_size=300))
def test_round_trip_any_key_and_scope(key: SortKey, scope: str) -> None:
    text = encode_cursor(key, SECRET, scope=scope)
    assert len(text) <= MAX_CURSOR_LENGTH
    assert decode_cursor(text, SECRET, scope=scope) == key


def test_bytes_and_text_secrets_agree() -> None:
    key = SortKey(5, "a")
    text = encode_cursor(key, SECRET.encode(), scope=SCOPE)
    assert decode_cursor(text, SECRET, scope=SCOPE) == key


def test_longest_id_fits_the_length_bound() -> None:
    key = SortKey(LONG_MIN, "é" * (MAX_ID_BYTES // 2))
    text = encode_cursor(key, SECRET, scope=SCOPE)
    assert len(text) == MAX_CURSOR_LENGTH
    assert decode_cursor(text, SECRET, scope=SCOPE) == key


def test_search_after_values() -> None:
    key = SortKey(42, "c_9")
    assert key.search_after() == [42, "c_9"]
    assert SortKey.from_sort_values([42, "c_9"]) == key


@pytest.mark.parametrize(
    "values", [None, "ab", [1], [1, "a", 2], ["1", "a"], [1, 2], [True, "a"], [1.5, "a"]]
)
def test_sort_values_of_wrong_shape_are_refused(values: object) -> None:
    with pytest.raises(ValueError):
        SortKey.from_sort_values(values)


def test_every_altered_character_is_refused() -> None:
    text = encode_cursor(SortKey(1_700_000_000_000_000, "cust_42"), SECRET, scope=SCOPE)
    alphabet = string.ascii_letters + string.digits + "-_"
    for index, char in enumerate(text):
        for replacement in {alphabet[(alphabet.index(char) + 1) % 64], "A", "_"} - {char}:
            altered = text[:index] + replacement + text[index + 1 :]
            with pytest.raises(InvalidCursor):
                decode_cursor(altered, SECRET, scope=SCOPE)


def test_every_altered_byte_is_refused() -> None:
    raw = _raw(encode_cursor(SortKey(1_700_000_000_000_000, "cust_42"), SECRET, scope=SCOPE))
    for index in range(len(raw)):
        for flip in (0x01, 0x80, 0xFF):
            altered = bytearray(raw)
            altered[index] ^= flip
            with pytest.raises(InvalidCursor):
                decode_cursor(_text(bytes(altered)), SECRET, scope=SCOPE)


def test_truncated_and_extended_cursors_are_refused() -> None:
    text = encode_cursor(SortKey(7, "voucher_7"), SECRET, scope=SCOPE)
    for end in range(len(text)):
        with pytest.raises(InvalidCursor):
            decode_cursor(text[:end], SECRET, scope=SCOPE)
    for suffix in ("A", "AA", "AAAA", "x" * 50):
        with pytest.raises(InvalidCursor):
            decode_cursor(text + suffix, SECRET, scope=SCOPE)


def test_other_secret_is_refused() -> None:
    text = encode_cursor(SortKey(7, "v"), SECRET, scope=SCOPE)
    with pytest.raises(InvalidCursor, match="signature"):
        decode_cursor(text, "another-secret", scope=SCOPE)


def test_cursor_of_another_list_is_refused() -> None:
    text = encode_cursor(SortKey(7, "v"), SECRET, scope=SCOPE)
    with pytest.raises(InvalidCursor, match="another list"):
        decode_cursor(text, SECRET, scope=SCOPE + " ")


def test_unknown_version_is_refused_even_when_signed() -> None:
    raw = _raw(encode_cursor(SortKey(7, "v"), SECRET, scope=SCOPE))
    signed = bytes([CURSOR_VERSION + 1]) + raw[1:-16]
    resigned = signed + hmac.new(SECRET.encode(), signed, hashlib.sha256).digest()[:16]
    with pytest.raises(InvalidCursor, match="version"):
        decode_cursor(_text(resigned), SECRET, scope=SCOPE)


def test_signed_id_that_is_not_utf8_is_refused() -> None:
    raw = _raw(encode_cursor(SortKey(7, "v"), SECRET, scope=SCOPE))
    signed = raw[:-17] + b"\xff"
    resigned = signed + hmac.new(SECRET.encode(), signed, hashlib.sha256).digest()[:16]
    with pytest.raises(InvalidCursor, match="UTF-8"):
        decode_cursor(_text(resigned), SECRET, scope=SCOPE)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("a" * (MAX_CURSOR_LENGTH + 1), "too long"),
        ("abc+/def", "URL-safe base64"),
        ("abc=", "URL-safe base64"),
        ("ab cd", "URL-safe base64"),
        ("é", "URL-safe base64"),
        ("A", "base64"),
        ("AAAA", "truncated"),
        ("AB", "canonical"),
    ],
)
def test_malformed_text_is_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(InvalidCursor, match=message):
        decode_cursor(text, SECRET, scope=SCOPE)


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(b"abc", SECRET, scope=SCOPE)  # type: ignore[arg-type]


def test_encode_refuses_keys_the_format_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode_cursor(SortKey(LONG_MAX + 1, "v"), SECRET, scope=SCOPE)
    with pytest.raises(ValueError):
        encode_cursor(SortKey(1, ""), SECRET, scope=SCOPE)
    with pytest.raises(ValueError):
        encode_cursor(SortKey(1, "x" * (MAX_ID_BYTES + 1)), SECRET, scope=SCOPE)


def test_empty_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        encode_cursor(SortKey(1, "v"), "", scope=SCOPE)
    with pytest.raises(ValueError):
        decode_cursor("abc", b"", scope=SCOPE)


@given(st.text(max_size=2000))
def test_arbitrary_text_only_ever_raises_invalid_cursor(text: str) -> None:
    with contextlib.suppress(InvalidCursor):
        decode_cursor(text, SECRET, scope=SCOPE)


@given(st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=MAX_CURSOR_LENGTH))
def test_arbitrary_base64_text_only_ever_raises_invalid_cursor(text: str) -> None:
    with contextlib.suppress(InvalidCursor):
        decode_cursor(text, SECRET, scope=SCOPE)


@given(st.binary(max_size=MAX_ID_BYTES + 64))
def test_arbitrary_bytes_only_ever_raise_invalid_cursor(raw: bytes) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(_text(raw), SECRET, scope=SCOPE)


# -- several secrets (LOYALTY_CURSOR_SECRET="newest,older,..."): the first signs, all verify ---


def test_the_first_of_several_secrets_signs() -> None:
    key = SortKey(11, "v_11")
    text = encode_cursor(key, "new-secret,old-secret", scope=SCOPE)
    assert decode_cursor(text, "new-secret", scope=SCOPE) == key
    with pytest.raises(InvalidCursor, match="signature"):
        decode_cursor(text, "old-secret", scope=SCOPE)


def test_every_one_of_several_secrets_verifies() -> None:
    key = SortKey(12, "v_12")
    issued_before_rotation = encode_cursor(key, "old-secret", scope=SCOPE)
    assert decode_cursor(issued_before_rotation, "new-secret,old-secret", scope=SCOPE) == key
    assert decode_cursor(issued_before_rotation, b"new-secret,old-secret", scope=SCOPE) == key
    # Once the old secret is dropped from the list, its cursors are refused.
    with pytest.raises(InvalidCursor, match="signature"):
        decode_cursor(issued_before_rotation, "newer-secret,new-secret", scope=SCOPE)


def test_a_cursor_of_another_list_is_refused_under_any_secret() -> None:
    text = encode_cursor(SortKey(7, "v"), "old-secret", scope=SCOPE)
    with pytest.raises(InvalidCursor, match="another list"):
        decode_cursor(text, "new-secret,old-secret", scope=SCOPE + " ")


@pytest.mark.parametrize("secrets", [",", "a,", ",a", "a,,b", b"a,,b"])
def test_an_empty_secret_in_the_list_is_a_configuration_error(secrets: str | bytes) -> None:
    with pytest.raises(ValueError) as info:
        decode_cursor("abc", secrets, scope=SCOPE)
    assert not isinstance(info.value, InvalidCursor)
    with pytest.raises(ValueError):
        encode_cursor(SortKey(1, "v"), secrets, scope=SCOPE)
