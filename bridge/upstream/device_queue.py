"""One line per device: the requests the bridge sends a device, in arrival order, at most
:data:`SERVICE_QUEUE` of them at the service at once.

Today's service keeps at most 20 requests per device and delivers them one at a time, in
order; a 21st is refused (``QUEUE_IS_FULL``). The legacy Connector queues for its
queue-mode devices too (``429`` when the queue is full, often fewer than 20). So a user
who sends 100 commands to a sleeping device would see 80 of them refused, and the
bridge's own reads (initial reads, Home Assistant) would compete for the same 20 places.
Every read, write and execute of the port therefore takes its turn here
(:class:`DeviceQueues`), whoever makes it:

- **at the service**: sent and taken (an async id), not answered yet: at most ``window``
  (20; fewer while the service says its queue is full, see below);
- **sending**: at most one per device at a time, the HTTP call under way (with its
  retries): the next request is sent only once the service took this one, so the
  service receives them in the order they came, whatever worker sends them;
- **waiting in the bridge**: the rest, in arrival order, at most ``limit`` per device
  beyond what the service takes (``BRIDGE_DEVICE_QUEUE``; a line holds ``window +
  limit`` in all); past it a request is refused at once.

When an answer comes (or a request ends otherwise: its time-out, a stop), the next one
waiting is sent, on a worker. A service that answers ``QUEUE_IS_FULL`` (or ``429``)
while the bridge has requests of that device at the service has a smaller queue than
thought (or other clients use it): the request is held and sent again when one of those
is answered, and the window shrinks to what the service holds until its queue drains.

A waiting request keeps its own deadline (the call's time-out, from its arrival): when
it passes first, the call ends with a reply that says it never reached the service. A
request with an ``expiry`` gives the service what is left of it when it is finally sent
(the service's minimum of 60 s at least); the call then waits for the service's verdict
(:meth:`Ticket.taken` says until when).

This module knows nothing of MQTT or the Connector's API: a request is a :class:`Ticket`
that :class:`~bridge.upstream.async_calls.AsyncCalls` drives (its ``turn``).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

SERVICE_QUEUE = 20
"""Requests today's service keeps per device (more are refused: ``QUEUE_IS_FULL``)."""
EXPIRY_RANGE = (60, 2_592_000)
"""Today's ``expiry-seconds``: at least a minute, at most 30 days."""
RETRY_RANGE = (0, 10)
"""Today's ``retry``: delivery attempts after the first."""
EXPIRY_GRACE = 10.0
"""Seconds the bridge waits past a request's expiry for the service's verdict
(``REQUEST_EXPIRED``) to arrive on the channel."""
TOTAL_WAITING = 100_000
"""Requests waiting in the bridge over all devices, at most (each device's own bound
times a large fleet would be no bound at all)."""
LISTED_MAX = 1000
"""Requests :meth:`DeviceQueues.pending` lists at most (the counts are always whole)."""

_METHODS = {"read": "GET", "write": "PUT", "execute": "POST"}

State = Literal["new", "waiting", "sending", "at_service", "done"]
Go = Callable[[bool], None]
"""Make the call's first try: ``go(True)`` on this thread (a worker), ``go(False)`` on a
worker of the call's own pool (from the channel or deadline thread)."""


def is_queue_full(status: int | None, code: str | None) -> bool:
    """The service refused a request because its queue for the device is full: today's
    ``QUEUE_IS_FULL``, the legacy Connector's 429."""
    return code == "QUEUE_IS_FULL" or status == 429


class _Device:
    __slots__ = ("at_service", "held", "sending", "waiting", "window")

    def __init__(self, window: int) -> None:
        self.waiting: deque[Ticket] = deque()
        self.sending: Ticket | None = None
        self.held: Callable[[], None] | None = None  # sends ``sending`` again (queue full)
        self.at_service: dict[Ticket, None] = {}  # in the order the service took them
        self.window = window

    def empty(self) -> bool:
        return not self.waiting and self.sending is None and not self.at_service


