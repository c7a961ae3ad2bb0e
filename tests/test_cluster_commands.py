"""Commands spread over a group's slots, carried out by the bridge's own command path
(bridge/cluster/commands.py is its gate): ``connector-bridge run`` processes on a real
three-member etcd, Mosquitto with persistence, the emulator (today's dialect,
WebSocket); each command carried out once and answered exactly once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bridge.cluster.commands import make_async_id, slot_index_of
from bridge.simulator import Emulator
from tests.support.bridge_group import BridgeGroup
from tests.support.broker import MosquittoBroker
from tests.support.commander import Requester, tally
from tests.support.etcd import EtcdCluster, etcd_fixtures

etcd_cluster, etcd = etcd_fixtures()

SLOTS = 4
TTL = 2
LIGHTS = 12


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
    with Emulator(api="current", drift=False, devices=LIGHTS + 5) as e:
        e.record_actions()
        yield e


def lights(emu: Emulator) -> list[str]:
    return [ep for ep in emu.endpoints() if ep.startswith("light")][:LIGHTS]


def serving(group: BridgeGroup, emu: Emulator, req: Requester, size: int) -> str:
    """Wait until ``size`` replicas share the slots, each slot online, a leader serves."""
    group.wait(lambda: len(group.view().members) == size, 30, f"{size} members")
    group.wait(lambda: sorted(s for m in group.view().members for s in m.slots)
               == sorted(f"cmd-{i}" for i in range(SLOTS)), 20, "the slots shared out")  # fmt: skip
    group.wait(lambda: len(req.slot_states) == SLOTS
               and all(v == "online" for v in req.slot_states.values()),
               20, "slots online")  # fmt: skip
    leader = group.wait(group.leader, 20, "a leader")
    group.wait(lambda: emu.wait_channel(0.1), 20, "the leader's channel")
    return str(leader)


def test_two_bridges_share_commands_each_answered_once(
    emu: Emulator, broker: MosquittoBroker, etcd: EtcdCluster
) -> None:
    group = BridgeGroup(emu, broker, etcd, ttl=TTL, slots=SLOTS)
    req = Requester(broker.port)
    try:
        for m in ("a", "b"):
            group.start(m)
        leader = serving(group, emu, req, 2)
        count, names = 400, lights(emu)
        for n in range(count):
            req.send(n, names[n % len(names)])
            time.sleep(0.002)
        group.wait(lambda: req.answered(range(count)) == count, 60, "every reply")
        result = tally(emu, req, range(count))
        group.close()
        counters = {p.member: p.command_counters() for p in group.processes}
        print("\ntwo bridges:", result, counters)
        assert result["statuses"] == {200: count}
        assert not result["replies_twice"] and not result["carried_out_twice"]
        assert not result["not_carried_out"]
        other = next(m for m in counters if m != leader)
        assert all(c["recorded"] > count // 5 for c in counters.values()), counters
        # The follower's answers reached it through its slots' topic, relayed by the leader.
        assert counters[leader]["relayed_out"] >= counters[other]["recorded"]
        assert counters[other]["relayed_in"] >= counters[other]["recorded"]
    except BaseException:
        print(group.logs())
        raise
    finally:
        req.close()
        group.close()


@pytest.mark.slow
def test_command_rate_of_one_two_and_three_bridges(
    emu: Emulator, broker: MosquittoBroker, etcd: EtcdCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """A measurement: commands answered per second by a group of 1, 2 and 3 bridge
    processes, in one run, on the same broker, etcd and emulator (six slots each)."""
    count, rates, base = 600, {}, 0
    names = lights(emu)
    for size in (1, 2, 3):
        group = BridgeGroup(emu, broker, etcd, ttl=TTL, slots=6)
        req = Requester(broker.port)
        try:
            for i in range(size):
                group.start(f"s{size}-{i}")
            group.wait(lambda g=group, n=size: len(g.view().members) == n  # type: ignore[misc]
                       and sorted(len(m.slots) for m in g.view().members) == [6 // n] * n,
                       30, "the slots shared out")  # fmt: skip
            group.wait(lambda r=req: len(r.slot_states) == 6
                       and all(v == "online" for v in r.slot_states.values()), 20,
                       "slots online")  # fmt: skip
            group.wait(lambda: emu.wait_channel(0.1), 20, "the leader's channel")
            run = range(base, base + count)
            start = time.monotonic()
            for n in run:
                req.send(n, names[n % len(names)])
            group.wait(lambda r=req, run=run: r.answered(run) == count, 60, "every reply")
            rates[size] = count / (time.monotonic() - start)
            assert all(req.replies[n] == 1 for n in run)
            base += count
        except BaseException:
            print(group.logs())
            raise
        finally:
            req.close()
            group.close()
    line = " ".join(f"{k}_replicas={v:.0f}/s" for k, v in rates.items())
    with capsys.disabled():
        print(f"\n[cluster] command rate ({count} set commands, 6 slots, TTL {TTL}): {line}")
