"""The WebSocket notification channel of today's service: one socket, one loop thread.

The counterpart of :class:`bridge.connector.channel.LongPoller` for Device Management
(Pelion, now Izuma), whose long poll is gone. :class:`WebSocketChannel` registers the
channel (``PUT /v2/notification/websocket`` with the serialization options, through a
``register`` callable the client supplies: it uses the client's HTTP session), then opens
``GET /v2/notification/websocket-connect`` (``ws://`` for an ``http://`` base URL,
``wss://`` for ``https://``) with ``Authorization: Bearer <key>`` and an ``Origin``
header. Each text frame is one notification message; it is parsed and handed to the
client's dispatcher synchronously, on the channel's thread, before the next frame is
read, so a slow handler holds the socket back (back-pressure: the service keeps what it
has not sent in its queue) instead of piling messages up in memory. A frame that is not
a JSON object is logged and counted, never dispatched. (A handler that takes longer than
half the ``heartbeat`` holds the pong of a ping back too, and the connection may be taken
for dead: 1006, then a reconnect; nothing is lost, the service keeps what it did not send.)

The channel runs aiohttp's WebSocket client on a :class:`~bridge.core.loop_thread.LoopThread`
of its own: no thread per message, no polling loop. Pings (``heartbeat``) notice a dead
peer; TLS is verified unless an ``ssl`` context says otherwise; ``trust_env`` takes
proxies from the environment. The client's async-id expiry (``tick``) runs every
``tick_interval`` seconds on the same loop.

What a close or a refused try leads to (:func:`after_close`, :func:`after_handshake`,
:func:`after_register`; the states are :data:`STATES`):

- 1006 (abnormal, also a connection cut without a close frame or a missed pong), 1012
  (service restart), any code the service does not document, a handshake answered 429
  (another handshake with the key in progress) or 5xx, a registration answered 429 or
  5xx, and a connection that could not be made: state ``reconnecting``, the next try
  after the bridge's one back-off (:class:`~bridge.core.retry.Backoff`: capped
  exponential with jitter from ``backoff_base`` to ``backoff_max``); it starts again from
  the shortest wait after a good connection (one that delivered a message or stayed up
  ``stable_after`` seconds).
- 1011 (no such channel): register again, then reconnect (the same back-off).
- 1001 (another socket took the channel: the newest wins), 1008 (the key was revoked),
  1000 from the service (the channel was deleted), 401/403 at the handshake or the
  registration (the key is refused), and a registration or handshake refused with
  another 4xx (400: another kind of channel exists; 404: the service has no WebSocket
  channel): the channel **stops** in state ``taken_over``, ``revoked``, ``deleted``,
  ``refused`` or ``rejected``, with no retry: none of these mends itself, and retrying
  a taken-over channel would take it back from the consumer that has it. The caller sees
  the state (``state``, the ``on_state`` listener) and starts the channel again once the
  cause is dealt with.

Stopping sends a close frame (1000) and keeps dispatching what still arrives until the
service answers with its own close (at most ``close_timeout`` seconds), so a message the
service sent before it saw the close is not lost; a message being dispatched when
``stop`` is called is dispatched to the end. ``stop`` joins with a bound, is idempotent,
and the channel can be started again afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bridge.connector.channel import Message, parse_message
from bridge.core.loop_thread import LoopThread
from bridge.core.retry import Backoff

__all__ = [
    "STATES",
    "TERMINAL_STATES",
    "Serialization",
    "StateListener",
    "Verdict",
    "WebSocketChannel",
    "after_close",
    "after_handshake",
    "after_register",
    "origin_of",
    "websocket_url",
]

log = logging.getLogger("bridge.connector")

State = Literal[
    "stopped",
    "connecting",
    "connected",
    "reconnecting",
    "taken_over",
    "revoked",
    "refused",
    "rejected",
    "deleted",
]

#: Every state a channel can be in. ``stopped``: not started, or stopped by its owner;
#: ``connecting``: registering and opening the first socket of a start; ``connected``: a
#: socket is open; ``reconnecting``: waiting the back-off before the next try;
#: ``taken_over`` (1001), ``revoked`` (1008), ``refused`` (401/403), ``rejected`` (another
#: 4xx to the registration or the handshake) and ``deleted`` (1000 from the service):
#: stopped by what the service said, no retry.
STATES: Final[tuple[State, ...]] = (
    "stopped",
    "connecting",
    "connected",
    "reconnecting",
    "taken_over",
    "revoked",
    "refused",
    "rejected",
    "deleted",
)

#: The states in which no thread runs and nothing is tried again.
TERMINAL_STATES: Final[frozenset[State]] = frozenset(
    {"stopped", "taken_over", "revoked", "refused", "rejected", "deleted"}
)

#: ``on_state(state, detail)``: called on every change of state, on the channel's thread.
StateListener = Callable[[str, str], object]

#: What a registration came to: the HTTP status, or a text saying why no answer came.
RegisterAnswer = int | str

_CLOSE_FRAME: Final = struct.pack("!H", 1000)
_COUNTERS: Final = frozenset(
    {"attempts", "registrations", "connects", "reconnects", "retries", "frames", "messages"}
    | {"bad_frames"}
)
# Codes that may not be sent in a close frame (RFC 6455, 7.4.1): answered with 1000.
_UNSENDABLE: Final = frozenset({1004, 1005, 1006, 1015})


# ---- the pure parts -------------------------------------------------------------------


@dataclass(frozen=True)
class Serialization:
    """The serialization options sent with the channel's registration.

    ``include_uid`` (a ``uid`` in every entry, for duplicate detection),
    ``include_original_ep`` (the endpoint name beside the device id),
    ``include_timestamp`` (when the service received the entry),
    ``deregistrations_as_object`` (``de-registrations`` and ``registrations-expired``
    entries as objects instead of plain strings) and ``max_chunk_size`` (entries per
    message, 100 to 10,000; None: the service's default, 10,000).
    """

    include_uid: bool = True
    include_original_ep: bool = True
    include_timestamp: bool = False
    deregistrations_as_object: bool = False
    max_chunk_size: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "include_uid",
            "include_original_ep",
            "include_timestamp",
            "deregistrations_as_object",
        ):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False")
        size = self.max_chunk_size
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int):
                raise TypeError("max_chunk_size must be an int or None")
            if not 100 <= size <= 10_000:
                raise ValueError("max_chunk_size must be between 100 and 10,000")

    def body(self) -> dict[str, Any]:
        """The registration body: ``{"serialization": {"type": "v2", "cfg": {...}}}``."""
        serialization: dict[str, Any] = {
            "type": "v2",
            "cfg": {
                "include_uid": self.include_uid,
                "include_original_ep": self.include_original_ep,
                "include_timestamp": self.include_timestamp,
                "deregistrations_as_object": self.deregistrations_as_object,
            },
        }
        if self.max_chunk_size is not None:
            serialization["max_chunk_size"] = self.max_chunk_size
        return {"serialization": serialization}


def websocket_url(base: str, path: str = "/v2/notification/websocket-connect") -> str:
    """The socket's URL for the service at ``base``: ``ws://`` for ``http://``,
    ``wss://`` for ``https://``; a path prefix of ``base`` is kept."""
    parts = urlsplit(base)
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    scheme = schemes.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s) base URL: {base!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))


