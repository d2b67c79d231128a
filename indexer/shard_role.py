"""What this indexer process is under the shard plans in force (``indexer.shards``): read
from Postgres at every step, with the WAL position the step peeks up to, under the plans'
lock (``indexer.reshard``)."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from cache.types import Lsn
from indexer.errors import ShardError
from indexer.shard_plans import lock_plans, previous_slots_left, read_plans
from indexer.shards import ShardPlan, ShardRole, ShardSpec, role_of
from indexer.slot import current_wal_lsn

log = logging.getLogger(__name__)

# Whether the previous plan is still handing off (its slots exist) is looked up at most this
# often: until then the watermark waits for its shards too, which is only conservative.
HANDOFF_CHECK_SECONDS = 1.0


class ShardState:
    """One shard's view of the plans: its role, refreshed by ``position_and_role``."""

    def __init__(self, spec: ShardSpec, base_slot: str) -> None:
        self.spec = spec
        self._base_slot = base_slot
        self.role: ShardRole | None = None
        self._plans: list[ShardPlan] | None = None
        self._handing_off = False  # a previous plan's slot still exists
        self._checked_at = 0.0

    def owns_segments(self, project_id: str) -> bool:
        """Recompute jobs and clock ticks are the plan in force's: a shard handing off
        leaves its projects' jobs to their new owners, so no job runs in two processes."""
        active = self.role is None or self.role.state == "active"
        return active and self.spec.owns(project_id)

    async def position_and_role(self, conn: psycopg.AsyncConnection[Any]) -> tuple[Lsn, ShardRole]:
        """The WAL position to peek up to and this shard's role, both read under the plans'
        lock: a handoff picked after this position is above it, and one picked before it is
        in the plans read here."""
        async with conn.transaction():
            await lock_plans(conn, self._base_slot, exclusive=False)
            plans = await read_plans(conn)
            upto = await current_wal_lsn(conn)
        return upto, await self.read(conn, plans)

    async def read(
        self, conn: psycopg.AsyncConnection[Any], plans: list[ShardPlan] | None = None
    ) -> ShardRole:
        """This shard's role under ``plans`` (default: read now); ``ShardError`` when the
        plans give it none."""
        if plans is None:
            plans = await read_plans(conn)
        now = time.monotonic()
        if self._plans != plans or now >= self._checked_at + HANDOFF_CHECK_SECONDS:
            self._plans, self._checked_at = plans, now
            self._handing_off = bool(await previous_slots_left(conn, plans, self._base_slot))
        role = role_of(self.spec, plans, self._handing_off)
        if role.state == "none":
            in_force = plans[0].shards if plans else 1
            raise ShardError(
                f"shard {self.spec} is in no shard plan in force ({in_force} shard(s)): "
                f"start LOYALTY_SHARD=k/{in_force}, or run `indexer reshard --shards "
                f"{self.spec.count}` first"
            )
        if self.role is not None and role.state != self.role.state:
            log.info(
                "shard plan changed",
                extra={"shard": str(self.spec), "role": role.state, "stop": str(role.stop)},
            )
        self.role = role
        return role
