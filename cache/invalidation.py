"""Background listener of the invalidation channel: keeps L1 caches honest, or off.

It applies each message to the registered L1 caches and callbacks (e.g. the watermark
holder). While it is not subscribed, messages are lost, so every cache is flushed and
bypassed from the moment a failure is seen until the channel is subscribed again.

It owns its connection instead of using redis-py's ``PubSub``, which reconnects and
resubscribes silently inside a read: the gap in between would go unnoticed. Here a failure
is a state change: caches off, one log line, a reconnect after a bounded exponential backoff
with full jitter (the attempt count resets only after a connection stayed up a while, so a
flapping server is not hammered). A silent dead peer is caught by a PING after a quiet
interval that gets no answer within the next one.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from cache.connect import RedisClient, connection_options
from cache.errors import CacheDecodeError
from cache.l1 import L1Cache
from cache.readmodel.codec import decode_invalidation
from cache.readmodel.keys import KeyLayout
from cache.records import Invalidation

log = logging.getLogger(__name__)

# Keys applied between two turns of the event loop: about a millisecond of work, where a whole
# batch's message (tens of thousands of keys) would hold every request for tens of them.
INVALIDATION_SLICE = 2_000

InvalidationCallback = Callable[[Invalidation], None]
ConnectHook = Callable[[], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]


class InvalidationListener:
    def __init__(
        self,
        redis: RedisClient,
        layout: KeyLayout,
        *,
        backoff_base: float = 0.05,
        backoff_cap: float = 5.0,
        stable_after: float = 10.0,
        ping_interval: float = 5.0,
        connect_timeout: float = 5.0,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """``sleep`` and ``jitter`` are injectable so tests can hold the reconnect back."""
        if not 0 < backoff_base <= backoff_cap or ping_interval <= 0 or connect_timeout <= 0:
            raise ValueError("need 0 < backoff_base <= backoff_cap and positive intervals")
        if str(connection_options(redis).get("protocol") or 2) != "2":
            # Messages are read as RESP2 replies; RESP3 would deliver them as pushes.
            raise ValueError("the invalidation listener needs a RESP2 client (protocol=2)")
        self._redis = redis
        self._layout = layout
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._stable_after = stable_after
        self._ping_interval = ping_interval
        self._connect_timeout = connect_timeout
        self._sleep = sleep
        self._jitter = jitter
        self._caches: list[tuple[L1Cache[Any], str | None]] = []
        self._callbacks: list[InvalidationCallback] = []
        self._connect_hooks: list[ConnectHook] = []
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._down_logged = False
        self.connected_event = asyncio.Event()
        self.disconnected_event = asyncio.Event()
        self.disconnected_event.set()
        self.client_id: int | None = None  # CLIENT ID of the current subscription
        self.messages = 0
        self.disconnects = 0

    # -- registration ----------------------------------------------------------------------

    def add_cache(self, cache: L1Cache[Any], key_prefix: str | None = None) -> None:
        """Keep ``cache`` in step; with ``key_prefix`` it only hears of keys under it (e.g.
        ``layout.app_key_prefix`` for the API key cache). It serves only while subscribed."""
        if self._connected:
            cache.enable()
        else:
            cache.disable()
        self._caches.append((cache, key_prefix))

    def add_callback(self, callback: InvalidationCallback) -> None:
        """Called with every message, after the caches.

        For example ``WatermarkHolder.on_invalidation``."""
        self._callbacks.append(callback)

    def add_connect_hook(self, hook: ConnectHook) -> None:
        """Awaited after each subscription, before the caches are enabled (e.g. reload state
        that messages missed while away). A failing hook counts as a failed connection."""
        self._connect_hooks.append(hook)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("listener already started")
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="cache-invalidation-listener"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if (current := asyncio.current_task()) is not None and current.cancelling():
                    raise
        # Nothing will tell the caches about changes any more.
        self._set_disconnected(None)

    async def __aenter__(self) -> InvalidationListener:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            connected_at: float | None = None
            conn: AbstractConnection | None = None
            try:
                conn = await self._new_connection(refresh=attempt > 0)
                await self._subscribe(conn)
                for hook in self._connect_hooks:
                    await hook()
                connected_at = loop.time()
                self._set_connected()
                await self._pump(conn)
            except Exception as exc:  # whatever failed, the channel can no longer be trusted
                self._set_disconnected(exc)
            finally:
                if conn is not None:
                    await self._close(conn)
            if connected_at is not None and loop.time() - connected_at >= self._stable_after:
                attempt = 0
            ceiling = min(self._backoff_cap, self._backoff_base * 2**attempt)
            attempt = min(attempt + 1, 62)
            await self._sleep(self._jitter() * ceiling)

    async def _new_connection(self, *, refresh: bool) -> AbstractConnection:
        """A connection of its own: to the server, or to the cluster node that owns the
        channel's slot (a sharded channel is served there only). After a failure the slot
        map is read again, since the owner may have changed (a failover)."""
        redis = self._redis
        conn: AbstractConnection
        if isinstance(redis, RedisCluster):
            async with asyncio.timeout(self._connect_timeout):
                await redis.initialize()
                if refresh:
                    await redis.nodes_manager.initialize()
            node = redis.get_node_from_key(self._layout.channel)
            if node is None:
                raise RedisConnectionError("no cluster node serves the invalidation channel")
            conn = node.connection_class(**node.connection_kwargs)
        else:
            conn = redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        # No retries inside the driver: this loop decides when and how to reconnect.
        conn.retry = Retry(NoBackoff(), 0)
        return conn

    async def _subscribe(self, conn: AbstractConnection) -> None:
        async with asyncio.timeout(self._connect_timeout):
            await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_command("CLIENT", "ID")
            self.client_id = int(await conn.read_response())
            await conn.send_command("SSUBSCRIBE", self._layout.channel)
            # Subscribed replies may come typed as pushes: ask for them, as PubSub does.
            reply = await conn.read_response(push_request=True)
        if not (isinstance(reply, list) and reply and reply[0] == b"ssubscribe"):
            raise RedisConnectionError(f"unexpected answer to SSUBSCRIBE: {reply!r}")

    async def _pump(self, conn: AbstractConnection) -> None:
        awaiting_pong = False
        while True:
            reply = await conn.read_response(
                timeout=self._ping_interval, disconnect_on_error=False, push_request=True
            )
            if reply is None:
                if awaiting_pong:
                    raise RedisConnectionError("no answer to PING on the invalidation channel")
                await conn.send_command("PING", check_health=False)
                awaiting_pong = True
                continue
            awaiting_pong = False  # any reply proves the connection alive
            if isinstance(reply, list) and len(reply) == 3:
                if reply[0] == b"smessage":
                    await self._apply(reply[2])
                elif reply[0] == b"sunsubscribe":
                    # The cluster moved the channel's slot to another node (a reshard or a
                    # failover): what is published now goes there.
                    raise RedisConnectionError("the invalidation channel moved to another node")

    async def _apply(self, data: bytes) -> None:
        """Apply one message: its keys a slice at a time, the event loop serving requests in
        between, then its callbacks (the watermark) once every key is applied.

        A request served between two slices may read an entry a later slice drops: the
        change is a few hundred microseconds old and the watermark it answers with does not
        cover it yet. A fill installed meanwhile is checked by its slice like any entry (by
        version), so nothing older than the message survives it. Messages stay in order:
        the next one is read only after this one is applied."""
        self.messages += 1
        try:
            message = decode_invalidation(data)
        except CacheDecodeError as exc:
            # An invalidation we cannot read may have named anything: forget everything.
            log.warning("unreadable invalidation message, flushing L1 caches: %s", exc)
            self._flush_caches()
            return
        entries = message.entries
        for start in range(0, len(entries), INVALIDATION_SLICE):
            if start:
                await asyncio.sleep(0)
            part = entries[start : start + INVALIDATION_SLICE]
            for cache, prefix in self._caches:
                cache.invalidate_many(part, prefix)
        for callback in self._callbacks:
            try:
                callback(message)
            except Exception:
                log.exception("invalidation callback %r failed", callback)

    def _flush_caches(self) -> None:
        for cache, _ in self._caches:
            cache.flush()

    def _set_connected(self) -> None:
        for cache, _ in self._caches:
            cache.enable()
        self._connected = True
        self._down_logged = False
        self.disconnected_event.clear()
        self.connected_event.set()
        log.info("invalidation listener subscribed to %s; L1 enabled", self._layout.channel)

    def _set_disconnected(self, reason: BaseException | None) -> None:
        # Caches first: from here on, changes may go unheard.
        for cache, _ in self._caches:
            cache.disable()
        was_connected = self._connected
        self._connected = False
        self.connected_event.clear()
        self.disconnected_event.set()
        if was_connected:
            self.disconnects += 1
        if reason is None:
            if was_connected:
                log.info("invalidation listener stopped; L1 bypassed")
        elif was_connected or not self._down_logged:
            self._down_logged = True
            log.warning(
                "invalidation listener not subscribed to %s (%s: %s); L1 bypassed, reconnecting",
                self._layout.channel, type(reason).__name__, reason,
            )
        else:
            log.debug("invalidation listener reconnect failed: %s", reason)

    @staticmethod
    async def _close(conn: AbstractConnection) -> None:
        try:
            await conn.disconnect(nowait=True)
        except Exception as exc:  # closing a broken connection: nothing left to save
            log.debug("closing the invalidation connection: %s", exc)
