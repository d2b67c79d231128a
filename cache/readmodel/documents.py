"""What a served document is: kinds, the document schema number, and the aliases by which a
document is also found (a voucher's code, a customer's source_id).

The indexer stamps ``DOCUMENT_SCHEMA`` on every object envelope it writes to Redis and the
read API serves only envelopes of that schema; a change of the object's shape bumps it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from cache.types import ObjectKind

# Schema of the object envelopes' data: the API object (docs/api.md §3) as a msgpack map.
# Aliases carry it too, with the target id as data, and so do tombstones.
DOCUMENT_SCHEMA = 1
# How an API object is stored since: ``[JSON bytes, match]``, the response body ready to
# write and its code or source_id (``match``), so that a lookup answers without decoding and
# re-encoding the object. The codec writes every object given as ``DOCUMENT_SCHEMA`` this way
# and reads either back (``cache.readmodel.codec``).
SERVED_SCHEMA = 2

# The kinds that have an index and Redis envelopes (every ``ObjectKind``), in load order.
INDEXED_KINDS: tuple[ObjectKind, ...] = (
    ObjectKind.VOUCHER,
    ObjectKind.CUSTOMER,
    ObjectKind.CAMPAIGN,
    ObjectKind.SEGMENT,
)


class AliasKind(enum.StrEnum):
    """Secondary identifiers that resolve to an object id within a project."""

    VOUCHER_CODE = "voucher_code"
    CUSTOMER_SOURCE_ID = "customer_source_id"


@dataclass(frozen=True, slots=True)
class AliasSpec:
    """An alias kind, the kind of object it names, the API object field it holds and the
    indexed keyword field (``indices.Field``) that holds the same value."""

    alias: AliasKind
    kind: ObjectKind
    field: str
    search_field: str


VOUCHER_CODE = AliasSpec(AliasKind.VOUCHER_CODE, ObjectKind.VOUCHER, "code", "code")
CUSTOMER_SOURCE_ID = AliasSpec(
    AliasKind.CUSTOMER_SOURCE_ID, ObjectKind.CUSTOMER, "source_id", "source_id"
)

ALIAS_OF_KIND: dict[ObjectKind, AliasSpec] = {
    VOUCHER_CODE.kind: VOUCHER_CODE,
    CUSTOMER_SOURCE_ID.kind: CUSTOMER_SOURCE_ID,
}
ALIAS_SPECS: dict[AliasKind, AliasSpec] = {
    VOUCHER_CODE.alias: VOUCHER_CODE,
    CUSTOMER_SOURCE_ID.alias: CUSTOMER_SOURCE_ID,
}

# The API object's ``object`` field -> the field an alias of its kind names (the ``match`` a
# lookup through an alias checks): ``{"object": "voucher", "code": ...}`` -> "code".
MATCH_FIELD_OF_OBJECT: dict[str, str] = {
    str(spec.kind): spec.field for spec in ALIAS_OF_KIND.values()
}


def match_of(body: dict[str, Any]) -> str | None:
    """The code or source_id of an API object, ``None`` for other kinds or when unset."""
    kind = body.get("object")
    field = MATCH_FIELD_OF_OBJECT.get(kind) if isinstance(kind, str) else None
    value = None if field is None else body.get(field)
    return value if isinstance(value, str) else None
