"""PostgreSQL 15 for the local stack: a project-owned cluster run with Debian's binaries.

The cluster lives in ``<stack dir>/postgres``, listens on loopback TCP only and is tuned for
tests (logical decoding on, durability off). Every connection authenticates with a password
(``scram-sha-256``). On every start, so that a cluster of any age is brought up to this
version (values from ``stack/config.py``): ``pg_hba.conf`` is rewritten, the admin's password
is set in single-user mode before the server starts (no socket, no trust, not even for a
moment), and once it runs the database and the indexer's role (``LOGIN REPLICATION``, not a
superuser) are created if missing and the role's attributes and password set. What the role
may read and write in a database is granted by ``indexer setup``, run as the admin. When the
stack runs as root, initdb, pg_ctl and postgres run as the ``postgres`` user, who owns the
data folder.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from stack.apt import apt_install
from stack.config import (
    ENV_STACK_DIR,
    HOST,
    PG_ADMIN_PASSWORD,
    PG_ADMIN_USER,
    PG_INDEXER_PASSWORD,
    PG_INDEXER_ROLE,
)
from stack.errors import StackError
from stack.processes import error_line, run_logged, running_pid
from stack.service import Service

PG_MAJOR = "15"
PG_BIN = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
APT_PACKAGE = f"postgresql-{PG_MAJOR}"
OS_USER = "postgres"
SUPERUSER = PG_ADMIN_USER
DATABASE = "loyalty"
CONFIG_FILE = "stack.conf"
HBA_FILE = "pg_hba.conf"
HBA_HEADER = "# Written by `stack up` on every start; edits are overwritten."
# Passwords on every connection; the server listens on loopback TCP only (no socket). The
# replication line lets a standby (``stack up postgres-standby``) stream the WAL.
HBA_RULES = (
    "# TYPE  DATABASE     USER  ADDRESS       METHOD\n"
    f"host    all          all   {HOST}/32  scram-sha-256\n"
    f"host    replication  all   {HOST}/32  scram-sha-256\n"
)
# The indexer's role: may log in and use replication slots, and nothing else on its own.
INDEXER_ROLE_ATTRIBUTES = (
    "LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"
)
START_TIMEOUT_SECONDS = 60
SINGLE_USER_TIMEOUT_SECONDS = 120

# Durability is off on purpose: this cluster only ever holds test and development data.
SETTINGS: dict[str, str] = {
    "listen_addresses": f"'{HOST}'",
    # TCP only: no socket in /var/run/postgresql to collide with a system cluster.
    "unix_socket_directories": "''",
    "wal_level": "logical",
    "max_replication_slots": "64",
    "max_wal_senders": "64",
    # A slot that falls this far behind is invalidated rather than filling the disk; the
    # indexer sees it (wal_status lost) and rebuilds from a new snapshot (docs/operations.md).
    "max_slot_wal_keep_size": "'8GB'",
    "max_connections": "300",
    "fsync": "off",
    # Commits stay synchronous: a writer that reads pg_current_wal_lsn() after its commit must
    # get a position at or past that commit (the read-your-writes contract), and decoding only
    # sees flushed WAL. With fsync off a synchronous commit costs next to nothing.
    "synchronous_commit": "on",
    "full_page_writes": "off",
    "wal_writer_delay": "'10ms'",
    # Per-statement counters: how tests prove that a segment recompute reads nothing from
    # the source, and what an operator reads to see the indexer's queries.
    "shared_preload_libraries": "'pg_stat_statements'",
    "pg_stat_statements.track": "all",
}


class Postgres(Service):
    name = "postgres"

    @property
    def port(self) -> int:
        return self.config.pg_port

    @property
    def data_dir(self) -> Path:
        return self.config.stack_dir / "postgres"

    def dsn(self, database: str = DATABASE) -> str:
        """The admin's (the cluster's superuser) connection string."""
        return _url(SUPERUSER, PG_ADMIN_PASSWORD, self.port, database)

    def indexer_dsn(self, database: str = DATABASE) -> str:
        """The connection string of the indexer's role."""
        return _url(PG_INDEXER_ROLE, PG_INDEXER_PASSWORD, self.port, database)

    def version(self) -> str:
        binary = PG_BIN / "postgres"
        if not binary.exists():
            return f"{PG_MAJOR} (not installed)"
        out = subprocess.run(
            [str(binary), "-V"], capture_output=True, text=True, check=False).stdout
        # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        parts = out.split()
        return parts[2] if len(parts) >= 3 else PG_MAJOR

    def running_pid(self) -> int | None:
        # The postmaster's command line carries its data folder, which proves it is ours.
        return running_pid(self.data_dir / "postmaster.pid", str(self.data_dir))

    def notice(self) -> str | None:
        # The rules are written right before a start: older ones were in force at this one.
        try:
            current = (self.data_dir / HBA_FILE).read_text().startswith(HBA_HEADER)
        except OSError:
            current = False
        if current:
            return None
        return "runs without passwords: restart it (stack down postgres && stack up postgres)"

    def prepare(self) -> None:
        if not (PG_BIN / "pg_ctl").exists():
            self.step(f"apt-get install {APT_PACKAGE}", self._install)
        if not (self.data_dir / "PG_VERSION").exists():
            self.step("initdb", self._initdb)
        self._write_settings()
        self._write_hba()
        self._set_admin_password()

    def launch(self) -> None:
        self._prepare_log()
        log_offset = self.log_path.stat().st_size
        try:
            self._pg_ctl("start", "-l", str(self.log_path), "-w", "-t", str(START_TIMEOUT_SECONDS))
        except StackError as exc:
            self._stop_quietly()
            reason = error_line(self.log_path, log_offset) or exc.reason
            raise StackError(self.name, f"did not start: {reason}") from None
        try:
            self._after_start()
        except StackError:
            self._stop_quietly()
            raise

    def _after_start(self) -> None:
        self._ensure_database_and_role()

    def stop(self) -> bool:
        if self.running_pid() is None:
            return False
        self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(START_TIMEOUT_SECONDS))
        return True

    def _install(self) -> None:
        apt_install(self.name, [APT_PACKAGE], self.config.logs_dir / "install.log",
                    needed_for=f"PostgreSQL {PG_MAJOR}")

    def _initdb(self) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise StackError(
                self.name, f"{self.data_dir} is not empty and holds no cluster; remove it")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._give_to_owner(self.data_dir)
        self._check_owner_can_reach(self.data_dir)
        argv = [
            str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
            "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8",
        ]
        try:
            run_logged(self.name, self._as_owner(argv), self.log_path, what="initdb", cwd=Path("/"))
        except StackError:
            # A half-initialised folder would make every later initdb refuse to run.
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise

    def _write_settings(self) -> None:
        """Our settings in their own file, included from postgresql.conf, rewritten on every up
        so a changed ``LOYALTY_PG_PORT`` takes effect."""
        settings = dict(SETTINGS, port=str(self.port))
        body = "".join(f"{key} = {value}\n" for key, value in settings.items())
        target = self.data_dir / CONFIG_FILE
        target.write_text("# Written by `stack up`; edits are overwritten.\n" + body)
        self._give_to_owner(target)
        main_conf = self.data_dir / "postgresql.conf"
        include = f"include_if_exists = '{CONFIG_FILE}'\n"
        if include not in main_conf.read_text():
            with main_conf.open("a") as handle:
                handle.write("\n" + include)

    def _write_hba(self) -> None:
        target = self.data_dir / HBA_FILE
        target.write_text(f"{HBA_HEADER}\n{HBA_RULES}")
        target.chmod(0o600)
        self._give_to_owner(target)

    def _set_admin_password(self) -> None:
        """The admin's password, set in single-user mode while the server is stopped: a
        cluster made before the stack had passwords has none, and every connection needs one.
        Cheap (a tenth of a second), so done on every start rather than remembered."""
        statement = (
            f"ALTER ROLE {_identifier(SUPERUSER)} WITH PASSWORD {_literal(PG_ADMIN_PASSWORD)};\n"
        )
        argv = [str(PG_BIN / "postgres"), "--single", "-D", str(self.data_dir), "postgres"]
        log_path = self.config.logs_dir / "postgres-ctl.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            result = subprocess.run(
                self._as_owner(argv), input=statement.encode(), capture_output=True, cwd="/",
                timeout=SINGLE_USER_TIMEOUT_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            raise StackError(self.name, "setting the admin password timed out") from None
        # The backend echoes nothing of its input: the password does not reach the log.
        output = (result.stdout + result.stderr).decode(errors="replace")
        with log_path.open("a") as log:
            log.write(f"$ {' '.join(argv)}  (ALTER ROLE {SUPERUSER} WITH PASSWORD ...)\n")
            log.write(output)
        failed = [line for line in output.splitlines() if "ERROR:" in line or "FATAL:" in line]
        if result.returncode != 0 or failed:
            detail = failed[0].strip() if failed else f"exit {result.returncode}"
            raise StackError(
                self.name, f"cannot set the admin password: {detail} (see {log_path})")

    def _prepare_log(self) -> None:
        # pg_ctl opens the log as the postgres user: the file must exist and be theirs.
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch(exist_ok=True)
        self._give_to_owner(self.log_path)

    def _ensure_database_and_role(self) -> None:
        step = f"create database {DATABASE}"
        try:
            with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                ).fetchone()
                if exists is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
                    self.say(f"created database {DATABASE}")
                step = f"create role {PG_INDEXER_ROLE}"
                role = conn.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", (PG_INDEXER_ROLE,)
                ).fetchone()
                # Attributes and password from this version on every start, new role or old.
                statement = sql.SQL("{verb} ROLE {role} WITH " + INDEXER_ROLE_ATTRIBUTES
                                    + " PASSWORD {password}").format(
                    verb=sql.SQL("ALTER" if role else "CREATE"),
                    role=sql.Identifier(PG_INDEXER_ROLE),
                    password=sql.Literal(PG_INDEXER_PASSWORD),
                )
                conn.execute(statement)
                if role is None:
                    self.say(f"created role {PG_INDEXER_ROLE}")
        except psycopg.Error as exc:
            detail = " ".join(str(exc).split())
            raise StackError(self.name, f"cannot {step}: {detail}") from None

    def _pg_ctl(self, *args: str) -> None:
        argv = [str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), *args]
        run_logged(self.name, self._as_owner(argv), self.config.logs_dir / "postgres-ctl.log",
                   what=f"pg_ctl {args[0]}", cwd=Path("/"), timeout=START_TIMEOUT_SECONDS + 30)

    def _stop_quietly(self) -> None:
        if self.running_pid() is None:
            return
        with contextlib.suppress(StackError):
            self._pg_ctl("stop", "-m", "immediate", "-w")

    def _check_owner_can_reach(self, folder: Path) -> None:
        """Fail clearly when a parent folder (say a home folder with mode 700) locks the
        postgres user out; initdb's own message does not say which folder is at fault."""
        if os.geteuid() != 0:
            return
        probe = subprocess.run(self._as_owner(["test", "-w", str(folder)]), check=False, cwd="/")
        if probe.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise StackError(
                self.name,
                f"user {OS_USER!r} cannot reach {folder}: a parent folder is not searchable by "
                f"others; point {ENV_STACK_DIR} elsewhere or chmod o+x the parents",
            )

    @staticmethod
    def _as_owner(argv: list[str]) -> list[str]:
        # initdb and pg_ctl refuse to run as root.
        if os.geteuid() == 0:
            return ["runuser", "-u", OS_USER, "--", *argv]
        return argv

    def _give_to_owner(self, path: Path) -> None:
        if os.geteuid() != 0:
            return
        try:
            owner = pwd.getpwnam(OS_USER)
        except KeyError:
            raise StackError(self.name, f"user {OS_USER!r} does not exist") from None
        os.chown(path, owner.pw_uid, owner.pw_gid)


def _url(user: str, password: str, port: int, database: str) -> str:
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"postgresql://{credentials}@{HOST}:{port}/{database}"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
