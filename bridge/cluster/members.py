"""The members of a group and the view of it that ``connector-bridge status`` shows.

Each replica keeps ``/<group>/members/<id>`` under its lease: who it is (id, host, pid,
when it started) and what it says it does (role, slots). The view reads the whole group
in one range, so the leader, the slot owners and the members it shows are those of one
revision of the store; the leader and the owners come from their own keys, which are
authoritative (a member's own entry may lag behind them by one poll).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bridge.cluster.etcd import EtcdClient, Snapshot
from bridge.cluster.keys import GroupKeys

Role = Literal["leader", "follower"]


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """A replica as it registered itself."""

    id: str
    host: str
    pid: int
    started: float  # Unix time
    role: Role = "follower"
    slots: tuple[str, ...] = ()

    @classmethod
    def here(cls, member_id: str) -> MemberInfo:
        """This process."""
        return cls(id=member_id, host=socket.gethostname(), pid=os.getpid(), started=time.time())

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "host": self.host,
                "pid": self.pid,
                "started": round(self.started, 3),
                "role": self.role,
                "slots": list(self.slots),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> MemberInfo:
        data: dict[str, Any] = json.loads(text)
        role = data.get("role")
        return cls(
            id=str(data["id"]),
            host=str(data.get("host", "")),
            pid=int(data.get("pid", 0)),
            started=float(data.get("started", 0.0)),
            role="leader" if role == "leader" else "follower",
            slots=tuple(str(s) for s in data.get("slots", ())),
        )


def default_member_id() -> str:
    """``<host>-<pid>``: unique among the processes of one host, readable in a listing."""
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    return f"{host.strip('.-_')[:50] or 'bridge'}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ClusterView:
    """The group at one revision: members, the leader, who owns which slot."""

    group: str
    revision: int
    leader: str | None
    members: tuple[MemberInfo, ...]
    slots: dict[str, str | None] = field(default_factory=dict)

    def owned_by(self, member_id: str) -> tuple[str, ...]:
        return tuple(s for s, owner in self.slots.items() if owner == member_id)

    def lines(self) -> list[str]:
        """What ``connector-bridge status`` prints for the group, one line a member."""
        out = [f"group {self.group}: {len(self.members)} member(s), leader {self.leader or '-'}"]
        for m in self.members:
            role = "leader" if m.id == self.leader else "follower"
            owned = ",".join(self.owned_by(m.id)) or "-"
            out.append(f"  {m.id} {role} host={m.host} pid={m.pid} slots={owned}")
        free = [s for s, owner in self.slots.items() if owner is None]
        if free:
            out.append(f"  unowned slots: {','.join(free)}")
        return out


def view_from(snapshot: Snapshot, group: str, slots: Sequence[str] = ()) -> ClusterView:
    """The view of one range over ``/<group>/``; ``slots`` lists slots no one holds too."""
    keys = GroupKeys(group)
    leader_kv = snapshot.get(keys.leader)
    members = []
    for kv in snapshot.under(keys.members):
        try:
            members.append(MemberInfo.from_json(kv.value))
        except (ValueError, KeyError, TypeError):
            members.append(MemberInfo(id=kv.key[len(keys.members) :], host="?", pid=0, started=0))
    owners: dict[str, str | None] = dict.fromkeys(slots)
    for kv in snapshot.under(keys.slots):
        owners[kv.key[len(keys.slots) :]] = kv.text
    return ClusterView(
        group=group,
        revision=snapshot.revision,
        leader=leader_kv.text if leader_kv else None,
        members=tuple(sorted(members, key=lambda m: m.id)),
        slots=dict(sorted(owners.items(), key=lambda item: _natural(item[0]))),
    )


def read_view(client: EtcdClient, group: str, slots: Sequence[str] = ()) -> ClusterView:
    """The group as etcd holds it now (one linearizable range)."""
    return view_from(client.get_range(*GroupKeys(group).coordination), group, slots)


def cluster_view(
    endpoints: Sequence[str], group: str, slots: Sequence[str] = (), timeout: float = 2.0
) -> ClusterView:
    """:func:`read_view` with a client of its own (for ``connector-bridge status``)."""
    with EtcdClient(endpoints, timeout=timeout) as client:
        return read_view(client, group, slots)


def _natural(name: str) -> tuple[str, int]:
    """``cmd-2`` before ``cmd-10``."""
    head = name.rstrip("0123456789")
    tail = name[len(head) :]
    return head, int(tail) if tail else -1
