"""A lean HTTP/1.1 session for the Connector: pooled keep-alive sockets, no more than
the Connector API needs.

Why it exists: every notification pull, command and start-up read of the bridge is one
HTTP call, and a call through ``requests`` costs many times the CPU of one here (it looks
proxies and ``.netrc`` up in the environment on every call, merges settings and cookies,
goes through adapters; ``http.client`` parses headers with the ``email`` package); the
README's "Performance" section has the figures. What it does:

- the part of :class:`requests.Session` the client uses (``request``, ``get``,
  ``headers``, ``close``), answering with :class:`LeanResponse` objects (the answer
  interface both stacks share, :class:`bridge.connector.transport.HttpResponse`) and
  raising the client's typed failures (:mod:`bridge.connector.errors`):
  :class:`~bridge.connector.errors.NotConnected` when no connection could be made (so
  the request surely never went out), :class:`~bridge.connector.errors.NoAnswer` when
  it went out and no whole answer came back, :class:`~bridge.connector.errors.CannotSend`
  for a URL or header it cannot send;
- HTTP/1.1 keep-alive, at most ``pool_size`` idle connections per host; a connection the
  server closed meanwhile is noticed before it is reused (as urllib3 does);
- bodies by ``Content-Length``, ``chunked`` or until the server closes; interim 1xx
  answers skipped; no body for HEAD, 204 and 304;
- timeouts as ``(connect, read)``; TLS with certificate and host name verification
  against ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` or certifi's bundle, as requests;
- the long poll on connections of its own, which :meth:`LeanSession.abort` shuts down
  to end a pull in flight at once (stopping the channel).

Not supported, so :func:`bridge.connector.transport.make_session` keeps ``requests``
when they matter: proxies (any ``*_proxy`` variable that applies to the Connector URL).
Redirects are not followed and responses are not decompressed (no ``Accept-Encoding``
is sent); the Connector API uses neither.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import ssl
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from requests.structures import CaseInsensitiveDict
from requests.utils import DEFAULT_CA_BUNDLE_PATH, default_user_agent

from bridge.connector.errors import CannotSend, NoAnswer, NotConnected

Timeout = float | tuple[float, float] | None
_Key = tuple[str, str, int]
_Items = tuple[tuple[str, str], ...]
_RECV = 65536
_MAX_HEAD = 65536  # bytes of status line and headers accepted
_NO_BODY = frozenset((204, 304))


class _Closed(Exception):
    """The server closed the connection before a whole answer came."""


def _tls_context() -> ssl.SSLContext:
    """Verification as requests does it: an env bundle, else certifi's."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    path = bundle or DEFAULT_CA_BUNDLE_PATH
    if os.path.isdir(path):
        return ssl.create_default_context(capath=path)
    return ssl.create_default_context(cafile=path)


