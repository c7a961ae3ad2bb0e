"""What goes over the wire, byte for byte, checked with a recording HTTP server.

The emulator answers like the Connector; it cannot show what the client sent exactly
(a header, the query string as written, the raw body, how many TCP connections were
opened). These tests use ``tests/support/wire.RecordingServer`` for that.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from bridge.connector import asyncResult, connector
from tests.support.wire import Recorded, RecordingServer, Reply

Call = Callable[[connector], asyncResult]

# method -> (call, HTTP method, path as sent, query as sent)
WIRE: dict[str, tuple[Call, str, str, dict[str, list[str]]]] = {
    "getConnectorVersion": (lambda c: c.getConnectorVersion(), "GET", "/", {}),
    "getApiVersions": (lambda c: c.getApiVersions(), "GET", "/rest-versions", {}),
    "getLimits": (lambda c: c.getLimits(), "GET", "/v2/limits", {}),
    "getEndpoints": (lambda c: c.getEndpoints(), "GET", "/v2/endpoints", {}),
    "getEndpoints-type": (
        lambda c: c.getEndpoints("Light"),
        "GET",
        "/v2/endpoints",
        {"type": ["Light"]},
    ),
    "getResources": (lambda c: c.getResources("ep1"), "GET", "/v2/endpoints/ep1", {}),
    "getResourceValue": (
        lambda c: c.getResourceValue("ep1", "/3/0/1"),
        "GET",
        "/v2/endpoints/ep1/3/0/1",
        {},
    ),
    "putResourceValue": (
        lambda c: c.putResourceValue("ep1", "/3311/0/5850", "1"),
        "PUT",
        "/v2/endpoints/ep1/3311/0/5850",
        {},
    ),
    "postResource": (
        lambda c: c.postResource("ep1", "/3/0/4"),
        "POST",
        "/v2/endpoints/ep1/3/0/4",
        {},
    ),
    "deleteEndpoint": (lambda c: c.deleteEndpoint("ep1"), "DELETE", "/v2/endpoints/ep1", {}),
    "putResourceSubscription": (
        lambda c: c.putResourceSubscription("ep1", "/3303/0/5700"),
        "PUT",
        "/v2/subscriptions/ep1/3303/0/5700",
        {},
    ),
    "getResourceSubscription": (
        lambda c: c.getResourceSubscription("ep1", "/3303/0/5700"),
        "GET",
        "/v2/subscriptions/ep1/3303/0/5700",
        {},
    ),
    "deleteResourceSubscription": (
        lambda c: c.deleteResourceSubscription("ep1", "/3303/0/5700"),
        "DELETE",
        "/v2/subscriptions/ep1/3303/0/5700",
        {},
    ),
    "getEndpointSubscriptions": (
        lambda c: c.getEndpointSubscriptions("ep1"),
        "GET",
        "/v2/subscriptions/ep1",
        {},
    ),
    "deleteEndpointSubscriptions": (
        lambda c: c.deleteEndpointSubscriptions("ep1"),
        "DELETE",
        "/v2/subscriptions/ep1",
        {},
    ),
    "deleteAllSubscriptions": (
        lambda c: c.deleteAllSubscriptions(),
        "DELETE",
        "/v2/subscriptions",
        {},
    ),
    "putPreSubscription": (lambda c: c.putPreSubscription([]), "PUT", "/v2/subscriptions", {}),
    "getPreSubscription": (lambda c: c.getPreSubscription(), "GET", "/v2/subscriptions", {}),
    "putCallback": (
        lambda c: c.putCallback("http://h/x"),
        "PUT",
        "/v2/notification/callback",
        {},
    ),
    "getCallback": (lambda c: c.getCallback(), "GET", "/v2/notification/callback", {}),
    "deleteCallback": (lambda c: c.deleteCallback(), "DELETE", "/v2/notification/callback", {}),
}


@pytest.fixture
def server() -> Any:
    with RecordingServer(lambda req: Reply(200, b"[]")) as srv:
        yield srv


@pytest.mark.parametrize("case", sorted(WIRE))
def test_path_query_and_bearer(server: RecordingServer, case: str, fast_http: bool) -> None:
    call, method, path, query = WIRE[case]
    with connector("sekrit-key", server.url, fastHttp=fast_http) as c:
        call(c)
    req = server.requests[-1]
    assert (req.method, req.path, req.query) == (method, path, query)
    assert req.headers["Authorization"] == "Bearer sekrit-key"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, {}),
        ({"noResp": True}, {"noResp": ["true"], "cacheOnly": ["false"]}),
        ({"cacheOnly": True}, {"noResp": ["false"], "cacheOnly": ["true"]}),
        ({"noResp": True, "cacheOnly": True}, {"noResp": ["true"], "cacheOnly": ["true"]}),
    ],
)
def test_both_flags_go_out_when_either_is_set(
    server: RecordingServer, flags: dict[str, bool], expected: dict[str, list[str]], fast_http: bool
) -> None:
    with connector("k", server.url, fastHttp=fast_http) as c:
        c.getResourceValue("ep1", "/3/0/1", **flags)  # type: ignore[arg-type]
        c.getResources("ep1", **flags)
    assert [r.query for r in server.requests] == [expected, expected]


@pytest.mark.parametrize(
    ("data", "body", "ctype"),
    [
        ("on", b"on", "text/plain"),
        ("21.5", b"21.5", "text/plain"),
        ("\u00e9t\u00e9", "\u00e9t\u00e9".encode(), "text/plain"),
        (b"\x00\x01\xff", b"\x00\x01\xff", "application/octet-stream"),
        (7, b"7", "text/plain"),
        ('{"a": 1}', b'{"a": 1}', "text/plain"),
    ],
)
def test_values_go_out_as_raw_bytes(
    server: RecordingServer, data: Any, body: bytes, ctype: str, fast_http: bool
) -> None:
    with connector("k", server.url, fastHttp=fast_http) as c:
        c.putResourceValue("ep1", "/1/0/1", data)
        c.postResource("ep1", "/1/0/2", data)
    put, post = server.requests
    assert put.body == body and post.body == body
    assert put.headers["Content-Type"] == ctype == post.headers["Content-Type"]


def test_post_without_argument_has_no_body(server: RecordingServer, fast_http: bool) -> None:
    with connector("k", server.url, fastHttp=fast_http) as c:
        c.postResource("ep1", "/3/0/4")
    assert server.requests[0].body == b""


def test_bad_value_types_raise(server: RecordingServer, fast_http: bool) -> None:
    with connector("k", server.url, fastHttp=fast_http) as c:
        with pytest.raises(TypeError):
            c.putResourceValue("ep1", "/1/0/1", {"a": 1})  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            c.putResourceValue("ep1", "/1/0/1", True)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            c.getResources("")
    assert server.requests == []


@pytest.mark.parametrize(
    "rules",
    [
        [{"endpoint-name": "node*", "resource-path": ["/3303/*"]}],
        '[{"endpoint-name": "node*", "resource-path": ["/3303/*"]}]',
        {"endpoint-name": "node*", "resource-path": ["/3303/*"]},
        ({"endpoint-name": "node*", "resource-path": ["/3303/*"]},),
    ],
)
def test_presubscription_body_is_a_json_list(
    server: RecordingServer, rules: Any, fast_http: bool
) -> None:
    with connector("k", server.url, fastHttp=fast_http) as c:
        c.putPreSubscription(rules)
    req = server.requests[0]
    assert req.headers["Content-Type"] == "application/json"
    assert json.loads(req.body) == [{"endpoint-name": "node*", "resource-path": ["/3303/*"]}]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "hook", "X-Extra": "1"},
        '{"Authorization": "hook", "X-Extra": "1"}',
        "Authorization: hook\nX-Extra: 1\n",
    ],
)
def test_callback_body_carries_headers(
    server: RecordingServer, headers: Any, fast_http: bool
) -> None:
    with connector("k", server.url, fastHttp=fast_http) as c:
        c.putCallback("https://example.invalid/hook", headers)
        with pytest.raises(ValueError):
            c.putCallback("https://example.invalid/hook", "no colon here")
    assert json.loads(server.requests[0].body) == {
        "url": "https://example.invalid/hook",
        "headers": {"Authorization": "hook", "X-Extra": "1"},
    }
    assert len(server.requests) == 1


def test_callback_without_headers(server: RecordingServer, fast_http: bool) -> None:
    with connector("k", server.url, fastHttp=fast_http) as c:
        c.putCallback("https://example.invalid/hook")
    assert json.loads(server.requests[0].body) == {"url": "https://example.invalid/hook"}


def test_long_poll_request(server: RecordingServer, fast_http: bool) -> None:
    with connector("k", server.url, fastHttp=fast_http) as c:
        c.startLongPolling(noWait=True)
        server.wait_for(1)
        c.stopLongPolling()
    req = server.requests[0]
    assert (req.method, req.path, req.query) == (
        "GET",
        "/v2/notification/pull",
        {"noWait": ["true"]},
    )
    assert req.headers["Authorization"] == "Bearer k"


def test_first_pull_answers_at_once_then_long_polls(
    server: RecordingServer, fast_http: bool
) -> None:
    """The opening pull uses noWait, so startLongPolling can return once the service
    knows the channel; the pulls after it are real long polls."""
    with connector("k", server.url, fastHttp=fast_http) as c:
        c.startLongPolling()
        assert len(server.requests) >= 1  # returned after the first pull was answered
        server.wait_for(2)
        c.stopLongPolling()
    first, second = server.requests[:2]
    assert first.query == {"noWait": ["true"]} and second.query == {}
    assert first.path == second.path == "/v2/notification/pull"


def test_one_connection_for_many_calls(server: RecordingServer, fast_http: bool) -> None:
    with connector("k", server.url, fastHttp=fast_http) as c:
        for _ in range(20):
            assert c.getEndpoints().error is False
    assert len(server.requests) == 20
    assert server.connections == 1  # keep-alive: the session reuses its connection


def test_concurrent_callers_share_the_pool(fast_http: bool) -> None:
    """16 threads call at once (the server holds each call 0.2 s): all succeed, and
    the pool keeps the connections it opened for the next round."""
    lock = threading.Lock()
    busy = {"now": 0, "max": 0}

    def slow(_: Recorded) -> Reply:
        with lock:
            busy["now"] += 1
            busy["max"] = max(busy["max"], busy["now"])
        time.sleep(0.2)
        with lock:
            busy["now"] -= 1
        return Reply(200, b"[]")

    with RecordingServer(slow) as srv, connector("k", srv.url, fastHttp=fast_http) as c:
        for _round in range(2):
            results: list[asyncResult] = []

            def call(out: list[asyncResult] = results) -> None:
                out.append(c.getEndpoints())

            threads = [threading.Thread(target=call) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(results) == 16 and all(r.error is False for r in results)
        connections = srv.connections
    assert busy["max"] > 1  # the calls really overlapped
    assert connections <= 16  # the second round reused the first round's connections


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        ("http://127.0.0.1:{p}", "80", "http://127.0.0.1:{p}"),
        ("http://127.0.0.1", "{p}", "http://127.0.0.1:{p}"),
        ("http://127.0.0.1:{p}/", 80, "http://127.0.0.1:{p}"),
    ],
)
def test_address_and_port(
    server: RecordingServer, address: str, port: Any, expected: str, fast_http: bool
) -> None:
    p = server.port
    port_arg = port.format(p=p) if isinstance(port, str) else port
    with connector("k", address.format(p=p), port_arg, fastHttp=fast_http) as c:
        assert c.address == expected.format(p=p)
        assert c.getLimits().error is False
    assert server.requests[0].path == "/v2/limits"


def test_default_address_is_the_hosted_service() -> None:
    c = connector("k")
    assert c.address == "https://api.connector.mbed.com"
    c.close()
