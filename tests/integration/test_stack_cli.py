"""``stack`` reports bad input in one line and leaves nothing behind; ``status`` lists the stack.

These run the real command in a subprocess against a throwaway stack dir; none of them
starts a service, so they stay quick.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVICES = ("postgres", "postgres-standby", "redis", "redis-cluster", "elasticsearch")
COMMAND_TIMEOUT_SECONDS = 60


def _stack_command() -> list[str]:
    script = shutil.which("stack", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "stack.cli"]


def _run_stack(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_stack_command(), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port with a listener on it for the duration of the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LOYALTY_STACK_DIR"] = str(tmp_path / "stack")
    return env


def _redis_processes_on(port: int) -> list[int]:
    """Pids of redis-server processes serving ``port`` (redis shows it in its process title)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "redis-server" in cmdline and f":{port}" in cmdline:
            found.append(int(entry.name))
    return found


def test_up_reports_a_taken_port_in_one_line(held_port: int, stack_env: dict[str, str]) -> None:
    stack_env["LOYALTY_REDIS_PORT"] = str(held_port)

    result = _run_stack("up", "redis", env=stack_env)

    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "redis" in lines[0]
    assert str(held_port) in lines[0]
    assert _redis_processes_on(held_port) == []
    pidfile = Path(stack_env["LOYALTY_STACK_DIR"]) / "run" / "redis.pid"
    assert not pidfile.exists()


def test_up_rejects_an_unknown_service(stack_env: dict[str, str]) -> None:
    result = _run_stack("up", "memcached", env=stack_env)

    assert result.returncode != 0
    assert "memcached" in result.stderr


def test_status_lists_every_service(stack_env: dict[str, str]) -> None:
    stack_env["LOYALTY_PG_PORT"] = "15433"

    result = _run_stack("status", env=stack_env)

    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.strip()}
    assert set(rows) == set(SERVICES)
    assert "15433" in rows["postgres"]
    assert str(Path(stack_env["LOYALTY_STACK_DIR"]) / "postgres") in rows["postgres"]


def test_help_documents_the_configuration(stack_env: dict[str, str]) -> None:
    result = _run_stack("--help", env=stack_env)

    assert result.returncode == 0
    variables = (
        "LOYALTY_STACK_DIR",
        "LOYALTY_PG_PORT",
        "LOYALTY_PG_STANDBY_PORT",
        "LOYALTY_REDIS_PORT",
        "LOYALTY_REDIS_CLUSTER_PORT",
        "LOYALTY_ES_PORT",
    )
    for variable in variables:
        assert variable in result.stdout
