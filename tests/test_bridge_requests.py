"""Bridge requests on ``connector/$bridge/request/<action>``, end to end: every action,
the echoed transaction, errors, and MQTT 5 response topics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bridge import __version__
from bridge.extensions import DEFAULT_EXTENSIONS
from bridge.service.controller import Bridge
from bridge.simulator import Emulator
from tests.support.bridge_harness import bridge_settings, request, running_bridge, user
from tests.support.broker import MosquittoBroker
from tests.support.clients import wait_until
from tests.support.mqtt_user import MqttUser

pytestmark = pytest.mark.both_dialects


@dataclass
class Stack:
    broker: MosquittoBroker
    emu: Emulator
    bridge: Bridge


@pytest.fixture(scope="module")
def stack(dialect: str) -> Iterator[Stack]:
    with (
        MosquittoBroker() as broker,
        Emulator(token="tok-requests", pull_timeout=1.0, drift=False) as emu,
        running_bridge(bridge_settings(emu, broker)) as bridge,
    ):
        yield Stack(broker, emu, bridge)


@pytest.fixture
def u(stack: Stack) -> Iterator[MqttUser]:
    with user(stack.broker, "3.1.1", "connector/$bridge/#") as client:
        yield client


def test_bridge_state_is_retained_online(stack: Stack, u: MqttUser) -> None:
    msg = u.wait_topic("connector/$bridge/state")
    assert (msg.payload, msg.retain) == (b"online", True)


def test_endpoints(stack: Stack, u: MqttUser, dialect: str) -> None:
    # Today's service tells a device's queue mode only in its registration messages (its
    # device listing has none): the sleeper says it when it updates its registration.
    stack.emu.update("sleeper-001")
    registry = stack.bridge.ctx.registry
    assert wait_until(lambda: registry.get("sleeper-001").queue_mode, 10)  # type: ignore[union-attr]
    response = request(u, "endpoints")
    assert response["ok"] and response["status"] == 200 and response["error"] is None
    by_name = {e["name"]: e for e in response["data"]}
    assert set(by_name) == set(stack.emu.endpoints())
    assert by_name["light-001"] == {
        "name": "light-001",
        # the legacy Connector has no device IDs: the name
        "device_id": stack.emu.device_id("light-001") if dialect == "current" else "light-001",
        "endpoint_name": "light-001",
        "type": "Light",
        "q": False,
        "status": "ACTIVE",
        "state": "online",
    }
    assert by_name["sleeper-001"]["q"] is True
    lights = request(u, "endpoints", {"type": "Light"})["data"]
    assert [e["name"] for e in lights] == ["light-001"]


def test_resources(stack: Stack, u: MqttUser) -> None:
    response = request(u, "resources", {"endpoint": "light-001"})
    assert response["ok"]
    by_path = {r["path"]: r for r in response["data"]}
    assert by_path["/3311/0/5850"]["obs"] is True
    assert by_path["/3311/0/5850"]["topic"] == "connector/light-001/3311/0/5850"


@pytest.mark.parametrize(
    ("action", "body", "status", "error"),
    [
        pytest.param(
            "resources",
            {"endpoint": "nobody"},
            404,
            {"legacy": "Endpoint not found.", "current": "DEVICE_NOT_FOUND: no device nobody"},
            id="resources-body0-404-not found",
        ),
        ("resources", {}, 400, "'endpoint' is required"),
        ("subscribe", {"endpoint": "light-001"}, 400, "'path' is required"),
        ("subscribe", {"endpoint": "light-001", "path": "/3/0/4"}, 412, "observable"),
        pytest.param(
            "unsubscribe",
            {"endpoint": "light-001", "path": "/3/0/0"},
            404,
            {
                "legacy": "Endpoint or endpoint's resource not found.",
                "current": "/3/0/0 is not subscribed",
            },
            id="unsubscribe-body4-404-not found",
        ),
        ("set-presubscriptions", {}, 400, "'rules' is required"),
        ("set-presubscriptions", {"rules": [{"bad-key": 1}]}, 400, "unknown key"),
        ("set-presubscriptions", {"rules": {"endpoint-name": "*"}}, 400, "JSON array"),
        ("endpoints", {"type": 5}, 400, "must be a string"),
        ("frobnicate", {}, 404, "unknown action 'frobnicate'"),
    ],
)
def test_bad_requests_say_why(
    stack: Stack,
    u: MqttUser,
    dialect: str,
    action: str,
    body: dict,
    status: int,
    error: str | dict[str, str],
) -> None:
    if isinstance(error, dict):  # the legacy client's text, or today's service's message
        error = error[dialect]
    response = request(u, action, body)
    assert response["ok"] is False and response["data"] is None
    assert response["status"] == status
    assert error in response["error"]
    assert response["action"] == action


def test_body_that_is_not_json(stack: Stack, u: MqttUser) -> None:
    for body in (b"nope", b"[1, 2]", b"\xff"):
        u.clear()
        u.publish("connector/$bridge/request/info", body)
        response = u.wait_topic("connector/$bridge/response/info").json()
        assert response["ok"] is False and response["status"] == 400
        assert response["transaction"] is None


def test_an_action_called_set_is_answered_where_no_command_filter_matches(
    stack: Stack, u: MqttUser
) -> None:
    u.publish("connector/$bridge/request/set", json.dumps({"transaction": "s"}))
    response = u.wait_topic("connector/$bridge/response/%73et").json()
    assert response["transaction"] == "s" and response["status"] == 404


def test_subscribe_and_unsubscribe(stack: Stack, u: MqttUser) -> None:
    pair = ("light-001", "/3311/0/5850")
    body = {"endpoint": pair[0], "path": pair[1]}
    response = request(u, "unsubscribe", body)
    assert response["ok"] and response["data"] == {**body, "status": 204}
    assert pair not in stack.emu.subscriptions()
    response = request(u, "subscribe", body)
    assert response["ok"] and response["data"] == {**body, "status": 200}
    assert pair in stack.emu.subscriptions()


def test_get_and_set_presubscriptions(stack: Stack, u: MqttUser) -> None:
    assert request(u, "get-presubscriptions")["data"] == [{"endpoint-name": "*"}]
    rules = [{"endpoint-type": "Light", "resource-path": ["/3311/*"]}]
    response = request(u, "set-presubscriptions", {"rules": rules})
    assert response["ok"] and response["data"] == rules
    assert request(u, "get-presubscriptions")["data"] == rules
    assert stack.emu.subscriptions() == {
        ("light-001", "/3311/0/5850"),
        ("light-001", "/3311/0/5851"),
        ("light-001", "/3311/0/5706"),
    }
    assert stack.bridge.ctx.rules == rules  # what the bridge reads at registration follows
    restored = request(u, "set-presubscriptions", {"rules": [{"endpoint-name": "*"}]})
    assert restored["ok"]
    assert ("node-001", "/3303/0/5700") in stack.emu.subscriptions()


def test_info(stack: Stack, u: MqttUser, dialect: str) -> None:
    counters = stack.bridge.ctx.counters
    assert wait_until(lambda: counters.get("initial_reads_ok") >= 1, 15)  # at least one read
    data = request(u, "info")["data"]
    assert data["version"] == __version__
    assert data["uptime"] > 0
    assert data["prefix"] == "connector"
    connector = data["connector"]
    assert connector["url"] == stack.emu.url and connector["api"] == dialect
    if dialect == "legacy":
        assert connector["version"].startswith("DeviceServer")
        assert "v2" in connector["rest_versions"]
        assert connector["limits"]["endpoint-count"] == len(stack.emu.endpoints())
        assert connector["channel"] == "longpoll"
    else:  # today's service has no version, REST versions or limits routes
        assert connector["version"] == "Device Management (current API)"
        assert (connector["rest_versions"], connector["limits"]) == (None, None)
        assert connector["channel"] == "websocket"
        assert connector["channel_stats"]["state"] == "connected"
    assert data["mqtt"]["connected"] is True and data["mqtt"]["protocol"] == "5"
    assert data["endpoints"]["online"] == len(stack.emu.endpoints())
    assert data["counters"]["bridge_requests"] >= 1
    assert data["counters"]["initial_reads_ok"] >= 1
    assert set(data["extensions"]) == {ext.name for ext in DEFAULT_EXTENSIONS}
    assert {"availability", "values", "commands", "bridge_requests"} <= set(data["extensions"])
    assert stack.emu.token not in json.dumps(data)


def test_mqtt5_response_topic_for_a_bridge_request(stack: Stack) -> None:
    with user(stack.broker, "5", "app/answers/#", "connector/$bridge/response/#") as c:
        c.publish("connector/$bridge/request/info", b"{}", response_topic="app/answers/1",
                  correlation_data=b"corr")  # fmt: skip
        msg = c.wait_topic("app/answers/1")
        assert msg.correlation_data == b"corr" and msg.json()["ok"]
        c.publish("connector/$bridge/request/info", b"{}",
                  response_topic="connector/$bridge/state", correlation_data=b"x")  # fmt: skip
        refused = c.wait_topic("connector/$bridge/response/info").json()
    assert refused["ok"] is False and "response topic refused" in refused["error"]
