"""Commands as device requests, end to end: the service's error names in replies, and
today's device-request options ``expiry`` and ``retry`` (the envelope's, the MQTT 5
Message Expiry Interval) at the service, refused plainly on the legacy Connector.

A real Mosquitto, the emulator over real HTTP and WebSocket (today's service) or long
polling (the legacy Connector), the bridge in-process. Each test runs on the dialects it
applies to; the bridge finds the dialect itself (``BRIDGE_CONNECTOR_API=auto``) or is
told.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bridge.service.controller import Bridge
from bridge.simulator import Emulator, Scenario
from bridge.upstream.device_queue import EXPIRY_GRACE
from tests.reliability_support import Executions
from tests.support.bridge_harness import bridge_settings, command, running_bridge, user
from tests.support.broker import MosquittoBroker
from tests.support.clients import wait_until
from tests.support.mqtt_user import MqttUser
from tests.test_bridge_device_queue import SCENARIO

DIMMER = "connector/light-001/3311/0/5851"


@dataclass
class Stack:
    api: str
    broker: MosquittoBroker
    emu: Emulator
    bridge: Bridge
    u: MqttUser


@pytest.fixture(params=["current", "legacy"])
def stack(request: pytest.FixtureRequest, broker: MosquittoBroker) -> Iterator[Stack]:
    api = request.param
    with Emulator(api=api, pull_timeout=1.0, drift=False) as emu:
        settings = bridge_settings(emu, broker, connector_api="auto")
        with running_bridge(settings) as bridge, user(broker, "5", "connector/#") as u:
            assert bridge.connector_side.api == api
            yield Stack(api, broker, emu, bridge, u)


def test_a_device_timeout_carries_the_service_s_name(stack: Stack) -> None:
    stack.emu.set_fault(device_timeout={"ep": "light-001"})
    reply = command(stack.u, f"{DIMMER}/set", "7", transaction="to")
    assert (reply["ok"], reply["status"], reply["code"]) == (False, 504, "TIMEOUT")
    assert reply["error"].startswith("TIMEOUT")


def test_a_success_has_no_code(stack: Stack) -> None:
    reply = command(stack.u, f"{DIMMER}/set", "8", transaction="ok")
    assert (reply["ok"], reply["status"], reply["code"], reply["error"]) == (True, 200, None, None)
    assert stack.emu.get_value("light-001", "/3311/0/5851") == b"8"


def test_the_service_refuses_a_device_that_is_not_connected(broker: MosquittoBroker) -> None:
    """Today's service: the device is gone at the service, the bridge still thinks it is
    online (no de-registration came): the service's DEVICE_NOT_CONNECTED and its status
    are in the reply."""
    with (
        Emulator(api="current", drift=False) as emu,
        running_bridge(bridge_settings(emu, broker, connector_api="current")),
        user(broker, "5", "connector/#") as u,
    ):
        emu.set_fault(device_gone=["light-001"])
        reply = command(u, f"{DIMMER}/set", "9", transaction="gone")
    assert (reply["ok"], reply["status"], reply["code"]) == (False, 400, "DEVICE_NOT_CONNECTED")
    assert reply["error"].startswith("DEVICE_NOT_CONNECTED: ")


def test_a_deregistered_device_is_refused_by_the_bridge_itself(stack: Stack) -> None:
    """The bridge saw the de-registration: it answers itself (410, no service code), and
    sends nothing to the service."""
    stack.emu.deregister("light-001")
    stack.u.wait_for(lambda m: m.topic == "connector/light-001/$state" and m.payload != b"online")
    before = stack.emu.counters()["transactions"]
    reply = command(stack.u, f"{DIMMER}/set", "1", transaction="off")
    assert (reply["ok"], reply["status"], reply["code"]) == (False, 410, None)
    assert "offline" in reply["error"]
    assert stack.emu.counters()["transactions"] == before


# ---------------------------------------------------------------- expiry and retry

SLEEPER = "connector/sleeper-001/3311/0/5851"
LIGHT = "connector/light-001/3311/0/5851"


class Recorder:
    """The query of every ``POST /v2/device-requests/{id}`` the emulator received over
    HTTP (``async-id``, ``retry``, ``expiry-seconds``), in order."""

    def __init__(self, emu: Emulator) -> None:
        self.queries: list[dict[str, str]] = []
        core = emu.core
        original = core.device_request

        def device_request(ep: str, query: Any, body: bytes) -> Any:
            self.queries.append({k: v for k, v in query.items() if k != "async-id"})
            return original(ep, query, body)

        core.device_request = device_request  # type: ignore[method-assign]


@dataclass
class Current:
    emu: Emulator
    bridge: Bridge
    u: MqttUser
    sent: Recorder


@contextlib.contextmanager
def current_stack(broker: MosquittoBroker, expiry_scale: float = 1.0) -> Iterator[Current]:
    """Today's service, a sleeper that wakes only when told; the bridge knows it sleeps."""
    with Emulator(api="current", scenario=Scenario.from_dict(SCENARIO), drift=False,
                  expiry_scale=expiry_scale) as emu:  # fmt: skip
        sent = Recorder(emu)
        settings = bridge_settings(emu, broker, connector_api="current", stop_timeout=0.2,
                                   initial_read=False, homeassistant=False)  # fmt: skip
        with running_bridge(settings) as bridge, user(broker, "5", "connector/#") as u:
            emu.update("sleeper-001")  # a registration update says it sleeps (no wake)
            assert wait_until(lambda: bridge.registry.get("sleeper-001").queue_mode, 10)
            yield Current(emu, bridge, u, sent)


