"""The MQTT link on plain paho: what runs on a paho version the speed-ups were not written
for (bridge/downstream/paho_client.py's ``PlainClient``), forced here by constructing it
explicitly, through a real Mosquitto.

Plain paho has no overrides and no private access; the link still streams, delivers
commands with manual acks, buffers while the broker is away and resends in order. What it
gives up (no Receive Maximum, no count of unacknowledged messages) is checked too.
"""

from __future__ import annotations

import inspect
import logging
import re
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bridge.downstream import paho_client
from bridge.downstream.link import Inbound, MqttLink
from bridge.downstream.paho_client import FastClient, PlainClient
from bridge.service.settings import Settings, load_settings
from tests.support.broker import MosquittoBroker
from tests.support.clients import wait_until
from tests.support.mqtt_user import MqttUser


def link_settings(port: int, **kw: object) -> Settings:
    values = {"connector_url": "http://127.0.0.1:1", "connector_token": "t",
              "mqtt_host": "127.0.0.1", "mqtt_port": port,
              "mqtt_client_id": f"plain-{uuid.uuid4().hex[:8]}", **kw}  # fmt: skip
    return load_settings(None, env_file=None, overrides=values)


def test_the_version_check_picks_one_client() -> None:
    expected = FastClient if paho_client.SPEEDUPS else PlainClient
    assert paho_client.Client is expected
    lean = paho_client.lean_publish_properties, paho_client.plain_publish_properties
    assert paho_client.publish_properties is lean[0 if paho_client.SPEEDUPS else 1]


def test_the_plain_client_overrides_nothing_and_touches_nothing_private() -> None:
    own = {name for name in vars(PlainClient) if not name.startswith("__")}
    assert own == {"speedups", "unsent_packets", "unacknowledged", "limit_in_flight"}
    assert not own & set(dir(mqtt.Client)), "a paho method overridden"
    source = inspect.getsource(PlainClient)
    assert not re.search(r"\._[a-z]", source), "private paho state touched"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_link_on_plain_paho_streams_answers_and_says_online_and_offline(
    broker: MosquittoBroker, protocol: str
) -> None:
    link = MqttLink(
        link_settings(broker.port, mqtt_protocol=protocol, mqtt_max_queued=50),
        state_topic="plain/$bridge/state",
        manual_ack=True,
        client_class=PlainClient,
    )
    assert type(link._client) is PlainClient
    commands: list[Inbound] = []

    def on_command(msg: Inbound) -> None:
        commands.append(msg)
        link.publish("plain/reply", msg.payload, qos=1)  # from paho's thread
        msg.ack()

    link.subscribe("plain/cmd/#", on_command, qos=1, manual_ack=True)
    watcher = MqttUser(broker.port, protocol).subscribe("plain/#")
    try:
        link.start()
        assert link.wait_connected(10)
        watcher.wait_topic("plain/$bridge/state", payload=b"online")
        assert link.subscribed_event.wait(10)
        n = 2000  # well past mqtt_max_queued: publishers wait for room
        for i in range(n):
            link.publish(f"plain/v/{i % 3}", str(i).encode(), qos=i % 2)
        watcher.wait_for(lambda m: m.payload == str(n - 1).encode(), timeout=30)
        assert link.drain(10)
        got = [int(m.payload) for m in watcher.messages if m.topic.startswith("plain/v/")]
        assert got == list(range(n)), "everything, in order"
        assert link.stats["published"] == n
        watcher.publish("plain/cmd/lamp", b"on", qos=1)
        watcher.wait_topic("plain/reply", payload=b"on")
        assert [c.payload for c in commands] == [b"on"]
        assert wait_until(lambda: link.held_count() == 0, 10), "the command was acknowledged"
        link.stop()
        watcher.wait_topic("plain/$bridge/state", payload=b"offline")
    finally:
        link.stop()
        watcher.close()


def test_the_link_on_plain_paho_buffers_while_the_broker_is_away(broker: MosquittoBroker) -> None:
    # A persistent subscriber: the broker keeps what arrives while it is away.
    sub_id = f"sub-{uuid.uuid4().hex[:8]}"
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=sub_id, clean_session=False,
                      protocol=mqtt.MQTTv311)  # fmt: skip
    subscribed = threading.Event()
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    sub.subscribe("buf/#", qos=1)
    assert subscribed.wait(10)
    sub.disconnect()
    sub.loop_stop()

    link = MqttLink(
        link_settings(broker.port, mqtt_buffer=50), state_topic="buf-state",
        client_class=PlainClient,
    )  # fmt: skip
    link.start()
    try:
        assert link.wait_connected(10)
        for i in range(10):
            link.publish("buf/x", str(i).encode(), qos=1)
        assert link.drain(10)
        broker.stop()
        assert wait_until(lambda: not link.connected, 10)
        for i in range(10, 30):
            link.publish("buf/x", str(i).encode(), qos=1)
        assert link.outbox_size() == 20
        broker.start()
        assert wait_until(lambda: link.stats["connects"] == 2, 30), "no reconnect"
        assert wait_until(lambda: link.outbox_size() == 0, 10)
        assert link.drain(10)
    finally:
        link.stop()

    got: list[bytes] = []
    done = threading.Event()

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        if msg.payload == b"29":
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=sub_id, clean_session=False,
                      protocol=mqtt.MQTTv311)  # fmt: skip
    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    try:
        assert done.wait(10), got
    finally:
        sub.disconnect()
        sub.loop_stop()
    # Plain paho's drain cannot wait for PUBACKs: what was in flight when the broker went
    # away may come twice (QoS 1: at least once); first copies in order, nothing lost.
    assert list(dict.fromkeys(got)) == [str(i).encode() for i in range(30)]
    assert got[-1] == b"29" and len(got) <= 30 + link.inflight_limit
    assert link.stats["dropped_buffer_full"] == 0


def test_plain_paho_cannot_apply_the_broker_s_receive_maximum_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.mqtt")
    with MosquittoBroker(extra_config="max_inflight_messages 5\n") as strict:
        link = MqttLink(
            link_settings(strict.port, mqtt_max_inflight=7), state_topic="rm-state",
            client_class=PlainClient,
        )  # fmt: skip
        link.start()
        try:
            assert link.wait_connected(10)
            assert link.inflight_limit == 7  # the setting: paho's own limit
            link.publish("rm/x", b"1", qos=1)
            assert link.drain(10)
        finally:
            link.stop()
    assert "Receive Maximum 5 is below BRIDGE_MQTT_MAX_INFLIGHT (7)" in caplog.text
