"""The bridge on today's service: the dialect found by one probe, the channel chosen by
the dialect (and refused when the dialect has none of that kind), a channel of another
kind taken over as the settings say, devices shown by endpoint name or device ID."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import pytest
import requests

from bridge.extensions.homeassistant.discovery import node_id
from bridge.service.controller import Bridge
from bridge.service.settings import SettingsError
from bridge.simulator import Emulator
from bridge.upstream.side import StartupError
from tests.support.bridge_harness import bridge_settings, command, running_bridge, user
from tests.support.broker import MosquittoBroker
from tests.support.wire import RecordingServer, Reply

LIGHT = "connector/light-001/3311/0/5850"


@pytest.fixture
def current() -> Iterator[Emulator]:
    with Emulator(api="current", drift=False) as emu:
        yield emu


def start_fails(bridge: Bridge) -> str:
    bridge.start()
    try:
        with pytest.raises(StartupError) as info:
            bridge.wait_ready(15.0)
        return str(info.value)
    finally:
        bridge.stop()


@pytest.mark.parametrize("api", ["legacy", "current"])
def test_auto_finds_the_dialect_with_one_probe_and_says_so(
    broker: MosquittoBroker, api: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.connector_side")
    with Emulator(api=api, drift=False) as emu:  # type: ignore[arg-type]
        before = emu.counters()["requests"]
        with running_bridge(bridge_settings(emu, broker)) as bridge:
            assert bridge.ctx.info["connector_api"] == api
            assert bridge.ctx.info["channel"] == ("websocket" if api == "current" else "longpoll")
            assert emu.counters()["requests"] > before
        found = "current Device Management" if api == "current" else "legacy Connector"
        assert f"speaks the {found} API (BRIDGE_CONNECTOR_API=auto" in caplog.text


def test_current_against_a_legacy_connector_stops_start_up(
    broker: MosquittoBroker, emulator: Emulator
) -> None:
    bridge = Bridge(bridge_settings(emulator, broker, connector_api="current"))
    text = start_fails(bridge)
    assert "BRIDGE_CONNECTOR_API=current" in text and "/v3/devices" in text


def test_a_channel_the_dialect_lacks_names_both_settings(
    broker: MosquittoBroker, current: Emulator, emulator: Emulator
) -> None:
    # Known at once when the dialect is set ...
    with pytest.raises(SettingsError) as info:
        bridge_settings(current, broker, connector_api="current", notification_channel="longpoll")
    assert "BRIDGE_NOTIFICATION_CHANNEL" in str(info.value)
    assert "BRIDGE_CONNECTOR_API" in str(info.value)
    # ... and at start-up when the probe finds it.
    for emu, channel in ((current, "longpoll"), (emulator, "websocket")):
        text = start_fails(Bridge(bridge_settings(emu, broker, notification_channel=channel)))
        assert f"BRIDGE_NOTIFICATION_CHANNEL={channel} is not offered" in text
        assert "BRIDGE_CONNECTOR_API=auto" in text


def _register_callback(emu: Emulator, url: str) -> None:
    r = requests.put(
        emu.url + "/v2/notification/callback",
        json={"url": url},
        headers={"Authorization": f"Bearer {emu.token}"},
        timeout=5,
    )
    assert r.status_code in (200, 204), r.text


def _channel(emu: Emulator) -> requests.Response:
    return requests.get(
        emu.url + "/v2/notification/channel",
        headers={"Authorization": f"Bearer {emu.token}"},
        timeout=5,
    )


def test_a_callback_left_on_the_key_is_replaced_and_logged(
    broker: MosquittoBroker, current: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.connector_side")
    with RecordingServer(lambda req: Reply(204)) as hook:
        _register_callback(current, hook.url + "/hook")
        assert _channel(current).json() == {"delivery_mechanism": "CALLBACK"}
        with running_bridge(bridge_settings(current, broker)), user(broker, "5") as u:
            assert _channel(current).json() == {"delivery_mechanism": "WEB_SOCKET"}
            u.subscribe(f"{LIGHT}/set/reply")
            assert command(u, f"{LIGHT}/set", b"1", transaction="t")["ok"]
    assert "found a CALLBACK notification channel" in caplog.text
    assert "BRIDGE_CHANNEL_TAKEOVER=replace" in caplog.text


def test_a_callback_left_on_the_key_stops_start_up_when_told_to(
    broker: MosquittoBroker, current: Emulator
) -> None:
    with RecordingServer(lambda req: Reply(204)) as hook:
        _register_callback(current, hook.url + "/hook")
        text = start_fails(Bridge(bridge_settings(current, broker, channel_takeover="fail")))
        assert "CALLBACK" in text and "BRIDGE_CHANNEL_TAKEOVER=replace" in text
        assert _channel(current).json() == {"delivery_mechanism": "CALLBACK"}  # left alone


def test_devices_appear_by_endpoint_name_with_their_ids_beside(
    broker: MosquittoBroker, current: Emulator
) -> None:
    light_id = current.device_id("light-001")
    settings = bridge_settings(current, broker)
    with user(broker, "5", "connector/#", "homeassistant/#") as u, running_bridge(settings):
        doc = json.loads(u.wait_topic("connector/light-001/$resources").payload)
        assert doc["device_id"] == light_id and doc["endpoint_name"] == "light-001"
        u.wait_topic("connector/light-001/$state", payload=b"online")
        reply = command(u, f"{LIGHT}/set", b"1", transaction="by-name")
        assert reply["ok"] and current.get_value("light-001", "/3311/0/5850") == b"1"
        u.wait_topic(LIGHT, payload=b"1")
        node = node_id(light_id, "connector")
        config = u.wait_for(lambda m: f"/{node}/" in m.topic and m.topic.endswith("config"))
        assert config[0].json()["unique_id"].startswith(node + "__")
        assert not [m for m in u.messages if f"connector/{light_id}/" in m.topic]


def test_devices_appear_by_device_id_when_told_to(
    broker: MosquittoBroker, current: Emulator
) -> None:
    light_id = current.device_id("light-001")
    settings = bridge_settings(current, broker, topic_endpoint="id")
    with user(broker, "5", "connector/#") as u, running_bridge(settings):
        doc = json.loads(u.wait_topic(f"connector/{light_id}/$resources").payload)
        assert doc["endpoint_name"] == "light-001"
        reply = command(u, f"connector/{light_id}/3311/0/5850/set", b"1", transaction="id")
        assert reply["ok"] and current.get_value("light-001", "/3311/0/5850") == b"1"
        assert not [m for m in u.messages if m.topic.startswith("connector/light-001/")]


def test_a_second_device_with_a_name_already_taken_gets_its_device_id(
    broker: MosquittoBroker, current: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Two registered devices never share a topic: the first keeps the name, the later
    one (a device enrolled again, same certificate name) is published under its ID."""
    caplog.set_level(logging.WARNING, logger="bridge.identities")
    settings = bridge_settings(current, broker)
    with user(broker, "5", "connector/#") as u, running_bridge(settings) as bridge:
        u.wait_topic("connector/light-001/$state", payload=b"online")
        current.register("light-001-again", ept="Light", endpoint_name="light-001")
        twin = current.device_id("light-001-again")
        doc = json.loads(u.wait_topic(f"connector/{twin}/$resources").payload)
        assert doc["endpoint_name"] == "light-001" and doc["device_id"] == twin
        first = json.loads(u.wait_topic("connector/light-001/$resources").payload)
        assert first["device_id"] == current.device_id("light-001")
        # Each is driven under its own topic, and reaches its own device.
        assert command(u, f"connector/{twin}/3311/0/5850/set", b"1", transaction="twin")["ok"]
        assert current.get_value("light-001-again", "/3311/0/5850") == b"1"
        assert current.get_value("light-001", "/3311/0/5850") == b"0"
        assert command(u, f"{LIGHT}/set", b"1", transaction="first")["ok"]
        assert current.get_value("light-001", "/3311/0/5850") == b"1"
        assert bridge.connector_side.identities.duplicates == 1
    assert f"published under its device ID {twin}" in caplog.text


