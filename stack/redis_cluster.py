"""A Redis Cluster on loopback (three masters, a replica each), from the same ``redis-server``
7 as the single Redis: for tests of the cache against slots, redirections and failover.

Every node is the single Redis's service with its own port, cluster bus port (see
``default_bus_port``), folder ``<stack dir>/redis-cluster/node-<i>``, log and pidfile, and
the single server's settings (password, memory bound, no persistence) plus cluster mode.
``up`` starts every node at once and, on nodes that have never been in a cluster, runs
``redis-cli --cluster create``; each node keeps what it knows of the cluster in its
``nodes.conf``, so a node stopped or killed later rejoins when started again.

Nothing is saved to disk: a master restarted before its replica took over comes back empty
and keeps its slots. Fine for tests; ``reset`` starts a cluster from nothing.

The application selects cluster mode by the URL scheme, see ``cluster_url``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, TypeAlias

from stack.config import (
    DEFAULT_REDIS_CLUSTER_PORT,
    HOST,
    REDIS_CLUSTER_BUS_OFFSET,
    REDIS_CLUSTER_NODES,
    REDIS_CLUSTER_REPLICAS,
    REDIS_PASSWORD,
    StackConfig,
)
from stack.errors import StackError
from stack.processes import (
    kill_pid,
    require_free_port,
    run_logged,
    wait_for,
)
from stack.redis import PROBE_TIMEOUT_SECONDS, Redis, _command, _ping
from stack.service import Service

NAME = "redis-cluster"
CLI_BINARY = "redis-cli"
NODES_FILE = "nodes.conf"
# 7001 to 7006, as ``stack up redis-cluster`` uses them when the environment says nothing.
DEFAULT_PORTS = tuple(
    range(DEFAULT_REDIS_CLUSTER_PORT, DEFAULT_REDIS_CLUSTER_PORT + REDIS_CLUSTER_NODES))
# A node is failed, and its replica promoted, after this long without an answer: Redis's
# default of 15 s would make every failover test wait that long for nothing.
NODE_TIMEOUT_MS = 1000
CREATE_TIMEOUT_SECONDS = 60.0
FORM_TIMEOUT_SECONDS = 30.0
FAILOVER_TIMEOUT_SECONDS = 30.0
COMMAND_TIMEOUT_SECONDS = 10.0

Progress = Callable[[str, str], None]
# A decoded RESP reply: simple and bulk strings as text, integers, nil, arrays.
Reply: TypeAlias = "str | int | list[Reply] | None"


class ReplyError(Exception):
    """An error reply of a node (``ERR ...``, ``MOVED 0 127.0.0.1:7002``, ``CLUSTERDOWN ...``)."""


def default_bus_port(port: int) -> int:
    """Redis's own default, the port plus 10000; below the port instead when that does not
    exist, as for a port the kernel handed out (``bind(0)`` gives up to 60999)."""
    if port + REDIS_CLUSTER_BUS_OFFSET <= 65535:
        return port + REDIS_CLUSTER_BUS_OFFSET
    return port - REDIS_CLUSTER_BUS_OFFSET


def cluster_url(ports: Sequence[int], password: str = REDIS_PASSWORD) -> str:
    """The URL the application reads as "Redis Cluster, seeded from every one of these
    nodes": the ``redis+cluster`` scheme selects cluster mode, the hosts are comma-separated
    and there is no database number (a cluster has only database 0)."""
    hosts = ",".join(f"{HOST}:{port}" for port in ports)
    return f"redis+cluster://:{password}@{hosts}"


class RedisClusterNode(Redis):
    """Node ``index`` of a cluster whose nodes listen on ``ports`` (and ``bus_ports``)."""

    name = NAME

    def __init__(
        self,
        config: StackConfig,
        progress: Progress,
        *,
        index: int,
        ports: Sequence[int],
        bus_ports: Sequence[int] | None = None,
    ) -> None:
        super().__init__(config, progress)
        self.index = index
        self._ports = tuple(ports)
        self._bus_ports = tuple(
            bus_ports if bus_ports is not None else map(default_bus_port, ports))

    @property
    def node_name(self) -> str:
        return f"node-{self.index}"

    @property
    def port(self) -> int:
        return self._ports[self.index]

    @property
    def bus_port(self) -> int:
        return self._bus_ports[self.index]

    @property
    def data_dir(self) -> Path:
        return self.config.stack_dir / NAME / self.node_name

    @property
    def log_path(self) -> Path:
        return self.config.logs_dir / f"{NAME}-{self.node_name}.log"

    @property
    def pidfile(self) -> Path:
        return self.config.run_dir / f"{NAME}-{self.node_name}.pid"

    @property
    def nodes_file(self) -> Path:
        return self.data_dir / NODES_FILE

    def say(self, message: str) -> None:
        self._progress(f"{self.name} {self.node_name}", message)

    def notice(self) -> str | None:
        # A node that answers without the password was started before the stack set one.
        if _ping(self.port, None):
            return f"{self.node_name} runs without a password: restart it (stack down {NAME})"
        return None

    def _settings(self) -> list[tuple[str, str]]:
        return [
            *super()._settings(),
            ("cluster-enabled", "yes"),
            # Absolute, in the node's own folder: what survives a restart, and what makes a
            # killed node rejoin as the cluster member it was.
            ("cluster-config-file", str(self.nodes_file)),
            ("cluster-port", str(self.bus_port)),
            ("cluster-node-timeout", str(NODE_TIMEOUT_MS)),
            # Replicas authenticate to their master with the one password of the stack.
            ("masterauth", REDIS_PASSWORD),
            # A replica may always be promoted, however long it was cut off: the failover test
            # kills a master while it writes, and a cluster that stays down is worse there.
            ("cluster-replica-validity-factor", "0"),
            # Redis 7 waits 5 s for more replicas before a diskless full sync; every master
            # here has one, and a rejoining node should be in sync at once.
            ("repl-diskless-sync-delay", "0"),
            ("appendonly", "no"),
            ("save", ""),
        ]

    def kill(self) -> bool:
        """SIGKILL, as a crash or a lost machine: no clean shutdown, nodes.conf as it was."""
        pid = self.running_pid()
        if pid is None:
            return False
        kill_pid(pid, self.pidfile, service=self.name, what=self.node_name)
        return True

    def command(self, *args: str, timeout: float = COMMAND_TIMEOUT_SECONDS) -> Reply:
        """One command on this node (after AUTH), its reply decoded; an error reply raises
        ``ReplyError``, an unreachable node ``StackError``. No redirection is followed."""
        try:
            return _call(self.port, args, timeout=timeout)
        except OSError as exc:
            raise StackError(self.name, f"{self.node_name}: {args[0]}: {exc}") from exc

    def command_or_none(self, *args: str) -> Reply:
        """As ``command`` with a short timeout, for probes: None when it did not answer."""
        try:
            return _call(self.port, args, timeout=PROBE_TIMEOUT_SECONDS)
        except (OSError, ReplyError):
            return None

    def cluster_info(self) -> dict[str, str]:
        """``CLUSTER INFO`` as a dict (``cluster_state``, ``cluster_known_nodes``, ...); empty
        when the node does not answer."""
        reply = self.command_or_none("CLUSTER", "INFO")
        if not isinstance(reply, str):
            return {}
        pairs = (line.partition(":") for line in reply.splitlines() if ":" in line)
        return {key.strip(): value.strip() for key, _, value in pairs}

    def role(self) -> str | None:
        """``"master"`` or ``"replica"`` as the node itself says (``ROLE``), None if down."""
        reply = self.command_or_none("ROLE")
        if not isinstance(reply, list) or not reply:
            return None
        return {"master": "master", "slave": "replica"}.get(str(reply[0]))

    def replica_in_sync(self) -> bool:
        """Whether this node is a replica whose link to its master is up (full sync done)."""
        reply = self.command_or_none("ROLE")
        # ["slave", master host, master port, "connected", offset] once the sync is over.
        return isinstance(reply, list) and len(reply) >= 4 and reply[0] == "slave" and (
            reply[3] == "connected")

    def slot_masters(self) -> list[tuple[int, int, int]]:
        """(first slot, last slot, master's port) of every slot range, as this node sees
        them (``CLUSTER SLOTS``); empty when it does not answer."""
        reply = self.command_or_none("CLUSTER", "SLOTS")
        ranges: list[tuple[int, int, int]] = []
        if not isinstance(reply, list):
            return ranges
        for entry in reply:
            if not isinstance(entry, list) or len(entry) < 3:
                continue
            first, last, master = entry[0], entry[1], entry[2]
            if (isinstance(first, int) and isinstance(last, int) and isinstance(master, list)
                    and len(master) >= 2 and isinstance(master[1], int)):
                ranges.append((first, last, master[1]))
        return ranges


class RedisCluster:
    """Node ``i`` on ``ports[i]``; ``replicas`` replicas per master, so ``len(ports) //
    (replicas + 1)`` masters (at least three, as ``redis-cli --cluster create`` wants)."""

    def __init__(
        self,
        config: StackConfig,
        progress: Progress,
        *,
        ports: Sequence[int] = DEFAULT_PORTS,
        replicas: int = REDIS_CLUSTER_REPLICAS,
        bus_ports: Sequence[int] | None = None,
    ) -> None:
        if replicas < 0 or len(ports) < 3 * (replicas + 1):
            raise ValueError(f"{len(ports)} nodes cannot make 3 masters with {replicas} "
                             "replicas each")
        if bus_ports is None:
            bus_ports = [default_bus_port(port) for port in ports]
        if len(bus_ports) != len(ports):
            raise ValueError("one bus port per node")
        every = [*ports, *bus_ports]
        if len(set(every)) != len(every) or not all(0 < port < 65536 for port in every):
            raise ValueError(f"ports and bus ports must be distinct and valid: {every}")
        self.config = config
        self.replicas = replicas
        self._progress = progress
        self.nodes = [
            RedisClusterNode(config, progress, index=index, ports=ports, bus_ports=bus_ports)
            for index in range(len(ports))
        ]

    @property
    def url(self) -> str:
        return cluster_url([node.port for node in self.nodes])

    @property
    def data_dir(self) -> Path:
        return self.config.stack_dir / NAME

    @property
    def log_path(self) -> Path:
        """Where the cluster's creation is logged; each node has a log of its own."""
        return self.config.logs_dir / f"{NAME}.log"

    def say(self, message: str) -> None:
        self._progress(NAME, message)

    def prepare(self) -> None:
        """The single Redis's install and version check, plus ``redis-cli`` (the same
        package) to create the cluster."""
        self.nodes[0].prepare()
        if shutil.which(CLI_BINARY) is None:
            raise StackError(NAME, f"{CLI_BINARY} not found (package redis-tools)")

    def up(self) -> None:
        """Start every node that is not running, at once; create the cluster if no node has
        ever been in one; wait until every node says ``cluster_state:ok``."""
        self.prepare()
        starting = [node for node in self.nodes if node.running_pid() is None]
        # Every port first, so a taken one fails before any node starts.
        for node in starting:
            require_free_port(NAME, HOST, node.port)
            require_free_port(NAME, HOST, node.bus_port)
        if starting:
            self.say(f"starting {len(starting)} of {len(self.nodes)} nodes")
            with ThreadPoolExecutor(len(starting)) as pool:
                results = list(pool.map(_start, starting))
            failed = [error for error in results if error is not None]
            if failed:
                with contextlib.suppress(StackError):
                    _stop_all(starting)
                raise failed[0]
        try:
            self._form()
        except BaseException:
            # All or nothing, as every service's ``up``: what this call started goes again.
            with contextlib.suppress(StackError):
                _stop_all(starting)
            raise

    def _form(self) -> None:
        stale = self._foreign_ports()
        if stale:
            # Left by a cluster on other ports: it would never reach cluster_state:ok.
            raise StackError(
                NAME, f"{self.data_dir} holds a cluster on other ports ({stale}); stop it "
                "and remove that folder (RedisCluster.reset)")
        infos = [node.cluster_info() for node in self.nodes]
        if all(_never_clustered(info) for info in infos):
            masters = len(self.nodes) // (self.replicas + 1)
            self.say(f"creating the cluster: {masters} masters, {self.replicas} replica(s) each")
            self._create()
        # Also after a restart: the nodes find each other again from their nodes.conf.
        if not wait_for(self.ready, FORM_TIMEOUT_SECONDS):
            raise StackError(
                NAME,
                f"not ready after {FORM_TIMEOUT_SECONDS:.0f}s ({self._state_summary()}); if "
                f"{self.data_dir} holds an older cluster, stop it and remove that folder "
                "(RedisCluster.reset)",
            )
        self.say(f"{len(self.masters())} masters, {len(self.replica_nodes())} replicas ready")

    def _create(self) -> None:
        argv = [
            CLI_BINARY, "--cluster", "create",
            *(f"{HOST}:{node.port}" for node in self.nodes),
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
        ]
        # The password through the environment, not the command line (``ps`` shows that);
        # a dumb terminal keeps colour codes out of the log and of an error's one line.
        env = dict(os.environ, REDISCLI_AUTH=REDIS_PASSWORD, TERM="dumb")
        run_logged(NAME, argv, self.log_path, what="redis-cli --cluster create", env=env,
                   timeout=CREATE_TIMEOUT_SECONDS)

    def ready(self) -> bool:
        """Every node answers, knows every other, says ``cluster_state:ok``, and every
        replica has finished its sync with its master."""
        for node in self.nodes:
            info = node.cluster_info()
            if info.get("cluster_state") != "ok":
                return False
            if info.get("cluster_known_nodes") != str(len(self.nodes)):
                return False
            if node.role() == "replica" and not node.replica_in_sync():
                return False
        return True

    def _foreign_ports(self) -> str:
        """Ports of cluster members the nodes know of (from their nodes.conf) that are none
        of this cluster's, comma-separated; empty when there are none."""
        ours = {node.port for node in self.nodes}
        foreign: set[int] = set()
        for node in self.nodes:
            listing = node.command_or_none("CLUSTER", "NODES")
            if not isinstance(listing, str):
                continue
            # "<id> 127.0.0.1:7002@17002 master - 0 1700000000000 2 connected 5461-10922"
            for line in listing.splitlines():
                fields = line.split()
                if len(fields) > 1:
                    port = fields[1].split("@")[0].rpartition(":")[2]
                    # Port 0: a member whose address is not known yet ("noaddr").
                    if port.isdigit() and int(port) not in ours and int(port) != 0:
                        foreign.add(int(port))
        return ", ".join(str(port) for port in sorted(foreign))

    def _state_summary(self) -> str:
        states = []
        for node in self.nodes:
            info = node.cluster_info()
            state = info.get("cluster_state", "down")
            states.append(f"{node.node_name} {state}, knows {info.get('cluster_known_nodes', '?')}")
        return "; ".join(states)

    def stop(self) -> bool:
        """SIGTERM to every node, at once (saving is off: an immediate clean shutdown);
        True when any was running."""
        return _stop_all(self.nodes)

    def reset(self) -> None:
        """Stop every node and remove every node's folder (nodes.conf included): the next
        ``up`` creates a new cluster, whatever ports the old one had."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def masters(self) -> list[RedisClusterNode]:
        """The running nodes that say they are a master now."""
        return [node for node in self.nodes if node.role() == "master"]

    def replica_nodes(self) -> list[RedisClusterNode]:
        """The running nodes that say they are a replica now."""
        return [node for node in self.nodes if node.role() == "replica"]

    def slot_owner(self, slot: int) -> RedisClusterNode | None:
        """The master serving ``slot`` as the first node that answers sees it."""
        by_port = {node.port: node for node in self.nodes}
        for node in self.nodes:
            ranges = node.slot_masters()
            if ranges:
                for first, last, port in ranges:
                    if first <= slot <= last:
                        return by_port.get(port)
                return None
        return None

    def wait_for_failover(
        self, dead: RedisClusterNode, timeout: float = FAILOVER_TIMEOUT_SECONDS
    ) -> None:
        """Until every running node says ``cluster_state:ok`` and none sees a slot served by
        ``dead`` any more: a replica took its slots over."""

        def taken_over() -> bool:
            alive = [node for node in self.nodes
                     if node is not dead and node.running_pid() is not None]
            if not alive:
                return False
            for node in alive:
                if node.cluster_info().get("cluster_state") != "ok":
                    return False
                ranges = node.slot_masters()
                if not ranges or any(port == dead.port for _, _, port in ranges):
                    return False
            return True

        if not wait_for(taken_over, timeout):
            raise StackError(
                NAME, f"no failover of {dead.node_name} within {timeout:.0f}s "
                f"({self._state_summary()})")


class RedisClusterService(Service):
    """The cluster as one service of the ``stack`` command (``stack up redis-cluster``), on
    ``LOYALTY_REDIS_CLUSTER_PORT`` and the ports after it. Its pid and port are node 0's."""

    name = NAME

    def __init__(self, config: StackConfig, progress: Progress) -> None:
        super().__init__(config, progress)
        self.cluster = RedisCluster(config, progress, ports=config.redis_cluster_ports)

    @property
    def port(self) -> int:
        return self.cluster.nodes[0].port

    @property
    def data_dir(self) -> Path:
        return self.cluster.data_dir

    @property
    def log_path(self) -> Path:
        return self.cluster.log_path

    def version(self) -> str:
        return self.cluster.nodes[0].version()

    def running_pid(self) -> int | None:
        return self.cluster.nodes[0].running_pid()

    def notice(self) -> str | None:
        down = [node.node_name for node in self.cluster.nodes if node.running_pid() is None]
        if down:
            return (f"{', '.join(down)} not running: restart it "
                    f"(stack down {NAME} && stack up {NAME})")
        state = self.cluster.nodes[0].cluster_info().get("cluster_state", "unknown")
        if state != "ok":
            return f"cluster_state:{state}"
        return self.cluster.nodes[0].notice()

    def prepare(self) -> None:
        self.cluster.prepare()

    def launch(self) -> None:
        self.cluster.up()

    def stop(self) -> bool:
        return self.cluster.stop()


def _start(node: RedisClusterNode) -> StackError | None:
    try:
        node.launch()
    except StackError as error:
        return error
    except OSError as exc:
        return StackError(NAME, f"{node.node_name}: {' '.join(str(exc).split())}")
    return None


def _stop_all(nodes: Sequence[RedisClusterNode]) -> bool:
    """Stop ``nodes`` at once, so no replica has time to take over from a stopping master;
    True when any was running. The first failure is raised once all were tried."""
    if not nodes:
        return False

    def stop(node: RedisClusterNode) -> bool | StackError:
        try:
            return node.stop()
        except StackError as error:
            return error

    with ThreadPoolExecutor(len(nodes)) as pool:
        results = list(pool.map(stop, nodes))
    for result in results:
        if isinstance(result, StackError):
            raise result
    return any(results)


def _never_clustered(info: dict[str, str]) -> bool:
    """A node that knows only itself and serves no slot: ``--cluster create`` accepts it."""
    return info.get("cluster_known_nodes") == "1" and info.get("cluster_slots_assigned") == "0"


def _call(port: int, args: Sequence[str], *, timeout: float) -> Reply:
    """AUTH and one command on ``port``, in one write; the command's reply, decoded."""
    with socket.create_connection((HOST, port), timeout=timeout) as conn:
        conn.sendall(_command("AUTH", REDIS_PASSWORD) + _command(*args))
        with conn.makefile("rb") as stream:
            _read_reply(stream)  # +OK, or a ReplyError for a wrong password
            return _read_reply(stream)


def _read_reply(stream: BinaryIO) -> Reply:
    """One RESP2 reply; an error reply raises ``ReplyError``."""
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode(errors="replace")
    if kind == b"-":
        raise ReplyError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = stream.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("connection closed in the middle of a reply")
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"not a RESP reply: {line[:40]!r}")
