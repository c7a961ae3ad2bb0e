"""Replicas as separate processes against a real three-member etcd, killed (SIGKILL) and
paused (SIGSTOP, SIGCONT) by pid: a new leader within TTL + 2 s, slots taken over, and
at no moment two processes that believe they hold one thing.

Each process writes what its main thread would act on (``leading``, ``slots``) at every
check, about every 20 ms, with :func:`time.monotonic` (one clock for all processes of the
machine). Overlaps are looked for in those checks: for each resource, the runs of checks
of one process that held it must not intersect another process's runs.
Run with ``-s`` to see the failover times.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.cluster.lease import LeaseTiming
from bridge.cluster.slots import slot_names
from tests.support.cluster_replica import ReplicaProcess
from tests.support.etcd import EtcdCluster, etcd_fixtures, fresh_group, wait_for

etcd_cluster, etcd = etcd_fixtures()

SLOTS = 8


@pytest.fixture
def processes() -> Iterator[list[ReplicaProcess]]:
    started: list[ReplicaProcess] = []
    yield started
    for p in started:
        p.terminate()  # by pid: SIGCONT, SIGTERM, SIGKILL after 10 s
    for p in started:
        assert p.proc is not None and p.proc.poll() is not None, f"{p.member_id} still runs"


def spawn(
    etcd: EtcdCluster, tmp_path: Path, processes: list[ReplicaProcess], ttl: int
) -> list[ReplicaProcess]:
    group = fresh_group()
    new = [
        ReplicaProcess(tmp_path, etcd.endpoints, group, f"p{i}", ttl=ttl, slots=SLOTS).start()
        for i in range(3)
    ]
    processes += new
    return new


def last_check(p: ReplicaProcess) -> dict[str, Any] | None:
    checks = p.events("check")
    return checks[-1] if checks else None


def settled(procs: list[ReplicaProcess], sizes: list[int]) -> ReplicaProcess | None:
    """The leader, once the latest checks show one leader and every slot owned once."""
    latest = [last_check(p) for p in procs]
    if any(c is None for c in latest):
        return None
    owned = [c["slots"] for c in latest if c]
    leaders = [p for p, c in zip(procs, latest, strict=True) if c and c["leading"]]
    every = sorted(s for slots in owned for s in slots)
    shares = sorted(len(o) for o in owned)
    if len(leaders) == 1 and every == sorted(slot_names(SLOTS)) and shares == sorted(sizes):
        return leaders[0]
    return None


def runs(checks: list[dict[str, Any]], holds: Any) -> list[tuple[float, float]]:
    """The spans [first, last] of consecutive checks for which ``holds(check)`` is true."""
    out: list[tuple[float, float]] = []
    start = last = None
    for c in checks:
        if holds(c):
            start = c["t"] if start is None else start
            last = c["t"]
        elif start is not None:
            out.append((start, last))
            start = None
    if start is not None:
        out.append((start, last))
    return out  # type: ignore[return-value]


def overlaps(procs: list[ReplicaProcess]) -> list[str]:
    """Every observed moment at which two processes held the same resource."""
    checks = {p.member_id: p.events("check") for p in procs}
    resources: list[tuple[str, Any]] = [("leader", lambda c: c["leading"])]
    resources += [(s, lambda c, s=s: s in c["slots"]) for s in slot_names(SLOTS)]
    found = []
    for name, holds in resources:
        spans = [(m, span) for m, cs in checks.items() for span in runs(cs, holds)]
        for i, (m1, (a1, b1)) in enumerate(spans):
            for m2, (a2, b2) in spans[i + 1 :]:
                if m1 != m2 and a1 <= b2 and a2 <= b1:
                    found.append(f"{name}: {m1} {a1:.3f}-{b1:.3f} and {m2} {a2:.3f}-{b2:.3f}")
    return found


def gained_after(p: ReplicaProcess, t: float) -> float | None:
    for e in p.events("leadership"):
        if e["leading"] and e["t"] > t:
            return float(e["t"])
    return None


@pytest.mark.parametrize("ttl", [2, 5])
def test_sigkill_of_the_leader_a_new_leader_within_ttl_plus_2s(
    etcd: EtcdCluster, tmp_path: Path, processes: list[ReplicaProcess], ttl: int
) -> None:
    procs = spawn(etcd, tmp_path, processes, ttl)
    leader = wait_for("one leader, slots 3+3+2", lambda: settled(procs, [3, 3, 2]), 15)
    rest = [p for p in procs if p is not leader]
    killed = time.monotonic()
    leader.kill()  # SIGKILL by pid: no revoke, its lease must run out in etcd
    new_at = wait_for(
        "a new leader",
        lambda: min((t for p in rest if (t := gained_after(p, killed))), default=None),
        ttl + 4,
    )
    failover = new_at - killed
    wait_for("the survivors own all 8 slots, 4+4", lambda: settled(rest, [4, 4]), ttl + 4)
    slots_at = max(e["t"] for p in rest for e in p.events("slot") if e["owned"] and e["t"] > killed)
    assert failover < ttl + 2, f"new leader {failover:.3f}s after the kill (TTL {ttl})"
    assert slots_at - killed < ttl + 2, f"slots taken over {slots_at - killed:.3f}s after"
    # Not before etcd could have expired the dead leader's lease (its last renewal was
    # at most one renewal interval before the kill): nobody jumped the gun.
    assert failover > ttl - LeaseTiming.for_ttl(ttl).renew_every - 0.05
    assert overlaps(procs) == []
    assert len([p for p in rest if gained_after(p, killed)]) == 1
    print(
        f"TTL {ttl}s: SIGKILL of the leader process -> new leader after {failover:.3f}s, "
        f"its 3 slots owned again after {slots_at - killed:.3f}s"
    )


def test_a_paused_leader_finds_it_lost_the_lease_before_it_acts(
    etcd: EtcdCluster, tmp_path: Path, processes: list[ReplicaProcess]
) -> None:
    ttl = 2
    procs = spawn(etcd, tmp_path, processes, ttl)
    paused = wait_for("one leader, slots 3+3+2", lambda: settled(procs, [3, 3, 2]), 15)
    rest = [p for p in procs if p is not paused]
    held_before = last_check(paused)
    assert held_before is not None and held_before["leading"] and held_before["slots"]
    stopped = time.monotonic()
    paused.pause()  # SIGSTOP by pid
    new_at = wait_for(
        "a new leader while it is stopped",
        lambda: min((t for p in rest if (t := gained_after(p, stopped))), default=None),
        ttl + 4,
    )
    new_leader = next(p for p in rest if gained_after(p, stopped))
    wait_for("the others own all 8 slots", lambda: settled(rest, [4, 4]), ttl + 4)
    resumed = time.monotonic()
    assert resumed - stopped > ttl  # paused past its TTL
    paused.resume()  # SIGCONT by pid
    first = wait_for(
        "its first check after resuming",
        lambda: next((c for c in paused.events("check") if c["t"] > resumed), None),
        5,
    )
    # The very first check after the pause sees the lease gone: nothing to act on.
    assert first["gap"] > ttl and first["leading"] is False and first["slots"] == []
    wait_for(
        "its loss reported", lambda: any(not e["leading"] for e in paused.events("leadership")), 5
    )
    # It rejoins with a new lease and gets a share of the slots back, never the lead.
    wait_for("slots 3+3+2 again", lambda: settled(procs, [3, 3, 2]) is new_leader, 10)
    after = [c for c in paused.events("check") if c["t"] > resumed]
    assert after and not any(c["leading"] for c in after)
    assert [e["leading"] for e in new_leader.events("leadership")] == [True]  # kept it
    assert overlaps(procs) == []
    print(
        f"paused {resumed - stopped:.2f}s (TTL {ttl}s): new leader after "
        f"{new_at - stopped:.3f}s; first check after resuming: leading={first['leading']}, "
        f"slots={first['slots']}"
    )
