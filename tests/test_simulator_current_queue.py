"""``POST /v2/device-requests/{id}`` in the current dialect: 202 and the answer on the
WebSocket channel, every refusal as an error body, the 20-request queue delivered one
at a time in order, retry (504 TIMEOUT), expiry (429 REQUEST_EXPIRED), cached reads."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import requests

from bridge.simulator import Emulator, Scenario
from tests.simulator_support import Api
from tests.support.clients import wait_until
from tests.support.ws_client import WsClient
from tests.test_simulator_current_rest import assert_error

SCENARIO = Scenario.from_dict(
    {
        "templates": {
            "TempSensor": {"type": "TempSensor", "objects": ["3303"]},
            "Light": {"type": "Light", "objects": ["3311"]},
            # wakes only when told (wake_interval of an hour), then stays awake a while
            "Sleeper": {
                "type": "Sleeper",
                "objects": ["3311"],
                "queue": True,
                "wake_interval": 3600,
                "awake_time": 30,
            },
        },
        "devices": [
            {"name": "node-001", "template": "TempSensor"},
            {"name": "node-002", "template": "TempSensor"},
            {"name": "light-001", "template": "Light"},
            {"name": "sleeper-001", "template": "Sleeper"},
        ],
    }
)
SERIALIZATION = {"serialization": {"type": "v2", "cfg": {"include_timestamp": True}}}


class Service:
    """An emulator in the current dialect with its WebSocket channel connected."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.api = Api(emu)
        r = self.api.put("/notification/websocket", json=SERIALIZATION)
        assert r.status_code == 201
        self.ws = WsClient(emu.url, emu.token).connect()
        self._markers = itertools.count(1)

    def id(self, name: str) -> str:
        return self.emu.device_id(name)

    def request(
        self, name: str, aid: str, body: dict[str, Any], **params: Any
    ) -> requests.Response:
        return self.api.post(
            f"/device-requests/{self.id(name)}", params={"async-id": aid, **params}, json=body
        )

    def accepted(self, name: str, aid: str, body: dict[str, Any], **params: Any) -> None:
        r = self.request(name, aid, body, **params)
        assert r.status_code == 202, (r.status_code, r.text)
        assert r.content == b""

    def answers(self) -> dict[str, dict[str, Any]]:
        return {e["id"]: e for e in self.ws.entries("async-responses")}

    def settle(self) -> dict[str, dict[str, Any]]:
        """Everything emitted so far has arrived (a marker registration came after it);
        the async responses by id."""
        name = f"marker-{next(self._markers)}"
        self.emu.register(name)
        self.ws.wait_for(
            lambda c: any(e["original-ep"] == name for e in c.entries("registrations")),
            what=name,
        )
        return self.answers()


@pytest.fixture
def dm() -> Iterator[Service]:
    with Emulator(
        token="test-token", api="current", scenario=SCENARIO, drift=False, expiry_scale=0.005
    ) as emu:
        service = Service(emu)
        try:
            yield service
        finally:
            service.ws.close()


GET_TEMP = {"method": "GET", "uri": "/3303/0/5700"}


