"""Several bridges for one account: ``connector-bridge run`` processes of one group on a
real three-member etcd, one emulator (today's dialect, WebSocket), one Mosquitto.

Only the leader holds the WebSocket (the emulator counts handshakes and connections),
notifications reach MQTT once, a SIGKILLed leader is replaced within TTL + 2 s, a
paused leader resumed after its lease ran out does not use the channel again, and the
group's ``$bridge/state`` stays online while any replica serves. Run with ``-s`` for the
failover times.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from bridge.simulator import Emulator
from tests.support.bridge_group import LIGHT_TOPIC, BridgeGroup, Watch, flows, running_group
from tests.support.broker import MosquittoBroker
from tests.support.etcd import EtcdCluster, etcd_fixtures
from tests.support.ports import free_port

etcd_cluster, etcd = etcd_fixtures()

TTL = 2
TOPIC = LIGHT_TOPIC
GROUP_STATE = "connector/$bridge/state"


@pytest.fixture
def current() -> Iterator[Emulator]:
    with Emulator(api="current", drift=False) as emu:
        yield emu


@pytest.fixture
def watch(broker: MosquittoBroker) -> Iterator[Watch]:
    w = Watch(broker.port)
    yield w
    w.close()


@pytest.fixture
def group(current: Emulator, broker: MosquittoBroker, etcd: EtcdCluster) -> Iterator[BridgeGroup]:
    with running_group(current, broker, etcd, ttl=TTL) as g:
        yield g


def serving_leader(g: BridgeGroup, emu: Emulator, timeout: float = 20.0) -> str:
    leader = g.wait(g.leader, timeout, "a leader")
    g.wait(lambda: emu.counters()["ws_connects"] >= 1, timeout, "the leader's WebSocket")
    return str(leader)


def test_one_leader_holds_the_websocket_and_a_killed_one_is_replaced_in_time(
    group: BridgeGroup, current: Emulator, watch: Watch
) -> None:
    for m in ("r1", "r2", "r3"):
        group.start(m)
    first = serving_leader(group, current)
    group.wait(lambda: len(group.view().members) == 3, 20, "three members")
    flows(current, watch, "11", 10)
    assert current.counters()["ws_connects"] == 1  # the followers never open one
    # Once each: a later value on the same topic from the same publisher is the barrier.
    flows(current, watch, "12", 10)
    assert watch.on(TOPIC).count(b"11") == 1
    assert watch.on(GROUP_STATE)[-1] == b"online"

    killed_at = time.monotonic()
    group.process(first).kill()
    second = group.wait(lambda: (lead := group.leader()) not in (None, first) and lead, 10)
    i = 0
    while True:  # values flow again: the new leader took the channel
        i += 1
        try:
            flows(current, watch, f"2{i}", 0.5)
            break
        except AssertionError:
            assert time.monotonic() - killed_at < TTL + 4, group.logs()
    failover = time.monotonic() - killed_at
    print(f"\nleader {first} SIGKILLed: {second} serves after {failover:.2f} s (TTL {TTL})")
    assert failover < TTL + 2
    counters = current.counters()
    assert counters["ws_connects"] == 2 and counters["ws_handshakes"] == 2
    # The dead replica's will is its own: the group never went offline.
    assert b"offline" not in watch.on(GROUP_STATE)
    assert watch.on(f"connector/$bridge/replicas/{first}/state")[-1] == b"offline"

    # The group stays online while one replica serves; offline once the last one stops.
    rest = [p for p in group.processes if p.member != first]
    assert rest[0].terminate() == 0
    flows(current, watch, "31", TTL + 4)
    assert b"offline" not in watch.on(GROUP_STATE)
    assert rest[1].terminate() == 0
    group.wait(lambda: watch.on(GROUP_STATE)[-1] == b"offline", TTL + 8, "group offline")


def test_a_paused_leader_resumed_after_its_lease_does_not_use_the_channel(
    group: BridgeGroup, current: Emulator, watch: Watch
) -> None:
    a = group.start("a")
    assert serving_leader(group, current) == "a"
    b = group.start("b")
    group.wait(lambda: len(group.view().members) == 2, 20, "two members")
    flows(current, watch, "41", 10)
    a.pause()
    paused_at = time.monotonic()
    group.wait(lambda: group.leader() == "b", TTL + 5, "b leads")
    group.wait(lambda: current.counters()["ws_connects"] == 2, 10, "b's WebSocket")
    took = time.monotonic() - paused_at
    flows(current, watch, "42", 10)
    a.resume()  # a believed it led when it stopped; its lease ran out meanwhile
    # a's replica health says follower once it noticed; then nothing of a's uses the channel.
    a_health = "connector/$bridge/replicas/a/health"
    group.wait(
        lambda: any(b'"role":"follower"' in p for p in watch.on(a_health)), 10, "a a follower"
    )
    flows(current, watch, "43", 10)
    flows(current, watch, "44", 10)
    counters = current.counters()
    print(f"\npaused leader replaced after {took:.2f} s; emulator: {counters['ws_handshakes']} "
          f"handshakes, {counters['ws_connects']} connections, "
          f"{counters['ws_closes_1001']} closed with 1001")  # fmt: skip
    assert counters["ws_handshakes"] == 2 and counters["ws_connects"] == 2
    assert counters["ws_closes_1001"] == 1  # b's connection ended a's, never the reverse
    assert group.leader() == "b"
    for v in (b"42", b"43", b"44"):
        assert watch.on(TOPIC).count(v) == 1
    assert b.running and a.running


def _readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


def test_readyz_is_per_replica_and_follows_its_lease(
    group: BridgeGroup, current: Emulator, watch: Watch, etcd_cluster: EtcdCluster
) -> None:
    """Each replica answers ``/readyz`` for itself: the leader as a single bridge, a
    follower with its lease and the broker. Without an etcd quorum neither can renew its
    lease, and both say so (503 naming the lease) until etcd is back."""
    ports = {m: free_port() for m in ("r1", "r2")}
    for m, port in ports.items():
        group.start(m, BRIDGE_HEALTH_PORT=str(port))
    leader = serving_leader(group, current)
    follower = next(m for m in ports if m != leader)
    group.wait(lambda: all(_readyz(p)[0] == 200 for p in ports.values()), 20, "both ready")
    assert _readyz(ports[leader])[1] == {"ready": True, "reasons": []}
    assert _readyz(ports[follower])[1] == {"ready": True, "reasons": []}
    try:
        for member in etcd_cluster.members[:2]:  # no quorum: no renewal anywhere
            member.kill()

        def both_unready() -> bool:
            answers = [_readyz(p) for p in ports.values()]
            return all(status == 503 for status, _ in answers) and all(
                any("lease" in str(r) for r in body.get("reasons", []))  # type: ignore[attr-defined]
                for _, body in answers
            )

        group.wait(both_unready, TTL + 8, "both replicas unready for want of a lease")
    finally:
        etcd_cluster.revive()
    group.wait(lambda: all(_readyz(p)[0] == 200 for p in ports.values()), 30, "ready again")
    flows(current, watch, "ready-again", 15)  # a leader serves the channel again
