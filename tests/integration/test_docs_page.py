"""``GET /docs`` in a real browser: headless Chromium (Debian's ``chromium``) loads Swagger UI
from the app, every operation of the OpenAPI document renders, and "Try it out" sends a request
carrying the credentials entered under "Authorize".

The app runs in this process (``TestServer``) with Redis and Elasticsearch pointed at ports
nobody listens on: the page needs neither, and a /v1 request with credentials then answers
503 (the key cannot be checked) where one without them answers 401. Chromium is driven over
its DevTools protocol (JSON over a WebSocket, aiohttp's client), so no driver package is
needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from readapi.app import create_app
from readapi.openapi import build_openapi
from readapi.settings import ApiSettings
from tests.fixtures.faults import free_port
from tests.fixtures.readapi import KEY_A

BROWSERS = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome")
STEP_SECONDS = 20.0  # bound of each wait; the whole test takes a few seconds
POLL_SECONDS = 0.05
TRIED = "#operations-Vouchers-getVoucher"


def browser_path() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found is not None:
            return found
    pytest.fail("no Chromium to run the docs page in: install Debian's chromium package")


class DevTools:
    """One browser's DevTools protocol over its WebSocket."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for frame in self._socket:
                if frame.type is not aiohttp.WSMsgType.TEXT:
                    break
                message = json.loads(frame.data)
                waiter = self._pending.pop(message.get("id", -1), None)
                if waiter is None:
                    self.events.append(message)
                elif not waiter.done():
                    waiter.set_result(message)
        finally:
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("the browser closed its DevTools socket"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        waiter = asyncio.get_running_loop().create_future()
        self._pending[number] = waiter
        await self._socket.send_str(json.dumps(message))
        async with asyncio.timeout(STEP_SECONDS):
            answer = await waiter
        if "error" in answer:
            raise AssertionError(f"DevTools {method}: {answer['error']}")
        result: dict[str, Any] = answer["result"]
        return result

    async def close(self) -> None:
        await self._socket.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Page:
    """One tab: evaluate, wait for a condition, click, type."""

    def __init__(self, devtools: DevTools, session: str) -> None:
        self.devtools = devtools
        self.session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.devtools.send(method, params, self.session)

    def problems(self) -> list[str]:
        """What the page reported as going wrong: uncaught exceptions, console errors, and
        log errors (a refused script, a Content-Security-Policy violation, a failed load)
        other than the error answers "Try it out" asks for."""
        found = []
        for event in self.devtools.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details["text"])
            elif event.get("method") == "Runtime.consoleAPICalled" and params["type"] == "error":
                found.append(" ".join(str(arg.get("value", "")) for arg in params["args"]))
            elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                if "/v1/" in entry.get("url", ""):
                    continue
                found.append(f"{entry.get('url', '')}: {entry['text']}")
        return found

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str) -> Any:
        """The first truthy value of ``expression``, polled."""
        deadline = asyncio.get_running_loop().time() + STEP_SECONDS
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}; page: {self.problems()}")
            await asyncio.sleep(POLL_SECONDS)

    async def _act(self, action: str, selector: str, index: int, inner: str | None) -> None:
        """``action`` on the ``index``th match of ``selector`` (or on its ``inner`` match)."""
        found = await self.evaluate(
            f"(() => {{ let e = document.querySelectorAll({json.dumps(selector)})[{index}];"
            f" if (e && {json.dumps(inner)}) e = e.querySelector({json.dumps(inner)});"
            f" if (!e) return false; e.{action}(); return true; }})()"
        )
        assert found, f"nothing at {selector} [{index}] {inner or ''}"

    async def click(self, selector: str, index: int = 0, inner: str | None = None) -> None:
        await self._act("click", selector, index, inner)

    async def type(
        self, selector: str, text: str, index: int = 0, inner: str | None = None
    ) -> None:
        """Focus the input and type, as a user would (React sees the input events)."""
        await self._act("focus", selector, index, inner)
        await self.send("Input.insertText", {"text": text})


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[DevTools]:
    """Headless Chromium with a throw-away profile, closed (or killed) on the way out."""
    executable = browser_path()
    with tempfile.TemporaryDirectory(prefix="docs-page-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            executable,
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            # Port 0: Chromium picks one and writes it, with the socket's path, to this file.
            "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            active = Path(profile) / "DevToolsActivePort"
            async with asyncio.timeout(STEP_SECONDS):
                while not active.is_file() or len(active.read_text().split()) < 2:
                    assert process.returncode is None, "Chromium exited at its start"
                    await asyncio.sleep(POLL_SECONDS)
            port, path = active.read_text().split()[:2]
            async with aiohttp.ClientSession() as session:
                socket = await session.ws_connect(
                    f"ws://127.0.0.1:{port}{path}", max_msg_size=0
                )
                devtools = DevTools(socket)
                try:
                    yield devtools
                finally:
                    with contextlib.suppress(Exception):
                        await devtools.send("Browser.close")
                    await devtools.close()
        finally:
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def open_page(devtools: DevTools, url: str) -> Page:
    target = await devtools.send("Target.createTarget", {"url": "about:blank"})
    attached = await devtools.send(
        "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
    )
    page = Page(devtools, attached["sessionId"])
    for domain in ("Runtime", "Log", "Page"):
        await page.send(f"{domain}.enable")
    await page.send("Page.navigate", {"url": url})
    return page


# Null while Swagger UI is loading; what went wrong if it cannot render the description;
# else [method, path] of every rendered operation.
RENDERED = """(() => {
  if (typeof window.ui === "undefined")
    return document.readyState === "complete" ? {failed: "Swagger UI did not start"} : null;
  const status = window.ui.specSelectors.loadingStatus();
  const errors = document.querySelector(".errors-wrapper, .version-pragma");
  if (status === "failed" || errors)
    return {failed: errors ? errors.innerText : "the description did not load"};
  const blocks = document.querySelectorAll(".opblock");
  if (status !== "success" || blocks.length === 0) return null;
  return {operations: Array.from(blocks, (b) => [
    b.querySelector(".opblock-summary-method").textContent,
    b.querySelector(".opblock-summary-path").dataset.path,
  ])};
})()"""


def unreachable_settings() -> ApiSettings:
    return ApiSettings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        es_url=f"http://127.0.0.1:{free_port()}",
        redis_timeout_seconds=0.2,
        es_timeout_seconds=0.5,
    )


