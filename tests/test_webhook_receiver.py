"""The webhook receiver on its own, over real HTTP: what it takes, what it refuses and why.

Every refusal is checked twice: the status (and its headers), and that nothing was handed
on. After the whole series of bad requests the receiver still takes a good one.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.upstream import callback_receiver as cr
from bridge.upstream.callback_receiver import (
    MAX_WAITING,
    CallbackReceiver,
    MalformedMessage,
    parse_callback_body,
    publications,
    server_ssl_context,
)
from tests.support.certs import Pki, make_test_pki
from tests.support.clients import wait_until

SECRET = "s3cret-Webhook-Value-9f2c41d7e0"
PATH = "/connector/notify"
AUTH = {"Authorization": f"Bearer {SECRET}"}
NOTE = {"notifications": [{"ep": "node-001", "path": "/3303/0/5700", "payload": "MjEuNQ=="}]}
WAIT = 10.0


class Sink:
    """The ``handle`` side: records what was handed on; can hold a hand-over open."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, message: dict[str, Any]) -> bool:
        self.entered.set()
        assert self.release.wait(WAIT), "test never released the hand-over"
        self.messages.append(message)
        return True


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def receiver(sink: Sink) -> Iterator[CallbackReceiver]:
    r = CallbackReceiver(sink, SECRET, "127.0.0.1", 0, 4096, path=PATH).start()
    yield r
    r.stop()


def url(r: CallbackReceiver, path: str = PATH) -> str:
    return f"http://127.0.0.1:{r.port}{path}"


def put(r: CallbackReceiver, body: bytes | dict[str, Any], **kw: Any) -> requests.Response:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    kw.setdefault("headers", AUTH)
    return requests.put(url(r, kw.pop("path", PATH)), data=data, timeout=WAIT, **kw)


# --- what it takes ---------------------------------------------------------------------


def test_a_message_with_the_secret_is_handed_on_before_the_answer(
    receiver: CallbackReceiver, sink: Sink
) -> None:
    sink.release.clear()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(put, receiver, NOTE)
        assert sink.entered.wait(WAIT)
        # The hand-over is held open: the Connector must not have its answer yet.
        assert not answer.done()
        sink.release.set()
        resp = answer.result(WAIT)
    assert resp.status_code == 204 and resp.content == b""
    assert sink.messages == [NOTE]
    assert receiver.stats["messages"] == 1


def test_the_connectors_reachability_probe_is_taken(receiver: CallbackReceiver, sink: Sink) -> None:
    # The Connector checks a new callback URL with an empty message (the emulator does).
    assert put(receiver, b"{}").status_code == 204
    assert sink.messages == [{}]


def test_no_product_banner_in_answers(receiver: CallbackReceiver) -> None:
    for resp in (put(receiver, NOTE), put(receiver, NOTE, headers={})):
        assert "Server" not in resp.headers


# --- what it refuses -----------------------------------------------------------------------


def _chunks(data: bytes) -> Iterator[bytes]:
    yield from (data[i : i + 1000] for i in range(0, len(data), 1000))


