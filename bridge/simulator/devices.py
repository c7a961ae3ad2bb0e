"""Virtual devices: IPSO objects, resource templates and the compact per-device state.

A hundred thousand endpoints must fit in one process, so everything that is the same for
many devices lives once in a shared :class:`DeviceTemplate` (resource descriptions, the
pre-encoded JSON of the resource listing and of the registration), and a :class:`Device`
only holds what differs: its name, its current values (a list of ``bytes`` aligned with
the template's resources, sharing the template's initial value objects until a value
changes), a bit mask of observed resources and a few numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.simulator.identity import device_id

KINDS = ("float", "int", "bool", "string", "opaque", "none")
TEXT_PLAIN = "text/plain"


class DeviceError(Exception):
    """A device refuses a request; ``status`` and ``error`` go into the async response."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(f"{status} {error}")
        self.status = status
        self.error = error


@dataclass(frozen=True)
class ResourceSpec:
    """One resource as every device built from a template has it."""

    path: str
    rt: str = ""
    ct: str = TEXT_PLAIN
    obs: bool = False
    writable: bool = False
    executable: bool = False
    kind: str = "string"
    value: bytes = b""
    minimum: float | None = None
    maximum: float | None = None
    drift: float = 0.0  # largest step of the random walk per drift tick; 0 = steady
    interface: str = ""

    def validate(self, data: bytes) -> bytes:
        """The value a device stores for a write of ``data``, or DeviceError 400."""
        if self.kind in ("opaque", "string"):
            if self.kind == "string":
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError:
                    raise DeviceError(400, "BAD_REQUEST: not UTF-8 text") from None
            return data
        text = data.decode("ascii", "replace").strip()
        if self.kind == "bool":
            if text in ("0", "1"):
                return text.encode()
            lowered = text.lower()
            if lowered in ("true", "on"):
                return b"1"
            if lowered in ("false", "off"):
                return b"0"
            raise DeviceError(400, f"BAD_REQUEST: {self.path} takes 0 or 1")
        try:
            number = int(text) if self.kind == "int" else float(text)
        except ValueError:
            raise DeviceError(400, f"BAD_REQUEST: {self.path} takes a {self.kind}") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise DeviceError(400, f"BAD_REQUEST: {self.path} takes a finite number")
        if (self.minimum is not None and number < self.minimum) or (
            self.maximum is not None and number > self.maximum
        ):
            raise DeviceError(400, f"BAD_REQUEST: {self.path} takes {self.minimum}..{self.maximum}")
        return text.encode()

    def listing(self) -> dict[str, Any]:
        """The entry of ``GET /endpoints/{ep}``."""
        return {"uri": self.path, "rt": self.rt, "obs": self.obs, "type": ""}

    def registration(self) -> dict[str, Any]:
        """The entry of a ``registrations`` message."""
        return {
            "path": self.path,
            "if": self.interface,
            "rt": self.rt,
            "ct": self.ct,
            "obs": self.obs,
        }


def _r(path: str, rt: str, kind: str, value: str, **kw: Any) -> ResourceSpec:
    return ResourceSpec(path=path, rt=rt, kind=kind, value=value.encode(), **kw)


def _sensor(
    obj: int, rt: str, value: str, lo: float, hi: float, step: float, unit: str
) -> list[ResourceSpec]:
    return [
        _r(f"/{obj}/0/5700", rt, "float", value, obs=True, minimum=lo, maximum=hi, drift=step),
        _r(f"/{obj}/0/5701", "Units", "string", unit),
        _r(f"/{obj}/0/5601", "Min Measured Value", "float", value),
        _r(f"/{obj}/0/5602", "Max Measured Value", "float", value),
    ]


# The IPSO objects the scenarios build devices from, by object id.
IPSO_OBJECTS: dict[str, list[ResourceSpec]] = {
    "3303": _sensor(3303, "Temperature", "21.5", -40.0, 85.0, 0.5, "Cel"),
    "3304": _sensor(3304, "Humidity", "45.0", 0.0, 100.0, 1.0, "%RH"),
    "3301": _sensor(3301, "Illuminance", "320.0", 0.0, 100000.0, 5.0, "lx"),
    "3311": [
        _r("/3311/0/5850", "On/Off", "bool", "0", obs=True, writable=True),
        _r("/3311/0/5851", "Dimmer", "int", "100", obs=True, writable=True, minimum=0, maximum=100),
        _r("/3311/0/5706", "Colour", "string", "FFFFFF", obs=True, writable=True),
    ],
    "3201": [
        _r("/3201/0/5550", "Digital Output State", "bool", "0", obs=True, writable=True),
        _r("/3201/0/5750", "Application Type", "string", "relay", writable=True),
    ],
    "3200": [
        _r("/3200/0/5500", "Digital Input State", "bool", "0", obs=True),
        _r("/3200/0/5501", "Digital Input Counter", "int", "0", obs=True),
    ],
}

