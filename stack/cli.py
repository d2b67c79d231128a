"""``stack``: install, start, stop and inspect the local PostgreSQL, Redis and Elasticsearch.

Progress goes to stdout, one short line per event. A failure is one line on stderr,
``stack: <service>: <reason>``, with a non-zero exit; whatever the failing ``up`` started is
stopped again first.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence

from stack.config import (
    DEFAULT_ES_PORT,
    DEFAULT_PG_PORT,
    DEFAULT_PG_STANDBY_PORT,
    DEFAULT_REDIS_CLUSTER_PORT,
    DEFAULT_REDIS_PORT,
    DEFAULT_STACK_DIR,
    ENV_ES_PORT,
    ENV_PG_PORT,
    ENV_PG_STANDBY_PORT,
    ENV_REDIS_CLUSTER_PORT,
    ENV_REDIS_PORT,
    ENV_STACK_DIR,
    HOST,
    PG_ADMIN_PASSWORD,
    PG_ADMIN_USER,
    PG_INDEXER_PASSWORD,
    PG_INDEXER_ROLE,
    REDIS_CLUSTER_BUS_OFFSET,
    REDIS_CLUSTER_NODES,
    REDIS_PASSWORD,
    StackConfig,
)
from stack.elasticsearch import Elasticsearch
from stack.errors import StackError
from stack.postgres import DATABASE, Postgres
from stack.postgres_standby import PostgresStandby
from stack.processes import port_is_free, require_free_port, tail_lines
from stack.redis import Redis
from stack.redis_cluster import DEFAULT_PORTS, RedisClusterService, cluster_url
from stack.service import Service

SERVICE_TYPES: tuple[type[Service], ...] = (
    Postgres, PostgresStandby, Redis, RedisClusterService, Elasticsearch)
SERVICE_NAMES = tuple(kind.name for kind in SERVICE_TYPES)
# What ``up`` starts when no service is named: the standby only serves the indexer's optional
# rebuild reads (LOYALTY_PG_STANDBY_DSN) and doubles the WAL work, and the Redis Cluster (six
# servers) only the tests of the cache in cluster mode, so both are asked for by name.
ASKED_FOR_BY_NAME = (PostgresStandby.name, RedisClusterService.name)
DEFAULT_SERVICES = tuple(name for name in SERVICE_NAMES if name not in ASKED_FOR_BY_NAME)
NAME_WIDTH = 18
FOLLOW_POLL_SECONDS = 0.5

_ENV_WIDTH = len(ENV_REDIS_CLUSTER_PORT)
_CLUSTER_URL = cluster_url(DEFAULT_PORTS)

EPILOG = f"""\
services: {", ".join(SERVICE_NAMES)}
  (up: all but {" and ".join(ASKED_FOR_BY_NAME)} when none is named; down: all of them)

configuration (environment variables, defaults in brackets):
  {ENV_STACK_DIR:<{_ENV_WIDTH}} state, data, logs and pidfiles [<repo>/.stack: {DEFAULT_STACK_DIR}]
  {ENV_PG_PORT:<{_ENV_WIDTH}} PostgreSQL 15 port [{DEFAULT_PG_PORT}]
  {ENV_PG_STANDBY_PORT:<{_ENV_WIDTH}} its streaming standby's port [{DEFAULT_PG_STANDBY_PORT}]
  {ENV_REDIS_PORT:<{_ENV_WIDTH}} Redis 7 port [{DEFAULT_REDIS_PORT}]
  {ENV_REDIS_CLUSTER_PORT:<{_ENV_WIDTH}} first of the Redis Cluster's {REDIS_CLUSTER_NODES} \
ports (bus: +{REDIS_CLUSTER_BUS_OFFSET}) [{DEFAULT_REDIS_CLUSTER_PORT}]
  {ENV_ES_PORT:<{_ENV_WIDTH}} Elasticsearch 8.19.9 HTTP port [{DEFAULT_ES_PORT}]

