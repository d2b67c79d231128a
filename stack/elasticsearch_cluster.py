"""A multi-node Elasticsearch cluster on loopback, from the same launcher as the single node:
for tests of replicas, shard allocation and the loss of a node.

Every node is a JVM of its own with a small heap, its own HTTP and transport ports and its own
folder under ``<stack dir>/elasticsearch-cluster/``; the build (classpath, compiled launcher)
is the single node's. The nodes find each other through ``discovery.seed_hosts`` (every
transport port) and elect a master among all of them (``cluster.initial_master_nodes``), so
the cluster forms only once a majority runs: ``up`` starts every node at once and waits for
all of them to join. A node stopped or killed later rejoins with its data when started again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stack.config import HOST, StackConfig
from stack.elasticsearch import READY_TIMEOUT_SECONDS, Elasticsearch, _get_json
from stack.errors import StackError
from stack.processes import kill_pid, wait_for

CLUSTER_NAME = "loyalty-stack-cluster"
NODE_HEAP = ("-Xms512m", "-Xmx512m")

Progress = Callable[[str, str], None]


class ElasticsearchNode(Elasticsearch):
    """Node ``index`` of a cluster whose nodes listen on ``http_ports`` and
    ``transport_ports``."""

    heap = NODE_HEAP

    def __init__(
        self,
        config: StackConfig,
        progress: Progress,
        *,
        index: int,
        http_ports: Sequence[int],
        transport_ports: Sequence[int],
    ) -> None:
        super().__init__(config, progress)
        self.index = index
        self._http_ports = tuple(http_ports)
        self._transport_ports = tuple(transport_ports)

    @property
    def node_name(self) -> str:
        return f"node-{self.index}"

    @property
    def port(self) -> int:
        return self._http_ports[self.index]

    @property
    def home(self) -> Path:
        return self.config.stack_dir / "elasticsearch-cluster" / self.node_name

    @property
    def log_path(self) -> Path:
        return self.config.logs_dir / f"elasticsearch-{self.node_name}.log"

    @property
    def pidfile(self) -> Path:
        return self.config.run_dir / f"elasticsearch-{self.node_name}.pid"

    def say(self, message: str) -> None:
        self._progress(f"{self.name} {self.node_name}", message)

    def kill(self) -> bool:
        """SIGKILL, as a crash or a lost machine: no clean leave from the cluster."""
        pid = self.running_pid()
        if pid is None:
            return False
        kill_pid(pid, self.pidfile, service=self.name, what=self.node_name)
        return True

    def _node_settings(self) -> dict[str, str]:
        names = ",".join(f"node-{index}" for index in range(len(self._http_ports)))
        seeds = ",".join(f"{HOST}:{port}" for port in self._transport_ports)
        settings = super()._node_settings()
        del settings["discovery.type"]
        settings.update({
            "cluster.name": CLUSTER_NAME,
            "node.name": self.node_name,
            "transport.port": str(self._transport_ports[self.index]),
            "discovery.seed_hosts": seeds,
            "cluster.initial_master_nodes": names,
        })
        return settings


class ElasticsearchCluster:
    """One node per HTTP port, node ``i`` on ``http_ports[i]`` and ``transport_ports[i]``."""

    def __init__(
        self,
        config: StackConfig,
        progress: Progress,
        *,
        http_ports: Sequence[int] = (9201, 9202, 9203),
        transport_ports: Sequence[int] = (9301, 9302, 9303),
    ) -> None:
        if len(http_ports) != len(transport_ports) or not http_ports:
            raise ValueError("one HTTP and one transport port per node")
        self.nodes = [
            ElasticsearchNode(
                config, progress, index=index, http_ports=http_ports,
                transport_ports=transport_ports,
            )
            for index in range(len(http_ports))
        ]

    @property
    def urls(self) -> list[str]:
        return [f"http://{HOST}:{node.port}" for node in self.nodes]

    def up(self) -> None:
        """Start every node that is not running, at once, and wait until all have joined."""
        # The build is shared: made once, before any node starts.
        self.nodes[0].prepare()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            results = list(pool.map(_start, self.nodes))
        failed = [error for error in results if error is not None]
        if failed:
            self.stop()
            raise failed[0]
        self.wait_for_nodes(len(self.nodes))

    def wait_for_nodes(self, count: int, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Until ``count`` nodes are in the cluster, asked of any node that answers."""

        def joined() -> bool:
            for node in self.nodes:
                health = _get_json(node.port, f"/_cluster/health?wait_for_nodes={count}&timeout=1s")
                if health is not None and health.get("number_of_nodes") == count:
                    return True
            return False

        if not wait_for(joined, timeout):
            raise StackError("elasticsearch", f"the cluster did not reach {count} nodes")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            with contextlib.suppress(StackError):
                node.stop()


def _start(node: ElasticsearchNode) -> StackError | None:
    try:
        if node.running_pid() is None:
            node.launch()
    except StackError as error:
        return error
    return None
