"""Where a group lives in etcd: one prefix per group, three kinds of keys under it.

``/<group>/leader``          the leader's member id, under the leader's lease
``/<group>/slots/<slot>``    the owner's member id, under the owner's lease
``/<group>/members/<id>``    a member's entry (JSON, :class:`~bridge.cluster.members.MemberInfo`)

Each key is created only if absent and lives under its holder's lease, so it exists at
most once and vanishes with its holder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bridge.cluster.etcd import prefix_end

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a valid group, member or slot name; ValueError saying why not."""
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} must be 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


@dataclass(frozen=True, slots=True)
class GroupKeys:
    group: str

    def __post_init__(self) -> None:
        check_name(self.group, "the group name")

    @property
    def root(self) -> str:
        return f"/{self.group}/"

    @property
    def leader(self) -> str:
        return f"/{self.group}/leader"

    @property
    def coordination(self) -> tuple[str, bytes]:
        """One range (start, end) over the leader, the members and the slots, at one
        revision, without the command records under ``inflight/`` (which sort before
        ``leader``, and may be thousands during a burst)."""
        return self.leader, prefix_end(self.root)

    @property
    def slots(self) -> str:
        return f"/{self.group}/slots/"

    def slot(self, name: str) -> str:
        return self.slots + name

    @property
    def members(self) -> str:
        return f"/{self.group}/members/"

    def member(self, member_id: str) -> str:
        return self.members + member_id
