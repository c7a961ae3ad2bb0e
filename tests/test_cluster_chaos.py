"""Issue 16's acceptance test: three ``connector-bridge run`` processes of one group
(TTL 2) on a three-member etcd (loopback ports), Mosquitto with persistence, the
emulator (today's dialect, WebSocket channel). During a burst of 2,000 ``set`` commands
(MQTT 5, QoS 1, Correlation Data, to a few awake lights, spread over six slots) and a
live stream of notifications: SIGKILL of the leader, then of a non-leader, then of one
etcd member (the raft leader). Then: every command carried out (the emulator's record),
each answered exactly once (by correlation data), the exceptions counted and explained
(the windows listed in bridge/cluster/commands.py), every notification seen on MQTT,
a new leader serving within TTL + 2 s, the retained values equal to the emulator's
state. Every process is stopped by its pid. The figures go out on a ``[cluster]`` line.

The exceptions (:func:`classify`): ``not_sent_504`` (a replica killed between its record
and the service taking the request), ``answer_lost_504`` (the leader killed holding an
async response it had not handed on: carried out, answered 504), ``no_reply`` (killed
between the answered mark and its reply reaching the broker), ``refused_twice`` (killed
between a refusal of its own and its ack); and for notifications, values the service
had sent the leader on its WebSocket when it was killed (``IN_FLIGHT``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.simulator import Emulator
from tests.reliability_support import report
from tests.support.bridge_group import BridgeGroup, Watch
from tests.support.broker import MosquittoBroker
from tests.support.commander import PATH, Requester, tally
from tests.support.etcd import EtcdCluster, etcd_fixtures

# Not in the default run (pyproject: -m 'not chaos'): with TTL 2 it exceeds its bound of
# explained exceptions in most runs now (a follower killed with answered marks whose replies
# it had not published: up to 7 commands carried out without a reply), and one run in two
# left 167 commands unexplained. Run it with ./dev test -m chaos (issue 16 stays open).
pytestmark = [pytest.mark.slow, pytest.mark.chaos]

etcd_cluster, etcd = etcd_fixtures()

TTL = 2
SLOTS = 6
COUNT = 2000
RATE = 110.0  # commands per second
COMMAND_TIMEOUT = 8  # a taken-over record no answer comes for is answered 504 after it
STREAM = ("light-001", "/3311/0/5850")  # the notification stream (not commanded)
STREAM_EVERY = 0.05
IN_FLIGHT = 0.5  # s before the leader's kill: a value emitted then may have been in its hands


class Stream:
    """Unique values on the stream's resource, one every ``STREAM_EVERY`` s, with the
    time each was emitted."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.emitted: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(STREAM_EVERY):
            i += 1
            value = f"n{i}".encode()
            self.emitted.append((time.monotonic(), value))
            self.emu.set_value(*STREAM, value)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class LeaderLog:
    """The group's leader as etcd says, polled every 20 ms, with the time of each change."""

    def __init__(self, group: BridgeGroup) -> None:
        self.group = group
        self.changes: list[tuple[float, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last: object = object()
        while not self._stop.wait(0.02):
            lead = self.group.leader()
            if lead != last:
                self.changes.append((time.monotonic(), lead))
                last = lead

    def first_after(self, t: float, other_than: str) -> float | None:
        return next((at for at, m in self.changes if at > t and m not in (None, other_than)), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker(persistence=True) as b:
        yield b


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api="current", drift=False, devices=20) as e:
        e.record_actions()
        yield e


def classify(result: dict[str, Any], req: Requester, numbers: range) -> dict[str, list[int]]:
    """Each command that is not "carried out once, answered once, 200", by the window of
    bridge/cluster/commands.py that explains it ("unexplained" must stay empty)."""
    missing, twice = set(result["replies_missing"]), set(result["replies_twice"])
    not_done, done_twice = set(result["not_carried_out"]), set(result["carried_out_twice"])
    out: dict[str, list[int]] = {
        "not_sent_504": [],  # killed between its record and the service taking it
        "answer_lost_504": [],  # the leader killed with its async response unrelayed
        "no_reply": [],  # killed between the answered mark and the reply
        "refused_twice": [],  # killed between a refusal of its own and the ack
        "unexplained": [],
    }
    for n in numbers:
        status = req.bodies.get(n, {}).get("status")
        if n not in missing | twice | not_done | done_twice and status == 200:
            continue
        if n in done_twice:
            out["unexplained"].append(n)
        elif n in missing and n not in not_done:
            out["no_reply"].append(n)
        elif n in twice and n in not_done:
            out["refused_twice"].append(n)
        elif n in not_done and status == 504 and n not in twice:
            out["not_sent_504"].append(n)
        elif status == 504 and n not in twice and n not in not_done:
            out["answer_lost_504"].append(n)
        else:
            out["unexplained"].append(n)
    return out


def test_leader_follower_and_etcd_member_killed_during_a_burst(
    emu: Emulator,
    broker: MosquittoBroker,
    etcd: EtcdCluster,
    etcd_cluster: EtcdCluster,
    capsys: pytest.CaptureFixture[str],
) -> None:
    group = BridgeGroup(emu, broker, etcd, ttl=TTL, slots=SLOTS,
                        BRIDGE_COMMAND_TIMEOUT=str(COMMAND_TIMEOUT))  # fmt: skip
    req = Requester(broker.port)
    watch = Watch(broker.port, f"watch-{group.client_id}")
    stream: Stream | None = None
    leaders: LeaderLog | None = None
    lights = [ep for ep in emu.endpoints() if ep.startswith("light") and ep != STREAM[0]][:6]
    stream_topic = f"connector/{STREAM[0]}{STREAM[1]}"
    try:
        for m in ("r1", "r2", "r3"):
            group.start(m)
        group.wait(lambda: len(group.view().members) == 3, 30, "three members")
        group.wait(lambda: sorted(len(m.slots) for m in group.view().members) == [2, 2, 2],
                   30, "the slots shared out 2+2+2")  # fmt: skip
        group.wait(lambda: len(req.slot_states) == SLOTS
                   and all(v == "online" for v in req.slot_states.values()), 20,
                   "every slot's client online")  # fmt: skip
        first = str(group.wait(group.leader, 20, "a leader"))
        group.wait(lambda: emu.wait_channel(0.1), 20, "the leader's channel")
        leaders = LeaderLog(group)
        stream = Stream(emu)
        group.wait(lambda: len(watch.arrivals(stream_topic)) >= 3, 10, "the stream on MQTT")

        killed: dict[str, float] = {}
        victims: dict[str, str] = {}

        def kill_leader() -> None:
            killed["leader"] = time.monotonic()
            group.process(first).kill()
            victims["leader"] = first

        def kill_follower() -> None:
            lead = group.leader()
            victim = next(p for p in group.processes if p.running and p.member != lead)
            killed["follower"] = time.monotonic()
            victim.kill()
            victims["follower"] = victim.member

        def kill_etcd() -> None:
            member = etcd_cluster.leader()
            killed["etcd"] = time.monotonic()
            member.kill()
            victims["etcd"] = member.name

        actions = {COUNT // 5: kill_leader, COUNT // 2: kill_follower, 4 * COUNT // 5: kill_etcd}
        start = time.monotonic()
        for n in range(COUNT):
            if n in actions:
                actions[n]()
            req.send(n, lights[n % len(lights)])
            delay = start + (n + 1) / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        burst_s = time.monotonic() - start
        # The last records of the dead wait out their time-out (answered 504).
        numbers = range(COUNT)
        wait_s = COMMAND_TIMEOUT + 15
        with contextlib.suppress(AssertionError):  # a reply missing is counted below
            group.wait(lambda: req.answered(numbers) == COUNT, wait_s, "every reply")
        stream.stop()
        last_value = stream.emitted[-1][1]
        group.wait(lambda: last_value in watch.arrivals(stream_topic), 15, "the last value")
        answered_s = time.monotonic() - start

        # A new leader serving: the first value emitted after the kill is on MQTT.
        arrivals = watch.arrivals(stream_topic)
        after_kill = [(t, v) for t, v in stream.emitted if t > killed["leader"]]
        serving_s = min(arrivals[v] for _, v in after_kill if v in arrivals) - killed["leader"]
        elected = leaders.first_after(killed["leader"], first)
        elected_s = elected - killed["leader"] if elected is not None else float("nan")
        lost = [(t, v.decode()) for t, v in stream.emitted if v not in arrivals]
        # The one loss the channel has: what the service had sent the leader on its
        # WebSocket (no acknowledgement there) when it was killed, not yet on MQTT.
        k = killed["leader"]
        in_flight = [v for t, v in lost if k - IN_FLIGHT <= t <= k + 0.05]
        lost_values = [v for _, v in lost if v not in in_flight]

        result = tally(emu, req, numbers)
        windows = classify(result, req, numbers)

        # Retained values equal the emulator's state (a fresh subscriber sees them).
        topics = [f"connector/{ep}{PATH}" for ep in lights] + [stream_topic]
        after = Watch(broker.port, f"after-{group.client_id}")
        try:
            group.wait(lambda: all(t in after.retained() for t in topics), 10, "retained")
            retained = after.retained()
        finally:
            after.close()
        expected = {f"connector/{ep}{PATH}": emu.get_value(ep, PATH) for ep in lights}
        expected[stream_topic] = emu.get_value(*STREAM)
        differ = {t: (retained.get(t), v) for t, v in expected.items() if retained.get(t) != v}

        survivors = [p for p in group.processes if p.running]
        for p in survivors:
            assert p.terminate() == 0, p.tail()
        counters = {p.member: p.command_counters() for p in survivors}
        exceptions = {k: len(v) for k, v in windows.items() if v}
        report(
            capsys, "chaos", tag="cluster", commands=COUNT, rate=RATE, burst_s=burst_s,
            answered_s=answered_s,
            leader_killed=victims["leader"], new_leader_elected_s=elected_s,
            new_leader_serving_s=serving_s, follower_killed=victims["follower"],
            etcd_killed=victims["etcd"], statuses=result["statuses"],
            exceptions=exceptions or 0, notifications=len(stream.emitted),
            notifications_lost=len(lost_values), notifications_in_flight=len(in_flight),
            retained_differ=len(differ),
            survivor=counters,
        )  # fmt: skip
        print("exceptions by command number:", {k: v for k, v in windows.items() if v},
              "values in flight at the leader's kill:", in_flight)  # fmt: skip
        assert serving_s < TTL + 2, f"no new leader serving within TTL + 2 s: {serving_s:.2f}"
        unexplained = {n: req.all_bodies.get(n) for n in windows["unexplained"]}
        assert windows["unexplained"] == [], (windows, result, unexplained)
        assert sum(len(v) for v in windows.values()) <= 10, windows
        assert not result["carried_out_twice"]
        assert len(result["replies_twice"]) == len(windows["refused_twice"])
        assert lost_values == [], lost_values
        assert differ == {}, differ
    except BaseException:
        print(group.logs())
        raise
    finally:
        if stream is not None:
            stream.stop()
        if leaders is not None:
            leaders.stop()
        watch.close()
        req.close()
        group.close()
        etcd_cluster.revive()
