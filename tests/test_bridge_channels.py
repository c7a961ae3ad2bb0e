"""Both notification channels end to end: the default one (the long poll on the legacy
Connector, the WebSocket today) and the callback URL."""

from __future__ import annotations

import json

import pytest
import requests

from bridge.connector import connector
from bridge.service.controller import Bridge
from bridge.simulator import Emulator
from bridge.upstream.callback_receiver import CallbackReceiver
from bridge.upstream.side import StartupError
from tests.support.bridge_harness import bridge_settings, command, running_bridge, user
from tests.support.broker import MosquittoBroker
from tests.support.ports import free_port

pytestmark = pytest.mark.both_dialects

DIMMER = "connector/light-001/3311/0/5851"


def callback_settings(port: int) -> dict:
    return {
        "notification_channel": "callback",
        "callback_url": f"http://127.0.0.1:{port}/connector/notify",
        "callback_listen": f"127.0.0.1:{port}",
    }


def test_callback_channel_end_to_end(broker: MosquittoBroker, emulator: Emulator) -> None:
    port = free_port()
    settings = bridge_settings(emulator, broker, **callback_settings(port))
    with running_bridge(settings) as bridge, user(broker, "5", "connector/#") as u:
        registered = emulator.core.callback
        assert registered is not None
        assert registered["url"] == f"http://127.0.0.1:{port}/connector/notify"
        assert registered["headers"]["Authorization"].startswith("Bearer ")
        # Start-up values, live notifications and command answers all come by callback.
        u.wait_topic("connector/light-001/3311/0/5850")
        emulator.set_value("light-001", "/3311/0/5851", "64")
        u.wait_topic(DIMMER, payload=b"64")
        reply = command(u, f"{DIMMER}/set", b"65", transaction="cb")
        assert reply["ok"] and emulator.get_value("light-001", "/3311/0/5851") == b"65"
        emulator.register("cb-new", ept="Odd")
        u.wait_topic("connector/cb-new/$state", payload=b"online")
        assert bridge.connector_side.client.longPollStats()["pulls"] == 0
        assert emulator.counters()["webhook_posts"] >= 3
    assert emulator.core.callback is None  # the bridge removed it when it stopped


def test_callback_receiver_refuses_strangers_and_garbage(
    broker: MosquittoBroker, emulator: Emulator, dialect: str
) -> None:
    port = free_port()
    settings = bridge_settings(emulator, broker, **callback_settings(port))
    url = f"http://127.0.0.1:{port}/connector/notify"
    with running_bridge(settings) as bridge:
        secret = emulator.core.callback["headers"]["Authorization"]  # type: ignore[index]
        assert requests.put(url, data=b"{}", timeout=5).status_code == 401
        wrong = {"Authorization": "Bearer wrong"}
        assert requests.put(url, data=b"{}", headers=wrong, timeout=5).status_code == 401
        ok = {"Authorization": secret}
        assert requests.put(url, data=b"not json", headers=ok, timeout=5).status_code == 400
        assert requests.put(url, data=b"[1]", headers=ok, timeout=5).status_code == 400
        # the entry names the device as the service does: its endpoint name on the legacy
        # Connector, its device ID today
        ep = "node-001" if dialect == "legacy" else emulator.device_id("node-001")
        body = json.dumps({"de-registrations": [ep]}).encode()
        assert requests.put(url, data=body, headers=ok, timeout=5).status_code == 204
        assert bridge.registry.get("node-001").state == "offline"  # type: ignore[union-attr]


def test_unreachable_callback_url_stops_start_up(
    broker: MosquittoBroker, emulator: Emulator
) -> None:
    listen, elsewhere = free_port(), free_port()
    settings = bridge_settings(
        emulator,
        broker,
        notification_channel="callback",
        callback_url=f"http://127.0.0.1:{elsewhere}/nobody-listens",
        callback_listen=f"127.0.0.1:{listen}",
    )
    bridge = Bridge(settings).start()
    try:
        with pytest.raises(StartupError, match="BRIDGE_CALLBACK_URL"):
            bridge.wait_ready(15)
    finally:
        bridge.stop()


def test_long_polling_removes_a_callback_left_behind(
    broker: MosquittoBroker, emulator: Emulator, dialect: str
) -> None:
    """The bridge's default channel (the long poll on the legacy Connector, the WebSocket
    today, where a channel of another kind would refuse the registration with 400)
    removes a callback another program left registered, and notifications flow on it."""
    port = free_port()
    leftover = CallbackReceiver(lambda body: True, "s", "127.0.0.1", port).start()
    try:
        c = connector(emulator.token, emulator.url)
        r = c.putCallback(f"http://127.0.0.1:{port}/old", {"Authorization": "Bearer s"})
        assert not r.error, r.error
        assert emulator.core.callback is not None
        with running_bridge(bridge_settings(emulator, broker)) as bridge:
            assert emulator.core.callback is None
            with user(broker, "5", DIMMER) as u:
                emulator.set_value("light-001", "/3311/0/5851", "71")
                u.wait_topic(DIMMER, payload=b"71")
            client = bridge.connector_side.client
            if dialect == "legacy":
                assert client.longPollStats()["pulls"] >= 1
            else:
                assert client.longPollStats()["pulls"] == 0
                stats = client.websocketStats()
                assert stats["state"] == "connected" and stats["messages"] >= 1
        c.close()
    finally:
        leftover.stop()
