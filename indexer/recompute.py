"""Segment membership recomputed from the customer documents already indexed.

A segment created, deleted, or whose filter, type or project changed becomes a job (Redis,
``cache.membership``, written with its batch before the slot moves past the change). Jobs
run a slice at a time between batches of changes (``LOYALTY_SEGMENT_RECOMPUTE_SLICE_MS``),
so one tenant's recompute never stops the change stream of the others; a job that fits in
its first slice is done before the watermark passes the segment's change.

A job is two passes over the project's customers in id order, each a search for the
customers whose membership must change: those matching the filter that do not list the
segment (enter), and those listing it that no longer match (leave). Zero reads of the
source: the filter is compiled to a query over the indexed filter view
(``indexer.segment_query``). A hit of the enter pass is a member and a hit of the leave pass
is not, as of the source and version the search returned with it (the query and the Python
predicate are one parsed filter, held to the same answers by a property test). Only
customers whose membership changes are written: first the Redis membership record (one
atomic script: record, counter and event; ``SET_ONE`` at the job's version, refused for a
customer rebuilt after the segment changed), then the document at the version it was found
at (``external_gte``: a newer rebuild is never overwritten, so a decision on a stale hit is
dropped by both stores). A page's writes go on while the next page is searched, and
between slices while batches of changes are applied. A crash or a failed write between the
two leaves the document to be rewritten by the job's next run, whose Redis write then finds
nothing to change: no event twice.

Static segments follow ``segment_members``: their members come from customer rebuilds
(``indexer.rebuild``); a job only takes the segment away from customers not rebuilt since
the segment changed (auto-update to static). A deleted segment, or one whose filter is
invalid, has no members.

The clock tick (:class:`SegmentClock`) keeps relative-date filters (``"-P30D"``) current:
every period it looks only at customers whose date lies between the bounds of the previous
tick and this one (a range query), and decides those. A job decides every customer as of its
start; when one of a relative-date segment finishes, the next tick of that segment looks back
to that start instead (a customer crossing while the job ran would otherwise keep the job's
decision).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from cache.membership import MembershipStore
from cache.readmodel.indices import Field, ViewLeaf
from cache.records import EventCause, MembershipMode, MembershipUpdate, SegmentJob
from cache.types import ObjectKind
from indexer import metrics
from indexer.documents import Document
from indexer.in_flight import WritesInFlight
from indexer.rebuild import compiled_filter
from indexer.segment_filter import SegmentFilter
from indexer.segment_index import AUTO_UPDATE, IndexedCustomer, SegmentIndex
from indexer.segment_view import instant_key, term
from indexer.sinks.elastic import ElasticSink

log = logging.getLogger(__name__)

Clock = Callable[[], int]
"""Epoch microseconds now (tests inject their own)."""


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class _Mode(enum.Enum):
    AUTO = "auto"  # members are the customers matching the filter
    STATIC = "static"  # members come from rebuilds (segment_members)
    NOBODY = "nobody"  # deleted, moved to another project, or an invalid filter


class _Phase(enum.Enum):
    ENTER = "enter"
    LEAVE = "leave"


@dataclass(slots=True)
class _Progress:
    job: SegmentJob
    cause: EventCause
    mode: _Mode
    compiled: SegmentFilter | None
    now_us: int
    phase: _Phase
    after: str | None = None
    examined: int = 0
    changed: int = 0
    started: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return (self.job.project_id, self.job.segment_id)

    def query(self) -> dict[str, Any] | None:
        """The search of the current pass; None when the pass has nothing to look for."""
        project = {"term": {Field.PROJECT_ID: self.job.project_id}}
        listed = {"term": {Field.SEGMENT_IDS: self.job.segment_id}}
        if self.phase is _Phase.ENTER:
            if self.mode is not _Mode.AUTO or self.compiled is None:
                return None
            matching = self.compiled.query(self.now_us)
            return {"bool": {"filter": [project, matching], "must_not": [listed]}}
        if self.mode is _Mode.AUTO and self.compiled is not None:
            matching = self.compiled.query(self.now_us)
            return {"bool": {"filter": [project, listed], "must_not": [matching]}}
        return {"bool": {"filter": [project, listed]}}

    def decide(self, customer: IndexedCustomer) -> bool:
        """Whether the customer, as the search found it, is a member of the job's segment."""
        if customer.project_id != self.job.project_id:
            return False
        if self.mode is _Mode.AUTO and self.compiled is not None:
            # The pass's query is the filter (held to the Python predicate by the property
            # test) and each hit's source is what that search matched: enter hits match,
            # leave hits do not. Evaluating the predicate again would mean building the
            # view of every hit, most of a recompute's time.
            return self.phase is _Phase.ENTER
        if self.mode is _Mode.STATIC:
            # Rebuilt at or after the segment's change: its static membership is current.
            listed = self.job.segment_id in customer.segment_ids
            return listed and customer.version >= self.job.version
        return False


