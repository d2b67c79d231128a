"""The cache sink: versioned writes of documents, aliases and API keys into Redis.

Everything goes through ``cache.store.CacheStore`` (one Lua script keeps the newer version,
deletes leave versioned tombstones, each batch publishes one invalidation message), so the
read API's fills and the indexer's writes obey the same ordering rule. Keys, the document
schema and the alias fields come from ``cache.readmodel``; errors are the store's own.
"""

from __future__ import annotations

from collections.abc import Sequence

from cache.membership import MembershipStore
from cache.readmodel.documents import ALIAS_OF_KIND, DOCUMENT_SCHEMA, AliasKind
from cache.records import ApiKeyRecord, Envelope, VersionedWrite
from cache.replicas import ReplicaFence
from cache.store import CacheStore
from indexer.rebuild import SinkWrites


def cache_writes(store: CacheStore, chunk: SinkWrites) -> list[VersionedWrite]:
    """The Redis writes of one chunk, alias tombstones first; an object that moved to
    another project leaves a tombstone under its old one (``chunk.moved``).

    A code released and claimed again in one batch gets its tombstone and then its new
    alias at the same version; the versioned set lets the later write of equal version win.
    """
    layout = store.layout
    writes: list[VersionedWrite] = []
    for project_id, code, version in chunk.removed_codes:
        key = layout.alias_key(project_id, AliasKind.VOUCHER_CODE, code)
        writes.append(VersionedWrite(key, Envelope.tombstone(version)))
    for project_id, source_id, version in chunk.removed_source_ids:
        key = layout.alias_key(project_id, AliasKind.CUSTOMER_SOURCE_ID, source_id)
        writes.append(VersionedWrite(key, Envelope.tombstone(version)))
    for removed in (*chunk.removed, *chunk.moved):
        key = layout.object_key(removed.project_id, removed.kind, removed.object_id)
        writes.append(VersionedWrite(key, Envelope.tombstone(removed.version)))
    for document, version in chunk.documents:
        key = layout.object_key(document.project_id, document.kind, document.object_id)
        writes.append(VersionedWrite(key, Envelope(version, DOCUMENT_SCHEMA, document.body)))
        alias = ALIAS_OF_KIND.get(document.kind)
        if alias is not None:
            value = document.body.get(alias.field)
            if value is not None:
                alias_key = layout.alias_key(document.project_id, alias.alias, str(value))
                writes.append(
                    VersionedWrite(
                        alias_key, Envelope(version, DOCUMENT_SCHEMA, document.object_id)
                    )
                )
    for row, version in chunk.api_keys:
        record = ApiKeyRecord(
            app_id=row.app_id,
            project_id=row.project_id,
            token_sha256=row.token_sha256,
            rate_limit_per_minute=row.rate_limit_per_minute,
            revoked=row.revoked,
        )
        writes.append(store.api_key_write(record, version))
    for app_id, _project_id, version in chunk.removed_api_keys:
        writes.append(store.api_key_tombstone(app_id, version))
    return writes


class RedisSink:
    def __init__(
        self, store: CacheStore, membership: MembershipStore, fence: ReplicaFence | None = None
    ) -> None:
        self.store = store
        self.membership = membership
        self.fence = fence

    async def apply(self, chunk: SinkWrites) -> int:
        """Objects first, then the membership records (which emit the segment events), then
        the recompute jobs: all before the slot moves, so a crash replays them, and each is
        versioned, so the replay changes nothing."""
        written = await self.store.apply_writes(cache_writes(self.store, chunk))
        if chunk.memberships:
            await self.membership.apply(chunk.memberships)
        for job in chunk.segment_jobs:
            await self.membership.put_job(job)
        return written

    async def wait_for_replicas(self) -> None:
        """Before the slot moves past what was written: the writes are on enough replicas to
        survive a failover (``cache/replicas.py``); a no-op unless replicas are required."""
        if self.fence is not None:
            await self.fence.wait()

    async def get_watermark(self) -> int | None:
        return await self.store.get_watermark()

    async def set_watermark(self, lsn: int) -> bool:
        return await self.store.set_watermark(lsn)

    async def advance_shard_watermark(
        self, shard: str, lsn: int, fields: Sequence[str], *, only_over_stored: bool = False
    ) -> int | None:
        """See ``CacheStore.advance_shard_watermark``."""
        return await self.store.advance_shard_watermark(
            shard, lsn, fields, only_over_stored=only_over_stored
        )

    async def advance_stored_watermark(self, lsn: int) -> bool | None:
        """``None`` when Redis holds no watermark: it lost its data (see ``CacheStore``)."""
        return await self.store.advance_stored_watermark(lsn)
