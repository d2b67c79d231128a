"""The Redis Cluster of ``stack.redis_cluster`` forms, survives the loss of a master and takes
the killed node back: three masters and three replicas of our own, on free ports in a private
stack dir, so the team's Redis is never touched.

A master is SIGKILLed right after a write its replica acknowledged; the replica must take its
slots over (``cluster-node-timeout`` is one second) with the write, and the killed node, started
again from its ``nodes.conf``, must come back as a replica of the one that replaced it.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

from stack.config import StackConfig
from stack.processes import wait_for
from stack.redis_cluster import RedisCluster, ReplyError, default_bus_port
from tests.fixtures.faults import free_port

pytestmark = [
    pytest.mark.services,
    # ``stack/`` starts each node detached and lets go of its handle, as ``stack up`` does.
    pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning"),
]

NODES = 6
SLOTS = 16384
# Liveness bounds only: a failover takes about three seconds with a one-second node timeout.
FAILOVER_WITHIN = 15.0
REJOIN_WITHIN = 15.0


def _slot(key: str) -> int:
    """Redis Cluster's hash slot of a key without a hash tag: CRC16 (XMODEM) mod 16384."""
    return binascii.crc_hqx(key.encode(), 0) % SLOTS


def _key_in_slot(slot: int) -> str:
    return next(key for key in (f"failover-{n}" for n in count()) if _slot(key) == slot)


def _free_ports(how_many: int) -> list[int]:
    """Distinct free ports whose bus ports clash with none of them."""
    ports: list[int] = []
    while len(ports) < how_many:
        port = free_port()
        taken = {*ports, *map(default_bus_port, ports)}
        if port not in taken and default_bus_port(port) not in taken:
            ports.append(port)
    return ports


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    config = StackConfig(
        stack_dir=tmp_path / "stack", pg_port=free_port(), redis_port=free_port(),
        es_port=free_port(),
    )
    cluster = RedisCluster(config, lambda service, message: None, ports=_free_ports(NODES))
    try:
        yield cluster
    finally:
        cluster.stop()


def test_a_killed_master_fails_over_and_rejoins_as_a_replica(own_cluster: RedisCluster) -> None:
    cluster = own_cluster
    cluster.up()
    assert len(cluster.masters()) == 3
    assert len(cluster.replica_nodes()) == 3

    owner = cluster.slot_owner(0)
    assert owner is not None and owner.role() == "master"
    key = _key_in_slot(0)
    assert owner.command("CLUSTER", "KEYSLOT", key) == 0
    elsewhere = next(node for node in cluster.masters() if node is not owner)
    with pytest.raises(ReplyError, match=f"MOVED 0 127.0.0.1:{owner.port}"):
        elsewhere.command("SET", key, "misdirected")
    assert owner.command("SET", key, "before-the-crash") == "OK"
    # Its replica must hold the write before the master dies: the replica is what is promoted.
    assert owner.command("WAIT", "1", "5000") == 1

    assert owner.kill()
    cluster.wait_for_failover(owner, timeout=FAILOVER_WITHIN)

    promoted = cluster.slot_owner(0)
    assert promoted is not None and promoted is not owner
    assert promoted.role() == "master"
    assert promoted.command("GET", key) == "before-the-crash"
    assert len(cluster.masters()) == 3
    assert owner not in cluster.masters()

    owner.launch()

    def rejoined() -> bool:
        return owner.role() == "replica" and cluster.ready()

    assert wait_for(rejoined, REJOIN_WITHIN), "the killed node did not rejoin as a replica"
    assert cluster.slot_owner(0) is promoted
    assert promoted.command("GET", key) == "before-the-crash"

    # Stopped as ``stack down`` does and started again: the same cluster, from nodes.conf.
    assert cluster.stop()
    cluster.up()
    assert len(cluster.masters()) == 3 and len(cluster.replica_nodes()) == 3
