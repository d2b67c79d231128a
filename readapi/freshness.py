"""Freshness headers: ``X-Read-Watermark`` on every /v1 answer, ``X-Min-Watermark`` waits.

The watermark is held in process (``cache.watermark.WatermarkHolder``), pushed by the
indexer on the invalidation channel with each batch, seeded from Redis at start and re-read
from Redis by ``WatermarkPoller`` while the channel is down, so reading it costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from multidict import istr

from cache.errors import CacheError
from cache.invalidation import InvalidationListener
from cache.store import CacheStore
from cache.types import Lsn
from cache.watermark import WatermarkHolder
from readapi.background import stop_task
from readapi.errors import ApiError, invalid_request

log = logging.getLogger(__name__)

DEFAULT_WAIT_MS = 1000
MAX_WAIT_MS = 5000
_MAX_LSN_TEXT = 17  # "FFFFFFFF/FFFFFFFF"

MIN_WATERMARK_HEADER = istr("X-Min-Watermark")


def parse_min_watermark(headers: Mapping[str, str]) -> int | None:
    """The ``X-Min-Watermark`` LSN, ``None`` when absent; 400 when malformed."""
    raw = headers.get(MIN_WATERMARK_HEADER)
    if raw is None:
        return None
    if len(raw) > _MAX_LSN_TEXT:
        raise invalid_request("X-Min-Watermark is not an LSN.", "Expected X/Y in hexadecimal.")
    try:
        # Only ASCII hex digits match; surrounding spaces and tabs (HTTP's own) are ignored.
        return int(Lsn.parse(raw.strip(" \t")))
    except ValueError:
        raise invalid_request(
            "X-Min-Watermark is not an LSN.", "Expected X/Y in hexadecimal, e.g. 0/1A2B3C8."
        ) from None


def parse_wait_ms(headers: Mapping[str, str]) -> int:
    raw = headers.get("X-Wait-Timeout-Ms")
    if raw is None:
        return DEFAULT_WAIT_MS
    text = raw.strip(" \t")
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        raise invalid_request(
            "X-Wait-Timeout-Ms must be an integer.", f"Between 0 and {MAX_WAIT_MS}."
        )
    value = int(text)
    if value > MAX_WAIT_MS:
        raise invalid_request("X-Wait-Timeout-Ms is too large.", f"At most {MAX_WAIT_MS}.")
    return value


async def wait_for_watermark(holder: WatermarkHolder, lsn: int, timeout_ms: int) -> None:
    """Return once the watermark reaches ``lsn``, else 503 ``not_yet_indexed``."""
    if holder.reached(lsn):
        return
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            await holder.wait_until(lsn)
    except TimeoutError:
        current = holder.value
        raise ApiError(
            503,
            "not_yet_indexed",
            "The requested watermark is not indexed yet; retry later.",
            f"Asked {Lsn(lsn)}, indexed {Lsn(current or 0)} after {timeout_ms} ms.",
        ) from None


class WatermarkPoller:
    """Reads the watermark from Redis at an interval while the channel is down (messages
    carrying it are lost then), so ``X-Read-Watermark`` and waits keep moving."""

    def __init__(
        self,
        holder: WatermarkHolder,
        store: CacheStore,
        listener: InvalidationListener,
        interval: float,
    ) -> None:
        self._holder = holder
        self._store = store
        self._listener = listener
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def seed(self) -> None:
        """Read the watermark once at start; an unreachable Redis is not fatal."""
        try:
            await self._holder.refresh(self._store)
        except CacheError as error:
            log.warning("watermark not read at start: %s", error)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="watermark-poller")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if self._listener.connected:
                continue
            # Redis down too: nothing to read; the listener's reconnect will tell.
            with contextlib.suppress(CacheError):
                await self._holder.refresh(self._store)
