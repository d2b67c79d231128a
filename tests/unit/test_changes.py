"""Fan-out rules: which objects a row change marks for rebuilding, without any service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cache.types import ObjectKind
from indexer.changes import TouchedObjects, collect_touched


@dataclass(frozen=True)
class Change:
    op: str
    table: str
    new: dict[str, Any] | None = None
    old: dict[str, Any] | None = None


def touched_by(*changes: tuple[int, Change]) -> TouchedObjects:
    return collect_touched(changes)


def test_voucher_insert_marks_voucher_campaign_and_card_holder() -> None:
    card = {
        "id": "v1",
        "project_id": "p",
        "code": "C",
        "campaign_id": "k",
        "holder_id": "c1",
        "type": "LOYALTY_CARD",
    }
    touched = touched_by((10, Change("insert", "vouchers", new=card)))
    assert set(touched.objects) == {
        (ObjectKind.VOUCHER, "v1"),
        (ObjectKind.CAMPAIGN, "k"),
        (ObjectKind.CUSTOMER, "c1"),
    }
    assert all(mark.version == 10 for mark in touched.objects.values())


def test_discount_voucher_update_does_not_touch_its_holder() -> None:
    row = {
        "id": "v1",
        "project_id": "p",
        "code": "C",
        "campaign_id": "k",
        "holder_id": "c1",
        "type": "DISCOUNT_VOUCHER",
    }
    touched = touched_by((5, Change("update", "vouchers", new={**row, "active": False}, old=row)))
    assert set(touched.objects) == {(ObjectKind.VOUCHER, "v1")}


def test_code_change_releases_the_old_code() -> None:
    old = {"id": "v1", "project_id": "p", "code": "OLD", "type": "DISCOUNT_VOUCHER"}
    touched = touched_by((7, Change("update", "vouchers", new={**old, "code": "NEW"}, old=old)))
    assert touched.removed_codes == {("p", "OLD"): 7}


def test_holder_move_marks_both_holders() -> None:
    old = {"id": "v1", "project_id": "p", "code": "C", "holder_id": "a", "type": "LOYALTY_CARD"}
    touched = touched_by((3, Change("update", "vouchers", new={**old, "holder_id": "b"}, old=old)))
    assert (ObjectKind.CUSTOMER, "a") in touched.objects
    assert (ObjectKind.CUSTOMER, "b") in touched.objects


def test_campaign_rename_fans_out_but_other_updates_do_not() -> None:
    old = {"id": "k", "project_id": "p", "name": "A", "active": True}
    renamed = touched_by((9, Change("update", "campaigns", new={**old, "name": "B"}, old=old)))
    assert renamed.renamed_campaigns == {"k": 9}
    paused = touched_by((9, Change("update", "campaigns", new={**old, "active": False}, old=old)))
    assert paused.renamed_campaigns == {}


def test_redemption_marks_old_and_new_customer() -> None:
    old = {"id": "r", "project_id": "p", "customer_id": "a"}
    touched = touched_by(
        (4, Change("update", "redemptions", new={**old, "customer_id": "b"}, old=old))
    )
    assert {key for key in touched.objects} == {
        (ObjectKind.CUSTOMER, "a"),
        (ObjectKind.CUSTOMER, "b"),
    }


def test_auto_segment_filter_change_schedules_a_recompute_of_that_segment_only() -> None:
    old = {"id": "s", "project_id": "p", "type": "auto-update", "filter": {"a": 1}}
    touched = touched_by(
        (8, Change("update", "segments", new={**old, "filter": {"a": 2}}, old=old))
    )
    assert touched.resegmented == {("p", "s"): 8}
    # No customer is marked: the recompute reads the index, not the source.
    assert set(touched.objects) == {(ObjectKind.SEGMENT, "s")}
    renamed = touched_by((8, Change("update", "segments", new={**old, "name": "x"}, old=old)))
    assert renamed.resegmented == {}


def test_segment_created_deleted_or_moved_is_recomputed_in_each_project() -> None:
    row = {"id": "s", "project_id": "p", "type": "static", "filter": None}
    assert touched_by((3, Change("insert", "segments", new=row))).resegmented == {("p", "s"): 3}
    assert touched_by((4, Change("delete", "segments", old=row))).resegmented == {("p", "s"): 4}
    moved = touched_by(
        (5, Change("update", "segments", new={**row, "project_id": "q"}, old=row))
    )
    assert moved.resegmented == {("p", "s"): 5, ("q", "s"): 5}
    # A static segment's members follow its rows: they are rebuilt in the new project.
    assert moved.static_segments == {"s": 5}


def test_static_segment_filter_change_rebuilds_its_member_rows() -> None:
    """The job takes a static segment from every customer not rebuilt since its change: its
    segment_members customers must be rebuilt in that batch, or they would lose it."""
    old = {"id": "s", "project_id": "p", "type": "static", "filter": {"a": 1}}
    touched = touched_by(
        (7, Change("update", "segments", new={**old, "filter": {"a": 2}}, old=old))
    )
    assert touched.static_segments == {"s": 7}
    auto = {**old, "type": "auto-update"}
    touched = touched_by(
        (7, Change("update", "segments", new={**auto, "filter": {"a": 2}}, old=auto))
    )
    assert touched.static_segments == {}


def test_segment_that_becomes_static_rebuilds_its_member_rows() -> None:
    old = {"id": "s", "project_id": "p", "type": "auto-update", "filter": {}}
    touched = touched_by(
        (6, Change("update", "segments", new={**old, "type": "static"}, old=old))
    )
    assert touched.static_segments == {"s": 6}
    assert touched.resegmented == {("p", "s"): 6}


def test_newest_version_wins_and_project_is_kept() -> None:
    touched = touched_by(
        (1, Change("insert", "segment_members", new={"segment_id": "s", "customer_id": "c"})),
        (
            2,
            Change(
                "update",
                "customers",
                new={"id": "c", "project_id": "p"},
                old={"id": "c", "project_id": "p"},
            ),
        ),
    )
    mark = touched.objects[(ObjectKind.CUSTOMER, "c")]
    assert (mark.version, mark.project_id) == (2, "p")


def test_truncate_is_recorded_per_table() -> None:
    touched = touched_by((6, Change("truncate", "vouchers")))
    assert touched.truncated_tables == {"vouchers": 6}
    assert touched


def test_unwatched_table_touches_nothing() -> None:
    assert not touched_by((1, Change("insert", "projects", new={"id": "p", "name": "x"})))
