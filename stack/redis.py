"""Redis 7 for the local stack: one server on loopback, no persistence.

Pidfile and log live under the stack dir; the working folder ``<stack dir>/redis`` stays
empty because saving is off.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from stack.apt import apt_install
from stack.config import HOST
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

    def running_pid(self) -> int | None:
        return running_pid(self.pidfile, BINARY)

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
        argv = [
            binary,
            "--bind", HOST,
            "--port", str(self.port),
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--pidfile", str(self.pidfile),
            "--logfile", str(self.log_path),
            "--dir", str(self.data_dir),
        ]
        process = spawn(argv, self.log_path, cwd=self.data_dir)
        write_pidfile(self.pidfile, process.pid)

        def settled() -> bool:
            return process.poll() is not None or _ping(self.port)

        ready = wait_for(settled, READY_TIMEOUT_SECONDS) and process.poll() is None
        if not ready:
            stop_pid(process.pid, timeout=STOP_TIMEOUT_SECONDS, child=process)
            remove_file(self.pidfile)
            detail = error_line(self.log_path, log_offset)
            detail = detail or f"not ready after {READY_TIMEOUT_SECONDS:.0f}s"
            raise StackError(self.name, f"did not start: {detail}")

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


def _ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False
