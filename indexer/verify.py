"""Verification and repair: compare every object the source holds with both sinks.

It streams. Primary keys are read a page at a time (keyset paging); each page's documents are
rebuilt from the source exactly as the indexer builds them and compared with what
Elasticsearch holds (one realtime multi-get) and what Redis holds (one pipeline for objects
and aliases, one for membership records). Then both sinks are walked for objects the source
no longer holds (Elasticsearch pages in id order, Redis SCAN pages), each page checked against
the source in one query. Memory stays at a page plus a bounded set of suspects, whatever the
table size. The API object is compared through a stable digest (sorted-key JSON), which the
report prints for a document that differs.

A difference seen while changes flow may be one the indexer has not applied yet, so a first
sighting is a suspect only: suspects are checked again after ``settle`` seconds, in rounds of
at most :data:`SUSPECTS_PER_ROUND`, and only those that still differ with the same stored
versions are reported (and repaired); the others are counted as changing.

Repair rewrites what the source holds now through the sinks' versioned writes, at the
indexer's watermark W read before that source read. Every change at or below W was applied,
so the read saw it; a change above W reaches the sinks later at its own, higher version and
wins whichever write lands first. An object whose stored version is above W is being written
right now: it is left to the indexer and counted as changing. Membership records are
rewritten silently (no segment event): the events a lost record would emit again were
emitted when the changes happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg

from cache.errors import CacheDecodeError
from cache.readmodel.codec import api_key_from_data, decode_envelope, decode_membership
from cache.readmodel.documents import ALIAS_OF_KIND
from cache.readmodel.indices import Field, search_source
from cache.records import Envelope
from cache.types import ObjectKind
from indexer.changes import TouchedObjects
from indexer.documents import Document
from indexer.rebuild import TABLE_OF_KIND, ApiKeyRow, Rebuilder, RemovedObject, SinkWrites
from indexer.sinks.elastic import ElasticSink, StoredDocument, VersionedDelete
from indexer.sinks.redis import RedisSink
from indexer.source import DocumentSource
from indexer.verify_report import (
    API_KEY,
    EXAMPLES,
    KIND_ORDER,
    MOVED,
    NO_ROW,
    QUARANTINED,
    Finding,
    KindTally,
    Problem,
    Sink,
    VerifyReport,
    VerifyScope,
    digest,
)

PAGE = 500
SUSPECTS_PER_ROUND = 5000
ES, REDIS = Sink.ELASTICSEARCH, Sink.REDIS
MISSING, EXTRA, DIFFERENT = Problem.MISSING, Problem.EXTRA, Problem.DIFFERENT
Progress = Callable[[str, int], None]


def _as_stored(value: dict[str, Any]) -> Any:
    """What Elasticsearch gives back for a source the sink wrote (the sink encodes with
    orjson, so a round trip through it yields the same types)."""
    return orjson.loads(orjson.dumps(value))


@dataclass
class _Page:
    """A page checked: its findings, and the writes that would repair any of its objects."""

    findings: list[Finding] = field(default_factory=list)
    writes: SinkWrites = field(default_factory=SinkWrites)
    checked: int = 0


@dataclass(frozen=True, slots=True)
class _Extra:
    kind: ObjectKind
    object_id: str
    project_id: str
    sink: Sink


class Verifier:
    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        search: ElasticSink,
        cache: RedisSink,
        *,
        settle_seconds: float = 0.0,
        repair: bool = False,
        progress: Progress | None = None,
        examples: int = EXAMPLES,
    ) -> None:
        self._source = DocumentSource(conn)
        self._rebuilder = Rebuilder(self._source, emit_events=False)
        self._search = search
        self._cache = cache
        self._settle = settle_seconds
        self._repair = repair
        self._progress = progress or (lambda _kind, _count: None)
        self.report = VerifyReport(examples_kept=examples)
        self._suspects: dict[tuple[str, str, str, Sink, Problem, str], Finding] = {}
        self._members: Counter[tuple[str, str]] = Counter()
        # Each project's last segment event when the pass over customers first met it: a
        # counter is only judged if no customer of its project entered or left since.
        self._event_cursors: dict[str, str | None] = {}

    async def run(self, scope: VerifyScope) -> VerifyReport:
        await self._search.refresh()
        kinds = [kind for kind in KIND_ORDER if kind in scope.kinds]
        for kind in kinds:
            await self._check_source(kind, scope)
        if scope.api_keys:
            await self._check_source(API_KEY, scope)
        if scope.sample is None:
            await self._check_extras(kinds, scope.project_id)
            if scope.api_keys:
                await self._check_api_key_extras(scope.project_id)
        await self._confirm_suspects()
        if scope.sample is None and ObjectKind.CUSTOMER in kinds:
            await self._check_counts(scope.project_id)
        return self.report

    # -- the source's objects, a page at a time ---------------------------------------------

    async def _check_source(self, kind: str, scope: VerifyScope) -> None:
        table = "api_keys" if kind == API_KEY else TABLE_OF_KIND[ObjectKind(kind)]
        tally = self.report.tally(kind)
        # Two pages in flight: the next page's source read and document builds (this
        # process's CPU) overlap the current page's sink reads (the servers').
        in_flight: list[asyncio.Task[_Page]] = []
        try:
            async for ids in self._key_pages(table, scope):
                in_flight.append(
                    asyncio.create_task(self._check_page(kind, ids, count_members=True))
                )
                if len(in_flight) == 2:
                    await self._take(in_flight.pop(0), kind, tally)
            while in_flight:
                await self._take(in_flight.pop(0), kind, tally)
        finally:
            for task in in_flight:
                task.cancel()

    async def _take(self, task: asyncio.Task[_Page], kind: str, tally: KindTally) -> None:
        page = await task
        tally.checked += page.checked
        await self._suspect(page.findings)
        self._progress(kind, page.checked)

    async def _key_pages(self, table: str, scope: VerifyScope) -> AsyncIterator[list[str]]:
        if scope.sample is not None:
            ids = await self._source.sample_keys(
                table, project_id=scope.project_id, size=scope.sample
            )
            for start in range(0, len(ids), PAGE):
                yield ids[start : start + PAGE]
            return
        after: str | None = None
        while True:
            ids = await self._source.key_page(
                table, after=after, project_id=scope.project_id, limit=PAGE
            )
            if ids:
                yield ids
            if len(ids) < PAGE:
                return
            after = ids[-1]

    async def _check_page(self, kind: str, ids: Sequence[str], *, count_members: bool) -> _Page:
        if kind == API_KEY:
            return await self._check_api_keys(ids)
        object_kind = ObjectKind(kind)
        page = _Page()
        touched = TouchedObjects()
        for object_id in ids:
            touched.mark(object_kind, object_id, None, 0)
        expected: dict[str, Document] = {}
        quarantined: dict[str, str | None] = {}
        async for chunk in self._rebuilder.writes(touched):
            page.writes.documents.extend(chunk.documents)
            page.writes.memberships.extend(chunk.memberships)
            expected.update((document.object_id, document) for document, _ in chunk.documents)
            quarantined.update((row.object_id, row.project_id) for row in chunk.quarantined)
        page.checked = len(expected) + len(quarantined)
        # The three sinks' reads of a page go out together.
        stored, in_cache, in_membership = await asyncio.gather(
            self._search.stored(object_kind, ids),
            self._compare_cache(object_kind, expected, quarantined),
            self._compare_memberships(
                expected.values() if object_kind is ObjectKind.CUSTOMER else ()
            ),
        )
        page.findings.extend(_compare_search(object_kind, expected, quarantined, stored))
        page.findings.extend(in_cache)
        page.findings.extend(in_membership)
        if object_kind is ObjectKind.CUSTOMER and count_members:
            for project_id in {document.project_id for document in expected.values()}:
                if project_id not in self._event_cursors:
                    self._event_cursors[
                        project_id
                    ] = await self._cache.membership.last_event_cursor(project_id)
            for document in expected.values():
                for segment_id in document.fields[Field.SEGMENT_IDS]:
                    self._members[(document.project_id, segment_id)] += 1
        return page

    async def _compare_cache(
        self,
        kind: ObjectKind,
        expected: dict[str, Document],
        quarantined: dict[str, str | None],
    ) -> list[Finding]:
        layout = self._cache.store.layout
        spec = ALIAS_OF_KIND.get(kind)
        # (key, document, alias value): the object's key, or the alias key of its value.
        checks: list[tuple[str, Document, str | None]] = []
        for object_id, document in expected.items():
            checks.append((layout.object_key(document.project_id, kind, object_id), document, None))
            value = document.body.get(spec.field) if spec is not None else None
            if spec is not None and value is not None:
                key = layout.alias_key(document.project_id, spec.alias, str(value))
                checks.append((key, document, str(value)))
        left_out = [(object_id, project) for object_id, project in quarantined.items() if project]
        blobs = await self._cache.store.get_raw_many(
            [key for key, _, _ in checks]
            + [layout.object_key(str(project), kind, object_id) for object_id, project in left_out]
        )
        findings: list[Finding] = []
        for (key, document, alias_value), blob in zip(checks, blobs, strict=False):
            envelope, error = _decoded(blob)
            versions = () if envelope is None else (envelope.version,)
            part = "object" if alias_value is None else "alias"
            wanted = document.body if alias_value is None else document.object_id
            if error:
                problem, detail = Problem.DIFFERENT, error
            elif envelope is None or envelope.is_tombstone:
                problem, detail = Problem.MISSING, key
            elif envelope.data != wanted:
                problem = Problem.DIFFERENT
                detail = (
                    f"expected {digest(wanted)}, found {digest(envelope.data)}"
                    if alias_value is None
                    else f"{alias_value} -> {envelope.data!r}"
                )
            else:
                continue
            findings.append(
                Finding(
                    kind, document.object_id, document.project_id, REDIS, problem, part, detail,
                    versions,
                )
            )
        for (object_id, project), blob in zip(left_out, blobs[len(checks) :], strict=True):
            envelope, error = _decoded(blob)
            if error or (envelope is not None and not envelope.is_tombstone):
                versions = () if envelope is None else (envelope.version,)
                findings.append(
                    Finding(
                        kind, object_id, str(project), REDIS, EXTRA, detail=QUARANTINED,
                        versions=versions,
                    )
                )
        return findings

    async def _compare_memberships(self, documents: Iterable[Document]) -> list[Finding]:
        by_project: dict[str, list[Document]] = {}
        for document in documents:
            by_project.setdefault(document.project_id, []).append(document)
        findings: list[Finding] = []
        for project_id, group in by_project.items():
            blobs = await self._cache.membership.membership_blobs(
                project_id, [document.object_id for document in group]
            )
            for document, blob in zip(group, blobs, strict=True):
                wanted = frozenset(document.fields[Field.SEGMENT_IDS])
                versions: tuple[int, ...] = ()
                try:
                    record = None if blob is None else decode_membership(blob)
                except CacheDecodeError as error:
                    detail = str(error)
                else:
                    found = frozenset() if record is None else record[1]
                    if found == wanted:
                        continue
                    versions = () if record is None else (record[0],)
                    detail = f"{sorted(found)} != {sorted(wanted)}"
                findings.append(
                    Finding(
                        ObjectKind.CUSTOMER, document.object_id, project_id, REDIS, DIFFERENT,
                        "membership", detail, versions,
                    )
                )
        return findings

    async def _check_api_keys(self, ids: Sequence[str]) -> _Page:
        page = _Page()
        wanted_rows = [
            ApiKeyRow(
                app_id=row["id"],
                project_id=row["project_id"],
                token_sha256=row["token_sha256"],
                rate_limit_per_minute=row["rate_limit_per_minute"],
                revoked=row["revoked_at"] is not None,
            )
            for row in await self._source.api_keys_by_ids(ids)
        ]
        layout = self._cache.store.layout
        blobs = await self._cache.store.get_raw_many(
            [layout.app_key(wanted.app_id) for wanted in wanted_rows]
        )
        for wanted, blob in zip(wanted_rows, blobs, strict=True):
            page.checked += 1
            page.writes.api_keys.append((wanted, 0))
            envelope, error = _decoded(blob)
            versions = () if envelope is None else (envelope.version,)
            if error:
                problem, detail = Problem.DIFFERENT, error
            elif envelope is None or envelope.is_tombstone:
                problem, detail = Problem.MISSING, ""
            else:
                record = api_key_from_data(envelope.data)
                found = (
                    record.project_id,
                    record.token_sha256,
                    record.rate_limit_per_minute,
                    record.revoked,
                )
                expected = (
                    wanted.project_id,
                    wanted.token_sha256,
                    wanted.rate_limit_per_minute,
                    wanted.revoked,
                )
                if found == expected:
                    continue
                problem, detail = Problem.DIFFERENT, "record differs"
            page.findings.append(
                Finding(
                    API_KEY, wanted.app_id, wanted.project_id, REDIS, problem, detail=detail,
                    versions=versions,
                )
            )
        return page

    async def _check_api_key_extras(self, project_id: str | None) -> None:
        """A live API key record of an app the source no longer has (deleted) would still
        authenticate: an extra like any other."""
        async for app_ids in self._cache.store.app_id_pages():
            await self._suspect(await self._confirm_api_key_extras(app_ids, project_id))

    async def _confirm_api_key_extras(
        self, app_ids: Sequence[str], project_id: str | None
    ) -> list[Finding]:
        owners = await self._source.owners("api_keys", app_ids)
        orphans = [app_id for app_id in app_ids if app_id not in owners]
        layout = self._cache.store.layout
        blobs = await self._cache.store.get_raw_many([layout.app_key(a) for a in orphans])
        findings: list[Finding] = []
        for app_id, blob in zip(orphans, blobs, strict=True):
            envelope, error = _decoded(blob)
            if envelope is None or envelope.is_tombstone:
                if not error:
                    continue
                owner = ""
            else:
                owner = api_key_from_data(envelope.data).project_id
            if project_id is not None and owner != project_id:
                continue
            versions = () if envelope is None else (envelope.version,)
            findings.append(
                Finding(
                    API_KEY, app_id, owner, REDIS, EXTRA, detail=error or NO_ROW, versions=versions
                )
            )
        return findings

    # -- objects the source no longer holds ------------------------------------------------

    async def _check_extras(self, kinds: Sequence[ObjectKind], project_id: str | None) -> None:
        for kind in kinds:
            table = TABLE_OF_KIND[kind]
            async for hits in self._search.owner_pages(kind, project_id):
                owners = await self._source.owners(table, [object_id for object_id, _, _ in hits])
                await self._suspect(
                    Finding(kind, object_id, owner, ES, EXTRA, detail=NO_ROW, versions=(version,))
                    for object_id, owner, version in hits
                    if object_id not in owners
                )
        # One SCAN for every kind: a pass costs a walk of the whole keyspace.
        layout = self._cache.store.layout
        async for keys in self._cache.store.project_key_pages(project_id):
            by_kind: dict[ObjectKind, list[_Extra]] = {kind: [] for kind in kinds}
            for parsed in map(layout.object_of_key, keys):
                if parsed is not None and parsed[1] in by_kind:
                    owner, kind, object_id = parsed
                    by_kind[kind].append(_Extra(kind, object_id, owner, Sink.REDIS))
            for kind, extras in by_kind.items():
                await self._suspect(await self._confirm_extras(kind, extras))

    async def _confirm_extras(self, kind: ObjectKind, extras: Sequence[_Extra]) -> list[Finding]:
        """Which of these sink objects the source does not hold under that project (and are
        still live there)."""
        if not extras:
            return []
        owners = await self._source.owners(
            TABLE_OF_KIND[kind], sorted({extra.object_id for extra in extras})
        )
        orphans = [extra for extra in extras if owners.get(extra.object_id) != extra.project_id]
        findings: list[Finding] = []
        in_search = [extra for extra in orphans if extra.sink is Sink.ELASTICSEARCH]
        if in_search:
            stored = await self._search.stored(kind, [extra.object_id for extra in in_search])
            for extra in in_search:
                found = stored.get(extra.object_id)
                if found is not None and extra.object_id not in owners:
                    findings.append(
                        Finding(
                            kind, extra.object_id, extra.project_id, ES, EXTRA, detail=NO_ROW,
                            versions=(found.version,),
                        )
                    )
        in_cache = [extra for extra in orphans if extra.sink is Sink.REDIS]
        layout = self._cache.store.layout
        blobs = await self._cache.store.get_raw_many(
            [layout.object_key(extra.project_id, kind, extra.object_id) for extra in in_cache]
        )
        for extra, blob in zip(in_cache, blobs, strict=True):
            envelope, error = _decoded(blob)
            if error or (envelope is not None and not envelope.is_tombstone):
                owner = owners.get(extra.object_id)
                detail = NO_ROW if owner is None else f"{MOVED}{owner}"
                versions = () if envelope is None else (envelope.version,)
                findings.append(
                    Finding(
                        kind, extra.object_id, extra.project_id, REDIS, EXTRA,
                        detail=error or detail, versions=versions,
                    )
                )
        return findings

    # -- suspects, confirmed after the settle time, then repaired -----------------------------

    async def _suspect(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            self._suspects.setdefault(finding.key, finding)
        if len(self._suspects) >= SUSPECTS_PER_ROUND:
            await self._confirm_suspects()

    async def _confirm_suspects(self) -> None:
        if not self._suspects:
            return
        suspects, self._suspects = self._suspects, {}
        await self._between_looks()
        watermark = await self._cache.get_watermark() if self._repair else None
        in_pages: dict[str, set[str]] = {}
        extras: dict[ObjectKind, set[_Extra]] = {}
        api_key_extras: set[str] = set()
        for finding in suspects.values():
            if finding.problem is Problem.EXTRA and finding.kind == API_KEY:
                api_key_extras.add(finding.object_id)
            elif finding.problem is Problem.EXTRA and finding.detail != QUARANTINED:
                kind = ObjectKind(finding.kind)
                extras.setdefault(kind, set()).add(
                    _Extra(kind, finding.object_id, finding.project_id, finding.sink)
                )
            else:
                in_pages.setdefault(finding.kind, set()).add(finding.object_id)
        for kind_name, object_ids in in_pages.items():
            ordered = sorted(object_ids)
            for start in range(0, len(ordered), PAGE):
                page = await self._check_page(
                    kind_name, ordered[start : start + PAGE], count_members=False
                )
                await self._settle_findings(suspects, page.findings, page.writes, watermark)
        ordered_keys = sorted(api_key_extras)
        for start in range(0, len(ordered_keys), PAGE):
            findings = await self._confirm_api_key_extras(ordered_keys[start : start + PAGE], None)
            await self._settle_findings(suspects, findings, SinkWrites(), watermark)
        for extra_kind, found in extras.items():
            ordered_extras = sorted(found, key=lambda extra: (extra.object_id, extra.sink))
            for start in range(0, len(ordered_extras), PAGE):
                findings = await self._confirm_extras(
                    extra_kind, ordered_extras[start : start + PAGE]
                )
                await self._settle_findings(suspects, findings, SinkWrites(), watermark)

    async def _between_looks(self) -> None:
        """Give a change in flight time to reach the sinks (a test steps the indexer here)."""
        if self._settle > 0:
            await asyncio.sleep(self._settle)

    async def _settle_findings(
        self,
        suspects: dict[tuple[str, str, str, Sink, Problem, str], Finding],
        findings: list[Finding],
        writes: SinkWrites,
        watermark: int | None,
    ) -> None:
        confirmed: list[Finding] = []
        for finding in findings:
            first = suspects.get(finding.key)
            if first is None:
                continue  # new since the first look: the next verify sees it if it stays
            if first.versions != finding.versions:
                self.report.tally(finding.kind).changing += 1
                continue
            confirmed.append(finding)
            self.report.differ(finding)
        if self._repair and confirmed:
            await self._repair_findings(confirmed, writes, watermark)

    async def _repair_findings(
        self, findings: list[Finding], writes: SinkWrites, watermark: int | None
    ) -> None:
        if watermark is None:
            raise RepairRefused("no watermark in Redis: the indexer has not loaded yet")
        repair = SinkWrites()
        fixed: dict[tuple[str, str], Finding] = {}
        for finding in findings:
            if any(version > watermark for version in finding.versions):
                self.report.tally(finding.kind).changing += 1
                continue
            fixed.setdefault((finding.kind, finding.object_id), finding)
            if finding.problem is Problem.EXTRA and finding.kind == API_KEY:
                repair.removed_api_keys.append((finding.object_id, finding.project_id, watermark))
            elif finding.problem is Problem.EXTRA:
                removal = RemovedObject(
                    ObjectKind(finding.kind), finding.project_id, finding.object_id, watermark
                )
                # An object still in the source under another project keeps its search
                # document (one per id): only the key it left behind goes.
                moved = finding.sink is Sink.REDIS and finding.detail.startswith(MOVED)
                (repair.moved if moved else repair.removed).append(removal)
        wanted = {(kind, object_id) for kind, object_id in fixed}
        for document, _ in writes.documents:
            if (document.kind.value, document.object_id) in wanted:
                repair.documents.append((document, watermark))
        for update in writes.memberships:
            if (ObjectKind.CUSTOMER.value, update.customer_id) in wanted:
                repair.memberships.append(
                    dataclasses.replace(update, version=watermark, cause_lsn=watermark, emit=False)
                )
        for row, _ in writes.api_keys:
            if (API_KEY, row.app_id) in wanted:
                repair.api_keys.append((row, watermark))
        deletes = [VersionedDelete(r.kind, r.object_id, r.version) for r in repair.removed]
        result, _ = await asyncio.gather(
            self._search.apply(repair.documents, deletes), self._cache.apply(repair)
        )
        refused = {(r.kind.value, r.object_id) for r in result.refused}
        for kind, object_id in fixed:
            if (kind, object_id) not in refused:
                self.report.tally(kind).repaired += 1

    # -- segment counters ----------------------------------------------------------------------

    async def _check_counts(self, project_id: str | None) -> None:
        """Each segment's member counter equals the customers whose documents list it
        (counted by the pass over customers; checked last, once membership was repaired).
        A project whose customers entered or left segments since the pass met it is not
        judged: its count is changing."""
        membership = self._cache.membership
        async for ids in self._key_pages("segments", VerifyScope(project_id=project_id)):
            by_project: dict[str, list[str]] = {}
            for row in await self._source.rows_by_ids(ObjectKind.SEGMENT, ids):
                by_project.setdefault(row["project_id"], []).append(row["id"])
            for project, segment_ids in by_project.items():
                counts = await membership.counts(project, segment_ids)
                quiet = await membership.last_event_cursor(project) == self._event_cursors.get(
                    project
                )
                tally = self.report.tally(ObjectKind.SEGMENT)
                for segment_id in segment_ids:
                    wanted = self._members[(project, segment_id)]
                    observed = counts[segment_id]
                    if observed == wanted:
                        continue
                    if not quiet:
                        tally.changing += 1
                        continue
                    self.report.differ(
                        Finding(
                            ObjectKind.SEGMENT, segment_id, project, REDIS, DIFFERENT, "count",
                            f"{observed} != {wanted}",
                        )
                    )
                    if self._repair:
                        fixed = await membership.set_count_if(project, segment_id, observed, wanted)
                        if fixed:
                            tally.repaired += 1
                        else:
                            tally.changing += 1


class RepairRefused(Exception):
    """Repair cannot run (no watermark to version its writes with)."""


def _compare_search(
    kind: ObjectKind,
    expected: dict[str, Document],
    quarantined: dict[str, str | None],
    stored: dict[str, StoredDocument],
) -> list[Finding]:
    findings: list[Finding] = []
    for object_id, document in expected.items():
        found = stored.get(object_id)
        if found is None:
            findings.append(
                Finding(kind, object_id, document.project_id, ES, MISSING)
            )
            continue
        wanted = _as_stored(
            search_source(object_id, document.project_id, document.body, document.fields)
        )
        if found.source != wanted:
            detail = (
                f"expected {digest(document.body)}, found {digest(found.source.get(Field.DOC))}"
            )
            if found.source.get(Field.DOC) == wanted[Field.DOC]:
                fields = sorted(
                    name
                    for name in wanted.keys() | found.source.keys()
                    if found.source.get(name) != wanted.get(name)
                )
                detail = f"fields {', '.join(fields)}"
            findings.append(
                Finding(
                    kind, object_id, document.project_id, ES, DIFFERENT, detail=detail,
                    versions=(found.version,),
                )
            )
    for object_id, project_id in quarantined.items():
        found = stored.get(object_id)
        if found is not None:
            findings.append(
                Finding(
                    kind, object_id, project_id or "", ES, EXTRA, detail=QUARANTINED,
                    versions=(found.version,),
                )
            )
    return findings


def _decoded(blob: bytes | None) -> tuple[Envelope | None, str]:
    if blob is None:
        return None, ""
    try:
        return decode_envelope(blob), ""
    except CacheDecodeError as error:
        return None, f"undecodable: {error}"


async def verify(
    conn: psycopg.AsyncConnection[Any], search: ElasticSink, cache: RedisSink
) -> VerifyReport:
    """Compare the source (read on ``conn``) with both sinks; call once they caught up."""
    return await Verifier(conn, search, cache).run(VerifyScope())


__all__ = ["RepairRefused", "Verifier", "verify"]
