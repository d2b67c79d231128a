"""Single-flight: concurrent awaits of the same key share one in-flight computation.

The computation runs in its own task and every caller, the first included, awaits it through
``asyncio.shield``: a caller that is cancelled (its client went away) leaves the others, and
the shared work, untouched. Its result or exception reaches every caller. The entry is
removed by the task itself as it finishes, so a caller arriving afterwards starts afresh and
never receives a result computed before, say, an invalidation it has already seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from functools import partial
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    __slots__ = ("_in_flight", "calls", "waits")

    def __init__(self) -> None:
        self._in_flight: dict[K, asyncio.Task[T]] = {}
        self.calls = 0  # computations started
        self.waits = 0  # callers that joined a computation already in flight

    def __len__(self) -> int:
        return len(self._in_flight)

    async def do(self, key: K, compute: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The result of ``compute()``, shared with every concurrent call for ``key``."""
        task = self._in_flight.get(key)
        if task is None:
            self.calls += 1
            task = asyncio.get_running_loop().create_task(self._run(key, compute))
            task.add_done_callback(partial(self._finished, key))
            self._in_flight[key] = task
        else:
            self.waits += 1
        return await asyncio.shield(task)

    async def _run(self, key: K, compute: Callable[[], Coroutine[Any, Any, T]]) -> T:
        try:
            return await compute()
        finally:
            self._forget(key, asyncio.current_task())

    def _finished(self, key: K, task: asyncio.Task[T]) -> None:
        # Also covers a task cancelled before it ever ran, whose ``finally`` never ran.
        self._forget(key, task)
        # When every caller was cancelled nobody awaits the task: mark its exception
        # retrieved so asyncio does not log it as lost. Remaining callers still receive it.
        if not task.cancelled():
            task.exception()

    def _forget(self, key: K, task: asyncio.Task[Any] | None) -> None:
        # Compare identity: a finished computation must not remove its successor's entry.
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
