"""Home Assistant discovery from the running bridge (real Mosquitto, emulator, bridge).

The emulator runs its default scenario. What the bridge publishes under
``homeassistant/`` is compared, byte for byte, with the configs the pure functions of
:mod:`bridge.extensions.homeassistant.discovery` make from the endpoint's ``$resources``
document and the device-object values the emulator really holds (so the device registry
fields prove that the bridge read them), and every config is checked field by field
against the Home Assistant documentation with :func:`tests.test_homeassistant.check_config`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bridge.downstream.topics import unescape_level
from bridge.extensions.homeassistant.discovery import (
    DEVICE_FIELDS,
    DiscoverySettings,
    bridge_discovery_messages,
    discovery_messages,
    encode_config,
    endpoint_from_resources_document,
)
from bridge.service import controller
from bridge.service.controller import Bridge
from bridge.simulator import Emulator
from bridge.simulator.scenario import Scenario
from tests.reliability_support import Executions
from tests.support.bridge_harness import (
    all_retained,
    bridge_settings,
    command,
    request,
    running_bridge,
    user,
)
from tests.support.broker import MosquittoBroker
from tests.support.clients import wait_until
from tests.support.listening import wait_listening
from tests.support.mqtt_user import MqttUser, Received
from tests.test_homeassistant import check_config, render

pytestmark = pytest.mark.both_dialects

WAIT = 30.0


@dataclasses.dataclass
class Fleet:
    """The running bridge, a user watching everything, and the configs to expect."""

    bridge: Bridge
    user: MqttUser
    documents: dict[str, bytes]  # endpoint -> its $resources document
    expected: dict[str, bytes]  # discovery topic -> config bytes
    queue_mode: list[str]


def expected_configs(
    emu: Emulator, documents: dict[str, bytes], settings: DiscoverySettings
) -> dict[str, bytes]:
    """The configs of every endpoint, made from its ``$resources`` and from the values the
    emulator's devices hold for the device object and the sensors' units."""
    out: dict[str, bytes] = {}
    for name, document in documents.items():
        endpoint = endpoint_from_resources_document(name, document)
        wanted = [
            r.path
            for r in endpoint.resources
            if r.path in DEVICE_FIELDS or r.path.endswith("/5701")
        ]
        values = {path: emu.get_value(name, path).decode() for path in wanted}
        endpoint = dataclasses.replace(endpoint, values=values)
        for topic, config in discovery_messages(endpoint, settings):
            out[topic] = encode_config(config)
    for topic, config in bridge_discovery_messages(settings):
        out[topic] = encode_config(config)
    return out


def wait_after(u: MqttUser, since: int, predicate: Callable[[Received], bool]) -> Received:
    """The first message after index ``since`` that matches ``predicate`` (waits for it)."""
    before = sum(1 for m in u.messages[:since] if predicate(m))
    return u.wait_for(predicate, WAIT, count=before + 1)[before]


def topic_is(topic: str, text: str | None = None) -> Callable[[Received], bool]:
    return lambda m: m.topic == topic and (text is None or m.text == text)


def wait_configs(fleet: Fleet, emu: Emulator, expected: dict[str, bytes], since: int = 0) -> None:
    """Wait until every topic of ``expected`` carried exactly its expected bytes (among the
    messages after index ``since``). Queue-mode devices are woken while waiting, so they
    serve the bridge's reads of their device object."""
    u = fleet.user

    def missing() -> str | None:
        seen = {(m.topic, m.payload) for m in u.messages[since:]}
        absent = [t for t, p in expected.items() if (t, p) not in seen]
        if not absent:
            return None
        latest = {m.topic: m.payload for m in u.messages[since:]}
        detail = {t: latest.get(t, b"<none>")[:300] for t in absent[:3]}
        return f"{len(absent)} config(s) not as expected, e.g. {detail}"

    def wake() -> None:
        for name in fleet.queue_mode:
            emu.wake(name)

    u.wait_nothing_missing(missing, wake, WAIT)


