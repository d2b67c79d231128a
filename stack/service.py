"""What every service of the stack offers the command line: up, down, status, logs.

``up`` is idempotent and all-or-nothing for its service: either the service ends running and
ready, or whatever this call started is stopped again before the error is raised.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from stack.config import HOST, StackConfig
from stack.errors import StackError
from stack.processes import require_free_port

Progress = Callable[[str, str], None]


@dataclass
class StartReport:
    """How ``up`` went for one service. A start is cold when any preparation step had to run."""

    already_running: bool = False
    seconds: float = 0.0
    steps: list[tuple[str, float]] = field(default_factory=list)

    @property
    def cold(self) -> bool:
        return bool(self.steps)


class Service(ABC):
    name: ClassVar[str]

    def __init__(self, config: StackConfig, progress: Progress) -> None:
        self.config = config
        self._progress = progress
        self._report = StartReport()

    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    @abstractmethod
    def data_dir(self) -> Path: ...

    @property
    def log_path(self) -> Path:
        return self.config.logs_dir / f"{self.name}.log"

    @property
    def pidfile(self) -> Path:
        """Where a service without a pidfile of its own records its process id."""
        return self.config.run_dir / f"{self.name}.pid"

    @abstractmethod
    def version(self) -> str:
        """The version this stack runs (or would run), as cheap to learn as possible."""

    @abstractmethod
    def running_pid(self) -> int | None:
        """Pid of this stack's instance of the service, or None when it is not running."""

    def notice(self) -> str | None:
        """For a running instance: what it lacks that a start by this version would set
        (say, a password), with the way to fix it; None when nothing."""
        return None

    @abstractmethod
    def prepare(self) -> None:
        """Install, build or initialise what is missing; each such step goes through ``step``."""

    @abstractmethod
    def launch(self) -> None:
        """Start the process and return once it is ready; on failure stop it before raising."""

    @abstractmethod
    def stop(self) -> bool:
        """Stop this stack's instance; True when it was running."""

    def up(self) -> StartReport:
        started = time.monotonic()
        self._report = StartReport()
        pid = self.running_pid()
        if pid is not None:
            notice = self.notice()
            suffix = f"; {notice}" if notice else ""
            self.say(f"already running on {HOST}:{self.port} (pid {pid}){suffix}")
            return StartReport(already_running=True)
        # Checked first so a taken port fails fast, before any install or build.
        require_free_port(self.name, HOST, self.port)
        try:
            self.prepare()
            self.launch()
        except OSError as exc:
            # A folder or file the stack could not create or read: still one line, still named.
            raise StackError(self.name, " ".join(str(exc).split())) from exc
        self._report.seconds = time.monotonic() - started
        kind = "cold" if self._report.cold else "warm"
        self.say(f"ready on {HOST}:{self.port} ({kind} start {self._report.seconds:.1f}s)")
        return self._report

    def step(self, label: str, action: Callable[[], None]) -> None:
        """Run one preparation step, timed and reported; any step makes this a cold start."""
        self.say(f"{label} ...")
        started = time.monotonic()
        action()
        elapsed = time.monotonic() - started
        self._report.steps.append((label, elapsed))
        self.say(f"{label} done ({elapsed:.1f}s)")

    def say(self, message: str) -> None:
        self._progress(self.name, message)