class SegmentRecompute:
    """Runs the pending recompute jobs, oldest first, a bounded slice at a time."""

    def __init__(
        self,
        search: ElasticSink,
        index: SegmentIndex,
        membership: MembershipStore,
        *,
        page: int = 500,
        writes_in_flight: int = 3,
        clock: Clock = wall_clock_us,
        owns: Callable[[str], bool] = lambda project_id: True,
    ) -> None:
        self._search = search
        self._index = index
        self._membership = membership
        self._page = page
        self._writes_in_flight = max(1, writes_in_flight)
        self._clock = clock
        # A sharded indexer runs the jobs of its own projects only (``indexer.shards``).
        self._owns = owns
        self._current: _Progress | None = None
        # The last pages' writes, oldest first, in flight while the next page is searched
        # (and, between slices, while batches of changes are applied): the search and the
        # decisions (here) overlap the indexing, and several bulk requests keep
        # Elasticsearch's write threads busy where one left the node half idle. Pages hold
        # different customers: their writes commute. ``bench/segments.py`` at 100,000
        # customers: jobs of 35,000 entering took 6.0-9.1 s with one page in flight, 4.8-5.9 s
        # with two, 4.5-5.2 s with three (this 2-core machine then saturated).
        self._writing = WritesInFlight()
        # Clock jobs (a full pass over a relative-date segment at start-up) are not kept in
        # Redis: a restart schedules them again.
        self._clock_jobs: dict[tuple[str, str], SegmentJob] = {}
        # The time each finished job of a relative-date segment evaluated its filter at (its
        # start): customers crossing a bound while it ran were decided as of that time, so
        # the next tick looks from there (SegmentClock).
        self._evaluated_at: dict[tuple[str, str], int] = {}
        self.pending = True  # unknown at start: jobs may be waiting in Redis

    def add_clock_job(self, job: SegmentJob) -> None:
        self._clock_jobs[(job.project_id, job.segment_id)] = job
        self.pending = True

    @property
    def evaluated_at(self) -> dict[tuple[str, str], int]:
        """(project, segment) -> the time its latest finished relative-date job evaluated at,
        for the jobs no tick has taken into account yet (a copy)."""
        return dict(self._evaluated_at)

    def forget_evaluations(self, taken: Mapping[tuple[str, str], int]) -> None:
        """Drop what a tick took into account; a job finished since then stays."""
        for key, at in taken.items():
            if self._evaluated_at.get(key) == at:
                del self._evaluated_at[key]

    async def run_slice(self, budget_seconds: float) -> int:
        """Work on the jobs for about ``budget_seconds``; returns the customers examined.
        Sets :attr:`pending` to whether work is left.

        The last page's writes may still be in flight when a slice returns: they go on while
        the change stream is served, and the next slice waits for them before it writes
        again (their failure is raised there). Waiting at the end of every slice instead
        left the search and the writes of a page in turn, not side by side. Every write is
        versioned, so a batch writing the same customers meanwhile is never overwritten."""
        deadline = time.monotonic() + budget_seconds
        examined = 0
        try:
            while True:
                progress = await self._progress()
                if progress is None:
                    self.pending = False
                    return examined
                if time.monotonic() >= deadline:
                    self.pending = True
                    return examined
                examined += await self._advance(progress)
        except BaseException:
            # A page whose writes failed is behind the pass's position: the job starts over
            # (deciding a customer again changes nothing).
            self._current = None
            await self._writing.abandon()
            raise

    async def close(self) -> None:
        """Wait for the page being written, so that a process stopping sends it whole."""
        try:
            await self._drain()
        except Exception:
            # The job starts over on the next start; deciding a customer again changes nothing.
            log.warning("segment recompute write failed while stopping", exc_info=True)

    async def _drain(self, keep: int = 0) -> None:
        """Wait for the pages being written, oldest first, until at most ``keep`` are left
        in flight; a failure is raised here (the pages after it are abandoned)."""
        try:
            await self._writing.drain(keep)
        except BaseException:
            self._current = None
            raise

    async def _progress(self) -> _Progress | None:
        """The job to work on: the current one, unless a newer edit of its segment arrived."""
        stored = [job for job in await self._membership.jobs() if self._owns(job.project_id)]
        metrics.SEGMENT_JOBS_PENDING.set(len(stored) + len(self._clock_jobs))
        current = self._current
        if current is not None:
            if current.cause is EventCause.CLOCK:
                return current
            newest = next((j for j in stored if (j.project_id, j.segment_id) == current.key), None)
            if newest is not None and newest.version == current.job.version:
                return current
            # Finished by another process, or edited again: start over from the newest, once
            # the old job's last page is written (none of its decisions may land after the
            # new job's).
            await self._drain()
            self._current = None
        if stored:
            self._current = await self._start(stored[0], EventCause.CHANGE)
        elif self._clock_jobs:
            key = next(iter(self._clock_jobs))
            self._current = await self._start(self._clock_jobs.pop(key), EventCause.CLOCK)
        return self._current

    async def _start(self, job: SegmentJob, cause: EventCause) -> _Progress:
        # Documents the batches wrote so far must be searchable: a candidate missed here
        # would keep a wrong membership until it changes.
        await self._index.refresh_customers()
        segment = await self._index.segment(job.segment_id)
        compiled: SegmentFilter | None = None
        if segment is None or segment.project_id != job.project_id:
            mode = _Mode.NOBODY
        elif segment.type == AUTO_UPDATE:
            result = compiled_filter(
                job.segment_id, orjson.dumps(segment.filter, option=orjson.OPT_SORT_KEYS)
            )
            compiled = result if isinstance(result, SegmentFilter) else None
            mode = _Mode.AUTO if compiled is not None else _Mode.NOBODY
        else:
            mode = _Mode.STATIC
        log.info(
            "segment recompute started",
            extra={
                "project_id": job.project_id,
                "segment_id": job.segment_id,
                "version": job.version,
                "mode": mode.value,
                "cause": cause.value,
            },
        )
        return _Progress(
            job, cause, mode, compiled, self._clock(), _Phase.ENTER, started=time.monotonic()
        )

    async def _advance(self, progress: _Progress) -> int:
        query = progress.query()
        customers = (
            []
            if query is None
            else await self._index.candidates(query, after=progress.after, size=self._page)
        )
        if not customers:
            # A pass ends, and a job is done, only once every page of it is written.
            await self._drain()
            if progress.phase is _Phase.ENTER:
                progress.phase, progress.after = _Phase.LEAVE, None
                return 0
            await self._finish(progress)
            return 0
        progress.after = customers[-1].customer_id
        progress.examined += len(customers)
        await self._drain(keep=self._writes_in_flight - 1)
        self._writing.start(self._settle_page(progress, customers))
        metrics.SEGMENT_RECOMPUTE_CUSTOMERS.inc(len(customers))
        return len(customers)

    async def _settle_page(self, progress: _Progress, customers: list[IndexedCustomer]) -> int:
        changed = await settle(
            self._search,
            self._membership,
            customers,
            segment_id=progress.job.segment_id,
            decide=progress.decide,
            version=progress.job.version,
            cause=progress.cause,
            cause_lsn=progress.job.version,
            occurred_at_us=progress.job.occurred_at_us,
        )
        progress.changed += changed
        return changed

    async def _finish(self, progress: _Progress) -> None:
        if progress.cause is EventCause.CHANGE:
            await self._membership.finish_job(progress.job)
        if progress.compiled is not None and progress.compiled.has_relative:
            earlier = self._evaluated_at.get(progress.key, progress.now_us)
            self._evaluated_at[progress.key] = min(earlier, progress.now_us)
        self._current = None
        log.info(
            "segment recompute done",
            extra={
                "project_id": progress.job.project_id,
                "segment_id": progress.job.segment_id,
                "version": progress.job.version,
                "examined": progress.examined,
                "changed": progress.changed,
                "seconds": round(time.monotonic() - progress.started, 3),
            },
        )