class Ticket:
    """One request's turn at its device (the ``turn`` of an async call)."""

    __slots__ = (
        "_accepted",
        "_acked",
        "_go",
        "_queues",
        "arrived",
        "deadline",
        "device",
        "expiry",
        "path",
        "retry",
        "sent_at",
        "sent_expiry",
        "state",
        "verb",
    )

    def __init__(
        self,
        queues: DeviceQueues,
        device: str,
        verb: str,
        path: str,
        timeout: float,
        expiry: int | None,
        retry: int | None,
    ) -> None:
        self._queues = queues
        self.device = device
        self.verb = verb
        self.path = path
        self.expiry = expiry
        self.retry = retry
        self.arrived = time.monotonic()
        self.deadline = self.arrived + timeout
        self.state: State = "new"
        self.sent_at: float | None = None
        self.sent_expiry: int | None = None
        self._go: Go | None = None
        self._accepted: Callable[[], object] | None = None
        self._acked = False

    # ---- what AsyncCalls calls -------------------------------------------------------------

    def enter(self, go: Go, accepted: Callable[[], object] | None) -> str | None:
        """Join the device's line: ``go`` is called when it is this request's turn (now, or
        later); a refusal text (the bridge's bound is reached) instead. ``accepted`` is
        called if it must wait for an answer of the device first and
        :attr:`DeviceQueues.ack_early` allows it for the device (a sleeping one: an
        unacknowledged command would hold one of the broker's in-flight places for as long
        as the device sleeps; see the README's delivery guarantees). For an awake device
        the command stays unacknowledged until the service takes it, so a bridge that dies
        meanwhile gets it again; the broker's in-flight window is then the back-pressure."""
        return self._queues._enter(self, go, accepted)

    def taken(self) -> float | None:
        """The service took the request (an async id): the next may be sent. Returns the
        time (monotonic) by which the service gives its verdict on an expiry, with
        :data:`EXPIRY_GRACE`, when that is later than the call's deadline; else None."""
        return self._queues._taken(self)

    def hold(self, status: int | None, code: str | None, again: Callable[[], None]) -> bool:
        """A try was refused: if because the service's queue for the device is full while
        the bridge has requests there, hold it and call ``again`` when one is answered
        (True); else False (the call's own retry policy decides)."""
        return self._queues._hold(self, status, code, again)

    def left(self) -> None:
        """The call ended (answered, timed out, refused, stopped): the next may go."""
        self._queues._left(self)

    def waiting_text(self) -> str | None:
        """Why the call never reached the service, if it did not (for its time-out)."""
        return self._queues._waiting_text(self)

    def expiry_to_send(self) -> int | None:
        """The ``expiry-seconds`` for the try being made now: what is left of the
        request's expiry since it arrived, within the service's range; None without one."""
        if self.expiry is None:
            return None
        now = time.monotonic()
        lo, hi = EXPIRY_RANGE
        left = math.ceil(self.expiry - (now - self.arrived))
        self.sent_at, self.sent_expiry = now, min(hi, max(lo, left))
        return self.sent_expiry

    def describe(self, now: float) -> dict[str, Any]:
        """The request as the ``pending`` bridge request lists it."""
        return {
            "state": self.state,
            "verb": self.verb,
            "method": _METHODS.get(self.verb),
            "path": self.path,
            "age": round(now - self.arrived, 3),
            "expiry": self.expiry,
            "retry": self.retry,
            "sent_expiry": self.sent_expiry,
            "timeout_in": round(max(0.0, self.deadline - now), 3),
        }


