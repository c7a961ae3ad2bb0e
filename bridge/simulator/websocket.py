"""The current dialect's WebSocket notification channel, on aiohttp.

``PUT /v2/notification/websocket`` registers the channel (in :mod:`bridge.simulator.core`,
beside the callback); ``GET /v2/notification/websocket-connect`` opens the socket that
carries it, handled here:

- authentication by ``Authorization: Bearer <key>`` or, for clients that cannot set
  headers, ``Sec-WebSocket-Protocol: wss,pelion_<key>`` (the answer then names ``wss``);
  a wrong key is 401, and so is every request while the ``revoke_key`` fault is on;
- 429 while another handshake with the same key is in progress;
- a socket opened without a registered WebSocket channel is closed with 1011 right
  after the handshake;
- one socket per channel: a new one closes the old with 1001;
- each text frame is one notification message (``channel.encode`` of a batch of at most
  the channel's ``max_chunk_size`` entries). While no socket is connected the messages
  wait in the channel's queue (the outbox, bounded; the oldest are dropped and counted)
  and go out on the next connection. A frame that could not be sent goes back to the
  head of the queue (counted as ``redelivered``), and only one frame is under way at a
  time, so a takeover keeps the order;
- the faults ``ws_close`` (1006: the connection is aborted, no close frame; 1011: an
  unexpected condition; 1012: service restart), ``cut_sockets`` (the same, at random),
  ``revoke_key`` (1008), ``refuse_handshake`` and ``duplicate_messages`` (see
  :mod:`bridge.simulator.faults`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from bridge.simulator import channel as ch
from bridge.simulator.errors import error_json

if TYPE_CHECKING:
    from bridge.simulator.core import EmulatorCore

PROTOCOL = "wss"
KEY_PROTOCOL_PREFIX = "pelion_"
CLOSE_CODES = (1000, 1001, 1006, 1008, 1011, 1012)
COUNTER_NAMES = (
    "ws_handshakes",
    "ws_handshakes_refused",
    "ws_connects",
    "ws_disconnects",
    "ws_frames",
    "ws_duplicates",
    *(f"ws_closes_{code}" for code in CLOSE_CODES),
)


def protocol_key(request: web.Request) -> str | None:
    """The access key offered as ``pelion_<key>`` in ``Sec-WebSocket-Protocol``."""
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    for token in offered.split(","):
        token = token.strip()
        if token.startswith(KEY_PROTOCOL_PREFIX):
            return token[len(KEY_PROTOCOL_PREFIX) :]
    return None


def key_matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=error_json(status, message), content_type="application/json"
    )


class WebSocketChannel:
    """The socket side of the WebSocket channel: at most one connection, fed from the
    core's outbox. Lives on the emulator's event loop."""

    def __init__(self, core: EmulatorCore) -> None:
        self.core = core
        self.socket: web.WebSocketResponse | None = None
        self._request: web.Request | None = None  # the socket's request (its transport)
        self.handshaking = 0
        self._lock: asyncio.Lock | None = None  # one frame under way at a time
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        return self.socket is not None and not self.socket.closed

    def rebind(self) -> None:
        """A fresh lock for a new event loop (an emulator started again)."""
        self._lock = asyncio.Lock()
        self.socket = self._request = None
        self.handshaking = 0

    async def shutdown(self) -> None:
        """The emulator stops: the socket is closed as a service restart (1012)."""
        ws = self.socket
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await self._close(ws, 1012)
        for task in list(self._tasks):
            task.cancel()
        self.socket = self._request = None

    # --- closing ---------------------------------------------------------------------

    async def _close(
        self, ws: web.WebSocketResponse, code: int, reason: bytes | None = None
    ) -> None:
        if ws.closed:
            return
        self.core.count(f"ws_closes_{code}")
        if code == 1006:  # abnormal closure: the connection just ends, no close frame
            request = self._request if ws is self.socket else None
            if request is not None and request.transport is not None:
                request.transport.abort()
            return
        await ws.close(code=code, message=_REASONS.get(code, b"") if reason is None else reason)

    def close_soon(self, code: int) -> None:
        """Close the connected socket (if any) from synchronous code: a DELETE (1000)."""
        ws = self.socket
        if ws is None or ws.closed:
            return
        self.socket = self._request = None
        self._spawn(self._close(ws, code))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the handshake -------------------------------------------------------------------

    async def connect(
        self,
        request: web.Request,
        route_faults: Callable[[], Awaitable[web.StreamResponse | None]],
    ) -> web.StreamResponse:
        """``GET /v2/notification/websocket-connect`` (already authenticated).
        ``route_faults`` applies the route's faults (hang, forced status, error rate,
        latency) while the handshake counts as in progress."""
        core = self.core
        core.count("ws_handshakes")
        if self.handshaking:
            core.count("ws_handshakes_refused")
            return _error(429, "another WebSocket handshake with this key is in progress")
        refused = core.faults.refused_handshake()
        if refused is not None:
            core.count("ws_handshakes_refused")
            return _error(refused, f"handshake refused (injected {refused})")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            core.count("ws_handshakes_refused")
            return _error(426, "Upgrade required: connect with a WebSocket client")
        via_protocol = protocol_key(request) is not None
        ws = web.WebSocketResponse(protocols=(PROTOCOL,) if via_protocol else (), heartbeat=None)
        if not ws.can_prepare(request).ok:
            core.count("ws_handshakes_refused")
            return _error(400, "missing or invalid WebSocket handshake headers")
        self.handshaking += 1
        try:
            faulted = await route_faults()
            if faulted is not None:
                core.count("ws_handshakes_refused")
                return faulted
            await ws.prepare(request)
        finally:
            self.handshaking -= 1
        core.count("ws_connects")
        if core.channel_kind != "WEB_SOCKET":
            await self._close(ws, 1011)
            core.count("ws_disconnects")
            return ws
        old = self.socket
        self.socket, self._request = ws, request
        if old is not None and not old.closed:
            self._spawn(self._close(old, 1001))
        sender = asyncio.create_task(self._send_loop(ws))
        try:
            async for msg in ws:  # the client sends nothing that matters; read to the end
                if msg.type is WSMsgType.ERROR:
                    break
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            if self.socket is ws:
                self.socket = self._request = None
            core.count("ws_disconnects")
        return ws

    # --- delivery ----------------------------------------------------------------------

    def _should_stop(self, ws: web.WebSocketResponse) -> int | None:
        """A close code when this socket must go now (fault, revoked key), else None;
        0 when it is no longer the channel's socket (just stop sending)."""
        core = self.core
        if ws.closed or self.socket is not ws or core.channel_kind != "WEB_SOCKET":
            return 0
        faults = core.faults
        if faults.key_revoked:
            return 1008
        return faults.ws_close_due()

    async def _send_loop(self, ws: web.WebSocketResponse) -> None:
        core = self.core
        outbox = core.outbox
        assert self._lock is not None
        while True:
            code = self._should_stop(ws)
            if code is not None:
                if code:
                    await self._close(ws, code, _FAULT_REASONS.get(code))
                return
            if not len(outbox):
                await outbox.wait(None)  # also woken by a fault switched on (poke)
                outbox.settle()
                continue
            async with self._lock:
                if self._should_stop(ws) is not None:
                    continue
                cut = core.faults.cut_socket()
                if cut is not None:  # before the frame: what it would carry stays queued
                    await self._close(ws, cut, _FAULT_REASONS.get(cut))
                    return
                batch = outbox.take(core.enc.chunk)
                if not batch:
                    continue
                frame = ch.encode(batch).decode()
                try:
                    await ws.send_str(frame)
                except BaseException as exc:
                    outbox.put_back(batch)
                    core.count("redelivered", len(batch))
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    return
                core.count("delivered", len(batch))
                core.count("ws_frames")
                if core.faults.duplicate_due():
                    with contextlib.suppress(Exception):
                        await ws.send_str(frame)
                        core.count("ws_frames")
                        core.count("ws_duplicates")
                core.faults.message_sent()


# A 1011 a fault causes: the channel exists (the service's "other unexpected condition").
_FAULT_REASONS = {1011: b"unexpected condition"}

_REASONS = {
    1000: b"channel deleted",
    1001: b"another socket opened on this channel",
    1008: b"access key revoked",
    1011: b"no WebSocket channel registered",
    1012: b"service restart",
}
