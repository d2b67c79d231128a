"""Index settings and explicit mappings, one per document kind.

``doc`` holds the API object exactly as served and is stored, not indexed; everything that
lists, filters or search need is a flat field with a fixed type. ``dynamic: false`` keeps
the mapping closed: tenant metadata only ever reaches the index as ``metadata_kv`` pairs.
"""

from __future__ import annotations

from typing import Any

from cache.types import ObjectKind

KEYWORD = {"type": "keyword"}
DATE = {"type": "date"}
LONG = {"type": "long"}

# Typed key/value pairs: one value field per kind, so comparisons stay typed while the
# mapping never grows with the keys tenants invent.
METADATA_KV = {
    "type": "nested",
    "properties": {
        "k": KEYWORD,
        "s": {"type": "keyword", "ignore_above": 256},
        "n": {"type": "double"},
        "d": {"type": "date", "ignore_malformed": True},
        "b": {"type": "boolean"},
    },
}

_COMMON = {
    "id": KEYWORD,
    "project_id": KEYWORD,
    "doc": {"type": "object", "enabled": False},
    "created_at": DATE,
}

_FIELDS: dict[ObjectKind, dict[str, Any]] = {
    ObjectKind.VOUCHER: {
        "code": KEYWORD,
        "code_lower": KEYWORD,
        "campaign_id": KEYWORD,
        "holder_id": KEYWORD,
        "type": KEYWORD,
        "active": {"type": "boolean"},
        "created_at_us": LONG,
        "metadata_kv": METADATA_KV,
        "search_text": {"type": "text", "analyzer": "standard"},
    },
    ObjectKind.CUSTOMER: {
        "source_id": KEYWORD,
        "email_lower": KEYWORD,
        "created_at_us": LONG,
        "segment_ids": KEYWORD,
        "metadata_kv": METADATA_KV,
        "search_text": {"type": "text", "analyzer": "standard"},
    },
    ObjectKind.CAMPAIGN: {"type": KEYWORD},
    ObjectKind.SEGMENT: {"type": KEYWORD, "name": KEYWORD},
}


def index_mappings(kind: ObjectKind) -> dict[str, Any]:
    return {"dynamic": False, "properties": {**_COMMON, **_FIELDS[kind]}}


def index_settings(refresh_interval: str) -> dict[str, Any]:
    return {
        "number_of_shards": 1,
        "number_of_replicas": 0,
        "refresh_interval": refresh_interval,
        # A delete keeps its external version this long; a replayed older write arriving
        # later is still refused instead of bringing the document back.
        "gc_deletes": "12h",
    }
