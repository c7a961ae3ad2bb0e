"""The HTTP plumbing: the two HTTP stacks of the client, one interface.

Either stack answers with an :class:`HttpResponse` (what the client reads of an answer)
and raises the client's typed failures, :class:`~bridge.connector.errors.TransportError`
and its kinds (:class:`~bridge.connector.errors.NotConnected`, the request never went
out; :class:`~bridge.connector.errors.NoAnswer`, it went out and no whole answer came;
:class:`~bridge.connector.errors.CannotSend`), never its own exceptions. The default stack
is :class:`RequestsSession`, a :class:`requests.Session` that maps requests' and urllib3's
exceptions to those kinds (:func:`typed_failure`); ``fast`` selects
:class:`~bridge.connector.lean_http.LeanSession`.

The requests stack has two connection pools.

Short calls share a pool sized for several threads calling at once. The long poll gets
its own small pool (a second adapter mounted on the same session for the pull URL), so
a poll held open for 30 s never takes a slot from the calls, and so that stopping the
channel can shut down the socket of a pull in flight instead of waiting for the
service to answer it. ``requests`` offers no way to cancel a request; the pull pool
remembers which connections are checked out, and :meth:`PullAdapter.abort` shuts their
sockets down, which ends the blocked read at once with a connection error. Should the
pool internals this relies on change, ``abort`` finds nothing and stopping falls back
to waiting for the pull to end.
"""

from __future__ import annotations

import logging
import socket
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Protocol

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from bridge.connector.errors import CannotSend, NoAnswer, NotConnected, TransportError
from bridge.connector.lean_http import LeanResponse, LeanSession

log = logging.getLogger("bridge.connector")

POOL_SIZE = 32


