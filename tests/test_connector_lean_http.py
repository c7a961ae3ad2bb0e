"""The client's lean HTTP session (bridge/connector/lean_http.py) and the answer both
stacks share: how bodies end (chunked, Content-Length, the server closing), interim 1xx
answers, keep-alive reuse counted on the server, a keep-alive connection the server
dropped, proxies from the environment keeping requests. The framing tests run on both
stacks (``fast_http``), through :func:`make_session`, so both give the same answer."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import requests

from bridge.connector import connector
from bridge.connector.errors import NotConnected
from bridge.connector.lean_http import LeanResponse, LeanSession
from bridge.connector.transport import HttpResponse, HttpSession, RequestsSession, make_session
from tests.support.wire import Recorded, RecordingServer, Reply


class DroppingServer:
    """Answers each request on a new connection with a keep-alive 200, then closes the
    connection a moment later without saying so (as an idle time-out would)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.closed = threading.Semaphore(0)  # released once per connection closed
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                body = b"[]"
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
            self.closed.release()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dropping() -> Iterator[DroppingServer]:
    server = DroppingServer()
    yield server
    server.close()


def test_a_dropped_keep_alive_connection_is_not_reused(dropping: DroppingServer) -> None:
    with connector("k", f"http://127.0.0.1:{dropping.port}", fastHttp=True) as c:
        assert isinstance(c._session, LeanSession)
        for _ in range(3):
            r = c.getEndpoints()
            assert r.error is False and r.result == []
            # the server has closed the connection; the next call must notice
            assert dropping.closed.acquire(timeout=10)
    assert dropping.connections == 3


def test_answers_are_lean_responses(dropping: DroppingServer) -> None:
    """Its own answer type, not a half-built requests.Response."""
    session = LeanSession(f"http://127.0.0.1:{dropping.port}/v2/notification/pull", 4)
    r = session.request("GET", f"http://127.0.0.1:{dropping.port}/v2/endpoints", timeout=(5, 5))
    assert isinstance(r, LeanResponse) and not isinstance(r, requests.Response)
    assert r.status_code == 200 and r.reason == "OK" and r.ok
    assert r.json() == [] and r.content == b"[]" and r.text == "[]"
    assert r.headers["content-type"] == r.headers["Content-Type"] == "application/json"
    assert "CONTENT-LENGTH" in r.headers and r.headers.get("X-None") is None
    session.close()


def test_nothing_listening_is_not_connected() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    session = LeanSession("http://127.0.0.1:1/pull", 4)
    with pytest.raises(NotConnected):
        session.request("GET", f"http://127.0.0.1:{port}/", timeout=(2, 2))


def test_requests_by_default_lean_on_request_unless_a_proxy_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    url = "http://connector.example:8080/v2/notification/pull"
    session, _ = make_session("k", url)
    assert isinstance(session, RequestsSession)  # the library's default
    assert isinstance(session, requests.Session)
    session, _ = make_session("k", url, fast=True)
    assert isinstance(session, LeanSession)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    session, _ = make_session("k", url, fast=True)
    assert isinstance(session, requests.Session)
    monkeypatch.setenv("NO_PROXY", "connector.example")
    session, _ = make_session("k", url, fast=True)
    assert isinstance(session, LeanSession)


# ---- framing and reuse, on both stacks -----------------------------------------------------


def get(session: HttpSession, server: RecordingServer, path: str = "/v2/endpoints") -> HttpResponse:
    return session.request("GET", server.url + path, timeout=(5.0, 5.0))


@pytest.fixture
def stack(fast_http: bool) -> Iterator[HttpSession]:
    session, _ = make_session("k", "http://127.0.0.1:9/v2/notification/pull", fast=fast_http)
    assert isinstance(session, LeanSession if fast_http else RequestsSession)
    yield session
    session.close()


def raw(*pieces: bytes, close: bool = False) -> Reply:
    return Reply(raw=list(pieces), close=close)


