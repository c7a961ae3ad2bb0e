"""Commands spread over a group's slots (bridge/cluster/commands.py), with a real
three-member etcd, Mosquitto with persistence, the emulator (today's dialect, WebSocket)
and replicas as processes (tests/support/slot_node.py): each command carried out once
and answered exactly once, also when a slot's owner is SIGKILLed mid-burst."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.cluster.commands import make_async_id, slot_index_of
from bridge.simulator import Emulator
from tests.support.broker import MosquittoBroker, env_with_pythonpath
from tests.support.etcd import EtcdCluster, etcd_fixtures, fresh_group, wait_for

etcd_cluster, etcd = etcd_fixtures()

SLOTS = 4
TTL = 2
LIGHTS = 40
REPLIES = "test/replies"


def test_async_ids_name_their_slot_and_fit_the_service() -> None:
    aid = make_async_id(3)
    assert slot_index_of(aid) == 3 and len(aid) <= 40
    assert slot_index_of("0123abcd") is None


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker(persistence=True) as b:
        yield b


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api="current", drift=False, devices=2 * LIGHTS + 5) as e:
        e.record_actions()
        yield e


class Node:
    def __init__(self, name: str, tmp: Path, etcd: EtcdCluster, group: str,
                 broker: MosquittoBroker, emu: Emulator, devices: str,
                 slots: int = SLOTS) -> None:  # fmt: skip
        self.name = name
        tmp.mkdir(parents=True, exist_ok=True)
        self.status_path = tmp / f"{name}.json"
        self.log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115
        cmd = [sys.executable, "-m", "tests.support.slot_node", "--endpoints",
               ",".join(etcd.endpoints), "--group", group, "--id", name, "--connector-url",
               emu.url, "--token", emu.token, "--devices", devices, "--status",
               str(self.status_path), "--mqtt-port", str(broker.port), "--ttl", str(TTL),
               "--slots", str(slots), "--client-id", group]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log,
                                     env=env_with_pythonpath())  # fmt: skip

    def status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {"slots": [], "leading": False, "counters": {}}

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


class Requester:
    """An MQTT 5 client sending ``set`` commands with Correlation Data, counting replies."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.replies: collections.Counter[int] = collections.Counter()
        self.bodies: dict[int, dict[str, Any]] = {}
        self.slot_states: dict[str, str] = {}
        self.lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"req-{os.getpid()}",
                        protocol=mqtt.MQTTv5)  # fmt: skip
        c.on_message = self._on_message
        c.connect("127.0.0.1", broker.port)
        c.subscribe([(REPLIES + "/#", 1), ("connector/$bridge/cluster/slot/+", 1)])
        c.loop_start()
        self.client = c

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith("connector/$bridge/cluster/slot/"):
            self.slot_states[msg.topic.rsplit("/", 1)[-1]] = msg.payload.decode()
            return
        n = int(msg.properties.CorrelationData)
        with self.lock:
            self.replies[n] += 1
            self.bodies[n] = json.loads(msg.payload)

    def send(self, n: int, device: str) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = REPLIES
        props.CorrelationData = str(n).encode()
        self.client.publish(f"connector/{device}/3311/0/5706/set", f"c{n}", qos=1,
                            properties=props)  # fmt: skip

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def lights(emu: Emulator) -> list[str]:
    return [ep for ep in emu.endpoints() if ep.startswith("light")][:LIGHTS]


def start_group(tmp: Path, etcd: EtcdCluster, broker: MosquittoBroker, emu: Emulator,
                names: list[str], req: Requester,
                slots: int = SLOTS) -> tuple[list[Node], str]:  # fmt: skip
    group = fresh_group()
    devices = ",".join(f"{ep}={emu.device_id(ep)}" for ep in lights(emu))
    nodes = [Node(n, tmp, etcd, group, broker, emu, devices, slots) for n in names]
    share = slots // len(nodes)
    wait_for("the slots shared out", lambda: sorted(len(n.status()["slots"]) for n in nodes)
             == [share] * len(nodes), 20)  # fmt: skip
    time.sleep(0.3)
    wait_for("every slot online", lambda: len(req.slot_states) == slots
             and all(v == "online" for v in req.slot_states.values()), 20)  # fmt: skip
    wait_for("a leader with its channel", lambda: any(n.status()["leading"] for n in nodes)
             and emu.wait_channel(0.1), 20)  # fmt: skip
    return nodes, group