REBOOT_PATH = "/3/0/4"
SERIAL_PATH = "/3/0/2"


def device_object(model: str) -> list[ResourceSpec]:
    """Object 3 (device) that every virtual device has: read-only info and reboot. The
    serial number is empty here: each device gets its own (:func:`serial_number`)."""
    return [
        _r("/3/0/0", "Manufacturer", "string", "connector-bridge emulator"),
        _r("/3/0/1", "Model Number", "string", model),
        _r(SERIAL_PATH, "Serial Number", "string", ""),
        _r("/3/0/3", "Firmware Version", "string", "1.0.0"),
        _r(REBOOT_PATH, "Reboot", "none", "", executable=True),
    ]


def serial_number(endpoint_name: str) -> bytes:
    """A device's serial number, made from its name so that every run gives the same."""
    digest = hashlib.blake2b(endpoint_name.encode("utf-8", "surrogatepass"), digest_size=5)
    return b"SN-" + digest.hexdigest().upper().encode()


def resource_from_dict(data: Mapping[str, Any]) -> ResourceSpec:
    """A resource described in a scenario file or a ``register(resources=...)`` call."""
    unknown = set(data) - {
        "path",
        "rt",
        "ct",
        "obs",
        "value",
        "writable",
        "executable",
        "kind",
        "min",
        "max",
        "drift",
        "if",
    }
    if unknown:
        raise ValueError(f"unknown resource keys {sorted(unknown)}")
    path = data.get("path")
    if not isinstance(path, str) or not path.startswith("/") or len(path) < 2:
        raise ValueError(f"resource path must start with '/': {path!r}")
    executable = bool(data.get("executable", False))
    value = data.get("value", "")
    raw = value.encode() if isinstance(value, str) else str(value).encode()
    if isinstance(value, bool):
        raw = b"1" if value else b"0"
    kind = data.get("kind") or ("none" if executable else _guess_kind(value))
    if kind not in KINDS:
        raise ValueError(f"resource kind must be one of {KINDS}: {kind!r}")
    drift = float(data.get("drift", 0.0))
    if drift and kind not in ("float", "int"):
        raise ValueError(f"only numbers drift: {path}")
    return ResourceSpec(
        path=path.rstrip("/"),
        rt=str(data.get("rt", "")),
        ct=str(data.get("ct", TEXT_PLAIN)),
        obs=bool(data.get("obs", False)),
        writable=bool(data.get("writable", False)),
        executable=executable,
        kind=kind,
        value=raw,
        minimum=None if data.get("min") is None else float(data["min"]),
        maximum=None if data.get("max") is None else float(data["max"]),
        drift=drift,
        interface=str(data.get("if", "")),
    )


def _guess_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "string"


class DeviceTemplate:
    """Everything devices of one kind share, including their pre-encoded JSON."""

    __slots__ = (
        "awake_time",
        "drift_indexes",
        "ept",
        "index",
        "initial",
        "lifetime",
        "listing_json",
        "name",
        "q",
        "queue_size",
        "registration_resources_json",
        "resources",
        "serial_index",
        "wake_interval",
    )

    def __init__(
        self,
        name: str,
        ept: str,
        resources: Iterable[ResourceSpec],
        *,
        q: bool = False,
        lifetime: float | None = None,
        wake_interval: float = 10.0,
        awake_time: float = 1.0,
        queue_size: int = 16,
    ) -> None:
        specs = list(resources)
        if not any(r.path.startswith("/3/0/") for r in specs):
            specs = device_object(name) + specs
        paths = [r.path for r in specs]
        if len(set(paths)) != len(paths):
            raise ValueError(f"template {name!r} has a resource path twice")
        self.name = name
        self.ept = ept
        self.resources: tuple[ResourceSpec, ...] = tuple(specs)
        self.index: dict[str, int] = {r.path: i for i, r in enumerate(specs)}
        self.initial: tuple[bytes, ...] = tuple(r.value for r in specs)
        self.drift_indexes: tuple[int, ...] = tuple(i for i, r in enumerate(specs) if r.drift)
        # A serial number without a value is each device's own (see serial_number).
        serial = self.index.get(SERIAL_PATH)
        self.serial_index = serial if serial is not None and not self.initial[serial] else None
        self.q = q
        self.lifetime = lifetime
        self.wake_interval = wake_interval
        self.awake_time = awake_time
        self.queue_size = queue_size
        self.listing_json: bytes = json.dumps([r.listing() for r in specs]).encode()
        self.registration_resources_json: str = json.dumps([r.registration() for r in specs])

    def object_indexes(self, path: str) -> list[int]:
        """Indexes of the resources under an object or object-instance path."""
        prefix = path.rstrip("/") + "/"
        return [i for i, r in enumerate(self.resources) if r.path.startswith(prefix)]


