"""Process and port primitives shared by the services: pidfiles, spawning, stopping, waiting.

Every process the stack starts is recorded in a pidfile under the stack dir; only those are
ever signalled, and only after checking that the pid still runs the expected program.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from stack.errors import StackError

KILL_TIMEOUT_SECONDS = 10.0

POLL_SECONDS = 0.2


def port_is_free(host: str, port: int) -> bool:
    """True when this machine could listen on ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR so a port in TIME_WAIT from our own last run does not count as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def require_free_port(service: str, host: str, port: int) -> None:
    if not port_is_free(host, port):
        raise StackError(service, f"port {port} is taken by another process")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers signal 0 but is gone for every other purpose.
    return _process_state(pid) not in ("Z", "X", None)


def _process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces and parentheses.
    return stat.rpartition(")")[2].split()[0]


def process_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def read_pidfile(path: Path) -> int | None:
    try:
        first_line = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first_line) if first_line.isdigit() else None


def running_pid(pidfile: Path, marker: str) -> int | None:
    """The pid recorded in ``pidfile`` if it is alive and its command line contains ``marker``.

    The marker guards against a recycled pid: a stale pidfile must never make the stack
    signal an unrelated process.
    """
    pid = read_pidfile(pidfile)
    if pid is None or not pid_alive(pid):
        return None
    if marker not in process_cmdline(pid):
        return None
    return pid


def write_pidfile(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n")


def remove_file(path: Path) -> None:
    path.unlink(missing_ok=True)


def spawn(
    argv: Sequence[str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running process detached from this terminal, output appended to ``log_path``.

    A new session keeps Ctrl-C in the caller's terminal from reaching the service.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,
        )


def stop_pid(pid: int, *, timeout: float, child: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM, then SIGKILL if the process is still there after ``timeout`` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        _reap(child)
        return
    if not wait_for(lambda: _gone(pid, child), timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _gone(pid, child), 10.0)
    _reap(child)


def kill_pid(pid: int, pidfile: Path, *, service: str, what: str) -> None:
    """SIGKILL, as a crash or a lost machine would end it (no clean shutdown), then wait for
    the process to be gone and remove its pidfile; ``StackError`` if it does not die."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not wait_for(lambda: not pid_alive(pid), KILL_TIMEOUT_SECONDS):
        raise StackError(service, f"{what} (pid {pid}) did not die")
    remove_file(pidfile)


def _gone(pid: int, child: subprocess.Popen[bytes] | None) -> bool:
    if child is not None:
        return child.poll() is not None
    return not pid_alive(pid)


def _reap(child: subprocess.Popen[bytes] | None) -> None:
    if child is not None and child.poll() is None:
        child.wait(timeout=10)


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


def run_logged(
    service: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> None:
    """Run a preparation command to completion, its output appended to ``log_path``.

    On failure raise a one-line error: ``what`` plus the most telling line of the output.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        start = log.tell()
        try:
            result = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                cwd=cwd,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:
            raise StackError(service, f"{what} failed: {argv[0]} not found") from None
        except subprocess.TimeoutExpired:
            raise StackError(
                service, f"{what} timed out after {timeout:.0f}s (see {log_path})") from None
    if result.returncode != 0:
        detail = error_line(log_path, start)
        suffix = f": {detail}" if detail else ""
        raise StackError(
            service, f"{what} failed (exit {result.returncode}){suffix} (see {log_path})")


def error_line(log_path: Path, offset: int = 0) -> str:
    """The line of a log (from ``offset`` on) that best explains a failure, shortened."""
    try:
        with log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # Most specific first: Maven's and apt's own error markers, then loud words, then any hint.
    for line in lines:
        for marker in ("[ERROR] ", "E: "):
            if line.startswith(marker) and line[len(marker):].strip():
                return _shorten(line[len(marker):].strip())
    loud = ("FATAL", "ERROR", "Exception", "Error:")
    for line in lines:
        if any(word in line for word in loud):
            return _shorten(line)
    hints = ("error", "could not", "cannot", "unable", "failed", "denied")
    for line in lines:
        if any(word in line.lower() for word in hints):
            return _shorten(line)
    return _shorten(lines[-1]) if lines else ""


def _shorten(line: str, limit: int = 200) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."


def tail_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of a text file, read from the end so big logs stay cheap."""
    if count <= 0:
        return []
    block = 64 * 1024
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        data = b""
        position = size
        while position > 0 and data.count(b"\n") <= count:
            step = min(block, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    return data.decode(errors="replace").splitlines()[-count:]
