"""A real Home Assistant (tests/support/home_assistant.py) discovers a sensor over MQTT.

Smoke test of the Home Assistant harness: Mosquitto, Home Assistant with its MQTT
integration from a config entry, one retained discovery config and a retained state from
a plain paho client; Home Assistant must show the sensor with its device class, unit,
state and device, publish its birth message, and log no warning from its MQTT code.
Skipped with the reason when ``./dev setup`` could not install Home Assistant.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support.broker import MosquittoBroker
from tests.support.home_assistant import HomeAssistant, find_environment, skip_reason
from tests.support.mqtt_user import MqttUser

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_environment() is None, reason=skip_reason() or "no Home Assistant"),
]

UNIQUE_ID = "cb-smoke-node-temperature"
STATE_TOPIC = "cb-smoke/node/temperature"
CONFIG = {
    "name": "Temperature",
    "unique_id": UNIQUE_ID,
    "state_topic": STATE_TOPIC,
    "device_class": "temperature",
    "unit_of_measurement": "°C",
    "state_class": "measurement",
    "device": {
        "identifiers": ["cb-smoke-node"],
        "name": "Smoke node",
        "manufacturer": "connector-bridge tests",
        "model": "smoke",
        "sw_version": "1.0",
    },
}


def test_home_assistant_discovers_a_sensor(tmp_path):
    began = time.monotonic()
    with MosquittoBroker() as broker:
        watcher = MqttUser(broker.port).subscribe("homeassistant/status")
        try:
            with HomeAssistant(broker.port, config_dir=tmp_path / "ha") as ha:
                print(  # shown with -rP: how long a Home Assistant takes here
                    f"Home Assistant {ha.version} on Python {ha.info['python']}: booted in "
                    f"{ha.info['boot_seconds']:.2f} s, ready {ha.start_seconds:.2f} s after start"
                )
                publisher = MqttUser(broker.port)
                try:
                    topic = "homeassistant/sensor/cb-smoke-node/temperature/config"
                    publisher.publish(topic, json.dumps(CONFIG), retain=True)
                    publisher.publish(STATE_TOPIC, "21.5", retain=True)
                finally:
                    publisher.close()

                def sensor(snapshot):
                    found = [e for e in snapshot["entities"] if e["unique_id"] == UNIQUE_ID]
                    return snapshot if found and found[0]["state"] == "21.5" else None

                snapshot = ha.wait_for(sensor, timeout=30, what="the sensor with state 21.5")
                (entity,) = [e for e in snapshot["entities"] if e["unique_id"] == UNIQUE_ID]
                assert entity["domain"] == "sensor"
                assert entity["entity_id"].startswith("sensor.")
                assert entity["original_device_class"] == "temperature"
                assert entity["unit_of_measurement"] == "°C"
                assert entity["attributes"]["device_class"] == "temperature"
                assert entity["attributes"]["unit_of_measurement"] == "°C"
                assert entity["attributes"]["state_class"] == "measurement"
                (device,) = [d for d in snapshot["devices"] if d["id"] == entity["device_id"]]
                assert device["identifiers"] == [["mqtt", "cb-smoke-node"]]
                assert device["name"] == "Smoke node"
                assert device["manufacturer"] == "connector-bridge tests"
                assert device["model"] == "smoke"
                assert device["sw_version"] == "1.0"

                # HA's default birth message, sent once it has started.
                watcher.wait_topic("homeassistant/status", timeout=30, payload=b"online")
                mqtt_records = [
                    w
                    for w in ha.warnings()
                    if w["logger"] == "homeassistant.components.mqtt"
                    or w["logger"].startswith("homeassistant.components.mqtt.")
                ]
                assert mqtt_records == []
                states = [event[:2] for event in ha.events()["states"]]
                assert [entity["entity_id"], "21.5"] in states
        finally:
            watcher.close()
    print(f"whole test: {time.monotonic() - began:.2f} s")
