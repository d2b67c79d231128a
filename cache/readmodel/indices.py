"""Elasticsearch side of the read model: index names, field names, mappings and settings.

One index per kind behind an alias that readers use: ``<prefix><kind>s`` (``loyalty_vouchers``),
concrete generations ``<prefix><kind>s_v<N>``. A document's ``_source`` is
``{"id", "project_id", "doc": <the API object exactly as served>, <indexed fields>}``; ``doc``
is stored, not indexed. Everything that lists, filters or search need is a field with a
fixed type named in ``Field``; ``dynamic: false`` keeps the mapping closed, so tenant metadata
only ever reaches the index as values of fixed fields (``search_text`` and, for customers, the
``filter_view`` terms segment filters query). ``filter_view`` is indexed and
kept in ``_source`` (see ``index_mappings``); readers ask for ``doc`` and never see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from cache.readmodel.documents import INDEXED_KINDS
from cache.types import ObjectKind


class Field:
    """Names of the fields of a document's ``_source`` (plain strings: they are JSON keys)."""

    ID: Final = "id"
    PROJECT_ID: Final = "project_id"
    DOC: Final = "doc"
    CREATED_AT: Final = "created_at"
    # Exact sort key: Elasticsearch dates keep milliseconds, Postgres keeps microseconds.
    CREATED_AT_US: Final = "created_at_us"
    TYPE: Final = "type"
    NAME: Final = "name"
    CODE: Final = "code"
    CODE_LOWER: Final = "code_lower"
    CAMPAIGN_ID: Final = "campaign_id"
    HOLDER_ID: Final = "holder_id"
    ACTIVE: Final = "active"
    SOURCE_ID: Final = "source_id"
    EMAIL_LOWER: Final = "email_lower"
    SEGMENT_IDS: Final = "segment_ids"
    SEARCH_TEXT: Final = "search_text"
    # Customers: the leaves segment filters compare (``indexer.segment_view``), indexed and
    # kept in ``_source`` for the segment recompute's rewrites.
    FILTER_VIEW: Final = "filter_view"


class ViewLeaf:
    """Sub-fields of ``filter_view``, all keyword terms (``indexer.segment_view.view_terms``):
    the dotted paths, and ``<path>NUL<value>`` for each typed value."""

    P: Final = "p"  # the path
    S: Final = "s"  # a string of at most 512 characters
    N: Final = "n"  # a number, for equality (order-preserving hexadecimal)
    O: Final = "o"  # noqa: E741  # a number or numeric string, for ordering (likewise)
    T: Final = "t"  # an instant in epoch microseconds (likewise)
    B: Final = "b"  # a boolean ("true" or "false")


@dataclass(frozen=True, slots=True)
class IndexNames:
    """Alias and generation names under one configured prefix; tests use a unique prefix."""

    prefix: str

    def alias(self, kind: str) -> str:
        """The alias readers use for one kind (``kind``: an ``ObjectKind``)."""
        return f"{self.prefix}{kind}s"

    def aliases(self) -> list[str]:
        return [self.alias(kind) for kind in INDEXED_KINDS]

    def generation(self, kind: str, generation: int) -> str:
        """The concrete index of one generation of a kind."""
        return f"{self.alias(kind)}_v{generation}"

    def generations_pattern(self, kind: str) -> str:
        """Matches every generation of a kind, and nothing of another kind or prefix."""
        return f"{self.alias(kind)}_v*"


def search_source(
    object_id: str, project_id: str, body: dict[str, Any], fields: dict[str, Any]
) -> dict[str, Any]:
    """The ``_source`` of a document: the API object under ``doc`` beside its indexed fields."""
    return {Field.ID: object_id, Field.PROJECT_ID: project_id, Field.DOC: body, **fields}


KEYWORD = {"type": "keyword"}
DATE = {"type": "date"}
LONG = {"type": "long"}

# A customer's filter view as keyword terms on the document itself, so segment filters run as
# queries while the mapping stays fixed. No ignore_above: a term is a path and a value of at
# most 512 characters each, far below the longest term a keyword may index. No doc values:
# nothing sorts or aggregates on them.
_VIEW_TERMS = {"type": "keyword", "doc_values": False}
FILTER_VIEW = {
    "properties": {
        name: _VIEW_TERMS
        for name in (ViewLeaf.P, ViewLeaf.S, ViewLeaf.N, ViewLeaf.O, ViewLeaf.T, ViewLeaf.B)
    },
}

_COMMON = {
    Field.ID: KEYWORD,
    Field.PROJECT_ID: KEYWORD,
    Field.DOC: {"type": "object", "enabled": False},
    Field.CREATED_AT: DATE,
}

_FIELDS: dict[ObjectKind, dict[str, Any]] = {
    ObjectKind.VOUCHER: {
        Field.CODE: KEYWORD,
        Field.CODE_LOWER: KEYWORD,
        Field.CAMPAIGN_ID: KEYWORD,
        Field.HOLDER_ID: KEYWORD,
        Field.TYPE: KEYWORD,
        Field.ACTIVE: {"type": "boolean"},
        Field.CREATED_AT_US: LONG,
        Field.SEARCH_TEXT: {"type": "text", "analyzer": "standard"},
    },
    ObjectKind.CUSTOMER: {
        Field.SOURCE_ID: KEYWORD,
        Field.EMAIL_LOWER: KEYWORD,
        Field.CREATED_AT_US: LONG,
        Field.SEGMENT_IDS: KEYWORD,
        Field.SEARCH_TEXT: {"type": "text", "analyzer": "standard"},
        Field.FILTER_VIEW: FILTER_VIEW,
    },
    ObjectKind.CAMPAIGN: {Field.TYPE: KEYWORD},
    ObjectKind.SEGMENT: {Field.TYPE: KEYWORD, Field.NAME: KEYWORD},
}


# Raised whenever ``index_mappings`` changes (2: the customers' filter view, nested; 3: the
# filter view as terms of the customer document, and no ``metadata_kv``: typed metadata
# pairs as nested entries, which no query read and which cost a Lucene document per value).
# Indices written under another version are loaded again from the source at start-up: core
# Elasticsearch has no ``_reindex``, and a field missing from the mapping would make queries
# on it silently match nothing.
MAPPING_VERSION: Final = 3


def index_mappings(kind: ObjectKind) -> dict[str, Any]:
    # The customers' filter view is kept in ``_source`` although it is a pure function of
    # ``doc``: a segment recompute rewrites a third of a project's documents with another
    # ``segment_ids``, and copying the view costs nothing where computing it again was most of
    # the recompute's own time. Readers ask for the fields they serve (``doc``), not for it.
    return {"dynamic": False, "properties": {**_COMMON, **_FIELDS[kind]}}


def index_settings(refresh_interval: str, *, shards: int = 1, replicas: int = 0) -> dict[str, Any]:
    return {
        "number_of_shards": shards,
        "number_of_replicas": replicas,
        "refresh_interval": refresh_interval,
        # A delete keeps its external version this long; a replayed older write arriving
        # later is still refused instead of bringing the document back.
        "gc_deletes": "12h",
    }
