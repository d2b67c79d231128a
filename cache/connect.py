"""Redis clients from a connection URL: one server, or a Redis Cluster.

``redis://`` and ``rediss://`` name one server, in redis-py's own URL syntax (database,
query options). ``redis+cluster://`` and ``rediss+cluster://`` name a Redis Cluster by one or
more of its nodes, separated by commas::

    redis+cluster://:password@10.0.0.1:7001,10.0.0.2:7001,10.0.0.3:7001

Any node that answers gives the client the whole slot map; listing several lets a process
start while one of them is down. A cluster has a single database, so a path other than ``/``
or ``/0`` is refused, as are query options (they would apply to one node only).

Everything above this module sees a ``RedisClient``. The few places that differ by mode ask
``isinstance(redis, RedisCluster)``: scans walk every primary, invalidations subscribe on
the node that owns their channel, and a publish waits for the writes it announces
(``cache/scripts.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode

RedisClient = Redis | RedisCluster

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS
DEFAULT_PORT = 6379


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    """What a cluster URL names: seed nodes and the credentials every node takes."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def cluster_address(url: str) -> ClusterAddress:
    """The seed nodes and credentials of a ``redis+cluster://`` URL; ``ValueError`` saying
    what is wrong (never echoing the URL: it may hold a password)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError("not a redis+cluster:// or rediss+cluster:// URL")
    if "?" in rest or "#" in rest:
        raise ValueError("a cluster URL takes no query options")
    hosts, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueError("a cluster has only database 0")
    userinfo, at, hosts = hosts.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = tuple(_node(part) for part in hosts.split(","))
    return ClusterAddress(nodes, username, password, CLUSTER_SCHEMES[scheme.lower()])


def _node(text: str) -> tuple[str, int]:
    # urlsplit parses one host:port (IPv6 in brackets included) and checks the port.
    parts = urlsplit(f"//{text}")
    if not parts.hostname or parts.username is not None:
        raise ValueError("every node needs a host (host:port, separated by commas)")
    return parts.hostname, parts.port or DEFAULT_PORT


def check_redis_url(url: str) -> None:
    """Raise ``ValueError`` unless ``url`` names one server or a cluster as described above."""
    if is_cluster_url(url):
        cluster_address(url)
        return
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("scheme or host")
    parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range


def redis_from_url(url: str, **options: Any) -> RedisClient:
    """A client of the server or cluster ``url`` names, with redis-py connection ``options``
    (timeouts, ``protocol``, ``retry``...). For a cluster, ``max_connections`` bounds the
    connections per node."""
    if not is_cluster_url(url):
        return Redis.from_url(url, **options)
    address = cluster_address(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
        username=address.username,
        password=address.password,
        ssl=address.tls,
        **options,
    )


def connection_options(redis: RedisClient) -> Mapping[str, Any]:
    """The options each new connection of ``redis`` is made with (``decode_responses``,
    ``protocol``, ``socket_timeout``...), whichever kind of client it is."""
    if isinstance(redis, RedisCluster):
        return redis.connection_kwargs
    return redis.connection_pool.connection_kwargs
