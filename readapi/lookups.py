"""Object lookups through the layers: L1 (in process) → L2 (Redis) → Elasticsearch.

L1 holds, per Redis key, the encoded JSON body ready to write (or the knowledge that the
object is absent); it is filled only through ``begin_fill``/``install``, so a value read
before an invalidation arrived is never installed after it. L2 misses read Elasticsearch with
a realtime GET whose ``_version`` is the commit LSN, and fill Redis through the same
versioned script the indexer writes with: a fill racing a newer CDC write cannot go back.

Absent objects leave a versioned tombstone in Redis whose version is the watermark read
before the lookup began: every write committed at or before it was already visible, and any
later write of the object has a higher LSN and replaces the tombstone. Never a wall-clock
version. These tombstones expire after ``miss_ttl_seconds`` (``LOYALTY_MISS_TTL_SECONDS``),
not the indexer's long delete TTL: ids are the client's choice, and such a tombstone only
caches absence at a version, so losing it early costs a read, never a wrong answer. It never
shortens an indexer's delete tombstone either: a fill happens only after Redis held nothing
for the key, and a delete written meanwhile has a version above the watermark read before.

Secondary identifiers (voucher code, customer source_id) resolve through the alias envelopes
the indexer keeps. An alias may be stale, so the target's code (or source_id) must equal what
was asked; otherwise Elasticsearch is asked with a term query, within the project.

Concurrent misses of one key share one read (single-flight), per watermark value: a request
that waited for ``X-Min-Watermark`` never joins a read that began before that watermark.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson

from cache.errors import CacheDecodeError, CacheError, CacheUnavailable, SearchUnavailable
from cache.l1 import L1Cache
from cache.readmodel.codec import decode_served
from cache.readmodel.documents import ALIAS_OF_KIND, ALIAS_SPECS, DOCUMENT_SCHEMA, AliasKind
from cache.readmodel.indices import Field
from cache.readmodel.keys import ProjectKeys
from cache.records import Envelope, Served
from cache.singleflight import SingleFlight
from cache.store import CacheStore
from cache.types import ObjectKind
from cache.watermark import WatermarkHolder
from readapi.dependency import DependencyGate
from readapi.elastic import SearchReader
from readapi.metrics import ApiMetrics

log = logging.getLogger(__name__)

Hook = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CachedObject:
    """An object as L1 keeps it: ``body`` is the JSON to answer, ``None`` when absent;
    ``match`` is its code or source_id, to check aliases against."""

    body: bytes | None
    match: str | None
    version: int
    object_id: str | None = None


@dataclass(frozen=True, slots=True)
class CachedAlias:
    """An alias as L1 keeps it: the target id, ``None`` when no object holds the value."""

    target: str | None
    version: int


ABSENT = CachedObject(None, None, 0)


@dataclass(slots=True)
class LookupHooks:
    """Test hooks, awaited with the Redis key concerned: ``after_read`` between the read of
    L2 or Elasticsearch and the fill/install (a voucher's or customer's one-call read names
    its alias key), ``before_source`` before an Elasticsearch read."""

    after_read: Hook | None = None
    before_source: Hook | None = None


class ObjectLookups:
    def __init__(
        self,
        store: CacheStore,
        search: SearchReader,
        l1: L1Cache[Any],
        watermark: WatermarkHolder,
        redis_gate: DependencyGate,
        metrics: ApiMetrics,
        *,
        use_l1: bool = True,
        miss_ttl_seconds: float | None = None,
    ) -> None:
        """``miss_ttl_seconds``: expiry of the tombstones of misses (None: the store's
        tombstone TTL)."""
        self._store = store
        self._layout = store.layout
        self._search = search
        self._l1 = l1
        self._watermark = watermark
        self._redis_gate = redis_gate
        self._metrics = metrics
        self._layers = metrics.requests.layers
        self._use_l1 = use_l1
        self._miss_ttl = miss_ttl_seconds
        self._flights: SingleFlight[tuple[str, int | None], Any] = SingleFlight()
        self.hooks = LookupHooks()

    @property
    def flights(self) -> SingleFlight[tuple[str, int | None], Any]:
        return self._flights

    # -- per endpoint -------------------------------------------------------------------------

    def voucher_in_l1(self, keys: ProjectKeys, code_or_id: str) -> bytes | None:
        """The voucher's body when L1 answers alone (no I/O), else None: then await
        ``voucher``. ``keys``: the caller's project key heads. The hot path."""
        if not self._use_l1:
            return None
        l1 = self._l1
        alias = l1.get(keys.voucher_code + code_or_id)
        if alias is None:
            return None
        target = alias.value.target
        entry = l1.get(keys.voucher + (code_or_id if target is None else target))
        if entry is None:
            return None
        value: CachedObject = entry.value
        if target is not None and value.match != code_or_id:
            return None  # a stale alias: the full lookup decides
        # Only found objects: a cached absence goes the full way (it answers 404 there).
        if value.body is not None:
            self._layers[0] += 1
        return value.body

    def voucher(
        self, keys: ProjectKeys, project_id: str, code_or_id: str, *, fresh: bool
    ) -> Awaitable[CachedObject]:
        """A code match wins over an id match."""
        return self._id_or_alias(
            ObjectKind.VOUCHER, AliasKind.VOUCHER_CODE, keys.voucher, keys.voucher_code,
            project_id, code_or_id, fresh=fresh, id_first=False,
        )

    def customer(
        self, keys: ProjectKeys, project_id: str, id_or_source: str, *, fresh: bool
    ) -> Awaitable[CachedObject]:
        """An id match wins over a source_id match."""
        return self._id_or_alias(
            ObjectKind.CUSTOMER, AliasKind.CUSTOMER_SOURCE_ID, keys.customer,
            keys.customer_source_id, project_id, id_or_source, fresh=fresh, id_first=True,
        )

    async def _id_or_alias(
        self, kind: ObjectKind, alias: AliasKind, head: str, alias_head: str, project_id: str,
        value: str, *, fresh: bool, id_first: bool,
    ) -> CachedObject:
        """The object ``value`` names as an id or as an alias, the id winning when
        ``id_first``, else the alias: L1, then one Redis call, then the layered reads."""
        id_key, alias_key = head + value, alias_head + value
        if self._use_l1 and not fresh:
            cached = self._pair_in_l1(id_key, alias_key, head, value, by_id=id_first)
            if cached is not None:
                return cached
        found = await self._pair_from_redis(id_key, alias_key, head, value, by_id=id_first)
        if found is not None:
            return found
        if id_first:
            found = await self.by_id(kind, project_id, value, fresh=fresh)
            if found.body is not None:
                return found
            return await self._by_alias(alias, project_id, value, fresh)
        found = await self._by_alias(alias, project_id, value, fresh)
        if found.body is not None:
            return found
        return await self.by_id(kind, project_id, value, fresh=fresh)

    # -- a value that is an id or an alias: L1, then one Redis call ---------------------------

    def _pair_in_l1(
        self, id_key: str, alias_key: str, head: str, value: str, *, by_id: bool
    ) -> CachedObject | None:
        """The answer L1 alone gives for ``value`` as an id and as an alias (``by_id``: the
        id wins), or ``None`` when it cannot decide."""
        l1 = self._l1
        as_id = l1.get(id_key)
        if by_id:
            if as_id is None:
                return None  # the id decides first, and L1 does not know it
            if as_id.value.body is not None:
                self._layers[0] += 1
                return cast(CachedObject, as_id.value)
        alias = l1.get(alias_key)
        if alias is None:
            return None
        target = alias.value.target
        if target is not None:
            entry = l1.get(head + target)
            if entry is None or entry.value.match != value:
                return None  # unknown here, or a stale alias: the full lookup decides
            self._layers[0] += 1
            return cast(CachedObject, entry.value)
        # No object holds the value as an alias: the id decides, if L1 knows it.
        if as_id is None:
            return None
        self._layers[0] += 1
        return cast(CachedObject, as_id.value)

    async def _pair_from_redis(
        self, id_key: str, alias_key: str, head: str, value: str, *, by_id: bool
    ) -> CachedObject | None:
        """The answer Redis gives for ``value`` as an id and as an alias, read in one call
        (``CacheStore.lookup``), with what it read installed in L1; ``None`` when Redis does
        not decide it (an outage, a key it lacks, a stale alias): the layered reads do.

        No single-flight here: the shared read would cost a task and a future to save one
        call that costs the same."""
        gate = self._redis_gate
        if not gate.should_try():
            return None
        token = self._l1.begin_fill(alias_key)
        try:
            stored_id, stored_alias, stored_target = await self._store.lookup(
                id_key, alias_key, head
            )
            as_id = None if stored_id is None else decode_served(stored_id)
            alias = None if stored_alias is None else decode_served(stored_alias)
            target = None if stored_target is None else decode_served(stored_target)
        except CacheUnavailable as error:
            gate.failed(error)
            self._metrics.dependency_errors.labels("redis").inc()
            return None
        except CacheDecodeError:
            return None  # not something the indexer wrote: the layered reads decide
        except CacheError as error:
            log.error("redis refused a lookup", extra={"key": id_key, "error": str(error)})
            return None
        gate.succeeded()
        if self.hooks.after_read is not None:
            await self.hooks.after_read(alias_key)
        id_object = None if as_id is None else _served_object(as_id, value)
        if id_object is not None:
            self._install(id_key, id_object, token)
        if by_id:
            if id_object is None:
                return None  # the id decides first, and Redis does not know it
            if id_object.body is not None:
                self._layers[1] += 1
                return id_object
        if alias is None:
            return None
        if alias.body is not None:
            return None  # an object where an alias belongs: not ours to serve
        self._install(alias_key, CachedAlias(alias.target, alias.version), token)
        if alias.target is not None:
            if target is None:
                return None
            found = _served_object(target, alias.target)
            self._install(head + alias.target, found, token)
            if found.body is None or found.match != value:
                return None
            self._layers[1] += 1
            return found
        if id_object is None:
            return None
        self._layers[1] += 1
        return id_object

    async def by_id(
        self, kind: ObjectKind, project_id: str, object_id: str, *, fresh: bool
    ) -> CachedObject:
        key = self._layout.object_key(project_id, kind, object_id)
        if self._use_l1 and not fresh:
            entry = self._l1.get(key)
            if entry is not None:
                self._layers[0] += 1
                value: CachedObject = entry.value
                return value
        result: CachedObject = await self._shared(
            key, lambda: self._load_object(kind, project_id, object_id, key)
        )
        return result

    # -- the layered reads --------------------------------------------------------------------

    async def _shared(self, key: str, load: Callable[[], Awaitable[Any]]) -> Any:
        async def compute() -> Any:
            return await load()

        return await self._flights.do((key, self._watermark.value), compute)

    async def _load_object(
        self, kind: ObjectKind, project_id: str, object_id: str, key: str
    ) -> CachedObject:
        token = self._l1.begin_fill(key)
        before = self._watermark.value
        redis_answered, envelope = await self._read_l2(key)
        if envelope is not None and (envelope.is_tombstone or _readable(envelope)):
            self._layers[1] += 1
            result = _object_of(kind, envelope)
            await self._hook_after_read(key)
            self._install(key, result, token)
            return result
        if self.hooks.before_source is not None:
            await self.hooks.before_source(key)
        found = await self._search.get(kind, object_id)
        self._layers[2] += 1
        if found is None or found.source.get(Field.PROJECT_ID) != project_id:
            # Another project's object is absent for this one, exactly like a missing one.
            await self._hook_after_read(key)
            if before is None:
                return ABSENT
            result = CachedObject(None, None, before)
            if redis_answered and not await self._fill(key, Envelope.tombstone(before)):
                return result  # Redis holds something newer: install nothing
            self._install(key, result, token)
            return result
        body = found.source.get(Field.DOC)
        if not isinstance(body, dict):
            raise SearchUnavailable(f"document {object_id} has no API object")
        result = _present(kind, body, found.version)
        await self._hook_after_read(key)
        if redis_answered and not await self._fill(
            key, Envelope(found.version, DOCUMENT_SCHEMA, body)
        ):
            return result
        self._install(key, result, token)
        return result

    async def _by_alias(
        self, alias: AliasKind, project_id: str, value: str, fresh: bool
    ) -> CachedObject:
        spec = ALIAS_SPECS[alias]
        field, kind = spec.search_field, spec.kind
        key = self._layout.alias_key(project_id, alias, value)
        target: CachedAlias | None = None
        if self._use_l1 and not fresh:
            entry = self._l1.get(key)
            if entry is not None:
                target = entry.value
        if target is None:
            target = await self._shared(
                key, lambda: self._load_alias(alias, kind, field, project_id, value, key)
            )
        if target.target is None:
            return ABSENT
        found = await self.by_id(kind, project_id, target.target, fresh=fresh)
        if found.body is not None and found.match == value:
            return found
        # A stale alias (the object moved on): ask the index which object holds the value.
        hit = await self._search.find_one(kind, project_id, field, value)
        if hit is None:
            return ABSENT
        found = await self.by_id(kind, project_id, hit[0], fresh=fresh)
        return found if found.body is not None and found.match == value else ABSENT

    async def _load_alias(
        self, alias: AliasKind, kind: ObjectKind, field: str, project_id: str, value: str,
        key: str,
    ) -> CachedAlias:
        token = self._l1.begin_fill(key)
        before = self._watermark.value
        redis_answered, envelope = await self._read_l2(key)
        if envelope is not None:
            data = envelope.data
            result = CachedAlias(data if isinstance(data, str) else None, envelope.version)
            await self._hook_after_read(key)
            self._install(key, result, token)
            return result
        if self.hooks.before_source is not None:
            await self.hooks.before_source(key)
        hit = await self._search.find_one(kind, project_id, field, value)
        await self._hook_after_read(key)
        if hit is not None:
            # Filled at the version of the document the search saw: a newer alias or
            # tombstone the indexer writes is newer still, and the target is checked anyway.
            result = CachedAlias(hit[0], hit[1])
            if redis_answered and await self._fill(
                key, Envelope(hit[1], DOCUMENT_SCHEMA, hit[0])
            ):
                self._install(key, result, token)
            return result
        if before is None or not redis_answered:
            # Without Redis's "no alias" the search alone (not realtime) proves nothing.
            return CachedAlias(None, 0)
        # Redis answered "no alias" after the watermark ``before`` was published, and the
        # indexer writes an alias before publishing the watermark that covers it: no object
        # held the value at ``before``, and a later one writes a newer alias over this.
        result = CachedAlias(None, before)
        if not await self._fill(key, Envelope.tombstone(before)):
            return result
        self._install(key, result, token)
        return result

    async def _read_l2(self, key: str) -> tuple[bool, Envelope | None]:
        """(whether Redis answered, the envelope it holds); an outage reads as a miss."""
        if not self._redis_gate.should_try():
            return False, None
        try:
            envelope = await self._store.get(key)
        except CacheUnavailable as error:
            self._redis_gate.failed(error)
            self._metrics.dependency_errors.labels("redis").inc()
            return False, None
        except CacheDecodeError:
            return True, None  # not something the indexer wrote: read the source
        except CacheError as error:
            # Redis answered, refusing a command of ours: a bug, not an outage.
            log.error("redis refused a read", extra={"key": key, "error": str(error)})
            return False, None
        self._redis_gate.succeeded()
        return True, envelope

    async def _fill(self, key: str, envelope: Envelope) -> bool:
        """Versioned write to Redis; whether this version is now the one stored. A
        tombstone (a miss) expires after the miss TTL."""
        ttl = self._miss_ttl if envelope.is_tombstone else None
        try:
            written = await self._store.fill(key, envelope, ttl_seconds=ttl)
        except CacheUnavailable as error:
            self._redis_gate.failed(error)
            self._metrics.dependency_errors.labels("redis").inc()
            return False
        except CacheError as error:
            log.error("redis refused a fill", extra={"key": key, "error": str(error)})
            return False
        self._metrics.fills.labels("written" if written else "kept").inc()
        return written

    def _install(self, key: str, value: CachedObject | CachedAlias, token: int) -> None:
        if self._use_l1:
            self._l1.install(key, value, value.version, token, _payload_size(value))

    async def _hook_after_read(self, key: str) -> None:
        if self.hooks.after_read is not None:
            await self.hooks.after_read(key)


