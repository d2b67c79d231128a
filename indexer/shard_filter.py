"""The writes of a chunk that belong to a shard's own projects.

A shard's publication filters rows by project (``indexer.shards``), so almost every write it
builds is for its own projects. The exceptions are rows that carry no project and reach every
shard (``segment_members``: the customer they name is rebuilt by each shard, and only its
owner may write it) and the cache reload after Redis lost its data, which rebuilds every
object. Items whose project is unknown (a quarantined row whose project could not be read, an
API key deleted with its project) are kept: their writes are versioned, and a duplicate
changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from indexer.rebuild import SinkWrites

Owns = Callable[[str], bool]


def owned_writes(chunk: SinkWrites, owns: Owns) -> tuple[SinkWrites, int]:
    """``chunk`` reduced to the items of projects ``owns`` accepts; and how many were left
    out."""

    def keep(project_id: str | None) -> bool:
        return not project_id or owns(project_id)

    owned = dataclasses.replace(
        chunk,
        documents=[(d, v) for d, v in chunk.documents if keep(d.project_id)],
        removed=[r for r in chunk.removed if keep(r.project_id)],
        removed_codes=[item for item in chunk.removed_codes if keep(item[0])],
        removed_source_ids=[item for item in chunk.removed_source_ids if keep(item[0])],
        api_keys=[(row, v) for row, v in chunk.api_keys if keep(row.project_id)],
        removed_api_keys=[item for item in chunk.removed_api_keys if keep(item[1])],
        moved=[m for m in chunk.moved if keep(m.project_id)],
        quarantined=[q for q in chunk.quarantined if keep(q.project_id)],
        memberships=[m for m in chunk.memberships if keep(m.project_id)],
        segment_jobs=[j for j in chunk.segment_jobs if keep(j.project_id)],
    )
    return owned, len(chunk) - len(owned)
