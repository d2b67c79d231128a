"""``MembershipStore``: customers' segment membership in Redis, its counts and its events.

One record per customer and project (the base version and the segments it is a member of),
one counts hash and one event stream per project, all moved by ONE script call
(``cache/lua/membership.lua``), so each transition of a customer into or out of a segment
changes its count once and appends exactly one event: a replayed update finds the record
already moved and does nothing, and no transition is written without its event. A hash of
pending segment recompute jobs sits beside them (``cache/lua/segment_job.lua``).

Same client conventions as ``CacheStore``: a ``redis.asyncio.Redis`` with
``decode_responses=False``, every public I/O method behind ``redis_boundary``. Formats are in
``cache/readmodel/codec.py``, key names in ``cache/readmodel/keys.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import cast

from redis.exceptions import WatchError

from cache import scripts
from cache.boundary import redis_boundary
from cache.connect import RedisClient, connection_options
from cache.readmodel.codec import (
    decode_membership,
    decode_segment_event,
    decode_segment_job,
    is_done_segment_job,
    is_stream_cursor,
    membership_update_args,
    segment_job_field,
    segment_job_value,
    stream_cursor,
    version_hex,
)
from cache.readmodel.keys import KeyLayout
from cache.records import MembershipUpdate, SegmentEvent, SegmentJob
from cache.scan import get_many, key_pages

# Updates per script call: a call runs atomically and blocks Redis meanwhile, so a large batch
# is cut into calls of this size (all sent in one pipeline), as CacheStore does with writes.
DEFAULT_UPDATES_PER_CALL = 256
# Keys per SCAN page and per pipeline of UNLINKs when state is reset: memory stays bounded.
RESET_PAGE = 1000

# What XRANGE and XREVRANGE answer with decode_responses=False: (entry id, fields) pairs.
_Entries = list[tuple[bytes, dict[bytes, bytes]]]


class MembershipStore:
    def __init__(
        self,
        redis: RedisClient,
        layout: KeyLayout,
        *,
        tombstone_ttl_seconds: float,
        events_max_per_project: int,
        updates_per_call: int = DEFAULT_UPDATES_PER_CALL,
    ) -> None:
        if connection_options(redis).get("decode_responses"):
            raise ValueError("MembershipStore needs a Redis client with decode_responses=False")
        if not tombstone_ttl_seconds > 0:
            raise ValueError("tombstone TTL must be positive: an emptied record must expire")
        if isinstance(events_max_per_project, bool) or events_max_per_project < 1:
            raise ValueError("events_max_per_project must be at least 1")
        if updates_per_call < 1:
            raise ValueError("updates_per_call must be at least 1")
        self.redis = redis
        self.layout = layout
        self.tombstone_ttl_ms = max(1, round(tombstone_ttl_seconds * 1000))
        self.events_max_per_project = events_max_per_project
        self.updates_per_call = updates_per_call

    # -- membership --------------------------------------------------------------------------

    @redis_boundary
    async def apply(self, updates: Sequence[MembershipUpdate]) -> int:
        """Apply membership updates; return how many transitions happened (a segment entered
        or left, with or without its event).

        Updates are grouped by project (one project's keys share a slot; order within a
        project is kept, so updates of one customer apply in the order given), cut into script
        calls of ``updates_per_call`` and sent in one pipeline. Every update is checked before
        anything is sent (``ValueError``/``TypeError``). A failed batch may be sent again
        whole: what it already applied is then a no-op, except where a SET_ONE of a customer
        moved the record after a REPLACE of that customer in the same batch. The REPLACE's
        replay is at the base, so it applies and takes the SET_ONE's segment back, and the
        SET_ONE's replay moves it again: two events more, the second under the id it had the
        first time. A SET_ONE keeps no version of its own for a replay to be refused by.
        """
        by_project: dict[str, list[tuple[MembershipUpdate, list[str]]]] = {}
        for update in updates:
            by_project.setdefault(update.project_id, []).append(
                (update, membership_update_args(update))
            )
        calls: list[scripts.ScriptCall] = []
        size = self.updates_per_call
        for project_id, group in by_project.items():
            head_keys = (
                self.layout.segment_counts_key(project_id),
                self.layout.segment_events_key(project_id),
            )
            for start in range(0, len(group), size):
                keys = list(head_keys)
                args: list[scripts.Arg] = [self.tombstone_ttl_ms, self.events_max_per_project]
                for update, update_args in group[start : start + size]:
                    keys.append(self.layout.membership_key(project_id, update.customer_id))
                    args.extend(update_args)
                calls.append(scripts.ScriptCall(scripts.MEMBERSHIP, keys, args))
        if not calls:
            return 0
        results = await scripts.run_pipelined(self.redis, calls)
        return sum(int(result) for result in results)

    @redis_boundary
    async def membership(
        self, project_id: str, customer_id: str
    ) -> tuple[int, frozenset[str]] | None:
        """The record of one customer: base version and segment ids (``None``: no record)."""
        blob = cast(
            bytes | None, await self.redis.get(self.layout.membership_key(project_id, customer_id))
        )
        return None if blob is None else decode_membership(blob)

    @redis_boundary
    async def membership_blobs(
        self, project_id: str, customer_ids: Sequence[str]
    ) -> list[bytes | None]:
        """The stored records of these customers, undecoded, in one MGET (one project's keys
        share a slot); verification decodes them itself."""
        if not customer_ids:
            return []
        keys = [self.layout.membership_key(project_id, customer_id) for customer_id in customer_ids]
        return cast(list[bytes | None], await self.redis.mget(keys))

    @redis_boundary
    async def count(self, project_id: str, segment_id: str) -> int:
        """Members of one segment (0 when it has none)."""
        raw = await self.redis.hget(self.layout.segment_counts_key(project_id), segment_id)
        return 0 if raw is None else int(raw)

    @redis_boundary
    async def counts(self, project_id: str, segment_ids: Sequence[str]) -> dict[str, int]:
        """Members of each segment, in one HMGET (0 for a segment with none)."""
        if isinstance(segment_ids, str):
            raise TypeError("segment_ids must be a sequence of ids, not one string")
        if not segment_ids:
            return {}
        raws = await self.redis.hmget(self.layout.segment_counts_key(project_id), segment_ids)
        return {
            segment_id: 0 if raw is None else int(raw)
            for segment_id, raw in zip(segment_ids, raws, strict=True)
        }

    @redis_boundary
    async def set_count_if(
        self, project_id: str, segment_id: str, observed: int, wanted: int
    ) -> bool:
        """Set one segment's member counter to ``wanted`` if it still holds ``observed``
        (optimistic: WATCH, read, MULTI); ``False`` when it moved meanwhile. Repairs a counter
        that drifted from the records (one deleted by hand leaves its segments counted)."""
        key = self.layout.segment_counts_key(project_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                raw = await pipe.hget(key, segment_id)
                if (0 if raw is None else int(raw)) != observed:
                    return False
                pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                if wanted:
                    pipe.hset(key, segment_id, wanted)
                else:
                    pipe.hdel(key, segment_id)
                await pipe.execute()
            except WatchError:
                return False
        return True

    # -- events ------------------------------------------------------------------------------

    @redis_boundary
    async def read_events(
        self, project_id: str, after: str | None, count: int
    ) -> list[SegmentEvent]:
        """Up to ``count`` events following the cursor ``after`` (exclusive; ``None``: from
        the oldest kept). A cursor older than the stream's trimmed head resumes at the head:
        the events in between are gone."""
        if count < 1:
            raise ValueError("count must be at least 1")
        start = "-" if after is None else "(" + _cursor(after)
        entries = cast(
            _Entries,
            await self.redis.xrange(
                self.layout.segment_events_key(project_id), start, "+", count=count
            ),
        )
        return [decode_segment_event(entry_id, fields) for entry_id, fields in entries]

    @redis_boundary
    async def wait_for_events(self, project_id: str, after: str | None, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` for an event newer than the cursor ``after`` (``None``:
        newer than the last one now); True as soon as one exists, at once when one already
        does. Pass the cursor last read rather than ``None`` where an event appended between
        two calls must not be missed.

        A blocking XREAD: it holds one connection of the client's pool for the whole wait
        (a server answering many waiters wants a client of its own for them), and the
        client's socket timeout must be longer than ``timeout_ms``, or the wait ends as an
        outage (``CacheUnavailable``); a timeout set on the client is checked here.
        """
        if timeout_ms < 1:
            raise ValueError("timeout_ms must be at least 1 (0 would block for ever)")
        socket_timeout = connection_options(self.redis).get("socket_timeout")
        if socket_timeout is not None and timeout_ms >= socket_timeout * 1000:
            raise ValueError(
                f"timeout_ms {timeout_ms} is not shorter than the client's socket timeout "
                f"({socket_timeout} s): the blocked read would fail as an outage"
            )
        start = "$" if after is None else _cursor(after)
        answer = await self.redis.xread(
            {self.layout.segment_events_key(project_id): start}, count=1, block=timeout_ms
        )
        return bool(answer)

    @redis_boundary
    async def last_event_cursor(self, project_id: str) -> str | None:
        """The cursor of the newest event (``None``: no event kept)."""
        key = self.layout.segment_events_key(project_id)
        entries = cast(_Entries, await self.redis.xrevrange(key, "+", "-", count=1))
        return stream_cursor(entries[0][0]) if entries else None

    @redis_boundary
    async def records_older_than(
        self, version: int, *, page: int = 1000
    ) -> AsyncIterator[list[tuple[str, str]]]:
        """``(project_id, customer_id)`` of every record with segments whose base is below
        ``version``, a SCAN page at a time: after a complete load at ``version``, the
        customers the load did not write, i.e. gone from the source."""
        pattern = self.layout.membership_state_pattern()
        async for names in key_pages(self.redis, pattern, page):
            layout = self.layout
            owned = [(owner, name) for name in names if (owner := layout.membership_of_key(name))]
            if not owned:
                continue
            blobs = await get_many(self.redis, [name for _, name in owned])
            stale: list[tuple[str, str]] = []
            for (owner, _), blob in zip(owned, blobs, strict=True):
                if blob is None:
                    continue
                base, segment_ids = decode_membership(blob)
                if segment_ids and base < version:
                    stale.append(owner)
            if stale:
                yield stale

    # -- reset before a silent rebuild -----------------------------------------------------------

    @redis_boundary
    async def reset_project_state(self, project_id: str) -> int:
        """Delete one project's membership records and counts, not its event stream; return
        how many keys went. For a rebuild that applies every membership silently next."""
        return await self._unlink_state(self.layout.membership_state_pattern(project_id))

    @redis_boundary
    async def reset_all(self) -> int:
        """``reset_project_state`` of every project, before an initial load."""
        return await self._unlink_state(self.layout.membership_state_pattern())

    async def _unlink_state(self, pattern: str) -> int:
        deleted = 0
        async for names in key_pages(self.redis, pattern, RESET_PAGE):
            # The pattern may match other keys (an id holding "}:sm"): the layout decides.
            keys = [name for name in names if self.layout.is_membership_state_key(name)]
            if keys:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        # Raw: a cluster pipeline's ``unlink`` is a coroutine, not queued.
                        pipe.execute_command("UNLINK", key)
                    deleted += sum(await pipe.execute())
        return deleted

    # -- segment recompute jobs ----------------------------------------------------------------

    @redis_boundary
    async def put_job(self, job: SegmentJob) -> bool:
        """Record a pending recompute; False when one of a newer version is stored (an equal
        version is written again)."""
        return await self._job_script("put", job, segment_job_value(job))

    @redis_boundary
    async def jobs(self) -> list[SegmentJob]:
        """Every pending job, oldest version first."""
        stored = cast(dict[bytes, bytes], await self.redis.hgetall(self.layout.segment_jobs_key))
        found = [
            decode_segment_job(field, value)
            for field, value in stored.items()
            if not is_done_segment_job(value)
        ]
        return sorted(found, key=lambda job: (job.version, job.project_id, job.segment_id))

    @redis_boundary
    async def finish_job(self, job: SegmentJob) -> bool:
        """Mark a job done (its version stays, so a replayed edit is not queued again); False
        (kept) when the pending one is of another version: an edit arrived while it ran, and
        its own recompute is still to come."""
        return await self._job_script("finish", job, version_hex(job.version))

    async def _job_script(self, operation: str, job: SegmentJob, value: str | bytes) -> bool:
        args = (operation, segment_job_field(job.project_id, job.segment_id), value)
        keys = (self.layout.segment_jobs_key,)
        return int(await scripts.SEGMENT_JOB.run(self.redis, keys, args)) == 1


def _cursor(after: str) -> str:
    if not isinstance(after, str) or not is_stream_cursor(after):
        raise ValueError(f"not an event cursor (<ms>-<seq>): {after!r}")
    return after
