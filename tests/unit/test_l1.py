"""L1: LRU bounds (bytes, entries), maximum age, and the invalidation race between begin_fill
and install."""

from __future__ import annotations

import pytest

from cache.l1 import DEFAULT_MAX_AGE_SECONDS, DEFAULT_MAX_ENTRIES, ENTRY_OVERHEAD, L1Cache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(
    clock: FakeClock,
    max_entries: int | None = 100,
    max_age_seconds: float = 1.0,
    invalidation_memory: int = 1000,
    max_bytes: int | None = None,
) -> L1Cache[bytes]:
    return L1Cache(
        max_entries,
        max_age_seconds,
        max_bytes=max_bytes,
        invalidation_memory=invalidation_memory,
        clock=clock,
        enabled=True,
    )


def fill(l1: L1Cache[bytes], key: str, value: bytes, version: int) -> bool:
    return l1.install(key, value, version, l1.begin_fill(key), len(value))


def cost(key: str, value: bytes) -> int:
    """What an entry filled by ``fill`` counts for."""
    return len(value) + len(key) + ENTRY_OVERHEAD


def test_get_returns_what_was_installed(clock: FakeClock) -> None:
    l1 = make(clock)
    assert l1.get("k") is None
    assert fill(l1, "k", b"{}", 5)
    entry = l1.get("k")
    assert entry is not None
    assert (entry.value, entry.version, entry.inserted_at) == (b"{}", 5, clock.now)
    assert (l1.hits, l1.misses) == (1, 1)


def test_size_is_bounded_and_the_least_recently_used_goes(clock: FakeClock) -> None:
    l1 = make(clock, max_entries=3)
    for key in "abc":
        assert fill(l1, key, key.encode(), 1)
    assert l1.get("a") is not None  # "b" is now the least recently used
    assert fill(l1, "d", b"d", 1)
    assert len(l1) == 3
    assert l1.get("b") is None
    assert all(l1.get(key) is not None for key in "acd")


def test_entries_expire_after_the_maximum_age(clock: FakeClock) -> None:
    l1 = make(clock, max_age_seconds=1.0)
    fill(l1, "k", b"v", 1)
    clock.now += 0.999
    assert l1.get("k") is not None
    clock.now += 0.001
    assert l1.get("k") is None
    assert len(l1) == 0


def test_invalidation_between_begin_fill_and_install_wins(clock: FakeClock) -> None:
    l1 = make(clock)
    token = l1.begin_fill("k")
    l1.invalidate("k", 6)
    assert not l1.install("k", b"old", 5, token)
    assert l1.get("k") is None
    # A fill that begins after the invalidation installs.
    assert fill(l1, "k", b"new", 6)


def test_invalidation_of_another_key_does_not_block_a_fill(clock: FakeClock) -> None:
    l1 = make(clock)
    token = l1.begin_fill("k")
    l1.invalidate("other", 3)
    assert l1.install("k", b"v", 5, token)


def test_invalidation_before_begin_fill_does_not_block_it(clock: FakeClock) -> None:
    l1 = make(clock)
    l1.invalidate("k", 6)
    token = l1.begin_fill("k")
    assert l1.install("k", b"v", 6, token)


def test_flush_between_begin_fill_and_install_wins(clock: FakeClock) -> None:
    l1 = make(clock)
    fill(l1, "a", b"a", 1)
    token = l1.begin_fill("k")
    l1.flush()
    assert not l1.install("k", b"v", 5, token)
    assert len(l1) == 0


def test_invalidation_drops_older_entries_and_keeps_newer_ones(clock: FakeClock) -> None:
    l1 = make(clock)
    fill(l1, "old", b"o", 4)
    fill(l1, "same", b"s", 5)
    fill(l1, "newer", b"n", 6)
    fill(l1, "unversioned", b"u", 9)
    for key in ("old", "same", "newer"):
        l1.invalidate(key, 5)
    l1.invalidate("unversioned")
    assert l1.get("old") is None
    assert l1.get("same") is not None
    assert l1.get("newer") is not None
    assert l1.get("unversioned") is None


