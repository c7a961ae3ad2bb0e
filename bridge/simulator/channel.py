"""The notification channel: the queue of pending messages and how they are encoded.

Entries are JSON fragments built once, when they are emitted, so that a pull only joins
strings: a batch of 10,000 notifications is one ``str.join`` per kind. The queue keeps
the global order; a batch that could not be delivered goes back to the head, so the
next pull (or webhook attempt) delivers it first.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import deque
from collections.abc import Iterable

from bridge.connector.messages import MESSAGE_KINDS

# Entry kinds, in the order their arrays appear in a message: indexes into KIND_KEYS.
NOTIFICATION, REGISTRATION, REG_UPDATE, DEREGISTRATION, EXPIRED, ASYNC_RESPONSE = range(6)
KIND_KEYS = MESSAGE_KINDS

Entry = tuple[int, str]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def notification(
    ep: str, path: str, payload: bytes, ct: str = "text/plain", max_age: int = 60
) -> Entry:
    return (
        NOTIFICATION,
        f'{{"ep":{json.dumps(ep)},"path":{json.dumps(path)},"ct":{json.dumps(ct)},'
        f'"payload":"{b64(payload)}","max-age":{max_age}}}',
    )


def registration(kind: int, ep: str, ept: str, q: bool, resources_json: str) -> Entry:
    """A ``registrations`` or ``reg-updates`` entry; ``resources_json`` is pre-encoded."""
    return (
        kind,
        f'{{"ep":{json.dumps(ep)},"ept":{json.dumps(ept)},"q":{"true" if q else "false"},'
        f'"resources":{resources_json}}}',
    )


def endpoint_name(kind: int, ep: str) -> Entry:
    """A ``de-registrations`` or ``registrations-expired`` entry."""
    return (kind, json.dumps(ep))


def async_response(
    aid: str,
    status: int,
    payload: bytes | None = None,
    ct: str = "text/plain",
    error: str | None = None,
    max_age: int = 0,
) -> Entry:
    body: dict[str, object] = {"id": aid, "status": status}
    if error is not None:
        body["error"] = error
    if payload is not None:
        body["ct"] = ct
        body["max-age"] = max_age
        body["payload"] = b64(payload)
    return (ASYNC_RESPONSE, json.dumps(body))


def _endpoint_of(kind: int, fragment: str) -> str:
    """The endpoint name of a lifecycle entry."""
    doc = json.loads(fragment)
    return str(doc["ep"] if kind in (REGISTRATION, REG_UPDATE) else doc)


def encode(batch: Iterable[Entry]) -> bytes:
    """The JSON message carrying a batch of entries, grouped by kind, order kept."""
    groups: list[list[str]] = [[], [], [], [], [], []]
    for kind, fragment in batch:
        groups[kind].append(fragment)
    parts = [f'"{KIND_KEYS[k]}":[{",".join(g)}]' for k, g in enumerate(groups) if g]
    return ("{" + ",".join(parts) + "}").encode()


class Outbox:
    """Pending channel entries, bounded; the oldest are dropped (and counted) when full.

    Lives on the emulator's event loop; not thread-safe by itself.
    """

    def __init__(self, max_pending: int = 1_000_000, batch_size: int = 10_000) -> None:
        self.max_pending = max_pending
        self.batch_size = batch_size
        self._queue: deque[Entry] = deque()
        self._ready = asyncio.Event()
        self.dropped = 0  # dropped because the queue was full

    def __len__(self) -> int:
        return len(self._queue)

    def rebind(self) -> None:
        """A fresh wake-up event for a new event loop (an emulator started again)."""
        self._ready = asyncio.Event()
        if self._queue:
            self._ready.set()

    def put(self, entry: Entry) -> None:
        self._queue.append(entry)
        if len(self._queue) > self.max_pending:
            self._queue.popleft()
            self.dropped += 1
        self._ready.set()

    def put_many(self, entries: list[Entry]) -> None:
        self._queue.extend(entries)
        excess = len(self._queue) - self.max_pending
        for _ in range(max(0, excess)):
            self._queue.popleft()
            self.dropped += 1
        if self._queue:
            self._ready.set()

    def take(self) -> list[Entry]:
        """Up to ``batch_size`` entries from the head.

        A batch never holds two different lifecycle entries (registration, reg-update,
        de-registration, expiry) of one endpoint: a message groups entries by kind, so
        their order would be lost (a reboot's de-registration and registration would
        read as registered, then gone). The second one starts the next batch.
        """
        q = self._queue
        n = min(len(q), self.batch_size)
        batch: list[Entry] = []
        lifecycle: dict[str, int] = {}
        for _ in range(n):
            kind, fragment = q[0]
            if REGISTRATION <= kind <= EXPIRED:
                ep = _endpoint_of(kind, fragment)
                if lifecycle.setdefault(ep, kind) != kind:
                    break
            batch.append(q.popleft())
        if not q:
            self._ready.clear()
        return batch

    def put_back(self, batch: list[Entry]) -> None:
        """Return an undelivered batch to the head, in its order."""
        self._queue.extendleft(reversed(batch))
        if self._queue:
            self._ready.set()

    def clear(self) -> int:
        n = len(self._queue)
        self._queue.clear()
        self._ready.clear()
        return n

    async def wait(self, timeout: float | None) -> bool:
        """True once something is pending; False after ``timeout`` with nothing."""
        if self._queue:
            return True
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            return bool(self._queue)
        return bool(self._queue)
