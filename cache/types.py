"""Value types shared by the indexer and the read API: WAL positions and the contract enums.

Pure values only: no I/O and no imports from the rest of the project, so that every package
can depend on this module without reaching back upstream.
"""

from __future__ import annotations

import enum
import re
from typing import ClassVar

_LSN_TEXT = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_MAX_LSN = (1 << 64) - 1


class Lsn(int):
    """A WAL position (Postgres ``pg_lsn``): an unsigned 64-bit integer.

    An ``int`` subclass, so ordering, hashing and use as an Elasticsearch version cost
    nothing; arithmetic on it yields plain ``int`` (a byte distance, not a position).
    ``str()`` gives the text form exactly as Postgres prints it: ``16/B374D848``.
    """

    __slots__ = ()

    ZERO: ClassVar[Lsn]

    def __new__(cls, value: int = 0) -> Lsn:
        if not 0 <= value <= _MAX_LSN:
            raise ValueError(f"LSN out of range: {value}")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Read the ``X/Y`` text form (1 to 8 hex digits each side, as ``pg_lsn`` accepts)."""
        match = _LSN_TEXT.fullmatch(text)
        if match is None:
            raise ValueError(f"invalid LSN text: {text!r}")
        return cls((int(match.group(1), 16) << 32) | int(match.group(2), 16))

    def __str__(self) -> str:
        value = int(self)
        return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"


Lsn.ZERO = Lsn(0)


class ObjectKind(enum.StrEnum):
    """The kinds of documents the read path serves."""

    VOUCHER = "voucher"
    CUSTOMER = "customer"
    CAMPAIGN = "campaign"
    SEGMENT = "segment"


class VoucherType(enum.StrEnum):
    DISCOUNT_VOUCHER = "DISCOUNT_VOUCHER"
    GIFT_VOUCHER = "GIFT_VOUCHER"
    LOYALTY_CARD = "LOYALTY_CARD"


class CampaignType(enum.StrEnum):
    DISCOUNT_COUPONS = "DISCOUNT_COUPONS"
    GIFT_VOUCHERS = "GIFT_VOUCHERS"
    LOYALTY_PROGRAM = "LOYALTY_PROGRAM"


class SegmentType(enum.StrEnum):
    STATIC = "static"
    AUTO_UPDATE = "auto-update"


class RedemptionResult(enum.StrEnum):
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