@contextlib.contextmanager
def running_fleet(broker: MosquittoBroker, emulator: Emulator, **overrides: Any) -> Iterator[Fleet]:
    """A bridge with these settings, once every config of the fleet went out."""
    names = set(emulator.endpoints())
    with user(broker, "5", "homeassistant/#", "connector/#") as u:
        settings = bridge_settings(emulator, broker, **overrides)
        with running_bridge(settings) as bridge:
            wait_listening(u)
            documents: dict[str, bytes] = {}

            def resources_missing() -> str | None:
                for m in list(u.messages):
                    if m.topic.endswith("/$resources"):
                        documents[unescape_level(m.topic.split("/")[1])] = m.payload
                return None if set(documents) >= names else f"$resources of {sorted(documents)}"

            u.wait_nothing_missing(resources_missing, timeout=WAIT)
            queue_mode = [n for n, d in documents.items() if json.loads(d)["q"]]
            expected = expected_configs(emulator, documents, DiscoverySettings())
            f = Fleet(bridge, u, documents, expected, queue_mode)
            wait_configs(f, emulator, expected)
            yield f


@pytest.fixture
def fleet(broker: MosquittoBroker, emulator: Emulator) -> Iterator[Fleet]:
    with running_fleet(broker, emulator) as f:
        yield f


def uid(emulator: Emulator, dialect: str, endpoint: str, entity: str) -> str:
    """The ``unique_id`` of an entity: from the endpoint name on the legacy Connector, from
    the device ID on today's service (so that it survives a rename)."""
    key = endpoint if dialect == "legacy" else emulator.device_id(endpoint)
    return f"connector__{key}__{entity}"


def configs_by_endpoint(expected: dict[str, bytes]) -> dict[str, dict[str, dict[str, Any]]]:
    """endpoint name (device name) -> discovery topic -> config."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for topic, payload in expected.items():
        config = json.loads(payload)
        out.setdefault(config["device"]["name"], {})[topic] = config
    return out


# ----------------------------------------------------------------------------- the tests


def test_discovery_topics_hold_valid_configs_for_every_resource_kind(
    broker: MosquittoBroker, emulator: Emulator, fleet: Fleet, dialect: str
) -> None:
    # What the broker holds (retained), not only what went by.
    held = all_retained(broker, "homeassistant/#")
    assert held == fleet.expected

    components: set[str] = set()
    for topic, payload in held.items():
        config = json.loads(payload)
        check_config(topic, config)
        components.add(topic.split("/")[1])
    # every kind of resource of the default scenario
    assert components == {"sensor", "binary_sensor", "switch", "light", "button"}

    devices = configs_by_endpoint(held)
    assert set(devices) == set(fleet.documents) | {"connector-bridge (connector)"}
    for name in fleet.documents:
        configs = devices[name]
        device = next(iter(configs.values()))["device"]
        # the registry information is what the device says (read by the bridge)
        assert device["manufacturer"] == emulator.get_value(name, "/3/0/0").decode()
        assert device["model"] == emulator.get_value(name, "/3/0/1").decode()
        assert device["sw_version"] == emulator.get_value(name, "/3/0/3").decode()
        serial = emulator.get_value(name, "/3/0/2").decode()
        assert device["serial_number"] == serial and serial.startswith("SN-")
        for config in configs.values():
            assert config["device"] == device  # one device per endpoint
            assert [a["topic"] for a in config["availability"]] == [
                "connector/$bridge/state",
                f"connector/{name}/$state",
            ]
            assert config["availability_mode"] == "all"

    by_uid = {c["unique_id"]: c for c in map(json.loads, held.values())}
    temperature = by_uid[uid(emulator, dialect, "node-001", "3303_0_5700")]
    assert temperature["state_topic"] == "connector/node-001/3303/0/5700"
    assert (temperature["device_class"], temperature["unit_of_measurement"]) == (
        "temperature",
        "°C",  # the device's 5701 says "Cel"
    )
    assert (
        by_uid[uid(emulator, dialect, "node-001", "3304_0_5700")]["unit_of_measurement"] == "%"
    )  # "%RH"
    assert by_uid[uid(emulator, dialect, "multi-001", "3301_0_5700")]["unit_of_measurement"] == "lx"
    assert by_uid[uid(emulator, dialect, "multi-001", "3200_0_5500")]["state_topic"] == (
        "connector/multi-001/3200/0/5500"
    )
    light = by_uid[uid(emulator, dialect, "light-001", "3311_0")]
    assert light["command_topic"] == "connector/light-001/3311/0/5850/set"
    assert light["brightness_command_topic"] == "connector/light-001/3311/0/5851/set"
    reboot = by_uid[uid(emulator, dialect, "light-001", "3_0_4")]
    assert (reboot["command_topic"], reboot["device_class"]) == (
        "connector/light-001/3/0/4/post",
        "restart",
    )


def test_home_assistant_coming_online_gets_every_config_again(
    emulator: Emulator, fleet: Fleet
) -> None:
    u = fleet.user
    ha = next(e for e in fleet.bridge.extensions if e.name == "homeassistant")
    since = len(u.messages)
    u.publish("homeassistant/status", "offline")  # Home Assistant's will: nothing to do
    u.publish("homeassistant/status", "online")  # its birth message
    wait_configs(fleet, emulator, fleet.expected, since=since)
    assert ha.info()["announcements"] == 1
    republished = [m for m in u.messages[since:] if m.topic in fleet.expected]
    assert len(republished) == len(fleet.expected)  # one round, not two


def ha_extension(bridge: Bridge) -> Any:
    return next(e for e in bridge.extensions if e.name == "homeassistant")


def settled(fleet: Fleet) -> None:
    """Wait until the bridge has handled everything before a bridge request sent now: the
    Connector side's events (on the channel thread) and the device-information reads they
    started, then the request's answer, which the bridge publishes after all of that."""
    ha = ha_extension(fleet.bridge)
    busy = ("device_info_reading", "device_info_waiting")
    assert wait_until(lambda: not any(ha.info()[k] for k in busy), WAIT), ha.info()
    assert request(fleet.user, "info")["ok"]