def envelope(transaction: object, value: str | None = None, **members: object) -> str:
    doc: dict[str, object] = {"transaction": transaction, **members}
    if value is not None:
        doc["value"] = value
    return json.dumps(doc)


def reply_to(u: MqttUser, topic: str, transaction: object) -> dict[str, Any]:
    found = u.wait_for(
        lambda m: m.topic == f"{topic}/reply" and m.json().get("transaction") == transaction
    )
    doc: dict[str, Any] = found[0].json()
    return doc


@pytest.mark.parametrize("verb", ["set", "get"])
def test_expiry_and_retry_in_the_envelope_reach_the_service(
    broker: MosquittoBroker, verb: str
) -> None:
    with current_stack(broker) as s:
        value = "5" if verb == "set" else None
        s.u.publish(f"{LIGHT}/{verb}", envelope(verb, value, expiry=600, retry=3))
        reply = reply_to(s.u, f"{LIGHT}/{verb}", verb)
        s.u.publish(f"{LIGHT}/{verb}", envelope("plain", value))
        plain = reply_to(s.u, f"{LIGHT}/{verb}", "plain")
    assert reply["ok"] and plain["ok"]
    assert s.sent.queries == [{"expiry-seconds": "600", "retry": "3"}, {}]


def test_the_mqtt5_message_expiry_becomes_expiry_seconds(broker: MosquittoBroker) -> None:
    """At least the service's 60 s; the envelope's expiry, when given, wins."""
    with current_stack(broker) as s:
        for transaction, members, mqtt_expiry in (
            ("mqtt", {}, 120), ("short", {}, 5), ("both", {"expiry": 300}, 120),
        ):  # fmt: skip
            s.u.publish(f"{LIGHT}/set", envelope(transaction, "1", **members),
                        message_expiry=mqtt_expiry)  # fmt: skip
            assert reply_to(s.u, f"{LIGHT}/set", transaction)["ok"]
    sent = [q["expiry-seconds"] for q in s.sent.queries]
    assert sent[0] in ("119", "120")  # what the broker left of it when it sent it on
    assert sent[1:] == ["60", "300"]


def test_an_expiry_the_service_runs_out_of_is_429_request_expired(
    broker: MosquittoBroker,
) -> None:
    # expiry_scale: the emulator's 60 s last 0.3 s; the sleeper does not wake meanwhile
    with current_stack(broker, expiry_scale=0.005) as s:
        s.u.publish(f"{SLEEPER}/set", envelope("soon", "9", expiry=60))
        reply = reply_to(s.u, f"{SLEEPER}/set", "soon")
    assert (reply["ok"], reply["status"], reply["code"]) == (False, 429, "REQUEST_EXPIRED")
    assert reply["error"] == "REQUEST_EXPIRED"


