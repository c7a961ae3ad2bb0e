"""A lean HTTP/1.1 session for the Connector: pooled keep-alive ``http.client`` connections.

Why it exists: a call through ``requests`` costs 500 to 700 us of CPU on its own (it
looks proxies and ``.netrc`` up in the environment on every call, merges settings and
cookies, goes through adapters); the same call over an ``http.client`` connection costs
about 100 us. Every notification pull, command and start-up read of the bridge pays that
cost, so with ``requests`` the long poll alone used half a core at 1,000 notifications
per second, and 100,000 endpoints could not be read in under 90 s. This session does what
the Connector API needs and no more:

- the same surface as the part of :class:`requests.Session` the client uses
  (``request``, ``get``, ``headers``, ``close``), answering with :class:`requests.Response`
  objects and raising ``requests`` exceptions, so the callers are unchanged;
- keep-alive connections per host, at most ``pool_size`` kept idle; a connection the
  server closed meanwhile is noticed before it is reused (as urllib3 does);
- timeouts as ``(connect, read)``; TLS with certificate and host name verification
  against ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` or certifi's bundle, as requests;
- the long poll on connections of its own, which :meth:`LeanSession.abort_pulls` shuts
  down to end a pull in flight at once (stopping the channel).

Not supported, so :func:`bridge.connector.transport.make_session` keeps ``requests``
when they matter: proxies (any ``*_proxy`` variable that applies to the Connector URL).
Redirects are not followed and responses are not decompressed (no ``Accept-Encoding``
is sent); the Connector API uses neither.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import threading
from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit

import requests
from requests.structures import CaseInsensitiveDict
from requests.utils import DEFAULT_CA_BUNDLE_PATH, default_user_agent

Timeout = float | tuple[float, float] | None
_Key = tuple[str, str, int]


def _tls_context() -> ssl.SSLContext:
    """Verification as requests does it: an env bundle, else certifi's."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    path = bundle or DEFAULT_CA_BUNDLE_PATH
    if os.path.isdir(path):
        return ssl.create_default_context(capath=path)
    return ssl.create_default_context(cafile=path)


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """True when an idle connection cannot be reused: the server closed it (readable
    with EOF) or sent something unasked."""
    sock = conn.sock
    if sock is None:
        return False  # never connected: connects on use
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _Pool:
    """Idle connections to one (scheme, host, port), handed to one caller at a time."""

    def __init__(self, key: _Key, size: int, tls: ssl.SSLContext | None, track: bool) -> None:
        self.key = key
        self.size = size
        self.tls = tls
        self.idle: list[http.client.HTTPConnection] = []
        self.busy: set[http.client.HTTPConnection] | None = set() if track else None
        self.lock = threading.Lock()

    def take(self, connect_timeout: float | None) -> http.client.HTTPConnection:
        with self.lock:
            while self.idle:
                conn = self.idle.pop()
                if not _dropped(conn):
                    break
                conn.close()
            else:
                conn = self._new(connect_timeout)
            if self.busy is not None:
                self.busy.add(conn)
        return conn

    def _new(self, connect_timeout: float | None) -> http.client.HTTPConnection:
        scheme, host, port = self.key
        if scheme == "https":
            return http.client.HTTPSConnection(
                host, port, timeout=connect_timeout, context=self.tls
            )
        return http.client.HTTPConnection(host, port, timeout=connect_timeout)

    def give_back(self, conn: http.client.HTTPConnection, reusable: bool) -> None:
        with self.lock:
            if self.busy is not None:
                self.busy.discard(conn)
            if reusable and len(self.idle) < self.size:
                self.idle.append(conn)
                return
        conn.close()

    def shutdown_busy(self) -> int:
        with self.lock:
            conns = list(self.busy or ())
        done = 0
        for conn in conns:
            sock = conn.sock
            if isinstance(sock, socket.socket):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    done += 1
                except OSError:
                    pass
        return done

    def close(self) -> None:
        with self.lock:
            conns, self.idle = self.idle, []
        for conn in conns:
            conn.close()


def _response(url: str, resp: http.client.HTTPResponse, body: bytes) -> requests.Response:
    r = requests.Response()
    r.status_code = resp.status
    r.reason = resp.reason
    r._content = body
    r.headers = CaseInsensitiveDict(resp.getheaders())
    r.url = url
    return r


class LeanSession:
    """The subset of :class:`requests.Session` the Connector client uses, over
    ``http.client``. ``pull_url``: calls to it use connections of their own that
    :meth:`abort_pulls` can shut down."""

    def __init__(self, pull_url: str, pool_size: int) -> None:
        self.headers: CaseInsensitiveDict[str] = CaseInsensitiveDict(
            {"User-Agent": default_user_agent(), "Accept": "*/*", "Connection": "keep-alive"}
        )
        self._pool_size = pool_size
        self._pull_url = pull_url
        self._pools: dict[tuple[_Key, bool], _Pool] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def _pool(self, scheme: str, host: str, port: int, pull: bool) -> _Pool:
        key = (scheme, host, port)
        pool = self._pools.get((key, pull))
        if pool is None:
            with self._lock:
                pool = self._pools.get((key, pull))
                if pool is None:
                    if scheme == "https" and self._tls is None:
                        self._tls = _tls_context()
                    tls = self._tls if scheme == "https" else None
                    pool = _Pool(key, 2 if pull else self._pool_size, tls, track=pull)
                    self._pools[(key, pull)] = pool
        return pool

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
    ) -> requests.Response:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise requests.exceptions.InvalidURL(f"cannot call {url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        if params:
            target += ("&" if parts.query else "?") + urlencode(params)
        merged = dict(self.headers)
        if headers:
            merged.update(headers)
        connect_timeout: float | None
        read_timeout: float | None
        if isinstance(timeout, tuple):
            connect_timeout, read_timeout = timeout
        else:
            connect_timeout = read_timeout = timeout
        pull = url.startswith(self._pull_url)
        pool = self._pool(scheme, parts.hostname, port, pull)
        conn = pool.take(connect_timeout)
        reusable = False
        try:
            if conn.sock is None:
                try:
                    conn.connect()
                except TimeoutError as exc:
                    raise requests.ConnectTimeout(f"connecting to {parts.netloc}: {exc}") from None
            conn.sock.settimeout(read_timeout)
            conn.request(method, target, body=data, headers=merged)
            resp = conn.getresponse()
            body = resp.read()
            reusable = not resp.will_close
            return _response(url, resp, body)
        except TimeoutError as exc:
            raise requests.ReadTimeout(f"no answer from {parts.netloc}: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise requests.ConnectionError(f"{type(exc).__name__}: {exc}") from None
        finally:
            pool.give_back(conn, reusable)

    def get(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
    ) -> requests.Response:
        return self.request("GET", url, params=params, headers=headers, timeout=timeout)

    def abort(self) -> int:
        """Shut down the sockets of the pulls in flight (the pull adapter's role)."""
        return self.abort_pulls()

    def abort_pulls(self) -> int:
        """Shut down the sockets of the pulls in flight; returns how many."""
        with self._lock:
            pools = [p for (_, pull), p in self._pools.items() if pull]
        return sum(p.shutdown_busy() for p in pools)

    def close(self) -> None:
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.close()
