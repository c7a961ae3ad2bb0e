"""MQTT -> Connector, end to end: set/post/get, replies, matching, and every bad command.

Each command must get exactly one reply; tests that check "exactly one" send a later
*barrier* command and wait for its reply first, so nothing is left in flight.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bridge.service.controller import Bridge
from bridge.simulator import Emulator
from tests.support.bridge_harness import bridge_settings, command, retained, running_bridge, user
from tests.support.broker import MosquittoBroker
from tests.support.clients import wait_until
from tests.support.mqtt_user import MqttUser

pytestmark = pytest.mark.both_dialects

LIGHT = "connector/light-001/3311/0/5850"
DIMMER = "connector/light-001/3311/0/5851"


@dataclass
class Stack:
    broker: MosquittoBroker
    emu: Emulator
    bridge: Bridge


@pytest.fixture(scope="module")
def stack(dialect: str) -> Iterator[Stack]:
    with (
        MosquittoBroker() as broker,
        Emulator(token="tok-commands", pull_timeout=1.0, drift=False) as emu,
        running_bridge(bridge_settings(emu, broker, max_payload=1024)) as bridge,
    ):
        # The light's start-up value is published (retained) before any test listens for
        # a live one on its topic, so it cannot be taken for a command's result.
        retained(broker, LIGHT, 1)
        yield Stack(broker, emu, bridge)


@pytest.fixture(params=["5", "3.1.1"])
def u(request: pytest.FixtureRequest, stack: Stack) -> Iterator[MqttUser]:
    with user(stack.broker, request.param, "connector/#") as client:
        yield client


def replies(u: MqttUser, topic: str, transaction: object) -> list[dict]:
    return [m.json() for m in u.on(topic) if m.json().get("transaction") == transaction]


# ---------------------------------------------------------------- the happy paths


def test_set_switches_the_light_replies_ok_and_the_value_follows(stack: Stack, u: MqttUser) -> None:
    for value in (b"1", b"0"):
        reply = command(u, f"{LIGHT}/set", value)
        assert reply == {
            "endpoint": "light-001",
            "path": "/3311/0/5850",
            "verb": "set",
            "method": "PUT",
            "status": 200,
            "ok": True,
            "payload": "",  # what the device sent back: nothing (the Connector's empty payload)
            "encoding": "utf-8",
            "error": None,
            "code": None,
            "transaction": None,
        }
        assert stack.emu.get_value("light-001", "/3311/0/5850") == value
        u.wait_for(lambda m, v=value: m.topic == LIGHT and m.payload == v and not m.retain)


def test_get_replies_with_the_value_and_republishes_it(stack: Stack, u: MqttUser) -> None:
    stack.emu.set_value("light-001", "/3/0/1", "LC-9000")  # not observed: no notification
    reply = command(u, "connector/light-001/3/0/1/get")
    assert reply["ok"] and reply["status"] == 200 and reply["method"] == "GET"
    assert (reply["payload"], reply["encoding"]) == ("LC-9000", "utf-8")
    u.wait_topic("connector/light-001/3/0/1", payload=b"LC-9000")


def test_get_binary_value_comes_back_base64(stack: Stack, u: MqttUser) -> None:
    stack.emu.set_value("light-001", "/3311/0/5706", b"\xff\x00\x80")
    reply = command(u, "connector/light-001/3311/0/5706/get", transaction="bin")
    assert reply["encoding"] == "base64" and reply["payload"] == "/wCA"
    u.wait_topic("connector/light-001/3311/0/5706", payload=b"\xff\x00\x80")


def test_get_from_the_cache_with_an_envelope(stack: Stack, u: MqttUser, dialect: str) -> None:
    """``cacheOnly`` is an option of the legacy Connector; today's service has none (it
    answers a read of an observed resource from its cache by itself), so there the
    command is refused (501) and nothing is sent."""
    cached = command(u, f"{DIMMER}/get")["payload"]  # fills the Connector's cache
    requests = stack.emu.counters().get("device_requests", 0)
    u.publish(f"{DIMMER}/get", json.dumps({"transaction": "c1", "cacheOnly": True}))
    reply = u.wait_for(
        lambda m: m.topic == f"{DIMMER}/get/reply" and m.json()["transaction"] == "c1"
    )[0].json()
    common = {"endpoint": "light-001", "path": "/3311/0/5851", "verb": "get", "method": "GET"}
    if dialect == "legacy":
        expected = {
            **common, "status": 200, "ok": True, "payload": cached, "encoding": "utf-8",
            "error": None, "code": None, "transaction": "c1",
        }  # fmt: skip
    else:
        expected = {
            **common, "status": 501, "ok": False, "payload": None, "encoding": None,
            "error": "today's service has no noResp or cacheOnly: every device request is "
            "answered on the notification channel",
            "code": None, "transaction": "c1",
        }  # fmt: skip
    assert reply == expected
    if dialect == "current":
        assert stack.emu.counters().get("device_requests", 0) == requests  # not sent


def test_post_executes_a_reboot(stack: Stack, u: MqttUser) -> None:
    reply = command(u, "connector/node-002/3/0/4/post", transaction="reboot")
    assert reply["ok"] and reply["method"] == "POST" and reply["transaction"] == "reboot"
    state = "connector/node-002/$state"
    u.wait_for(lambda m: m.topic == state and m.payload == b"offline" and not m.retain)
    u.wait_for(lambda m: m.topic == state and m.payload == b"online" and not m.retain)


def test_mqtt311_clients_match_replies_by_transaction(stack: Stack) -> None:
    """Many commands on one topic at once: each reply names the transaction it answers."""
    with user(stack.broker, "3.1.1", f"{DIMMER}/set/reply") as c:
        for i in range(20):
            c.publish(f"{DIMMER}/set", json.dumps({"transaction": i, "value": 40 + i}))
        got = c.wait_for(lambda m: True, count=20)
    by_tx = {m.json()["transaction"]: m.json() for m in got}
    assert sorted(by_tx) == list(range(20))
    assert all(r["ok"] for r in by_tx.values())


def test_mqtt5_response_topic_and_correlation_data(stack: Stack) -> None:
    with user(stack.broker, "5", "connector/$reply/me/#", f"{DIMMER}/set/reply") as c:
        c.publish(f"{DIMMER}/set", b"33", response_topic="connector/$reply/me/1",
                  correlation_data=b"\x00corr-1")  # fmt: skip
        msg = c.wait_topic("connector/$reply/me/1")
        assert msg.correlation_data == b"\x00corr-1"
        assert msg.content_type == "application/json"
        assert msg.json()["ok"] and msg.json()["path"] == "/3311/0/5851"
        # Not on the default reply topic: the next reply there is the barrier's own.
        assert command(c, f"{DIMMER}/set", b"34", transaction="barrier")["ok"]
        assert [m.json()["transaction"] for m in c.on(f"{DIMMER}/set/reply")] == ["barrier"]
    assert stack.emu.get_value("light-001", "/3311/0/5851") == b"34"


def test_mqtt5_response_topic_outside_the_prefix(stack: Stack) -> None:
    with user(stack.broker, "5", "app/replies/#") as c:
        c.publish(f"{DIMMER}/get", b"", response_topic="app/replies/x", correlation_data=b"7")
        msg = c.wait_topic("app/replies/x")
        assert msg.correlation_data == b"7" and msg.json()["ok"]


@pytest.mark.parametrize(
    "response_topic",
    ["connector/light-001/$state", "connector/light-001/3311/0/5850", "connector/$bridge/state"],
)
def test_response_topic_on_the_bridges_own_topics_is_refused(
    stack: Stack, response_topic: str
) -> None:
    before = stack.emu.get_value("light-001", "/3311/0/5851")
    with user(stack.broker, "5", f"{DIMMER}/set/reply") as c:
        c.publish(f"{DIMMER}/set", b"99", response_topic=response_topic, correlation_data=b"c")
        msg = c.wait_topic(f"{DIMMER}/set/reply")
    reply = msg.json()
    assert not reply["ok"] and reply["status"] == 400 and "response topic refused" in reply["error"]
    assert msg.correlation_data == b"c"
    assert stack.emu.get_value("light-001", "/3311/0/5851") == before


# ---------------------------------------------------------------- bad commands


@pytest.mark.parametrize(
    ("topic", "payload", "status", "error"),
    [
        ("connector/nobody/3311/0/5850/set", b"1", 404, "unknown endpoint"),
        ("connector/light-001/set", b"1", 400, "missing resource path"),
        ("connector/li%zz/3311/0/5850/set", b"1", 400, "malformed escape"),
        ("connector/$x/3311/0/5850/set", b"1", 400, "reserved"),
        ("connector/light-001/3311/%C3/set", b"1", 400, "UTF-8"),
        (f"{LIGHT}/set", b"x" * 1025, 413, "over the limit of 1024"),
        (f"{LIGHT}/set", b'{"transaction": 5, "value": "1", "oops": 1}', 400, "unknown envelope"),
        (f"{LIGHT}/set", b'{"transaction": 5, "value": [1]}', 400, "string or a number"),
        pytest.param(
            "connector/light-001/9999/0/1/set",
            b"1",
            404,
            # the legacy Connector's text; today's service names the error
            {"legacy": "not found", "current": "URI_PATH_DOES_NOT_EXISTS"},
            id="connector/light-001/9999/0/1/set-1-404-not found",
        ),
        ("connector/light-001/3/0/0/set", b"x", 405, "METHOD_NOT_ALLOWED"),
        (f"{LIGHT}/set", b"maybe", 400, "takes 0 or 1"),
        ("connector/light-001/3311/0/5850/post", b"", 405, "METHOD_NOT_ALLOWED"),
    ],
)
def test_bad_commands_get_one_error_reply(
    stack: Stack,
    u: MqttUser,
    dialect: str,
    topic: str,
    payload: bytes,
    status: int,
    error: str | dict[str, str],
) -> None:
    named = None  # the error name today's service gives, in `code`
    if isinstance(error, dict):
        error = error[dialect]
        named = error if dialect == "current" else None
    reply = command(u, topic, payload)
    assert reply["ok"] is False
    assert reply["status"] == status
    assert error in reply["error"]
    if named is not None:
        assert reply["code"] == named and reply["error"].startswith(f"{named}: ")
    if payload.startswith(b"{"):
        assert reply["transaction"] == 5
    assert command(u, f"{DIMMER}/get", transaction="barrier")["ok"]
    assert len(u.on(topic + "/reply")) == 1


def test_command_to_a_departed_endpoint(stack: Stack, u: MqttUser) -> None:
    stack.emu.register("gone-1", ept="Odd")
    u.wait_topic("connector/gone-1/$state", payload=b"online")
    stack.emu.deregister("gone-1")
    u.wait_topic("connector/gone-1/$state", payload=b"offline")
    reply = command(u, "connector/gone-1/3303/0/5700/get")
    assert (reply["ok"], reply["status"], reply["error"]) == (False, 410, "endpoint is offline")


def test_every_command_gets_exactly_one_reply(stack: Stack) -> None:
    topics = [
        f"{DIMMER}/set",
        "connector/nobody/1/set",
        f"{LIGHT}/set",
        "connector/light-001/3/0/0/set",
    ]
    with user(stack.broker, "3.1.1", "connector/+/#") as c:
        for i in range(40):
            c.publish(topics[i % 4], json.dumps({"transaction": i, "value": str(i % 2)}))
        c.wait_for(lambda m: m.topic.endswith("/reply"), count=40)
        command(c, f"{DIMMER}/get", transaction="barrier")
        got = [m.json()["transaction"] for m in c.messages if m.topic.endswith("/reply")]
    assert sorted(got, key=str) == sorted([*range(40), "barrier"], key=str)


def test_a_retained_command_is_not_replayed(broker: MosquittoBroker, emulator: Emulator) -> None:
    """A command left retained on the broker must not run again at every bridge start."""
    for protocol in ("5", "3.1.1"):
        with user(broker, protocol) as c:
            c.publish(f"{DIMMER}/set", b"77", retain=True)
        settings = bridge_settings(emulator, broker, mqtt_protocol=protocol)
        with running_bridge(settings) as bridge, user(broker, "5", f"{DIMMER}/#") as c:
            assert command(c, f"{DIMMER}/get", transaction="barrier")["ok"]
            assert emulator.get_value("light-001", "/3311/0/5851") != b"77"
            assert [m.json()["transaction"] for m in c.on(f"{DIMMER}/set/reply")] == []
            assert bridge.counters.get("commands_received") == 1


# ---------------------------------------------------------------- time-outs and load


def test_the_bridge_times_out_once_and_ignores_the_late_answer(
    broker: MosquittoBroker, emulator: Emulator
) -> None:
    settings = bridge_settings(emulator, broker, command_timeout=0.5)
    with running_bridge(settings) as bridge, user(broker, "5", "connector/#") as c:
        emulator.set_fault(device_latency=1.5)
        reply = command(c, f"{DIMMER}/set", b"12", transaction="slow")
        assert (reply["ok"], reply["status"]) == (False, 504)
        assert "within 0.5 s (BRIDGE_COMMAND_TIMEOUT)" in reply["error"]
        # The device still answers (late): that must not make a second reply.
        c.wait_topic(DIMMER, payload=b"12")  # the write happened after all
        emulator.clear_faults()
        assert command(c, f"{DIMMER}/get", transaction="barrier")["ok"]
        assert len(replies(c, f"{DIMMER}/set/reply", "slow")) == 1
        assert bridge.counters.get("commands_failed") == 1


# A resource nobody observes: today's service answers a read of an observed one from its
# cache, without asking the device (so a device that does not answer, or sleeps, is not
# asked at all).
UNOBSERVED = "3/0/1"  # the device object's model


def learn_queue_mode(emulator: Emulator, bridge: Bridge, name: str) -> None:
    """The device updates its registration, and the bridge knows it is in queue mode.

    Today's service tells a device's queue mode only in its registration messages (its
    device listing has none), so a bridge started after the device registered learns it
    at the device's next registration update; the legacy Connector's listing has it."""
    emulator.update(name)
    assert wait_until(lambda: bridge.ctx.registry.get(name).queue_mode, 5)  # type: ignore[union-attr]


def test_device_timeout_is_reported(broker: MosquittoBroker, emulator: Emulator) -> None:
    with running_bridge(bridge_settings(emulator, broker)), user(broker, "5", "connector/#") as c:
        emulator.set_fault(device_timeout={"ep": "light-001"})
        reply = command(c, f"connector/light-001/{UNOBSERVED}/get")
        assert (reply["ok"], reply["status"], reply["error"]) == (False, 504, "TIMEOUT")


def test_queue_mode_endpoint_waits_for_its_wake_up(
    broker: MosquittoBroker, emulator: Emulator
) -> None:
    sleeper = f"connector/sleeper-001/{UNOBSERVED}/get"
    settings = bridge_settings(emulator, broker, command_timeout=0.5, queue_mode_timeout=8.0)
    with running_bridge(settings) as bridge, user(broker, "5", "connector/#") as c:
        learn_queue_mode(emulator, bridge, "sleeper-001")
        c.publish(sleeper, json.dumps({"transaction": "zz"}))
        # A wake serves what waits for the device at that moment: wake it until the
        # bridge's request was there (well within the 8 s the bridge waits).
        end = time.monotonic() + 6
        while not c.on(f"{sleeper}/reply") and time.monotonic() < end:
            emulator.wake("sleeper-001")
            with contextlib.suppress(AssertionError):
                c.wait_for(lambda m: m.topic == f"{sleeper}/reply", timeout=0.5)
        reply = c.wait_for(lambda m: m.topic == f"{sleeper}/reply")[0].json()
    assert reply["ok"] and reply["transaction"] == "zz"


def test_queue_mode_endpoint_has_its_own_timeout(
    broker: MosquittoBroker, emulator: Emulator
) -> None:
    settings = bridge_settings(emulator, broker, command_timeout=0.3, queue_mode_timeout=0.6)
    with running_bridge(settings) as bridge, user(broker, "5", "connector/#") as c:
        learn_queue_mode(emulator, bridge, "sleeper-001")
        reply = command(c, f"connector/sleeper-001/{UNOBSERVED}/get")
    assert (reply["ok"], reply["status"]) == (False, 504)
    assert "BRIDGE_QUEUE_MODE_TIMEOUT" in reply["error"] and "queue mode" in reply["error"]


def test_a_timed_out_call_leaves_nothing_waiting(
    broker: MosquittoBroker, emulator: Emulator
) -> None:
    """One deadline per call, the bridge's: when it passes, the client stops waiting for
    the answer too (it keeps no deadline of its own), so nothing is left behind."""
    settings = bridge_settings(emulator, broker, command_timeout=0.3, queue_mode_timeout=0.6)
    with running_bridge(settings) as bridge, user(broker, "5", "connector/#") as c:
        client = bridge.connector_side.client
        learn_queue_mode(emulator, bridge, "sleeper-001")
        reply = command(c, f"connector/sleeper-001/{UNOBSERVED}/get")  # asleep: no answer
        assert (reply["ok"], reply["status"]) == (False, 504)
        assert client.asyncTimeout is None
        assert wait_until(lambda: client.pendingCount() == 0, 5)
        assert bridge.ctx.port.pending_count() == 0


def test_a_full_command_queue_answers_busy(
    broker: MosquittoBroker, emulator: Emulator, dialect: str
) -> None:
    settings = bridge_settings(
        emulator, broker, command_workers=1, command_queue=1, connector_timeout=2.0
    )
    # the route a write takes: a resource PUT, or today's device request
    route = {"legacy": "resource-put", "current": "device-requests"}[dialect]
    with running_bridge(settings) as bridge, user(broker, "3.1.1", "connector/#") as c:
        emulator.set_fault(hang={"route": route, "count": 2})
        c.publish(f"{DIMMER}/set", json.dumps({"transaction": 0, "value": "1"}))

        # The worker has taken the first one (its PUT hangs) before the next two come:
        # one waits in the queue, one is refused.
        def hangs_left() -> int:
            return int(emulator.faults().get("hang", [{"count": 0}])[0]["count"])

        assert wait_until(lambda: hangs_left() < 2, 10)
        for i in (1, 2):
            c.publish(f"{DIMMER}/set", json.dumps({"transaction": i, "value": "1"}))
        busy = c.wait_for(lambda m: m.topic.endswith("/reply") and m.json()["status"] == 503)
        assert "bridge busy" in busy[0].json()["error"]
        assert "BRIDGE_COMMAND_QUEUE" in busy[0].json()["error"]
        all_three = c.wait_for(lambda m: m.topic == f"{DIMMER}/set/reply", timeout=15, count=3)
    assert sorted(m.json()["transaction"] for m in all_three) == [0, 1, 2]
    assert bridge.counters.get("commands_busy") == 1