class _Conn:
    """One keep-alive connection: its socket and the bytes read past the last answer."""

    __slots__ = ("buf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def dropped(self) -> bool:
        """True when an idle connection cannot be reused: the server closed it (readable
        with end of file) or sent something unasked."""
        if self.buf or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # ---- reading an answer -------------------------------------------------------------

    def _fill(self) -> None:
        chunk = self.sock.recv(_RECV)
        if not chunk:
            raise _Closed("the server closed the connection")
        self.buf += chunk

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = self._take(i)
                del self.buf[:2]
                return line
            if len(self.buf) > _MAX_HEAD:
                raise ValueError("line too long")
            self._fill()

    def _take(self, n: int) -> bytes:
        """The first ``n`` buffered bytes, removed from the buffer. A large part is copied
        once, through a view; a small one by slicing, which is quicker below a few KiB."""
        buf = self.buf
        if n == len(buf):  # the usual end of an answer: all that was read
            data = bytes(buf)
            buf.clear()
            return data
        if n < 4096:
            data = bytes(buf[:n])
        else:
            with memoryview(buf) as view:
                data = bytes(view[:n])
        del buf[:n]
        return data

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        return self._take(n)

    def _head(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                head = self._take(i)
                del self.buf[:4]
                return head
            if len(self.buf) > _MAX_HEAD:
                raise ValueError("answer headers too long")
            self._fill()

    def read_answer(self, method: str) -> tuple[int, str, list[tuple[str, str]], bytes, bool]:
        """Status, reason, headers, body and whether the connection must be closed."""
        while True:
            lines = self._head().split(b"\r\n")
            version, _, rest = lines[0].partition(b" ")
            code_text, _, reason = rest.partition(b" ")
            if not version.startswith(b"HTTP/") or len(code_text) != 3 or not code_text.isdigit():
                raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
            status = int(code_text)
            if 100 <= status < 200 and status != 101:
                continue  # interim answer (100 Continue...): the real one follows
            break
        headers: list[tuple[str, str]] = []
        for raw in lines[1:]:
            if raw[:1] in (b" ", b"\t") and headers:  # obsolete line folding
                folded_name, folded_value = headers[-1]
                headers[-1] = (folded_name, folded_value + " " + raw.strip().decode("latin-1"))
                continue
            key, sep, value = raw.partition(b":")
            if not sep:
                raise ValueError(f"malformed header line {raw[:80]!r}")
            headers.append((key.strip().decode("latin-1"), value.strip().decode("latin-1")))
        fields = {name.lower(): text for name, text in headers}
        connection = fields.get("connection", "").lower()
        close = connection == "close" or (version == b"HTTP/1.0" and connection != "keep-alive")
        if method == "HEAD" or status in _NO_BODY or status < 200:
            return status, reason.decode("latin-1"), headers, b"", close
        if "chunked" in fields.get("transfer-encoding", "").lower():
            body = self._chunked()
        elif "content-length" in fields:
            length = int(fields["content-length"])
            if length < 0:
                raise ValueError("negative Content-Length")
            body = self._exactly(length)
        else:  # the body ends when the server closes the connection
            while True:
                try:
                    self._fill()
                except _Closed:
                    break
            body, close = bytes(self.buf), True
            self.buf.clear()
        return status, reason.decode("latin-1"), headers, body, close

    def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_text = self._line().split(b";", 1)[0].strip()
            size = int(size_text, 16)
            if size == 0:
                while self._line():  # trailers, up to the empty line
                    pass
                return b"".join(parts)
            parts.append(self._exactly(size))
            if self._exactly(2) != b"\r\n":
                raise ValueError("chunk not followed by CRLF")


class _Pool:
    """Idle connections to one (scheme, host, port), handed to one caller at a time."""

    def __init__(self, key: _Key, size: int, tls: ssl.SSLContext | None, track: bool) -> None:
        self.key = key
        self.size = size
        self.tls = tls
        self.idle: deque[_Conn] = deque()  # append/pop are atomic: no lock needed
        self.busy: set[_Conn] | None = set() if track else None
        self.lock = threading.Lock()  # guards `busy` (pulls only)

    def take(self) -> _Conn | None:
        """An idle connection that still works, or None (the caller opens one)."""
        while True:
            try:
                conn = self.idle.pop()
            except IndexError:
                return None
            if conn.dropped():
                conn.close()
                continue
            if self.busy is not None:
                with self.lock:
                    self.busy.add(conn)
            return conn

    def open(self, connect_timeout: float | None) -> _Conn:
        scheme, host, port = self.key
        sock = socket.create_connection((host, port), timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                assert self.tls is not None
                sock = self.tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        conn = _Conn(sock)
        if self.busy is not None:
            with self.lock:
                self.busy.add(conn)
        return conn

    def give_back(self, conn: _Conn, reusable: bool) -> None:
        if self.busy is not None:
            with self.lock:
                self.busy.discard(conn)
        if reusable and len(self.idle) < self.size:  # a race may keep one more: harmless
            self.idle.append(conn)
            return
        conn.close()

    def shutdown_busy(self) -> int:
        with self.lock:
            conns = list(self.busy or ())
        done = 0
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
                done += 1
            except OSError:
                pass
        return done

    def close(self) -> None:
        while self.idle:
            try:
                self.idle.pop().close()
            except IndexError:
                break


class Headers(Mapping[str, str]):
    """The header fields of an answer, looked up without regard to case. A field sent
    more than once reads as its values joined by ``", "`` (as urllib3 does). The lookup
    table is built the first time somebody asks: most answers are read for their status
    and body only."""

    __slots__ = ("_fields", "_index")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields
        self._index: dict[str, tuple[str, str]] | None = None

    def _table(self) -> dict[str, tuple[str, str]]:
        index = self._index
        if index is None:
            index = {}
            for name, value in self._fields:
                key = name.lower()
                seen = index.get(key)
                index[key] = (name, value) if seen is None else (seen[0], f"{seen[1]}, {value}")
            self._index = index
        return index

    def __getitem__(self, name: str) -> str:
        return self._table()[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._table()

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._table().values())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return repr(dict(self.items()))


class LeanResponse:
    """One answer: status, reason, headers and the whole body, read before it is returned.

    The interface the client reads of either stack (see
    :class:`bridge.connector.transport.HttpResponse`): ``status_code``, ``reason``,
    ``headers`` (case-insensitive), ``content``, ``text``, ``json()``, ``ok``, ``url``.
    """

    __slots__ = ("content", "headers", "reason", "status_code", "url")

    def __init__(
        self, url: str, status: int, reason: str, fields: list[tuple[str, str]], body: bytes
    ) -> None:
        self.url = url
        self.status_code = status
        self.reason = reason
        self.headers = Headers(fields)
        self.content = body

    @property
    def ok(self) -> bool:
        """True for a status below 400 (as requests)."""
        return self.status_code < 400

    @property
    def text(self) -> str:
        """The body as text: in the ``charset`` of its Content-Type, else UTF-8; bytes
        that do not decode are replaced."""
        charset = "utf-8"
        for param in self.headers.get("Content-Type", "").split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset" and value.strip():
                charset = value.strip().strip('"')
        try:
            return self.content.decode(charset, "replace")
        except LookupError:  # a charset Python does not know
            return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body decoded as JSON; raises :class:`ValueError` when it is not JSON."""
        return json.loads(self.content)

    def __repr__(self) -> str:
        return f"<LeanResponse [{self.status_code}]>"


def _unsafe(text: str) -> bool:
    return "\r" in text or "\n" in text or "\0" in text


class _Headers(CaseInsensitiveDict[str]):
    """The session's headers; ``version`` changes with every change, so the rendered
    header block can be cached without comparing the headers on every call."""

    version = 0

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        self.version += 1

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.version += 1


class LeanSession:
    """The subset of :class:`requests.Session` the Connector client uses, over plain
    sockets. ``pull_url``: calls to it use connections of their own that :meth:`abort`
    can shut down."""

    def __init__(self, pull_url: str, pool_size: int) -> None:
        self.headers: CaseInsensitiveDict[str] = _Headers(
            {"User-Agent": default_user_agent(), "Accept": "*/*", "Connection": "keep-alive"}
        )
        self._pool_size = pool_size
        self._pull_url = pull_url
        self._origins: dict[str, tuple[str, str, _Pool, _Pool]] = {}
        self._blocks: dict[tuple[int | _Items, _Items], str] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def _origin(self, url: str) -> tuple[str, str, _Pool, _Pool]:
        """For ``url``: its origin (``scheme://host:port``), the Host header, and the
        pools of calls and of pulls there. Cached: parsed once per origin."""
        cut = url.find("/", url.find("//") + 2) if "//" in url else -1
        origin = url if cut < 0 else url[:cut]
        found = self._origins.get(origin)
        if found is not None:
            return found
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
        try:
            port = parts.port
        except ValueError:
            port = -1
        if scheme not in ("http", "https") or not host or port == -1:
            raise CannotSend("InvalidURL", f"cannot call {url!r}")
        default_port = 443 if scheme == "https" else 80
        port = port or default_port
        shown = f"[{host}]" if ":" in host else host  # an IPv6 address
        host_header = shown if port == default_port else f"{shown}:{port}"
        with self._lock:
            if scheme == "https" and self._tls is None:
                self._tls = _tls_context()
            tls = self._tls if scheme == "https" else None
            key = (scheme, host, port)
            found = (
                origin,
                host_header,
                _Pool(key, self._pool_size, tls, track=False),
                _Pool(key, 2, tls, track=True),
            )
            self._origins.setdefault(origin, found)
            return self._origins[origin]

    def _header_block(self, headers: Mapping[str, str] | None) -> str:
        """The header lines of the session's headers merged with ``headers``, checked
        once and cached (the client sends a handful of combinations)."""
        version = getattr(self.headers, "version", None)
        own = version if version is not None else tuple(self.headers.items())
        key = (own, tuple(headers.items()) if headers else ())
        block = self._blocks.get(key)
        if block is None:
            merged = dict(self.headers)
            if headers:
                merged.update(headers)
            for name, value in merged.items():
                if _unsafe(name) or _unsafe(value) or ":" in name:
                    raise CannotSend("InvalidHeader", f"header {name!r} is not valid")
            block = "".join(f"\r\n{name}: {value}" for name, value in merged.items())
            if len(self._blocks) > 64:
                self._blocks.clear()
            self._blocks[key] = block
        return block

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
    ) -> LeanResponse:
        """One call: the whole answer, or a :class:`~bridge.connector.errors.TransportError`."""
        origin, host_header, calls, pulls = self._origin(url)
        target = url[len(origin) :].split("#", 1)[0] or "/"
        if params:
            target += ("&" if "?" in target else "?") + urlencode(params)
        if _unsafe(target) or " " in target:
            raise CannotSend("InvalidURL", f"cannot call {url!r}")
        head = f"{method} {target} HTTP/1.1\r\nHost: {host_header}" + self._header_block(headers)
        if data is not None or method in ("POST", "PUT", "PATCH"):
            head += f"\r\nContent-Length: {len(data or b'')}"
        message = (head + "\r\n\r\n").encode("latin-1") + (data or b"")

        connect_timeout: float | None
        read_timeout: float | None
        if isinstance(timeout, tuple):
            connect_timeout, read_timeout = timeout
        else:
            connect_timeout = read_timeout = timeout
        pool = pulls if url.startswith(self._pull_url) else calls
        conn = pool.take()
        if conn is None:
            # Nothing was sent before the connection (and its TLS handshake) stood: a
            # failure here (DNS, refused, time-out, certificate...) is NotConnected.
            try:
                conn = pool.open(connect_timeout)
            except TimeoutError as exc:
                raise NotConnected(
                    "ConnectTimeout", f"connecting to {origin}: {exc}", timed_out=True
                ) from None
            except OSError as exc:  # socket.gaierror and ssl.SSLError are OSErrors too
                raise NotConnected("ConnectionError", f"{type(exc).__name__}: {exc}") from None
        reusable = False
        try:
            conn.sock.settimeout(read_timeout)
            conn.sock.sendall(message)
            status, reason, fields, body, close = conn.read_answer(method)
            reusable = not close
        except TimeoutError as exc:
            detail = f"no answer from {origin}: {exc}"
            raise NoAnswer("ReadTimeout", detail, timed_out=True) from None
        except (OSError, ValueError, _Closed) as exc:
            # Also a reused connection the server closed as it was taken: the request
            # may have reached it, so this is NoAnswer, never NotConnected.
            raise NoAnswer("ConnectionError", f"{type(exc).__name__}: {exc}") from None
        finally:
            pool.give_back(conn, reusable)
        return LeanResponse(url, status, reason, fields, body)

    def get(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
    ) -> LeanResponse:
        return self.request("GET", url, params=params, headers=headers, timeout=timeout)

    def abort(self) -> int:
        """Shut down the sockets of the pulls in flight; returns how many."""
        with self._lock:
            origins = list(self._origins.values())
        return sum(pulls.shutdown_busy() for _, _, _, pulls in origins)

    def close(self) -> None:
        with self._lock:
            origins = list(self._origins.values())
        for _, _, calls, pulls in origins:
            calls.close()
            pulls.close()