def bare(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry without its timestamp (the fixture's channel includes them)."""
    return {k: v for k, v in entry.items() if k != "timestamp"}


def payload(entry: dict[str, Any]) -> bytes:
    return base64.b64decode(entry["payload"])


def test_accepted_with_202_and_no_body_answered_on_the_channel(dm: Service) -> None:
    dm.accepted("node-001", "read-1", {**GET_TEMP, "accept": "text/plain"})
    entry = dm.ws.async_response("read-1")
    assert entry["status"] == 200 and entry["ct"] == "text/plain"
    assert payload(entry) == b"21.5"
    assert entry["max-age"] == "0"  # a string, as the API file declares it
    assert dm.emu.counters()["device_requests"] == 1


def test_write_execute_and_what_a_device_refuses(dm: Service) -> None:
    dim = {"uri": "/3311/0/5851", "content-type": "text/plain"}
    dm.accepted("light-001", "w", {**dim, "method": "PUT", "payload-b64": "NjA="})
    assert dm.ws.async_response("w")["status"] == 200
    assert dm.emu.get_value("light-001", "/3311/0/5851") == b"60"
    dm.accepted("light-001", "r", {**dim, "method": "GET"})
    assert payload(dm.ws.async_response("r")) == b"60"
    dm.accepted("light-001", "x", {**dim, "method": "POST"})
    assert bare(dm.ws.async_response("x")) == {
        "id": "x",
        "status": 405,
        "error": "METHOD_NOT_ALLOWED",
    }
    dm.accepted("light-001", "bad", {**dim, "method": "PUT", "payload-b64": "MTAwMA=="})
    assert dm.ws.async_response("bad")["status"] == 400  # 1000 is out of the dimmer's range
    dm.accepted("light-001", "del", {**dim, "method": "DELETE"})
    assert dm.ws.async_response("del")["status"] == 405


def test_a_uri_may_carry_a_query(dm: Service) -> None:
    dm.accepted("light-001", "attrs", {"method": "PUT", "uri": "/3311/0/5851?pmax=120&pmin=5"})
    entry = dm.ws.async_response("attrs")
    assert entry["status"] == 200 and payload(entry) == b""
    assert dm.emu.get_value("light-001", "/3311/0/5851") == b"100"  # attributes, not a value
    dm.accepted("light-001", "q", {"method": "GET", "uri": "/3311/0/5851?k1=v1"})
    assert payload(dm.ws.async_response("q")) == b"100"
    body = {"method": "PUT", "uri": "/3311/0/5851?k=v", "payload-b64": "Nw=="}
    dm.accepted("light-001", "qv", body)  # a query and a payload: a value write
    assert dm.ws.async_response("qv")["status"] == 200
    assert dm.emu.get_value("light-001", "/3311/0/5851") == b"7"


def test_object_paths(dm: Service) -> None:
    dm.accepted("node-001", "obj", {"method": "GET", "uri": "/3303/0"})
    entry = dm.ws.async_response("obj")
    assert entry["status"] == 200 and entry["ct"] == "application/vnd.oma.lwm2m+json"
    dm.accepted("light-001", "objput", {"method": "PUT", "uri": "/3311/0", "payload-b64": ""})
    assert dm.ws.async_response("objput")["status"] == 405


LONG_ID = "a" * 41


@pytest.mark.parametrize(
    ("params", "body", "status", "type_", "name", "field"),
    [
        ({"async-id": None}, GET_TEMP, 400, "validation_error", "MALFORMED_ASYNC_ID", "async-id"),
        ({"async-id": "has space"}, GET_TEMP, 400, "validation_error", "MALFORMED_ASYNC_ID", None),
        ({"async-id": LONG_ID}, GET_TEMP, 400, "validation_error", "MALFORMED_ASYNC_ID", None),
        ({"async-id": "ä-unicode"}, GET_TEMP, 400, "validation_error", "MALFORMED_ASYNC_ID", None),
        ({"retry": "11"}, GET_TEMP, 400, "validation_error", "", "retry"),
        ({"retry": "-1"}, GET_TEMP, 400, "validation_error", "", "retry"),
        ({"retry": "two"}, GET_TEMP, 400, "validation_error", "", "retry"),
        ({"expiry-seconds": "59"}, GET_TEMP, 400, "validation_error", "", "expiry-seconds"),
        ({"expiry-seconds": "2592001"}, GET_TEMP, 400, "validation_error", "", "expiry-seconds"),
        ({}, b"{", 400, "validation_error", "MALFORMED_JSON_CONTENT", "body"),
        ({}, b"[]", 400, "validation_error", "MALFORMED_JSON_CONTENT", None),
        ({}, {"method": "PATCH", "uri": "/3303/0/5700"}, 400, "validation_error",
         "MALFORMED_JSON_CONTENT", None),
        ({}, {"method": "GET"}, 400, "validation_error", "MALFORMED_JSON_CONTENT", None),
        ({}, {"method": "PUT", "uri": "/3303/0/5700", "payload-b64": "!!"}, 400,
         "validation_error", "MALFORMED_JSON_CONTENT", None),
        ({}, {"method": "GET", "uri": "/9999/0/1"}, 404, "not_found",
         "URI_PATH_DOES_NOT_EXISTS", None),
    ],
)  # fmt: skip
def test_refused_requests_are_error_bodies(
    dm: Service,
    params: dict[str, Any],
    body: Any,
    status: int,
    type_: str,
    name: str,
    field: str | None,
) -> None:
    query = {"async-id": "ok_id-1", **params}
    url = f"/device-requests/{dm.id('node-001')}"
    data = body if isinstance(body, bytes) else None
    r = dm.api.post(url, params=query, data=data, json=None if data is not None else body)
    got = assert_error(r, status, type_, name)
    if field is not None:
        assert got["fields"][0]["name"] == field
    assert dm.emu.counters()["device_requests"] == 0


def test_unknown_and_disconnected_devices(dm: Service) -> None:
    r = dm.api.post("/device-requests/" + "0" * 32, params={"async-id": "a"}, json=GET_TEMP)
    assert_error(r, 404, "not_found", "DEVICE_NOT_FOUND")
    r = dm.api.post("/device-requests/node-001", params={"async-id": "a"}, json=GET_TEMP)
    assert_error(r, 404, "not_found", "DEVICE_NOT_FOUND")  # a name is not a device ID
    dm.emu.deregister("node-002")
    r = dm.request("node-002", "a", GET_TEMP)
    assert_error(r, 400, "validation_error", "DEVICE_NOT_CONNECTED")
    dm.emu.set_fault(device_gone="node-001")
    assert_error(dm.request("node-001", "a", GET_TEMP), 400, "validation_error")


def test_412_without_a_notification_channel() -> None:
    with Emulator(token="t", api="current", drift=False) as emu:
        r = Api(emu).post(
            f"/device-requests/{emu.device_id('node-001')}",
            params={"async-id": "a"},
            json=GET_TEMP,
        )
        assert_error(r, 412, "precondition_failed")


def test_an_observed_resource_is_read_from_the_cache(dm: Service) -> None:
    assert dm.api.put(f"/subscriptions/{dm.id('node-001')}/3303/0/5700").status_code == 200
    dm.emu.set_value("node-001", "/3303/0/5700", "30.5")
    dm.emu.set_fault(device_timeout="node-001")  # the device would not answer
    dm.accepted("node-001", "cached", GET_TEMP)
    entry = dm.ws.async_response("cached")
    assert entry["status"] == 200 and payload(entry) == b"30.5" and entry["max-age"] == "60"
    counters = dm.emu.counters()
    assert counters["device_request_cache_hits"] == 1
    assert counters["device_request_attempts"] == 0


def test_a_sleeping_device_queues_20_and_serves_them_in_order_when_it_wakes(dm: Service) -> None:
    for k in range(20):
        body = {"method": "PUT", "uri": "/3311/0/5851", "payload-b64": _b64(str(k))}
        dm.accepted("sleeper-001", f"q-{k}", body)
    r = dm.request("sleeper-001", "q-20", {"method": "GET", "uri": "/3311/0/5851"})
    assert_error(r, 400, "validation_error", "QUEUE_IS_FULL")
    assert dm.settle() == {}  # nothing answered while it sleeps
    dm.emu.wake("sleeper-001")
    dm.ws.wait_for(lambda c: len(dm.answers()) == 20, what="20 answers")
    ids = [e["id"] for e in dm.ws.entries("async-responses")]
    assert ids == [f"q-{k}" for k in range(20)]
    assert all(e["status"] == 200 for e in dm.answers().values())
    assert dm.emu.get_value("sleeper-001", "/3311/0/5851") == b"19"
    dm.accepted("sleeper-001", "q-21", {"method": "GET", "uri": "/3311/0/5851"})  # room again
    assert payload(dm.ws.async_response("q-21")) == b"19"


def test_one_request_at_a_time(dm: Service) -> None:
    dm.emu.set_fault(device_latency=0.2)
    for k, value in enumerate(("10", "20", "30")):
        body = {"method": "PUT", "uri": "/3311/0/5851", "payload-b64": _b64(value)}
        dm.accepted("sleeper-001", f"s-{k}", body)
    dm.accepted("sleeper-001", "s-3", {"method": "GET", "uri": "/3311/0/5851"})
    dm.emu.wake("sleeper-001")
    dm.ws.wait_for(lambda c: len(dm.answers()) == 4, what="4 answers")
    entries = dm.ws.entries("async-responses")
    assert [e["id"] for e in entries] == ["s-0", "s-1", "s-2", "s-3"]
    assert payload(entries[3]) == b"30"  # the read came after the three writes
    times = [datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in entries]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.15 for gap in gaps), gaps  # each waited for the previous answer


def test_an_awake_device_is_served_in_order_too(dm: Service) -> None:
    dm.emu.set_fault(device_latency=0.05)
    for k in range(5):
        body = {"method": "PUT", "uri": "/3311/0/5851", "payload-b64": _b64(str(k))}
        dm.accepted("light-001", f"a-{k}", body)
    dm.ws.wait_for(lambda c: len(dm.answers()) == 5, what="5 answers")
    assert [e["id"] for e in dm.ws.entries("async-responses")] == [f"a-{k}" for k in range(5)]
    assert dm.emu.get_value("light-001", "/3311/0/5851") == b"4"


def test_attempts_are_first_plus_retry_then_504_timeout(dm: Service) -> None:
    dm.emu.set_fault(device_timeout={"ep": "node-001", "path": "/3303"})
    dm.accepted("node-001", "t", GET_TEMP, retry=2)
    dm.accepted("node-001", "behind", {"method": "GET", "uri": "/3/0/0"})
    for attempt in (1, 2):
        assert wait_until(lambda n=attempt: dm.emu.counters()["device_request_attempts"] == n)
        assert dm.settle() == {}, attempt  # not answered, waits for the next contact
        dm.emu.update("node-001")  # the device contacts the service: the next attempt
    assert bare(dm.ws.async_response("t")) == {"id": "t", "status": 504, "error": "TIMEOUT"}
    assert dm.emu.counters()["device_request_attempts"] == 3
    assert "behind" not in dm.settle()  # the queue waits for the device again
    dm.emu.update("node-001")
    assert payload(dm.ws.async_response("behind")) == b"connector-bridge emulator"
    counters = dm.emu.counters()
    assert counters["device_request_timeouts"] == 1 and counters["device_request_attempts"] == 4


def test_retry_defaults_to_0_and_to_2_for_a_queue_mode_device(dm: Service) -> None:
    dm.emu.set_fault(device_timeout=["node-001", "sleeper-001"])
    dm.accepted("node-001", "once", GET_TEMP)
    assert dm.ws.async_response("once")["status"] == 504  # first attempt, no retry
    dm.accepted("sleeper-001", "thrice", {"method": "GET", "uri": "/3311/0/5851"})
    for wake in (1, 2):
        dm.emu.wake("sleeper-001")
        assert wait_until(lambda w=wake: dm.emu.counters()["device_request_attempts"] == 1 + w)
        assert "thrice" not in dm.settle()
    dm.emu.wake("sleeper-001")
    assert dm.ws.async_response("thrice")["status"] == 504
    assert dm.emu.counters()["device_request_attempts"] == 4


def test_a_request_that_runs_out_of_time_is_429_request_expired(dm: Service) -> None:
    # expiry_scale=0.005: 60 s last 0.3 s; the default 3 days of a queue-mode device, 1296 s
    dm.accepted("sleeper-001", "short", {"method": "GET", "uri": "/3311/0/5851"}, **{
        "expiry-seconds": 60
    })  # fmt: skip
    dm.accepted("sleeper-001", "long", {"method": "GET", "uri": "/3311/0/5851"})
    assert bare(dm.ws.async_response("short")) == {
        "id": "short",
        "status": 429,
        "error": "REQUEST_EXPIRED",
    }
    assert "long" not in dm.settle()
    dm.emu.wake("sleeper-001")
    assert dm.ws.async_response("long")["status"] == 200
    assert dm.emu.counters()["device_request_expired"] == 1


def test_requests_waiting_for_a_device_that_deregisters(dm: Service) -> None:
    dm.accepted("sleeper-001", "w-1", {"method": "GET", "uri": "/3311/0/5851"})
    dm.accepted("sleeper-001", "w-2", {"method": "GET", "uri": "/3311/0/5850"})
    dm.emu.deregister("sleeper-001")
    answers = dm.settle()
    assert [answers[a]["status"] for a in ("w-1", "w-2")] == [429, 429]
    assert answers["w-1"]["error"] == "DEVICE_REMOVED_REGISTRATION"


def test_the_legacy_dialect_sends_max_age_as_a_number(emulator: Emulator) -> None:
    api = Api(emulator)
    api.open_channel()
    r = api.post("/device-requests/node-001", params={"async-id": "n"}, json=GET_TEMP)
    assert r.status_code == 202 and r.content == b""
    entry = api.async_response("n")
    assert entry["max-age"] == 0 and "timestamp" not in entry


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
