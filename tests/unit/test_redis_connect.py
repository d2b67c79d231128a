"""How a Redis URL selects one server or a cluster (``cache/connect.py``), without a server."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis, RedisCluster

from cache.config import REDIS_URL, SettingsError
from cache.connect import (
    ClusterAddress,
    check_redis_url,
    cluster_address,
    connection_options,
    is_cluster_url,
    redis_from_url,
)


def test_a_cluster_url_names_its_seed_nodes_and_credentials() -> None:
    address = cluster_address("redis+cluster://:s%40cret@10.0.0.1:7001,10.0.0.2,[::1]:7003/0")
    assert address == ClusterAddress(
        nodes=(("10.0.0.1", 7001), ("10.0.0.2", 6379), ("::1", 7003)),
        username=None, password="s@cret", tls=False,
    )
    assert cluster_address("rediss+cluster://app:pw@h:1") == ClusterAddress(
        (("h", 1),), "app", "pw", True
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+cluster://:pw@h:1/3", "only database 0"),
        ("redis+cluster://:pw@h:1?socket_timeout=1", "no query options"),
        ("redis+cluster://:pw@h:1,,h:2", "needs a host"),
        ("redis+cluster://:pw@h:99999", "out of range"),
        ("redis://:pw@h:1", r"not a redis\+cluster"),
    ],
)
def test_a_bad_cluster_url_is_refused_with_its_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        cluster_address(url)


def test_the_setting_takes_both_kinds_and_never_echoes_a_refused_url() -> None:
    for good in ("redis://:pw@127.0.0.1:6380/0", "redis+cluster://:pw@127.0.0.1:7001,h:7002"):
        check_redis_url(good)
        assert REDIS_URL.read({"LOYALTY_REDIS_URL": good}) == good
    with pytest.raises(SettingsError) as refused:
        REDIS_URL.read({"LOYALTY_REDIS_URL": "redis+cluster://:hunter2@h:1/5"})
    assert "hunter2" not in str(refused.value)
    assert "redis+cluster" in str(refused.value)


async def test_the_url_chooses_the_client_and_its_options_are_found_either_way() -> None:
    assert not is_cluster_url("redis://h:1") and is_cluster_url("REDIS+CLUSTER://h:1")
    single = redis_from_url("redis://:pw@127.0.0.1:6380/0", socket_timeout=3)
    cluster = redis_from_url("redis+cluster://:pw@127.0.0.1:7001", socket_timeout=4)
    try:
        assert isinstance(single, Redis) and isinstance(cluster, RedisCluster)
        assert connection_options(single)["socket_timeout"] == 3
        assert connection_options(cluster)["socket_timeout"] == 4
        assert connection_options(cluster)["password"] == "pw"
    finally:
        await single.aclose()
        await cluster.aclose()