async def settle(
    search: ElasticSink,
    membership: MembershipStore,
    customers: list[IndexedCustomer],
    *,
    segment_id: str,
    decide: Callable[[IndexedCustomer], bool],
    version: int,
    cause: EventCause,
    cause_lsn: int,
    occurred_at_us: int,
) -> int:
    """Write the customers whose membership of ``segment_id`` differs from ``decide``:
    Redis first (record, counter, event), then their documents at the versions they have.
    Returns how many changed."""
    documents: list[tuple[Document, int]] = []
    updates: list[MembershipUpdate] = []
    for customer in customers:
        member = decide(customer)
        listed = set(customer.segment_ids)
        if member == (segment_id in listed):
            continue
        listed = listed | {segment_id} if member else listed - {segment_id}
        documents.append((_rewritten(customer, sorted(listed)), customer.version))
        updates.append(
            MembershipUpdate(
                project_id=customer.project_id,
                customer_id=customer.customer_id,
                version=version,
                mode=MembershipMode.SET_ONE,
                segment_id=segment_id,
                member=member,
                cause=cause,
                cause_lsn=cause_lsn,
                occurred_at_us=occurred_at_us,
            )
        )
    if not updates:
        return 0
    metrics.SEGMENT_TRANSITIONS.inc(await membership.apply(updates))
    result = await search.apply(documents, [])
    for refused in result.refused:
        # Rebuilt from the source on its next change; nothing else to do from here.
        log.warning(
            "segment recompute could not rewrite a customer",
            extra={"customer_id": refused.object_id, "reason": refused.reason},
        )
    return len(updates)


