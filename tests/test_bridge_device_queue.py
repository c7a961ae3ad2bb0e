"""Commands for sleeping devices, kept in order: the bridge's per-device line, end to end.

The service keeps at most 20 requests per device (the legacy emulator's sleeper: 8, and
429 past them); the bridge keeps the rest in arrival order and sends each as an earlier
one is answered, so 100 commands to a sleeping device get 100 replies in order when it
wakes. A real Mosquitto, the emulator in both dialects, the bridge in-process.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bridge.service.controller import Bridge
from bridge.simulator import Emulator, Scenario
from tests.support.bridge_harness import bridge_settings, command, request, running_bridge, user
from tests.support.broker import MosquittoBroker
from tests.support.clients import wait_until
from tests.support.mqtt_user import MqttUser, Received

SLEEPER_QUEUE_LEGACY = 8  # what the legacy emulator's sleeper queues (429 past it)
SCENARIO = {
    "templates": {
        "Light": {"type": "Light", "objects": ["3311"]},
        # wakes only when told (a wake interval of an hour), then briefly
        "Sleeper": {
            "type": "Sleeper",
            "objects": ["3311"],
            "queue": True,
            "wake_interval": 3600,
            "awake_time": 1.0,
            "queue_size": SLEEPER_QUEUE_LEGACY,
        },
    },
    "devices": [
        {"name": "light-001", "template": "Light"},
        {"name": "sleeper-001", "template": "Sleeper"},
    ],
}
SLEEPER = "connector/sleeper-001/3311/0/5851"
LIGHT = "connector/light-001/3311/0/5851"


@dataclass
class Stack:
    api: str
    emu: Emulator
    bridge: Bridge
    u: MqttUser

    def at_service(self) -> int:
        """Requests of the sleeper the service holds (the legacy emulator's sleeper: 8)."""
        return 20 if self.api == "current" else SLEEPER_QUEUE_LEGACY


@contextlib.contextmanager
def stack_for(api: str, broker: MosquittoBroker, **settings: object) -> Iterator[Stack]:
    with Emulator(api=api, scenario=Scenario.from_dict(SCENARIO), drift=False) as emu:
        s = bridge_settings(
            emu, broker, connector_api=api, queue_mode_timeout=30.0,
            # only the commands at the sleeper, so that the counts below are exact
            initial_read=False, homeassistant=False, stop_timeout=0.2, **settings,
        )  # fmt: skip
        with running_bridge(s) as bridge, user(broker, "5", "connector/#") as u:
            # Today's device listing does not say which devices sleep: the bridge learns
            # it from a registration update (which does not wake the device).
            emu.update("sleeper-001")
            assert wait_until(lambda: bridge.registry.get("sleeper-001").queue_mode, 10)
            yield Stack(api, emu, bridge, u)


@pytest.fixture(params=["current", "legacy"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def send_sets(u: MqttUser, topic: str, values: range) -> None:
    for k in values:
        u.publish(f"{topic}/set", json.dumps({"transaction": k, "value": str(k)}))


def in_line(s: Stack) -> int:
    """Requests in the bridge's lines: at the service, being sent (or held), waiting."""
    c = s.bridge.ctx.port.queues.counts()
    return c["at_service"] + c["sending"] + c["waiting"]


def replies(u: MqttUser, topic: str) -> list[Received]:
    return u.on(f"{topic}/set/reply")


def wake_until_replied(s: Stack, count: int) -> list[Received]:
    """Wake the sleeper (each wake serves what it can in its second awake) until
    ``count`` replies came; each wake must bring at least one more."""
    for _ in range(count):
        before = len(replies(s.u, SLEEPER))
        if before >= count:
            break
        s.emu.wake("sleeper-001")
        s.u.wait_for(lambda m: m.topic == f"{SLEEPER}/set/reply", timeout=5, count=before + 1)
    return s.u.wait_for(lambda m: m.topic == f"{SLEEPER}/set/reply", count=count)


def test_100_commands_to_a_sleeping_device_are_answered_in_order_when_it_wakes(
    api: str, broker: MosquittoBroker
) -> None:
    with stack_for(api, broker) as s:
        queues = s.bridge.ctx.port.queues
        send_sets(s.u, SLEEPER, range(100))
        # All 100 in the device's line, as many at the service as it holds, the rest in
        # the bridge (one of them, on legacy, refused once with 429 and held).
        assert wait_until(lambda: in_line(s) == 100, 10)
        line = queues.pending()["devices"][0]
        assert line["at_service"] == s.at_service()
        assert line["sending"] == (api == "legacy")
        assert replies(s.u, SLEEPER) == []  # nothing answered while it sleeps
        assert s.bridge.mqtt.held_count() <= 1, "waiting commands are acknowledged"
        answered = wake_until_replied(s, 100)
        final = s.emu.get_value("sleeper-001", "/3311/0/5851")
        counters = s.emu.counters()
    docs = [m.json() for m in answered]
    assert [d["transaction"] for d in docs] == list(range(100)), "in the order they came"
    assert all(d["ok"] and d["status"] == 200 for d in docs)
    assert final == b"99"
    if api == "current":
        # The service refuses a 21st request (QUEUE_IS_FULL): none was ever refused, so
        # never more than 20 were at the service at once.
        assert counters["device_requests_refused"] == 0
        assert counters["device_requests"] == 100
    else:
        assert queues.held_count == 1  # the 9th, refused once (429), then held
    assert queues.counts()["devices"] == 0  # nothing left in any line


def test_commands_waiting_for_a_sleeping_device_do_not_stop_the_others(
    api: str,
) -> None:
    """Mosquitto lets a client hold 20 messages unacknowledged (``max_inflight_messages``,
    its default): commands waiting in the bridge for a sleeping device are acknowledged,
    so a command to another device still comes through, and is answered at once."""
    with (
        MosquittoBroker(extra_config="max_inflight_messages 20\n") as broker,
        stack_for(api, broker) as s,
    ):
        send_sets(s.u, SLEEPER, range(60))
        assert wait_until(lambda: in_line(s) == 60, 10)
        reply = command(s.u, f"{LIGHT}/set", "42", transaction="other")
        assert reply["ok"] and reply["status"] == 200
        assert replies(s.u, SLEEPER) == []
        answered = wake_until_replied(s, 60)
    assert [m.json()["transaction"] for m in answered] == list(range(60))


def test_past_the_bridge_s_bound_a_command_is_refused_at_once(
    api: str, broker: MosquittoBroker
) -> None:
    with stack_for(api, broker, device_queue=5) as s:
        queues = s.bridge.ctx.port.queues
        # First what the service takes (on legacy one more, refused with 429 and held),
        # so that the window is known; then 5 wait in the bridge, and 3 are too many.
        first = s.at_service() + (api == "legacy")
        send_sets(s.u, SLEEPER, range(first))
        assert wait_until(lambda: queues.counts()["at_service"] == s.at_service(), 10)
        assert wait_until(lambda: queues.counts()["sending"] == (api == "legacy"), 10)
        room = s.at_service() + 5
        send_sets(s.u, SLEEPER, range(first, room + 3))
        refused = s.u.wait_for(lambda m: m.topic == f"{SLEEPER}/set/reply", count=3)
        docs = [m.json() for m in refused]
        # answered while the device sleeps: at once, not after a time-out
        assert [d["transaction"] for d in docs] == [room, room + 1, room + 2]
        for d in docs:
            assert (d["ok"], d["status"], d["code"]) == (False, 503, None)
            assert "BRIDGE_DEVICE_QUEUE=5" in d["error"] and "sleeper-001" in d["error"]
        assert queues.refused == 3
        answered = wake_until_replied(s, room + 3)[3:]
    assert [m.json()["transaction"] for m in answered] == list(range(room))
    assert all(m.json()["ok"] for m in answered)


def test_a_command_that_never_gets_its_turn_times_out_saying_so(
    api: str, broker: MosquittoBroker
) -> None:
    with stack_for(api, broker) as s:
        queues = s.bridge.ctx.port.queues
        ahead = s.at_service() + (api == "legacy")  # on legacy, one more is held
        send_sets(s.u, SLEEPER, range(ahead))
        assert wait_until(lambda: queues.counts()["at_service"] == s.at_service(), 10)
        assert wait_until(lambda: queues.counts()["sending"] == (api == "legacy"), 10)
        s.bridge.settings.queue_mode_timeout = 1.0  # the time-out of the next command only
        reply = command(s.u, f"{SLEEPER}/set", "1", transaction="late", timeout=10)
        assert queues.counts()["waiting"] == 0  # it left the line
    assert (reply["ok"], reply["status"], reply["code"]) == (False, 504, None)
    assert reply["error"].startswith(f"not sent: it waited 1.0 s in the bridge behind {ahead}")


def test_the_pending_request_lists_what_waits_per_device(api: str, broker: MosquittoBroker) -> None:
    # The sleeper not observed: today's service would answer a read from its cache.
    with stack_for(api, broker, presubscriptions=[{"endpoint-name": "light-001"}]) as s:
        options = {"expiry": 3600, "retry": 1} if api == "current" else {}
        for k in range(24):
            doc = {"transaction": k, **options}
            if k % 2:
                s.u.publish(f"{SLEEPER}/get", json.dumps(doc))
            else:
                s.u.publish(f"{SLEEPER}/set", json.dumps({**doc, "value": str(k)}))
        assert wait_until(lambda: in_line(s) == 24, 10)
        everything = request(s.u, "pending")
        light_only = request(s.u, "pending", {"endpoint": "light-001"})
        bad = request(s.u, "pending", {"endpoint": 7})
        wake_until_replied(s, 12)  # the sets; the gets answer on their own topic
        s.u.wait_for(lambda m: m.topic == f"{SLEEPER}/get/reply", count=12)
        after = request(s.u, "pending")
    assert everything["ok"] and everything["status"] == 200
    data = everything["data"]
    assert (data["limit"], data["window"], data["truncated"]) == (10_000, 20, False)
    (line,) = data["devices"]
    held = int(api == "legacy")
    assert line["endpoint"] == "sleeper-001"
    assert (line["at_service"], line["sending"]) == (s.at_service(), held)
    assert line["waiting"] == 24 - s.at_service() - held
    states = [r["state"] for r in line["requests"]]
    assert states == (["at_service"] * s.at_service() + ["sending"] * held
                      + ["waiting"] * line["waiting"])  # fmt: skip
    requests = line["requests"]
    assert [(r["verb"], r["method"]) for r in requests[:2]] == [("write", "PUT"), ("read", "GET")]
    assert {r["path"] for r in requests} == {"/3311/0/5851"}
    ages = [r["age"] for r in requests]
    assert ages == sorted(ages, reverse=True) and ages[-1] >= 0  # oldest first
    assert all(r["timeout_in"] > 0 for r in requests)
    if api == "current":
        assert {(r["expiry"], r["retry"]) for r in requests} == {(3600, 1)}
        sent = [r["sent_expiry"] for r in requests if r["state"] == "at_service"]
        assert all(3590 <= e <= 3600 for e in sent)
        assert all(r["sent_expiry"] is None for r in requests if r["state"] == "waiting")
    assert light_only["ok"] and light_only["data"]["devices"] == []
    assert (bad["ok"], bad["status"]) == (False, 400) and "'endpoint'" in bad["error"]
    assert after["data"]["devices"] == []  # all answered: nothing waits
