"""The device directory of the current dialect: ``GET /v3/devices`` (and one device).

Devices are listed in the order of their device IDs, from a sorted index the core keeps
(new devices are inserted, nothing is sorted per request), so a page is a binary search
and a walk of at most ``limit`` matching devices: a full listing of 100,000 devices in
pages of 1,000 takes well under a second of the emulator's time.

Query: ``limit`` (clamped to 2-1000, default 50), ``after`` (the device ID after which the
page starts), ``order`` (``ASC``, default, or ``DESC``), ``include=total_count``, and
filters, as ``filter`` (URL-encoded ``key=value&key2=value2``) or as query parameters
``key__eq=value``. Operators: ``eq`` (also a bare key), ``neq``, ``in`` and ``nin``
(comma-separated). Keys: ``id``, ``state`` (``registered``/``deregistered``),
``endpoint_name``, ``endpoint_type``, ``name``, ``serial_number``, ``vendor_id``,
``device_class``, ``host_gateway``, ``lifecycle_status``. Another key is a 400.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from bridge.simulator.channel import rfc3339_ms
from bridge.simulator.devices import SERIAL_PATH, Device
from bridge.simulator.identity import device_id

if TYPE_CHECKING:
    from bridge.simulator.core import EmulatorCore

MIN_LIMIT, MAX_LIMIT, DEFAULT_LIMIT = 2, 1000, 50
VENDOR_ID = device_id("vendor:connector-bridge emulator")
OPERATORS = ("eq", "neq", "in", "nin")


class QueryError(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


Predicate = Callable[[Device], bool]
Filter = tuple[str, str, str, Predicate]  # field, operator, value, test


class Directory:
    """Pages of the core's devices, as the device directory serves them."""

    def __init__(self, core: EmulatorCore) -> None:
        self.core = core
        self._stamps: dict[float, str] = {}
        self._classes: dict[str, str] = {}
        self.account_id = device_id(f"account:{core.token}")
        self._fields: dict[str, Callable[[Device], str]] = {
            "id": lambda d: d.id,
            "state": lambda d: "registered" if d.registered else "deregistered",
            "endpoint_name": lambda d: d.endpoint_name,
            "endpoint_type": lambda d: d.ept,
            "name": lambda d: "",
            "serial_number": self.serial,
            "vendor_id": lambda d: VENDOR_ID,
            "device_class": self.device_class,
            "host_gateway": lambda d: "",
            "lifecycle_status": lambda d: "enabled",
        }

    # --- the device object ----------------------------------------------------------

    def stamp(self, wall: float) -> str:
        text = self._stamps.get(wall)
        if text is None:
            if len(self._stamps) > 10_000:
                self._stamps.clear()
            text = self._stamps[wall] = rfc3339_ms(wall)
        return text

    def serial(self, dev: Device) -> str:
        index = dev.template.index.get(SERIAL_PATH)
        return "" if index is None else dev.values[index].decode("utf-8", "replace")

    def device_class(self, dev: Device) -> str:
        found = self._classes.get(dev.ept)
        if found is None:
            found = self._classes[dev.ept] = device_id(f"class:{dev.ept}")
        return found

    def device_json(self, dev: Device) -> str:
        created = self.stamp(dev.created_at)
        updated = self.stamp(dev.updated_at)
        return (
            f'{{"object":"device","id":"{dev.id}","endpoint_name":{json.dumps(dev.endpoint_name)},'
            f'"name":"","endpoint_type":{json.dumps(dev.ept)},'
            f'"state":"{"registered" if dev.registered else "deregistered"}",'
            f'"serial_number":{json.dumps(self.serial(dev))},"vendor_id":"{VENDOR_ID}",'
            f'"device_class":"{self.device_class(dev)}","host_gateway":"",'
            f'"lifecycle_status":"enabled","account_id":"{self.account_id}",'
            f'"mechanism":"connector","deployed_state":"development","description":"",'
            f'"auto_update":false,"created_at":"{created}","updated_at":"{updated}",'
            f'"etag":"{updated}"}}'
        )

    # --- the query ---------------------------------------------------------------------

    def _predicate(self, key: str, value: str) -> Filter:
        field, _, op = key.partition("__")
        op = op or "eq"
        getter = self._fields.get(field)
        if getter is None:
            raise QueryError("filter", f"cannot filter on {field!r} (the emulator knows "
                             f"{', '.join(self._fields)})")  # fmt: skip
        if op not in OPERATORS:
            raise QueryError("filter", f"unknown filter operator {op!r} in {key!r}")
        if op in ("in", "nin"):
            wanted = frozenset(value.split(","))
            if op == "in":
                return field, op, value, lambda d: getter(d) in wanted
            return field, op, value, lambda d: getter(d) not in wanted
        if op == "eq":
            return field, op, value, lambda d: getter(d) == value
        return field, op, value, lambda d: getter(d) != value

    def parse(self, query: Mapping[str, str]) -> dict[str, Any]:
        """The page request; QueryError names the bad parameter."""
        raw_limit = query.get("limit", str(DEFAULT_LIMIT))
        try:
            limit = int(raw_limit)
        except ValueError:
            raise QueryError("limit", f"limit must be an integer: {raw_limit!r}") from None
        limit = min(max(limit, MIN_LIMIT), MAX_LIMIT)
        order = query.get("order", "ASC").upper()
        if order not in ("ASC", "DESC"):
            raise QueryError("order", f"order must be ASC or DESC: {query.get('order')!r}")
        includes = {i.strip() for i in query.get("include", "").split(",") if i.strip()}
        pairs: list[tuple[str, str]] = []
        if "filter" in query:
            pairs += parse_qsl(query["filter"], keep_blank_values=True)
        pairs += [(k, v) for k, v in query.items() if "__" in k]
        preds = [self._predicate(k, v) for k, v in pairs]
        return {
            "limit": limit,
            "order": order,
            "after": query.get("after") or None,
            "total": "total_count" in includes,
            "preds": preds,
        }

    def page(self, query: Mapping[str, str]) -> bytes:
        req = self.parse(query)
        core = self.core
        preds: list[Predicate] = [p for *_, p in req["preds"]]
        ids = self._ids_for(req["preds"])

        def matches(dev: Device) -> bool:
            return all(p(dev) for p in preds)

        limit: int = req["limit"]
        after: str | None = req["after"]
        asc = req["order"] == "ASC"
        if asc:
            i = bisect.bisect_right(ids, after) if after is not None else 0
            step, end = 1, len(ids)
        else:
            i = (bisect.bisect_left(ids, after) if after is not None else len(ids)) - 1
            step, end = -1, -1
        by_id = core.by_id
        found: list[Device] = []
        has_more = False
        while i != end:
            dev = by_id[ids[i]]
            i += step
            if preds and not matches(dev):
                continue
            if len(found) == limit:
                has_more = True
                break
            found.append(dev)
        head = {
            "object": "list",
            "limit": limit,
            "after": after,
            "order": req["order"],
            "has_more": has_more,
        }
        if req["total"]:
            head["total_count"] = (
                sum(1 for d in map(by_id.__getitem__, ids) if matches(d)) if preds else len(ids)
            )
        data = ",".join(self.device_json(d) for d in found)
        return (json.dumps(head)[:-1] + ',"data":[' + data + "]}").encode()

    def _ids_for(self, filters: list[Filter]) -> list[str]:
        """The sorted IDs to walk: all of them, or the one an ``eq`` on the ID or the
        endpoint name names (a look-up, not a walk of 100,000)."""
        core = self.core
        for field, op, value, _ in filters:
            if op == "eq" and field in ("id", "endpoint_name"):
                dev = core.by_id.get(value) if field == "id" else core.devices.get(value)
                return [] if dev is None else [dev.id]
        return core.ids

    def one(self, dev_id: str) -> bytes | None:
        dev = self.core.by_id.get(dev_id)
        return None if dev is None else self.device_json(dev).encode()
