"""The reindex's pure parts: its checkpoint's encoding, the order in which finished pages
move the checkpoint, the stages left to load, and the command's option checks."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from cache.types import ObjectKind
from indexer.cli import build_parser
from indexer.reindex_command import check_options, kinds_of
from indexer.reindex_load import PageLedger, stages_left
from indexer.reindex_state import (
    CheckpointError,
    Phase,
    ReindexState,
    Source,
    decode_state,
    encode_state,
    ordered_kinds,
)

STATE = ReindexState(
    generation=1_700_000_000_000,
    kinds=(ObjectKind.CAMPAIGN, ObjectKind.VOUCHER),
    source=Source.POSTGRES,
    slot="loyalty_indexer_rx",
)


def test_a_checkpoint_round_trips() -> None:
    state = STATE.finished_chunk("vouchers", "v_000100", 100)
    state = dataclasses.replace(state, phase=Phase.CATCHING_UP, resumed=2)
    assert decode_state(encode_state(state)) == state
    assert state.rows_done == 100 and state.stage == "vouchers" and state.after == "v_000100"


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"[]",
        b'{"generation": 1}',
        b'{"generation": 1, "kinds": ["coupon"],'
        b' "source": "postgres", "slot": "s", "phase": "loading"}',
    ],
)
def test_an_unreadable_checkpoint_is_one_clear_error(blob: bytes) -> None:
    with pytest.raises(CheckpointError, match="unreadable reindex checkpoint"):
        decode_state(blob)


async def test_the_checkpoint_moves_only_over_pages_finished_in_order() -> None:
    saved: list[ReindexState] = []

    async def save(state: ReindexState) -> None:
        saved.append(state)

    ledger = PageLedger(save, STATE)
    first, second, third = ledger.issue(), ledger.issue(), ledger.issue()
    await ledger.finish(second, ("vouchers", "v_2", 10))
    assert saved == []  # the first page is still out: a crash now must re-read it
    await ledger.finish(first, ("vouchers", "v_1", 10))
    assert saved[-1].after == "v_2" and saved[-1].rows_done == 20
    await ledger.finish(third, ("customers", "c_1", 5))
    assert saved[-1].stage == "customers" and saved[-1].after == "c_1"
    assert saved[-1].done == {"vouchers": 20, "customers": 5}


def test_stages_left_start_at_the_checkpoint() -> None:
    assert stages_left(STATE) == [
        ("campaigns", ObjectKind.CAMPAIGN, None),
        ("vouchers", ObjectKind.VOUCHER, None),
    ]
    resumed = STATE.finished_chunk("vouchers", "v_9", 9)
    assert stages_left(resumed) == [("vouchers", ObjectKind.VOUCHER, "v_9")]
    copied = ReindexState(1, (ObjectKind.CUSTOMER,), Source.INDEX, "s", stage="customer")
    assert stages_left(copied) == [("customer", ObjectKind.CUSTOMER, None)]


def test_kinds_load_in_dependency_order() -> None:
    assert ordered_kinds([ObjectKind.CUSTOMER, ObjectKind.SEGMENT]) == (
        ObjectKind.SEGMENT,
        ObjectKind.CUSTOMER,
    )
    assert kinds_of("voucher") == (ObjectKind.VOUCHER,)
    assert set(kinds_of("all")) == set(ObjectKind)


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["reindex", *argv])


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (("--project", "p", "--resume"), "nothing to resume"),
        (("--project", "p", "--source", "index"), "--source index"),
        (("--project", " "), "needs a project id"),
        (("--resume", "--kind", "voucher"), "checkpoint's kinds"),
        (("--abort", "--source", "index"), "checkpoint's kinds"),
        (("--max-rows-per-second", "-1"), "0 (no cap) or more"),
    ],
)
def test_bad_option_combinations_are_refused(argv: tuple[str, ...], problem: str) -> None:
    found = check_options(_args(*argv))
    assert found is not None and problem in found


def test_good_option_combinations_pass() -> None:
    for argv in ((), ("--kind", "customer", "--source", "index"), ("--resume",), ("--abort",)):
        assert check_options(_args(*argv)) is None


def test_resume_and_abort_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        _args("--resume", "--abort")
