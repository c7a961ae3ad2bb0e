"""The client's lean HTTP session (bridge/connector/lean_http.py): what it adds to the
wire tests: a keep-alive connection the server dropped is not reused, proxies from the
environment keep requests, and its answers are requests' types."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import requests

from bridge.connector import connector
from bridge.connector.lean_http import LeanSession
from bridge.connector.transport import make_session


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


def test_answers_are_requests_responses(dropping: DroppingServer) -> None:
    session = LeanSession(f"http://127.0.0.1:{dropping.port}/v2/notification/pull", 4)
    r = session.request("GET", f"http://127.0.0.1:{dropping.port}/v2/endpoints", timeout=(5, 5))
    assert isinstance(r, requests.Response)
    assert r.status_code == 200 and r.json() == []
    assert r.headers["content-type"] == "application/json"
    session.close()


def test_nothing_listening_is_a_connection_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    session = LeanSession("http://127.0.0.1:1/pull", 4)
    with pytest.raises(requests.ConnectionError):
        session.request("GET", f"http://127.0.0.1:{port}/", timeout=(2, 2))


def test_requests_by_default_lean_on_request_unless_a_proxy_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    url = "http://connector.example:8080/v2/notification/pull"
    session, _ = make_session("k", url)
    assert isinstance(session, requests.Session)  # the library's default
    session, _ = make_session("k", url, fast=True)
    assert isinstance(session, LeanSession)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    session, _ = make_session("k", url, fast=True)
    assert isinstance(session, requests.Session)
    monkeypatch.setenv("NO_PROXY", "connector.example")
    session, _ = make_session("k", url, fast=True)
    assert isinstance(session, LeanSession)
