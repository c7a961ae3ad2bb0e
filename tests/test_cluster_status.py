"""``connector-bridge status`` against a real group: three ``connector-bridge run``
processes of one group on a real three-member etcd, one emulator (today's dialect), one
Mosquitto. The output names each replica, marks the leader and lists who owns which
command slot: from etcd when status is given ``BRIDGE_CLUSTER_ETCD`` (exact), from the
replicas' retained health when it is not, or when etcd does not answer from where status
runs (saying so). A replica killed by its pid shows as gone (its will: offline), its
slots owned by the others.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.service.status_cli import main
from bridge.simulator import Emulator
from tests.support.bridge_group import BridgeGroup, running_group
from tests.support.broker import MosquittoBroker
from tests.support.etcd import EtcdCluster, etcd_fixtures
from tests.support.ports import free_port

etcd_cluster, etcd = etcd_fixtures()

TTL = 2
SLOTS = 4
MEMBERS = ("r1", "r2", "r3")


@pytest.fixture(autouse=True)
def no_bridge_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def current() -> Iterator[Emulator]:
    with Emulator(api="current", drift=False) as emu:
        yield emu


@pytest.fixture
def group(current: Emulator, broker: MosquittoBroker, etcd: EtcdCluster) -> Iterator[BridgeGroup]:
    with running_group(current, broker, etcd, ttl=TTL, slots=SLOTS) as g:
        yield g


def status(
    capsys: pytest.CaptureFixture[str], broker: MosquittoBroker, *extra: str
) -> tuple[int, str, str]:
    args = ["--env-file", "", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port)]
    code = main([*args, *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def etcd_flags(g: BridgeGroup, endpoints: str | None = None) -> list[str]:
    return ["--cluster-etcd", endpoints or ",".join(g.etcd.endpoints),
            "--cluster-group", g.group, "--cluster-slots", str(SLOTS)]  # fmt: skip


def replica_table(out: str) -> tuple[list[str], dict[str, list[str]]]:
    """The group's head lines and its rows by replica name."""
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("group "))
    header = lines[head + 2].split()
    assert header == ["REPLICA", "ROLE", "STATE", "READY", "HOST", "PID", "SLOTS"], lines[head:]
    rows: dict[str, list[str]] = {}
    for line in lines[head + 3 :]:
        if not line.strip() or line.startswith("unowned"):
            break
        cells = line.split()
        rows[cells[0]] = cells
    return lines[head : head + 2], rows