every service listens on {HOST} only, with fixed local credentials. With the defaults:
  admin    postgresql://{PG_ADMIN_USER}:{PG_ADMIN_PASSWORD}@{HOST}:{DEFAULT_PG_PORT}/{DATABASE}
  indexer  postgresql://{PG_INDEXER_ROLE}:{PG_INDEXER_PASSWORD}@{HOST}:{DEFAULT_PG_PORT}/{DATABASE}
  standby  postgresql://{PG_INDEXER_ROLE}:{PG_INDEXER_PASSWORD}@{HOST}:{DEFAULT_PG_STANDBY_PORT}/{DATABASE}
  redis    redis://:{REDIS_PASSWORD}@{HOST}:{DEFAULT_REDIS_PORT}/0
  cluster  {_CLUSTER_URL}
  search   http://{HOST}:{DEFAULT_ES_PORT}
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = StackConfig.from_env()
        if args.command == "up":
            return _up(config, args.services)
        if args.command == "down":
            return _down(config, args.services)
        if args.command == "status":
            return _status(config)
        return _logs(config, args.service, args.lines, args.follow)
    except StackError as exc:
        _fail(exc)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stack",
        description="Local stack of the loyalty read path, without Docker: "
        "PostgreSQL 15, Redis 7 and Elasticsearch 8.19.9.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up", help="install what is missing, start and wait until ready (no-op when running)",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("services", nargs="*", type=_service_name, metavar="SERVICE",
                    help="services to start, in dependency order "
                    f"[all but {' and '.join(ASKED_FOR_BY_NAME)}]")

    down = commands.add_parser(
        "down", help="stop what this stack started", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    down.add_argument("services", nargs="*", type=_service_name, metavar="SERVICE",
                      help="services to stop [all]")

    commands.add_parser(
        "status", help="version, port, data folder and state of each service", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)

    logs = commands.add_parser(
        "logs", help="print the end of a service's log", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    logs.add_argument("service", type=_service_name, metavar="SERVICE",
                      help="whose log to print")
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines to print [50]")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    return parser


def _service_name(value: str) -> str:
    if value not in SERVICE_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown service {value!r} (choose from {', '.join(SERVICE_NAMES)})")
    return value


def _services(
    config: StackConfig, names: Sequence[str], *, default: Sequence[str] = SERVICE_NAMES
) -> list[Service]:
    wanted = set(names) or set(default)
    return [kind(config, _progress) for kind in SERVICE_TYPES if kind.name in wanted]


def _progress(service: str, message: str) -> None:
    print(f"{service:<{NAME_WIDTH}}{message}", flush=True)


def _fail(error: StackError) -> None:
    reason = " ".join(error.reason.split())
    print(f"stack: {error.service}: {reason}", file=sys.stderr, flush=True)


def _up(config: StackConfig, names: Sequence[str]) -> int:
    started: list[Service] = []
    began = time.monotonic()
    services = _services(config, names, default=DEFAULT_SERVICES)
    try:
        # Every port first, so a taken one fails the command before anything starts.
        for service in services:
            if service.running_pid() is None:
                require_free_port(service.name, HOST, service.port)
        for service in services:
            was_running = service.running_pid() is not None
            # Listed before it is ready, so an interrupt during its readiness wait stops it too.
            if not was_running:
                started.append(service)
            service.up()
    except (StackError, KeyboardInterrupt) as exc:
        # All or nothing: leave no service of this invocation running behind a failure.
        for service in reversed(started):
            if service.running_pid() is None:
                continue
            service.say("stopping (rolled back)")
            with contextlib.suppress(StackError):
                service.stop()
        if isinstance(exc, KeyboardInterrupt):
            return 130
        _fail(exc)
        return 1
    _progress("stack", f"up in {time.monotonic() - began:.1f}s, stack dir {config.stack_dir}")
    return 0


def _down(config: StackConfig, names: Sequence[str]) -> int:
    failed = False
    for service in reversed(_services(config, names)):
        try:
            service.say("stopped" if service.stop() else "not running")
        except StackError as exc:
            _fail(exc)
            failed = True
    return 1 if failed else 0


def _status(config: StackConfig) -> int:
    header = ("SERVICE", "VERSION", "PORT", "STATE", "DATA")
    rows = [header]
    for service in _services(config, ()):
        pid = service.running_pid()
        if pid is not None:
            notice = service.notice()
            state = f"running (pid {pid})" + (f", {notice}" if notice else "")
        elif not port_is_free(HOST, service.port):
            state = "stopped (port taken by another process)"
        else:
            state = "stopped"
        version = service.version()
        rows.append((service.name, version, str(service.port), state, str(service.data_dir)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    return 0


def _logs(config: StackConfig, name: str, lines: int, follow: bool) -> int:
    (service,) = _services(config, (name,))
    path = service.log_path
    if not path.is_file():
        raise StackError(name, f"no log yet at {path}")
    for line in tail_lines(path, lines):
        print(line)
    if follow:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            while True:
                chunk = handle.read()
                if chunk:
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(FOLLOW_POLL_SECONDS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