def test_retry_reaches_the_service_and_its_504_timeout_comes_back(
    broker: MosquittoBroker,
) -> None:
    """retry 1: two attempts (the default for an awake device is one), each the device
    does not answer; the second at its next contact."""
    with current_stack(broker) as s:
        s.emu.set_fault(device_timeout={"ep": "light-001"})
        s.u.publish(f"{LIGHT}/set", envelope("twice", "3", retry=1))
        assert wait_until(lambda: s.emu.counters()["device_request_attempts"] == 1, 10)
        s.emu.update("light-001")  # the device's next contact: the second attempt
        reply = reply_to(s.u, f"{LIGHT}/set", "twice")
        attempts = s.emu.counters()["device_request_attempts"]
    assert (reply["ok"], reply["status"], reply["code"]) == (False, 504, "TIMEOUT")
    assert attempts == 2


def test_a_queue_mode_command_waits_as_long_as_its_expiry(broker: MosquittoBroker) -> None:
    """Not the bridge's queue-mode time-out (10 s here): the reply comes when the device
    answers or the service gives up, at the expiry."""
    with current_stack(broker) as s:
        assert s.bridge.settings.queue_mode_timeout == 10.0
        s.u.publish(f"{SLEEPER}/set", envelope("patient", "4", expiry=600))
        assert wait_until(lambda: s.bridge.ctx.port.queues.counts()["at_service"] == 1, 10)
        (line,) = s.bridge.ctx.port.pending_requests("sleeper-001")["devices"]
        (waiting,) = line["requests"]
        assert waiting["expiry"] == 600 and waiting["sent_expiry"] == 600
        assert 600 < waiting["timeout_in"] <= 600 + EXPIRY_GRACE
        s.emu.wake("sleeper-001")
        reply = reply_to(s.u, f"{SLEEPER}/set", "patient")
    assert reply["ok"] and reply["status"] == 200


@pytest.mark.parametrize(
    ("members", "field"),
    [
        ({"expiry": 59}, "expiry"),
        ({"expiry": 2_592_001}, "expiry"),
        ({"expiry": "600"}, "expiry"),
        ({"expiry": 60.5}, "expiry"),
        ({"expiry": True}, "expiry"),
        ({"retry": 11}, "retry"),
        ({"retry": -1}, "retry"),
        ({"retry": None}, "retry"),
    ],
)
def test_a_bad_expiry_or_retry_is_400_naming_the_field(
    stack: Stack, members: dict[str, object], field: str
) -> None:
    stack.u.publish(f"{DIMMER}/set", envelope("bad", "1", **members))
    reply = reply_to(stack.u, f"{DIMMER}/set", "bad")
    assert (reply["ok"], reply["status"], reply["code"]) == (False, 400, None)
    assert reply["error"].startswith(f"{field} must be ")
    assert "the service's range" in reply["error"]


def test_on_the_legacy_connector_expiry_and_retry_are_refused_501(
    broker: MosquittoBroker,
) -> None:
    with (
        Emulator(pull_timeout=1.0, drift=False) as emu,
        running_bridge(bridge_settings(emu, broker, connector_api="auto")),
        user(broker, "5", "connector/#") as u,
    ):
        # What the Connector took on for the dimmer (the global transaction count also
        # moves with start-up reads still under way).
        log = Executions(emu)
        for transaction, members in (("e", {"expiry": 600}), ("r", {"retry": 2})):
            u.publish(f"{DIMMER}/set", envelope(transaction, "1", **members))
            reply = reply_to(u, f"{DIMMER}/set", transaction)
            assert (reply["ok"], reply["status"], reply["code"]) == (False, 501, None)
            assert "legacy Connector" in reply["error"]
            assert "BRIDGE_CONNECTOR_API=auto" in reply["error"]
        dimmer = [a for a in log.accepted if a[:2] == ("light-001", "/3311/0/5851")]
        assert dimmer == []  # nothing was sent
        # The MQTT 5 message expiry is MQTT's own: not forwarded, the command is carried out.
        u.publish(f"{DIMMER}/set", envelope("mqtt", "2"), message_expiry=120)
        assert reply_to(u, f"{DIMMER}/set", "mqtt")["ok"]
        assert emu.get_value("light-001", "/3311/0/5851") == b"2"
