"""The one error type of the stack manager: which service failed and why, in one line."""

from __future__ import annotations


class StackError(Exception):
    """A service could not be installed, started or stopped.

    The command line prints it as ``stack: <service>: <reason>`` on stderr.
    """

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"{service}: {reason}")
        self.service = service
        self.reason = reason