def _present(kind: ObjectKind, body: dict[str, Any], version: int) -> CachedObject:
    alias = ALIAS_OF_KIND.get(kind)
    match: Any = None if alias is None else body.get(alias.field)
    object_id = body.get("id")
    return CachedObject(
        orjson.dumps(body),
        match if isinstance(match, str) else None,
        version,
        object_id if isinstance(object_id, str) else None,
    )


def _readable(envelope: Envelope) -> bool:
    return envelope.schema == DOCUMENT_SCHEMA and isinstance(envelope.data, dict)


def _object_of(kind: ObjectKind, envelope: Envelope) -> CachedObject:
    if envelope.is_tombstone:
        return CachedObject(None, None, envelope.version)
    return _present(kind, envelope.data, envelope.version)


def _served_object(served: Served, object_id: str) -> CachedObject:
    """An object's stored value as L1 keeps it (an alias's value is no object: absent)."""
    if served.body is None:
        return CachedObject(None, None, served.version)
    return CachedObject(served.body, served.match, served.version, object_id)


def _payload_size(value: CachedObject | CachedAlias) -> int:
    """The bytes an L1 entry holds beyond what ``L1Cache`` charges for any entry: the body
    and the short strings beside it (an id or code: their text, ~50 bytes of header each)."""
    if isinstance(value, CachedAlias):
        return 0 if value.target is None else 50 + len(value.target)
    size = 0 if value.body is None else len(value.body)
    for text in (value.match, value.object_id):
        if text is not None:
            size += 50 + len(text)
    return size
