"""A cap on the rows a load reads per second, to spare the source database at peak."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class RowThrottle:
    """Holds a reader to ``rows_per_second`` on average since its first rows: after each
    chunk it sleeps until the rows read so far are due. ``None`` or 0: no cap."""

    def __init__(
        self,
        rows_per_second: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._rate = rows_per_second or 0
        self._clock = clock
        self._sleep = sleep
        self._started: float | None = None
        self._rows = 0

    async def took(self, rows: int) -> None:
        """``rows`` more were read; returns once reading on keeps the average in bounds."""
        if self._rate <= 0:
            return
        now = self._clock()
        if self._started is None:
            # The first chunk opens the window: its rows are due one chunk's time later.
            self._started = now
        self._rows += rows
        delay = self._started + self._rows / self._rate - now
        if delay > 0:
            await self._sleep(delay)
