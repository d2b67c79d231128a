"""``indexer reindex --project``: one tenant's objects rewritten in place.

No new generation: every object of the project is rebuilt from the source and written
through the aliases, to both sinks, at the running indexer's applied watermark ``W``; a
change applied after ``W`` carries a higher version and keeps its value. Then a repairing
verification of the project removes the objects the source no longer has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from cache.types import Lsn, ObjectKind
from indexer.progress import Progress
from indexer.quarantine import Quarantine
from indexer.rebuild import TABLE_OF_KIND, Rebuilder
from indexer.reindex_load import key_pages
from indexer.reindex_state import ReindexError, ordered_kinds
from indexer.settings import IndexerSettings
from indexer.sinks.elastic import ElasticSink, VersionedDelete
from indexer.sinks.redis import RedisSink
from indexer.snapshot_reader import touched_rows
from indexer.source import DocumentSource, connect
from indexer.verify import Verifier
from indexer.verify_report import VerifyReport, VerifyScope

log = logging.getLogger(__name__)


async def rebuild_project(
    settings: IndexerSettings,
    search: ElasticSink,
    cache: RedisSink,
    project_id: str,
    kinds: Sequence[ObjectKind],
    *,
    settle_seconds: float = 1.0,
    terminal: bool = False,
) -> tuple[int, VerifyReport]:
    """Rewrite every object of one project in place, through the aliases, at the
    running indexer's applied watermark ``W``; then remove its objects the source no
    longer has (a repairing verification of the project). A change applied after ``W``
    carries a higher version and keeps its value. Returns the objects rewritten and the
    verification's report."""
    quarantine = Quarantine()
    watermark = await cache.store.get_watermark()
    if watermark is None:
        raise ReindexError("no applied watermark in Redis: is `indexer run` running?")
    kinds = ordered_kinds(kinds)
    totals: dict[str, int] = {}
    written = 0
    async with await connect(settings.pg_dsn, autocommit=True) as conn:
        await quarantine.load(conn)
        source = DocumentSource(conn)
        for kind in kinds:
            totals[TABLE_OF_KIND[kind]] = await source.row_count(TABLE_OF_KIND[kind], project_id)
        reporter = Progress(
            f"rebuild of project {project_id}", totals, terminal=terminal, logger=log
        )
        rebuilder = Rebuilder(
            source,
            chunk_ids=settings.snapshot_chunk_rows,
            indexed_owners=search.indexed_owners,
            emit_events=False,
        )
        try:
            for kind in kinds:
                table = TABLE_OF_KIND[kind]
                async for ids in key_pages(
                    source, table, project_id, None, settings.snapshot_chunk_rows
                ):
                    async for chunk in rebuilder.writes(touched_rows(kind, ids, watermark)):
                        deletes = [
                            VersionedDelete(r.kind, r.object_id, r.version) for r in chunk.removed
                        ]
                        result, _ = await asyncio.gather(
                            search.apply(chunk.documents, deletes),
                            cache.apply(chunk),
                        )
                        await quarantine.settle(conn, chunk, result.refused)
                    written += len(ids)
                    reporter(table, len(ids))
        finally:
            reporter.close()
        verifier = Verifier(conn, search, cache, settle_seconds=settle_seconds, repair=True)
        report = await verifier.run(VerifyScope(kinds=kinds, project_id=project_id, api_keys=False))
    log.info(
        "project rebuilt in place",
        extra={"project_id": project_id, "objects": written, "version": str(Lsn(watermark))},
    )
    return written, report
