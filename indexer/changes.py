"""Which documents a batch of row changes touches (fan-out), as pure logic.

The indexer never patches a document from a change: it marks the objects a change can
affect and rebuilds them from the source, so that every derived value is recomputed and a
replayed change cannot double count. Each mark carries the commit LSN of the newest change
that touched the object: that is the version its rebuilt document is written with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from cache.types import ObjectKind
from indexer.tables import CONTRACT_TABLES

LOYALTY_CARD = "LOYALTY_CARD"
AUTO_UPDATE = "auto-update"
STATIC = "static"


class RowChangeLike(Protocol):
    """What this module reads of a decoded change (see ``indexer.pgoutput.RowChange``)."""

    @property
    def op(self) -> str: ...
    @property
    def table(self) -> str: ...
    @property
    def new(self) -> Mapping[str, Any] | None: ...
    @property
    def old(self) -> Mapping[str, Any] | None: ...


@dataclass(slots=True)
class Mark:
    project_id: str | None
    version: int
    # Every project the object's own rows showed it in (old and new rows of its table): a
    # project other than the rebuilt row's lost the object (``update ... set project_id``),
    # and its keys there get versioned tombstones.
    projects: set[str] = field(default_factory=set)


@dataclass(slots=True)
class TouchedObjects:
    """Everything one batch asks the document builder to rebuild or remove."""

    objects: dict[tuple[ObjectKind, str], Mark] = field(default_factory=dict)
    api_keys: dict[str, Mark] = field(default_factory=dict)
    # Alias values a change took away (old voucher codes, old customer source ids): their
    # alias keys get a versioned tombstone unless the rebuilt documents claim them again.
    removed_codes: dict[tuple[str, str], int] = field(default_factory=dict)
    removed_source_ids: dict[tuple[str, str], int] = field(default_factory=dict)
    # Fan-out that needs the source to resolve: campaigns whose name every voucher shows.
    renamed_campaigns: dict[str, int] = field(default_factory=dict)
    # Segments whose membership must be recomputed (created, deleted, filter or type or
    # project changed), by (project id, segment id): the newest change's version. The
    # recompute reads the customer documents in the index, not the source
    # (``indexer.recompute``).
    resegmented: dict[tuple[str, str], int] = field(default_factory=dict)
    # Static segments whose membership inputs changed: their segment_members customers are
    # rebuilt (rows a client left while the segment was auto-update count from now on).
    static_segments: dict[str, int] = field(default_factory=dict)
    truncated_tables: dict[str, int] = field(default_factory=dict)
    # Commit time (epoch microseconds) of each commit LSN the batch holds: when the
    # membership transitions a change causes occurred.
    commit_times: dict[int, int] = field(default_factory=dict)

    def mark(
        self, kind: ObjectKind, object_id: Any, project_id: Any, version: int, *, own: bool = False
    ) -> None:
        """Rebuild an object at ``version`` (at least). ``own``: the project comes from the
        object's own row (not from a row that references it), so it held the object."""
        if object_id is None:
            return
        key = (kind, str(object_id))
        project = _text(project_id)
        current = self.objects.get(key)
        if current is None:
            current = self.objects[key] = Mark(project, version)
        else:
            current.version = max(current.version, version)
            if current.project_id is None:
                current.project_id = project
        if own and project is not None:
            current.projects.add(project)

    def mark_api_key(self, app_id: Any, project_id: Any, version: int) -> None:
        current = self.api_keys.get(str(app_id))
        if current is None:
            self.api_keys[str(app_id)] = Mark(_text(project_id), version)
        else:
            current.version = max(current.version, version)

    def __bool__(self) -> bool:
        return bool(
            self.objects
            or self.api_keys
            or self.removed_codes
            or self.removed_source_ids
            or self.renamed_campaigns
            or self.resegmented
            or self.static_segments
            or self.truncated_tables
        )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _get(row: Mapping[str, Any] | None, column: str) -> Any:
    return None if row is None else row.get(column)


def _changed(change: RowChangeLike, column: str) -> bool:
    """True when the column may differ between the old and the new row.

    Without an old row (a table whose replica identity is not FULL) nothing proves the
    value unchanged, so the answer is the safe one.
    """
    if change.op != "update":
        return True
    if change.old is None or change.new is None:
        return True
    return bool(_get(change.old, column) != _get(change.new, column))


class TransactionLike(Protocol):
    """What folding a decoded transaction needs: ``indexer.pgoutput.Transaction``."""

    @property
    def commit_lsn(self) -> int: ...
    @property
    def commit_time(self) -> datetime: ...
    @property
    def changes(self) -> Sequence[RowChangeLike]: ...


def touched_by(transactions: Iterable[TransactionLike]) -> TouchedObjects:
    """The objects whole transactions (or parts of one) touch, each change at its commit's
    LSN, with each commit's time (when the membership transitions it causes occurred)."""
    touched = TouchedObjects()
    for transaction in transactions:
        lsn = int(transaction.commit_lsn)
        touched.commit_times[lsn] = int(transaction.commit_time.timestamp() * 1_000_000)
        collect_touched(((lsn, change) for change in transaction.changes), touched)
    return touched


