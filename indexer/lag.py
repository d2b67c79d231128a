"""Replication lag, read from the slot on a timer of its own.

The capture loop sets the lag gauges after each step, so a loop that is stuck (a blocked
write, a dependency it keeps retrying, a load) would leave them frozen at their last, good
values. ``LagMonitor`` reads ``pg_replication_slots`` every few seconds on its own autocommit
connection and sets them whatever the loop is doing.

``indexer_lag_seconds`` is an upper bound of the age of the oldest commit not applied yet:
the seconds since the moment up to which every commit is known to be applied (the start of
the last step that emptied the slot, or the commit time of the newest transaction a full
batch applied). It is 0 when the slot holds nothing unconfirmed and grows, second by second,
while the indexer is stuck. Peeking the slot for the oldest pending commit itself would
collide with the capture loop's own peek (a slot serves one session at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

from indexer import metrics
from indexer.errors import SlotError
from indexer.retry import Backoff
from indexer.settings import IndexerSettings
from indexer.slot import SlotStatus, slot_exists, slot_status
from indexer.source import connect

log = logging.getLogger(__name__)

# Often enough for alerting on minutes of lag, rare enough to cost nothing on the server.
INTERVAL_SECONDS = 5.0
# A server that accepts the connection and then never answers must not hold the timer.
_READ_TIMEOUT_SECONDS = 10.0

WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")


def lag_seconds(lag_bytes: int, applied_until: float | None, now: float) -> float | None:
    """Seconds the applied state may be behind: 0 when the slot confirmed everything,
    ``now - applied_until`` otherwise; None while nothing is known (no step yet)."""
    if lag_bytes <= 0:
        return 0.0
    if applied_until is None:
        return None
    return max(0.0, now - applied_until)


def wal_status_values(status: str | None) -> dict[str, int]:
    """The value of each ``indexer_wal_status`` series: 1 for the slot's status, 0 for the
    others (all 0 when Postgres reports none, or an unknown one)."""
    return {name: int(name == status) for name in WAL_STATUSES}


def publish(status: SlotStatus, applied_until: float | None, now: float) -> None:
    """Set the slot's gauges from one reading."""
    metrics.LAG_BYTES.set(status.lag_bytes)
    seconds = lag_seconds(status.lag_bytes, applied_until, now)
    if seconds is not None:
        metrics.LAG_SECONDS.set(seconds)
    metrics.RETAINED_WAL_BYTES.set(status.retained_wal_bytes)
    for name, value in wal_status_values(status.wal_status).items():
        metrics.WAL_STATUS.labels(name).set(value)


class LagMonitor:
    """Reads the slot's status every ``interval`` seconds until stopped or cancelled.

    A failed reading is retried after a jittered backoff (capped at ``interval``), so an
    outage neither kills the timer nor makes it spin; the first failure of a series is
    logged, and so is the recovery. A slot that does not exist (a load has not created it
    yet) is no failure: the WAL gauges read 0 until it does.
    """

    def __init__(
        self,
        settings: IndexerSettings,
        applied_until: Callable[[], float | None] = lambda: None,
        *,
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._applied_until = applied_until
        self._interval = interval
        self._clock = clock
        self._backoff = Backoff(base=min(0.5, interval), cap=interval, floor=min(0.1, interval))
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.failing = False

    async def sample(self) -> SlotStatus | None:
        """One reading, published; None when the slot does not exist. Raises when
        Postgres cannot answer."""
        async with asyncio.timeout(_READ_TIMEOUT_SECONDS):
            if self._conn is None or self._conn.closed:
                self._conn = await connect(self._settings.pg_dsn, autocommit=True)
            try:
                status = await slot_status(self._conn, self._settings.slot_name)
            except SlotError:
                if await slot_exists(self._conn, self._settings.slot_name):
                    raise
                metrics.RETAINED_WAL_BYTES.set(0)
                for name, value in wal_status_values(None).items():
                    metrics.WAL_STATUS.labels(name).set(value)
                return None
        publish(status, self._applied_until(), self._clock())
        return status

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                delay = self._interval
                try:
                    await self.sample()
                except Exception as error:
                    # Whatever the cause, the daemon outlives its lag timer's troubles.
                    await self._drop_connection()
                    if not self.failing:
                        log.warning(
                            "slot status unreadable, lag gauges are stale",
                            extra={"reason": f"{type(error).__name__}: {error}"},
                        )
                        self.failing = True
                    delay = self._backoff.next_delay()
                else:
                    if self.failing:
                        log.info("slot status readable again")
                        self.failing = False
                    self._backoff.reset()
                await self._pause(delay, stop)
        finally:
            await self.close()

    async def close(self) -> None:
        await self._drop_connection()

    async def _pause(self, delay: float, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:
                log.debug("closing the lag timer's connection failed", exc_info=True)
