"""Unit tests of ``cache/types.py``: the ``Lsn`` value type and the contract enums."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache.types import (
    CampaignType,
    Lsn,
    ObjectKind,
    RedemptionResult,
    SegmentType,
    VoucherType,
)

POSTGRES_TEXT = re.compile(r"(0|[1-9A-F][0-9A-F]{0,7})/(0|[1-9A-F][0-9A-F]{0,7})")
positions = st.integers(0, 2**64 - 1)


@given(positions)
def test_text_form_round_trips_and_is_postgres_shaped(value: int) -> None:
    text = str(Lsn(value))
    assert POSTGRES_TEXT.fullmatch(text)
    assert Lsn.parse(text) == value
    assert Lsn.parse(text.lower()) == value


@given(positions, positions)
def test_ordering_follows_the_integer(a: int, b: int) -> None:
    assert (Lsn(a) < Lsn(b)) == (a < b)
    assert (Lsn(a) == Lsn(b)) == (a == b)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.data())
def test_leading_zeros_are_accepted_and_dropped(high: int, low: int, data: st.DataObject) -> None:
    high_width = data.draw(st.integers(len(f"{high:X}"), 8))
    low_width = data.draw(st.integers(len(f"{low:X}"), 8))
    padded = f"{high:0{high_width}x}/{low:0{low_width}X}"
    assert str(Lsn.parse(padded)) == f"{high:X}/{low:X}"


def test_known_values() -> None:
    assert str(Lsn.parse("16/B374D848")) == "16/B374D848"
    assert Lsn.parse("16/B374D848") == 0x16_B374D848
    assert str(Lsn.parse("00000000/01A2B3C8")) == "0/1A2B3C8"
    assert str(Lsn(2**64 - 1)) == "FFFFFFFF/FFFFFFFF"
    assert Lsn.parse("0/FFFFFFFF") < Lsn.parse("1/0")
    assert Lsn.ZERO == 0 and str(Lsn.ZERO) == "0/0" and isinstance(Lsn.ZERO, Lsn)
    assert repr(Lsn.parse("0/16B3748")) == "Lsn('0/16B3748')"
    assert hash(Lsn(5)) == hash(5) and 5 in {Lsn(5)}
    assert max(Lsn(3), Lsn(9)) == Lsn(9)
    assert type(Lsn(9) - Lsn(3)) is int


@pytest.mark.parametrize(
    "text",
    ["", "1", "1/", "/1", "G/1", "123456789/0", "0/123456789", " 1/2", "1/2 ", "+1/2",
     "1_0/2", "1/2/3", "0x1/2", "\uff11/2"],
)
def test_malformed_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Lsn.parse(text)


@pytest.mark.parametrize("value", [-1, 2**64])
def test_out_of_range_is_refused(value: int) -> None:
    with pytest.raises(ValueError):
        Lsn(value)


def test_enums_hold_the_contract_values() -> None:
    assert [k.value for k in ObjectKind] == ["voucher", "customer", "campaign", "segment"]
    assert [t.value for t in VoucherType] == ["DISCOUNT_VOUCHER", "GIFT_VOUCHER", "LOYALTY_CARD"]
    assert [t.value for t in CampaignType] == [
        "DISCOUNT_COUPONS", "GIFT_VOUCHERS", "LOYALTY_PROGRAM"]
    assert [t.value for t in SegmentType] == ["static", "auto-update"]
    assert [r.value for r in RedemptionResult] == ["SUCCESS", "FAILURE"]
    # str enums compare equal to the column text and serialize as it.
    assert SegmentType("auto-update") == "auto-update" and f"{ObjectKind.VOUCHER}" == "voucher"
