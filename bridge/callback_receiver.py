"""The receiving end of the callback (webhook) notification channel.

The Connector PUTs each channel message to the URL the bridge registered, with a secret
header the bridge chose. This small aiohttp server, on its own event loop in one thread,
checks the header, hands the body to the Connector client's ``handler`` (which emits the
events that publish to MQTT) and only then answers ``204``, so a message is acknowledged
once it has been handed to the MQTT side; the Connector retries what was not. A
malformed body gets ``400``, an oversize one ``413``, a wrong secret ``401``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger("bridge.callback")

MAX_BODY = 64 * 1024 * 1024


class CallbackReceiver:
    def __init__(
        self,
        handle: Callable[[bytes], bool],
        secret: str,
        host: str,
        port: int,
        max_body: int = MAX_BODY,
    ) -> None:
        self._handle = handle
        self._expected = f"Bearer {secret}".encode()
        self.host = host
        self.port = port
        self._max_body = max_body
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.stats = {"messages": 0, "rejected": 0}

    async def _receive(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, self._expected):
            self.stats["rejected"] += 1
            log.warning("callback from %s without the right Authorization; refused", request.remote)
            return web.Response(status=401, text="unauthorized")
        if request.content_length is not None and request.content_length > self._max_body:
            self.stats["rejected"] += 1
            return web.Response(status=413, text="body too large")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.stats["rejected"] += 1
            return web.Response(status=413, text="body too large")
        if not self._handle(body):
            self.stats["rejected"] += 1
            return web.Response(status=400, text="body is not a JSON object")
        self.stats["messages"] += 1
        return web.Response(status=204)

    def start(self) -> CallbackReceiver:
        """Listen (returns once listening; raises OSError if the address is taken)."""
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        async def setup() -> None:
            app = web.Application(client_max_size=self._max_body)
            app.router.add_route("PUT", "/{tail:.*}", self._receive)
            app.router.add_route("POST", "/{tail:.*}", self._receive)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            self._runner = runner
            self.port = int(runner.addresses[0][1])

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(setup())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                if self._runner is not None:
                    loop.run_until_complete(self._runner.cleanup())
                loop.close()

        thread = threading.Thread(target=run, name="callback-receiver", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._loop, self._thread = loop, thread
        log.info("callback receiver listening on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5.0)