class _Tracker:
    """The connections currently checked out of a pool (weakly held)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: weakref.WeakSet[Any] = weakref.WeakSet()

    def add(self, conn: Any) -> None:
        with self.lock:
            self.live.add(conn)

    def discard(self, conn: Any) -> None:
        if conn is not None:
            with self.lock:
                self.live.discard(conn)

    def shutdown_all(self) -> int:
        with self.lock:
            conns = list(self.live)
        done = 0
        for conn in conns:
            sock = getattr(conn, "sock", None)
            if isinstance(sock, socket.socket):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    done += 1
                except OSError:
                    pass
        return done


def _tracked(base: type[HTTPConnectionPool], tracker: _Tracker) -> type[HTTPConnectionPool]:
    class Tracked(base):  # type: ignore[valid-type,misc]
        def _get_conn(self, timeout: float | None = None) -> Any:
            conn = super()._get_conn(timeout)
            tracker.add(conn)
            return conn

        def _put_conn(self, conn: Any) -> None:
            tracker.discard(conn)
            super()._put_conn(conn)

    return Tracked


class PullAdapter(HTTPAdapter):
    """The adapter of the long-poll URL: can abort the pulls in flight."""

    def __init__(self) -> None:
        self._tracker = _Tracker()
        super().__init__(pool_connections=1, pool_maxsize=2, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _tracked(HTTPConnectionPool, self._tracker),
            "https": _tracked(HTTPSConnectionPool, self._tracker),
        }

    def abort(self) -> int:
        """Shut down the sockets of the pulls in flight; returns how many."""
        return self._tracker.shutdown_all()


class HttpResponse(Protocol):
    """What the client reads of an answer, the same from both stacks (a
    :class:`requests.Response` or a :class:`~bridge.connector.lean_http.LeanResponse`):
    the whole body has been read when the call returns."""

    @property
    def status_code(self) -> int: ...

    @property
    def reason(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """The header fields, looked up without regard to case."""
        ...

    @property
    def content(self) -> bytes: ...

    @property
    def text(self) -> str: ...

    @property
    def ok(self) -> bool: ...

    def json(self) -> Any: ...


#: The answer types of the two stacks (for ``isinstance``; :class:`HttpResponse` is a
#: static interface only).
RESPONSE_TYPES: tuple[type[requests.Response], type[LeanResponse]] = (
    requests.Response,
    LeanResponse,
)


class HttpSession(Protocol):
    """What the client calls on its session (a :class:`RequestsSession` or a
    :class:`~bridge.connector.lean_http.LeanSession`). Both raise only
    :class:`~bridge.connector.errors.TransportError` for what the network or the
    server did."""

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = ...,
        data: bytes | None = ...,
        headers: Mapping[str, str] | None = ...,
        timeout: tuple[float, float] | None = ...,
    ) -> HttpResponse: ...

    def get(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = ...,
        headers: Mapping[str, str] | None = ...,
        timeout: tuple[float, float] | None = ...,
    ) -> HttpResponse: ...

    def close(self) -> None: ...


# urllib3's reasons (inside requests' ConnectionError, or inside its MaxRetryError) that
# come before anything is sent: no connection (NameResolutionError and
# ConnectTimeoutError are NewConnectionErrors or its base), the proxy could not be
# reached, or the pool had no connection to give. A TLS error (urllib3's SSLError) or a
# lost connection (ProtocolError) comes before sending only when it came from the TLS
# handshake: see _from_tls_handshake.
_BEFORE_SENDING: tuple[type[Exception], ...] = (
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ConnectTimeoutError,
    urllib3.exceptions.ProxyError,
    urllib3.exceptions.ClosedPoolError,
    urllib3.exceptions.EmptyPoolError,
)


def _from_tls_handshake(error: Exception) -> bool:
    """Whether the exception urllib3 wrapped in ``error`` (an ``SSLError`` or a
    ``ProtocolError``) was raised by the TLS handshake (``ssl.SSLSocket.do_handshake``),
    so before the request was sent. urllib3 wraps a failure on an established connection
    the same way; only where the wrapped exception was raised tells them apart. Should
    that ever not be found, the failure counts as sent (the safe side)."""
    for inner in error.args:
        if isinstance(inner, OSError):  # ssl.SSLError, ConnectionResetError...
            tb = inner.__traceback__
            while tb is not None:
                if tb.tb_frame.f_code.co_name == "do_handshake":
                    return True
                tb = tb.tb_next
    return False


# What requests refuses before sending anything, and would refuse again.
_UNSENDABLE: tuple[type[Exception], ...] = (
    requests.exceptions.InvalidURL,  # InvalidProxyURL too
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.URLRequired,
    requests.exceptions.InvalidJSONError,
)


def typed_failure(exc: requests.RequestException) -> TransportError:
    """The client's failure for what ``requests`` raised.

    ``requests.ConnectionError`` covers both "never connected" and "connection lost
    under way"; the urllib3 exception inside it (directly, or as a ``MaxRetryError``'s
    ``reason``) tells them apart. Before sending: ``NewConnectionError`` (refused; DNS,
    ``NameResolutionError``), ``ConnectTimeoutError``, proxy and pool errors, and a
    ``SSLError`` or ``ProtocolError`` raised in the TLS handshake. After: a
    ``ProtocolError`` (reset, closed before or during the answer), ``ReadTimeoutError``,
    a TLS error on the open connection. Anything not known to come before sending is
    :class:`NoAnswer`: when in doubt, the request may have been sent. ``kind`` is
    requests' exception name and ``detail`` its text, as the client's messages showed
    them before; ``timed_out`` is whether it is a ``requests.Timeout``.
    """
    kind = type(exc).__name__
    detail = str(exc)
    timed_out = isinstance(exc, requests.Timeout)
    if isinstance(exc, _UNSENDABLE):
        return CannotSend(kind, detail)
    if isinstance(exc, requests.ConnectTimeout):
        return NotConnected(kind, detail, timed_out=True)
    if isinstance(exc, requests.ConnectionError):
        reason: object = exc.args[0] if exc.args else None
        if isinstance(reason, urllib3.exceptions.MaxRetryError):
            reason = reason.reason
        if isinstance(reason, _BEFORE_SENDING) or (
            isinstance(reason, urllib3.exceptions.SSLError | urllib3.exceptions.ProtocolError)
            and _from_tls_handshake(reason)
        ):
            return NotConnected(kind, detail, timed_out=timed_out)
    return NoAnswer(kind, detail, timed_out=timed_out)


class RequestsSession(requests.Session):
    """A :class:`requests.Session` that raises the client's typed failures
    (:func:`typed_failure`) instead of requests' exceptions; the original is the
    failure's ``__cause__``."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        try:
            return super().request(*args, **kwargs)
        except requests.RequestException as exc:
            raise typed_failure(exc) from exc


class PullAborter(Protocol):
    def abort(self) -> int: ...


def make_session(
    token: str, pull_url: str, *, fast: bool = False
) -> tuple[HttpSession, PullAborter]:
    """The session of one connector, and what aborts its pulls in flight.

    One :class:`RequestsSession` by default. With ``fast``, a
    :class:`~bridge.connector.lean_http.LeanSession` (five times cheaper per call), unless a
    proxy from the environment applies to the Connector, which only requests handles.
    """
    auth = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/plain, */*"}
    if fast and not requests.utils.get_environ_proxies(pull_url):
        lean = LeanSession(pull_url, POOL_SIZE)
        lean.headers.update(auth)
        return lean, lean
    session = RequestsSession()
    calls = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=0)
    session.mount("http://", calls)
    session.mount("https://", calls)
    pull = PullAdapter()
    session.mount(pull_url, pull)  # the longest matching prefix wins
    session.headers.update(auth)
    return session, pull
