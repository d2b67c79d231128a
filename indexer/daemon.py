"""``indexer run`` around the capture loop: the HTTP listener, the lag timer, and a shutdown
that is prompt even in the middle of a load.

On SIGTERM the loop finishes the batch in progress, which takes well under a second. A load
(first, or a reload into a new generation) does not look at the stop event and can run for
minutes, longer than any supervisor waits before SIGKILL: it stops at the event after the
chunks in flight. Should it not return within ``STOP_GRACE_SECONDS`` (a chunk stuck on a
slow store), the task running the indexer is cancelled. Both are safe: a load builds a new
generation beside the serving one, whose stamp it changed to ``replaced`` first, so the next
start sees an unfinished load and runs it again from a new snapshot; a batch cut short was
not confirmed in the slot and is replayed, and every write is versioned, so the replay
changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from indexer.errors import IndexerError
from indexer.health import Health, assess, serving
from indexer.lag import LagMonitor
from indexer.runner import Indexer
from indexer.settings import IndexerSettings

log = logging.getLogger("indexer")

# Within the 10 s that Docker and Kubernetes wait before SIGKILL, with room for closing
# connections afterwards.
STOP_GRACE_SECONDS = 4.0


def probe(indexer: Indexer, settings: IndexerSettings) -> Health:
    return assess(
        prepared_at=indexer.prepared_at,
        last_step_at=indexer.last_step_at,
        now=time.time(),
        stall_seconds=settings.health_stall_seconds,
    )


async def run_daemon(
    settings: IndexerSettings,
    indexer: Indexer,
    stop: asyncio.Event,
    *,
    grace: float = STOP_GRACE_SECONDS,
) -> int:
    """Run ``indexer`` with its listener and lag timer until ``stop`` is set; 0 when it
    stopped as asked (even cut short), otherwise the indexer's error is raised."""
    async with contextlib.AsyncExitStack() as stack:
        if settings.metrics_port:
            listener = serving(
                lambda: probe(indexer, settings), settings.metrics_host, settings.metrics_port
            )
            try:
                addresses = await stack.enter_async_context(listener)
            except OSError as error:
                # A port in use or an address not on this host: one line, exit status 1.
                raise IndexerError(
                    f"metrics listener on {settings.metrics_host}:{settings.metrics_port}: {error}"
                ) from error
            log.info("metrics and health listening", extra={"addresses": str(addresses)})
        monitor = LagMonitor(settings, lambda: indexer.applied_until)
        timer = asyncio.create_task(monitor.run(stop), name="lag timer")
        stack.push_async_callback(_cancel, timer)
        await supervise(indexer, stop, grace=grace)
    return 0


async def supervise(indexer: Indexer, stop: asyncio.Event, *, grace: float) -> None:
    """``indexer.run(stop)``, cancelled when it has not returned ``grace`` seconds after
    ``stop`` was set."""
    task = asyncio.create_task(indexer.run(stop), name="indexer")
    try:
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel(stopping)
        if not task.done():
            await asyncio.wait({task}, timeout=grace)
        if not task.done():
            loading = indexer.loading
            await _cancel(task)
            if loading:
                log.warning(
                    "initial load interrupted by shutdown; it runs again at the next start"
                )
            else:
                log.warning(
                    "batch interrupted by shutdown; it is replayed from the slot on the next start",
                    extra={"watermark": str(indexer.watermark)},
                )
            return
        task.result()
    finally:
        # Reached with the task still running only when this coroutine itself is cancelled.
        await _cancel(task)


async def _cancel(task: asyncio.Task[Any]) -> None:
    if task.done():
        return
    task.cancel()
    # Waited for, not awaited: the caller's own cancellation must not be swallowed here.
    await asyncio.wait({task})