def origin_of(base: str) -> str:
    """The ``Origin`` header for the service at ``base``: its scheme and host."""
    parts = urlsplit(base)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    return f"{scheme}://{parts.netloc}"


@dataclass(frozen=True)
class Verdict:
    """What the channel does next: ``retry`` (the back-off, then connect again),
    ``register`` (the back-off, then register again and connect) or ``stop`` (enter
    ``state`` for good)."""

    action: Literal["retry", "register", "stop"]
    state: State
    detail: str


def after_close(code: int | None, reason: str = "") -> Verdict:
    """What a close by the service (or a lost connection: ``None``, 1006) leads to."""
    why = f' (reason "{reason}")' if reason else ""
    if code == 1000:
        return Verdict("stop", "deleted", f"the service closed the channel (1000){why}")
    if code == 1001:
        return Verdict(
            "stop",
            "taken_over",
            f"another socket took the channel (1001){why}: not reconnecting",
        )
    if code == 1008:
        return Verdict("stop", "revoked", f"the access key was revoked (1008){why}")
    if code == 1011:
        return Verdict("register", "reconnecting", f"no such channel (1011){why}")
    if code == 1012:
        return Verdict("retry", "reconnecting", f"service restart (1012){why}")
    if code is None or code == 1006:
        return Verdict("retry", "reconnecting", f"connection lost (1006){why}")
    return Verdict("retry", "reconnecting", f"closed with {code}{why}")


