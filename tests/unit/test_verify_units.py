"""Verification's pure pieces: the stable digest of an API object and the report lines."""

from __future__ import annotations

from cache.types import ObjectKind
from indexer.verify_report import Finding, Problem, Sink, VerifyReport, digest


def test_the_digest_ignores_key_order_and_sees_every_value() -> None:
    one = {"id": "v_1", "code": "A", "discount": {"type": "PERCENT", "percent_off": 10}}
    same = {"discount": {"percent_off": 10, "type": "PERCENT"}, "code": "A", "id": "v_1"}
    assert digest(one) == digest(same)
    assert digest(one) != digest({**one, "code": "B"})
    assert digest(one) != digest({**one, "discount": {"type": "PERCENT", "percent_off": 10.5}})
    assert len(digest(one)) == 16


def test_the_report_counts_by_kind_and_problem_and_keeps_a_bounded_list_of_examples() -> None:
    report = VerifyReport(examples_kept=2)
    for number in range(3):
        report.differ(
            Finding(
                ObjectKind.VOUCHER, f"v_{number}", "p", Sink.REDIS, Problem.MISSING, "alias", "k"
            )
        )
    report.differ(
        Finding(ObjectKind.CUSTOMER, "c_1", "p", Sink.ELASTICSEARCH, Problem.EXTRA, "object", "")
    )
    assert report.difference_count == 4 and not report.ok
    assert report.tallies[ObjectKind.VOUCHER].missing == 3
    assert report.tallies[ObjectKind.CUSTOMER].extra == 1
    assert report.differences == [
        "voucher v_0 (project p): missing in redis alias: k",
        "voucher v_1 (project p): missing in redis alias: k",
    ]


def test_a_finding_is_the_same_suspect_whatever_its_detail_and_versions() -> None:
    first = Finding("voucher", "v", "p", Sink.REDIS, Problem.DIFFERENT, "object", "a", (5,))
    again = Finding("voucher", "v", "p", Sink.REDIS, Problem.DIFFERENT, "object", "b", (7,))
    assert first.key == again.key
    assert first.describe() == "voucher v (project p): different in redis: a"