async def test_docs_page_renders_every_operation_and_tries_one() -> None:
    document = build_openapi()
    expected = sorted(
        [method.upper(), path] for path, item in document["paths"].items() for method in item
    )
    server = TestServer(create_app(unreachable_settings()), host="127.0.0.1")
    async with server, browser() as devtools:
        page = await open_page(devtools, str(server.make_url("/docs")))

        rendered = await page.wait_for(RENDERED, "Swagger UI to render /openapi.json")
        assert "failed" not in rendered, f"{rendered['failed']}; page: {page.problems()}"
        assert sorted(rendered["operations"]) == expected

        # An operation, opened, offers "Try it out" (opening all of them takes seconds).
        await page.click(f"{TRIED} .opblock-summary-control")
        label = await page.wait_for(
            f"(document.querySelector('{TRIED} .try-out__btn') || {{}}).textContent",
            '"Try it out"',
        )
        assert label.strip() == "Try it out"

        # The credentials go in under "Authorize": one field per header of the document.
        await page.click(".btn.authorize")
        schemes = await page.wait_for(
            """(() => {
              const found = Array.from(document.querySelectorAll(".auth-container"),
                                       (c) => c.querySelector("h4").textContent);
              return found.length === 2 ? found : null;
            })()""",
            "the Authorize dialog",
        )
        assert [name.split()[0] for name in schemes] == ["AppId", "AppToken"]
        # Each scheme has its own form: type its value, then its own "Authorize".
        for index, value in enumerate(KEY_A):
            await page.type(".auth-container", value, index, inner="input")
            await page.click(".auth-container", index, inner=".auth-btn-wrapper .authorize")
        await page.wait_for(
            "Array.from(document.querySelectorAll('.auth-container h6'),"
            " (h) => h.textContent).join() === 'Authorized,Authorized'",
            "both credentials to be taken",
        )
        await page.click(".btn-done")
        await page.wait_for("!document.querySelector('.dialog-ux')", "the dialog to close")

        # "Try it out" on the voucher lookup: the request reaches the app with both headers.
        await page.click(f"{TRIED} .try-out__btn")
        await page.type(f"{TRIED} tr[data-param-name='code'] input", "C-1")
        # Swagger UI takes a typed value after a debounce: wait until its state holds it.
        await page.wait_for(
            'JSON.stringify(window.ui.getState().getIn(["spec", "meta", "paths", '
            '"/v1/vouchers/{code}", "get", "parameters"]) || null).includes(\'"C-1"\')',
            "the typed code to be taken",
        )
        await page.click(f"{TRIED} .execute")
        status = await page.wait_for(
            f"""(() => {{
              const cell = document.querySelector(
                "{TRIED} .live-responses-table .response .response-col_status");
              return cell ? cell.textContent.trim() : null;
            }})()""",
            "the answer to the request",
        )
        curl = await page.evaluate(
            f"document.querySelector('{TRIED} .curl-command').innerText"
        )
        assert "/v1/vouchers/C-1" in curl
        assert f"X-App-Id: {KEY_A[0]}" in curl and f"X-App-Token: {KEY_A[1]}" in curl
        # 503: the key could not be checked (Redis is down); without the headers it is 401.
        assert status.startswith("503"), status
        assert page.problems() == []
