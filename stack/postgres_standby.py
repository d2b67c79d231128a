"""A streaming standby of the stack's PostgreSQL, for the indexer's rebuild reads
(``LOYALTY_PG_STANDBY_DSN``): started only when named, ``stack up postgres-standby``.

Made once by ``pg_basebackup`` from the running primary (as its admin, over the replication
line of the primary's ``pg_hba.conf``), then started as a hot standby with its own settings
file: the primary's settings (a standby needs at least its ``max_connections``), its own
port, the primary's connection string, and ``hot_standby_feedback`` so that the primary's
vacuum does not cancel a rebuild read in progress. It is read-only: roles, passwords and
databases all come from the primary.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from stack.config import HOST, PG_ADMIN_PASSWORD
from stack.errors import StackError
from stack.postgres import CONFIG_FILE, PG_BIN, SETTINGS, SUPERUSER, Postgres
from stack.processes import run_logged

BASEBACKUP_TIMEOUT_SECONDS = 600


class PostgresStandby(Postgres):
    name = "postgres-standby"

    @property
    def port(self) -> int:
        return self.config.pg_standby_port

    @property
    def data_dir(self) -> Path:
        return self.config.stack_dir / "postgres-standby"

    @property
    def primary(self) -> Postgres:
        return Postgres(self.config, self._progress)

    def notice(self) -> str | None:
        return None

    def prepare(self) -> None:
        primary = self.primary
        if primary.running_pid() is None:
            raise StackError(self.name, "its primary is not running: stack up postgres first")
        # A primary started before the replication line existed reads it on a reload.
        primary._write_hba()
        primary._pg_ctl("reload")
        if not (self.data_dir / "PG_VERSION").exists():
            self.step("pg_basebackup", self._base_backup)
        self._write_settings()
        (self.data_dir / "standby.signal").touch()
        self._give_to_owner(self.data_dir / "standby.signal")

    def _after_start(self) -> None:
        """Nothing to create: a standby takes every role and database from its primary."""

    def _base_backup(self) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise StackError(
                self.name, f"{self.data_dir} is not empty and holds no cluster; remove it")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._give_to_owner(self.data_dir)
        self._check_owner_can_reach(self.data_dir)
        argv = [
            str(PG_BIN / "pg_basebackup"), "-D", str(self.data_dir),
            "-h", HOST, "-p", str(self.config.pg_port), "-U", SUPERUSER,
            "--wal-method=stream", "--checkpoint=fast", "--no-password",
        ]
        # The password through the environment, not the command line (``ps`` shows that).
        env = dict(os.environ, PGPASSWORD=PG_ADMIN_PASSWORD)
        try:
            run_logged(self.name, self._as_owner(argv), self.log_path, what="pg_basebackup",
                       env=env, cwd=Path("/"), timeout=BASEBACKUP_TIMEOUT_SECONDS)
        except StackError:
            # A half-copied folder would make every later start fail.
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise

    def _write_settings(self) -> None:
        primary_conninfo = self.primary.dsn("postgres")
        settings = dict(
            SETTINGS,
            port=str(self.port),
            hot_standby="on",
            hot_standby_feedback="on",
            primary_conninfo=f"'{primary_conninfo}'",
        )
        body = "".join(f"{key} = {value}\n" for key, value in settings.items())
        target = self.data_dir / CONFIG_FILE
        target.write_text("# Written by `stack up postgres-standby`; edits are overwritten.\n"
                          + body)
        target.chmod(0o600)
        self._give_to_owner(target)
