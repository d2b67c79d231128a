"""The standby and the Elasticsearch cluster of the local stack: what they are configured with,
checked without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.config import HOST, StackConfig
from stack.elasticsearch_cluster import ElasticsearchCluster
from stack.errors import StackError
from stack.postgres import HBA_RULES
from stack.postgres_standby import PostgresStandby


def _config(tmp_path: Path) -> StackConfig:
    return StackConfig(
        stack_dir=tmp_path, pg_port=45433, redis_port=46380, es_port=49200, pg_standby_port=45434
    )


def _settings(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition(" = ")
            found[name] = value
    return found


def test_the_standby_streams_from_its_primary_on_a_port_of_its_own(tmp_path: Path) -> None:
    standby = PostgresStandby(_config(tmp_path), lambda service, message: None)
    standby.data_dir.mkdir(parents=True)
    standby._write_settings()
    settings = _settings(standby.data_dir / "stack.conf")
    assert settings["port"] == "45434"
    assert settings["hot_standby"] == "on" and settings["hot_standby_feedback"] == "on"
    assert f"@{HOST}:45433/" in settings["primary_conninfo"]
    # Never less than the primary's: a standby refuses to start below it.
    assert settings["max_connections"] == "300"


def test_the_primary_lets_a_standby_stream() -> None:
    rules = [line.split() for line in HBA_RULES.splitlines() if not line.startswith("#")]
    assert ["host", "replication", "all", f"{HOST}/32", "scram-sha-256"] in rules


def test_a_standby_without_its_primary_is_refused(tmp_path: Path) -> None:
    standby = PostgresStandby(_config(tmp_path), lambda service, message: None)
    with pytest.raises(StackError, match="stack up postgres first"):
        standby.prepare()


def test_cluster_nodes_find_each_other(tmp_path: Path) -> None:
    cluster = ElasticsearchCluster(
        _config(tmp_path),
        lambda service, message: None,
        http_ports=(49201, 49202, 49203),
        transport_ports=(49301, 49302, 49303),
    )
    settings = cluster.nodes[1]._node_settings()
    assert "discovery.type" not in settings
    assert settings["http.port"] == "49202" and settings["transport.port"] == "49302"
    assert settings["discovery.seed_hosts"] == f"{HOST}:49301,{HOST}:49302,{HOST}:49303"
    assert settings["cluster.initial_master_nodes"] == "node-0,node-1,node-2"
    assert len({node.home for node in cluster.nodes}) == 3
    assert {node.classes_dir for node in cluster.nodes} == {tmp_path / "elasticsearch" / "classes"}
    assert cluster.urls == [f"http://{HOST}:{port}" for port in (49201, 49202, 49203)]
