"""Progress of long work (a load, a verification): a bar per stage on a terminal (rows,
rows/s, ETA), a log line every few seconds otherwise, so a run under a supervisor still
shows it is alive and how far it got."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

LOG_EVERY_SECONDS = 5.0


class Progress:
    """Call with ``(stage, rows)`` as rows are done; stages come one after the other."""

    def __init__(
        self,
        what: str,
        totals: dict[str, int],
        *,
        terminal: bool,
        logger: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._what = what
        self._totals = totals
        self._terminal = terminal
        self._log = logger
        self._clock = clock
        self._bar: Any = None
        self._stage: str | None = None
        self._done = 0
        self._logged_at = clock()

    @property
    def done(self) -> int:
        """Rows done in the current stage."""
        return self._done

    def __call__(self, stage: str, rows: int) -> None:
        if stage != self._stage:
            self.close()
            self._stage, self._done = stage, 0
            if self._terminal:
                self._bar = tqdm(
                    total=self._totals.get(stage),
                    desc=f"{self._what} {stage}",
                    unit="rows",
                    file=sys.stderr,
                )
        self._done += rows
        if self._bar is not None:
            self._bar.update(rows)
        elif self._clock() - self._logged_at >= LOG_EVERY_SECONDS:
            self._logged_at = self._clock()
            self._log.info(
                f"{self._what} progress",
                extra={"stage": stage, "rows": self._done, "total": self._totals.get(stage)},
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
