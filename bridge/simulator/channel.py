"""The notification channel: the queue of pending messages and how they are encoded.

Entries are JSON fragments built once, when they are emitted, so that a pull only joins
strings: a batch of 10,000 notifications is one ``str.join`` per kind. The queue keeps
the global order; a batch that could not be delivered goes back to the head, so the
next pull (or webhook attempt, or WebSocket frame) delivers it first.

:class:`Encoder` builds the fragments of one dialect and one channel's serialization
options (:class:`Serialization`), picked once; the module-level builders below are the
legacy dialect's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

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
    """The endpoint (name or device ID) of a lifecycle entry."""
    doc = json.loads(fragment)
    return str(doc["ep"] if isinstance(doc, dict) else doc)


# --- the current dialect: serialization options and fragment builders ------------------

MIN_CHUNK, MAX_CHUNK = 100, 10_000
_CFG_KEYS = (
    "deregistrations_as_object",
    "include_uid",
    "include_timestamp",
    "include_original_ep",
)


@dataclass(frozen=True)
class Serialization:
    """A channel's serialization options (``{"serialization": {...}}`` of its PUT)."""

    max_chunk_size: int = MAX_CHUNK
    deregistrations_as_object: bool = False
    include_uid: bool = False
    include_timestamp: bool = False
    include_original_ep: bool = False
    given: bool = False  # False: the defaults (no serialization object was sent)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "v2",
            "max_chunk_size": self.max_chunk_size,
            "cfg": {key: getattr(self, key) for key in _CFG_KEYS},
        }


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"serialization cfg {name} must be a boolean")


def parse_serialization(data: Any) -> Serialization:
    """The options of a ``serialization`` object; ValueError says what is wrong. Booleans
    may come as ``"true"``/``"false"`` and ``max_chunk_size`` as a string, as the API
    file's own examples send them."""
    if data is None:
        return Serialization()
    if not isinstance(data, dict):
        raise ValueError("serialization must be an object")
    unknown = set(data) - {"type", "max_chunk_size", "cfg"}
    if unknown:
        raise ValueError(f"serialization has unknown keys {sorted(unknown)}")
    if data.get("type", "v2") != "v2":
        raise ValueError('serialization type must be "v2"')
    chunk: Any = data.get("max_chunk_size", MAX_CHUNK)
    if isinstance(chunk, bool):
        raise ValueError("max_chunk_size must be an integer")
    try:
        size = int(chunk)
    except (TypeError, ValueError):
        raise ValueError("max_chunk_size must be an integer") from None
    if isinstance(chunk, float) and chunk != size:
        raise ValueError("max_chunk_size must be an integer")
    if not MIN_CHUNK <= size <= MAX_CHUNK:
        raise ValueError(f"max_chunk_size must be {MIN_CHUNK}-{MAX_CHUNK}")
    cfg = data.get("cfg", {})
    if not isinstance(cfg, dict):
        raise ValueError("serialization cfg must be an object")
    unknown = set(cfg) - set(_CFG_KEYS)
    if unknown:
        raise ValueError(f"serialization cfg has unknown keys {sorted(unknown)}")
    flags = {key: _flag(cfg[key], key) for key in _CFG_KEYS if key in cfg}
    return Serialization(max_chunk_size=size, given=True, **flags)


def rfc3339_ms(wall: float) -> str:
    """``2024-05-01T12:34:56.789Z``: UTC, milliseconds."""
    ms = int(wall * 1000)
    secs, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:03d}Z"


def no_meta() -> str:
    return ""


