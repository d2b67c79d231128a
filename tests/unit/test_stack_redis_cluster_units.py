"""The Redis Cluster of the local stack: what its nodes are configured with, where each keeps
its files, the URL that selects cluster mode and how the ``stack`` command offers it, checked
without starting anything."""

from __future__ import annotations

import io
import shlex
from pathlib import Path

import pytest

from stack import cli
from stack.config import (
    DEFAULT_REDIS_CLUSTER_PORT,
    ENV_REDIS_CLUSTER_PORT,
    HOST,
    REDIS_PASSWORD,
    StackConfig,
)
from stack.errors import StackError
from stack.redis import Redis
from stack.redis_cluster import (
    RedisCluster,
    RedisClusterService,
    ReplyError,
    _read_reply,
    cluster_url,
    default_bus_port,
)

PORTS = (47001, 47002, 47003, 47004, 47005, 47006)


def _config(tmp_path: Path) -> StackConfig:
    return StackConfig(stack_dir=tmp_path, pg_port=45433, redis_port=46380, es_port=49200)


def _quiet(service: str, message: str) -> None:
    del service, message


def _settings(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, value = shlex.split(line)
            found[name] = value
    return found


def test_a_node_runs_in_cluster_mode_with_the_stack_password(tmp_path: Path) -> None:
    node = RedisCluster(_config(tmp_path), _quiet, ports=PORTS).nodes[2]
    node.data_dir.mkdir(parents=True)
    node._write_config()

    settings = _settings(node.config_file)
    assert settings["port"] == "47003" and settings["bind"] == HOST
    assert settings["requirepass"] == REDIS_PASSWORD
    # Replicas must authenticate to their master with the same password.
    assert settings["masterauth"] == REDIS_PASSWORD
    assert settings["cluster-enabled"] == "yes"
    assert settings["cluster-config-file"] == str(node.data_dir / "nodes.conf")
    assert settings["cluster-port"] == "57003"
    assert settings["cluster-node-timeout"] == "1000"
    assert settings["cluster-replica-validity-factor"] == "0"
    assert settings["appendonly"] == "no" and settings["save"] == ""
    assert settings["dir"] == str(node.data_dir)
    # The single server's memory bound and policy apply to every node too.
    assert settings["maxmemory-policy"] == "noeviction"
    assert node.config_file.stat().st_mode & 0o777 == 0o600


def test_the_single_redis_stays_out_of_cluster_mode(tmp_path: Path) -> None:
    redis = Redis(_config(tmp_path), _quiet)
    redis.data_dir.mkdir(parents=True)
    redis._write_config()

    settings = _settings(redis.config_file)
    assert settings["port"] == "46380"
    assert not any(name.startswith("cluster-") for name in settings)
    assert "masterauth" not in settings


def test_every_node_has_its_own_port_folder_log_and_pidfile(tmp_path: Path) -> None:
    config = _config(tmp_path)
    cluster = RedisCluster(config, _quiet, ports=PORTS)

    assert [node.port for node in cluster.nodes] == list(PORTS)
    assert [node.bus_port for node in cluster.nodes] == [port + 10000 for port in PORTS]
    node = cluster.nodes[4]
    assert node.node_name == "node-4"
    assert node.data_dir == tmp_path / "redis-cluster" / "node-4"
    assert node.log_path == config.logs_dir / "redis-cluster-node-4.log"
    assert node.pidfile == config.run_dir / "redis-cluster-node-4.pid"
    assert len({node.data_dir for node in cluster.nodes}) == len(PORTS)
    assert cluster.data_dir == tmp_path / "redis-cluster"


def test_bus_ports_may_be_given(tmp_path: Path) -> None:
    cluster = RedisCluster(_config(tmp_path), _quiet, ports=PORTS, bus_ports=range(48001, 48007))

    assert cluster.nodes[5].bus_port == 48006


def test_a_node_prefixes_its_progress_with_its_name(tmp_path: Path) -> None:
    said: list[tuple[str, str]] = []
    cluster = RedisCluster(
        _config(tmp_path), lambda service, message: said.append((service, message)), ports=PORTS)

    cluster.nodes[1].say("hello")

    assert said == [("redis-cluster node-1", "hello")]


def test_too_few_nodes_for_three_masters_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 masters"):
        RedisCluster(_config(tmp_path), _quiet, ports=PORTS[:5])
    with pytest.raises(ValueError, match="3 masters"):
        RedisCluster(_config(tmp_path), _quiet, ports=PORTS, replicas=2)
    with pytest.raises(ValueError, match="distinct"):
        RedisCluster(_config(tmp_path), _quiet, ports=(47001, 47001, 47003, 47004, 47005, 47006))


def test_the_url_lists_every_node_under_the_cluster_scheme(tmp_path: Path) -> None:
    cluster = RedisCluster(_config(tmp_path), _quiet, ports=PORTS)

    expected = (
        f"redis+cluster://:{REDIS_PASSWORD}@"
        "127.0.0.1:47001,127.0.0.1:47002,127.0.0.1:47003,"
        "127.0.0.1:47004,127.0.0.1:47005,127.0.0.1:47006"
    )
    assert cluster.url == expected
    assert cluster_url([7001, 7002], "p") == "redis+cluster://:p@127.0.0.1:7001,127.0.0.1:7002"


def test_the_cli_offers_the_cluster_only_by_name() -> None:
    assert "redis-cluster" in cli.SERVICE_NAMES
    assert "redis-cluster" not in cli.DEFAULT_SERVICES
    assert {"postgres", "redis", "elasticsearch"} <= set(cli.DEFAULT_SERVICES)
    assert ENV_REDIS_CLUSTER_PORT in cli.EPILOG
    assert cluster_url(range(7001, 7007)) in cli.EPILOG


def test_the_service_is_node_0_and_the_cluster_folder(tmp_path: Path) -> None:
    config = StackConfig(
        stack_dir=tmp_path, pg_port=45433, redis_port=46380, es_port=49200,
        redis_cluster_port=47101,
    )
    service = RedisClusterService(config, _quiet)

    assert service.port == 47101
    assert [node.port for node in service.cluster.nodes] == list(range(47101, 47107))
    assert service.data_dir == tmp_path / "redis-cluster"
    assert service.running_pid() is None


def test_the_first_port_comes_from_the_environment() -> None:
    assert StackConfig.from_env({}).redis_cluster_port == DEFAULT_REDIS_CLUSTER_PORT == 7001
    config = StackConfig.from_env({ENV_REDIS_CLUSTER_PORT: "27001"})
    assert config.redis_cluster_ports == (27001, 27002, 27003, 27004, 27005, 27006)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("seven", "not a port number"), ("0", "out of range"), ("55531", "at most 55530")],
)
def test_a_bad_first_port_is_refused_in_one_line(raw: str, reason: str) -> None:
    with pytest.raises(StackError, match=reason) as caught:
        StackConfig.from_env({ENV_REDIS_CLUSTER_PORT: raw})
    assert caught.value.service == "redis-cluster"


def test_replies_are_decoded() -> None:
    stream = io.BytesIO(
        b"+OK\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*2\r\n$5\r\nslave\r\n*1\r\n:7\r\n"
        b"-MOVED 0 127.0.0.1:7002\r\n")

    assert _read_reply(stream) == "OK"
    assert _read_reply(stream) == 42
    assert _read_reply(stream) == "hello"
    assert _read_reply(stream) is None
    assert _read_reply(stream) == ["slave", [7]]
    with pytest.raises(ReplyError, match="MOVED 0"):
        _read_reply(stream)
    with pytest.raises(ConnectionError):
        _read_reply(stream)


def test_a_port_too_high_for_the_bus_offset_gets_its_bus_below() -> None:
    assert default_bus_port(7001) == 17001
    assert default_bus_port(55535) == 65535
    # The kernel hands out ports up to 60999 to bind(0); +10000 would not exist.
    assert default_bus_port(60999) == 50999
