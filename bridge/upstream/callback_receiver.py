"""The receiving end of the callback (webhook) notification channel.

The Connector PUTs each channel message to the URL the bridge registered, sending back the
header the bridge gave it (``Authorization: Bearer <secret>``). Anyone who can reach the
port can send requests too, so this server believes nothing it did not check:

==========================================  ======  =============================================
request                                     answer  why
==========================================  ======  =============================================
another path                                404     only the registered path exists
another method                              405     the Connector only PUTs (``Allow: PUT``)
no or wrong secret                          401     compared in constant time, before the body
body over ``max_body``                      413     checked on Content-Length, and while reading
body not sent within ``BODY_TIMEOUT``       408     a slow sender cannot hold the receiver
not a JSON object / a part not a list       400     nothing of it is handed on
bridge stopping, or MQTT side cannot take   503     the Connector keeps it and delivers it again
it (``admit`` says why), or too many wait           (``Retry-After``)
handed to the bridge                        204
==========================================  ======  =============================================

**Answered only once handed over.** ``handle`` runs the Connector client's dispatch, which
publishes every value through the MQTT link before it returns (into paho's queue, or the
link's bounded buffer while the broker is away). Only then does the Connector get its
``204``; whatever was refused or never answered, it delivers again (the hosted service
retried for 15 minutes). So a message can arrive twice (the answer lost on the way back)
but is not lost between the two services.

Threads: the aiohttp server runs on its own event loop
(:class:`bridge.core.loop_thread.LoopThread`); the hand-over runs on one more thread, so
the loop keeps answering (refusals, TLS handshakes) while a message waits for room on the
MQTT side, and messages are handed on one at a time, in the order they came. At most
``MAX_WAITING`` accepted bodies wait for that thread; more get ``503``, which bounds
memory to about ``MAX_WAITING * max_body``.

Behind a reverse proxy (TLS at the proxy) or on its own with TLS (``ssl_context``): see
the README's Deployment section.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import ssl
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from bridge.connector.channel import parse_message
from bridge.connector.messages import MESSAGE_KINDS, MessageKind
from bridge.core.loop_thread import LoopThread

log = logging.getLogger("bridge.callback")

MAX_BODY = 16 * 1024 * 1024
MAX_WAITING = 4  # accepted bodies waiting for the hand-over thread
BODY_TIMEOUT = 30.0  # seconds to receive a whole body
RETRY_AFTER = "5"  # seconds, sent with 503
SHUTDOWN_GRACE = 2.0  # seconds a request being handed over may still take at stop
LOG_EVERY = 100  # a refusal of a kind is logged the first time, then every LOG_EVERY-th

# The parts of a channel message; each is a list when present.
MESSAGE_PARTS = MESSAGE_KINDS
# MQTT publications a part's entry may cause (a registration: $state and $resources).
_PUBLICATIONS = {MessageKind.REGISTRATIONS: 2, MessageKind.REG_UPDATES: 2}

Message = dict[str, Any]
Handle = Callable[[Message], object]
Admit = Callable[[Message], str | None]


class MalformedMessage(ValueError):
    """A callback body that is not a channel message; the text says why (no content)."""


def parse_callback_body(body: bytes) -> Message:
    """The channel message in a callback body, or :class:`MalformedMessage`.

    A JSON object whose known parts are lists; unknown keys are allowed (later versions
    of the service added some). Entries inside the lists are checked by their handlers,
    which skip and count bad ones.
    """
    try:
        message = parse_message(body)
    except ValueError as exc:
        raise MalformedMessage(str(exc)) from None
    wrong = [k for k in MESSAGE_PARTS if k in message and not isinstance(message[k], list)]
    if wrong:
        raise MalformedMessage(f"{', '.join(wrong)} must be a list")
    return message


def publications(message: Mapping[str, Any]) -> int:
    """About how many MQTT messages handing ``message`` on will publish (an upper bound
    for notifications, the hot path; registrations count their two retained topics)."""
    return sum(len(message.get(k) or ()) * _PUBLICATIONS.get(k, 1) for k in MESSAGE_PARTS)


def server_ssl_context(cert: Path, key: Path | None = None) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 or newer) with ``cert`` (the chain, PEM) and its key
    (``None``: in the same file). Raises ``ssl.SSLError`` / ``OSError`` when they do not
    load or do not match."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key) if key is not None else None)
    return context


def _digest(value: bytes) -> bytes:
    # Comparing fixed-length digests keeps even the secret's length out of the timing.
    return hashlib.sha256(value).digest()


class CallbackReceiver:
    """The webhook server. ``handle`` takes a parsed channel message and hands it on
    (the Connector client's ``handler``); it returns ``False`` if it could not.

    ``path``: the one path accepted (``None``: any, for tests only). ``admit``: asked
    before each hand-over, returns why the bridge cannot take that message now (``503``)
    or ``None``. ``ssl_context``: serve HTTPS (:func:`server_ssl_context`).
    """

    def __init__(
        self,
        handle: Handle,
        secret: str,
        host: str,
        port: int,
        max_body: int = MAX_BODY,
        *,
        path: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        admit: Admit | None = None,
    ) -> None:
        self._handle = handle
        self.secret = secret
        self._expected = _digest(f"Bearer {secret}".encode())
        self.host = host
        self.port = port
        self.path = path
        self._max_body = max_body
        self._ssl = ssl_context
        self._admit = admit
        self._runtime = LoopThread("callback-receiver")
        self._handover: ThreadPoolExecutor | None = None
        self._runner: web.AppRunner | None = None
        self._waiting = 0  # touched on the loop thread only
        self._closing = False
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "requests",
                "messages",
                "refused_path",
                "refused_method",
                "refused_secret",
                "refused_size",
                "refused_slow",
                "refused_malformed",
                "refused_unavailable",
                "errors",
            ),
            0,
        )

    @property
    def scheme(self) -> str:
        return "https" if self._ssl is not None else "http"

    # ---- one request ------------------------------------------------------------------

    def _refuse(
        self, kind: str, status: int, text: str, request: web.Request, **headers: str
    ) -> web.Response:
        self.stats[kind] += 1
        n = self.stats[kind]
        if n == 1 or n % LOG_EVERY == 0:
            # The client's address only: never a header value, never the body.
            log.warning(
                "callback refused with %d (%s) from %s (%s so far: %d)",
                status, text, request.remote, kind, n,
            )  # fmt: skip
        return web.Response(status=status, text=text, headers=headers or None)

    async def _receive(self, request: web.Request) -> web.StreamResponse:
        self.stats["requests"] += 1
        if self.path is not None and request.path != self.path:
            return self._refuse("refused_path", 404, "not found", request)
        if request.method != "PUT":
            return self._refuse("refused_method", 405, "use PUT", request, Allow="PUT")
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(_digest(given), self._expected):
            return self._refuse(
                "refused_secret", 401, "unauthorized", request, **{"WWW-Authenticate": "Bearer"}
            )
        if self._closing:
            return self._unavailable("the bridge is stopping", request)
        if request.content_length is not None and request.content_length > self._max_body:
            return self._refuse("refused_size", 413, "body too large", request)
        if self._waiting >= MAX_WAITING:
            return self._unavailable("too many messages waiting", request)
        self._waiting += 1
        try:
            try:
                body = await asyncio.wait_for(request.read(), BODY_TIMEOUT)
            except web.HTTPRequestEntityTooLarge:
                return self._refuse("refused_size", 413, "body too large", request)
            except asyncio.TimeoutError:
                return self._refuse("refused_slow", 408, "body not received in time", request)
            assert self._handover is not None
            loop = asyncio.get_running_loop()
            status, text = await loop.run_in_executor(self._handover, self._take, body)
        finally:
            self._waiting -= 1
        if status == 204:
            return web.Response(status=204)
        kind = {400: "refused_malformed", 503: "refused_unavailable"}.get(status, "errors")
        extra = {"Retry-After": RETRY_AFTER} if status == 503 else {}
        return self._refuse(kind, status, text, request, **extra)

    def _unavailable(self, why: str, request: web.Request) -> web.Response:
        return self._refuse(
            "refused_unavailable", 503, why, request, **{"Retry-After": RETRY_AFTER}
        )

    def _take(self, body: bytes) -> tuple[int, str]:
        """On the hand-over thread: parse, ask ``admit``, hand on. (status, reason)."""
        if self._closing:
            return 503, "the bridge is stopping"
        try:
            message = parse_callback_body(body)
        except MalformedMessage as exc:
            return 400, f"not a channel message: {exc}"
        if self._admit is not None:
            why = self._admit(message)
            if why is not None:
                return 503, why
        try:
            taken = self._handle(message)
        except Exception:
            log.exception("handing a callback message on failed")
            return 500, "internal error"
        if taken is False:
            return 400, "not a channel message"
        self.stats["messages"] += 1
        return 204, ""

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> CallbackReceiver:
        """Listen (returns once listening; raises OSError if the address is taken)."""
        if self._runtime.running:
            return self

        async def setup() -> None:
            app = web.Application(client_max_size=self._max_body)
            app.router.add_route("*", "/{tail:.*}", self._receive)
            app.on_response_prepare.append(_no_server_header)
            runner = web.AppRunner(
                app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE, handle_signals=False
            )
            await runner.setup()
            try:
                site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl)
                await site.start()
            except BaseException:
                await runner.cleanup()
                raise
            self._runner = runner
            self.port = int(runner.addresses[0][1])

        async def teardown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None

        self._closing = False
        self._handover = ThreadPoolExecutor(1, thread_name_prefix="callback-handover")
        try:
            self._runtime.start(setup, teardown)
        except BaseException:
            self._handover.shutdown(wait=False)
            self._handover = None
            raise
        log.info(
            "callback receiver listening on %s://%s:%d%s",
            self.scheme, self.host, self.port, self.path or "/*",
        )  # fmt: skip
        return self

    def refuse_new(self) -> None:
        """Answer ``503`` to every message from now on (the bridge is stopping): the
        Connector keeps them for the next start."""
        self._closing = True

    def stop(self) -> None:
        """Refuse new messages, let the one being handed over finish (bounded), close."""
        self._closing = True
        self._runtime.stop()
        if self._handover is not None:
            self._handover.shutdown(wait=False)
            self._handover = None


async def _no_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # No product and version banner for whoever scans the port.
    response.headers.popall("Server", None)
