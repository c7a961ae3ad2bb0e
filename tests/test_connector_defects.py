"""One test per "Known defect of the original library" (shared/docs/design.md), each of
which fails against the original behaviour."""

from __future__ import annotations

import base64
import json
import sys
import threading

from bridge.connector import connector
from bridge.connector.errors import UNKNOWN_ERROR
from bridge.simulator import Emulator
from tests.support.clients import Collector, client_for
from tests.support.wire import ClosingServer, Recorded, RecordingServer, Reply

LIGHT = ("light-001", "/3311/0/5850")


def test_defect_put_callback_with_headers(emulator: Emulator, fast_http: bool) -> None:
    """The original built ``payload['headers':headers]`` (a NameError) whenever headers
    were given."""
    with (
        RecordingServer(lambda _: Reply(204)) as hook,
        client_for(emulator, poll=False, fastHttp=fast_http) as c,
    ):
        r = c.putCallback(hook.url + "/in", headers={"Authorization": "hook-key"})
        got = c.getCallback()
    assert r.isDone() and r.error is False and r.status_code == 204
    assert got.result["headers"] == {"Authorization": "hook-key"}


def test_defect_start_after_stop(emulator: Emulator, fast_http: bool) -> None:
    """The original started the same Thread object again: RuntimeError."""
    seen: Collector[dict[str, object]] = Collector()
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        c.setHandler("registrations", seen)
        first = c.startLongPolling()
        c.stopLongPolling()
        second = c.startLongPolling()
        assert second.is_alive() and second is not first
        emulator.register("after-restart", ept="Light")
        assert seen.wait(1)


def test_defect_no_thread_isalive(fast_http: bool) -> None:
    """The original called ``Thread.isAlive()`` (removed in Python 3.9) in start and stop."""
    assert sys.version_info >= (3, 9) and not hasattr(threading.Thread, "isAlive")
    with (
        RecordingServer(lambda _: Reply(204)) as srv,
        connector("k", srv.url, fastHttp=fast_http) as c,
    ):
        thread = c.startLongPolling()  # the original raised AttributeError here
        assert c.startLongPolling() is thread
        c.stopLongPolling()
    assert not thread.is_alive()


def test_defect_long_poll_backs_off_on_a_dead_server(fast_http: bool) -> None:
    """The original retried at once after every failure: a dead server made it spin."""
    with ClosingServer() as dead, connector("k", dead.url, backoffMax=0.5, fastHttp=fast_http) as c:
        c.startLongPolling()
        threading.Event().wait(1.5)
        c.stopLongPolling()
    assert 2 <= len(dead.accepted) <= 6  # a spin would be thousands


def test_defect_async_error_without_text_is_an_error(fast_http: bool) -> None:
    """The original looked only for an ``error`` key: status 500 without it was success."""
    ids = ["1#ep@d/3/0/1", "2#ep@d/3/0/2"]

    def answer(_: Recorded) -> Reply:
        return Reply(202, json.dumps({"async-response-id": ids.pop(0)}))

    with RecordingServer(answer) as srv, connector("k", srv.url, fastHttp=fast_http) as c:
        a = c.getResourceValue("ep", "/3/0/1")
        b = c.getResourceValue("ep", "/3/0/2")
        payload = base64.b64encode(b"x").decode()
        c.handler(
            {
                "async-responses": [
                    {"id": "1#ep@d/3/0/1", "status": 500},
                    {"id": "2#ep@d/3/0/2", "status": 404, "payload": payload},
                ]
            }
        )
    for r, status in ((a, 500), (b, 404)):
        assert r.isDone() and r.error, status
        assert r.error.status_code == status and r.status_code == status


def test_defect_put_body_is_raw(emulator: Emulator, fast_http: bool) -> None:
    """The original sent ``json="on"``: the device got ``"on"`` with the quotes."""
    text = {"path": "/3341/0/5527", "rt": "Text", "kind": "string", "writable": True}
    blob = {"path": "/3341/0/5528", "rt": "Blob", "kind": "opaque", "writable": True}
    emulator.register("raw-001", ept="Display", resources=[text, blob])
    with client_for(emulator, fastHttp=fast_http) as c:
        writes = [
            c.putResourceValue("raw-001", "/3341/0/5527", "on"),
            c.putResourceValue("raw-001", "/3341/0/5528", b"\x00\xff\x10"),
            c.putResourceValue(*LIGHT, "on"),  # '"on"' would be a 400 from the device
        ]
        assert all(r.wait(5.0) and r.error is False for r in writes)
    assert emulator.get_value("raw-001", "/3341/0/5527") == b"on"
    assert emulator.get_value("raw-001", "/3341/0/5528") == b"\x00\xff\x10"
    assert emulator.get_value(*LIGHT) == b"1"


def test_defect_error_texts_of_presubscription_and_listing_calls(
    emulator: Emulator, fast_http: bool
) -> None:
    """The original looked these up under names that had no texts: "ERROR: Unknown error."."""
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        emulator.set_fault(force_status={"route": "presubscription-put", "status": 400})
        presub = c.putPreSubscription([{"endpoint-name": "x*"}])
        not_subscribed = c.getResourceSubscription("node-001", "/3303/0/5700")
        no_listing = c.getEndpointSubscriptions("nobody")
    assert presub.error and presub.error.error == "Malformed content."
    assert not_subscribed.error and not_subscribed.error.error == "Resource is not subscribed."
    assert no_listing.error and no_listing.error.error == (
        "Endpoint not found or there are no subscriptions for that endpoint."
    )
    for r in (presub, not_subscribed, no_listing):
        assert r.error and r.error.error != UNKNOWN_ERROR


def test_defect_handler_accepts_bytes(fast_http: bool) -> None:
    """The original rejected anything but ``str`` (a webhook body is ``bytes`` on Python 3)."""
    seen: Collector[dict[str, object]] = Collector()
    with RecordingServer() as srv, connector("k", srv.url, fastHttp=fast_http) as c:
        c.setHandler("registrations-expired", seen)
        assert c.handler(b'{"registrations-expired": ["node-002"]}') is True
    assert seen.items == [{"registrations-expired": ["node-002"]}]
