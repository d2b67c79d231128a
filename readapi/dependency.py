"""Remembers that a dependency (Redis or Elasticsearch) just failed, so requests skip it.

Without this, every request during an outage would wait for its own connection attempt to
fail before falling back. After a failure the dependency is skipped for ``retry_seconds``;
then one request tries it again (the others keep skipping until that one succeeds or fails).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class DependencyGate:
    __slots__ = ("_clock", "_probe_at", "_retry_seconds", "down_since", "failures", "name")

    def __init__(
        self, name: str, retry_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._probe_at = 0.0
        self.down_since: float | None = None
        self.failures = 0

    @property
    def up(self) -> bool:
        return self.down_since is None

    def should_try(self) -> bool:
        """Whether a request should call the dependency now (always, while it is up)."""
        if self.down_since is None:
            return True
        now = self._clock()
        if now >= self._probe_at:
            # This caller probes; the others skip until its result is known or time passes.
            self._probe_at = now + self._retry_seconds
            return True
        return False

    def failed(self, error: BaseException) -> None:
        self.failures += 1
        now = self._clock()
        if self.down_since is None:
            self.down_since = now
            log.warning("%s unavailable, falling back: %s", self.name, error)
        self._probe_at = now + self._retry_seconds

    def succeeded(self) -> None:
        if self.down_since is not None:
            log.info("%s available again", self.name)
            self.down_since = None
