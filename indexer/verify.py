"""Verification: compare every object the source holds with both sinks, field by field.

Expected documents are rebuilt from the source exactly as the indexer builds them; then
every Elasticsearch document and every Redis envelope, alias and API key record must equal
them, and nothing the source no longer holds may be live in either sink.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from cache.codec import api_key_from_data, decode_envelope
from cache.errors import CacheDecodeError
from cache.keys import AliasKind
from cache.types import ObjectKind
from indexer.changes import TouchedObjects
from indexer.documents import Document
from indexer.rebuild import Rebuilder
from indexer.sinks.elastic import INDEXED_KINDS, ElasticSink
from indexer.sinks.redis import RedisSink
from indexer.source import DocumentSource

MAX_REPORTED = 50


@dataclass
class VerifyReport:
    checked: dict[str, int] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)
    difference_count: int = 0

    def differ(self, text: str) -> None:
        self.difference_count += 1
        if len(self.differences) < MAX_REPORTED:
            self.differences.append(text)

    @property
    def ok(self) -> bool:
        return self.difference_count == 0


async def verify(
    conn: psycopg.AsyncConnection[Any], search: ElasticSink, cache: RedisSink
) -> VerifyReport:
    """Compare the source (read on ``conn``) with both sinks; call once they caught up."""
    report = VerifyReport()
    source = DocumentSource(conn)
    rebuilder = Rebuilder(source)
    store = cache.store
    layout = store.layout
    await search.refresh()
    expected_by_kind: dict[ObjectKind, dict[str, Document]] = {kind: {} for kind in INDEXED_KINDS}
    for document in await _expected_documents(rebuilder, source):
        expected_by_kind[document.kind][document.object_id] = document
    for kind, expected in expected_by_kind.items():
        report.checked[kind.value] = len(expected)
        seen: set[str] = set()
        async for hit in search.scan(kind):
            object_id = hit["_id"]
            seen.add(object_id)
            wanted = expected.get(object_id)
            if wanted is None:
                report.differ(f"{kind.value} {object_id}: in elasticsearch, not in the source")
                continue
            source_doc = hit["_source"]
            if source_doc.get("doc") != wanted.body:
                report.differ(
                    f"{kind.value} {object_id}: elasticsearch body differs: "
                    f"{source_doc.get('doc')} != {wanted.body}"
                )
            for name, value in wanted.fields.items():
                if source_doc.get(name) != value:
                    report.differ(f"{kind.value} {object_id}: elasticsearch field {name} differs")
        for object_id in expected.keys() - seen:
            report.differ(f"{kind.value} {object_id}: missing from elasticsearch")
        for object_id, document in expected.items():
            key = layout.object_key(document.project_id, kind, object_id)
            envelope = await store.get(key)
            if envelope is None or envelope.is_tombstone or envelope.data != document.body:
                report.differ(f"{kind.value} {object_id}: redis differs: {envelope}")
        await _verify_aliases(store, kind, expected, report)
    live_keys = {
        layout.object_key(d.project_id, d.kind, d.object_id)
        for expected in expected_by_kind.values()
        for d in expected.values()
    }
    await _verify_redis_has_no_extra(store, report, live_keys)
    await _verify_api_keys(conn, cache, report)
    return report


async def _expected_documents(rebuilder: Rebuilder, source: DocumentSource) -> list[Document]:
    touched = TouchedObjects()
    for kind in INDEXED_KINDS:
        async for ids in source.primary_key_chunks(source.primary_keys_query(kind), 5000):
            for object_id in ids:
                touched.mark(kind, object_id, None, 0)
    out: list[Document] = []
    async for chunk in rebuilder.writes(touched):
        out.extend(document for document, _version in chunk.documents)
    return out


async def _verify_aliases(
    store: Any, kind: ObjectKind, expected: dict[str, Any], report: VerifyReport
) -> None:
    alias = {
        ObjectKind.VOUCHER: (AliasKind.VOUCHER_CODE, "code"),
        ObjectKind.CUSTOMER: (AliasKind.CUSTOMER_SOURCE_ID, "source_id"),
    }.get(kind)
    if alias is None:
        return
    alias_kind, field_name = alias
    for object_id, document in expected.items():
        value = document.body.get(field_name)
        if value is None:
            continue
        envelope = await store.resolve_alias(document.project_id, alias_kind, str(value))
        if envelope is None or envelope.data != object_id:
            report.differ(f"{kind.value} {object_id}: alias {field_name}={value} -> {envelope}")


async def _verify_redis_has_no_extra(
    store: Any, report: VerifyReport, expected_keys: set[str]
) -> None:
    """No live object envelope in Redis for an object the source no longer holds."""
    layout = store.layout
    # An object key with an empty id ends with its kind's marker, e.g. ``:v:``.
    object_markers = tuple(
        layout.object_key("p", kind, "").split("}", 1)[1] for kind in INDEXED_KINDS
    )
    pattern = f"{layout.project_keys_prefix}*"
    async for raw_key in store.redis.scan_iter(match=pattern, count=1000):
        key = raw_key.decode()
        rest = key.split("}", 1)[1] if "}" in key else ""
        if not rest.startswith(object_markers) or key in expected_keys:
            continue
        blob = await store.redis.get(raw_key)
        if blob is None:
            continue
        try:
            envelope = decode_envelope(blob)
        except CacheDecodeError:
            report.differ(f"redis {key}: undecodable")
            continue
        if not envelope.is_tombstone:
            report.differ(f"redis {key}: live, but the source has no such object")


async def _verify_api_keys(
    conn: psycopg.AsyncConnection[Any], cache: RedisSink, report: VerifyReport
) -> None:
    cursor = await conn.execute(
        "SELECT id, project_id, token_sha256, rate_limit_per_minute, revoked_at IS NOT NULL "
        "FROM api_keys"
    )
    rows = await cursor.fetchall()
    report.checked["api_key"] = len(rows)
    for app_id, project_id, token_sha256, limit, revoked in rows:
        envelope = await cache.store.get(cache.store.layout.app_key(app_id))
        if envelope is None or envelope.is_tombstone:
            report.differ(f"api key {app_id}: missing from redis")
            continue
        record = api_key_from_data(envelope.data)
        if (
            record.project_id,
            record.token_sha256,
            record.rate_limit_per_minute,
            record.revoked,
        ) != (project_id, token_sha256, limit, revoked):
            report.differ(f"api key {app_id}: redis record differs")