def collect_touched(
    changes: Iterable[tuple[int, RowChangeLike]], into: TouchedObjects | None = None
) -> TouchedObjects:
    """Fold ``(commit_lsn, change)`` pairs, in commit order, into the objects they touch."""
    touched = into if into is not None else TouchedObjects()
    for version, change in changes:
        handler = _HANDLERS.get(change.table)
        if change.op == "truncate":
            touched.truncated_tables[change.table] = version
        elif handler is not None:
            handler(touched, change, version)
    return touched


def _rows(change: RowChangeLike) -> tuple[Mapping[str, Any], ...]:
    return tuple(row for row in (change.old, change.new) if row is not None)


def _value_taken_away(change: RowChangeLike, field: str) -> tuple[str, str] | None:
    """(project id, old value) when the change takes the row's ``field`` value away from
    its project (a delete, an update to another value or to another project): the alias
    of that value in that project must go."""
    old = change.old
    if old is None or old.get(field) is None:
        return None
    if change.op != "delete" and not (_changed(change, field) or _changed(change, "project_id")):
        return None
    return str(old["project_id"]), str(old[field])


def _on_voucher(touched: TouchedObjects, change: RowChangeLike, version: int) -> None:
    rows = _rows(change)
    for row in rows:
        touched.mark(ObjectKind.VOUCHER, row.get("id"), row.get("project_id"), version, own=True)
    removed = _value_taken_away(change, "code")
    if removed is not None:
        touched.removed_codes[removed] = version
    if _changed(change, "campaign_id"):
        for row in rows:
            touched.mark(
                ObjectKind.CAMPAIGN, row.get("campaign_id"), row.get("project_id"), version
            )
    # A holder's loyalty points are the sum of the balances of the cards it holds.
    if any(row.get("type") == LOYALTY_CARD for row in rows) or change.old is None:
        for row in rows:
            touched.mark(ObjectKind.CUSTOMER, row.get("holder_id"), row.get("project_id"), version)


def _on_customer(touched: TouchedObjects, change: RowChangeLike, version: int) -> None:
    for row in _rows(change):
        touched.mark(ObjectKind.CUSTOMER, row.get("id"), row.get("project_id"), version, own=True)
    removed = _value_taken_away(change, "source_id")
    if removed is not None:
        touched.removed_source_ids[removed] = version
    # An auto-update segment's members are the customers matching its filter: only the
    # changed customer can enter or leave one, and its rebuild evaluates every filter.


def _on_campaign(touched: TouchedObjects, change: RowChangeLike, version: int) -> None:
    for row in _rows(change):
        touched.mark(ObjectKind.CAMPAIGN, row.get("id"), row.get("project_id"), version, own=True)
    if change.op == "update" and _changed(change, "name") and change.new is not None:
        campaign_id = str(change.new["id"])
        touched.renamed_campaigns[campaign_id] = max(
            version, touched.renamed_campaigns.get(campaign_id, 0)
        )


def _on_redemption(touched: TouchedObjects, change: RowChangeLike, version: int) -> None:
    for row in _rows(change):
        touched.mark(ObjectKind.CUSTOMER, row.get("customer_id"), row.get("project_id"), version)


def _on_segment(touched: TouchedObjects, change: RowChangeLike, version: int) -> None:
    rows = _rows(change)
    for row in rows:
        touched.mark(ObjectKind.SEGMENT, row.get("id"), row.get("project_id"), version, own=True)
    membership_may_change = change.op != "update" or any(
        _changed(change, column) for column in ("filter", "type", "project_id")
    )
    if not membership_may_change:
        return  # a rename: members are unchanged
    for row in rows:
        segment_id, project_id = row.get("id"), row.get("project_id")
        if segment_id is None or project_id is None:
            continue
        key = (str(project_id), str(segment_id))
        touched.resegmented[key] = max(version, touched.resegmented.get(key, 0))
    new = change.new
    # Any change of a static segment's membership inputs (created, made static, filter or
    # project changed): its segment_members customers are rebuilt, because the recompute job
    # takes the segment away from every customer not rebuilt since the change.
    if new is not None and new.get("type") == STATIC:
        segment_id = str(new["id"])
        touched.static_segments[segment_id] = max(
            version, touched.static_segments.get(segment_id, 0)
        )


def _on_segment_member(touched: TouchedObjects, change: RowChangeLike, version: int) -> None:
    for row in _rows(change):
        touched.mark(ObjectKind.CUSTOMER, row.get("customer_id"), None, version)


def _on_api_key(touched: TouchedObjects, change: RowChangeLike, version: int) -> None:
    for row in _rows(change):
        touched.mark_api_key(row.get("id"), row.get("project_id"), version)


_HANDLERS = {
    "vouchers": _on_voucher,
    "customers": _on_customer,
    "campaigns": _on_campaign,
    "redemptions": _on_redemption,
    "segments": _on_segment,
    "segment_members": _on_segment_member,
    "api_keys": _on_api_key,
}

WATCHED_TABLES: tuple[str, ...] = CONTRACT_TABLES