def removals(u: MqttUser, since: int, prefix: str = "homeassistant/") -> list[str]:
    """Topics under ``prefix`` that got an empty (removing) message after index ``since``."""
    return [m.topic for m in u.messages[since:] if m.topic.startswith(prefix) and not m.payload]


def test_a_departed_endpoint_keeps_its_configs_and_shows_unavailable(
    broker: MosquittoBroker, emulator: Emulator, fleet: Fleet
) -> None:
    """De-registered or expired: the configs stay (Home Assistant keeps the device and what
    the user set), and ``$state`` makes the entities unavailable."""
    u = fleet.user
    ha = ha_extension(fleet.bridge)
    since = len(u.messages)
    emulator.deregister("node-001")
    emulator.expire("multi-001")
    u.wait_topic("connector/node-001/$state", WAIT, payload=b"offline")
    u.wait_topic("connector/multi-001/$state", WAIT, payload=b"expired")
    settled(fleet)
    assert removals(u, since) == []
    assert ha.info()["configs_removed"] == 0
    assert all_retained(broker, "homeassistant/#") == fleet.expected

    # Home Assistant restarts meanwhile: the departed endpoints' configs go out again too
    since = len(u.messages)
    u.publish("homeassistant/status", "online")
    wait_configs(fleet, emulator, fleet.expected, since=since)


