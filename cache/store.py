"""``CacheStore``: the one interface to Redis (L2) for the indexer (writer) and the read API.

Every write of an envelope goes through ``cache/lua/versioned_set.lua``, so neither a replayed
change nor a fill from Elasticsearch can take a key back to an older version. Every ``redis``
exception is translated into ``cache.errors`` here, at the boundary.

The client must be a ``redis.asyncio.Redis`` with ``decode_responses=False``: envelopes are
binary.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from cache import scripts
from cache.boundary import redis_boundary
from cache.connect import RedisClient, connection_options
from cache.pipelining import ScriptBatcher
from cache.readmodel.codec import (
    API_KEY_SCHEMA,
    ENVELOPE_HEADER_SIZE,
    api_key_from_data,
    api_key_to_data,
    decode_envelope,
    decode_watermark,
    encode_envelope,
    encode_invalidation,
    encode_watermark,
    envelope_version,
)
from cache.readmodel.keys import KeyLayout, hash_tag_of
from cache.records import (
    ApiKeyRecord,
    Envelope,
    Invalidation,
    TokenLease,
    VersionedWrite,
)
from cache.scan import get_many, key_pages

# Longer than any replay window; each process passes its configured value.
DEFAULT_TOMBSTONE_TTL_SECONDS = 86_400
# Writes per script call: one call runs atomically and blocks Redis meanwhile, so a large
# batch is cut into calls of this size (all sent in one pipeline).
DEFAULT_WRITES_PER_CALL = 256
RATE_LIMIT_WINDOW_SECONDS = 60
DEFAULT_LEASE_DIVISOR = 8


class CacheStore:
    def __init__(
        self,
        redis: RedisClient,
        layout: KeyLayout | None = None,
        *,
        tombstone_ttl_seconds: float = DEFAULT_TOMBSTONE_TTL_SECONDS,
        writes_per_call: int = DEFAULT_WRITES_PER_CALL,
    ) -> None:
        if connection_options(redis).get("decode_responses"):
            raise ValueError("CacheStore needs a Redis client with decode_responses=False")
        ttl = tombstone_ttl_seconds
        if ttl <= 0:
            raise ValueError("tombstone TTL must be positive: a tombstone must expire")
        if writes_per_call < 1:
            raise ValueError("writes_per_call must be at least 1")
        self.redis = redis
        self.layout = layout if layout is not None else KeyLayout()
        self.tombstone_ttl_ms = max(1, round(ttl * 1000))
        self.writes_per_call = writes_per_call
        self._lookups = ScriptBatcher(redis, scripts.LOOKUP)

    # -- writer (indexer) ------------------------------------------------------------------

    @redis_boundary
    async def apply_writes(self, writes: Sequence[VersionedWrite]) -> int:
        """Apply versioned sets and tombstones; return how many keys were written.

        Writes are grouped by hash tag (one project's keys share a slot), cut into script
        calls of ``writes_per_call``, and sent in one pipeline ending with ONE publish of the
        invalidations of the whole batch. Every key of the batch is named in it with its
        version, written or not, which saves a round trip and costs nothing: a cache keeps
        an entry at least as new as the version named.
        """
        if not writes:
            return 0
        calls = [
            scripts.ScriptCall(scripts.VERSIONED_SET, keys, args)
            for keys, args in self._script_batches(writes)
        ]
        message = encode_invalidation(
            Invalidation(tuple((w.key, w.envelope.version) for w in writes))
        )
        results = await scripts.run_pipelined(
            self.redis, calls, then=[("SPUBLISH", self.layout.channel, message)]
        )
        return sum(sum(flags) for flags in results)

    def api_key_write(self, record: ApiKeyRecord, version: int) -> VersionedWrite:
        """The write that stores an API key record (revoked ones too: ``revoked`` answers 401
        at once); the indexer's sink and ``put_api_key`` both build it here."""
        envelope = Envelope(version, API_KEY_SCHEMA, api_key_to_data(record))
        return VersionedWrite(self.layout.app_key(record.app_id), envelope)

    @redis_boundary
    async def put_api_key(self, record: ApiKeyRecord, version: int) -> bool:
        return await self.apply_writes([self.api_key_write(record, version)]) == 1

    def api_key_tombstone(self, app_id: str, version: int) -> VersionedWrite:
        """The write that removes the record of a deleted API key row."""
        return VersionedWrite(self.layout.app_key(app_id), Envelope.tombstone(version))

    @redis_boundary
    async def delete_api_key(self, app_id: str, version: int) -> bool:
        return await self.apply_writes([self.api_key_tombstone(app_id, version)]) == 1

    @redis_boundary
    async def set_watermark(self, lsn: int) -> bool:
        """Advance the applied watermark and publish it; never moves it backwards.

        Returns whether it moved (an equal or older ``lsn`` is a no-op and is not published).
        """
        return await self._advance_watermark(lsn, only_over_stored=False) == 1

    @redis_boundary
    async def advance_stored_watermark(self, lsn: int) -> bool | None:
        """``set_watermark``, but only over a stored watermark: ``None`` (nothing written)
        when there is none, i.e. Redis lost its data since the caller last saw it. Writing
        one then would hide the loss from the check that reloads the data."""
        result = await self._advance_watermark(lsn, only_over_stored=True)
        return None if result < 0 else result == 1

    @redis_boundary
    async def _advance_watermark(self, lsn: int, *, only_over_stored: bool) -> int:
        message = encode_invalidation(Invalidation(watermark=lsn))
        args = (
            encode_watermark(lsn), self.layout.channel, message, "1" if only_over_stored else "0"
        )
        result = await scripts.ADVANCE_WATERMARK.run(
            self.redis, (self.layout.watermark_key,), args
        )
        return int(result)

    @redis_boundary
    async def advance_shard_watermark(
        self, shard: str, lsn: int, fields: Sequence[str], *, only_over_stored: bool = False
    ) -> int | None:
        """Record ``lsn`` as shard ``shard``'s applied position (never backwards), then move
        the watermark to the least position of ``fields`` when all have one
        (``indexer.shards``). Returns the combined position (``None``: not all shards have
        one yet), or ``-1`` when ``only_over_stored`` and the shard had no position (Redis
        lost its data since the shard last wrote it)."""
        result = await scripts.SHARD_WATERMARK.run(
            self.redis,
            (self.layout.shard_watermarks_key,),
            (shard, encode_watermark(lsn), "1" if only_over_stored else "0", *fields),
        )
        if result == -1:
            return -1
        if not result:
            return None
        combined = decode_watermark(result)
        await self._advance_watermark(combined, only_over_stored=False)
        return combined

    @redis_boundary
    async def shard_watermarks(self) -> dict[str, int]:
        """Every shard's applied position, by field (``N:k``)."""
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.layout.shard_watermarks_key))
        return {name.decode(): decode_watermark(value) for name, value in raw.items()}

    # -- reader (read API) -----------------------------------------------------------------

    @redis_boundary
    async def get(self, key: str) -> Envelope | None:
        """The envelope at ``key`` (a tombstone included), or ``None`` when absent.

        Raises ``CacheDecodeError`` when the key holds something else; a reader may treat
        that as a miss.
        """
        # bytes: decode_responses is refused in __init__.
        blob = cast(bytes | None, await self.redis.get(key))
        return None if blob is None else decode_envelope(blob)

    @redis_boundary
    async def lookup(
        self, id_key: str, alias_key: str, target_head: str
    ) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The stored values of an object by id, of an alias, and of the object that alias
        names (``target_head`` + its target id), in one round trip (``cache/lua/lookup.lua``);
        ``None`` where absent. Decode them with ``codec.decode_served``. Concurrent lookups
        share pipelines (``cache.pipelining``)."""
        by_id, alias, target = await self._lookups.run((id_key, alias_key), (target_head,))
        return by_id, alias, target

    @redis_boundary
    async def wait_idle(self) -> None:
        """Until every lookup sent is answered: before the client closes."""
        await self._lookups.wait_idle()

    @redis_boundary
    async def get_object(self, project_id: str, kind: str, object_id: str) -> Envelope | None:
        return await self.get(self.layout.object_key(project_id, kind, object_id))

    @redis_boundary
    async def resolve_alias(self, project_id: str, kind: str, value: str) -> Envelope | None:
        """The alias envelope; its ``data`` is the target object id (``None``: tombstone)."""
        return await self.get(self.layout.alias_key(project_id, kind, value))

    @redis_boundary
    async def fill(
        self, key: str, envelope: Envelope, *, ttl_seconds: float | None = None
    ) -> bool:
        """Write what was read from the source of truth (an Elasticsearch realtime GET) back
        to Redis through the same versioned set: a fill racing a newer CDC write never takes
        the key backwards. Returns whether it wrote. Publishes nothing: the fill writes the
        version that the indexer's own write, when it comes, announces.

        ``ttl_seconds`` overrides the expiry as ``VersionedWrite.ttl_seconds`` does (the read
        API gives the tombstones of its misses a short one)."""
        ttl_ms = self._ttl_ms(VersionedWrite(key, envelope, ttl_seconds))
        flags = await scripts.VERSIONED_SET.run(
            self.redis, (key,), (ttl_ms, encode_envelope(envelope))
        )
        return bool(flags[0])

    @redis_boundary
    async def get_api_key(self, app_id: str) -> ApiKeyRecord | None:
        """The record of ``app_id``, or ``None`` when unknown or deleted."""
        envelope = await self.get(self.layout.app_key(app_id))
        if envelope is None or envelope.is_tombstone:
            return None
        return api_key_from_data(envelope.data)

    @redis_boundary
    async def get_watermark(self) -> int | None:
        blob = cast(bytes | None, await self.redis.get(self.layout.watermark_key))
        return None if blob is None else decode_watermark(blob)

    @redis_boundary
    async def lease_tokens(
        self,
        app_id: str,
        limit: int,
        wanted: int,
        *,
        divisor: int = DEFAULT_LEASE_DIVISOR,
        window_seconds: int = RATE_LIMIT_WINDOW_SECONDS,
    ) -> TokenLease:
        """Lease up to ``wanted`` tokens of ``app_id``'s ``limit`` for the current window.

        A lease takes at most ``ceil(left / divisor)`` of the tokens left, so leases shrink as
        the limit nears and tokens held unused by a process are a bounded loss. ``granted``
        is 0 once the window is spent; ``reset_seconds`` is the ``Retry-After`` to answer.
        """
        if limit < 0 or wanted < 1 or divisor < 1 or window_seconds < 1:
            raise ValueError("need limit >= 0, wanted >= 1, divisor >= 1, window_seconds >= 1")
        args = (limit, wanted, window_seconds * 1000, divisor)
        granted, remaining, reset_ms = await scripts.LEASE_TOKENS.run(
            self.redis, (self.layout.rate_limit_key(app_id),), args
        )
        return TokenLease(int(granted), int(remaining), max(1, math.ceil(int(reset_ms) / 1000)))

    # -- maintenance (indexer loads and verification) ----------------------------------------

    @redis_boundary
    async def keys_older_than(self, version: int, *, page: int = 1000) -> AsyncIterator[str]:
        """Every object, alias and API key whose envelope is older than ``version``, a SCAN
        page at a time. Versions are read from the envelopes' fixed headers (one pipeline per
        page), so a pass costs no decode; a tombstone counts like a live value. A project's
        other keys (segment membership, counts, events) are skipped: a GETRANGE of a hash or a
        stream is refused."""
        for pattern in (f"{self.layout.project_keys_prefix}*", f"{self.layout.app_key_prefix}*"):
            async for names in key_pages(self.redis, pattern, page):
                keys = [name for name in names if self.layout.is_envelope_key(name)]
                if not keys:
                    continue
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.getrange(key, 0, ENVELOPE_HEADER_SIZE - 1)
                    heads = await pipe.execute()
                for key, head in zip(keys, heads, strict=True):
                    stored = envelope_version(head)
                    if stored is not None and stored < version:
                        yield key

    @redis_boundary
    async def get_raw_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The stored bytes of each key, in order: one MGET per hash tag (a project's keys
        share a slot, as a cluster requires), all in one pipeline. Verification decodes them
        itself, so one undecodable value is reported as such rather than failing the page."""
        return await get_many(self.redis, keys)

    @redis_boundary
    async def project_key_pages(
        self, project_id: str | None = None, *, page: int = 1000
    ) -> AsyncIterator[list[str]]:
        """The keys of one project (or of all) a SCAN page at a time: every object key is
        among them, with the projects' other keys; whether each holds a live value is the
        caller's to read."""
        # The caller parses each key (``KeyLayout.object_of_key``), which tells objects from
        # the project's other keys.
        pattern = self.layout.project_keys_pattern(project_id)
        async for names in key_pages(self.redis, pattern, page):
            yield names

    @redis_boundary
    async def app_id_pages(self, *, page: int = 1000) -> AsyncIterator[list[str]]:
        """The app id of every API key record (live or tombstone), a SCAN page at a time."""
        prefix = self.layout.app_key_prefix
        async for names in key_pages(self.redis, f"{prefix}*", page):
            yield [name[len(prefix) :] for name in names]

    # -- both -------------------------------------------------------------------------------

    @redis_boundary
    async def load_scripts(self) -> None:
        """Load the Lua scripts now rather than on first use (call at start-up)."""
        await scripts.load_all(self.redis)

    @redis_boundary
    async def ping(self) -> None:
        """Raise ``CacheUnavailable`` unless Redis answers (for readiness checks)."""
        await self.redis.ping()

    def _script_batches(
        self, writes: Sequence[VersionedWrite]
    ) -> list[tuple[list[str], list[Any]]]:
        by_slot: dict[str | None, list[VersionedWrite]] = {}
        untagged: list[list[VersionedWrite]] = []
        for write in writes:
            tag = hash_tag_of(write.key)
            if tag is None:
                # Without a hash tag keys may live in different slots: one call each.
                untagged.append([write])
            else:
                by_slot.setdefault(tag, []).append(write)
        batches: list[tuple[list[str], list[Any]]] = []
        size = self.writes_per_call
        for group in [*by_slot.values(), *untagged]:
            for start in range(0, len(group), size):
                keys: list[str] = []
                args: list[Any] = []
                for write in group[start : start + size]:
                    keys.append(write.key)
                    args.append(self._ttl_ms(write))
                    args.append(encode_envelope(write.envelope))
                batches.append((keys, args))
        return batches

    def _ttl_ms(self, write: VersionedWrite) -> int:
        if write.ttl_seconds is not None:
            return max(1, round(write.ttl_seconds * 1000))
        return self.tombstone_ttl_ms if write.envelope.is_tombstone else 0
