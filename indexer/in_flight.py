"""Writes left running while the next unit of work is read and built: the capture loop's
chunks (``indexer.runner``) and the segment recompute's pages (``indexer.recompute``) share
this bookkeeping. Their callers hold the rules of what may overlap."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Coroutine
from typing import Any


class WritesInFlight:
    """Write tasks in the order they started, oldest first."""

    def __init__(self) -> None:
        self._tasks: collections.deque[asyncio.Task[Any]] = collections.deque()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, write: Coroutine[Any, Any, Any]) -> None:
        self._tasks.append(asyncio.create_task(write))

    async def drain(self, keep: int = 0) -> None:
        """Wait for the oldest writes until at most ``keep`` are left; a failure is raised
        here, and the writes after it are abandoned."""
        while len(self._tasks) > keep:
            try:
                await self._tasks.popleft()
            except BaseException:
                await self.abandon()
                raise

    async def abandon(self) -> None:
        """End every write still running, after a failure elsewhere: the work is done again
        from its start, so they only have to end, and their own failure is superseded."""
        while self._tasks:
            task = self._tasks.popleft()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