class DeviceQueues:
    """Every device's line (see the module doc). Thread-safe: one lock, held only for a
    few dictionary and deque operations; the calls it starts run after it is released."""

    def __init__(
        self,
        limit: int,
        *,
        window: int = SERVICE_QUEUE,
        total: int = TOTAL_WAITING,
        setting: str = "BRIDGE_DEVICE_QUEUE",
    ) -> None:
        if limit < 1 or window < 1 or total < 1:
            raise ValueError("limit, window and total must be at least 1")
        self.limit = limit
        self.window = window
        self.total = total
        self._setting = setting
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        self._waiting = 0  # over all devices
        # Whether a request that must wait for its device's answers may be acknowledged to
        # the broker now (see _enter); the bridge says yes for queue-mode devices only.
        self.ack_early: Callable[[str], bool] = lambda device: False
        self.held_count = 0  # tries held because the service's queue was full
        self.refused = 0  # requests refused: the bridge's bound was reached

    def ticket(
        self,
        device: str,
        verb: str,
        path: str,
        *,
        timeout: float,
        expiry: int | None = None,
        retry: int | None = None,
    ) -> Ticket:
        """A request to ``device``, not in line yet (:meth:`Ticket.enter`)."""
        return Ticket(self, device, verb, path, timeout, expiry, retry)

    # ---- the line -------------------------------------------------------------------------

    def _enter(self, t: Ticket, go: Go, accepted: Callable[[], object] | None) -> str | None:
        acks: list[Callable[[], object]] = []
        with self._lock:
            dev = self._devices.get(t.device)
            if dev is None:
                dev = self._devices[t.device] = _Device(self.window)
            t._go, t._accepted = go, accepted
            if dev.sending is None and not dev.waiting and len(dev.at_service) < dev.window:
                dev.sending, t.state = t, "sending"
                now = True
            elif self._ahead(dev, len(dev.waiting)) >= dev.window + self.limit:
                self.refused += 1
                return (
                    f"bridge busy for {t.device!r}: {len(dev.at_service)} requests to this "
                    f"device are at the service, which takes no more until the device "
                    f"answers, and {len(dev.waiting) + (dev.sending is not None)} wait in the "
                    f"bridge ({self._setting}={self.limit})"
                )
            elif self._waiting >= self.total:
                self.refused += 1
                return f"bridge busy: {self._waiting} requests wait in the bridge in all (at most)"
            else:
                dev.waiting.append(t)
                self._waiting += 1
                t.state = "waiting"
                now = False
                if self._ahead(dev, len(dev.waiting) - 1) >= dev.window and self.ack_early(
                    t.device
                ):
                    self._ack(t, acks)
        for ack in acks:
            ack()
        if now:
            go(True)
        return None

    @staticmethod
    def _ahead(dev: _Device, index: int) -> int:
        """Requests of the device that go before waiting number ``index``."""
        return len(dev.at_service) + (dev.sending is not None) + index

    @staticmethod
    def _ack(t: Ticket, acks: list[Callable[[], object]]) -> None:
        if not t._acked and t._accepted is not None:
            t._acked = True
            acks.append(t._accepted)

    def _taken(self, t: Ticket) -> float | None:
        with self._lock:
            dev = self._devices.get(t.device)
            if dev is None or dev.sending is not t:
                return None  # ended meanwhile
            dev.sending = None
            dev.at_service[t] = None
            t.state = "at_service"
            run = self._pump(dev)
            later = None
            if t.sent_at is not None and t.sent_expiry is not None:
                verdict = t.sent_at + t.sent_expiry + EXPIRY_GRACE
                if verdict > t.deadline:
                    t.deadline = later = verdict
        for fn in run:
            fn()
        return later

    def _hold(
        self, t: Ticket, status: int | None, code: str | None, again: Callable[[], None]
    ) -> bool:
        if not is_queue_full(status, code):
            return False
        acks: list[Callable[[], object]] = []
        with self._lock:
            dev = self._devices.get(t.device)
            if dev is None or dev.sending is not t or not dev.at_service:
                return False
            dev.window = len(dev.at_service)
            dev.held = again
            self.held_count += 1
            if self.ack_early(t.device):
                self._ack(t, acks)
                # Those now beyond the window wait for an answer too. Only the first
                # ``self.window`` can be unacknowledged: the rest were beyond it on arrival.
                for i, w in enumerate(itertools.islice(dev.waiting, self.window)):
                    if self._ahead(dev, i) >= dev.window:
                        self._ack(w, acks)
        for ack in acks:
            ack()
        return True

    def _left(self, t: Ticket) -> None:
        with self._lock:
            state, t.state = t.state, "done"
            dev = self._devices.get(t.device)
            if dev is None or state in ("new", "done"):
                return
            if state == "waiting":
                with contextlib.suppress(ValueError):
                    dev.waiting.remove(t)
                    self._waiting -= 1
            elif state == "sending" and dev.sending is t:
                dev.sending = None
                dev.held = None
            else:
                dev.at_service.pop(t, None)
                if not dev.at_service:
                    dev.window = self.window  # the service's queue drained
            run = self._pump(dev)
            if dev.empty():
                del self._devices[t.device]
        for fn in run:
            fn()

    def _pump(self, dev: _Device) -> list[Callable[[], None]]:
        """Under the lock: what may go now (called after the lock is released)."""
        if len(dev.at_service) >= dev.window:
            return []
        if dev.sending is not None:
            held, dev.held = dev.held, None
            return [] if held is None else [held]
        if not dev.waiting:
            return []
        t = dev.waiting.popleft()
        self._waiting -= 1
        dev.sending, t.state = t, "sending"
        go = t._go
        assert go is not None
        return [lambda: go(False)]

    def _waiting_text(self, t: Ticket) -> str | None:
        with self._lock:
            dev = self._devices.get(t.device)
            if dev is None:
                return None
            waited = time.monotonic() - t.arrived
            if t.state == "waiting":
                try:
                    index = dev.waiting.index(t)
                except ValueError:
                    return None
                ahead = self._ahead(dev, index)
                return (
                    f"not sent: it waited {waited:.1f} s in the bridge behind {ahead} earlier "
                    f"request(s) to this device, {len(dev.at_service)} of them at the service "
                    f"(it takes {self.window} per device and delivers them one at a time)"
                )
            if t.state == "sending" and dev.sending is t and dev.held is not None:
                return (
                    f"not taken by the service: its queue for this device was full, and none "
                    f"of the {len(dev.at_service)} requests there was answered in {waited:.1f} s"
                )
        return None

    # ---- figures ---------------------------------------------------------------------------

    def pending(self, device: str | None = None) -> dict[str, Any]:
        """What waits, per device: at the service (sent, not answered) and in the bridge
        (not sent yet), each request described (at most :data:`LISTED_MAX` in all)."""
        now = time.monotonic()
        listed = 0
        out: list[dict[str, Any]] = []
        with self._lock:
            names = [device] if device is not None else sorted(self._devices)
            for name in names:
                dev = self._devices.get(name)
                if dev is None:
                    continue
                line = [*dev.at_service, *([dev.sending] if dev.sending else []), *dev.waiting]
                room = max(0, LISTED_MAX - listed)
                listed += min(room, len(line))
                out.append(
                    {
                        "endpoint": name,
                        "at_service": len(dev.at_service),
                        "sending": int(dev.sending is not None),
                        "waiting": len(dev.waiting),
                        "window": dev.window,
                        "requests": [x.describe(now) for x in line[:room]],
                    }
                )
        return {
            "devices": out,
            "limit": self.limit,
            "window": self.window,
            "truncated": listed < sum(d["at_service"] + d["sending"] + d["waiting"] for d in out),
        }

    def counts(self) -> dict[str, int]:
        """Totals over every device, for the bridge's info."""
        with self._lock:
            devices = list(self._devices.values())
            return {
                "devices": len(devices),
                "at_service": sum(len(d.at_service) for d in devices),
                "sending": sum(d.sending is not None for d in devices),
                "waiting": sum(len(d.waiting) for d in devices),
                "held": self.held_count,
                "refused": self.refused,
            }
