"""Commands as device requests, end to end: the service's error names in replies.

A real Mosquitto, the emulator over real HTTP and WebSocket (today's service) or long
polling (the legacy Connector), the bridge in-process. Each test runs on the dialects it
applies to; the bridge finds the dialect itself (``BRIDGE_CONNECTOR_API=auto``) or is
told.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bridge.service.controller import Bridge
from bridge.simulator import Emulator
from tests.support.bridge_harness import bridge_settings, command, running_bridge, user
from tests.support.broker import MosquittoBroker
from tests.support.mqtt_user import MqttUser

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
