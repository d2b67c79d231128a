"""The ``readapi`` command: ``readapi serve`` runs the read API.

``--workers N`` forks N processes that each run one event loop (uvloop) and listen on the
same port with SO_REUSEPORT, so the kernel spreads connections over them; each has its own L1
and its own invalidation subscription. SIGTERM or SIGINT to the parent is passed on to every
worker, which stops accepting, finishes the requests in flight and exits. With several
workers, /metrics answers every worker's figures (``readapi.worker_metrics``).

The parent supervises: a worker that dies (crash, SIGKILL, out of memory) is forked again
after a delay that starts at 0.5 s and doubles with each death in a row up to 30 s (each
drawn up to 25 % shorter, so that workers dying together do not come back together); a
worker that had served 60 s starts again from 0.5 s. Each death and each restart is one log
line (the worker's index and pid, its exit code or signal, the delay). Once SIGTERM or SIGINT
arrives nothing is restarted. A worker of the first generation that cannot start serving
(the port taken, the app failing at startup) stops the command with status 1 instead:
restarting would not help.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

from cache.logs import configure_logging
from readapi.settings import API_PORT, ENVIRONMENT_HELP, ApiSettings, SettingsError

SHUTDOWN_TIMEOUT_SECONDS = 10.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
RESTART_DELAY_MIN_SECONDS = 0.5
RESTART_DELAY_MAX_SECONDS = 30.0
RESTART_JITTER = 0.25  # the delay is drawn up to 25 % under its nominal value
STABLE_SECONDS = 60.0  # a worker that lived this long restarts from the shortest delay
EXIT_NOT_STARTED = 3  # a worker's status when it could not start serving
# The parent blocks these and takes them with sigwaitinfo: no handler runs between two steps
# of the supervision loop, and none is lost while a worker is being forked.
SUPERVISED_SIGNALS = frozenset({signal.SIGCHLD, signal.SIGTERM, signal.SIGINT})

log = logging.getLogger("readapi.cli")  # also when run as `python -m readapi.cli`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="readapi",
        description="Read API of the loyalty platform: HTTP over Redis and Elasticsearch.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = subparsers.add_parser(
        "serve",
        help="serve the HTTP API",
        description="Serve the read API (docs/api.md §3). Holds no Postgres setting: documents, "
        "API keys and the watermark come from Redis and Elasticsearch, kept by the indexer.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument(
        "--port", type=int, default=None,
        help=f"port to listen on (default: ${API_PORT.variable} or {API_PORT.default_text})",
    )
    serve.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="worker processes sharing the port (default: one per core, %(default)s here)",
    )
    serve.add_argument("--log-level", default="INFO", help="log level (default: %(default)s)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(handler=_serve)
    return parser


def _run_worker(settings: ApiSettings, host: str, port: int, access_log: bool) -> int:
    """Serve until SIGTERM/SIGINT; the exit status: 0, or ``EXIT_NOT_STARTED``."""
    # Imported here, in the worker: the parent must not hold the app's modules (request ids,
    # for one, take a per-process prefix when their module is imported).
    from readapi.app import create_app
    from readapi.serving import ServeStartError, serve

    try:
        app = create_app(settings)
    except Exception:
        log.exception("could not build the app", extra={"pid": os.getpid()})
        return EXIT_NOT_STARTED
    try:
        serve(
            app,
            host,
            port,
            access_log=logging.getLogger("aiohttp.access") if access_log else None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
            keepalive_timeout=settings.keepalive_timeout_seconds,
            header_timeout=settings.header_timeout_seconds,
        )
    except ServeStartError:
        log.exception("could not start serving", extra={"pid": os.getpid()})
        return EXIT_NOT_STARTED
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = ApiSettings.from_env()
    except SettingsError as error:
        print(f"readapi serve: {error}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("readapi serve: --workers must be at least 1", file=sys.stderr)
        return 2
    port = settings.port if args.port is None else args.port
    configure_logging(args.log_level)
    for warning in settings.warnings():
        log.warning(warning)
    if args.workers == 1:
        return 0 if _run_worker(settings, args.host, port, args.access_log) == 0 else 1
    # The workers share their metrics through files here (``readapi.worker_metrics``).
    metrics_dir = tempfile.mkdtemp(prefix="readapi-metrics-")
    settings = dataclasses.replace(settings, metrics_dir=metrics_dir)
    parent_pid = os.getpid()
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISED_SIGNALS)

    def fork_worker() -> int:
        pid = os.fork()
        if pid != 0:
            return pid
        code = 1
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)  # the worker takes signals
            _stop_with_parent(parent_pid)
            code = _run_worker(settings, args.host, port, args.access_log)
        except BaseException:
            log.exception("worker failed", extra={"pid": os.getpid()})
        finally:
            os._exit(code)  # a worker must never return into the parent's loop

    try:
        return Supervisor(args.workers, fork_worker).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        # Every worker has exited: a signal still pending is taken here, not acted on.
        while signal.sigtimedwait(SUPERVISED_SIGNALS, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)


def _stop_with_parent(parent_pid: int) -> None:
    """In a forked worker: have the kernel send SIGTERM when the parent dies (killed outright,
    it cannot pass its SIGTERM on), so no worker keeps serving unsupervised. Linux only
    (``prctl(PR_SET_PDEATHSIG)``); elsewhere a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def restart_delay(deaths_in_a_row: int, rng: random.Random | None = None) -> float:
    """Seconds before forking again a worker that died, after ``deaths_in_a_row`` deaths
    before this one without a stable run between: 0.5 s doubling up to 30 s, each drawn up
    to 25 % shorter (never longer: 30 s stays the bound)."""
    nominal: float = min(
        RESTART_DELAY_MAX_SECONDS, RESTART_DELAY_MIN_SECONDS * 2 ** min(deaths_in_a_row, 32)
    )
    return nominal * (rng or random).uniform(1 - RESTART_JITTER, 1)


