"""What verification reports: findings, per-kind tallies, the report, the scope of a run.

Pure values and functions, no I/O: the engine (``indexer.verify``) fills them, the command
(``indexer.verify_command``) prints them.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from cache.types import ObjectKind

EXAMPLES = 50
API_KEY = "api_key"
QUARANTINED = "its row is quarantined"
NO_ROW = "the source has no such row"
MOVED = "now in project "
# Every kind in the order a load writes them: segments before the customers they count.
KIND_ORDER = (ObjectKind.CAMPAIGN, ObjectKind.SEGMENT, ObjectKind.VOUCHER, ObjectKind.CUSTOMER)


class Problem(enum.StrEnum):
    MISSING = "missing"
    EXTRA = "extra"
    DIFFERENT = "different"


class Sink(enum.StrEnum):
    ELASTICSEARCH = "elasticsearch"
    REDIS = "redis"


@dataclass(frozen=True, slots=True)
class Finding:
    """One way one object differs in one sink. ``part`` names what differs (``object``,
    ``alias``, ``membership``, ``count``); ``versions`` are the stored versions seen, which
    must not move between the two sightings of a confirmed difference."""

    kind: str
    object_id: str
    project_id: str
    sink: Sink
    problem: Problem
    part: str = "object"
    detail: str = ""
    versions: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[str, str, str, Sink, Problem, str]:
        return (self.kind, self.object_id, self.project_id, self.sink, self.problem, self.part)

    def describe(self) -> str:
        where = f"{self.sink.value} {self.part}" if self.part != "object" else self.sink.value
        return (
            f"{self.kind} {self.object_id} (project {self.project_id}): {self.problem.value} "
            f"in {where}{': ' + self.detail if self.detail else ''}"
        )


@dataclass
class KindTally:
    checked: int = 0
    missing: int = 0
    extra: int = 0
    different: int = 0
    changing: int = 0
    repaired: int = 0


@dataclass
class VerifyReport:
    tallies: dict[str, KindTally] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)
    difference_count: int = 0
    examples_kept: int = EXAMPLES

    def tally(self, kind: str) -> KindTally:
        # Plain strings as keys (an ObjectKind finds the same entry): the report prints as JSON.
        return self.tallies.setdefault(str(kind), KindTally())

    def differ(self, finding: Finding) -> None:
        self.difference_count += 1
        tally = self.tally(finding.kind)
        setattr(tally, finding.problem.value, getattr(tally, finding.problem.value) + 1)
        if len(self.differences) < self.examples_kept:
            self.differences.append(finding.describe())

    @property
    def checked(self) -> dict[str, int]:
        return {kind: tally.checked for kind, tally in self.tallies.items()}

    @property
    def ok(self) -> bool:
        return self.difference_count == 0


@dataclass(frozen=True, slots=True)
class VerifyScope:
    """What to compare: kinds (API keys go with every kind), one project or all, and a
    random sample of ``sample`` objects per kind instead of every object (a sample skips
    the search for extra objects and the segment counters)."""

    kinds: tuple[ObjectKind, ...] = KIND_ORDER
    project_id: str | None = None
    sample: int | None = None
    api_keys: bool = True


def digest(value: Any) -> str:
    """A stable digest of an API object: sorted-key JSON, so field order does not count."""
    encoded = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.blake2b(encoded, digest_size=8).hexdigest()
