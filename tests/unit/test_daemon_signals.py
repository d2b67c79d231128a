"""The daemon's operator signals without services: what ``/healthz`` answers, how the lag
figures are derived, how the lag timer behaves while Postgres cannot answer, and how a
shutdown treats a loop that does not look at the stop event (a load)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from cache.config import SettingsError
from cache.types import Lsn
from indexer.daemon import supervise
from indexer.errors import SourceUnavailable
from indexer.health import assess
from indexer.lag import WAL_STATUSES, LagMonitor, lag_seconds, publish, wal_status_values
from indexer.runner import Indexer
from indexer.settings import IndexerSettings
from indexer.slot import SlotStatus

# -- /healthz ------------------------------------------------------------------------------------


def test_starting_until_prepared() -> None:
    health = assess(prepared_at=None, last_step_at=100.0, now=1000.0, stall_seconds=60)
    assert (health.http_status, health.body) == (503, {"status": "starting"})


def test_ok_while_steps_succeed() -> None:
    health = assess(prepared_at=10.0, last_step_at=98.5, now=100.0, stall_seconds=60)
    assert (health.http_status, health.body) == (
        200,
        {"status": "ok", "last_step_age_seconds": 1.5},
    )


def test_stalled_once_no_step_succeeded_for_the_stall_time() -> None:
    at_limit = assess(prepared_at=10.0, last_step_at=40.0, now=100.0, stall_seconds=60)
    assert at_limit.status == "ok"
    health = assess(prepared_at=10.0, last_step_at=39.0, now=100.0, stall_seconds=60)
    assert (health.http_status, health.body) == (
        503,
        {"status": "stalled", "last_step_age_seconds": 61.0, "stall_seconds": 60},
    )


def test_before_the_first_step_the_time_since_preparation_counts() -> None:
    fresh = assess(prepared_at=99.0, last_step_at=None, now=100.0, stall_seconds=60)
    assert fresh.body == {"status": "ok", "last_step_age_seconds": None}
    never = assess(prepared_at=10.0, last_step_at=None, now=100.0, stall_seconds=60)
    assert never.status == "stalled" and never.http_status == 503


def test_a_step_from_before_a_reload_does_not_count_as_stalled() -> None:
    # The reload just finished; the last step is from before it began.
    health = assess(prepared_at=99.0, last_step_at=5.0, now=100.0, stall_seconds=60)
    assert health.status == "ok"


# -- lag figures ---------------------------------------------------------------------------------


def test_lag_seconds_is_zero_when_the_slot_confirmed_everything() -> None:
    assert lag_seconds(0, applied_until=1.0, now=1000.0) == 0.0
    assert lag_seconds(0, applied_until=None, now=1000.0) == 0.0


def test_lag_seconds_grows_with_the_time_since_everything_was_applied() -> None:
    assert lag_seconds(4096, applied_until=100.0, now=130.0) == 30.0
    assert lag_seconds(4096, applied_until=100.0, now=190.0) == 90.0
    # A commit time a little ahead of this host's clock is no negative lag.
    assert lag_seconds(4096, applied_until=101.0, now=100.0) == 0.0


def test_lag_seconds_is_unknown_before_any_step() -> None:
    assert lag_seconds(4096, applied_until=None, now=100.0) is None


@pytest.mark.parametrize("status", WAL_STATUSES)
def test_wal_status_marks_the_current_status_only(status: str) -> None:
    values = wal_status_values(status)
    assert set(values) == set(WAL_STATUSES)
    assert values[status] == 1 and sum(values.values()) == 1


@pytest.mark.parametrize("status", [None, "something new"])
def test_no_or_an_unknown_wal_status_marks_none(status: str | None) -> None:
    assert set(wal_status_values(status).values()) == {0}


def _gauge(name: str, labels: dict[str, str] | None = None) -> float | None:
    value: float | None = REGISTRY.get_sample_value(name, labels or {})
    return value


def test_publish_sets_every_slot_gauge() -> None:
    status = SlotStatus(
        slot_name="s",
        active=False,
        confirmed_flush_lsn=Lsn(1000),
        restart_lsn=Lsn(400),
        wal_lsn=Lsn(5000),
        wal_status="extended",
        retained_wal_bytes=4600,
        lag_bytes=4000,
    )
    publish(status, applied_until=50.0, now=80.0)
    assert _gauge("indexer_lag_bytes") == 4000
    assert _gauge("indexer_lag_seconds") == 30.0
    assert _gauge("indexer_retained_wal_bytes") == 4600
    for name in WAL_STATUSES:
        assert _gauge("indexer_wal_status", {"status": name}) == (name == "extended")


# -- the lag timer through an outage -------------------------------------------------------------


class ScriptedMonitor(LagMonitor):
    """Readings fail as scripted; pauses are recorded instead of slept."""

    def __init__(self, outcomes: list[bool], stop: asyncio.Event) -> None:
        super().__init__(IndexerSettings(), interval=5.0)
        self.outcomes = outcomes
        self.stop = stop
        self.pauses: list[float] = []

    async def sample(self) -> SlotStatus | None:
        if not self.outcomes.pop(0):
            raise SourceUnavailable("postgres: connection refused")
        return None

    async def _pause(self, delay: float, stop: asyncio.Event) -> None:
        self.pauses.append(delay)
        if not self.outcomes:
            self.stop.set()


async def test_the_timer_backs_off_logs_once_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    outcomes = [True, *([False] * 8), True, False, True]
    monitor = ScriptedMonitor(list(outcomes), stop)
    with caplog.at_level(logging.INFO, logger="indexer.lag"):
        await monitor.run(stop)
    assert len(monitor.pauses) == len(outcomes)
    failed = [pause for pause, ok in zip(monitor.pauses, outcomes, strict=True) if not ok]
    # Never a busy loop, never longer than the timer's own period.
    assert all(0.1 <= pause <= 5.0 for pause in failed)
    assert [p for p, ok in zip(monitor.pauses, outcomes, strict=True) if ok] == [5.0] * 3
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("slot status unreadable, lag gauges are stale") == 2
    assert messages.count("slot status readable again") == 2


async def test_the_timer_survives_a_server_that_refuses_connections() -> None:
    """A real refused connection (nothing listens on port 1), not a scripted one."""
    settings = IndexerSettings(pg_dsn="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    stop = asyncio.Event()

    class Counted(LagMonitor):
        attempts = 0

        async def _pause(self, delay: float, stop: asyncio.Event) -> None:
            self.attempts += 1
            if self.attempts >= 3:
                stop.set()

    monitor = Counted(settings, interval=0.2)
    await monitor.run(stop)
    assert monitor.failing and monitor.attempts == 3


async def test_the_timer_ends_when_cancelled() -> None:
    settings = IndexerSettings(pg_dsn="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    task = asyncio.create_task(LagMonitor(settings, interval=0.2).run(asyncio.Event()))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.wait({task})
    assert task.cancelled()


# -- shutdown ------------------------------------------------------------------------------------


class Loop:
    """Stands for ``Indexer`` in ``supervise``: ``run`` behaves as told."""

    def __init__(self, *, honours_stop: bool, loading: bool = False) -> None:
        self.honours_stop = honours_stop
        self.loading = loading
        self.watermark = None
        self.closed = False
        self.running = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        self.running.set()
        try:
            if self.honours_stop:
                await stop.wait()
            else:
                await asyncio.Event().wait()  # a load: never looks at ``stop``
        finally:
            self.closed = True


async def _stopped(loop: Loop, caplog: pytest.LogCaptureFixture) -> list[str]:
    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="indexer"):
        task = asyncio.create_task(supervise(cast(Indexer, loop), stop, grace=0.05))
        await loop.running.wait()
        stop.set()
        await task
    return [record.getMessage() for record in caplog.records]


async def test_a_loop_that_stops_is_not_cut_short(caplog: pytest.LogCaptureFixture) -> None:
    loop = Loop(honours_stop=True)
    assert not any("interrupted" in message for message in await _stopped(loop, caplog))
    assert loop.closed


async def test_a_load_is_cancelled_after_the_grace_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = Loop(honours_stop=False, loading=True)
    messages = await _stopped(loop, caplog)
    assert loop.closed
    assert any(message.startswith("initial load interrupted") for message in messages)


async def test_a_stuck_batch_is_cancelled_too(caplog: pytest.LogCaptureFixture) -> None:
    loop = Loop(honours_stop=False)
    messages = await _stopped(loop, caplog)
    assert loop.closed
    assert any(message.startswith("batch interrupted") for message in messages)


async def test_an_error_of_the_loop_is_raised() -> None:
    class Failing(Loop):
        async def run(self, stop: asyncio.Event) -> None:
            raise SourceUnavailable("boom")

    with pytest.raises(SourceUnavailable):
        await supervise(cast(Indexer, Failing(honours_stop=True)), asyncio.Event(), grace=0.05)


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::", "::1", "indexer.internal"])
def test_metrics_host_accepts_addresses_and_names(host: str) -> None:
    assert IndexerSettings.from_env({"LOYALTY_METRICS_HOST": host}).metrics_host == host


@pytest.mark.parametrize("host", ["http://0.0.0.0", "0.0.0.0:9108", "a b", "-x"])
def test_metrics_host_refuses_what_is_not_an_address(host: str) -> None:
    with pytest.raises(SettingsError, match="LOYALTY_METRICS_HOST must be an IP address"):
        IndexerSettings.from_env({"LOYALTY_METRICS_HOST": host})


def test_health_settings_defaults_and_bounds() -> None:
    defaults: Any = IndexerSettings.from_env({})
    assert (defaults.metrics_host, defaults.health_stall_seconds) == ("127.0.0.1", 60)
    assert IndexerSettings.from_env({"LOYALTY_HEALTH_STALL_SECONDS": "5"}).health_stall_seconds == 5
    with pytest.raises(SettingsError, match="LOYALTY_HEALTH_STALL_SECONDS"):
        IndexerSettings.from_env({"LOYALTY_HEALTH_STALL_SECONDS": "0"})
