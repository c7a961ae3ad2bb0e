"""Replicas in this process against a real three-member etcd: one leader, slots shared
out, hand-over on leaving, giving up in time when cut off, etcd members lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from bridge.cluster.etcd import EtcdClient, EtcdError
from bridge.cluster.lease import LeaseTiming
from bridge.cluster.members import read_view
from bridge.cluster.replica import Replica
from bridge.cluster.slots import slot_names
from tests.support.etcd import EtcdCluster, etcd_fixtures, fresh_group, wait_for

etcd_cluster, etcd = etcd_fixtures()

SLOTS = slot_names(8)


@dataclass
class Recorder:
    """Every callback of every replica, with the time it ran."""

    events: list[tuple[float, str, str, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, member: str, what: str, on: bool) -> None:
        with self.lock:
            self.events.append((time.monotonic(), member, what, on))

    def of(self, member: str, what: str | None = None) -> list[tuple[float, str, str, bool]]:
        with self.lock:
            return [e for e in self.events if e[1] == member and (what is None or e[2] == what)]


class Sampler:
    """Reads every replica's beliefs as often as it can; counts moments of double belief."""

    def __init__(self, replicas: Sequence[Replica]) -> None:
        self.replicas = replicas
        self.samples = 0
        self.both_leading = 0
        self.slot_twice: list[tuple[str, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            leaders = [r.member_id for r in self.replicas if r.leading]
            owners: dict[str, list[str]] = {}
            for r in self.replicas:
                for slot in r.owned_slots():
                    owners.setdefault(slot, []).append(r.member_id)
            self.samples += 1
            self.both_leading += len(leaders) > 1
            self.slot_twice += [(s, o) for s, o in owners.items() if len(o) > 1]
            time.sleep(0.002)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make(endpoints: Sequence[str], group: str, rec: Recorder, name: str, ttl: int = 2) -> Replica:
    timing = LeaseTiming.for_ttl(ttl)
    return Replica(
        EtcdClient(endpoints, timeout=timing.request_timeout),
        group,
        ttl=ttl,
        member_id=name,
        slots=SLOTS,
        on_leadership=lambda on: rec.add(name, "leader", on),
        on_slot=lambda slot, on: rec.add(name, slot, on),
    )


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    made: list[Replica] = []
    yield made
    for r in made:
        r.stop()
        r.client.close()


def settled(replicas: Sequence[Replica], sizes: list[int]) -> bool:
    """One leader, every slot owned once, shares of the given sizes."""
    owned = [r.owned_slots() for r in replicas]
    return (
        sum(r.leading for r in replicas) == 1
        and sorted(len(o) for o in owned) == sorted(sizes)
        and frozenset().union(*owned) == frozenset(SLOTS)
    )


def test_one_leader_among_three_and_each_slot_owned_once(
    etcd: EtcdCluster, replicas: list[Replica]
) -> None:
    group, rec = fresh_group(), Recorder()
    replicas += [make(etcd.endpoints, group, rec, f"r{i}") for i in range(3)]
    with Sampler(replicas) as sampler:
        for r in replicas:
            r.start()
        wait_for("one leader, 8 slots as 3+3+2", lambda: settled(replicas, [3, 3, 2]), 10)
        leader = next(r for r in replicas if r.leading)
        # The member entries catch up with the keys within a poll.
        wait_for(
            "member entries show roles and slots",
            lambda: all(
                m.role == ("leader" if m.id == leader.member_id else "follower")
                and set(m.slots) == replicas[int(m.id[1])].owned_slots()
                for m in read_view(leader.client, group).members
            ),
            5,
        )
    view = read_view(leader.client, group, SLOTS)
    assert view.leader == leader.member_id and leader.term is not None
    assert [m.id for m in view.members] == ["r0", "r1", "r2"]
    for r in replicas:
        assert set(view.owned_by(r.member_id)) == r.owned_slots()
    gains = [e for e in rec.events if e[2] == "leader" and e[3]]
    assert [e[1] for e in gains] == [leader.member_id]  # one leadership, ever
    assert sampler.samples > 100 and sampler.both_leading == 0 and sampler.slot_twice == []
    print(*view.lines(), sep="\n")


def test_a_replica_that_leaves_hands_over_at_once(
    etcd: EtcdCluster, replicas: list[Replica]
) -> None:
    group, rec = fresh_group(), Recorder()
    replicas += [make(etcd.endpoints, group, rec, f"r{i}") for i in range(3)]
    for r in replicas:
        r.start()
    wait_for("settled", lambda: settled(replicas, [3, 3, 2]), 10)
    leader = next(r for r in replicas if r.leading)
    rest = [r for r in replicas if r is not leader]
    with Sampler(replicas) as sampler:
        left = time.monotonic()
        leader.stop()  # reports its losses, then revokes its lease: its keys go now
        new = wait_for("a new leader", lambda: next((r for r in rest if r.leading), None), 3)
        took = time.monotonic() - left
        wait_for("8 slots as 4+4", lambda: settled(rest, [4, 4]), 5)
    # Well under the TTL: the lease was revoked, not left to expire.
    assert took < leader.timing.poll_every + 0.5, took
    lost = rec.of(leader.member_id, "leader")[-1]
    won = next(e for e in rec.of(new.member_id, "leader") if e[3])
    assert lost[3] is False and lost[0] <= won[0]
    assert leader.counters.lost_leases == 0  # a leave is not a loss
    assert sampler.both_leading == 0 and sampler.slot_twice == []
    print(f"hand-over on leaving: new leader in {took:.3f}s")


def test_cut_off_from_etcd_it_gives_up_before_etcd_lets_another_take_over(
    etcd: EtcdCluster, replicas: list[Replica]
) -> None:
    ttl = 2
    timing = LeaseTiming.for_ttl(ttl)
    group, rec = fresh_group(), Recorder()
    follower = next(m for m in etcd.members if m is not etcd.leader())
    a = make([follower.client_url], group, rec, "a", ttl)  # reaches etcd through one member
    b = make(etcd.endpoints, group, rec, "b", ttl)
    replicas += [a, b]
    a.start()
    wait_for("a leads", lambda: a.leading, 5)
    b.start()
    wait_for("b is registered", lambda: len(read_view(b.client, group).members) == 2, 5)
    with Sampler(replicas) as sampler:
        cut = time.monotonic()
        follower.pause()  # a's only member stops answering; the other two go on
        wait_for("b leads", lambda: b.leading, ttl + 2)
        lost = [e for e in rec.of("a", "leader") if not e[3]]
        won = [e for e in rec.of("b", "leader") if e[3]]
        assert lost and won
        # a gave up once its validity ran out: TTL - margin after its last renewal,
        # which it sent at most one renewal interval before the cut.
        gave_up = lost[0][0] - cut
        assert ttl - timing.margin - timing.renew_every - 0.1 < gave_up
        assert gave_up < ttl - timing.margin + 0.15, gave_up
        # etcd freed the key only after that, by at least the margin (less scheduling).
        assert won[0][0] - lost[0][0] > timing.margin - 0.1, won[0][0] - lost[0][0]
        follower.resume()
        wait_for("a has a new lease", lambda: a.counters.leases == 2 and a.lease_id, 5)
        renewals = b.counters.renewals
        wait_for("b renews twice more", lambda: b.counters.renewals >= renewals + 2, 5)
    assert not a.leading and b.leading
    assert a.counters.lost_leases == 1 and b.counters.lost_leases == 0
    assert [e[3] for e in rec.of("b", "leader")] == [True]  # b never lost it
    assert sampler.both_leading == 0 and sampler.slot_twice == []
    print(
        f"cut off: a gave up {gave_up:.3f}s after the cut, b led "
        f"{won[0][0] - cut:.3f}s after it ({won[0][0] - lost[0][0]:.3f}s after a gave up)"
    )


class FailingDeletes(EtcdClient):
    """A client whose first ``failures`` own-deletes fail as if etcd did not answer."""

    def __init__(self, endpoints: Sequence[str], failures: int) -> None:
        super().__init__(endpoints, timeout=0.3)
        self.failures = failures

    def delete_own(self, key: str, *, lease: int, until: float | None = None) -> bool:
        if self.failures > 0:
            self.failures -= 1
            raise EtcdError(f"{key}: no answer (injected)", kind="no_answer")
        return super().delete_own(key, lease=lease, until=until)


def test_a_hand_over_whose_delete_failed_is_finished_not_taken_back(
    etcd: EtcdCluster, replicas: list[Replica]
) -> None:
    group, rec = fresh_group(), Recorder()
    first = make(etcd.endpoints, group, rec, "r0")
    client = FailingDeletes(etcd.endpoints, failures=1)
    first.client = client
    replicas.append(first)
    first.start()
    wait_for("r0 owns all 8", lambda: len(first.owned_slots()) == 8, 5)
    second = make(etcd.endpoints, group, rec, "r1")
    replicas.append(second)
    with Sampler(replicas) as sampler:
        second.start()
        wait_for("8 slots as 4+4", lambda: settled(replicas, [4, 4]), 10)
    assert client.failures == 0 and first.counters.etcd_failures >= 1
    r0_slots = [e for e in rec.events if e[1] == "r0" and e[2] != "leader"]
    assert [on for _, _, _, on in r0_slots].count(False) == 4  # four let go, once each
    assert [on for _, _, _, on in r0_slots].count(True) == 8  # none taken back
    assert sampler.slot_twice == []


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_an_etcd_member_lost_changes_nothing(
    etcd: EtcdCluster, replicas: list[Replica], fault: str
) -> None:
    ttl = 5  # the default, under etcd's default raft timings (elections take 1 to 2 s)
    group, rec = fresh_group(), Recorder()
    raft_leader = etcd.leader()
    # Every replica talks to the raft leader first: losing it costs an election too.
    endpoints = [raft_leader.client_url] + [
        e for e in etcd.endpoints if e != raft_leader.client_url
    ]
    replicas += [make(endpoints, group, rec, f"r{i}", ttl) for i in range(3)]
    for r in replicas:
        r.start()
    wait_for("settled", lambda: settled(replicas, [3, 3, 2]), 10)
    assert all(r.client.endpoint == raft_leader.client_url for r in replicas)
    before = {r.member_id: (r.leading, r.owned_slots()) for r in replicas}
    events = len(rec.events)
    renewals = {r.member_id: r.counters.renewals for r in replicas}
    with Sampler(replicas) as sampler:
        hit = time.monotonic()
        raft_leader.kill() if fault == "kill" else raft_leader.pause()
        # Positive marker: every lease renewed, through another member, for longer than
        # its TTL after the fault.
        wait_for(
            "each lease renewed past its TTL after the fault",
            lambda: all(
                r.counters.renewals - renewals[r.member_id] > ttl / r.timing.renew_every
                for r in replicas
            ),
            ttl * 3,
        )
        held = time.monotonic() - hit
    assert held > ttl
    assert {r.member_id: (r.leading, r.owned_slots()) for r in replicas} == before
    assert rec.events[events:] == []  # no callback: nothing gained, nothing lost
    assert all(r.counters.lost_leases == 0 for r in replicas)
    assert all(r.client.endpoint != raft_leader.client_url for r in replicas)
    assert all(r.client.failovers >= 1 for r in replicas)
    assert sampler.both_leading == 0 and sampler.slot_twice == []
    closest = min(r.counters.tightest_renewal or ttl for r in replicas)
    # Still working, not just holding: the leader leaves, the two others take over.
    leader = next(r for r in replicas if r.leading)
    rest = [r for r in replicas if r is not leader]
    leader.stop()
    wait_for("a new leader, 8 slots as 4+4", lambda: settled(rest, [4, 4]), 5)
    done = "killed" if fault == "kill" else "paused"
    print(
        f"etcd raft leader {done}: no loss over {held:.1f}s; at worst a renewal was "
        f"confirmed {closest:.2f}s before the lease would have been given up"
    )
