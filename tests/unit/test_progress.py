"""Progress of long work without a terminal: a log line every few seconds, per stage."""

from __future__ import annotations

import logging

import pytest

from indexer.progress import LOG_EVERY_SECONDS, Progress


def test_without_a_terminal_a_line_is_logged_every_few_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    progress = Progress(
        "load",
        {"vouchers": 1000, "customers": 10},
        terminal=False,
        logger=logging.getLogger("test.progress"),
        clock=lambda: now[0],
    )
    with caplog.at_level(logging.INFO, logger="test.progress"):
        progress("vouchers", 100)
        now[0] += LOG_EVERY_SECONDS / 2
        progress("vouchers", 100)
        now[0] += LOG_EVERY_SECONDS / 2
        progress("vouchers", 300)
        assert progress.done == 500
        progress("customers", 10)  # a new stage counts from zero
        now[0] += LOG_EVERY_SECONDS
        progress("customers", 0)
    lines = [(r.getMessage(), vars(r)["stage"], vars(r)["rows"]) for r in caplog.records]
    assert lines == [("load progress", "vouchers", 500), ("load progress", "customers", 10)]
    progress.close()
