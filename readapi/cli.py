"""The ``readapi`` command: ``readapi serve`` runs the read API.

``--workers N`` forks N processes that each run one event loop (uvloop) and listen on the
same port with SO_REUSEPORT, so the kernel spreads connections over them; each has its own L1
and its own invalidation subscription. SIGTERM or SIGINT to the parent is passed on to every
worker, which stops accepting, finishes the requests in flight and exits. With several
workers, /metrics answers every worker's figures (``readapi.worker_metrics``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence

from cache.logs import configure_logging
from readapi.settings import ENVIRONMENT_HELP, ApiSettings, SettingsError

SHUTDOWN_TIMEOUT_SECONDS = 10.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="readapi",
        description="Read API of the loyalty platform: HTTP over Redis and Elasticsearch.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = subparsers.add_parser(
        "serve",
        help="serve the HTTP API",
        description="Serve the read API (API.md §3). Holds no Postgres setting: documents, API "
        "keys and the watermark come from Redis and Elasticsearch, kept by the indexer.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument(
        "--port", type=int, default=None,
        help="port to listen on (default: $LOYALTY_API_PORT or 8080)",
    )
    serve.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="worker processes sharing the port (default: one per core, %(default)s here)",
    )
    serve.add_argument("--log-level", default="INFO", help="log level (default: %(default)s)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(handler=_serve)
    return parser


def _run_worker(settings: ApiSettings, host: str, port: int, access_log: bool) -> None:
    import logging

    from readapi.app import create_app
    from readapi.serving import serve

    serve(
        create_app(settings),
        host,
        port,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
    )


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
    if args.workers == 1:
        _run_worker(settings, args.host, port, args.access_log)
        return 0
    # The workers share their metrics through files here (``readapi.worker_metrics``).
    metrics_dir = tempfile.mkdtemp(prefix="readapi-metrics-")
    settings = dataclasses.replace(settings, metrics_dir=metrics_dir)
    children: list[int] = []
    parent_pid = os.getpid()
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _stop_with_parent(parent_pid)
                _run_worker(settings, args.host, port, args.access_log)
            except BaseException:  # a worker must never return into the parent's loop
                code = 1
            os._exit(code)
        children.append(pid)
    try:
        return _supervise(children)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _stop_with_parent(parent_pid: int) -> None:
    """In a forked worker: have the kernel send SIGTERM when the parent dies (killed outright,
    it cannot pass its SIGTERM on), so no worker keeps serving unsupervised. Linux only
    (``prctl(PR_SET_PDEATHSIG)``); elsewhere a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _supervise(children: list[int]) -> int:
    """Pass SIGTERM/SIGINT on to the workers and wait for all of them."""

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for pid in children:
        while True:
            try:
                _, code = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        if os.waitstatus_to_exitcode(code) != 0:
            status = 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
