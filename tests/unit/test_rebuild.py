"""The rebuild's handling of rows that cannot become documents and of objects that change
project, over a source of fixed rows (the real source is exercised by the integration tests
``test_poison_rows.py`` and ``test_project_moves.py``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from cache.types import ObjectKind
from indexer.changes import TouchedObjects, collect_touched
from indexer.errors import SourceBug
from indexer.rebuild import Rebuilder, SinkWrites
from indexer.source import DocumentSource, load_jsonb

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def voucher(object_id: str, project_id: str = "p1", **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": object_id, "project_id": project_id, "code": f"C-{object_id}",
        "campaign_id": None, "campaign_name": None, "type": "GIFT_VOUCHER", "discount": None,
        "gift_amount": None, "gift_balance": None, "loyalty_points": None,
        "loyalty_balance": None, "active": True, "start_date": None, "expiration_date": None,
        "redemption_quantity": None, "redeemed_quantity": 0, "holder_id": None, "metadata": {},
        "created_at": T0, "updated_at": T0,
    }  # fmt: skip
    row.update(changes)
    return row


def customer(object_id: str, project_id: str = "p1") -> dict[str, Any]:
    return {
        "id": object_id, "project_id": project_id, "source_id": f"s-{object_id}", "name": None,
        "email": None, "phone": None, "address": None, "metadata": {}, "created_at": T0,
        "updated_at": T0, "total_redeemed": 0, "total_succeeded": 0, "total_failed": 0,
        "redeemed_amount": 0, "redeemed_points": 0, "loyalty_points": 0,
        "static_segment_ids": [],
    }  # fmt: skip


class FixedSource:
    """The reads the rebuild makes, over fixed rows; ids in ``refuse`` fail like a value
    the driver cannot convert."""

    def __init__(
        self,
        rows: Mapping[ObjectKind, Sequence[dict[str, Any]]],
        *,
        refuse: frozenset[str] = frozenset(),
        segments: Sequence[dict[str, Any]] = (),
    ) -> None:
        self.rows = rows
        self.refuse = refuse
        self.segments = segments
        self.reads: list[list[str]] = []

    async def rows_by_ids(self, kind: ObjectKind, ids: Sequence[str]) -> list[dict[str, Any]]:
        self.reads.append(list(ids))
        if self.refuse & set(ids):
            raise SourceBug("postgres: timestamp too large (after year 10K)")
        return [row for row in self.rows.get(kind, ()) if row["id"] in ids]

    async def auto_segments(self, project_ids: Sequence[str]) -> list[dict[str, Any]]:
        return [row for row in self.segments if row["project_id"] in project_ids]

    async def api_keys_by_ids(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        return []


@dataclass(frozen=True)
class Owner:
    project_id: str
    alias: str | None
    version: int


async def rebuild(
    source: FixedSource,
    touched: TouchedObjects,
    owners: Mapping[tuple[ObjectKind, str], Owner] | None = None,
) -> SinkWrites:
    async def indexed(keys: Sequence[tuple[ObjectKind, str]]) -> Mapping[Any, Any]:
        assert owners is not None
        return {key: owners[key] for key in keys if key in owners}

    rebuilder = Rebuilder(
        cast(DocumentSource, source), indexed_owners=indexed if owners is not None else None
    )
    out = SinkWrites()
    async for chunk in rebuilder.writes(touched):
        for name in (
            "documents",
            "removed",
            "removed_codes",
            "removed_source_ids",
            "moved",
            "quarantined",
        ):
            getattr(out, name).extend(getattr(chunk, name))
    return out


def marked(kind: ObjectKind, *ids: str, version: int = 10) -> TouchedObjects:
    touched = TouchedObjects()
    for object_id in ids:
        touched.mark(kind, object_id, "p1", version, own=True)
    return touched


async def test_a_read_the_source_refuses_is_narrowed_to_its_row() -> None:
    ids = [f"v{i}" for i in range(8)]
    source = FixedSource({ObjectKind.VOUCHER: [voucher(i) for i in ids]}, refuse=frozenset({"v5"}))
    out = await rebuild(source, marked(ObjectKind.VOUCHER, *ids))
    assert sorted(d.object_id for d, _ in out.documents) == sorted(set(ids) - {"v5"})
    (bad,) = out.quarantined
    assert (bad.table, bad.object_id, bad.project_id, bad.version) == ("vouchers", "v5", "p1", 10)
    assert "timestamp too large" in bad.reason
    assert out.removed == []  # a row that failed is not a row that is gone
    assert len(source.reads) <= 1 + 2 * 3  # halves down to one row: log2(8) levels


async def test_a_row_no_builder_can_carry_is_quarantined_alone() -> None:
    deep = load_jsonb('{"a":' * 500 + "1" + "}" * 500)
    rows = [voucher("good"), voucher("deep", metadata=deep), voucher("broken", code=None)]
    out = await rebuild(
        FixedSource({ObjectKind.VOUCHER: rows}),
        marked(ObjectKind.VOUCHER, "good", "deep", "broken"),
    )
    assert [d.object_id for d, _ in out.documents] == ["good"]
    reasons = {row.object_id: row.reason for row in out.quarantined}
    assert reasons["deep"].startswith("metadata: JSON nested more than")
    assert reasons["broken"].startswith("AttributeError")


async def test_a_filter_over_the_caps_leaves_the_segment_empty_and_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    segments = [
        {"id": "s_big", "project_id": "p1",
         "filter": {"id": {"conditions": {"$in": [str(i) for i in range(100_000)]}}}},
        {"id": "s_deep", "project_id": "p1", "filter": load_jsonb("[" * 300 + "]" * 300)},
        {"id": "s_all", "project_id": "p1", "filter": {}},
    ]  # fmt: skip
    before = REGISTRY.get_sample_value("indexer_invalid_segment_filters_total") or 0.0
    caplog.set_level(logging.WARNING, logger="indexer")
    source = FixedSource({ObjectKind.CUSTOMER: [customer("c1")]}, segments=segments)
    out = await rebuild(source, marked(ObjectKind.CUSTOMER, "c1"))
    ((document, _),) = out.documents
    assert document.fields["segment_ids"] == ["s_all"]
    reported = [r for r in caplog.records if r.getMessage() == "segment filter invalid"]
    assert {r.segment_id for r in reported} == {"s_big", "s_deep"}  # type: ignore[attr-defined]
    after = REGISTRY.get_sample_value("indexer_invalid_segment_filters_total")
    assert after == before + 2
    await rebuild(source, marked(ObjectKind.CUSTOMER, "c1"))  # reported once per filter text
    assert REGISTRY.get_sample_value("indexer_invalid_segment_filters_total") == after


def test_a_project_change_releases_the_old_projects_alias() -> None:
    old = {"id": "v1", "project_id": "p1", "code": "A", "type": "GIFT_VOUCHER"}
    touched = collect_touched(
        [(7, _Change("update", "vouchers", {**old, "project_id": "p2"}, old))]
    )
    assert touched.removed_codes == {("p1", "A"): 7}
    assert touched.objects[(ObjectKind.VOUCHER, "v1")].projects == {"p1", "p2"}
    # Rows that merely reference an object do not say where the object lives.
    redemption = {"id": "r", "project_id": "p9", "customer_id": "c1", "voucher_id": "v1"}
    touched = collect_touched([(8, _Change("insert", "redemptions", redemption, None))])
    assert touched.objects[(ObjectKind.CUSTOMER, "c1")].projects == set()


async def test_a_move_seen_in_the_change_tombstones_the_old_project() -> None:
    touched = marked(ObjectKind.VOUCHER, "v1")
    touched.mark(ObjectKind.VOUCHER, "v1", "p2", 10, own=True)
    out = await rebuild(FixedSource({ObjectKind.VOUCHER: [voucher("v1", "p2")]}), touched)
    assert [(d.project_id, v) for d, v in out.documents] == [("p2", 10)]
    assert [(m.project_id, m.object_id, m.version) for m in out.moved] == [("p1", "v1", 10)]
    assert out.removed == []


async def test_a_move_seen_in_the_index_tombstones_the_old_project_and_alias() -> None:
    touched = TouchedObjects()
    touched.mark(ObjectKind.VOUCHER, "v1", "p2", 20)  # the key only: default replica identity
    touched.mark(ObjectKind.VOUCHER, "v2", "p1", 20)
    touched.mark(ObjectKind.CUSTOMER, "c1", "p1", 20)
    source = FixedSource(
        {
            ObjectKind.VOUCHER: [voucher("v1", "p2"), voucher("v2", "p1", code="NEW")],
            ObjectKind.CUSTOMER: [customer("c1", "p1")],
        }
    )
    owners = {
        (ObjectKind.VOUCHER, "v1"): Owner("p1", "C-v1", 12),  # moved
        (ObjectKind.VOUCHER, "v2"): Owner("p1", "OLD", 15),  # new code, same project
        (ObjectKind.CUSTOMER, "c1"): Owner("p1", "s-c1", 15),  # unchanged
    }
    out = await rebuild(source, touched, owners)
    assert [(m.kind, m.project_id, m.object_id, m.version) for m in out.moved] == [
        (ObjectKind.VOUCHER, "p1", "v1", 20)
    ]
    # Alias tombstones take the indexed version: every write of that alias is at or below.
    assert sorted(out.removed_codes) == [("p1", "C-v1", 12), ("p1", "OLD", 15)]
    assert out.removed_source_ids == []


async def test_a_quarantined_row_that_moved_is_removed_from_its_old_project() -> None:
    deep = load_jsonb("[" * 300 + "]" * 300)
    touched = TouchedObjects()
    touched.mark(ObjectKind.VOUCHER, "v1", "p2", 30)
    source = FixedSource({ObjectKind.VOUCHER: [voucher("v1", "p2", metadata=deep)]})
    out = await rebuild(source, touched, {(ObjectKind.VOUCHER, "v1"): Owner("p1", "C-v1", 25)})
    assert out.documents == [] and [r.object_id for r in out.quarantined] == ["v1"]
    assert [(r.project_id, r.object_id, r.version) for r in out.removed] == [("p1", "v1", 30)]
    assert out.removed_codes == [("p1", "C-v1", 25)]


@dataclass(frozen=True)
class _Change:
    op: str
    table: str
    new: dict[str, Any] | None
    old: dict[str, Any] | None