def after_handshake(status: int) -> Verdict:
    """What a handshake answered with ``status`` instead of 101 leads to."""
    if status in (401, 403):
        return Verdict(
            "stop", "refused", f"the service refused the access key (HTTP {status} at connect)"
        )
    if status == 429:
        return Verdict("retry", "reconnecting", "another handshake is in progress (HTTP 429)")
    if status >= 500:
        return Verdict("retry", "reconnecting", f"HTTP {status} at connect")
    return Verdict("stop", "rejected", f"the service rejected the connection (HTTP {status})")


def after_register(answer: RegisterAnswer) -> Verdict | None:
    """What a registration's answer leads to; None when the channel is registered."""
    if isinstance(answer, str):
        return Verdict("register", "reconnecting", f"registration failed: {answer}")
    if answer in (200, 201):
        return None
    if answer in (401, 403):
        return Verdict(
            "stop", "refused", f"the service refused the access key (HTTP {answer} at register)"
        )
    if answer == 429 or answer >= 500:
        return Verdict("register", "reconnecting", f"registration answered HTTP {answer}")
    if answer == 400:
        detail = "another kind of notification channel exists (HTTP 400 at register)"
    elif answer == 404:
        detail = "the service has no WebSocket channel (HTTP 404 at register)"
    else:
        detail = f"the registration was rejected (HTTP {answer})"
    return Verdict("stop", "rejected", detail)


# ---- the channel ----------------------------------------------------------------------


@dataclass
class _Run:
    """One start of the channel: its loop thread and what its tasks share."""

    runtime: LoopThread
    first: threading.Event = field(default_factory=threading.Event)  # first try ended
    ended: threading.Event = field(default_factory=threading.Event)  # loop thread done
    stop_called: bool = False
    stopping: bool = False  # on the loop: stop asked; what follows is no failure
    close_sent: bool = False
    main: asyncio.Task[None] | None = None
    wake: asyncio.Event | None = None
    ws: aiohttp.ClientWebSocketResponse[bool] | None = None
    session: aiohttp.ClientSession | None = None
    executor: ThreadPoolExecutor | None = None


def _one_connection_per_try(session: aiohttp.ClientSession) -> None:
    """Turn off aiohttp's own retry of an idempotent request whose connection dropped.

    aiohttp (3.10 and later) sends a GET again at once, on a new connection, when the
    server closed the first without an answer. A handshake is a GET, so a dead service saw
    two connections per try and twice the rate the channel's back-off allows. No public
    option turns it off: this is the one place the client touches aiohttp's private state,
    and it does nothing on a version without that attribute."""
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False


