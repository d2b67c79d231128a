"""Sharded indexers: which shard owns a project, what each shard's slot and publication are
called, which shard plan is in force, and how the shards' watermarks combine.

A shard is ``k/N`` (``LOYALTY_SHARD``, default ``0/1``: one indexer owns everything). Shard
``k`` of ``N`` owns the projects whose bucket (the first two bytes of the MD5 of the project
id, 0 to 65535) is ``k`` modulo ``N``. MD5 because Postgres computes the same bucket inside a
publication's row filter (a row filter may call immutable built-in functions only, and
``hashtext`` is internal to a server version while MD5 is fixed), so a shard's slot decodes
only its own projects' rows.

Plans (``loyalty_indexer.shard_plans``, written by ``indexer reshard``) say from which WAL
position which shard count is in force. The shards of the plan in force apply the
transactions that commit at or after its handoff position, those of the plan before it the
ones that commit before it: a project has exactly one owner at every position. A database
without plans is under the implicit plan of one shard from the start.

Watermarks: each shard keeps its own applied position in Redis (a field of one hash); the
watermark readers wait on (``X-Min-Watermark``) is the least of the positions of the shards
in force and of the previous plan's shards still handing off. Every commit before that least
position is applied by its owner, whichever shard that is.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cache.types import Lsn

BUCKETS = 65536
_SPEC = re.compile(r"(?P<index>[0-9]{1,3})/(?P<count>[0-9]{1,3})")
# Tables whose rows carry their project in another column than ``project_id``, and those
# that carry none: ``segment_members`` rows go to every shard, and each keeps the writes of
# its own projects (``indexer.shard_filter``).
PROJECT_COLUMN = {"projects": "id"}
UNROUTED_TABLES = frozenset({"segment_members"})


def bucket(project_id: str) -> int:
    """The project's bucket, 0 to 65535: as ``bucket_sql`` computes it in Postgres."""
    digest = hashlib.md5(project_id.encode("utf-8"), usedforsecurity=False).digest()
    return digest[0] * 256 + digest[1]


def bucket_sql(column: str) -> str:
    """The row filter expression of ``bucket`` over ``column`` (a plain column name)."""
    if re.fullmatch(r"[a-z_]+", column) is None:
        raise ValueError(f"not a column name: {column!r}")
    digest = f"decode(md5({column}), 'hex')"
    return f"(get_byte({digest}, 0) * 256 + get_byte({digest}, 1))"


@dataclass(frozen=True, slots=True)
class ShardSpec:
    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= 256 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= k < N <= 256")

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        """``k/N``; ``ValueError`` for anything else."""
        match = _SPEC.fullmatch(text)
        if match is None:
            raise ValueError(text)
        return cls(int(match["index"]), int(match["count"]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def field(self) -> str:
        """Its field in the shard watermarks hash."""
        return f"{self.count}:{self.index}"

    @property
    def single(self) -> bool:
        return self.count == 1

    def owns(self, project_id: str) -> bool:
        return self.count == 1 or bucket(project_id) % self.count == self.index

    def slot_name(self, base: str) -> str:
        """One shard keeps the base names (an unsharded indexer's); ``k`` of ``N`` adds
        ``_k_of_N``."""
        return base if self.count == 1 else f"{base}_{self.index}_of_{self.count}"

    def publication_name(self, base: str) -> str:
        return self.slot_name(base)

    def row_filter(self, table: str) -> str | None:
        """The publication's row filter for ``table`` (None: every row)."""
        if self.count == 1 or table in UNROUTED_TABLES:
            return None
        column = PROJECT_COLUMN.get(table, "project_id")
        return f"{bucket_sql(column)} % {self.count} = {self.index}"


def shards_of(count: int) -> list[ShardSpec]:
    return [ShardSpec(index, count) for index in range(count)]


@dataclass(frozen=True, slots=True)
class ShardPlan:
    generation: int  # 0: the implicit plan of a database without plans
    shards: int
    handoff: Lsn


IMPLICIT_PLAN = ShardPlan(0, 1, Lsn(0))


@dataclass(frozen=True, slots=True)
class ShardRole:
    """What a shard is to do under the plans read from the database."""

    state: str  # "active" (in the plan in force), "retiring" (in the one before) or "none"
    start: Lsn  # active: the position its slot starts from (the plan's handoff)
    stop: Lsn | None  # retiring: the position it applies up to, then leaves
    # Fields of the shard watermarks hash whose least value is the combined watermark.
    fields: tuple[str, ...]


def role_of(spec: ShardSpec, plans: Sequence[ShardPlan], handing_off: bool) -> ShardRole:
    """``spec``'s role under ``plans`` (newest first, at most two; none: the implicit plan).
    ``handing_off``: the previous plan's shards are still running (their slots exist)."""
    current = plans[0] if plans else IMPLICIT_PLAN
    previous = plans[1] if len(plans) > 1 else None
    fields = [shard.field for shard in shards_of(current.shards)]
    if previous is not None and handing_off:
        fields.extend(shard.field for shard in shards_of(previous.shards))
    combined = tuple(dict.fromkeys(fields))
    if spec.count == current.shards:
        return ShardRole("active", current.handoff, None, combined)
    if previous is not None and spec.count == previous.shards:
        return ShardRole("retiring", previous.handoff, current.handoff, combined)
    return ShardRole("none", Lsn(0), None, combined)


def combine_watermarks(positions: Mapping[str, int], fields: Sequence[str]) -> int | None:
    """The least position of ``fields`` (None while one has none): what
    ``cache/lua/shard_watermark.lua`` computes, for tests and docs."""
    values = [positions.get(name) for name in fields]
    if not values or any(value is None for value in values):
        return None
    return min(value for value in values if value is not None)
