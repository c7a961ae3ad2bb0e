"""Connector -> MQTT, end to end: start-up inventory, values, registrations, escaping.

A real Mosquitto, the emulator over HTTP, the bridge in-process, paho clients as users.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bridge.downstream.topics import escape_level
from bridge.service.controller import Bridge
from bridge.simulator import Emulator
from bridge.simulator.scenario import Scenario
from tests.reliability_support import Executions
from tests.support.bridge_harness import (
    bridge_settings,
    command,
    running_bridge,
    user,
    wait_initial_reads,
)
from tests.support.broker import MosquittoBroker
from tests.support.clients import wait_until
from tests.support.mqtt_user import MqttUser

pytestmark = pytest.mark.both_dialects


@dataclass
class Stack:
    broker: MosquittoBroker
    emu: Emulator
    bridge: Bridge


@pytest.fixture(scope="module")
def stack(dialect: str) -> Iterator[Stack]:
    with (
        MosquittoBroker() as broker,
        Emulator(token="tok-lifecycle", pull_timeout=1.0) as emu,
        running_bridge(bridge_settings(emu, broker)) as bridge,
    ):
        yield Stack(broker, emu, bridge)


def wait_retained(broker: MosquittoBroker, topics: set[str], timeout: float = 15.0) -> dict:
    """The retained message of each topic, as a late subscriber gets them."""
    with user(broker, "5", "connector/#") as late:
        late.wait_for(lambda m: m.retain and m.topic in topics, timeout, count=len(topics))
        return {m.topic: m for m in late.messages if m.retain and m.topic in topics}


def test_startup_announces_every_endpoint_its_resources_and_values(stack: Stack) -> None:
    emu = stack.emu
    emu.wake("sleeper-001")  # queue mode: its initial read is served when it wakes
    endpoints = emu.endpoints()
    observed = emu.subscriptions()
    assert len(endpoints) >= 5 and observed, "the default scenario has devices and rules"
    states = {f"connector/{ep}/$state" for ep in endpoints}
    resources = {f"connector/{ep}/$resources" for ep in endpoints}
    values = {f"connector/{ep}{path}" for ep, path in observed}
    wanted = states | resources | values | {"connector/$bridge/state"}
    # What is published after a subscriber subscribed reaches it live, not as retained
    # (the sleeper's value is read only when it wakes): first see every topic published.
    with user(stack.broker, "5", "connector/#") as watch:
        end = time.monotonic() + 15.0
        while not wanted <= {m.topic for m in watch.messages}:
            assert time.monotonic() < end, sorted(wanted - {m.topic for m in watch.messages})
            time.sleep(0.05)
    got = wait_retained(stack.broker, wanted)

    assert got["connector/$bridge/state"].payload == b"online"
    assert all(got[t].payload == b"online" for t in states)
    light = json.loads(got["connector/light-001/$resources"].payload)
    assert light["type"] == "Light" and light["q"] is False
    paths = {r["path"]: r for r in light["resources"]}
    assert paths["/3311/0/5850"]["obs"] is True and paths["/3/0/4"]["obs"] is False
    assert json.loads(got["connector/sleeper-001/$resources"].payload)["q"] is True
    # The light's on/off does not change by itself: its retained value is the initial read.
    assert got["connector/light-001/3311/0/5850"].payload == emu.get_value(
        "light-001", "/3311/0/5850"
    )
    # Every observed resource, and only those, has a retained value.
    value_topics = {
        t for t in got if not t.endswith(("$state", "$resources")) and "$bridge" not in t
    }
    assert value_topics == values
    wait_initial_reads(stack.bridge, len(observed))  # counted just after each value is published
    assert stack.bridge.counters.get("initial_reads_ok") >= len(observed)


def test_default_rules_observe_every_observable_resource(stack: Stack) -> None:
    observed = stack.emu.subscriptions()
    assert ("light-001", "/3311/0/5850") in observed
    assert ("node-001", "/3303/0/5700") in observed
    assert ("light-001", "/3/0/4") not in observed  # executable, not observable


def test_notification_becomes_value_topic(stack: Stack) -> None:
    with user(stack.broker, "3.1.1", "connector/light-001/3311/0/5851") as u:
        stack.emu.set_value("light-001", "/3311/0/5851", "42")
        assert u.wait_topic("connector/light-001/3311/0/5851", payload=b"42").qos == 1


def test_binary_value_is_published_byte_for_byte(stack: Stack) -> None:
    raw = bytes(range(256))
    with user(stack.broker, "5", "connector/light-001/3311/0/5706") as u:
        stack.emu.set_value("light-001", "/3311/0/5706", raw)
        u.wait_topic("connector/light-001/3311/0/5706", payload=raw)


def test_drifting_sensor_keeps_publishing(stack: Stack) -> None:
    with user(stack.broker, "5", "connector/node-001/3303/0/5700") as u:
        u.wait_for(lambda m: not m.retain, timeout=10, count=2)


ODD_NAMES = ["a/b", "plus+hash#", "per%cent", "$dollar", "sp ace", "ünï-☃", "tab\tname", "set"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_endpoint_names_register_work_and_leave(stack: Stack, name: str) -> None:
    level = escape_level(name)
    base = f"connector/{level}"
    resource = {"path": "/1/0/1", "rt": "Level", "ct": "text/plain", "obs": True,
                "value": "7", "writable": True, "kind": "int"}  # fmt: skip
    with user(stack.broker, "5", f"{base}/#") as u:
        stack.emu.register(name, ept="Odd", resources=[resource])
        u.wait_topic(f"{base}/$state", payload=b"online")
        doc = json.loads(u.wait_topic(f"{base}/$resources").payload)
        assert doc["type"] == "Odd"
        assert {"path": "/1/0/1", "rt": "Level", "ct": "text/plain", "obs": True} in doc[
            "resources"
        ]
        u.wait_topic(f"{base}/1/0/1", payload=b"7")  # the initial read

        reply = command(u, f"{base}/1/0/1/set", b"8")
        assert reply["ok"] and reply["endpoint"] == name and reply["path"] == "/1/0/1"
        assert stack.emu.get_value(name, "/1/0/1") == b"8"
        u.wait_topic(f"{base}/1/0/1", payload=b"8")

        stack.emu.deregister(name)
        u.wait_topic(f"{base}/$state", payload=b"offline")
        stack.emu.register(name, ept="Odd", resources=[resource])
        u.wait_for(lambda m: m.topic == f"{base}/$state" and m.payload == b"online", count=2)
        stack.emu.expire(name)
        u.wait_topic(f"{base}/$state", payload=b"expired")
    assert stack.bridge.registry.get(name).state == "expired"  # type: ignore[union-attr]


def test_reg_update_keeps_the_endpoint_online(stack: Stack) -> None:
    with user(stack.broker, "5", "connector/node-002/$state") as u:
        u.wait_topic("connector/node-002/$state", payload=b"online")
        u.clear()
        stack.emu.update("node-002")
        u.wait_topic("connector/node-002/$state", payload=b"online")
    assert stack.bridge.counters.get("reg_updates") >= 1


def test_resource_whose_last_segment_is_a_verb_is_escaped_and_never_received(
    stack: Stack,
) -> None:
    """A resource called /dev/set must not look like a set command on /dev: its value
    topic ends in %73et, and the bridge does not receive its own publication."""
    resources = [
        {"path": p, "rt": "x", "ct": "text/plain", "obs": True, "value": "1", "writable": True}
        for p in ("/dev/set", "/dev/get", "/dev/post", "/dev/reply", "/dev")
    ]
    received_before = stack.bridge.mqtt.stats["received"]
    with user(stack.broker, "3.1.1", "connector/verbs-ep/#") as u:
        stack.emu.register("verbs-ep", ept="Verbs", resources=resources)
        for topic in ("dev/%73et", "dev/%67et", "dev/%70ost", "dev/%72eply", "dev"):
            u.wait_topic(f"connector/verbs-ep/{topic}", payload=b"1")
        stack.emu.set_value("verbs-ep", "/dev/set", "2")
        u.wait_topic("connector/verbs-ep/dev/%73et", payload=b"2")
        # A real command on /dev/set (either spelling) reaches that resource.
        assert command(u, "connector/verbs-ep/dev/%73et/set", b"3")["path"] == "/dev/set"
    assert stack.emu.get_value("verbs-ep", "/dev/set") == b"3"
    assert stack.emu.get_value("verbs-ep", "/dev") == b"1"
    # The only message the bridge received in all that is the one command.
    assert stack.bridge.mqtt.stats["received"] - received_before == 1


def test_no_echo_the_bridge_receives_only_commands(stack: Stack) -> None:
    """Values, states, resources and replies flow; the bridge receives none of them."""
    received_before = stack.bridge.mqtt.stats["received"]
    published_before = stack.bridge.mqtt.stats["published"]
    with user(stack.broker, "3.1.1", "connector/#") as u:
        for i in range(5):
            stack.emu.set_value("light-001", "/3311/0/5851", str(10 + i))
        u.wait_topic("connector/light-001/3311/0/5851", payload=b"14")
        command(u, "connector/light-001/3311/0/5851/get", transaction="echo-check")

    # 5 values, the reply, the value the get republished: counted on the long-poll thread
    # after the reply went out, the get's value after that, so wait for them.
    def published() -> int:
        return int(stack.bridge.mqtt.stats["published"]) - published_before

    assert wait_until(lambda: published() >= 7, 10), published()
    assert stack.bridge.mqtt.stats["received"] - received_before == 1


def test_initial_read_can_be_switched_off(broker: MosquittoBroker) -> None:
    with Emulator(token="t", pull_timeout=1.0, drift=False) as emu:
        settings = bridge_settings(emu, broker, initial_read=False)
        with running_bridge(settings) as bridge, user(broker, "5", "connector/#") as u:
            u.wait_topic("connector/light-001/$resources")
            command(u, "connector/light-001/3311/0/5851/get", transaction="barrier")
            assert bridge.counters.get("initial_reads_ok") == 0
            assert not u.on("connector/light-001/3311/0/5850")


def test_presubscription_rules_choose_what_is_observed_and_read(broker: MosquittoBroker) -> None:
    rules = [{"endpoint-name": "node*", "resource-path": ["/3303/*"]}]
    with Emulator(token="t", pull_timeout=1.0, drift=False) as emu:
        settings = bridge_settings(emu, broker, presubscriptions=json.dumps(rules))
        with running_bridge(settings) as bridge:
            assert emu.subscriptions() == {
                ("node-001", "/3303/0/5700"),
                ("node-002", "/3303/0/5700"),
            }
            got = wait_retained(
                broker, {"connector/node-001/3303/0/5700", "connector/node-002/3303/0/5700"}
            )
            assert len(got) == 2
            wait_initial_reads(bridge, 2)  # counted just after the value is published
            assert bridge.counters.get("initial_reads_ok") == 2


def test_an_initial_read_refused_with_412_is_tried_again(
    broker: MosquittoBroker, dialect: str
) -> None:
    """412 (no notification channel yet): the port's read tries again, with back-off. A
    read is ``GET /v2/endpoints/{ep}/{path}`` on the legacy Connector, a device request on
    today's service (which answers 412 with an error body)."""
    rules = [{"endpoint-name": "node*", "resource-path": ["/3303/*"]}]
    route = "resource-get" if dialect == "legacy" else "device-requests"
    with Emulator(token="t", pull_timeout=1.0, drift=False) as emu:
        emu.set_fault(force_status={"route": route, "status": 412, "count": 2})
        settings = bridge_settings(emu, broker, presubscriptions=json.dumps(rules))
        with running_bridge(settings) as bridge:
            wait_initial_reads(bridge, 2)  # after the retries: then the values are retained
            got = wait_retained(
                broker, {"connector/node-001/3303/0/5700", "connector/node-002/3303/0/5700"}
            )
            assert len(got) == 2
            assert bridge.counters.get("initial_reads_ok") == 2
            assert bridge.counters.get("initial_reads_failed") == 0
            assert "force_status" not in emu.faults(), "both 412 answers were given"


