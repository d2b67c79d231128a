"""How one worker serves the app: its event loop, the listening site, a graceful stop, and
the API's error body even for requests aiohttp's HTTP parser refuses.

aiohttp answers a request it cannot parse (a request line or header over its limits, bytes
that are not HTTP) from ``RequestHandler.handle_error`` with a plain-text body and no
``X-Request-Id``, before any route runs; docs/api.md wants the JSON error body and the header on
every answer. ``web.run_app`` offers no hook for the handler class, so the worker runs its
own loop (as ``run_app`` does: only the main task is cancelled on SIGTERM, so requests in
flight finish within the shutdown timeout) with a runner whose server makes
``ContractErrorHandler`` protocols.

The same handler bounds how long a connection may take to send a request head
(``header_timeout``, ``LOYALTY_HEADER_TIMEOUT_SECONDS``): aiohttp has no such deadline, so
a client sending its headers a byte at a time (slowloris) would hold a connection until the
keep-alive timeout. From the first byte received after the previous request's head (or
after the connection opened), the next request's line and headers must be complete within
the deadline, else the connection is closed without an answer. Idle connections are closed
by aiohttp after ``keepalive_timeout`` (``LOYALTY_KEEPALIVE_TIMEOUT_SECONDS``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvloop
from aiohttp import web
from aiohttp.web_runner import GracefulExit

from readapi.endpoint import JSON_TYPE, REQUEST_ID_HEADER, new_request_id
from readapi.errors import error_body, key_for_status

log = logging.getLogger(__name__)

_PARSER_MESSAGES = {
    400: "The request could not be parsed as HTTP.",
    413: "The request is too large.",
    431: "The request headers are too large.",
}


class ContractErrorHandler(web.RequestHandler):
    """aiohttp's protocol handler, answering parser-level errors with the API's error body
    and closing connections that take longer than ``header_timeout`` to send a request head
    (None: no deadline)."""

    __slots__ = ("_head_deadline", "_header_timeout")  # as its base: no per-connection dict

    def __init__(
        self, manager: web.Server, *, header_timeout: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_deadline: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        deadline = self._head_deadline
        if deadline is not None and self._request_count != heads:
            deadline.cancel()  # a head is complete: the next one gets its own deadline
            self._head_deadline = deadline = None
        timeout = self._header_timeout
        # Bytes of a head not complete yet, and no deadline running: one starts now.
        if deadline is None and data and timeout is not None and self._request_count == heads:
            self._head_deadline = self._loop.call_later(timeout, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        timeout = self._header_timeout
        if self._force_close or self.transport is None or timeout is None:
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            # A request is being answered or waits its turn (the parser holds back heads
            # while too many are queued): the server is the slow side. Look again later.
            self._head_deadline = self._loop.call_later(timeout, self._head_too_slow)
            return
        log.info(
            "connection closed: request head not complete in time",
            extra={"header_timeout_seconds": timeout},
        )
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # As aiohttp's own: part of an answer left already, the connection is broken.
            raise ConnectionError("an answer was partly sent; cannot send the error")
        request_id = new_request_id()
        details = (message or (str(exc) if exc is not None else ""))[:300]
        # A client's malformed request is not the server's error: one line, no traceback.
        if status >= 500:
            log.error("request failed", exc_info=exc, extra={"request_id": request_id})
        else:
            log.info(
                "request refused by the HTTP parser",
                extra={"request_id": request_id, "status": status, "reason": details},
            )
        response = web.Response(
            status=status,
            body=error_body(
                status,
                key_for_status(status),
                _PARSER_MESSAGES.get(status, "The server failed to answer."),
                details,
                request_id,
            ),
            headers={"Content-Type": JSON_TYPE, REQUEST_ID_HEADER: request_id},
        )
        response.force_close()
        return response


class _ContractServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        # ``_loop`` and ``_kwargs``: what ``web.Server.__call__`` passes to its handler
        # (the runner's arguments, ``header_timeout`` included).
        return ContractErrorHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The app builds a plain ``web.Server``; this subclass adds no state, only the
        # handler class it makes.
        server.__class__ = _ContractServer
        return server


class ServeStartError(Exception):
    """The app never served: its startup failed, or its address could not be bound."""


async def _serve(
    app: web.Application, host: str, port: int, runner_args: dict[str, Any]
) -> None:
    runner = _Runner(app, handle_signals=True, **runner_args)
    try:
        try:
            await runner.setup()  # the app's startup: services start here
            await web.TCPSite(runner, host, port, reuse_port=True).start()
        except Exception as error:
            raise ServeStartError(f"cannot serve on {host}:{port}: {error}") from error
        await asyncio.Event().wait()  # until SIGTERM/SIGINT raise GracefulExit in the loop
    finally:
        await runner.cleanup()  # stops accepting, lets requests in flight finish


def serve(app: web.Application, host: str, port: int, **runner_args: Any) -> None:
    """Serve ``app`` on ``host:port`` (SO_REUSEPORT) until SIGTERM or SIGINT; raises
    ``ServeStartError`` if it cannot start (the supervisor tells it from a later death)."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(app, host, port, runner_args))
    try:
        loop.run_until_complete(main)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        main.cancel()
        loop.run_until_complete(asyncio.gather(main, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