def test_a_rebooting_endpoint_keeps_its_configs_unchanged(
    broker: MosquittoBroker, emulator: Emulator, fleet: Fleet
) -> None:
    """A reboot (de-registration, then a registration moments later) sends no config at
    all: nothing is removed and nothing that did not change is sent again."""
    u = fleet.user
    ha = ha_extension(fleet.bridge)
    settled(fleet)
    published = ha.info()["configs_published"]
    since = len(u.messages)
    reply = command(u, "connector/node-002/3/0/4/post")  # the Reboot button's topic
    assert reply["ok"], reply
    u.wait_topic("connector/node-002/$state", WAIT, payload=b"offline")
    wait_after(u, since, topic_is("connector/node-002/$state", "online"))
    settled(fleet)  # the device information of the new registration was read again
    assert removals(u, since) == []
    assert ha.info()["configs_published"] == published
    assert ha.info()["configs_removed"] == 0
    assert all_retained(broker, "homeassistant/#") == fleet.expected


def test_an_endpoint_back_with_other_resources_gets_only_those_configs_changed(
    broker: MosquittoBroker, emulator: Emulator, fleet: Fleet
) -> None:
    u = fleet.user
    emulator.deregister("node-001")
    u.wait_topic("connector/node-001/$state", WAIT, payload=b"offline")
    since = len(u.messages)
    # back after a firmware update: no humidity any more, an illuminance sensor instead
    emulator.register(
        "node-001",
        ept="TempSensor",
        resources=[
            {"path": "/3303/0/5700", "rt": "Temperature", "obs": True, "value": "21.5"},
            {"path": "/3303/0/5701", "rt": "Units", "value": "Cel"},
            {"path": "/3301/0/5700", "rt": "Illuminance", "obs": True, "value": "320.0"},
        ],
    )
    document = wait_after(u, since, topic_is("connector/node-001/$resources")).payload
    endpoint = endpoint_from_resources_document("node-001", document)
    values = {
        r.path: emulator.get_value("node-001", r.path).decode()
        for r in endpoint.resources
        if r.path in DEVICE_FIELDS or r.path.endswith("/5701")
    }
    now = {
        t: encode_config(c)
        for t, c in discovery_messages(
            dataclasses.replace(endpoint, values=values), DiscoverySettings()
        )
    }
    before = configs_by_endpoint(fleet.expected)["node-001"]
    assert any("/3301_0_5700/" in t for t in now) and any("/3304_0_5700/" in t for t in before)
    changed = {t: p for t, p in now.items() if fleet.expected.get(t) != p}
    assert changed and len(changed) < len(now)  # the temperature and the Reboot button stay
    wait_configs(fleet, emulator, changed, since=since)
    settled(fleet)
    assert not [m for m in u.messages[since:] if m.topic in now and m.topic not in changed]
    assert sorted(removals(u, since)) == sorted(set(before) - set(now))
    others = {t: p for t, p in fleet.expected.items() if t not in before}
    assert all_retained(broker, "homeassistant/#") == {**others, **now}


def test_remove_request_forgets_a_departed_endpoint(
    broker: MosquittoBroker, emulator: Emulator, fleet: Fleet
) -> None:
    """``connector/$bridge/request/remove`` clears every retained message of an endpoint
    that is gone; a registered or unknown endpoint is refused, and nothing is cleared."""
    u = fleet.user
    gone = configs_by_endpoint(fleet.expected)["node-001"]
    held_before = all_retained(broker, "connector/node-001/#")
    assert "connector/node-001/$state" in held_before  # what the removal must clear

    refused = request(u, "remove", {"endpoint": "node-001"})  # still registered
    assert (refused["ok"], refused["status"]) == (False, 409), refused
    assert "registered" in refused["error"]
    unknown = request(u, "remove", {"endpoint": "no-such-node"})
    assert (unknown["ok"], unknown["status"]) == (False, 404), unknown
    missing = request(u, "remove", {})
    assert (missing["ok"], missing["status"]) == (False, 400), missing
    assert all_retained(broker, "homeassistant/#") == fleet.expected

    emulator.deregister("node-001")
    u.wait_topic("connector/node-001/$state", WAIT, payload=b"offline")
    since = len(u.messages)
    done = request(u, "remove", {"endpoint": "node-001"})
    assert done["ok"], done
    had = len(json.loads(fleet.documents["node-001"])["resources"])
    assert done["data"] == {"endpoint": "node-001", "state": "offline", "resources": had}
    assert sorted(removals(u, since)) == sorted(gone)
    assert all_retained(broker, "homeassistant/#") == {
        t: p for t, p in fleet.expected.items() if t not in gone
    }
    assert all_retained(broker, "connector/node-001/#") == {}
    assert fleet.bridge.ctx.registry.get("node-001") is None
    again = request(u, "remove", {"endpoint": "node-001"})
    assert again["status"] == 404, again

    # it registers again after all: everything comes back
    since = len(u.messages)
    emulator.register("node-001", ept="TempSensor")
    wait_configs(fleet, emulator, {t: fleet.expected[t] for t in gone}, since=since)
    u.wait_for(topic_is("connector/node-001/$state", "online"), WAIT, count=2)


