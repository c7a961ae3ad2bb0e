"""A real Home Assistant, with its own MQTT integration, against the real bridge.

One stack for the module: Mosquitto, the emulator (default scenario, no drift), the bridge
and Home Assistant (tests/support/home_assistant.py: its own interpreter, set up by
``./dev setup``). What Home Assistant makes of the bridge's discovery configs is read from
its own registries and state machine, and what it sends is checked at the emulator:

- every config becomes an entity of the config's domain, device class and unit, on a
  device per endpoint that carries what the device says (serial number included);
- states follow the value topics; availability follows ``$bridge/state`` and each
  ``$state``;
- the light (on, off, brightness), the switch and the Reboot button reach the device;
- a reboot keeps the user's setup: area, names and a renamed entity id;
- Home Assistant's log has no warning from its MQTT code.

The tests run in file order and share the stack; each leaves the fleet registered.
Skipped with the reason where no Home Assistant could be installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.extensions.homeassistant.discovery import bridge_node_id
from bridge.service.controller import Bridge
from bridge.service.settings import Settings
from bridge.simulator import Emulator
from tests.support.bridge_harness import all_retained, bridge_settings, running_bridge, user
from tests.support.broker import MosquittoBroker
from tests.support.home_assistant import HomeAssistant, find_environment, skip_reason
from tests.support.mqtt_user import MqttUser

pytestmark = [
    pytest.mark.both_dialects,
    pytest.mark.slow,
    pytest.mark.skipif(find_environment() is None, reason=skip_reason() or "no Home Assistant"),
]

WAIT = 30.0
UNAVAILABLE = "unavailable"
AWAKE = ("node-001", "node-002", "light-001", "multi-001")  # sleeper-001 sleeps


@dataclasses.dataclass
class Stack:
    broker: MosquittoBroker
    emulator: Emulator
    ha: HomeAssistant
    user: MqttUser  # watches connector/#
    settings: Settings
    dialect: str
    bridge: Bridge | None = None
    configs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    _running: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)

    def start_bridge(self) -> Bridge:
        self.bridge = self._running.enter_context(running_bridge(self.settings))
        return self.bridge

    def stop_bridge(self) -> None:
        self._running.close()
        self.bridge = None

    def node(self, endpoint: str) -> str:
        """An endpoint's device identifier and unique_id prefix: from its endpoint name on
        the legacy Connector, from its device ID today (so that it survives a rename)."""
        key = endpoint if self.dialect == "legacy" else self.emulator.device_id(endpoint)
        return f"connector__{key}"

    def uid(self, endpoint: str, path_token: str) -> str:
        return f"{self.node(endpoint)}__{path_token}"

    def device_of(self, snapshot: dict[str, Any], endpoint: str | None) -> dict[str, Any]:
        """The device of an endpoint in Home Assistant's registry (None: the bridge's own)."""
        ident = ["mqtt", bridge_node_id() if endpoint is None else self.node(endpoint)]
        found = [d for d in snapshot["devices"] if ident in d["identifiers"]]
        assert len(found) == 1, (endpoint, [d["identifiers"] for d in snapshot["devices"]])
        return found[0]

    def entity(self, unique_id: str, snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
        snap = snapshot or self.ha.snapshot()
        found = [e for e in snap["entities"] if e["unique_id"] == unique_id]
        assert len(found) == 1, (unique_id, [e["unique_id"] for e in snap["entities"]])
        return found[0]

    def wait_state(self, unique_id: str, wanted: Any, what: str) -> dict[str, Any]:
        """Wait until the entity's state is ``wanted`` (a value, or a predicate)."""

        def check(snap: dict[str, Any]) -> dict[str, Any] | None:
            found = [e for e in snap["entities"] if e["unique_id"] == unique_id]
            if not found:
                return None
            state = found[0]["state"]
            ok = wanted(state) if callable(wanted) else state == wanted
            return found[0] if ok else None

        return self.ha.wait_for(check, WAIT, what)


def next_index(u: MqttUser, since: int, topic: str, text: str) -> int:
    """The index of the first message after ``since`` on ``topic`` saying ``text`` (waits)."""

    def match(m: Any) -> bool:
        return bool(m.topic == topic and m.text == text)

    before = sum(1 for m in u.messages[:since] if match(m))
    u.wait_for(match, WAIT, count=before + 1)
    return next(i for i, m in enumerate(u.messages) if i >= since and match(m))


def available(state: str | None) -> bool:
    return state is not None and state != UNAVAILABLE


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, dialect: str) -> Iterator[Stack]:
    config_dir = Path(tmp_path_factory.mktemp("home-assistant"))
    with (
        MosquittoBroker() as broker,
        Emulator(token="test-token", pull_timeout=1.0, drift=False) as emulator,
        HomeAssistant(broker.port, config_dir=config_dir) as ha,
        user(broker, "5", "connector/#") as u,
    ):
        s = Stack(broker, emulator, ha, u, bridge_settings(emulator, broker), dialect)
        s.start_bridge()
        try:
            yield s
        finally:
            s.stop_bridge()


