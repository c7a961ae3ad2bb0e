"""Small real HTTP servers for wire-level client tests, where the emulator cannot tell.

``RecordingServer`` records every request exactly as it came over the socket (method,
raw path and query, headers, body bytes) and answers from a function the test sets, so a
test can assert what the client really sent (raw PUT bytes, both query flags, the
Bearer header) and count requests and TCP connections; a :class:`Reply` with ``raw``
bytes is written as it is (chunked or close-delimited bodies, interim 1xx answers).
``ClosingServer`` accepts TCP connections and closes them at once, like a Connector that
is down behind a load balancer, and counts them. The failures a client must tell apart:
``SilentServer`` reads each request and then closes without answering or never answers;
``full_backlog`` is a port whose listen queue is full, so a connect times out; ``free_port``
(:mod:`tests.support.ports`) is one where the connection is refused.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    target: str  # the raw request target: path and query as sent
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)


@dataclass
class Reply:
    status: int = 200
    body: bytes | str = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    #: The whole answer as it goes over the wire (the fields above are then unused),
    #: written piece by piece with a short pause between, so a client reads it in parts.
    raw: list[bytes] | None = None
    #: Close the connection after the answer (a close-delimited body ends there).
    close: bool = False


Answer = Callable[[Recorded], Reply]


class RecordingServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 that records requests."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer: Answer = answer or (lambda req: Reply(200, b"[]"))
        self.requests: list[Recorded] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go in two writes

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rec = Recorded(self.command, self.path, dict(self.headers.items()), body)
                with owner._cond:
                    owner.requests.append(rec)
                    owner._cond.notify_all()
                reply = owner.answer(rec)
                if reply.close:
                    self.close_connection = True
                if reply.raw is not None:
                    for i, piece in enumerate(reply.raw):
                        if i:
                            time.sleep(0.02)
                        self.wfile.write(piece)
                    return
                data = reply.body.encode() if isinstance(reply.body, str) else reply.body
                self.send_response(reply.status)
                if reply.status not in (204, 304):
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if reply.status not in (204, 304):
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that went away mid-answer (aborted pulls) is normal here

            def get_request(self) -> tuple[socket.socket, object]:
                conn = super().get_request()
                with owner._lock:
                    owner.connections += 1
                return conn

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> RecordingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Recorded]:
        """Block until at least ``n`` requests arrived; returns them."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.requests) >= n, timeout)
            return list(self.requests)

    def __enter__(self) -> RecordingServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _AcceptingServer:
    """A loopback TCP server whose thread accepts connections and hands each to
    :meth:`_handle` (the subclasses' behaviour); stopped by leaving the ``with``."""

    scheme = "http"

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
        for conn in self._held:
            conn.close()


_S = TypeVar("_S", bound=_AcceptingServer)


class ClosingServer(_AcceptingServer):
    """Accepts TCP connections and closes them at once; counts them with their times."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted: list[float] = []

    def _handle(self, conn: socket.socket) -> None:
        self.accepted.append(time.monotonic())
        conn.close()


class SilentServer(_AcceptingServer):
    """Accepts connections and reads each request's head, then closes the connection
    without a word (``close=True``) or keeps it open and never answers (``close=False``,
    until the server stops). ``requests``: how many request heads it read."""

    def __init__(self, *, close: bool) -> None:
        super().__init__()
        self._close = close
        self.requests = 0

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5.0)
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        if b"\r\n\r\n" in data:
            self.requests += 1
        if self._close:
            conn.close()
        else:
            self._held.append(conn)


class GarbageServer(_AcceptingServer):
    """Answers every connection at once with a plain-text HTTP line and closes it: what a
    TLS client meets on a port that does not speak TLS (its handshake fails)."""

    scheme = "https"

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


@contextlib.contextmanager
def full_backlog(probe_timeout: float = 0.2, tries: int = 16) -> Iterator[str]:
    """The URL of a loopback port whose listen queue is full: it listens with a backlog
    of 0 and never accepts, and is filled with connections until one more cannot get
    through, so the SYN of the next connection is dropped and its connect times out
    (rather than being refused). Fails the test when the queue cannot be filled here."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(tries):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.settimeout(probe_timeout)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                probe.close()
                break
            fillers.append(probe)
        else:
            raise AssertionError(f"the listen queue of port {port} never filled")
        yield f"http://127.0.0.1:{port}"
    finally:
        for conn in fillers:
            conn.close()
        listener.close()
