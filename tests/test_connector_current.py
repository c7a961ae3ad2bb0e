"""Every seed method on today's dialect, against the emulator's current dialect over real
HTTP and a real WebSocket: devices by ID from ``/v3/devices``, device requests answered
on the channel, subscriptions, pre-subscriptions, the error bodies, and entries the
service delivers twice dropped by their ``uid``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.connector import asyncResult, connector
from bridge.connector.messages import MessageKind
from bridge.simulator import Emulator
from tests.support.clients import Collector, wait_until

TEMP = ("node-001", "/3303/0/5700")
LIGHT = ("light-001", "/3311/0/5850")
REBOOT = "/3/0/4"


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api="current", drift=False) as e:
        yield e


@pytest.fixture
def client(emu: Emulator, fast_http: bool) -> Iterator[connector]:
    c = connector(emu.token, emu.url, api="current", fastHttp=fast_http, timeout=5.0)
    try:
        assert c.startWebsocket() == "connected"
        yield c
    finally:
        c.close()


def done(r: asyncResult, timeout: float = 5.0) -> asyncResult:
    assert r.wait(timeout), f"no answer: {r!r}"
    return r


def test_get_endpoints_lists_devices_by_id_with_their_endpoint_names(
    emu: Emulator, client: connector
) -> None:
    r = client.getEndpoints()
    assert not r.error, r.error
    names = {e["endpoint_name"]: e for e in r.result}
    assert set(names) == set(emu.endpoints())
    node = names["node-001"]
    assert node["name"] == emu.device_id("node-001") and node["status"] == "ACTIVE"
    assert node["type"] == node["device"]["endpoint_type"]
    lights = client.getEndpoints(node["type"]).result
    assert {e["endpoint_name"] for e in lights} <= set(names) and "node-001" in {
        e["endpoint_name"] for e in lights
    }
    emu.deregister("node-002")
    left = {e["endpoint_name"] for e in client.getEndpoints().result}
    assert "node-002" not in left and "node-001" in left


def test_get_endpoints_reads_every_page() -> None:
    with Emulator(api="current", devices=2500, drift=False) as emu:
        c = connector(emu.token, emu.url, api="current", timeout=10.0)
        try:
            r = c.getEndpoints()
            assert not r.error and r.extra["pages"] == 3
            assert len({e["name"] for e in r.result}) == len(r.result) == len(emu.endpoints())
        finally:
            c.close()


def test_read_write_execute_and_resources_by_device_id(emu: Emulator, client: connector) -> None:
    node, light = emu.device_id(TEMP[0]), emu.device_id(LIGHT[0])
    listing = client.getResources(node)
    assert not listing.error and TEMP[1] in {x["uri"] for x in listing.result}
    emu.set_value(*TEMP, "23.5")
    r = done(client.getResourceValue(node, TEMP[1]))
    assert not r.error and r.result == "23.5" and r.status_code == 200 and r.http_status == 202
    assert isinstance(r.raw_data["max-age"], int)  # sent as a string, read as a number
    obj = done(client.getResourceValue(light, "/3311/0"))
    assert not obj.error and "5850" in str(obj.result)
    w = done(client.putResourceValue(light, LIGHT[1], "1"))
    assert not w.error and w.status_code == 200 and w.result == ""
    assert emu.get_value(*LIGHT) == b"1"
    lost = Collector[dict[str, Any]]()
    client.setHandler(MessageKind.DE_REGISTRATIONS, lost)
    back = Collector[dict[str, Any]]()
    client.setHandler(MessageKind.REGISTRATIONS, back)
    x = done(client.postResource(emu.device_id("multi-001"), REBOOT))
    assert not x.error and x.status_code == 200
    assert lost.wait(1) and back.wait(1, timeout=5)
    (entry,) = back.items[0]["registrations"]
    assert entry["ep"] == emu.device_id("multi-001") and entry["original-ep"] == "multi-001"


def test_delete_endpoint_deregisters_the_device(emu: Emulator, client: connector) -> None:
    gone = Collector[dict[str, Any]]()
    client.setHandler(MessageKind.DE_REGISTRATIONS, gone)
    r = done(client.deleteEndpoint(emu.device_id("node-002")))
    assert not r.error, r.error
    assert gone.wait(1)
    assert "node-002" not in emu.endpoints()


def test_subscriptions_bring_notifications_by_device_id(emu: Emulator, client: connector) -> None:
    node = emu.device_id(TEMP[0])
    got = Collector[dict[str, Any]]()
    client.setHandler(MessageKind.NOTIFICATIONS, got)
    s = done(client.putResourceSubscription(node, TEMP[1]))
    assert not s.error and s.status_code in (200, 202)
    assert not client.getResourceSubscription(node, TEMP[1]).error
    listed = client.getEndpointSubscriptions(node)
    assert not listed.error and TEMP[1] in listed.result
    emu.set_value(*TEMP, "30.5")
    assert got.wait_for(
        lambda items: any(
            e["ep"] == node and e["path"] == TEMP[1] for m in items for e in m["notifications"]
        )
    )
    entry = next(e for m in got.items for e in m["notifications"] if e["path"] == TEMP[1])
    assert entry["original-ep"] == "node-001" and "uid" in entry
    assert not client.deleteResourceSubscription(node, TEMP[1]).error
    assert client.getResourceSubscription(node, TEMP[1]).error
    assert not client.deleteEndpointSubscriptions(node).error
    assert not client.deleteAllSubscriptions().error


def test_pre_subscriptions_round_trip(client: connector) -> None:
    rules = [{"endpoint-name": "node*", "resource-path": ["/3303/*"]}]
    assert not client.putPreSubscription(rules).error
    got = client.getPreSubscription()
    assert not got.error and got.result == rules


@pytest.mark.parametrize(
    ("call", "status", "code"),
    [
        (lambda c, e: c.getResourceValue("f" * 32, TEMP[1]), 404, "DEVICE_NOT_FOUND"),
        (lambda c, e: c.getResourceValue(e.device_id("node-001"), "/9/9/9"), 404,
         "URI_PATH_DOES_NOT_EXISTS"),
        (lambda c, e: c.getResourceValue(e.device_id("node-001"), TEMP[1], retry=11), 400, None),
        (lambda c, e: c.putResourceValue(e.device_id("node-001"), TEMP[1], "1", expiry=5),
         400, None),
    ],
    ids=["unknown-device", "unknown-path", "retry-out-of-range", "expiry-out-of-range"],
)  # fmt: skip
def test_refused_device_requests_carry_the_error_body(
    emu: Emulator, client: connector, call: Any, status: int, code: str | None
) -> None:
    r = call(client, emu)
    assert r.isDone() and r.error and r.error.status_code == status
    assert r.error.errorType is not None and r.error.requestId is not None
    if code is not None:
        assert r.error.errorCode == code
    assert client.pendingCount() == 0


def test_a_device_that_left_is_not_connected(emu: Emulator, client: connector) -> None:
    emu.deregister("node-002")
    r = client.getResourceValue(emu.device_id("node-002"), TEMP[1])
    assert r.isDone() and r.error and r.error.errorCode == "DEVICE_NOT_CONNECTED"


def test_a_removed_route_says_so(emu: Emulator, client: connector) -> None:
    r = client._request("GET", "/endpoints")
    assert not isinstance(r, type(None)) and getattr(r, "status_code", None) == 404
    body = json.loads(r.content)  # type: ignore[union-attr]
    assert body["object"] == "error" and body["type"] == "not_found"


def test_entries_delivered_twice_reach_the_handlers_once(emu: Emulator, client: connector) -> None:
    got = Collector[dict[str, Any]]()
    client.setHandler(MessageKind.NOTIFICATIONS, got)
    assert not done(client.putResourceSubscription(emu.device_id(TEMP[0]), TEMP[1])).error
    emu.set_fault(duplicate_messages=3)
    for i in range(3):
        emu.set_value(*TEMP, f"{40 + i}.0")
        assert wait_until(lambda n=i: client.duplicatesDropped() >= n + 1)
    assert wait_until(lambda: sum(len(m["notifications"]) for m in got.items) >= 3)
    values = [e["payload"] for m in got.items for e in m["notifications"]]
    uids = [e["uid"] for m in got.items for e in m["notifications"]]
    assert len(uids) == len(set(uids)) == len(values)
    assert client.duplicatesDropped() == 3


def test_expiry_runs_out_for_a_sleeping_device() -> None:
    """``expiry`` reaches the service: the sleeping device never woke in time."""
    with Emulator(api="current", drift=False, expiry_scale=0.01) as emu:
        c = connector(emu.token, emu.url, api="current", timeout=5.0)
        try:
            assert c.startWebsocket() == "connected"
            sleeper = emu.device_id("sleeper-001")
            short = c.getResourceValue(sleeper, "/3301/0/5700", expiry=60)  # 0.6 s here
            assert not short.isDone()
            r = done(short, timeout=10)
            assert r.error and r.error.status_code == 429
            assert r.error.errorCode == "REQUEST_EXPIRED"
            assert emu.counters()["device_request_expired"] == 1
        finally:
            c.close()


def test_retry_is_how_often_the_service_tries_before_it_gives_up(
    emu: Emulator, client: connector
) -> None:
    node = emu.device_id("node-002")
    emu.set_fault(device_timeout={"ep": "node-002"})
    r = client.getResourceValue(node, "/3304/0/5700", retry=2)
    for contact in range(3):  # an unanswered attempt waits for the device's next contact
        assert wait_until(lambda n=contact: emu.counters()["device_request_attempts"] > n)
        if contact < 2:
            emu.update("node-002")
    done(r)
    assert r.error and r.error.status_code == 504 and r.error.errorCode == "TIMEOUT"
    assert emu.counters()["device_request_attempts"] == 3  # the first and two retries


def test_the_service_queues_twenty_requests_for_a_sleeping_device(
    emu: Emulator, client: connector
) -> None:
    sleeper = emu.device_id("sleeper-001")
    queued = [client.getResourceValue(sleeper, "/3301/0/5700") for _ in range(20)]
    assert not any(r.isDone() for r in queued)
    full = client.getResourceValue(sleeper, "/3301/0/5700")
    assert full.isDone() and full.error and full.error.errorCode == "QUEUE_IS_FULL"
    emu.wake("sleeper-001")
    for r in queued:
        assert not done(r).error and r.result == "320.0"
    assert client.pendingCount() == 0