class Device:
    """One endpoint. Kept small: a hundred thousand of them live in one process."""

    __slots__ = (
        "awake_until",
        "cache",
        "created_at",
        "endpoint_name",
        "ep",
        "ept",
        "expires_at",
        "id",
        "inflight",
        "lifetime",
        "name",
        "q",
        "queue",
        "registered",
        "requests",
        "subs",
        "template",
        "updated_at",
        "values",
        "wake_at",
    )

    def __init__(
        self,
        name: str,
        template: DeviceTemplate,
        *,
        ept: str | None = None,
        q: bool | None = None,
        lifetime: float | None = None,
    ) -> None:
        self.name = name  # the emulator's own key (control calls, admin routes)
        self.endpoint_name = name  # the name it registers with (a second device may share it)
        self.id = device_id(name)  # the current dialect's device ID
        self.ep = name  # what ``ep`` says on the wire: the name, or the ID (current)
        self.template = template
        self.ept = template.ept if ept is None else ept
        self.q = template.q if q is None else q
        self.lifetime = template.lifetime if lifetime is None else lifetime
        self.values: list[bytes] = []
        self.reset_values()
        self.registered = False
        self.subs = 0  # bit i set = resource i observed
        self.inflight = 0  # requests accepted and not answered yet
        self.queue: deque[Any] | None = None  # requests waiting for a sleeping device
        self.awake_until = 0.0
        self.wake_at = 0.0
        self.expires_at = 0.0  # 0 = never
        self.cache: dict[int, bytes] | None = None  # values the service has seen
        self.requests: Any = None  # device requests (core.RequestQueue), made when needed
        self.created_at = 0.0  # wall-clock time, for the device directory
        self.updated_at = 0.0

    def reset_values(self) -> None:
        self.values = list(self.template.initial)
        if self.template.serial_index is not None:
            self.values[self.template.serial_index] = serial_number(self.name)

    def asleep(self, now: float) -> bool:
        return self.q and now >= self.awake_until

    def subscribed_paths(self) -> list[str]:
        subs = self.subs
        return [r.path for i, r in enumerate(self.template.resources) if subs >> i & 1]


def drift_value(spec: ResourceSpec, current: bytes, rng: random.Random) -> bytes:
    """The next value of a drifting sensor: a random step that always changes the value."""
    try:
        old = float(current)
    except ValueError:
        old = spec.minimum if spec.minimum is not None else 0.0
    lo = -math.inf if spec.minimum is None else spec.minimum
    hi = math.inf if spec.maximum is None else spec.maximum
    unit = 1.0 if spec.kind == "int" else 0.1
    step = max(unit, round(rng.uniform(0.0, spec.drift) / unit) * unit)
    if rng.random() < 0.5:
        step = -step
    new = old + step
    if new < lo or new > hi:
        new = old - step
    new = min(max(new, lo), hi)
    if spec.kind == "int":
        return str(round(new)).encode()
    return f"{new:.1f}".encode()


def lwm2m_json(template: DeviceTemplate, values: list[bytes], base: str, idx: list[int]) -> bytes:
    """An object-level read in the LwM2M JSON format (``application/vnd.oma.lwm2m+json``)."""
    prefix = base.rstrip("/") + "/"
    entries = []
    for i in idx:
        spec = template.resources[i]
        if spec.executable:
            continue
        name = spec.path[len(prefix) :]
        text = values[i].decode("utf-8", "replace")
        if spec.kind in ("float", "int"):
            try:
                # The same number as a single-resource read gives ("50" stays 50, "21.0"
                # stays 21.0): JSON keeps an integer's and a one-decimal float's text.
                number: int | float = int(text) if text.lstrip("-").isdigit() else float(text)
                entries.append({"n": name, "v": number})
                continue
            except ValueError:
                pass
        if spec.kind == "bool":
            entries.append({"n": name, "bv": text == "1"})
        else:
            entries.append({"n": name, "sv": text})
    return json.dumps({"bn": prefix, "e": entries}).encode()
