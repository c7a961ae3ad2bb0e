"""Switchable faults: what a flaky Connector or a misbehaving device does to a client.

``Faults.apply(**kw)`` validates and switches faults on (a value of ``None`` switches
one off); the request handlers ask the ``*_for`` methods whether a fault hits the
request at hand. Counted faults (``force_status``, ``malformed``, ``hang``,
``device_status``) hit the next ``count`` matching requests and then switch themselves
off. Route faults name a route of :data:`ROUTES` (or ``"*"``); device faults name a
device by endpoint name or ID.

``device_status={"ep": ..., "path": ..., "status": 415, "count": n}``: the device itself
refuses the next ``n`` requests for that path (or below it) with that status, as a device
that cannot give an object instance in one answer does. The service accepted them, so the
refusal is the request's async response (on both dialects), with no payload; the device
carries nothing out.

The WebSocket channel's faults (current dialect):

- ``ws_close={"code": 1006 | 1011 | 1012, "after": n}``: once ``n`` more messages
  (default 0) went out, the socket is closed: 1006 aborts the connection (no close
  frame), 1011 is the service's "unexpected condition" (the channel still exists), 1012
  is a service restart. One shot; it hits the next connection if none is open.
- ``cut_sockets=share`` or ``{"rate": share, "codes": [1006, 1011, 1012]}``: each message
  about to go out closes the socket instead with that probability (it stays queued and
  goes out on the next connection), with one of the codes at random (default 1006; 1011
  here is the service's "unexpected condition": the channel still exists). Stays on
  until switched off, like ``cut_polls``.
- ``revoke_key=True``: the open socket is closed with 1008 and every later request with
  the key is 401 (handshakes too) until the fault is switched off; the admin routes
  keep working.
- ``refuse_handshake={"status": 503, "count": n}``: the next ``n`` handshakes are
  answered with that status instead of the upgrade.
- ``duplicate_messages=n``: the next ``n`` messages are sent twice (the same frame, so
  the same uids), for a client's duplicate detection.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

ROUTES = (
    "version",
    "rest-versions",
    "limits",
    "endpoints",
    "endpoint",
    "endpoint-delete",
    "resource-get",
    "resource-put",
    "resource-post",
    "resource-delete",
    "subscription-put",
    "subscription-get",
    "subscription-delete",
    "endpoint-subscriptions-get",
    "endpoint-subscriptions-delete",
    "subscriptions-delete-all",
    "presubscription-put",
    "presubscription-get",
    "pull",
    "callback-put",
    "callback-get",
    "callback-delete",
    "device-requests",
    "devices",
    "device",
    "channel",
    "websocket-put",
    "websocket-get",
    "websocket-delete",
    "websocket-connect",
)

FAULT_NAMES = (
    "latency",
    "device_latency",
    "error_rate",
    "force_status",
    "cut_polls",
    "device_timeout",
    "device_gone",
    "device_status",
    "malformed",
    "hang",
    "ws_close",
    "cut_sockets",
    "revoke_key",
    "refuse_handshake",
    "duplicate_messages",
)
WS_CLOSE_CODES = (1006, 1011, 1012)


def _route(value: Any) -> str:
    if value != "*" and value not in ROUTES:
        raise ValueError(f"unknown route {value!r}; one of {', '.join(ROUTES)} or '*'")
    return str(value)


def _count(spec: dict[str, Any]) -> int:
    count = int(spec.get("count", 1))
    if count < 1:
        raise ValueError("count must be at least 1")
    return count


def _share(value: Any, name: str) -> float:
    share = float(value)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1")
    return share


@dataclass
class Counted:
    route: str
    count: int
    status: int = 0
    body: str = ""

    def hits(self, route: str) -> bool:
        if self.count > 0 and self.route in ("*", route):
            self.count -= 1
            return True
        return False


@dataclass
class ErrorRate:
    route: str
    rate: float
    statuses: tuple[int, ...]


@dataclass
class WsClose:
    code: int
    after: int  # messages still to send before the socket is closed


@dataclass
class DeviceFault:
    ep: str
    path: str | None

    def hits(self, ep: str, path: str) -> bool:
        return self.ep in ("*", ep) and (self.path is None or path.startswith(self.path))


@dataclass
class DeviceRefusal:
    fault: DeviceFault
    status: int
    count: int

    def hits(self, ep: str, path: str) -> bool:
        if self.count > 0 and self.fault.hits(ep, path):
            self.count -= 1
            return True
        return False


class Faults:
    """The faults switched on now. Used on the emulator's event loop only."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.clear()

    def clear(self) -> None:
        self.latency = 0.0
        self.device_latency: float | None = None
        self.error_rates: list[ErrorRate] = []
        self.forced: list[Counted] = []
        self.cut_polls = 0.0
        self.device_timeouts: list[DeviceFault] = []
        self.gone: set[str] = set()
        self.refusals: list[DeviceRefusal] = []
        self.malformed: list[Counted] = []
        self.hangs: list[Counted] = []
        self.ws_close: WsClose | None = None
        self.cut_sockets = 0.0
        self.cut_socket_codes: tuple[int, ...] = (1006,)
        self.key_revoked = False
        self.refused_handshakes: Counted | None = None
        self.duplicates = 0

    def apply(self, **kw: Any) -> None:
        """Switch faults on (or off with ``None``); raises ValueError naming a bad one."""
        unknown = set(kw) - set(FAULT_NAMES)
        if unknown:
            raise ValueError(f"unknown fault {sorted(unknown)}; known: {', '.join(FAULT_NAMES)}")
        for name, value in kw.items():
            try:
                getattr(self, f"_set_{name}")(value)
            except (TypeError, KeyError, AttributeError) as exc:
                raise ValueError(f"fault {name}: {exc!r}") from exc
            except ValueError as exc:
                raise ValueError(f"fault {name}: {exc}") from exc

    @staticmethod
    def _many(value: Any) -> list[Any]:
        return list(value) if isinstance(value, list | tuple) else [value]

    def _set_latency(self, value: Any) -> None:
        self.latency = 0.0 if value is None else max(0.0, float(value))

    def _set_device_latency(self, value: Any) -> None:
        self.device_latency = None if value is None else max(0.0, float(value))

    def _set_cut_polls(self, value: Any) -> None:
        self.cut_polls = 0.0 if value is None else _share(value, "cut_polls")

    def _set_error_rate(self, value: Any) -> None:
        self.error_rates = []
        for spec in [] if value is None else self._many(value):
            statuses = tuple(int(s) for s in spec.get("statuses", [500, 503, 429]))
            if not statuses or any(not 100 <= s <= 599 for s in statuses):
                raise ValueError("statuses must be HTTP status codes")
            self.error_rates.append(
                ErrorRate(_route(spec.get("route", "*")), _share(spec["rate"], "rate"), statuses)
            )

    def _set_force_status(self, value: Any) -> None:
        self.forced = []
        for spec in [] if value is None else self._many(value):
            status = int(spec["status"])
            if not 100 <= status <= 599:
                raise ValueError(f"status {status} is not an HTTP status")
            self.forced.append(
                Counted(_route(spec["route"]), _count(spec), status, str(spec.get("body", "")))
            )

    def _set_malformed(self, value: Any) -> None:
        self.malformed = [
            Counted(_route(s["route"]), _count(s))
            for s in ([] if value is None else self._many(value))
        ]

    def _set_hang(self, value: Any) -> None:
        self.hangs = [
            Counted(_route(s["route"]), _count(s))
            for s in ([] if value is None else self._many(value))
        ]

    def _set_device_timeout(self, value: Any) -> None:
        self.device_timeouts = []
        for spec in [] if value is None else self._many(value):
            if isinstance(spec, str):
                spec = {"ep": spec}
            path = spec.get("path")
            self.device_timeouts.append(
                DeviceFault(str(spec["ep"]), None if path is None else str(path))
            )

    def _set_device_gone(self, value: Any) -> None:
        self.gone = set() if value is None else {str(v) for v in self._many(value)}

    def _set_device_status(self, value: Any) -> None:
        self.refusals = []
        for spec in [] if value is None else self._many(value):
            status = int(spec["status"])
            if not 400 <= status <= 599:
                raise ValueError(f"status {status} is not an error status")
            path = spec.get("path")
            fault = DeviceFault(str(spec["ep"]), None if path is None else str(path))
            self.refusals.append(DeviceRefusal(fault, status, _count(spec)))

    def _set_ws_close(self, value: Any) -> None:
        if value is None:
            self.ws_close = None
            return
        spec = {"code": value} if isinstance(value, int) else value
        code = int(spec["code"])
        if code not in WS_CLOSE_CODES:
            raise ValueError(f"code must be one of {WS_CLOSE_CODES}")
        after = int(spec.get("after", 0))
        if after < 0:
            raise ValueError("after must not be negative")
        self.ws_close = WsClose(code, after)

    def _set_cut_sockets(self, value: Any) -> None:
        if value is None:
            self.cut_sockets, self.cut_socket_codes = 0.0, (1006,)
            return
        spec = value if isinstance(value, dict) else {"rate": value}
        codes = tuple(int(c) for c in spec.get("codes", [1006]))
        if not codes or any(c not in WS_CLOSE_CODES for c in codes):
            raise ValueError(f"codes must be some of {WS_CLOSE_CODES}")
        self.cut_sockets = _share(spec["rate"], "rate")
        self.cut_socket_codes = codes

    def _set_revoke_key(self, value: Any) -> None:
        if value is not None and not isinstance(value, bool):
            raise ValueError("revoke_key is true, false or null")
        self.key_revoked = bool(value)

    def _set_refuse_handshake(self, value: Any) -> None:
        if value is None:
            self.refused_handshakes = None
            return
        status = int(value.get("status", 503))
        if not 400 <= status <= 599:
            raise ValueError(f"status {status} is not an HTTP error status")
        self.refused_handshakes = Counted("websocket-connect", _count(value), status)

    def _set_duplicate_messages(self, value: Any) -> None:
        count = 0 if value is None else int(value)
        if count < 0:
            raise ValueError("duplicate_messages must not be negative")
        self.duplicates = count

    # --- questions the handlers ask -------------------------------------------------

    def hang_for(self, route: str) -> bool:
        return any(c.hits(route) for c in self.hangs)

    def forced_for(self, route: str) -> Counted | None:
        for c in self.forced:
            if c.hits(route):
                return c
        return None

    def error_for(self, route: str) -> int | None:
        for er in self.error_rates:
            if er.route in ("*", route) and self._rng.random() < er.rate:
                return self._rng.choice(er.statuses)
        return None

    def malformed_for(self, route: str) -> bool:
        return any(c.hits(route) for c in self.malformed)

    def cut_poll(self) -> bool:
        return self.cut_polls > 0 and self._rng.random() < self.cut_polls

    def times_out(self, ep: str, path: str) -> bool:
        return any(d.hits(ep, path) for d in self.device_timeouts)

    def refusal(self, ep: str, path: str) -> int | None:
        """The status the device refuses this request with (counted), if any."""
        for r in self.refusals:
            if r.hits(ep, path):
                return r.status
        return None

    def is_gone(self, ep: str) -> bool:
        return ep in self.gone or "*" in self.gone

    def refused_handshake(self) -> int | None:
        """The status a WebSocket handshake is refused with now, if any (counted)."""
        refused = self.refused_handshakes
        if refused is not None and refused.hits("websocket-connect"):
            return refused.status
        return None

    def ws_close_due(self) -> int | None:
        """The close code when the ``ws_close`` fault is due now (it then switches off)."""
        fault = self.ws_close
        if fault is not None and fault.after <= 0:
            self.ws_close = None
            return fault.code
        return None

    def cut_socket(self) -> int | None:
        """The close code when the message about to go out cuts the socket instead."""
        if self.cut_sockets > 0 and self._rng.random() < self.cut_sockets:
            return self._rng.choice(self.cut_socket_codes)
        return None

    def message_sent(self) -> None:
        """One notification message went out on the socket."""
        if self.ws_close is not None and self.ws_close.after > 0:
            self.ws_close.after -= 1

    def duplicate_due(self) -> bool:
        """True when the message just sent must be sent once more (same frame)."""
        if self.duplicates > 0:
            self.duplicates -= 1
            return True
        return False

    def describe(self) -> dict[str, Any]:
        """The faults switched on, for ``GET /admin/faults``."""
        out: dict[str, Any] = {}
        if self.latency:
            out["latency"] = self.latency
        if self.device_latency is not None:
            out["device_latency"] = self.device_latency
        if self.error_rates:
            out["error_rate"] = [
                {"route": e.route, "rate": e.rate, "statuses": list(e.statuses)}
                for e in self.error_rates
            ]
        live = [c for c in self.forced if c.count > 0]
        if live:
            out["force_status"] = [
                {"route": c.route, "status": c.status, "count": c.count, "body": c.body}
                for c in live
            ]
        if self.cut_polls:
            out["cut_polls"] = self.cut_polls
        if self.device_timeouts:
            out["device_timeout"] = [{"ep": d.ep, "path": d.path} for d in self.device_timeouts]
        if self.gone:
            out["device_gone"] = sorted(self.gone)
        refusals = [r for r in self.refusals if r.count > 0]
        if refusals:
            out["device_status"] = [
                {"ep": r.fault.ep, "path": r.fault.path, "status": r.status, "count": r.count}
                for r in refusals
            ]
        for name, items in (("malformed", self.malformed), ("hang", self.hangs)):
            live = [c for c in items if c.count > 0]
            if live:
                out[name] = [{"route": c.route, "count": c.count} for c in live]
        if self.ws_close is not None:
            out["ws_close"] = {"code": self.ws_close.code, "after": self.ws_close.after}
        if self.cut_sockets:
            out["cut_sockets"] = {"rate": self.cut_sockets, "codes": list(self.cut_socket_codes)}
        if self.key_revoked:
            out["revoke_key"] = True
        refused = self.refused_handshakes
        if refused is not None and refused.count > 0:
            out["refuse_handshake"] = {"status": refused.status, "count": refused.count}
        if self.duplicates:
            out["duplicate_messages"] = self.duplicates
        return out
