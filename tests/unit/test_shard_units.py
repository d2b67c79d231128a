"""Shard ownership, names, row filters, roles under plans and the watermark rule
(``indexer.shards``), and the chunk filter (``indexer.shard_filter``)."""

from __future__ import annotations

import pytest

from cache.records import SegmentJob
from cache.types import Lsn, ObjectKind
from indexer.documents import Document
from indexer.rebuild import ApiKeyRow, RemovedObject, SinkWrites
from indexer.settings import IndexerSettings, SettingsError
from indexer.shard_filter import owned_writes
from indexer.shards import (
    ShardPlan,
    ShardSpec,
    bucket,
    combine_watermarks,
    role_of,
    shards_of,
)


def test_buckets_are_fixed_and_spread() -> None:
    # MD5 of "proj_1" starts f2 51: the same in every process and release.
    assert bucket("proj_1") == 0xF251
    counts = [0, 0, 0]
    for n in range(3000):
        counts[bucket(f"p{n}") % 3] += 1
    assert min(counts) > 900, counts


@pytest.mark.parametrize("text", ["", "1", "2/2", "-1/2", "0/0", "a/b", "0/257", " 0/1"])
def test_bad_shard_specs_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        ShardSpec.parse(text)
    if text:
        with pytest.raises(SettingsError, match="LOYALTY_SHARD"):
            IndexerSettings.from_env({"LOYALTY_SHARD": text})


def test_every_project_has_exactly_one_owner_for_any_count() -> None:
    for count in (1, 2, 3, 7):
        for n in range(200):
            owners = [s for s in shards_of(count) if s.owns(f"proj_{n}")]
            assert len(owners) == 1


def test_names_and_row_filters() -> None:
    one, second = ShardSpec(0, 1), ShardSpec(1, 2)
    assert one.slot_name("loyalty_indexer") == "loyalty_indexer"
    assert second.slot_name("loyalty_indexer") == "loyalty_indexer_1_of_2"
    assert second.publication_name("loyalty_pub") == "loyalty_pub_1_of_2"
    assert one.row_filter("vouchers") is None
    assert second.row_filter("segment_members") is None
    assert second.row_filter("projects") == (
        "(get_byte(decode(md5(id), 'hex'), 0) * 256 + get_byte(decode(md5(id), 'hex'), 1))"
        " % 2 = 1"
    )
    assert "md5(project_id)" in (second.row_filter("vouchers") or "")
    assert (second.field, one.field) == ("2:1", "1:0")


H2, H3 = Lsn(0x100), Lsn(0x200)


def test_roles_under_plans() -> None:
    implicit = role_of(ShardSpec(0, 1), [], handing_off=False)
    assert (implicit.state, implicit.start, implicit.stop, implicit.fields) == (
        "active", 0, None, ("1:0",)
    )
    plans = [ShardPlan(2, 2, H2), ShardPlan(1, 1, Lsn(0))]
    old = role_of(ShardSpec(0, 1), plans, handing_off=True)
    assert (old.state, old.stop, old.fields) == ("retiring", H2, ("2:0", "2:1", "1:0"))
    new = role_of(ShardSpec(1, 2), plans, handing_off=True)
    assert (new.state, new.start, new.stop) == ("active", H2, None)
    # Once the old shard's slot is gone, only the shards in force count.
    assert role_of(ShardSpec(1, 2), plans, handing_off=False).fields == ("2:0", "2:1")
    assert role_of(ShardSpec(2, 3), plans, handing_off=True).state == "none"
    back = [ShardPlan(3, 1, H3), ShardPlan(2, 2, H2)]
    assert role_of(ShardSpec(0, 2), back, handing_off=True).stop == H3
    assert role_of(ShardSpec(0, 1), back, handing_off=True).start == H3


def test_the_watermark_is_the_least_position_and_waits_for_a_missing_one() -> None:
    assert combine_watermarks({"2:0": 9, "2:1": 5}, ["2:0", "2:1"]) == 5
    assert combine_watermarks({"2:0": 9}, ["2:0", "2:1"]) is None
    # A shard handing off holds the watermark below the handoff until it reaches it.
    assert combine_watermarks({"2:0": 9, "2:1": 9, "1:0": 3}, ["2:0", "2:1", "1:0"]) == 3


def test_a_chunk_keeps_the_writes_of_owned_projects() -> None:
    mine = next(f"p{n}" for n in range(100) if ShardSpec(0, 2).owns(f"p{n}"))
    other = next(f"p{n}" for n in range(100) if ShardSpec(1, 2).owns(f"p{n}"))
    chunk = SinkWrites(
        documents=[
            (Document(ObjectKind.CUSTOMER, mine, "c1", {}, {}), 5),
            (Document(ObjectKind.CUSTOMER, other, "c2", {}, {}), 5),
        ],
        removed=[RemovedObject(ObjectKind.VOUCHER, other, "v1", 5)],
        removed_codes=[(mine, "CODE", 5), (other, "CODE", 5)],
        api_keys=[(ApiKeyRow("a1", other, "x", None, False), 5)],
        removed_api_keys=[("a2", "", 5)],
        segment_jobs=[SegmentJob(other, "s1", 5, 0), SegmentJob(mine, "s2", 5, 0)],
    )
    owned, dropped = owned_writes(chunk, ShardSpec(0, 2).owns)
    assert [d.object_id for d, _ in owned.documents] == ["c1"]
    assert owned.removed == [] and owned.api_keys == []
    assert owned.removed_codes == [(mine, "CODE", 5)]
    # Unknown project: kept (versioned, a duplicate changes nothing).
    assert owned.removed_api_keys == [("a2", "", 5)]
    assert [j.segment_id for j in owned.segment_jobs] == ["s2"]
    assert dropped == 5


def test_reshard_refuses_a_bad_count_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from indexer.cli import main

    assert main(["reshard", "--shards", "0"]) == 1
    err = capsys.readouterr().err
    assert err == "indexer reshard: --shards must be from 1 to 256, got 0\n"
