"""The kinds of message the Connector's notification channel carries, named once.

A channel message (a long-poll answer, a webhook body) is a JSON object whose keys are
these kinds, each holding a list of entries. The client library, the bridge's Connector
side and webhook receiver and the emulator all name the kinds from here. The kinds are
plain strings (the wire keys), so they compare, hash, format and serialise as the keys.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from typing import Any, Final, Literal

Kind = Literal[
    "notifications",
    "registrations",
    "reg-updates",
    "de-registrations",
    "registrations-expired",
    "async-responses",
]


class MessageKind:
    """The kinds by name: ``MessageKind.REG_UPDATES == "reg-updates"`` (a namespace)."""

    NOTIFICATIONS: Final = "notifications"
    REGISTRATIONS: Final = "registrations"
    REG_UPDATES: Final = "reg-updates"
    DE_REGISTRATIONS: Final = "de-registrations"
    REGISTRATIONS_EXPIRED: Final = "registrations-expired"
    ASYNC_RESPONSES: Final = "async-responses"


#: Every kind, in the order the emulator writes their arrays in a message.
MESSAGE_KINDS: Final[tuple[Kind, ...]] = (
    MessageKind.NOTIFICATIONS,
    MessageKind.REGISTRATIONS,
    MessageKind.REG_UPDATES,
    MessageKind.DE_REGISTRATIONS,
    MessageKind.REGISTRATIONS_EXPIRED,
    MessageKind.ASYNC_RESPONSES,
)

#: Every kind, in the order a received message is dispatched: new registrations before
#: notifications (a message may carry a device's registration and its first values),
#: departures last.
DISPATCH_ORDER: Final[tuple[Kind, ...]] = (
    MessageKind.REGISTRATIONS,
    MessageKind.REG_UPDATES,
    MessageKind.ASYNC_RESPONSES,
    MessageKind.NOTIFICATIONS,
    MessageKind.DE_REGISTRATIONS,
    MessageKind.REGISTRATIONS_EXPIRED,
)


class RecentIds:
    """The last ``size`` entry ``uid``\\ s seen, to drop an entry delivered twice.

    Today's service puts a ``uid`` on every entry (serialization option ``include_uid``)
    so that a consumer can tell a redelivery (after a reconnect, a retried callback) from
    a new entry. The window is bounded: memory stays flat however long the channel runs.
    Thread-safe (a webhook server may dispatch on several threads); one lock per message.
    """

    def __init__(self, size: int = 65_536) -> None:
        if size < 1:
            raise ValueError("the duplicate window must hold at least one uid")
        self.size = size
        self.dropped = 0
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def first_time(self, uid: str) -> bool:
        """True for a uid not in the window (it is added), False for a duplicate."""
        return self.new_ones([uid]) == [True]

    def new_ones(self, uids: list[str]) -> list[bool]:
        """For each uid, whether it is new (then added to the window); duplicates are
        counted. A uid twice in ``uids`` is new only the first time."""
        ids, order = self._ids, self._order
        out = []
        with self._lock:
            for uid in uids:
                if uid in ids:
                    out.append(False)
                    continue
                ids.add(uid)
                order.append(uid)
                out.append(True)
            excess = len(order) - self.size
            for _ in range(excess if excess > 0 else 0):
                ids.discard(order.popleft())
            self.dropped += out.count(False)
        return out


def drop_seen(message: dict[str, Any], seen: RecentIds) -> int:
    """Remove the entries whose ``uid`` was seen before from ``message`` (in place; a
    kind left empty is removed) and read an async response's ``max-age`` as a number
    where it came as a string (the API file declares a string, the service's examples
    send numbers). Returns how many entries were dropped."""
    dropped = 0
    for kind in MESSAGE_KINDS:
        entries = message.get(kind)
        if not isinstance(entries, list) or not entries:
            continue
        if kind == MessageKind.ASYNC_RESPONSES:
            for entry in entries:
                age = entry.get("max-age") if isinstance(entry, dict) else None
                if isinstance(age, str):
                    with contextlib.suppress(ValueError):
                        entry["max-age"] = int(age)
        first = entries[0]
        if not isinstance(first, dict) or "uid" not in first:
            continue  # no uids in this list (the option is off, or plain strings)
        uids = [e.get("uid") if isinstance(e, dict) else None for e in entries]
        keyed = [u for u in uids if isinstance(u, str)]
        fresh = iter(seen.new_ones(keyed))
        kept = [
            e for e, u in zip(entries, uids, strict=True) if not isinstance(u, str) or next(fresh)
        ]
        if len(kept) != len(entries):
            dropped += len(entries) - len(kept)
            if kept:
                message[kind] = kept
            else:
                del message[kind]
    return dropped
