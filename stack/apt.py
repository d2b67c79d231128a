"""Installs a missing Debian package with apt-get, the only installer the stack uses."""

from __future__ import annotations

import os
from pathlib import Path

from stack.errors import StackError
from stack.processes import run_logged

INSTALL_TIMEOUT_SECONDS = 900.0


def apt_install(service: str, packages: list[str], log_path: Path, *, needed_for: str) -> None:
    """``apt-get install -y`` the packages; on failure refresh the lists once and retry.

    A fresh machine (or a slim image) often has empty package lists, so an install that fails
    is retried after ``apt-get update`` rather than updating on every run.
    """
    names = " ".join(packages)
    if os.geteuid() != 0:
        raise StackError(
            service, f"{needed_for} is missing; install it as root: apt-get install -y {names}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    try:
        run_logged(service, install, log_path, what=f"apt-get install {names}", env=env,
                   timeout=INSTALL_TIMEOUT_SECONDS)
    except StackError:
        run_logged(service, ["apt-get", "update"], log_path, what="apt-get update", env=env,
                   timeout=INSTALL_TIMEOUT_SECONDS)
        run_logged(service, install, log_path, what=f"apt-get install {names}", env=env,
                   timeout=INSTALL_TIMEOUT_SECONDS)
