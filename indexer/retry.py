"""Capped exponential backoff with full jitter, for every loop that waits out an outage."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delay before the next attempt: random in [0, min(cap, base * 2**failures)].

    Full jitter spreads reconnecting clients apart; the cap bounds how long a recovered
    service waits to be noticed; a floor keeps a failing loop from ever spinning.
    """

    base: float = 0.05
    cap: float = 5.0
    floor: float = 0.01
    failures: int = 0
    _random: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        self.failures += 1
        return max(self.floor, self._random.uniform(0, ceiling))

    def reset(self) -> None:
        self.failures = 0

    async def wait(self, stop: asyncio.Event | None = None) -> None:
        """Sleep for the next delay, or less if ``stop`` is set meanwhile."""
        delay = self.next_delay()
        if stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
