"""Both notification channels: long polling and the callback URL (webhook)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from bridge.simulator import Emulator
from tests.simulator_support import Api, decode
from tests.support.clients import wait_until
from tests.support.ports import free_port


@pytest.fixture
def api(emulator: Emulator) -> Api:
    return Api(emulator)


# --- long polling ---------------------------------------------------------------------


def test_pull_204_after_timeout_and_nowait_at_once(emulator: Emulator, api: Api) -> None:
    start = time.monotonic()
    r = api.get("/notification/pull")
    held = time.monotonic() - start
    assert r.status_code == 204
    assert 0.9 <= held < 3.0  # the fixture's pull_timeout is 1 s
    start = time.monotonic()
    assert api.get("/notification/pull", params={"noWait": "true"}).status_code == 204
    assert time.monotonic() - start < 0.9  # not held for the pull_timeout of 1 s


def test_pull_answers_as_soon_as_something_is_pending(emulator: Emulator) -> None:
    with Emulator(token="t", pull_timeout=20.0, drift=False) as emu:
        api = Api(emu)
        api.put("/subscriptions/light-001/3311/0/5850")
        threading.Timer(0.3, emu.set_value, ("light-001", "/3311/0/5850", "1")).start()
        start = time.monotonic()
        r = api.pull()
        assert r.status_code == 200
        assert time.monotonic() - start < 5.0
        assert api.notifications("light-001", "/3311/0/5850") == [b"1"]


def test_second_pull_gets_409(emulator: Emulator, api: Api) -> None:
    first: list[int] = []
    t = threading.Thread(target=lambda: first.append(api.get("/notification/pull").status_code))
    t.start()
    assert wait_until(lambda: emulator.counters()["pulls"] == 1)
    other = Api(emulator)
    assert other.get("/notification/pull").status_code == 409
    t.join()
    assert first == [204]
    assert other.get("/notification/pull", params={"noWait": "true"}).status_code == 204


def test_batch_carries_everything_pending_and_is_capped() -> None:
    with Emulator(token="t", pull_timeout=1.0, drift=False, batch_size=100) as emu:
        api = Api(emu)
        api.put("/subscriptions/light-001/3311/0/5851")
        api.open_channel()
        r = api.put("/endpoints/light-001/3311/0/5851", data=b"5")
        aid = r.json()["async-response-id"]
        # (one endpoint per lifecycle kind: two kinds for one endpoint never share a
        # message, see tests/test_reliability_lifecycle.py)
        emu.register("new-1", ept="Light")
        emu.update("light-001")
        emu.expire("node-001")
        emu.deregister("node-002")
        assert wait_until(lambda: emu.counters()["pending"] >= 6)
        body = api.pull().json()
        assert set(body) == {
            "notifications",
            "registrations",
            "reg-updates",
            "de-registrations",
            "registrations-expired",
            "async-responses",
        }
        assert body["async-responses"][0]["id"] == aid
        assert body["de-registrations"] == ["node-002"]
        assert body["registrations-expired"] == ["node-001"]
        assert [e["ep"] for e in body["reg-updates"]] == ["light-001"]
        assert emu.burst(250, ep="light-001", path="/3311/0/5851") == 250
        sizes = [len(api.pull().json()["notifications"]) for _ in range(3)]
        assert sizes == [100, 100, 50]
        values = [int(v) for v in api.notifications("light-001", "/3311/0/5851")[1:]]
        assert values == sorted(values) and len(set(values)) == 250


def _raw_pull(port: int, token: str, reset: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    if reset:  # close with RST, like a killed process with unread data
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.sendall(
        f"GET /v2/notification/pull HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Connection: keep-alive\r\n\r\n".encode()
    )
    return sock


def test_pull_whose_client_died_keeps_its_messages(emulator: Emulator) -> None:
    api = Api(emulator)
    api.put("/subscriptions/light-001/3311/0/5851")
    sock = _raw_pull(emulator.port, emulator.token, reset=False)
    assert wait_until(lambda: emulator.counters()["pulls"] == 1)
    sock.close()  # the client dies while its pull is held
    emulator.set_value("light-001", "/3311/0/5851", "33")
    # the dead pull did not take it; a new pull (not refused) gets it
    deadline = time.monotonic() + 5
    while True:
        r = api.pull()
        if r.status_code != 409 or time.monotonic() > deadline:
            break
    api.wait_for(lambda s: api.notifications("light-001", "/3311/0/5851") == [b"33"])
    assert emulator.counters()["delivered"] == 1


def test_held_pull_reset_by_its_client_keeps_its_messages(emulator: Emulator) -> None:
    api = Api(emulator)
    api.put("/subscriptions/light-001/3311/0/5851")
    for i in range(5):
        pulls = emulator.counters()["pulls"]
        sock = _raw_pull(emulator.port, emulator.token, reset=True)
        assert wait_until(lambda n=pulls: emulator.counters()["pulls"] == n + 1)
        sock.close()  # RST while the pull is held
        emulator.set_value("light-001", "/3311/0/5851", str(i))
        assert wait_until(lambda: not emulator.core.pull_open)
        # the reset pull took nothing: the next pull gets the value (and the queue is
        # empty again, so the next reset pull is held)
        expected = [str(k).encode() for k in range(i + 1)]
        api.wait_for(lambda s, e=expected: api.notifications("light-001", "/3311/0/5851") == e)
    assert emulator.counters()["redelivered"] == 0


def test_failed_write_puts_the_batch_back_at_the_head() -> None:
    """A client that stops reading in the middle of a large answer and then dies: the
    whole batch goes back to the head of the queue and the next pull gets it, in order."""
    with Emulator(token="t", pull_timeout=1.0, drift=False) as emu:
        api = Api(emu)
        api.put("/subscriptions/light-001/3311/0/5851")
        emu.burst(10_000, ep="light-001", path="/3311/0/5851", size=1000)  # ~14 MB
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", emu.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(
            b"GET /v2/notification/pull HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        sock.close()
        assert wait_until(lambda: emu.counters()["redelivered"] == 10_000)
        emu.set_value("light-001", "/3311/0/5851", "1")
        api.wait_for(lambda s: len(s["notifications"]) == 10_001, timeout=20)
        values = api.notifications("light-001", "/3311/0/5851")
        assert [int(v) for v in values[:10_000]] == list(range(10_000))
        assert values[-1] == b"1"
        counters = emu.counters()
        assert counters["delivered"] == 10_001
        assert counters["pending"] == 0


# --- callback URL ---------------------------------------------------------------------


class Receiver:
    """A webhook receiver on a free port; answers ``statuses`` in turn (then 200)."""

    def __init__(self) -> None:
        self.messages: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.cond:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    if status < 300:
                        receiver.messages.append((dict(self.headers), body))
                    receiver.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def entries(self, key: str) -> list[Any]:
        with self.cond:
            return [e for _, b in self.messages for e in json.loads(b).get(key, [])]

    def wait(self, cond: Any, timeout: float = 10.0) -> None:
        with self.cond:
            assert self.cond.wait_for(cond, timeout), self.messages

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_callback_registration_and_delivery(emulator: Emulator, receiver: Receiver) -> None:
    api = Api(emulator, prefix="")  # the original library sends it unversioned
    assert api.get("/notification/callback").status_code == 404
    body = {"url": receiver.url, "headers": {"Authorization": "secret", "X-Extra": "1"}}
    assert api.put("/notification/callback", json=body).status_code == 204
    assert api.get("/v2/notification/callback").json() == body
    # pulling is refused while a callback is set
    assert api.get("/notification/pull").status_code == 409
    api.put("/subscriptions/light-001/3311/0/5850")
    r = api.put("/endpoints/light-001/3311/0/5850", data=b"1")
    assert r.status_code == 202
    aid = r.json()["async-response-id"]
    receiver.wait(lambda: len(receiver.entries("notifications")) == 1)
    receiver.wait(lambda: [e["id"] for e in receiver.entries("async-responses")] == [aid])
    headers, _ = receiver.messages[-1]
    assert headers["Authorization"] == "secret"
    assert headers["X-Extra"] == "1"
    assert decode(receiver.entries("notifications")[0]) == b"1"
    assert api.delete("/notification/callback").status_code == 204
    assert api.delete("/v2/notification/callback/").status_code == 404
    # back to pulling: messages wait for the next pull
    emulator.set_value("light-001", "/3311/0/5850", "0")
    api.open_channel()
    Api.wait_for(api, lambda s: s["notifications"])
    assert decode(api.seen["notifications"][0]) == b"0"


def test_callback_unreachable_or_invalid_is_400(emulator: Emulator, receiver: Receiver) -> None:
    api = Api(emulator)
    dead = f"http://127.0.0.1:{free_port()}/hook"
    assert api.put("/notification/callback", json={"url": dead}).status_code == 400
    receiver.statuses = [500]
    assert api.put("/notification/callback", json={"url": receiver.url}).status_code == 400
    too_long = {"url": receiver.url, "headers": {"A": "x" * 400}}
    assert api.put("/notification/callback", json=too_long).status_code == 400
    assert api.put("/notification/callback", data=b"nope").status_code == 400
    assert api.put("/notification/callback", json={"url": "ftp://x"}).status_code == 400
    not_text = {"url": receiver.url, "headers": {"A": 1}}
    assert api.put("/notification/callback", json=not_text).status_code == 400
    assert api.get("/notification/callback").status_code == 404


def test_callback_retries_with_backoff_then_delivers(
    emulator: Emulator, receiver: Receiver
) -> None:
    api = Api(emulator)
    assert api.put("/notification/callback", json={"url": receiver.url}).status_code == 204
    api.put("/subscriptions/light-001/3311/0/5850")
    receiver.statuses = [500, 503, 500]
    emulator.set_value("light-001", "/3311/0/5850", "1")
    receiver.wait(lambda: len(receiver.entries("notifications")) == 1)
    assert wait_until(lambda: emulator.counters()["delivered"] == 1)  # counted once answered
    c = emulator.counters()
    assert c["retried"] == 3
    assert c["delivered"] == c["emitted"] == 1
    assert c["dropped"] == 0


def test_callback_drops_after_retry_period(receiver: Receiver) -> None:
    with Emulator(token="t", drift=False, callback_retry_period=0.5) as emu:
        api = Api(emu)
        assert api.put("/notification/callback", json={"url": receiver.url}).status_code == 204
        api.put("/subscriptions/light-001/3311/0/5850")
        receiver.statuses = [500] * 1000
        emu.set_value("light-001", "/3311/0/5850", "1")
        assert wait_until(lambda: emu.counters()["dropped"] == 1, timeout=10)
        c = emu.counters()
        assert c["retried"] >= 2
        assert c["delivered"] == 0
        receiver.statuses = []
        emu.set_value("light-001", "/3311/0/5850", "0")
        receiver.wait(lambda: len(receiver.entries("notifications")) == 1)
        assert decode(receiver.entries("notifications")[0]) == b"0"


def test_callback_failing_receiver_keeps_order(emulator: Emulator, receiver: Receiver) -> None:
    api = Api(emulator)
    api.put("/notification/callback", json={"url": receiver.url})
    api.put("/subscriptions/light-001/3311/0/5851")
    receiver.statuses = [500]
    for v in range(5):
        emulator.set_value("light-001", "/3311/0/5851", str(v))
    receiver.wait(lambda: len(receiver.entries("notifications")) == 5)
    assert [decode(n) for n in receiver.entries("notifications")] == [b"0", b"1", b"2", b"3", b"4"]


def test_pull_open_when_callback_set_returns_empty(emulator: Emulator, receiver: Receiver) -> None:
    api = Api(emulator)
    with Emulator(token="t", pull_timeout=10.0, drift=False) as emu:
        api = Api(emu)
        result: list[requests.Response] = []
        t = threading.Thread(target=lambda: result.append(api.get("/notification/pull")))
        t.start()
        assert wait_until(lambda: emu.counters()["pulls"] == 1)
        assert api.put("/notification/callback", json={"url": receiver.url}).status_code == 204
        api.put("/subscriptions/light-001/3311/0/5850")
        emu.set_value("light-001", "/3311/0/5850", "1")
        receiver.wait(lambda: len(receiver.entries("notifications")) == 1)
        t.join(timeout=15)
        assert result[0].status_code == 204


def test_stop_and_start_again_at_the_same_url_keeps_state() -> None:
    emu = Emulator(token="t", pull_timeout=1.0, drift=False).start()
    try:
        api = Api(emu)
        url = emu.url
        api.put("/subscriptions/light-001/3311/0/5850")
        emu.stop()
        with pytest.raises(requests.ConnectionError):
            api.get("/endpoints")
        emu.set_value("light-001", "/3311/0/5850", "1")  # works while stopped, too
        emu.start()
        assert emu.url == url
        api.wait_for(lambda s: api.notifications("light-001", "/3311/0/5850") == [b"1"])
        assert emu.wait_channel(5)
    finally:
        emu.stop()