class Encoder:
    """Builds the entry fragments of one dialect and one channel's serialization options.

    Chosen once (when the emulator starts, or a channel is registered with options), so
    emitting an entry never asks which options are on: the extra fields are made by
    functions picked here. Legacy: ``ep`` is the endpoint name and nothing is added.
    Current: ``ep`` is the device ID, registrations and reg-updates carry
    ``original-ep``, async responses send ``max-age`` as a string, and the options add
    ``uid`` (assigned here, at emit, so a redelivered entry keeps it), ``timestamp``
    (when the entry was queued), ``original-ep`` on every entry that has an ``ep`` and
    de-registrations as objects.
    """

    def __init__(self, current: bool = False, options: Serialization | None = None) -> None:
        self.current = current
        self.options = options or Serialization()
        opts = self.options if current else Serialization()
        self.chunk = opts.max_chunk_size
        self._uid_prefix = _uid_prefix()
        self._uid_n = 0
        self._stamp_ms = -1
        self._stamp_text = ""
        parts: list[Callable[[], str]] = []
        if opts.include_uid:
            parts.append(self._uid)
        if opts.include_timestamp:
            parts.append(self._timestamp)
        if not parts:
            self.meta: Callable[[], str] = no_meta
        elif len(parts) == 1:
            self.meta = parts[0]
        else:
            first, second = parts
            self.meta = lambda: first() + second()
        self.original_ep_everywhere = current and opts.include_original_ep
        self.objects = current and opts.deregistrations_as_object

    # --- the extra fields ----------------------------------------------------------

    def _uid(self) -> str:
        self._uid_n += 1
        return f',"uid":"{self._uid_prefix}{self._uid_n:012x}"'

    def _timestamp(self) -> str:
        ms = int(time.time() * 1000)
        if ms != self._stamp_ms:
            self._stamp_ms = ms
            self._stamp_text = rfc3339_ms(ms / 1000)
        return f',"timestamp":"{self._stamp_text}"'

    def original_ep_field(self, name: str) -> str:
        """``,"original-ep":"name"`` where every entry carries it, else nothing."""
        return f',"original-ep":{json.dumps(name)}' if self.original_ep_everywhere else ""

    # --- entries ---------------------------------------------------------------------

    def notification_prefix(self, ep: str, name: str, path: str, ct: str) -> str:
        """Everything of a notification before its payload (kept by bursts per target)."""
        return (
            f'{{"ep":{json.dumps(ep)}{self.original_ep_field(name)},"path":{json.dumps(path)},'
            f'"ct":{json.dumps(ct)},"payload":"'
        )

    def notification_from_prefix(self, prefix: str, payload_b64: str, max_age: int = 60) -> Entry:
        return (NOTIFICATION, f'{prefix}{payload_b64}","max-age":{max_age}{self.meta()}}}')

    def notification(
        self, ep: str, name: str, path: str, payload: bytes, ct: str = "text/plain"
    ) -> Entry:
        return self.notification_from_prefix(
            self.notification_prefix(ep, name, path, ct), b64(payload)
        )

    def registration(
        self, kind: int, ep: str, name: str, ept: str, q: bool, resources_json: str
    ) -> Entry:
        original = f',"original-ep":{json.dumps(name)}' if self.current else ""
        return (
            kind,
            f'{{"ep":{json.dumps(ep)}{original},"ept":{json.dumps(ept)},'
            f'"q":{"true" if q else "false"},"resources":{resources_json}{self.meta()}}}',
        )

    def gone(self, kind: int, ep: str, name: str) -> Entry:
        """A ``de-registrations`` or ``registrations-expired`` entry."""
        if not self.objects:
            return (kind, json.dumps(ep))
        return (kind, f'{{"ep":{json.dumps(ep)}{self.original_ep_field(name)}{self.meta()}}}')

    def async_response(
        self,
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
            # The API file declares max-age a string; the legacy service sent a number.
            body["max-age"] = str(max_age) if self.current else max_age
            body["payload"] = b64(payload)
        return (ASYNC_RESPONSE, json.dumps(body)[:-1] + self.meta() + "}")


def _uid_prefix() -> str:
    """The random first 20 hex digits of this encoder's uids (UUID-shaped)."""
    r = os.urandom(10).hex()
    return f"{r[:8]}-{r[8:12]}-4{r[13:16]}-{'89ab'[int(r[16], 16) % 4]}{r[17:20]}-"


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

    def take(self, limit: int | None = None) -> list[Entry]:
        """Up to ``batch_size`` (or ``limit``, if smaller) entries from the head.

        A batch never holds two different lifecycle entries (registration, reg-update,
        de-registration, expiry) of one endpoint: a message groups entries by kind, so
        their order would be lost (a reboot's de-registration and registration would
        read as registered, then gone). The second one starts the next batch.
        """
        q = self._queue
        n = min(len(q), self.batch_size if limit is None else min(limit, self.batch_size))
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

    def poke(self) -> None:
        """Wake the waiting consumer although nothing new is pending (it rechecks its
        state, e.g. a fault switched on); ``take`` or ``settle`` clears the wake-up."""
        self._ready.set()

    def settle(self) -> None:
        """Forget a wake-up when nothing is pending."""
        if not self._queue:
            self._ready.clear()

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
