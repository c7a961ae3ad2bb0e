"""A small synchronous WebSocket client for the emulator's tests: aiohttp's client on its
own event loop thread. It connects (Bearer header or ``wss,pelion_<key>`` subprotocol),
keeps every text frame, and tells how the socket was closed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp


class HandshakeRefused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"handshake answered {status}")
        self.status = status


class WsClient:
    def __init__(self, base_url: str, token: str | None, *, via: str = "bearer") -> None:
        self.url = base_url.replace("http://", "ws://") + "/v2/notification/websocket-connect"
        self.token = token
        self.via = via
        self.frames: list[str] = []
        self.protocol: str | None = None
        self.close_code: int | None = None
        self.closed = threading.Event()
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession | None = None
        self._ws: Any = None
        self._reader: asyncio.Future[None] | None = None

    # --- connecting ----------------------------------------------------------------------

    def start_connect(self) -> concurrent.futures.Future[None]:
        return asyncio.run_coroutine_threadsafe(self._connect(), self._loop)

    def connect(self, timeout: float = 10.0) -> WsClient:
        """Open the socket; HandshakeRefused(status) when the server does not upgrade."""
        self.start_connect().result(timeout)
        return self

    async def _connect(self) -> None:
        self._session = aiohttp.ClientSession()
        headers: dict[str, str] = {}
        protocols: tuple[str, ...] = ()
        if self.via == "bearer" and self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        elif self.via == "protocol":
            protocols = ("wss", f"pelion_{self.token}")
        try:
            ws = await self._session.ws_connect(
                self.url, headers=headers, protocols=protocols, autoclose=True, heartbeat=None
            )
        except aiohttp.WSServerHandshakeError as exc:
            await self._session.close()
            raise HandshakeRefused(exc.status) from None
        self._ws = ws
        self.protocol = ws.protocol
        self._reader = asyncio.ensure_future(self._read(ws))

    async def _read(self, ws: Any) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                with self._changed:
                    self.frames.append(msg.data)
                    self._changed.notify_all()
        self.close_code = ws.close_code
        self.closed.set()
        with self._changed:
            self._changed.notify_all()

    # --- what arrived ----------------------------------------------------------------------

    @property
    def messages(self) -> list[dict[str, Any]]:
        with self._changed:
            return [json.loads(f) for f in self.frames]

    def entries(self, kind: str) -> list[Any]:
        return [e for m in self.messages for e in m.get(kind, [])]

    def wait_for(
        self, done: Callable[[WsClient], Any], timeout: float = 10.0, what: str = ""
    ) -> Any:
        """Wait until ``done(self)`` is truthy (checked on every frame); its value."""
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                found = done(self)
                if found:
                    return found
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what or done}: {self.frames}")
                self._changed.wait(min(left, 0.2))

    def async_response(self, aid: str, timeout: float = 10.0) -> dict[str, Any]:
        found: dict[str, Any] = self.wait_for(
            lambda c: next((e for e in c.entries("async-responses") if e["id"] == aid), None),
            timeout,
            f"async response {aid}",
        )
        return found

    def wait_closed(self, timeout: float = 10.0) -> int | None:
        assert self.closed.wait(timeout), "the socket was not closed"
        return self.close_code

    # --- ending ----------------------------------------------------------------------------

    def close(self) -> None:
        async def shut() -> None:
            if self._ws is not None:
                await self._ws.close()
            if self._session is not None:
                await self._session.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> WsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