def test_an_endpoint_away_longer_than_the_grace_period_is_forgotten(
    broker: MosquittoBroker, emulator: Emulator
) -> None:
    """``endpoint_remove_after``: an endpoint that stays away that long is forgotten; one
    that came back in time (a reboot) keeps everything."""
    with running_fleet(broker, emulator, endpoint_remove_after=1.0) as fleet:
        u = fleet.user
        devices = configs_by_endpoint(fleet.expected)
        # node-002 reboots first: its removal is due before node-001's, so once node-001 is
        # forgotten, node-002's time has come and gone too
        emulator.deregister("node-002")
        u.wait_topic("connector/node-002/$state", WAIT, payload=b"offline")
        since = len(u.messages)
        emulator.register("node-002", ept="TempSensor")
        wait_after(u, since, topic_is("connector/node-002/$state", "online"))
        emulator.deregister("node-001")
        emulator.expire("multi-001")
        for name in ("node-001", "multi-001"):
            for topic in (*devices[name], f"connector/{name}/$state"):
                u.wait_topic(topic, WAIT, payload=b"")
        counters = fleet.bridge.ctx.counters
        assert wait_until(lambda: counters.get("endpoints_forgotten") >= 2, WAIT), (
            counters.snapshot()
        )
        settled(fleet)
        assert counters.get("endpoints_forgotten") == 2
        gone = set(devices["node-001"]) | set(devices["multi-001"])
        assert all_retained(broker, "homeassistant/#") == {
            t: p for t, p in fleet.expected.items() if t not in gone
        }
        assert all_retained(broker, "connector/node-001/#") == {}
        assert all_retained(broker, "connector/node-002/#")["connector/node-002/$state"] == (
            b"online"
        )


def test_commands_on_the_configs_command_topics_switch_the_device(
    emulator: Emulator, fleet: Fleet, dialect: str
) -> None:
    by_uid = {c["unique_id"]: c for c in map(json.loads, fleet.expected.values())}
    light = by_uid[uid(emulator, dialect, "light-001", "3311_0")]
    switch = by_uid[uid(emulator, dialect, "light-001", "3201_0_5550")]
    u = fleet.user

    def home_assistant_sends(topic: str, payload: str) -> None:
        # as Home Assistant does by default: QoS 0, not retained, no properties
        u.publish(topic, payload, qos=0)

    for config, path in ((light, "/3311/0/5850"), (switch, "/3201/0/5550")):
        for on_off in ("payload_on", "payload_off", "payload_on"):
            since = len(u.messages)
            home_assistant_sends(config["command_topic"], config[on_off])
            reply = wait_after(u, since, topic_is(config["command_topic"] + "/reply"))
            assert reply.json()["ok"], reply.json()
            assert emulator.get_value("light-001", path) == config[on_off].encode()
            # the state Home Assistant then shows, rendered as it renders the template
            state = wait_after(u, since, topic_is(config["state_topic"], config[on_off]))
            template = config.get("state_value_template") or config["value_template"]
            assert render(template, state.text) == config[on_off]

    since = len(u.messages)
    home_assistant_sends(light["brightness_command_topic"], "40")
    reply = wait_after(u, since, topic_is(light["brightness_command_topic"] + "/reply"))
    assert reply.json()["ok"], reply.json()
    assert emulator.get_value("light-001", "/3311/0/5851") == b"40"