def _exit_fields(status: int) -> dict[str, int | str]:
    """A child's wait status as log fields: its exit code, or the signal that ended it."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return {"exit_code": code}
    try:
        return {"signal": signal.Signals(-code).name}
    except ValueError:
        return {"signal": str(-code)}


@dataclasses.dataclass
class _Worker:
    index: int
    pid: int | None = None
    started: float = 0.0  # time.monotonic() of the fork
    generation: int = 0  # 0 for the workers forked at start, then one more per restart
    deaths_in_a_row: int = 0
    restart_at: float | None = None
    last_pid: int | None = None


class Supervisor:
    """Forks ``count`` workers, restarts the ones that die, passes SIGTERM/SIGINT on and waits
    for them all. ``fork_worker`` forks one and returns its pid in the parent (the child never
    returns). The caller blocks ``SUPERVISED_SIGNALS`` first; ``run`` takes them."""

    def __init__(self, count: int, fork_worker: Callable[[], int]) -> None:
        self._workers = [_Worker(index) for index in range(count)]
        self._fork_worker = fork_worker
        self._stopping: int | None = None  # the signal passed on, once stopping
        self._status = 0

    def run(self) -> int:
        """Supervise until every worker has exited after a stop; the command's status."""
        for worker in self._workers:
            self._fork(worker)
            log.info("worker started", extra={"worker": worker.index, "pid": worker.pid})
        while self._busy():
            timeout = self._next_restart_in()
            taken: signal.struct_siginfo | None
            if timeout is None:
                taken = signal.sigwaitinfo(SUPERVISED_SIGNALS)
            else:
                taken = signal.sigtimedwait(SUPERVISED_SIGNALS, timeout)
            if taken is not None and taken.si_signo != signal.SIGCHLD:
                self.stop(taken.si_signo)
            self._reap()
            self._restart_due()
        return self._status

    def stop(self, signum: int) -> None:
        """Pass ``signum`` on to every worker; restart nothing from now on."""
        if self._stopping is None:
            self._stopping = signum
            log.info("stopping the workers", extra={"signal": signal.Signals(signum).name})
            for worker in self._workers:
                worker.restart_at = None
        for worker in self._workers:
            if worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signum)

    def _busy(self) -> bool:
        return any(w.pid is not None or w.restart_at is not None for w in self._workers)

    def _next_restart_in(self) -> float | None:
        due = [w.restart_at for w in self._workers if w.restart_at is not None]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _fork(self, worker: _Worker) -> None:
        worker.pid = self._fork_worker()
        worker.started = time.monotonic()

    def _reap(self) -> None:
        """Collect every worker that has exited (one SIGCHLD may stand for several)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for worker in self._workers:
                if worker.pid == pid:
                    worker.pid, worker.last_pid = None, pid
                    self._exited(worker, pid, status)

    def _exited(self, worker: _Worker, pid: int, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        if self._stopping is not None:
            # Stopped by the signal passed on, before or after its handler was in place: clean.
            if code not in (0, -self._stopping):
                self._status = 1
                log.warning(
                    "worker failed while stopping",
                    extra={"worker": worker.index, "pid": pid, **_exit_fields(status)},
                )
            return
        uptime = time.monotonic() - worker.started
        fields = {
            "worker": worker.index, "pid": pid, "uptime_seconds": round(uptime, 3),
            **_exit_fields(status),
        }
        if code == EXIT_NOT_STARTED and worker.generation == 0:
            log.error("worker could not start: stopping", extra=fields)
            self._status = 1
            self.stop(signal.SIGTERM)
            return
        if uptime >= STABLE_SECONDS:
            worker.deaths_in_a_row = 0
        delay = restart_delay(worker.deaths_in_a_row)
        worker.deaths_in_a_row += 1
        worker.restart_at = time.monotonic() + delay
        log.error("worker died", extra={**fields, "restart_in_seconds": round(delay, 3)})

    def _restart_due(self) -> None:
        if self._stopping is not None:
            return
        now = time.monotonic()
        for worker in self._workers:
            if worker.restart_at is not None and worker.restart_at <= now:
                worker.restart_at = None
                try:
                    self._fork(worker)
                except OSError as error:  # out of processes or memory: try again later
                    delay = restart_delay(worker.deaths_in_a_row)
                    worker.deaths_in_a_row += 1
                    worker.restart_at = now + delay
                    log.error(
                        "worker not restarted: fork failed",
                        extra={
                            "worker": worker.index, "error": str(error),
                            "restart_in_seconds": round(delay, 3),
                        },
                    )
                    continue
                worker.generation += 1
                log.warning(
                    "worker restarted",
                    extra={
                        "worker": worker.index, "pid": worker.pid,
                        "previous_pid": worker.last_pid, "restarts": worker.generation,
                    },
                )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