def test_values_unretained_when_so_configured(broker: MosquittoBroker) -> None:
    # One lamp only: the late subscriber below must come after every start-up read
    # (one that ended later would arrive live), and a queue-mode device's waits for a wake.
    scenario = Scenario.from_dict(
        {
            "templates": {"Lamp": {"type": "Lamp", "objects": ["3311"]}},
            "devices": [{"name": "light-001", "template": "Lamp"}],
        }
    )
    with Emulator(token="t", pull_timeout=1.0, drift=False, scenario=scenario) as emu:
        settings = bridge_settings(emu, broker, value_retain=False, value_qos=0)
        with running_bridge(settings) as bridge, user(broker, "5", "connector/light-001/#") as u:
            u.wait_topic("connector/light-001/$resources")
            wait_initial_reads(bridge, len(emu.subscriptions()))
            emu.set_value("light-001", "/3311/0/5851", "55")
            msg = u.wait_topic("connector/light-001/3311/0/5851", payload=b"55")
            assert msg.qos == 0
            late: MqttUser
            with user(broker, "5", "connector/light-001/#") as late:
                late.wait_topic("connector/light-001/$state")  # retained: always
                assert not late.on("connector/light-001/3311/0/5851")


def _device_reads(log: Executions, ep: str) -> list[str]:
    return [path for name, path, verb, _ in log.done if name == ep and verb == "GET"]


