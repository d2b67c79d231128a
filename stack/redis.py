"""Redis 7 for the local stack: one server on loopback, password required, bounded memory,
no persistence.

Every start writes the server's settings to ``<stack dir>/redis/redis.conf`` (mode 600, so
the password stays off the command line and out of other users' reach) from
``stack/config.py``: a data folder of any age gets this version's password, ``maxmemory`` and
eviction policy. Pidfile and log live under the stack dir; the working folder holds nothing
else because saving is off.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from stack.apt import apt_install
from stack.config import HOST, REDIS_MAXMEMORY, REDIS_MAXMEMORY_POLICY, REDIS_PASSWORD
from stack.errors import StackError
from stack.processes import (
    error_line,
    pid_alive,
    remove_file,
    running_pid,
    spawn,
    stop_pid,
    wait_for,
    write_pidfile,
)
from stack.service import Service

BINARY = "redis-server"
APT_PACKAGE = "redis-server"
REQUIRED_MAJOR = "7"
READY_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0
PROBE_TIMEOUT_SECONDS = 1.0
CONFIG_FILE = "redis.conf"


class Redis(Service):
    name = "redis"

    @property
    def port(self) -> int:
        return self.config.redis_port

    @property
    def data_dir(self) -> Path:
        return self.config.stack_dir / "redis"

    def version(self) -> str:
        binary = shutil.which(BINARY)
        if binary is None:
            return f"{REQUIRED_MAJOR} (not installed)"
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=False).stdout
        # "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=..."
        for part in out.split():
            if part.startswith("v="):
                return part[2:]
        return "unknown"

    @property
    def config_file(self) -> Path:
        return self.data_dir / CONFIG_FILE

    def running_pid(self) -> int | None:
        return running_pid(self.pidfile, BINARY)

    def notice(self) -> str | None:
        # A server that answers without the password was started before the stack set one.
        if _ping(self.port, None):
            return "runs without a password: restart it (stack down redis && stack up redis)"
        return None

    def prepare(self) -> None:
        if shutil.which(BINARY) is None:
            self.step(f"apt-get install {APT_PACKAGE}", self._install)
        version = self.version()
        if not version.startswith(REQUIRED_MAJOR + "."):
            raise StackError(
                self.name, f"{BINARY} {version} found, Redis {REQUIRED_MAJOR}.x needed")

    def launch(self) -> None:
        binary = shutil.which(BINARY)
        if binary is None:
            raise StackError(self.name, f"{BINARY} not found after install")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch(exist_ok=True)
        log_offset = self.log_path.stat().st_size
        self._write_config()
        process = spawn([binary, str(self.config_file)], self.log_path, cwd=self.data_dir)
        write_pidfile(self.pidfile, process.pid)

        def settled() -> bool:
            return process.poll() is not None or _ping(self.port, REDIS_PASSWORD)

        ready = wait_for(settled, READY_TIMEOUT_SECONDS) and process.poll() is None
        if not ready:
            stop_pid(process.pid, timeout=STOP_TIMEOUT_SECONDS, child=process)
            remove_file(self.pidfile)
            detail = error_line(self.log_path, log_offset)
            detail = detail or f"not ready after {READY_TIMEOUT_SECONDS:.0f}s"
            raise StackError(self.name, f"did not start: {detail}")

    def _settings(self) -> list[tuple[str, str]]:
        """The lines of redis.conf, in order: a subclass (a cluster node) appends its own."""
        return [
            ("bind", HOST),
            ("port", str(self.port)),
            ("protected-mode", "yes"),
            ("requirepass", REDIS_PASSWORD),
            ("maxmemory", REDIS_MAXMEMORY),
            ("maxmemory-policy", REDIS_MAXMEMORY_POLICY),
            ("save", ""),
            ("appendonly", "no"),
            ("daemonize", "no"),
            ("pidfile", str(self.pidfile)),
            ("logfile", str(self.log_path)),
            ("dir", str(self.data_dir)),
        ]

    def _write_config(self) -> None:
        """The server's settings, rewritten on every start: the password, memory bound and
        policy of this version apply to a data folder made by any earlier one."""
        body = "".join(f"{name} {_quoted(value)}\n" for name, value in self._settings())
        target = self.config_file
        # Created private before the password is written into it.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("# Written by `stack up` on every start; edits are overwritten.\n" + body)
        target.chmod(0o600)

    def _install(self) -> None:
        apt_install(self.name, [APT_PACKAGE], self.config.logs_dir / "install.log",
                    needed_for=f"Redis {REQUIRED_MAJOR}")

    def stop(self) -> bool:
        pid = self.running_pid()
        if pid is None:
            remove_file(self.pidfile)
            return False
        # Saving is off, so SIGTERM is a clean and immediate shutdown.
        stop_pid(pid, timeout=STOP_TIMEOUT_SECONDS)
        if pid_alive(pid):
            raise StackError(self.name, f"pid {pid} did not stop")
        remove_file(self.pidfile)
        return True


def _quoted(value: str) -> str:
    """A value of redis.conf in double quotes (paths may hold spaces)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _command(*args: str) -> bytes:
    """One command in RESP, so a password with spaces or quotes needs no escaping."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _replies(port: int, commands: Sequence[bytes]) -> list[bytes]:
    """The first line of each reply to ``commands``, sent at once (empty when unreachable)."""
    try:
        with socket.create_connection((HOST, port), timeout=PROBE_TIMEOUT_SECONDS) as conn:
            conn.sendall(b"".join(commands))
            data = b""
            while data.count(b"\r\n") < len(commands):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return []
    return data.split(b"\r\n")[: len(commands)]


def _ping(port: int, password: str | None) -> bool:
    """Whether the server on ``port`` answers PING, after AUTH with ``password`` if given."""
    commands = [_command("PING")] if password is None else [
        _command("AUTH", password), _command("PING")]
    expected = [b"+PONG"] if password is None else [b"+OK", b"+PONG"]
    return _replies(port, commands) == expected
