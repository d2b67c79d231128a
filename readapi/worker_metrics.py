"""/metrics over every worker of ``readapi serve --workers N``.

The kernel hands each connection to any worker, so a scrape answered with one worker's figures
would show a random fraction of the traffic. Each worker therefore writes a snapshot of its
registry's samples to ``<dir>/<pid>.json`` about once a second (written aside, then renamed:
a reader never sees half a file), and a scrape answers the merge of every worker's snapshot,
the answering worker's own samples read live. Counters and histograms add up (``_created``
keeps the earliest); gauges stay per worker, labelled ``worker``. The parent process makes the
directory, and removes it when every worker has exited.

prometheus_client's multiprocess mode does the same with files of its own, but needs its own
metric classes in every process (one file write per increment) and cannot take the plain
counters the request path keeps (see ``readapi.metrics``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from readapi.background import stop_task

log = logging.getLogger(__name__)

SNAPSHOT_SECONDS = 1.0
WORKER_LABEL = "worker"

# One family as written to a snapshot: name, help, type, [[sample name, labels, value]].
Family = dict[str, Any]


def snapshot(registry: CollectorRegistry) -> list[Family]:
    """The registry's samples as plain JSON-able data."""
    return [
        {
            "name": metric.name,
            "help": metric.documentation,
            "type": metric.type,
            "samples": [[s.name, dict(s.labels), s.value] for s in metric.samples],
        }
        for metric in registry.collect()
    ]


def merge(snapshots: Iterable[tuple[str, list[Family]]]) -> list[Metric]:
    """Families of several workers' snapshots (worker name, families) as one set."""
    merged: dict[str, tuple[Metric, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for worker, families in snapshots:
        for family in families:
            entry = merged.get(family["name"])
            if entry is None:
                entry = merged[family["name"]] = (
                    Metric(family["name"], family["help"], family["type"]),
                    {},
                )
            values = entry[1]
            for name, labels, value in family["samples"]:
                if family["type"] == "gauge":
                    labels = {**labels, WORKER_LABEL: worker}
                key = (name, tuple(sorted(labels.items())))
                if key not in values:
                    values[key] = value
                elif name.endswith("_created"):
                    values[key] = min(values[key], value)
                else:
                    values[key] += value
    result = []
    for metric, values in merged.values():
        for (name, labels), value in values.items():
            metric.add_sample(name, dict(labels), value)
        result.append(metric)
    return result


class _Merged:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class WorkerMetrics:
    """This worker's part of the shared /metrics: snapshots out, the merged view in."""

    def __init__(self, directory: Path, registry: CollectorRegistry) -> None:
        self._directory = directory
        self._registry = registry
        self._worker = str(os.getpid())
        self._task: asyncio.Task[None] | None = None
        self._write_failing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="worker-metrics-snapshots"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
        self.write()  # the last figures, for the workers still serving

    async def _run(self) -> None:
        while True:
            # Jittered, so that workers started together do not write in step.
            await asyncio.sleep(SNAPSHOT_SECONDS * random.uniform(0.8, 1.2))
            self.write()

    def write(self) -> None:
        """Write this worker's snapshot; a failure is logged once per spell, then retried
        at the next tick (the scrape still merges the older file)."""
        path = self._directory / f"{self._worker}.json"
        aside = self._directory / f".{self._worker}.tmp"
        try:
            aside.write_bytes(orjson.dumps(snapshot(self._registry)))
            aside.replace(path)
        except OSError as error:
            if not self._write_failing:
                log.warning("metrics snapshot not written: %s", error)
            self._write_failing = True
            return
        self._write_failing = False

    def render(self) -> bytes:
        """Every worker's figures merged, this worker's read now."""
        snapshots: list[tuple[str, list[Family]]] = [(self._worker, snapshot(self._registry))]
        for path in sorted(self._directory.glob("*.json")):
            worker = path.stem
            if worker == self._worker:
                continue
            try:
                families = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # a worker's file vanished or is unreadable: its figures are missing
            snapshots.append((worker, families))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(merge(snapshots)))
        result: bytes = generate_latest(registry)
        return result