REFUSALS: list[tuple[str, int, dict[str, Any], str]] = [
    ("no secret", 401, {"headers": {}}, "refused_secret"),
    ("wrong secret", 401, {"headers": {"Authorization": "Bearer wrong"}}, "refused_secret"),
    ("secret without Bearer", 401, {"headers": {"Authorization": SECRET}}, "refused_secret"),
    ("a prefix of the secret", 401,
     {"headers": {"Authorization": f"Bearer {SECRET[:-1]}"}}, "refused_secret"),
    ("the secret and more", 401,
     {"headers": {"Authorization": f"Bearer {SECRET}x"}}, "refused_secret"),
    ("lower-case scheme", 401,
     {"headers": {"Authorization": f"bearer {SECRET}"}}, "refused_secret"),
    ("secret in another header", 401, {"headers": {"X-Secret": SECRET}}, "refused_secret"),
    ("another path", 404, {"path": "/connector/other"}, "refused_path"),
    ("the path with a trailing slash", 404, {"path": PATH + "/"}, "refused_path"),
    ("the root", 404, {"path": "/"}, "refused_path"),
    ("a longer path", 404, {"path": PATH + "/x"}, "refused_path"),
    ("body over the limit", 413, {"data": b"{" + b" " * 5000 + b"}"}, "refused_size"),
    ("chunked body over the limit", 413,
     {"data": _chunks(b"{" + b" " * 5000 + b"}")}, "refused_size"),
    ("not JSON", 400, {"data": b"not json"}, "refused_malformed"),
    ("empty body", 400, {"data": b""}, "refused_malformed"),
    ("a JSON array", 400, {"data": b"[1]"}, "refused_malformed"),
    ("a JSON string", 400, {"data": b'"x"'}, "refused_malformed"),
    ("not UTF-8", 400, {"data": b'{"notifications": "\xff"}'}, "refused_malformed"),
    ("notifications not a list", 400,
     {"data": b'{"notifications": {"ep": "x"}}'}, "refused_malformed"),
    ("a good part and a bad one", 400,
     {"data": json.dumps({**NOTE, "de-registrations": "node-001"}).encode()},
     "refused_malformed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "status", "kw", "counter"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_refusal(
    receiver: CallbackReceiver, sink: Sink, case: str, status: int, kw: dict[str, Any], counter: str
) -> None:
    data = kw.pop("data", json.dumps(NOTE).encode())
    resp = put(receiver, data, **kw)
    assert resp.status_code == status, resp.text
    assert sink.messages == []  # nothing of it was handed on
    assert receiver.stats[counter] == 1 and receiver.stats["messages"] == 0
    if status == 401:
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert put(receiver, NOTE).status_code == 204  # and the receiver keeps working
    assert sink.messages == [NOTE]


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"])
def test_only_put_on_the_path(receiver: CallbackReceiver, sink: Sink, method: str) -> None:
    resp = requests.request(
        method, url(receiver), data=json.dumps(NOTE), headers=AUTH, timeout=WAIT
    )
    assert resp.status_code == 405 and resp.headers["Allow"] == "PUT"
    assert sink.messages == [] and receiver.stats["refused_method"] == 1


def test_the_secret_is_checked_before_the_body_is_read(receiver: CallbackReceiver) -> None:
    """A stranger cannot make the receiver take in a body: 401 comes on the headers alone,
    even for a body far over the limit that is never sent."""
    head = (
        f"PUT {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n"
        "Authorization: Bearer nope\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=WAIT) as sock:
        sock.sendall(head)
        assert sock.recv(100).startswith(b"HTTP/1.1 401")


def test_a_body_that_never_comes_gets_408(
    receiver: CallbackReceiver, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cr, "BODY_TIMEOUT", 0.3)
    head = (
        f"PUT {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        f"Authorization: Bearer {SECRET}\r\n\r\n{{"
    ).encode()
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=WAIT) as sock:
        sock.sendall(head)
        assert sock.recv(100).startswith(b"HTTP/1.1 408")
    assert sink.messages == [] and receiver.stats["refused_slow"] == 1
    assert put(receiver, NOTE).status_code == 204


# --- 503: the Connector keeps the message and delivers it again -----------------------------


def test_503_while_the_bridge_cannot_take_it_then_204(sink: Sink) -> None:
    reasons: list[str | None] = ["MQTT broker unreachable and the buffer full"]
    asked: list[dict[str, Any]] = []

    def admit(message: dict[str, Any]) -> str | None:
        asked.append(message)
        return reasons[0]

    r = CallbackReceiver(sink, SECRET, "127.0.0.1", 0, path=PATH, admit=admit).start()
    try:
        resp = put(r, NOTE)
        assert resp.status_code == 503 and resp.headers["Retry-After"].isdigit()
        assert "buffer full" in resp.text
        assert asked == [NOTE] and sink.messages == []
        reasons[0] = None
        assert put(r, NOTE).status_code == 204
        assert sink.messages == [NOTE]
    finally:
        r.stop()


def test_503_once_stopping(receiver: CallbackReceiver, sink: Sink) -> None:
    receiver.refuse_new()
    resp = put(receiver, NOTE)
    assert resp.status_code == 503 and "stopping" in resp.text and "Retry-After" in resp.headers
    assert sink.messages == []
    assert put(receiver, NOTE, headers={}).status_code == 401  # strangers learn nothing new


def test_503_when_too_many_wait_for_the_hand_over(receiver: CallbackReceiver, sink: Sink) -> None:
    sink.release.clear()
    with ThreadPoolExecutor(MAX_WAITING) as pool:
        held = [pool.submit(put, receiver, NOTE) for _ in range(MAX_WAITING)]
        assert wait_until(lambda: receiver._waiting == MAX_WAITING, WAIT)
        extra = put(receiver, NOTE)
        assert extra.status_code == 503 and "waiting" in extra.text
        sink.release.set()
        assert [f.result(WAIT).status_code for f in held] == [204] * MAX_WAITING
    assert len(sink.messages) == MAX_WAITING


def test_messages_are_handed_on_in_order_one_at_a_time(receiver: CallbackReceiver) -> None:
    seen: list[int] = []
    busy = threading.Lock()

    def handle(message: dict[str, Any]) -> bool:
        assert busy.acquire(blocking=False), "two hand-overs at once"
        try:
            seen.append(message["n"])
        finally:
            busy.release()
        return True

    receiver._handle = handle
    for n in range(20):
        assert put(receiver, {"n": n}).status_code == 204
    assert seen == list(range(20))


def test_a_failing_hand_over_is_a_500_and_the_receiver_goes_on(receiver: CallbackReceiver) -> None:
    calls = []

    def handle(message: dict[str, Any]) -> bool:
        calls.append(message)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return True

    receiver._handle = handle
    assert put(receiver, NOTE).status_code == 500
    assert put(receiver, NOTE).status_code == 204


def test_stop_closes_the_port(sink: Sink) -> None:
    r = CallbackReceiver(sink, SECRET, "127.0.0.1", 0, path=PATH).start()
    port = r.port
    r.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_a_taken_port_is_an_oserror(receiver: CallbackReceiver, sink: Sink) -> None:
    with pytest.raises(OSError):
        CallbackReceiver(sink, SECRET, "127.0.0.1", receiver.port, path=PATH).start()


# --- HTTPS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    return make_test_pki(tmp_path_factory.mktemp("webhook-pki"))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("webhook-foreign"), ca_name="another CA")


@pytest.fixture
def https_receiver(sink: Sink, pki: Pki) -> Iterator[CallbackReceiver]:
    context = server_ssl_context(pki.server.cert, pki.server.key)
    r = CallbackReceiver(sink, SECRET, "127.0.0.1", 0, path=PATH, ssl_context=context).start()
    yield r
    r.stop()


def test_https_with_a_certificate_the_client_verifies(
    https_receiver: CallbackReceiver, sink: Sink, pki: Pki
) -> None:
    assert https_receiver.scheme == "https"
    for host in ("localhost", "127.0.0.1"):  # both are in the certificate
        resp = requests.put(
            f"https://{host}:{https_receiver.port}{PATH}",
            data=json.dumps(NOTE), headers=AUTH, verify=str(pki.ca_cert), timeout=WAIT,
        )  # fmt: skip
        assert resp.status_code == 204
    assert len(sink.messages) == 2


def test_https_refusals_are_the_same(https_receiver: CallbackReceiver, pki: Pki) -> None:
    base = f"https://localhost:{https_receiver.port}"
    verify = str(pki.ca_cert)
    assert requests.put(base + PATH, data=b"{}", verify=verify, timeout=WAIT).status_code == 401
    assert requests.get(base + PATH, headers=AUTH, verify=verify, timeout=WAIT).status_code == 405


def test_https_receiver_is_not_reachable_over_plain_http(
    https_receiver: CallbackReceiver, sink: Sink
) -> None:
    with pytest.raises(requests.ConnectionError):
        requests.put(url(https_receiver), data=json.dumps(NOTE), headers=AUTH, timeout=WAIT)
    assert sink.messages == []


def test_a_client_trusting_another_ca_refuses_the_receiver(
    https_receiver: CallbackReceiver, foreign: Pki
) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.put(
            f"https://localhost:{https_receiver.port}{PATH}",
            data=b"{}", headers=AUTH, verify=str(foreign.ca_cert), timeout=WAIT,
        )  # fmt: skip


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_older_than_1_2_is_refused(https_receiver: CallbackReceiver, pki: Pki) -> None:
    # A client that offers TLS 1.1 only. SECLEVEL=0 lets this OpenSSL offer it at all, so
    # the refusal is the server's (with a server that allows 1.1 the same client connects).
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    try:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot offer TLS 1.1")
    with (
        pytest.raises(ssl.SSLError),
        socket.create_connection(("127.0.0.1", https_receiver.port), timeout=WAIT) as raw,
        context.wrap_socket(raw, server_hostname="localhost"),
    ):
        pass


def test_certificate_and_key_in_one_file(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(pki.server.cert.read_bytes() + pki.server.key.read_bytes())
    context = server_ssl_context(both)
    r = CallbackReceiver(sink, SECRET, "127.0.0.1", 0, path=PATH, ssl_context=context).start()
    try:
        resp = requests.put(
            f"https://localhost:{r.port}{PATH}", data=b"{}", headers=AUTH,
            verify=str(pki.ca_cert), timeout=WAIT,
        )  # fmt: skip
        assert resp.status_code == 204
    finally:
        r.stop()


def test_a_key_that_does_not_match_the_certificate_is_refused(pki: Pki, foreign: Pki) -> None:
    with pytest.raises(ssl.SSLError):
        server_ssl_context(pki.server.cert, foreign.server.key)


# --- the pure parts --------------------------------------------------------------------------


def test_parse_callback_body() -> None:
    assert parse_callback_body(b'{"notifications": [], "future-key": 1}') == {
        "notifications": [],
        "future-key": 1,
    }
    for bad in (b"", b"  ", b"null", b"[]", b"{", b'{"registrations": null}', b"\xff"):
        with pytest.raises(MalformedMessage):
            parse_callback_body(bad)


def test_publications_counts_what_a_message_will_publish() -> None:
    message = {
        "notifications": [{}, {}, {}],
        "registrations": [{}],
        "de-registrations": ["a", "b"],
        "async-responses": [{}],
        "other": [1, 2, 3],
    }
    assert publications(message) == 3 + 2 + 2 + 1
    assert publications({}) == 0
