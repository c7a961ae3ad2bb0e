"""The typed event bus between the Connector side and the extensions.

The Connector side (:mod:`bridge.upstream.side`) turns channel messages into the
events below; the MQTT link reports its connection changes the same way. Extensions
subscribe to the events they care about; they never call each other, and the two
protocol sides never import each other.

Handlers run synchronously on the thread that emitted the event: the long-poll thread
(or the callback receiver) for Connector events, paho's network thread for MQTT events,
the start-up thread for endpoints found at start-up. So a handler must be quick and must
never block waiting for something the emitting thread delivers; slow work (REST calls)
goes to a worker pool. A handler that raises is logged and the others still run.

Events carry values, never the Connector's wire format: the Connector side decodes a
notification's base64 payload and field names once (:class:`Notification`).
Notifications travel as one event per channel message (a batch), not one per value, so
the bus costs nothing measurable on the hot path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar

log = logging.getLogger("bridge.events")


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource of an endpoint, as registrations and listings describe it.

    The one resource model of the bridge: the registry, the events and Home Assistant
    discovery all use it. ``writable`` and ``executable`` are ``None`` when unknown (the
    Connector's registrations and listings do not say; the emulator's scenarios and tests
    may); whoever reads them decides what unknown means.
    """

    path: str
    rt: str | None = None
    ct: str | None = None
    obs: bool = False
    writable: bool | None = None
    executable: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        """``path``, ``rt``, ``ct``, ``obs``, and ``writable``/``executable`` when known."""
        out: dict[str, Any] = {"path": self.path, "rt": self.rt, "ct": self.ct, "obs": self.obs}
        if self.writable is not None:
            out["writable"] = self.writable
        if self.executable is not None:
            out["executable"] = self.executable
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Resource:
        """A resource from an :meth:`as_dict` mapping (a ``$resources`` entry) or a
        resource listing entry (``uri`` instead of ``path``); the path gets one leading
        ``/``, an empty ``rt``/``ct`` becomes ``None``. Raises ValueError without a path."""
        path = data.get("path", data.get("uri"))
        if not isinstance(path, str) or not path.strip("/"):
            raise ValueError(f"resource needs a path: {dict(data)!r}")
        writable, executable = data.get("writable"), data.get("executable")
        return cls(
            path="/" + path.strip().strip("/"),
            rt=str(data.get("rt") or "") or None,
            ct=str(data.get("ct") or "") or None,
            obs=_truthy(data.get("obs", False)),
            writable=None if writable is None else _truthy(writable),
            executable=None if executable is None else _truthy(executable),
        )