def test_an_older_fill_never_replaces_a_newer_entry(clock: FakeClock) -> None:
    l1 = make(clock)
    slow = l1.begin_fill("k")
    assert fill(l1, "k", b"new", 6)
    assert not l1.install("k", b"old", 5, slow)
    entry = l1.get("k")
    assert entry is not None and entry.value == b"new"


def test_disabled_cache_is_bypassed(clock: FakeClock) -> None:
    l1 = make(clock)
    fill(l1, "k", b"v", 1)
    token_before = l1.begin_fill("k")
    l1.disable()
    assert not l1.enabled
    assert l1.get("k") is None
    token_during = l1.begin_fill("k")
    assert not l1.install("k", b"v", 1, token_during)
    l1.enable()
    assert l1.enabled
    assert l1.get("k") is None  # flushed when disabled
    # Fills that began before or while disabled may have missed an invalidation.
    assert not l1.install("k", b"v", 1, token_before)
    assert not l1.install("k", b"v", 1, token_during)
    assert fill(l1, "k", b"v", 1)


def test_caches_start_disabled_by_default() -> None:
    l1: L1Cache[bytes] = L1Cache(10, 1.0)
    assert not l1.enabled
    assert not l1.install("k", b"v", 1, l1.begin_fill("k"))
    assert l1.get("k") is None


def test_bounded_invalidation_memory_refuses_fills_it_cannot_vouch_for(clock: FakeClock) -> None:
    l1 = make(clock, invalidation_memory=2)
    token = l1.begin_fill("k")
    l1.invalidate("k", 2)
    l1.invalidate("a", 1)
    l1.invalidate("b", 1)  # forgets "k": its invalidation may have come after the token
    assert not l1.install("k", b"v", 1, token)
    assert not l1.install("c", b"v", 1, token)  # conservative: costs a miss, never staleness
    assert fill(l1, "k", b"v", 2)


def test_bounds_default_to_the_module_constants(clock: FakeClock) -> None:
    l1: L1Cache[bytes] = L1Cache(clock=clock, enabled=True)
    for key in "abc":
        fill(l1, key, b"v", 1)
    assert len(l1) == 3 < DEFAULT_MAX_ENTRIES
    clock.now += DEFAULT_MAX_AGE_SECONDS / 2
    assert l1.get("c") is not None
    clock.now += DEFAULT_MAX_AGE_SECONDS / 2
    assert l1.get("c") is None


@pytest.mark.parametrize(
    "kwargs",
    [{"max_entries": 0}, {"max_bytes": 0}, {"max_age_seconds": 0.0}, {"invalidation_memory": 0}],
)
def test_invalid_bounds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        L1Cache(**kwargs)  # type: ignore[arg-type]


# -- the byte bound -----------------------------------------------------------------------------


def test_the_byte_bound_evicts_the_least_recently_used_first(clock: FakeClock) -> None:
    value = b"x" * 100
    one = cost("a", value)
    l1 = make(clock, max_entries=None, max_bytes=3 * one)
    for key in "abc":
        assert fill(l1, key, value, 1)
    assert (len(l1), l1.size_bytes) == (3, 3 * one)
    assert l1.get("a") is not None  # "b" is now the least recently used, then "c"
    assert fill(l1, "d", value, 1)
    assert (len(l1), l1.size_bytes) == (3, 3 * one)
    # An entry costing two: "c" goes, then "a" (touched before "d" was installed).
    big = b"y" * (2 * one - len("e") - ENTRY_OVERHEAD)
    assert cost("e", big) == 2 * one
    assert fill(l1, "e", big, 1)
    assert (len(l1), l1.size_bytes) == (2, 3 * one)
    assert [key for key in "abcde" if l1.get(key) is not None] == ["d", "e"]


