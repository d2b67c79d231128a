"""The load's row cap: sleeps keep the average at the cap, and no cap sleeps never."""

from __future__ import annotations

from indexer.throttle import RowThrottle


class _Time:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


async def test_a_reader_faster_than_the_cap_is_held_to_it() -> None:
    time = _Time()
    throttle = RowThrottle(1000, clock=time.clock, sleep=time.sleep)
    for _ in range(5):
        await throttle.took(500)  # read instantly: each chunk waits for its half second
    assert time.slept == [0.5, 0.5, 0.5, 0.5, 0.5]
    assert time.now == 102.5  # 2,500 rows at 1,000 rows/s


async def test_a_reader_slower_than_the_cap_never_waits() -> None:
    time = _Time()
    throttle = RowThrottle(1000, clock=time.clock, sleep=time.sleep)
    await throttle.took(500)
    time.now += 2.0  # the source itself took longer than the cap asks
    await throttle.took(500)
    assert time.slept == [0.5]


async def test_no_cap() -> None:
    time = _Time()
    for rate in (None, 0):
        throttle = RowThrottle(rate, clock=time.clock, sleep=time.sleep)
        await throttle.took(10_000_000)
    assert time.slept == []