def settled(g: BridgeGroup) -> Any:
    """The view once three members are in and every slot has an owner."""
    view = g.view()
    owners = {s: o for s, o in view.slots.items() if o}
    shares = [len(view.owned_by(m)) for m in MEMBERS]
    if (
        len(view.members) == len(MEMBERS)
        and len(owners) == SLOTS
        and view.leader
        and max(shares) <= -(-SLOTS // len(MEMBERS))
    ):  # every one at most its fair share: no more moves
        return view
    return None


def test_status_lists_the_replicas_the_leader_and_the_slot_owners(
    group: BridgeGroup, broker: MosquittoBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    procs = {m: group.start(m) for m in MEMBERS}
    view = group.wait(lambda: settled(group), 30, "three members, every slot owned")
    group.wait(lambda: status(capsys, broker)[0] == 0, 20, "a bridge answers status")

    # From etcd: exact.
    code, out, err = status(capsys, broker, *etcd_flags(group))
    assert code == 0, err
    with capsys.disabled():
        print(f"\n{out}")  # -s shows it
    view = group.view()  # the group does not change while nothing happens to it
    head, rows = replica_table(out)
    assert head[0] == f"group {group.group}: 3 replica(s), leader {view.leader}", out
    assert head[1].strip().startswith(f"(from etcd {','.join(group.etcd.endpoints)}, revision")
    assert set(rows) == set(MEMBERS)
    for m, cells in rows.items():
        role, state, ready, _host, pid, slots = cells[1:]
        assert ready in ("yes", "no"), cells  # its retained health is known
        assert role == ("leader" if m == view.leader else "follower"), cells
        assert state == "online" and pid == str(procs[m].pid), cells
        assert slots.split(",") == list(view.owned_by(m)) or (slots == "-" and not view.owned_by(m))
    owned = sorted(s for cells in rows.values() if cells[6] != "-" for s in cells[6].split(","))
    assert owned == sorted(f"cmd-{i}" for i in range(SLOTS))
    assert f"figures and endpoints from replica {view.leader} (leader)" in out
    assert "ENDPOINT" in out and "light-001" in out

    # Every replica ready (a follower: its lease and the broker), as its health says.
    def all_ready() -> bool:
        _, out, _ = status(capsys, broker, *etcd_flags(group))
        last[:] = [out]
        return all(cells[3] == "yes" for cells in replica_table(out)[1].values())

    last: list[str] = []
    try:
        group.wait(all_ready, 10, "every replica ready")
    except AssertionError:
        _, out, _ = status(capsys, broker, "--json", *etcd_flags(group))
        raise AssertionError(f"{last}\n{out}") from None

    # As JSON, from etcd too.
    code, out, _ = status(capsys, broker, "--json", *etcd_flags(group))
    doc = json.loads(out)["group"]
    assert doc["source"] == "etcd" and doc["leader"] == view.leader
    assert {r["member"]: r["slots"] for r in doc["replicas"]} == {
        m: list(view.owned_by(m)) for m in MEMBERS
    }

    # Without BRIDGE_CLUSTER_ETCD, and with an etcd that does not answer: the replicas'
    # retained health (each replica publishes it every second here, and within the health
    # extension's check period of a change of role or readiness), named as the source.

    def from_health(*flags: str) -> tuple[list[str], dict[str, list[str]]] | None:
        code, out, err = status(capsys, broker, *flags)
        assert code == 0, err
        head, rows = replica_table(out)
        expected = {
            m: ["leader" if m == view.leader else "follower", ",".join(view.owned_by(m)) or "-"]
            for m in MEMBERS
        }
        got = {m: [cells[1], cells[6]] for m, cells in rows.items()}
        return (head, rows) if got == expected else None

    try:
        head, _ = group.wait(from_health, 10, "the retained health agrees with etcd")
    except AssertionError:
        raise AssertionError(f"{view}\n{last}") from None
    assert head[0] == f"group {group.group}: 3 replica(s), leader {view.leader}"
    assert "BRIDGE_CLUSTER_ETCD unset here" in head[1]
    nobody = f"http://127.0.0.1:{free_port()}"
    head, _ = group.wait(lambda: from_health(*etcd_flags(group, nobody)), 10, "from health")
    assert f"etcd {nobody} did not answer (" in head[1] and "retained health" in head[1]
    code, out, _ = status(capsys, broker, "--json", *etcd_flags(group, nobody))
    doc = json.loads(out)
    assert doc["group"]["source"] == "retained health" and doc["errors"]["etcd"]

    # A follower killed by its pid: gone from etcd, offline by its will; the others own
    # its slots.
    victim = next(m for m in MEMBERS if m != view.leader)
    procs[victim].kill()

    def after_kill() -> Any:
        v = group.view()
        owners = [o for o in v.slots.values() if o]
        return v if len(v.members) == 2 and len(owners) == SLOTS else None

    view = group.wait(after_kill, TTL + 10, "the survivors own every slot")

    def shows_gone() -> dict[str, list[str]] | None:
        _, out, _ = status(capsys, broker, *etcd_flags(group))
        _, rows = replica_table(out)
        return rows if rows.get(victim, [None, None, None])[1:3] == ["gone", "offline"] else None

    rows = group.wait(shows_gone, 15, f"{victim} gone and offline")
    assert set(rows) == set(MEMBERS)
    for m in MEMBERS:
        if m != victim:
            assert rows[m][6].split(",") == list(view.owned_by(m)), rows[m]
    assert rows[victim][6] == "-"
    assert rows[view.leader][1] == "leader"