def test_the_byte_total_stays_exact(clock: FakeClock) -> None:
    l1 = make(clock, max_bytes=1 << 20)
    assert l1.size_bytes == 0
    fill(l1, "a", b"1" * 10, 1)
    fill(l1, "bb", b"2" * 20, 1)
    fill(l1, "ccc", b"3" * 30, 1)
    assert l1.size_bytes == cost("a", b"1" * 10) + cost("bb", b"2" * 20) + cost("ccc", b"3" * 30)
    # Replacing a key counts its new size, not both.
    assert fill(l1, "a", b"1" * 500, 2)
    assert len(l1) == 3
    assert l1.size_bytes == cost("a", b"1" * 500) + cost("bb", b"2" * 20) + cost("ccc", b"3" * 30)
    # A refused install (an older version) changes nothing.
    assert not fill(l1, "a", b"1" * 7, 1)
    assert l1.size_bytes == cost("a", b"1" * 500) + cost("bb", b"2" * 20) + cost("ccc", b"3" * 30)
    # Invalidation of an older entry drops its cost; of a newer one, nothing.
    l1.invalidate("bb", 5)
    l1.invalidate("ccc", 1)
    assert l1.get("bb") is None and l1.get("ccc") is not None
    assert l1.size_bytes == cost("a", b"1" * 500) + cost("ccc", b"3" * 30)
    # Expiry, seen by ``get``, drops its cost.
    clock.now += 0.5
    assert fill(l1, "dddd", b"4" * 40, 1)
    clock.now += 0.5  # "a" and "ccc" are a second old now, "dddd" half a second
    assert l1.get("a") is None
    assert l1.size_bytes == cost("ccc", b"3" * 30) + cost("dddd", b"4" * 40)
    assert l1.get("ccc") is None
    assert l1.get("dddd") is not None
    assert l1.size_bytes == cost("dddd", b"4" * 40)
    l1.flush()
    assert (len(l1), l1.size_bytes) == (0, 0)
    fill(l1, "e", b"5", 1)
    assert l1.size_bytes == cost("e", b"5")
    l1.disable()
    assert (len(l1), l1.size_bytes) == (0, 0)


def test_an_entry_larger_than_the_bound_is_refused(clock: FakeClock) -> None:
    bound = 2000
    l1 = make(clock, max_bytes=bound)
    small = b"s" * 10
    assert fill(l1, "small", small, 1)
    assert fill(l1, "k", b"v", 1)
    too_big = b"x" * (bound - len("k") - ENTRY_OVERHEAD + 1)
    assert cost("k", too_big) == bound + 1
    assert not fill(l1, "k", too_big, 2)
    # The smaller entry stays; the older version of "k" is not kept beside a refused newer one.
    assert l1.get("k") is None
    assert l1.get("small") is not None
    assert l1.size_bytes == cost("small", small)
    # An entry costing exactly the bound fits, alone.
    exact = too_big[:-1]
    assert fill(l1, "k", exact, 3)
    assert l1.size_bytes == bound
    assert l1.get("small") is None
    entry = l1.get("k")
    assert entry is not None and entry.value == exact and entry.cost == bound


def test_the_entry_bound_still_holds_beside_the_byte_bound(clock: FakeClock) -> None:
    l1 = make(clock, max_entries=2, max_bytes=1 << 20)
    for key in "abc":
        assert fill(l1, key, key.encode() * 10, 1)
    assert len(l1) == 2
    assert l1.size_bytes == cost("b", b"b" * 10) + cost("c", b"c" * 10)
    assert l1.get("a") is None
    assert l1.get("b") is not None and l1.get("c") is not None


def test_without_bounds_nothing_is_evicted(clock: FakeClock) -> None:
    l1 = make(clock, max_entries=None, max_bytes=None)
    for i in range(1000):
        assert fill(l1, f"k{i}", b"v", 1)
    assert len(l1) == 1000
    assert l1.get("k0") is not None