def test_resources_of_one_instance_come_from_one_instance_read(broker: MosquittoBroker) -> None:
    """The light's observed /3311/0/... resources: one LwM2M JSON read of /3311/0, and
    each retained value is what a read of that resource alone gives."""
    with Emulator(token="t", pull_timeout=1.0, drift=False) as emu:
        log = Executions(emu)
        with running_bridge(bridge_settings(emu, broker)) as bridge:
            observed = {p for e, p in emu.subscriptions() if e == "light-001"}
            lamp = {p for p in observed if p.startswith("/3311/0/")}
            assert len(lamp) >= 2
            wait_initial_reads(bridge, len(observed))
            assert bridge.counters.get("initial_reads_ok") >= len(observed)
            got = wait_retained(broker, {f"connector/light-001{p}" for p in observed})
            for path in observed:
                assert got[f"connector/light-001{path}"].payload == emu.get_value(
                    "light-001", path
                ), path
        reads = _device_reads(log, "light-001")
    assert reads.count("/3311/0") == 1
    assert not lamp & set(reads)


def test_an_instance_read_that_fails_falls_back_to_single_reads(
    broker: MosquittoBroker, dialect: str
) -> None:
    scenario = Scenario.from_dict(
        {
            "templates": {"Lamp": {"type": "Lamp", "objects": ["3311"]}},
            "devices": [{"name": "lamp-1", "template": "Lamp"}],
        }
    )
    with Emulator(token="t", pull_timeout=1.0, drift=False, scenario=scenario) as emu:
        log = Executions(emu)
        # The first resource read is the instance read (no Home Assistant device-info
        # reads): refused as by a device that cannot give the instance in one answer. On
        # the legacy Connector the refusal is the call's own answer; today's service takes
        # every device request (202) and the device's 415 comes as its async response.
        if dialect == "legacy":
            emu.set_fault(force_status={"route": "resource-get", "status": 415, "count": 1})
        else:
            emu.set_fault(device_status={"ep": "lamp-1", "path": "/3311/0", "status": 415})
        with running_bridge(bridge_settings(emu, broker, homeassistant=False)) as bridge:
            observed = {p for e, p in emu.subscriptions() if e == "lamp-1"}
            assert len(observed) >= 2
            wait_initial_reads(bridge, len(observed))
            got = wait_retained(broker, {f"connector/lamp-1{p}" for p in observed})
            assert all(
                got[f"connector/lamp-1{p}"].payload == emu.get_value("lamp-1", p) for p in observed
            )
            assert bridge.counters.get("initial_reads_ok") == len(observed)
            assert bridge.counters.get("initial_reads_failed") == 0
            assert "device_status" not in emu.faults() and "force_status" not in emu.faults()
        reads = _device_reads(log, "lamp-1")
        taken = [p for ep, p, verb, _ in log.accepted if ep == "lamp-1" and verb == "GET"]
    if dialect == "legacy":
        assert sorted(reads) == sorted(observed)  # the refused instance read never reached it
        assert sorted(taken) == sorted(observed)
    else:
        # The device carried out nothing: it refused the instance read, and the service
        # answers a read of an observed resource from its cache.
        assert reads == []
        assert taken[0] == "/3311/0" and sorted(taken[1:]) == sorted(observed)