class WebSocketChannel:
    """The WebSocket notification channel of one client.

    ``base_url`` is the service's base URL (no ``/v2``); ``token()`` gives the access
    key; ``register(body)`` performs ``PUT /v2/notification/websocket`` with ``body`` and
    returns the HTTP status or a text saying why no answer came; ``dispatch(message)``
    handles a parsed message; ``tick()`` runs every ``tick_interval`` seconds (async-id
    expiry).
    """

    def __init__(
        self,
        base_url: str,
        token: Callable[[], str],
        register: Callable[[Mapping[str, Any]], RegisterAnswer],
        dispatch: Callable[[Message], object],
        tick: Callable[[], object],
        *,
        serialization: Serialization | None = None,
        on_state: StateListener | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        heartbeat: float = 30.0,
        connect_timeout: float = 10.0,
        close_timeout: float = 5.0,
        tick_interval: float = 1.0,
        stable_after: float = 10.0,
        origin: str | None = None,
        ssl: SSLContext | bool = True,
        trust_env: bool = True,
        name: str = "connector-websocket",
    ) -> None:
        self.url = websocket_url(base_url)
        self.origin = origin or origin_of(base_url)
        self.serialization = serialization or Serialization()
        self._token = token
        self._register = register
        self._dispatch = dispatch
        self._tick = tick
        self._on_state = on_state
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.tick_interval = tick_interval
        self.stable_after = stable_after
        self._ssl = ssl
        self._trust_env = trust_env
        self.name = name
        self._lock = threading.Lock()  # state and counters
        self._control = threading.Lock()  # one start or stop decision at a time
        self._run: _Run | None = None
        self._state: State = "stopped"
        self._detail = "not started"
        self._stats: dict[str, Any] = {
            "attempts": 0,
            "registrations": 0,
            "connects": 0,
            "reconnects": 0,
            "retries": 0,
            "frames": 0,
            "messages": 0,
            "bad_frames": 0,
            "closes": {},
            "consecutive_failures": 0,
            "last_close_code": None,
            "last_close_reason": None,
            "last_error": None,
        }

    # ---- what the caller sees ------------------------------------------------------

    @property
    def state(self) -> State:
        with self._lock:
            return self._state

    @property
    def detail(self) -> str:
        """Why the channel is in its state, in a few words."""
        with self._lock:
            return self._detail

    def is_running(self) -> bool:
        """True while a start is active: not stopped, not ended in a terminal state."""
        with self._lock:
            run = self._run
            return run is not None and not run.stop_called and self._state not in TERMINAL_STATES

    def stats(self) -> dict[str, Any]:
        """Counters: attempts (handshakes tried), registrations, connects, reconnects
        (connections made again after one was lost), retries (back-off waits), frames,
        messages (dispatched), bad_frames (not a JSON object: not dispatched), closes (by
        code), consecutive_failures, last_close_code, last_close_reason, last_error; and
        the state and its detail."""
        with self._lock:
            stats = dict(self._stats)
            stats["closes"] = dict(self._stats["closes"])
            stats["state"] = self._state
            stats["detail"] = self._detail
            return stats

    # ---- control -------------------------------------------------------------------

    def start(self, wait: float = 0.0) -> State:
        """Start the channel (or leave the running one as it is) and return its state.

        Waits up to ``wait`` seconds for the first try of this start to end: the socket is
        open (``connected``), the first try failed (``reconnecting``: it goes on trying),
        or the service ended it (a terminal state).
        """
        run: _Run | None = None
        with self._control:
            with self._lock:
                old = self._run
                active = old is not None and not old.stop_called
                if active and self._state not in TERMINAL_STATES:
                    log.warning("the WebSocket channel is already active")
                    run = old
            if run is None:
                if old is not None:
                    self._end(old, 1.0)  # a run that ended by itself: its idle thread
                run = self._begin()
        if wait > 0:
            run.first.wait(wait)
        return self.state

    def _begin(self) -> _Run:
        run = _Run(LoopThread(self.name))
        with self._lock:
            self._run = run
        self._set_state(run, "connecting", "registering the channel")

        async def setup() -> None:
            run.wake = asyncio.Event()
            run.main = asyncio.get_running_loop().create_task(self._main(run))

        run.runtime.start(setup, lambda: self._teardown(run))
        log.info("WebSocket channel started (%s)", self.url)
        return run

    def stop(self, timeout: float = 5.0) -> bool:
        """Close the socket (1000) and end the channel's thread, waiting up to ``timeout``
        seconds; True if it ended. Idempotent. From a handler (the channel's own thread)
        it only asks, and returns False: the thread ends once the handler returns."""
        with self._control, self._lock:
            run = self._run
            if run is None or run.stop_called:
                return run is None or run.ended.is_set()
            run.stop_called = True
        loop = run.runtime.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self._request_stop, run)
        if run.runtime.in_loop_thread():
            return False
        ended = self._end(run, timeout)
        if ended:
            log.info("WebSocket channel stopped")
        else:
            log.info("WebSocket channel thread still busy (a handler?); it ends after it")
        return ended

    def _end(self, run: _Run, timeout: float) -> bool:
        end = time.monotonic() + timeout
        ended = run.ended.wait(timeout)
        with contextlib.suppress(RuntimeError):  # the loop stopped by itself
            run.runtime.stop(timeout=max(0.0, end - time.monotonic()))
        return ended or run.ended.is_set()

    # ---- state ---------------------------------------------------------------------

    def _set_state(self, run: _Run, state: State, detail: str) -> None:
        """Enter ``state`` unless ``run`` is no longer the current start (an old run that
        ends in the background after a new start says nothing)."""
        with self._lock:
            if run is not self._run or (state == self._state and detail == self._detail):
                return
            self._state, self._detail = state, detail
            listener = self._on_state
        log.log(
            logging.WARNING if state in TERMINAL_STATES - {"stopped"} else logging.INFO,
            "WebSocket channel %s: %s",
            state,
            detail,
        )
        if listener is not None:
            try:
                listener(state, detail)
            except Exception:
                log.exception("the WebSocket state listener raised")

    def _count(self, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                if key in _COUNTERS:
                    self._stats[key] += value
                else:
                    self._stats[key] = value

    def _closed_with(self, code: int, reason: str) -> None:
        with self._lock:
            closes = self._stats["closes"]
            closes[code] = closes.get(code, 0) + 1
            self._stats["last_close_code"] = code
            self._stats["last_close_reason"] = reason

    # ---- on the loop -----------------------------------------------------------------

    def _request_stop(self, run: _Run) -> None:
        """On the loop: end the run; a socket is closed with a close frame first."""
        if run.stopping:
            return
        run.stopping = True
        if run.wake is not None:
            run.wake.set()
        ws, main = run.ws, run.main
        if ws is not None and not ws.closed and main is not None:
            asyncio.get_running_loop().create_task(self._close_socket(run, ws, main))
        elif main is not None:
            main.cancel()

    async def _close_socket(
        self, run: _Run, ws: aiohttp.ClientWebSocketResponse[bool], main: asyncio.Task[None]
    ) -> None:
        """Send the close frame and give the service ``close_timeout`` s to answer it;
        frames that arrive meanwhile are still dispatched by the receiving task."""
        try:
            await ws.send_frame(_CLOSE_FRAME, aiohttp.WSMsgType.CLOSE)
            run.close_sent = True
        except Exception as exc:  # the connection is gone already
            log.debug("sending the close frame failed: %s", exc)
            main.cancel()
            return
        done, _ = await asyncio.wait({main}, timeout=self.close_timeout)
        if not done:
            log.warning("no close answer within %.1f s; cutting the connection", self.close_timeout)
            main.cancel()

    async def _teardown(self, run: _Run) -> None:
        try:
            main = run.main
            if main is not None and not main.done():
                main.cancel()
                with contextlib.suppress(BaseException):
                    await main
            if run.session is not None and not run.session.closed:
                await run.session.close()
        finally:
            run.ended.set()

    async def _sleep(self, run: _Run, seconds: float) -> None:
        assert run.wake is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(run.wake.wait(), seconds)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            try:
                self._tick()
            except Exception:
                log.exception("async expiry failed")

    async def _main(self, run: _Run) -> None:
        loop = asyncio.get_running_loop()
        run.executor = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-register")
        run.session = aiohttp.ClientSession(
            trust_env=self._trust_env,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
        )
        _one_connection_per_try(run.session)
        ticker = loop.create_task(self._ticker())
        backoff = Backoff(self.backoff_base, self.backoff_max)
        register, connected_before = True, False
        final: tuple[State, str] = ("stopped", "stopped by its owner")
        try:
            while not run.stopping:
                verdict: Verdict | None = None
                if register:
                    verdict = await self._register_once(run)
                    register = verdict is not None
                if verdict is None:
                    verdict, was_good = await self._connect_once(run, backoff, connected_before)
                    connected_before = connected_before or was_good is not None
                    if was_good:
                        backoff.succeeded()
                if run.stopping:
                    break
                assert verdict is not None
                if verdict.action == "stop":
                    final = (verdict.state, verdict.detail)
                    break
                register = register or verdict.action == "register"
                delay = backoff.failed()
                self._count(
                    retries=1, consecutive_failures=backoff.failures, last_error=verdict.detail
                )
                self._set_state(run, "reconnecting", f"{verdict.detail}; next try in {delay:.2f} s")
                run.first.set()  # after the state: start() returns it
                await self._sleep(run, delay)
        except asyncio.CancelledError:
            pass  # stop(): a registration, handshake or unanswered close cut short
        finally:
            ticker.cancel()
            run.ws = None
            with contextlib.suppress(Exception):
                await run.session.close()
            run.executor.shutdown(wait=False)
            self._set_state(run, *final)
            run.first.set()
            loop.call_soon(loop.stop)  # the loop thread ends too (teardown sets ended)

    async def _register_once(self, run: _Run) -> Verdict | None:
        loop = asyncio.get_running_loop()
        self._count(registrations=1)
        try:
            answer = await loop.run_in_executor(
                run.executor, self._register, self.serialization.body()
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("registering the WebSocket channel raised")
            answer = f"{type(exc).__name__}: {exc}"
        verdict = after_register(answer)
        if verdict is None:
            log.debug("WebSocket channel registered (HTTP %s)", answer)
        return verdict

    async def _connect_once(
        self, run: _Run, backoff: Backoff, connected_before: bool
    ) -> tuple[Verdict, bool | None]:
        """One handshake and, if it succeeds, the life of the socket. Returns what comes
        next and whether the connection was good (None: no connection was made)."""
        assert run.session is not None
        self._count(attempts=1)
        try:
            ws = await asyncio.wait_for(
                run.session.ws_connect(
                    self.url,
                    headers={"Authorization": f"Bearer {self._token()}"},
                    origin=self.origin,
                    heartbeat=self.heartbeat,
                    autoclose=False,
                    autoping=True,
                    max_msg_size=0,
                    ssl=self._ssl,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.close_timeout),
                ),
                self.connect_timeout,
            )
        except aiohttp.WSServerHandshakeError as exc:
            return after_handshake(exc.status), None
        except asyncio.TimeoutError:
            return Verdict("retry", "reconnecting", "no handshake answer in time"), None
        except (aiohttp.ClientError, OSError) as exc:
            text = f"cannot connect: {type(exc).__name__}: {exc}"
            return Verdict("retry", "reconnecting", text), None
        if run.stopping:
            await ws.close()
            return Verdict("stop", "stopped", "stopped by its owner"), True
        run.ws = ws
        self._count(connects=1, reconnects=1 if connected_before else 0, consecutive_failures=0)
        self._set_state(run, "connected", f"connected to {self.url}")
        run.first.set()
        opened = time.monotonic()
        messages = 0
        try:
            verdict, messages = await self._receive(run, ws)
        finally:
            run.ws = None
        good = messages > 0 or time.monotonic() - opened >= self.stable_after
        return verdict, good

    async def _receive(
        self, run: _Run, ws: aiohttp.ClientWebSocketResponse[bool]
    ) -> tuple[Verdict, int]:
        """Read and dispatch frames until the socket closes."""
        messages = 0
        try:
            while True:
                msg = await ws.receive()
                kind = msg.type
                if kind is aiohttp.WSMsgType.TEXT or kind is aiohttp.WSMsgType.BINARY:
                    if self._frame(msg.data):
                        messages += 1
                    continue
                stop = Verdict("stop", "stopped", "stopped by its owner")
                if kind is aiohttp.WSMsgType.CLOSE:
                    code = int(msg.data) if msg.data is not None else 1005
                    reason = str(msg.extra or "")
                    self._closed_with(code, reason)
                    if not run.close_sent:  # answer the service's close
                        ok = 1000 <= code <= 4999 and code not in _UNSENDABLE
                        await ws.close(code=code if ok else 1000)
                    return (stop if run.stopping else after_close(code, reason)), messages
                # CLOSING, CLOSED, ERROR: the connection ended without a close frame
                # (cut, a missed pong, a protocol error).
                error = ws.exception()
                code = ws.close_code if ws.close_code not in (None, 1000) else 1006
                reason = f"{type(error).__name__}: {error}" if error else "no close frame"
                if isinstance(error, aiohttp.ServerTimeoutError):
                    reason = f"no pong within {self.heartbeat / 2:g} s"
                self._closed_with(code, reason)
                if not ws.closed:
                    await ws.close()
                return (stop if run.stopping else after_close(code, reason)), messages
        finally:
            if not ws.closed and not run.close_sent:
                with contextlib.suppress(Exception):
                    await ws.close()

    def _frame(self, data: object) -> bool:
        """Handle one data frame; True if it was dispatched."""
        self._count(frames=1)
        try:
            if not isinstance(data, str | bytes | bytearray):
                raise ValueError(f"frame of type {type(data).__name__}")
            message = parse_message(bytes(data) if isinstance(data, bytearray) else data)
        except ValueError as exc:
            self._count(bad_frames=1, last_error=f"bad frame: {exc}")
            log.error("WebSocket frame ignored: %s: %.200r", exc, data)
            return False
        self._count(messages=1)
        try:
            self._dispatch(message)
        except Exception:
            log.exception("dispatching a notification message failed")
        return True
