"""Rebuild reads from a streaming standby, so that a burst of writes costs the primary no
read of ours beyond the slot's own.

A batch's documents are rebuilt from a standby once it has replayed past the end of the
batch's last commit record: from that point every transaction of the batch is visible to a
new snapshot there, as it is on the primary (``indexer.visibility``), and a later commit seen
as well is harmless (the document is rebuilt again, at its own higher version, when its
change comes). A standby that is further behind than ``max_lag_bytes``, that does not get
there within ``max_wait_seconds``, that cannot be reached, or that is no longer in recovery
(promoted, or the DSN names a primary) is not waited for: the batch reads the primary, and
the fallback is counted by reason. An unreachable standby is tried again after a jittered
backoff, not on every batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg

from cache.types import Lsn
from indexer import metrics
from indexer.errors import SourceUnavailable, postgres_boundary
from indexer.queries import query
from indexer.retry import Backoff
from indexer.source import AnyConnection, connect

log = logging.getLogger(__name__)

# Replay usually passes a commit within a millisecond or two on a healthy standby: the first
# polls are short, later ones capped so that a slow standby is not hammered.
_FIRST_POLL_SECONDS = 0.0005
_MAX_POLL_SECONDS = 0.01


class StandbyReads:
    """The connection a batch's rebuild reads from: the standby's, or None for the primary's."""

    def __init__(self, dsn: str, *, max_wait_seconds: float, max_lag_bytes: int) -> None:
        self._dsn = dsn
        self._max_wait = max_wait_seconds
        self._max_lag = max_lag_bytes
        self._conn: AnyConnection | None = None
        self._backoff = Backoff(base=0.5, cap=30.0)
        self._retry_at = 0.0
        # The reason of the last fallback, to log a change of state once, not every batch.
        self._state = "standby"

    async def connection_for(self, commit_end: Lsn) -> AnyConnection | None:
        """The standby's connection once it replayed up to ``commit_end``; None when the
        batch must read the primary (the fallback is counted and logged)."""
        if time.monotonic() < self._retry_at:
            self._fall_back("unavailable")
            return None
        # Once behind, the standby is checked without waiting until it has caught up: a
        # lagging standby costs each batch one short query, not the whole wait.
        wait = self._max_wait if self._state == "standby" else 0.0
        try:
            conn = await self._connection()
            reason = await self._wait_for_replay(conn, commit_end, wait)
        except SourceUnavailable as error:
            await self.close()
            self._retry_at = time.monotonic() + self._backoff.next_delay()
            self._fall_back("unavailable", str(error))
            return None
        if reason is not None:
            self._fall_back(reason)
            return None
        self._backoff.reset()
        if self._state != "standby":
            log.info("rebuild reads are back on the standby", extra={"was": self._state})
            self._state = "standby"
        return conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:
                log.debug("closing the standby connection failed", exc_info=True)

    async def _connection(self) -> AnyConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await connect(self._dsn, autocommit=True)
        return self._conn

    async def _wait_for_replay(
        self, conn: AnyConnection, commit_end: Lsn, wait: float
    ) -> str | None:
        """None once the standby replayed ``commit_end``; otherwise why it is not used."""
        started = time.monotonic()
        poll = _FIRST_POLL_SECONDS
        try:
            while True:
                in_recovery, replayed = await _replay_position(conn)
                if not in_recovery or replayed is None:
                    return "not_standby"
                behind = int(commit_end) - int(replayed)
                metrics.STANDBY_REPLAY_LAG_BYTES.set(max(0, behind))
                if behind <= 0:
                    return None
                if behind > self._max_lag:
                    return "lagging"
                if time.monotonic() - started >= wait:
                    return "lagging"
                await asyncio.sleep(poll)
                poll = min(poll * 2, _MAX_POLL_SECONDS)
        finally:
            metrics.STANDBY_WAIT_SECONDS.observe(time.monotonic() - started)

    def _fall_back(self, reason: str, detail: str | None = None) -> None:
        metrics.STANDBY_FALLBACKS.labels(reason).inc()
        if self._state != reason:
            extra: dict[str, Any] = {"reason": reason}
            if detail:
                extra["detail"] = detail
            log.warning("rebuild reads fall back to the primary", extra=extra)
            self._state = reason


@postgres_boundary
async def _replay_position(conn: psycopg.AsyncConnection[Any]) -> tuple[bool, Lsn | None]:
    cursor = await conn.execute(query("standby_replay_position"))
    row = await cursor.fetchone()
    if row is None:
        return False, None
    in_recovery, replayed = row
    return bool(in_recovery), None if replayed is None else Lsn.parse(replayed)