def test_at_start_up_the_listing_order_decides_who_keeps_the_name(
    broker: MosquittoBroker, current: Emulator
) -> None:
    current.register("light-001-again", ept="Light", endpoint_name="light-001")
    ids = sorted([current.device_id("light-001"), current.device_id("light-001-again")])
    settings = bridge_settings(current, broker)
    with user(broker, "5", "connector/#") as u, running_bridge(settings):
        named = json.loads(u.wait_topic("connector/light-001/$resources").payload)
        other = json.loads(u.wait_topic(f"connector/{ids[1]}/$resources").payload)
        assert named["device_id"] == ids[0]  # /v3/devices lists by device ID
        assert other["endpoint_name"] == "light-001"


def test_status_shows_names_with_device_ids(
    broker: MosquittoBroker,
    current: Emulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bridge.service.status_cli import main as status_main

    for name in [n for n in os.environ if n.startswith("BRIDGE_")]:
        monkeypatch.delenv(name)
    settings = bridge_settings(current, broker, health_interval=0.5, homeassistant=False)
    with user(broker, "5", "connector/#") as u, running_bridge(settings):
        u.wait_for(lambda m: m.topic == "connector/$bridge/health" and m.json()["ready"], 15)
        args = ["--env-file", "", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port)]
        assert status_main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("ENDPOINT"))
    assert lines[header].split()[:3] == ["ENDPOINT", "DEVICE", "ID"]
    rows = {line.split()[0]: line.split() for line in lines[header + 1 :] if line.strip()}
    assert rows["light-001"][1] == current.device_id("light-001")
    connector_line = next(line for line in lines if line.startswith("connector "))
    assert "current API, channel websocket" in connector_line
