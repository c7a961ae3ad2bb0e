"""BRIDGE_CONNECTOR_HTTP: the bridge works end to end on either HTTP stack of the client."""

from __future__ import annotations

import pytest
import requests

from bridge.connector.lean_http import LeanSession
from bridge.simulator import Emulator
from tests.support.bridge_harness import bridge_settings, command, running_bridge, user
from tests.support.broker import MosquittoBroker

pytestmark = pytest.mark.both_dialects

LIGHT = "connector/light-001/3311/0/5850"


@pytest.mark.parametrize(
    ("stack", "session_type"), [("fast", LeanSession), ("requests", requests.Session)]
)
def test_commands_and_values_on_each_http_stack(
    broker: MosquittoBroker, stack: str, session_type: type
) -> None:
    with Emulator(token="tok-http", pull_timeout=1.0, drift=False) as emu:
        settings = bridge_settings(emu, broker, connector_http=stack)
        with (
            running_bridge(settings) as bridge,
            user(broker, "5", LIGHT, f"{LIGHT}/set/reply") as u,
        ):
            assert isinstance(bridge.connector_side.client._session, session_type)
            reply = command(u, f"{LIGHT}/set", b"1")
            assert reply["ok"] is True and reply["status"] == 200
            assert emu.get_value("light-001", "/3311/0/5850") == b"1"
            u.wait_topic(LIGHT, payload=b"1")
