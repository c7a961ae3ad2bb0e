"""A fixed set of named slots spread over the live members: who claims and who lets go.

Each member aims at its fair share, ``ceil(slots / members)``: one that holds more lets
the surplus go (it stops using a slot *before* it deletes the key), one that holds less
claims free slots, the next in its order of preference whenever another member was
quicker. The order is rendezvous hashing (the highest ``crc32(member/slot)`` first):
members rarely race for the same free slot, and a slot tends to return to the member
that held it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass


def slot_names(count: int, prefix: str = "cmd-") -> tuple[str, ...]:
    """``cmd-0`` ... ``cmd-<count-1>``: for example the MQTT client ids of command sessions."""
    if count < 0:
        raise ValueError("a slot count cannot be negative")
    return tuple(f"{prefix}{i}" for i in range(count))


def fair_share(slots: int, members: int) -> int:
    """Slots one member should hold: all of them shared out, rounded up."""
    return math.ceil(slots / max(1, members))


def weight(member_id: str, slot: str) -> int:
    """How much ``member_id`` prefers ``slot`` (stable across processes and runs)."""
    return zlib.crc32(f"{member_id}/{slot}".encode())


def by_preference(member_id: str, slots: Iterable[str]) -> list[str]:
    return sorted(slots, key=lambda s: (-weight(member_id, s), s))


@dataclass(frozen=True, slots=True)
class SlotPlan:
    wanted: int  # slots to claim, at most
    candidates: tuple[str, ...]  # free slots, best first: try the next when one is lost
    release: tuple[str, ...]  # own slots to let go (the least preferred)


def plan(
    member_id: str,
    slots: Collection[str],
    owned: Collection[str],
    taken: Collection[str],
    members: int,
) -> SlotPlan:
    """What ``member_id`` should do, holding ``owned``, with ``taken`` held by others."""
    target = fair_share(len(slots), members)
    mine = [s for s in owned if s in slots]
    if len(mine) > target:
        surplus = by_preference(member_id, mine)[target:]
        return SlotPlan(wanted=0, candidates=(), release=tuple(surplus))
    free = [s for s in slots if s not in owned and s not in taken]
    wanted = min(target - len(mine), len(free))
    return SlotPlan(wanted, tuple(by_preference(member_id, free)) if wanted else (), ())
