"""The HTTP plumbing: one :class:`requests.Session` with two connection pools.

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
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from bridge.connector.lean_http import LeanSession

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


class HttpSession(Protocol):
    """What the client calls on its session (a requests.Session or a LeanSession)."""

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = ...,
        data: bytes | None = ...,
        headers: Mapping[str, str] | None = ...,
        timeout: tuple[float, float] | None = ...,
    ) -> requests.Response: ...

    def get(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = ...,
        headers: Mapping[str, str] | None = ...,
        timeout: tuple[float, float] | None = ...,
    ) -> requests.Response: ...

    def close(self) -> None: ...


class PullAborter(Protocol):
    def abort(self) -> int: ...


def make_session(
    token: str, pull_url: str, *, fast: bool = False
) -> tuple[HttpSession, PullAborter]:
    """The session of one connector, and what aborts its pulls in flight.

    One :class:`requests.Session` by default. With ``fast``, a
    :class:`~bridge.connector.lean_http.LeanSession` (five times cheaper per call), unless a
    proxy from the environment applies to the Connector, which only requests handles.
    """
    auth = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/plain, */*"}
    if fast and not requests.utils.get_environ_proxies(pull_url):
        lean = LeanSession(pull_url, POOL_SIZE)
        lean.headers.update(auth)
        return lean, lean
    session = requests.Session()
    calls = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=0)
    session.mount("http://", calls)
    session.mount("https://", calls)
    pull = PullAdapter()
    session.mount(pull_url, pull)  # the longest matching prefix wins
    session.headers.update(auth)
    return session, pull