def test_every_config_becomes_an_entity_of_its_domain_class_and_unit(stack: Stack) -> None:
    began = time.monotonic()
    names = set(stack.emulator.endpoints())
    # Every config the bridge holds on the broker, once each endpoint's are there.
    end = time.monotonic() + WAIT
    while True:
        held = {t: json.loads(p) for t, p in all_retained(stack.broker, "homeassistant/#").items()}
        devices = {c["device"]["identifiers"][0] for c in held.values()}
        if {stack.node(n) for n in names} <= devices:
            break
        assert time.monotonic() < end, sorted(devices)
        time.sleep(0.2)
    stack.configs = {c["unique_id"]: {**c, "component": t.split("/")[1]} for t, c in held.items()}
    # the awake devices' configs carry what the device says (read before they go out)
    for name in AWAKE:
        config = stack.configs[stack.uid(name, "3_0_4")]
        assert config["device"].get("serial_number"), config["device"]

    def all_entities(snap: dict[str, Any]) -> dict[str, Any] | None:
        got = {e["unique_id"] for e in snap["entities"]}
        return snap if got >= set(stack.configs) else None

    snapshot = stack.ha.wait_for(all_entities, WAIT, f"{len(stack.configs)} entities")
    entities = {e["unique_id"]: e for e in snapshot["entities"]}
    assert set(entities) == set(stack.configs)
    for unique_id, config in stack.configs.items():
        e = entities[unique_id]
        assert e["domain"] == config["component"], unique_id
        assert e["original_device_class"] == config.get("device_class"), unique_id
        assert e["unit_of_measurement"] == config.get("unit_of_measurement"), unique_id
        assert e["disabled_by"] is None or config.get("enabled_by_default") is False, unique_id
    domains = {e["domain"] for e in entities.values()}
    assert domains == {"sensor", "binary_sensor", "switch", "light", "button"}

    # one device per endpoint, via the bridge's own device, with the device's own fields
    bridge_device = stack.device_of(snapshot, None)
    for name in AWAKE:
        device = stack.device_of(snapshot, name)
        emu = stack.emulator
        assert device["name"] == name
        assert device["via_device_id"] == bridge_device["id"]
        assert device["manufacturer"] == emu.get_value(name, "/3/0/0").decode()
        assert device["model"] == emu.get_value(name, "/3/0/1").decode()
        assert device["serial_number"] == emu.get_value(name, "/3/0/2").decode()
        assert device["sw_version"] == emu.get_value(name, "/3/0/3").decode()
    print(
        f"Home Assistant {stack.ha.version}: {len(entities)} entities from "
        f"{len(stack.configs)} configs in {time.monotonic() - began:.1f} s"
    )


def test_states_follow_the_value_topics(stack: Stack) -> None:
    temperature = stack.uid("node-001", "3303_0_5700")
    presence = stack.uid("multi-001", "3200_0_5500")
    for value in ("23.5", "24.0"):
        stack.emulator.set_value("node-001", "/3303/0/5700", value)
        stack.wait_state(temperature, value, f"temperature {value}")
    for value, shown in (("1", "on"), ("0", "off")):
        stack.emulator.set_value("multi-001", "/3200/0/5500", value)
        stack.wait_state(presence, shown, f"digital input {shown}")
    entity = stack.entity(temperature)
    assert entity["attributes"]["unit_of_measurement"] == "°C"


def test_availability_follows_the_bridge_and_each_endpoint(stack: Stack) -> None:
    humidity = stack.uid("multi-001", "3304_0_5700")
    temperature = stack.uid("node-001", "3303_0_5700")
    stack.wait_state(humidity, available, "multi-001 available")
    stack.emulator.expire("multi-001")
    stack.wait_state(humidity, UNAVAILABLE, "multi-001 unavailable once expired")
    assert available(stack.entity(temperature)["state"])  # the others stay
    stack.emulator.register("multi-001", ept="MultiSensor")
    stack.wait_state(humidity, available, "multi-001 available again")

    # the bridge stops: every endpoint entity is unavailable (and the bridge's own
    # connectivity sensor off); it starts again: they come back
    connection = stack.entity(f"{bridge_node_id()}__state")["unique_id"]
    stack.wait_state(connection, "on", "the bridge connected")
    stack.stop_bridge()

    def none_available(snap: dict[str, Any]) -> bool:
        return all(
            e["state"] == UNAVAILABLE for e in snap["entities"] if e["unique_id"] != connection
        )

    stack.ha.wait_for(none_available, WAIT, "every entity unavailable without the bridge")
    assert stack.entity(connection)["state"] == "off"
    stack.start_bridge()
    stack.wait_state(connection, "on", "the bridge connected again")
    stack.wait_state(temperature, available, "node-001 available with the bridge back")
    stack.wait_state(humidity, available, "multi-001 available with the bridge back")