def test_discovery_prefix_is_a_setting_and_discovery_can_be_off(
    broker: MosquittoBroker, emulator: Emulator
) -> None:
    off = Bridge(bridge_settings(emulator, broker, homeassistant=False))
    assert "homeassistant" not in {e.name for e in off.extensions}

    settings = bridge_settings(emulator, broker, homeassistant_discovery_prefix="hatest")
    discovery = DiscoverySettings(discovery_prefix="hatest")
    [(bridge_topic, bridge_config)] = bridge_discovery_messages(discovery)
    with user(broker, "5", "hatest/#") as u, running_bridge(settings) as bridge:
        u.wait_topic(bridge_topic, WAIT, payload=encode_config(bridge_config))
        first = u.wait_for(lambda m: m.topic.startswith("hatest/sensor/"), WAIT)[0]
        check_config(first.topic, json.loads(first.payload), discovery_prefix="hatest")
        since = len(u.messages)
        u.publish("homeassistant/status", "online")  # not its prefix: nothing happens
        u.publish("hatest/status", "online")
        wait_after(u, since, lambda m: m.topic == bridge_topic)
        ha = next(e for e in bridge.extensions if e.name == "homeassistant")
        assert ha.info()["announcements"] == 1


def test_device_object_fields_come_from_one_instance_read_before_the_configs_go_out(
    broker: MosquittoBroker, emulator: Emulator
) -> None:
    """An awake endpoint's configs are published once, already with the device registry
    fields (not first without them and then again)."""
    log = Executions(emulator)
    maker = emulator.get_value("light-001", "/3/0/0").decode()

    def has_maker(m: Received) -> bool:
        if not m.topic.startswith("homeassistant/light/") or not m.payload:
            return False
        return bool(json.loads(m.payload)["device"].get("manufacturer") == maker)

    with (
        user(broker, "5", "homeassistant/#") as u,  # sees every config from the first
        running_bridge(bridge_settings(emulator, broker)),
    ):
        u.wait_for(has_maker, WAIT)
        first = [m for m in u.messages if m.topic.startswith("homeassistant/light/")]
    assert first and all(has_maker(m) for m in first), [m.payload[:80] for m in first]
    reads = [p for ep, p, verb, _ in log.done if ep == "light-001" and verb == "GET"]
    assert "/3/0" in reads
    assert not set(reads) & set(DEVICE_FIELDS)  # no field read on its own


def test_device_information_waits_for_busy_workers_instead_of_being_skipped(
    broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start-up with more endpoints than the background queue holds: every endpoint's
    device information is still read (its reads wait for room), and every config has it."""
    monkeypatch.setattr(controller, "BACKGROUND_WORKERS", 1)
    monkeypatch.setattr(controller, "BACKGROUND_QUEUE", 2)
    lamps = 60
    scenario = Scenario.from_dict(
        {
            "templates": {"Lamp": {"type": "Lamp", "objects": ["3311"]}},
            "devices": [],
            "scale": {"templates": ["Lamp"], "name": "lamp-{n:03d}"},
        }
    )
    with Emulator(
        token="t", pull_timeout=1.0, drift=False, scenario=scenario, devices=lamps
    ) as emu:
        maker = emu.get_value("lamp-001", "/3/0/0").decode()
        with (
            user(broker, "5", "homeassistant/light/#") as u,
            running_bridge(bridge_settings(emu, broker)),
        ):
            u.wait_for(
                lambda m: (
                    bool(m.payload) and json.loads(m.payload)["device"].get("manufacturer") == maker
                ),
                WAIT,
                count=lamps,
            )
            configs = [json.loads(m.payload) for m in u.messages if m.payload]
    assert len({c["unique_id"] for c in configs}) == lamps
    assert all(c["device"].get("manufacturer") == maker for c in configs)
