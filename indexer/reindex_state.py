"""The checkpoint of a reindex in progress: what it builds and how far it got.

One reindex runs at a time per key prefix. Its checkpoint lives in Redis under
``KeyLayout.reindex_key``, written after every chunk both sinks acknowledged, so a reindex
killed at any moment resumes (``indexer reindex --resume``) after its last finished chunk
instead of from zero. Redis losing its data loses the checkpoint with it; ``--abort`` then
still finds the half-built generation by name and the catch-up slot by its name.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from cache.boundary import redis_boundary
from cache.connect import RedisClient
from cache.types import ObjectKind
from indexer.errors import IndexerError

# Load order: segments before customers and campaigns before vouchers, as in a first load.
KIND_ORDER: tuple[ObjectKind, ...] = (
    ObjectKind.CAMPAIGN,
    ObjectKind.SEGMENT,
    ObjectKind.VOUCHER,
    ObjectKind.CUSTOMER,
)


def ordered_kinds(kinds: Sequence[ObjectKind]) -> tuple[ObjectKind, ...]:
    return tuple(kind for kind in KIND_ORDER if kind in kinds)


class ReindexError(IndexerError):
    """A reindex that cannot start or go on as asked; the message says what to do."""


class Source(enum.StrEnum):
    POSTGRES = "postgres"  # a consistent snapshot of the source tables
    INDEX = "index"  # the serving generation's documents, copied with their versions


class Phase(enum.StrEnum):
    LOADING = "loading"  # chunks into the new generation
    CATCHING_UP = "catching_up"  # the catch-up slot's changes, then the switch


@dataclass(frozen=True, slots=True)
class ReindexState:
    """Where a reindex stands. ``stage`` is the table (or kind) being loaded, ``after`` the
    last key of its last finished chunk; stages before ``stage`` are done."""

    generation: int
    kinds: tuple[ObjectKind, ...]
    source: Source
    slot: str
    phase: Phase = Phase.LOADING
    stage: str | None = None
    after: str | None = None
    done: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    resumed: int = 0
    # The release's mapping version: pages loaded by another release have another shape.
    mapping: int = 0

    @property
    def rows_done(self) -> int:
        return sum(self.done.values())

    def finished_chunk(self, stage: str, after: str, rows: int) -> ReindexState:
        done = dict(self.done)
        done[stage] = done.get(stage, 0) + rows
        return replace(self, stage=stage, after=after, done=done)


class CheckpointError(ValueError):
    """A stored checkpoint that this release cannot read."""


def encode_state(state: ReindexState) -> bytes:
    return orjson.dumps(
        {
            "generation": state.generation,
            "kinds": [str(kind) for kind in state.kinds],
            "source": str(state.source),
            "slot": state.slot,
            "phase": str(state.phase),
            "stage": state.stage,
            "after": state.after,
            "done": state.done,
            "started_at": state.started_at,
            "resumed": state.resumed,
            "mapping": state.mapping,
        }
    )


def decode_state(blob: bytes | str) -> ReindexState:
    try:
        raw: dict[str, Any] = orjson.loads(blob)
        return ReindexState(
            generation=int(raw["generation"]),
            kinds=tuple(ObjectKind(kind) for kind in raw["kinds"]),
            source=Source(raw["source"]),
            slot=str(raw["slot"]),
            phase=Phase(raw["phase"]),
            stage=raw.get("stage"),
            after=raw.get("after"),
            done={str(k): int(v) for k, v in (raw.get("done") or {}).items()},
            started_at=float(raw.get("started_at") or 0.0),
            resumed=int(raw.get("resumed") or 0),
            mapping=int(raw.get("mapping") or 0),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"unreadable reindex checkpoint: {error}") from None


class CheckpointStore:
    """Reads and writes the one checkpoint under ``key``."""

    def __init__(self, client: RedisClient, key: str) -> None:
        self._client = client
        self._key = key

    @redis_boundary
    async def load(self) -> ReindexState | None:
        blob = await self._client.get(self._key)
        return None if blob is None else decode_state(blob)

    @redis_boundary
    async def save(self, state: ReindexState) -> None:
        await self._client.set(self._key, encode_state(state))

    @redis_boundary
    async def clear(self) -> None:
        await self._client.delete(self._key)