def test_light_switch_and_button_reach_the_device(stack: Stack) -> None:
    emu, ha = stack.emulator, stack.ha
    light = stack.entity(stack.uid("light-001", "3311_0"))
    switch = stack.entity(stack.uid("light-001", "3201_0_5550"))

    def device_has(path: str, value: bytes) -> None:
        end = time.monotonic() + WAIT
        while emu.get_value("light-001", path) != value:
            assert time.monotonic() < end, (path, emu.get_value("light-001", path), value)
            time.sleep(0.05)

    ha.call("light", "turn_on", entity_id=light["entity_id"], brightness_pct=40)
    device_has("/3311/0/5850", b"1")
    device_has("/3311/0/5851", b"40")
    on = stack.wait_state(light["unique_id"], "on", "the light on")
    assert on["attributes"]["brightness"] == round(40 * 255 / 100)
    ha.call("light", "turn_off", entity_id=light["entity_id"])
    device_has("/3311/0/5850", b"0")
    stack.wait_state(light["unique_id"], "off", "the light off")

    ha.call("switch", "turn_on", entity_id=switch["entity_id"])
    device_has("/3201/0/5550", b"1")
    stack.wait_state(switch["unique_id"], "on", "the switch on")
    ha.call("switch", "turn_off", entity_id=switch["entity_id"])
    device_has("/3201/0/5550", b"0")
    stack.wait_state(switch["unique_id"], "off", "the switch off")

    # the Reboot button: the device de-registers and registers again
    button = stack.entity(stack.uid("light-001", "3_0_4"))
    since = len(stack.user.messages)
    ha.call("button", "press", entity_id=button["entity_id"])
    offline = next_index(stack.user, since, "connector/light-001/$state", "offline")
    next_index(stack.user, offline, "connector/light-001/$state", "online")
    stack.wait_state(light["unique_id"], available, "the light back after its reboot")


def test_a_reboot_keeps_area_names_and_a_renamed_entity_id(stack: Stack) -> None:
    """The user puts node-002 in an area, names it and renames its temperature entity; the
    device reboots (its Reboot button, pressed in Home Assistant); all of it stays, and
    the renamed entity follows the device's values again."""
    ha, emu = stack.ha, stack.emulator
    temperature = stack.uid("node-002", "3303_0_5700")
    before = ha.snapshot()
    device = stack.device_of(before, "node-002")
    area = ha.create_area("Lab")
    ha.update_device(device["id"], area_id=area, name_by_user="Lab sensor")
    old_id = stack.entity(temperature, before)["entity_id"]
    renamed = ha.update_entity(old_id, new_entity_id="sensor.lab_temperature", name="Lab temp")
    assert renamed["entity_id"] == "sensor.lab_temperature"
    stack.ha.wait_for(
        lambda snap: any(
            e["entity_id"] == "sensor.lab_temperature" and available(e["state"])
            for e in snap["entities"]
        ),
        WAIT,
        "the renamed entity with a state",
    )
    button = stack.entity(stack.uid("node-002", "3_0_4"), before)
    seen = ha.events()
    mark = len(seen["states"]), len(seen["registry"])

    since = len(stack.user.messages)
    ha.call("button", "press", entity_id=button["entity_id"])
    offline = next_index(stack.user, since, "connector/node-002/$state", "offline")
    next_index(stack.user, offline, "connector/node-002/$state", "online")
    emu.set_value("node-002", "/3303/0/5700", "19.5")
    stack.wait_state(temperature, "19.5", "the renamed entity follows values after the reboot")

    events = ha.events()
    went = [e[1] for e in events["states"][mark[0] :] if e[0] == "sensor.lab_temperature"]
    assert UNAVAILABLE in went and went[-1] == "19.5", went  # Home Assistant saw it go
    registry = events["registry"][mark[1] :]
    assert not [r for r in registry if r[0] in ("remove", "create")], registry

    after = ha.snapshot()
    entity = stack.entity(temperature, after)
    assert entity["entity_id"] == "sensor.lab_temperature"
    assert entity["name"] == "Lab temp"
    assert not [e for e in after["entities"] if e["entity_id"] == old_id]
    kept = stack.device_of(after, "node-002")
    assert kept["id"] == device["id"]
    assert (kept["area_id"], kept["name_by_user"]) == (area, "Lab sensor")
    assert after["areas"][area] == "Lab"
    assert len(after["entities"]) == len(before["entities"])
    assert len(after["devices"]) == len(before["devices"])


def mqtt_warnings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Warnings about MQTT: from the integration's loggers or naming it. Left out: Home
    Assistant's report on its own code when discovery messages arrive while its MQTT
    integration is still setting up (``async_forward_entry_setups`` from ``frame``), which
    is about no config and happens whenever retained configs meet a starting integration."""
    return [
        w
        for w in records
        if (
            w["logger"].startswith("homeassistant.components.mqtt")
            or "mqtt" in w["message"].lower()
        )
        and not (
            w["logger"] == "homeassistant.helpers.frame"
            and "calls async_forward_entry_setups for integration mqtt" in w["message"]
        )
    ]


def test_no_warning_from_home_assistants_mqtt_code(stack: Stack) -> None:
    """Last: covers everything the tests above made Home Assistant do."""
    records = stack.ha.warnings()
    assert mqtt_warnings(records) == []
    assert mqtt_warnings([{"logger": "homeassistant.components.mqtt.discovery", "message": "x"}])