def _rewritten(customer: IndexedCustomer, segment_ids: list[str]) -> Document:
    """The customer's document with another membership: its indexed fields, the filter view
    included, copied from the ``_source`` it was found with (``IndexedCustomer.indexed_view``
    computes the view only for a document written before it was kept there)."""
    fields = {
        name: value
        for name, value in customer.source.items()
        if name not in (Field.ID, Field.PROJECT_ID, Field.DOC)
    }
    body = customer.body
    fields[Field.SEGMENT_IDS] = segment_ids
    fields[Field.FILTER_VIEW] = customer.indexed_view()
    return Document(ObjectKind.CUSTOMER, customer.project_id, customer.customer_id, body, fields)


class SegmentClock:
    """Keeps relative-date segments current as time passes, with no change in the data."""

    def __init__(
        self,
        search: ElasticSink,
        index: SegmentIndex,
        membership: MembershipStore,
        recompute: SegmentRecompute,
        *,
        page: int = 500,
        clock: Clock = wall_clock_us,
        owns: Callable[[str], bool] = lambda project_id: True,
    ) -> None:
        self._search = search
        self._index = index
        self._membership = membership
        self._owns = owns
        self._recompute = recompute
        self._page = page
        self._clock = clock
        self._last_us: int | None = None
        self.touched_last_tick = 0

    async def tick(self, watermark: int) -> int:
        """Decide every customer whose date crossed a relative bound since the last tick;
        returns how many customers were looked at. The first tick of a process schedules a
        full pass over each relative-date segment instead (time passed while it was down)."""
        now = self._clock()
        previous = self._last_us
        # Taken now: a job finishing after this point is seen by the next tick.
        evaluated = self._recompute.evaluated_at
        touched = 0
        await self._index.refresh_customers()
        async for segment in self._index.auto_segments():
            if not self._owns(segment.project_id):
                continue
            result = compiled_filter(
                segment.segment_id, orjson.dumps(segment.filter, option=orjson.OPT_SORT_KEYS)
            )
            if not isinstance(result, SegmentFilter) or not result.has_relative:
                continue
            if previous is None:
                self._recompute.add_clock_job(
                    SegmentJob(segment.project_id, segment.segment_id, watermark, now)
                )
                continue
            # A recompute that started before the last tick decided its customers as of its
            # start: those crossing since then are looked at too.
            since = min(previous, evaluated.get((segment.project_id, segment.segment_id), now))
            touched += await self._crossings(
                segment.project_id, segment.segment_id, result, since, now, watermark
            )
        # Only once every crossing is settled: a tick that failed part way is done again
        # from the same bound (settling a customer twice changes nothing).
        self._last_us = now
        self._recompute.forget_evaluations(evaluated)
        self.touched_last_tick = touched
        metrics.SEGMENT_TICK_CUSTOMERS.inc(touched)
        return touched

    async def _crossings(
        self,
        project_id: str,
        segment_id: str,
        compiled: SegmentFilter,
        previous: int,
        now: int,
        watermark: int,
    ) -> int:
        ranges: list[dict[str, Any]] = []
        for condition in compiled.relative_conditions():
            low, high = sorted((condition.bound_us(previous), condition.bound_us(now)))
            ranges.append(
                {
                    "range": {
                        f"{Field.FILTER_VIEW}.{ViewLeaf.T}": {
                            "gte": term(condition.path, instant_key(low)),
                            "lte": term(condition.path, instant_key(high)),
                        }
                    }
                }
            )
        if not ranges:
            return 0
        query = {
            "bool": {
                "filter": [{"term": {Field.PROJECT_ID: project_id}}],
                "should": ranges,
                "minimum_should_match": 1,
            }
        }

        def decide(customer: IndexedCustomer) -> bool:
            return customer.project_id == project_id and compiled.matches(customer.view(), now)

        touched = 0
        after: str | None = None
        while customers := await self._index.candidates(query, after=after, size=self._page):
            after = customers[-1].customer_id
            touched += len(customers)
            await settle(
                self._search,
                self._membership,
                customers,
                segment_id=segment_id,
                decide=decide,
                version=watermark,
                cause=EventCause.CLOCK,
                cause_lsn=watermark,
                occurred_at_us=now,
            )
        return touched