def test_chunked_body(stack: HttpSession) -> None:
    """Chunks with an extension, split across writes, a trailer; the connection stays."""
    answer = raw(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n4;ext=1\r\n[1, ",
        b"\r\n3\r\n2, ",
        b"\r\n2\r\n3]\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    with RecordingServer(lambda _: answer) as server:
        first = get(stack, server)
        second = get(stack, server)
        connections = server.connections
    for r in (first, second):
        assert r.status_code == 200 and r.content == b"[1, 2, 3]" and r.json() == [1, 2, 3]
    assert connections == 1  # a chunked answer ends at its last chunk: the connection is reused


def test_close_delimited_body(stack: HttpSession) -> None:
    """No Content-Length, Connection: close: the body is what comes until the close."""
    answer = raw(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
        b"part one, ",
        b"part two",
        close=True,
    )
    with RecordingServer(lambda _: answer) as server:
        first = get(stack, server)
        second = get(stack, server)
        connections = server.connections
    for r in (first, second):
        assert r.status_code == 200 and r.content == b"part one, part two"
        assert r.text == "part one, part two"
    assert connections == 2  # the server closed: the second call needs a new connection


def test_interim_100_continue_before_the_answer(stack: HttpSession) -> None:
    answer = raw(
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
        b'Content-Length: 10\r\n\r\n{"id": 7}\n',
    )
    with RecordingServer(lambda _: answer) as server:
        r = get(stack, server)
        again = get(stack, server)
        connections = server.connections
    assert (r.status_code, r.json()) == (201, {"id": 7})
    assert (again.status_code, again.json()) == (201, {"id": 7})
    assert connections == 1


def test_every_interim_answer_is_skipped_by_the_lean_stack() -> None:
    """http.client (under requests) skips only 100; the lean session skips any 1xx but
    101, headers and all."""
    answer = raw(
        b"HTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    with RecordingServer(lambda _: answer) as server:
        session = LeanSession(server.url + "/v2/notification/pull", 4)
        r = get(session, server)
        session.close()
    assert (r.status_code, r.content) == (200, b"ok") and "Link" not in r.headers


def test_sequential_calls_reuse_one_connection(stack: HttpSession) -> None:
    with RecordingServer(lambda _: Reply(200, b"[]")) as server:
        for _ in range(10):
            assert get(stack, server).json() == []
        assert len(server.requests) == 10
        reused = server.connections
        # An answer saying Connection: close ends the connection after it.
        server.answer = lambda _: Reply(200, b"[]", headers={"Connection": "close"})
        get(stack, server)
        server.answer = lambda _: Reply(200, b"[]")
        get(stack, server)
        after_close = server.connections
    assert reused == 1
    assert after_close == 2


def test_headers_and_text_read_the_same_on_both_stacks(stack: HttpSession) -> None:
    def answer(_: Recorded) -> Reply:
        return raw(
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=latin-1\r\n"
            b"X-Multi: a\r\nx-multi: b\r\nContent-Length: 4\r\n\r\nn\xe9e!"
        )

    with RecordingServer(answer) as server:
        r = get(stack, server)
    assert (r.status_code, r.reason, r.ok) == (404, "Not Found", False)
    assert r.headers["x-MULTI"] == "a, b"
    assert r.headers.get("content-type") == "text/plain; charset=latin-1"
    assert r.content == b"n\xe9e!" and r.text == "n\u00e9e!"


def test_large_bodies_arrive_whole(stack: HttpSession) -> None:
    """Bodies far larger than one read, by Content-Length and in chunks, back to back on
    one connection."""
    big = bytes(range(256)) * 400  # 100 KiB
    by_length = raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big), big[:70000], big[70000:]
    )
    chunked = raw(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"%x\r\n%s\r\n" % (60000, big[:60000]),
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(big) - 60000, big[60000:]),
    )
    answers = iter([by_length, chunked, by_length])
    with RecordingServer(lambda _: next(answers)) as server:
        bodies = [get(stack, server).content for _ in range(3)]
        connections = server.connections
    assert bodies == [big, big, big]
    assert connections == 1
