"""The broker's Receive Maximum is a hard limit on what the bridge keeps in flight.

An MQTT 5 broker tells each client in CONNACK how many QoS 1/2 PUBLISH packets it may
have unacknowledged (Mosquitto: ``max_inflight_messages``, 20 unless configured); a
client that sends more breaks the protocol, and a strict broker disconnects it. These
tests put a tap (:mod:`tests.support.mqtt_tap`) between the bridge and a real Mosquitto
that allows 5, and count what was outstanding on the wire: while values stream, and when
the bridge resends what it held after a connection was lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from bridge.simulator import Emulator
from tests.support.bridge_harness import bridge_settings, running_bridge, user
from tests.support.broker import MosquittoBroker
from tests.support.clients import wait_until
from tests.support.mqtt_tap import MqttTap

pytestmark = pytest.mark.both_dialects

ALLOWED = 5
STREAM = "connector/burst-ep/1/0/1"
RESOURCES = [{"path": "/1/0/1", "rt": "x", "ct": "text/plain", "obs": True,
              "value": "0", "drift": 0.0, "kind": "int"}]  # fmt: skip


@pytest.fixture
def strict_broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker(extra_config=f"max_inflight_messages {ALLOWED}\n") as b:
        yield b


def test_the_bridge_keeps_no_more_in_flight_than_the_broker_allows(
    strict_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.mqtt")
    with (
        Emulator(token="t", pull_timeout=1.0, drift=False) as emu,
        MqttTap(strict_broker.port) as tap,
    ):
        settings = bridge_settings(emu, strict_broker, mqtt_port=tap.port, mqtt_max_inflight=100)
        with running_bridge(settings) as bridge, user(strict_broker, "5", STREAM) as u:
            assert bridge.mqtt.inflight_limit == ALLOWED
            emu.register("burst-ep", ept="Burst", resources=RESOURCES)
            u.wait_topic(STREAM, payload=b"0")
            first = emu.counters()["emitted_notifications"]
            n = emu.burst(3000, ep="burst-ep", path="/1/0/1", size=6)
            last = f"{first + n - 1:06d}".encode()
            u.wait_for(lambda m: m.payload == last, timeout=30)
    assert len(tap.most_in_flight()) == 1
    assert tap.most_in_flight()[0] == ALLOWED, "up to the broker's limit, and no more"
    assert "Receive Maximum 5" in caplog.text


def test_after_a_lost_connection_the_resent_messages_respect_the_limit(
    strict_broker: MosquittoBroker,
) -> None:
    """paho resends everything it held at a reconnect, as one burst, unless told better."""
    with (
        Emulator(token="t", pull_timeout=1.0, drift=False) as emu,
        MqttTap(strict_broker.port) as tap,
    ):
        settings = bridge_settings(emu, strict_broker, mqtt_port=tap.port, mqtt_max_inflight=100)
        with running_bridge(settings) as bridge, user(strict_broker, "5", STREAM) as u:
            emu.register("burst-ep", ept="Burst", resources=RESOURCES)
            u.wait_topic(STREAM, payload=b"0")
            first = emu.counters()["emitted_notifications"]
            n = emu.burst(6_000, ep="burst-ep", path="/1/0/1", size=6)
            # Cut the connection while paho holds a backlog.
            assert wait_until(lambda: bridge.mqtt._ledger.unacknowledged() >= 300, 20)
            tap.cut()
            assert wait_until(lambda: len(tap.most_in_flight()) >= 2, 20), "no reconnect"
            last = f"{first + n - 1:06d}".encode()
            u.wait_for(lambda m: m.payload == last, timeout=60)
            # A marker after the burst, on the same path: once it is here, whatever the
            # bridge resent before it is here too.
            marker = f"{emu.counters()['emitted_notifications']:06d}".encode()
            emu.burst(1, ep="burst-ep", path="/1/0/1", size=6)
            u.wait_for(lambda m: m.payload == marker, timeout=60)
            got = {m.payload for m in u.on(STREAM)}
    sent = {f"{first + k:06d}".encode() for k in range(n)}
    assert sent <= got, f"{len(sent - got)} values lost"
    before, after = tap.most_in_flight()[:2]
    assert before <= ALLOWED and after <= ALLOWED, tap.most_in_flight()
    assert tap.publishes()[1] >= 300, "the reconnect resent the backlog"


def test_without_a_receive_maximum_the_setting_is_the_limit(broker: MosquittoBroker) -> None:
    """The test broker sets no limit (``max_inflight_messages 0``): CONNACK has no
    Receive Maximum, which means 65,535, so ``BRIDGE_MQTT_MAX_INFLIGHT`` decides."""
    with (
        Emulator(token="t", pull_timeout=1.0, drift=False) as emu,
        running_bridge(bridge_settings(emu, broker, mqtt_max_inflight=37)) as bridge,
    ):
        assert bridge.mqtt.inflight_limit == 37


def test_mqtt_3_1_1_has_no_receive_maximum(strict_broker: MosquittoBroker) -> None:
    settings = {"mqtt_max_inflight": 37, "mqtt_protocol": "3.1.1"}
    with (
        Emulator(token="t", pull_timeout=1.0, drift=False) as emu,
        running_bridge(bridge_settings(emu, strict_broker, **settings)) as bridge,
    ):
        assert bridge.mqtt.inflight_limit == 37
