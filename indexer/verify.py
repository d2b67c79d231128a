"""Verification: compare every object the source holds with both sinks, field by field.

Expected documents are rebuilt from the source exactly as the indexer builds them; then
every Elasticsearch document and every Redis envelope, alias and API key record must equal
them, and nothing the source no longer holds may be live in either sink. Each customer's
segment membership record in Redis and each segment's counter must match the documents.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

from cache.errors import CacheDecodeError
from cache.membership import MembershipStore
from cache.readmodel.documents import ALIAS_OF_KIND, INDEXED_KINDS
from cache.readmodel.indices import Field
from cache.store import CacheStore
from cache.types import ObjectKind
from indexer.changes import TouchedObjects
from indexer.documents import Document
from indexer.rebuild import Rebuilder
from indexer.sinks.elastic import ElasticSink
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
            if source_doc.get(Field.DOC) != wanted.body:
                report.differ(
                    f"{kind.value} {object_id}: elasticsearch body differs: "
                    f"{source_doc.get(Field.DOC)} != {wanted.body}"
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
    await _verify_api_keys(source, store, report)
    await _verify_memberships(cache.membership, expected_by_kind, report)
    return report


async def _verify_memberships(
    membership: MembershipStore,
    expected_by_kind: dict[ObjectKind, dict[str, Document]],
    report: VerifyReport,
) -> None:
    """Each customer's Redis membership record holds the segments its document lists, and
    each segment's counter the number of customers listing it."""
    members: Counter[tuple[str, str]] = Counter()
    for document in expected_by_kind[ObjectKind.CUSTOMER].values():
        wanted = frozenset(document.fields[Field.SEGMENT_IDS])
        record = await membership.membership(document.project_id, document.object_id)
        found = frozenset() if record is None else record[1]
        if found != wanted:
            report.differ(
                f"customer {document.object_id}: redis membership {sorted(found)} != "
                f"{sorted(wanted)}"
            )
        members.update((document.project_id, segment_id) for segment_id in wanted)
    for document in expected_by_kind[ObjectKind.SEGMENT].values():
        count = await membership.count(document.project_id, document.object_id)
        wanted_count = members[(document.project_id, document.object_id)]
        if count != wanted_count:
            report.differ(f"segment {document.object_id}: count {count} != {wanted_count}")


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
    store: CacheStore, kind: ObjectKind, expected: dict[str, Document], report: VerifyReport
) -> None:
    alias = ALIAS_OF_KIND.get(kind)
    if alias is None:
        return
    for object_id, document in expected.items():
        value = document.body.get(alias.field)
        if value is None:
            continue
        envelope = await store.resolve_alias(document.project_id, alias.alias, str(value))
        if envelope is None or envelope.data != object_id:
            report.differ(f"{kind.value} {object_id}: alias {alias.field}={value} -> {envelope}")


async def _verify_redis_has_no_extra(
    store: CacheStore, report: VerifyReport, expected_keys: set[str]
) -> None:
    """No live object envelope in Redis for an object the source no longer holds."""
    try:
        async for key, _envelope in store.live_objects():
            if key not in expected_keys:
                report.differ(f"redis {key}: live, but the source has no such object")
    except CacheDecodeError as error:
        report.differ(f"redis: undecodable value: {error}")


async def _verify_api_keys(source: DocumentSource, store: CacheStore, report: VerifyReport) -> None:
    checked = 0
    async for ids in source.primary_key_chunks("primary_keys_api_keys", 5000):
        for row in await source.api_keys_by_ids(ids):
            checked += 1
            app_id = row["id"]
            record = await store.get_api_key(app_id)
            if record is None:
                report.differ(f"api key {app_id}: missing from redis")
                continue
            if (
                record.project_id,
                record.token_sha256,
                record.rate_limit_per_minute,
                record.revoked,
            ) != (
                row["project_id"],
                row["token_sha256"],
                row["rate_limit_per_minute"],
                row["revoked_at"] is not None,
            ):
                report.differ(f"api key {app_id}: redis record differs")
    report.checked["api_key"] = checked