def test_an_instance_read_that_times_out_is_not_repeated_resource_by_resource(
    broker: MosquittoBroker,
) -> None:
    scenario = Scenario.from_dict(
        {
            "templates": {"Lamp": {"type": "Lamp", "objects": ["3311"]}},
            "devices": [{"name": "lamp-1", "template": "Lamp"}],
        }
    )
    with Emulator(token="t", pull_timeout=1.0, drift=False, scenario=scenario) as emu:
        log = Executions(emu)
        emu.set_fault(device_timeout={"ep": "lamp-1", "path": "/3311/0"})
        settings = bridge_settings(emu, broker, homeassistant=False)
        with running_bridge(settings) as bridge:
            observed = {p for e, p in emu.subscriptions() if e == "lamp-1"}
            end = time.monotonic() + 15
            while bridge.counters.get("initial_reads_failed") < len(observed):
                assert time.monotonic() < end, "the failed reads were not counted"
                time.sleep(0.05)
            # A fallback, if any, would start as the instance read ends: no read under way.
            reads = bridge.ctx.info["extensions"]["values"]
            assert wait_until(lambda: reads()["initial_reads_under_way"] == 0, 15), reads()
        taken = [p for ep, p, verb, _ in log.accepted if ep == "lamp-1" and verb == "GET"]
    assert taken == ["/3311/0"]