def burst(req: Requester, emu: Emulator, count: int, rate: float,
          at: int = -1, action: Any = None) -> None:  # fmt: skip
    names = lights(emu)
    start = time.monotonic()
    for n in range(count):
        if n == at and action is not None:
            action()
        req.send(n, names[n % len(names)])
        delay = start + (n + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def tally(emu: Emulator, req: Requester, count: int) -> dict[str, Any]:
    done = collections.Counter(body.decode() for verb, _, path, body in emu.actions()
                               if verb == "PUT" and path == "/3311/0/5706")  # fmt: skip
    statuses = collections.Counter(req.bodies[n]["status"] for n in req.bodies)
    return {
        "replies_missing": [n for n in range(count) if req.replies[n] == 0],
        "replies_twice": [n for n in range(count) if req.replies[n] > 1],
        "not_carried_out": [n for n in range(count) if done[f"c{n}"] == 0],
        "carried_out_twice": [n for n in range(count) if done[f"c{n}"] > 1],
        "statuses": dict(statuses),
    }


@pytest.fixture
def group_parts(tmp_path: Path, etcd: EtcdCluster, broker: MosquittoBroker,
                emu: Emulator) -> Iterator[tuple[Path, EtcdCluster, MosquittoBroker, Emulator,
                                                  Requester, list[Node]]]:  # fmt: skip
    req = Requester(broker)
    nodes: list[Node] = []
    try:
        yield tmp_path, etcd, broker, emu, req, nodes
    finally:
        for node in nodes:
            node.stop()
        req.close()


def test_two_replicas_share_500_commands_each_answered_once(group_parts: Any) -> None:
    tmp, etcd, broker, emu, req, nodes = group_parts
    started, _ = start_group(tmp, etcd, broker, emu, ["a", "b"], req)
    nodes.extend(started)
    count = 500
    burst(req, emu, count, rate=400)
    wait_for("every reply", lambda: sum(1 for n in range(count) if req.replies[n]) == count, 30)
    time.sleep(0.5)
    result = tally(emu, req, count)
    stats = {n.name: n.status() for n in nodes}
    print("\ntwo replicas:", result, {k: (v["leading"], v["slots"], v["counters"])
                                      for k, v in stats.items()})  # fmt: skip
    assert result["statuses"] == {200: count}
    assert not result["replies_twice"] and not result["carried_out_twice"]
    assert not result["not_carried_out"]
    sent = {k: v["counters"]["sent"] for k, v in stats.items()}
    assert all(s > count // 5 for s in sent.values()), sent  # spread over both
    leader = next(k for k, v in stats.items() if v["leading"])
    other = next(k for k in stats if k != leader)
    # (c) the non-leader's answers reached it through its slots' topic.
    assert stats[leader]["counters"]["relayed_out"] >= sent[other]
    assert stats[other]["counters"]["relayed_in"] >= sent[other]


def test_a_slot_owner_killed_mid_burst_its_commands_are_answered_by_the_survivor(
    group_parts: Any,
) -> None:
    tmp, etcd, broker, emu, req, nodes = group_parts
    started, _ = start_group(tmp, etcd, broker, emu, ["a", "b"], req)
    nodes.extend(started)
    victim = next(n for n in nodes if not n.status()["leading"])
    survivor = next(n for n in nodes if n is not victim)
    lost = set(victim.status()["slots"])
    assert lost
    killed: list[float] = []

    def kill() -> None:
        victim.kill()
        killed.append(time.monotonic())

    count = 500
    burst(req, emu, count, rate=250, at=200, action=kill)
    wait_for("the survivor owns every slot", lambda: len(survivor.status()["slots"]) == SLOTS,
             TTL + 5)  # fmt: skip
    took = time.monotonic() - killed[0]
    with contextlib.suppress(AssertionError):
        wait_for("every reply", lambda: sum(1 for n in range(count) if req.replies[n]) == count,
                 30)  # fmt: skip
    time.sleep(1.0)
    result = tally(emu, req, count)
    print(f"\nkilled a slot owner: survivor had every slot within {took:.2f} s;", result,
          survivor.status()["counters"])  # fmt: skip
    assert took <= TTL + 2
    assert not result["replies_twice"] and not result["carried_out_twice"]
    # The exceptions the design leaves (bridge/cluster/commands.py), counted: killed
    # between its record and the service taking the request (answered 504, not carried
    # out); killed between marking a command answered and its reply reaching the broker
    # (carried out, no reply; the survivor finds it marked answered).
    not_sent = [n for n in result["not_carried_out"] if req.bodies[n]["status"] == 504]
    assert sorted(not_sent) == sorted(result["not_carried_out"])
    no_reply = result["replies_missing"]
    assert len(no_reply) <= survivor.status()["counters"]["answered_before_gain"]
    print(f"exceptions: {len(not_sent)} answered 504 not carried out, {len(no_reply)} no reply")
    assert len(not_sent) + len(no_reply) <= 3


def test_command_rate_of_one_two_and_three_replicas(group_parts: Any) -> None:
    """A measurement (printed): commands answered per second by 1, 2 and 3 replicas,
    in one run, on the same broker, etcd and emulator."""
    tmp, etcd, broker, emu, req, nodes = group_parts
    count, rates = 300, {}
    base = 0
    for size in (1, 2, 3):
        req.slot_states.clear()
        group_nodes, _ = start_group(tmp / str(size), etcd, broker, emu,
                                     [f"r{size}-{i}" for i in range(size)], req, 6)  # fmt: skip
        nodes.extend(group_nodes)
        start = time.monotonic()
        names = lights(emu)
        run = range(base, base + count)
        for n in run:
            req.send(n, names[n % len(names)])
        wait_for("every reply", lambda run=run: all(req.replies[n] for n in run), 60)
        rates[size] = count / (time.monotonic() - start)
        for node in group_nodes:
            node.stop()
        base += count
    assert all(req.replies[n] == 1 for n in range(base))
    print("\ncommands/s by replicas:", {k: round(v) for k, v in rates.items()})