def _truthy(value: Any) -> bool:
    """``True``/``1``/``"yes"``/``"on"``... as a bool (strings by their text)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


Source = Literal["registration", "reg-update", "startup"]


@dataclass(frozen=True, slots=True)
class EndpointRegistered:
    """An endpoint is there (state online): it registered, updated its registration,
    or was listed at start-up (``source``)."""

    name: str
    type: str | None
    queue_mode: bool
    source: Source


@dataclass(frozen=True, slots=True)
class EndpointResources:
    """The resources of an endpoint are known: from its registration, or described at
    start-up. Emitted after :class:`EndpointRegistered` for the same endpoint.

    With ``source="startup"`` the event is emitted on a background worker thread, where
    a handler may block for a bounded time (the initial reads use that); otherwise it
    comes from the channel thread and handlers must not block.
    """

    name: str
    type: str | None
    queue_mode: bool
    resources: tuple[Resource, ...]
    source: Source


@dataclass(frozen=True, slots=True)
class EndpointRemoved:
    """An endpoint left: de-registered (``offline``) or its registration expired.

    Not a removal: a rebooting device de-registers and registers again, so the bridge
    keeps what it knows (and publishes) about the endpoint until it is forgotten."""

    name: str
    state: Literal["offline", "expired"]


ForgetReason = Literal["request", "grace"]


@dataclass(frozen=True, slots=True)
class EndpointForgotten:
    """The bridge let go of an endpoint that is gone for good: a remove request, or away
    (de-registered or expired) for longer than ``endpoint_remove_after``. Its retained
    messages (``$state``, ``$resources``, values, discovery configs) are to be cleared.
    ``resources`` are what the endpoint had (None: never known)."""

    name: str
    resources: tuple[Resource, ...] | None
    reason: ForgetReason


class Notification(NamedTuple):
    """One notified value: the endpoint, the resource's path and the value's bytes."""

    endpoint: str
    path: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class NotificationsReceived:
    """The notifications of one channel message, decoded: ``values`` in the order they
    came; ``received`` counts the message's entries, the ones that could not be decoded
    included (the Connector side counts those as ``notifications_bad``)."""

    values: Sequence[Notification]
    received: int


@dataclass(frozen=True, slots=True)
class ValueRead:
    """A resource value the bridge read itself (initial read, a get command)."""

    endpoint: str
    path: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class MqttConnected:
    """The link (re)connected; subscriptions are renewed. ``first``: the first time."""

    first: bool
    session_present: bool = False


@dataclass(frozen=True, slots=True)
class MqttDisconnected:
    reason: str


ChannelLost = Literal["taken_over", "revoked", "deleted", "rejected"]
ConnectorState = Literal["up", "down", "refused", "taken_over", "revoked", "deleted", "rejected"]


@dataclass(frozen=True, slots=True)
class ConnectorStateChanged:
    """The Connector's reachability changed (emitted once per change, by the Connector side).

    ``up``: it answers. ``down``: connection errors, 5xx, 429 or cut long polls for a while
    (retried with back-off; the bridge recovers by itself when it answers again).
    ``refused``: the access key is refused (401/403; tried again only now and then).
    ``taken_over``, ``revoked``, ``deleted``, ``rejected``: the service ended the WebSocket
    channel for good (another consumer took it, 1001; the key was revoked, 1008; the
    channel was deleted, 1000; a registration or handshake refused with a 4xx other than
    401/403): not tried again.
    ``since`` is the Unix time this state began, ``detail`` the last problem (None when
    up), ``failures`` the consecutive failed attempts. Emitted on the Connector side's
    monitor thread or the start-up thread: handlers must be quick.
    """

    state: ConnectorState
    since: float
    detail: str | None = None
    failures: int = 0


@dataclass(frozen=True, slots=True)
class EndpointsListed:
    """Start-up: every endpoint registered at start has had its EndpointRegistered."""

    count: int


@dataclass(frozen=True, slots=True)
class BridgeStarted:
    """Start-up finished: every endpoint known at start has been announced."""

    endpoints: int


@dataclass(frozen=True, slots=True)
class BridgeStopping:
    """The bridge is about to stop: last chance to publish."""

    reason: str = "stop"


@dataclass(frozen=True, slots=True)
class LeadershipChanged:
    """This replica of a group (``BRIDGE_CLUSTER_ETCD``) became the leader (``leading``,
    with ``term``, the leadership's fencing token) or is no longer it (``term`` None).
    The leader holds the notification channel and does the start-up work. Emitted on the
    replication's hand-over thread, in the order the replica saw the changes."""

    leading: bool
    term: int | None = None


@dataclass(frozen=True, slots=True)
class SlotChanged:
    """This replica gained (``owned``) or let go of the group's slot ``slot`` (see
    :mod:`bridge.cluster.slots`). Emitted on the replication's hand-over thread, in order."""

    slot: str
    owned: bool


E = TypeVar("E")
Handler = Callable[[Any], None]


@dataclass
class EventBus:
    """Handlers by event type; ``emit`` calls them in subscription order."""

    _handlers: dict[type, list[Handler]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def subscribe(self, event_type: type[E], handler: Callable[[E], None]) -> None:
        with self._lock:
            # Copy-on-write: emit() reads the list without taking the lock.
            self._handlers[event_type] = [*self._handlers.get(event_type, ()), handler]

    def unsubscribe(self, event_type: type[E], handler: Callable[[E], None]) -> None:
        with self._lock:
            self._handlers[event_type] = [
                h for h in self._handlers.get(event_type, ()) if h != handler
            ]

    def emit(self, event: object) -> None:
        for handler in self._handlers.get(type(event), ()):
            try:
                handler(event)
            except Exception:
                log.exception("handler %r failed on %s", handler, type(event).__name__)

    def has_handlers(self, event_type: type) -> bool:
        return bool(self._handlers.get(event_type))
