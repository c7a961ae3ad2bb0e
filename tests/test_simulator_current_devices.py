"""``GET /v3/devices``, the current dialect's device directory: the device object,
paging (limit, after, order, total_count), filters, and a full listing of 100,000."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.simulator import Emulator
from tests.simulator_support import Api
from tests.test_simulator_current_rest import HEX32, assert_error

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def current() -> Iterator[Emulator]:
    with Emulator(token="test-token", api="current", drift=False) as emu:
        yield emu


@pytest.fixture
def v3(current: Emulator) -> Api:
    return Api(current, prefix="/v3")


@pytest.fixture(scope="module")
def big() -> Iterator[Emulator]:
    with Emulator(token="test-token", api="current", devices=100_000, drift=False) as emu:
        yield emu


def listing(api: Api, **params: Any) -> dict[str, Any]:
    r = api.get("/devices", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def walk(api: Api, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every page from the start, following ``after``; (devices, pages)."""
    out: list[dict[str, Any]] = []
    pages = 0
    after = None
    while True:
        page = listing(api, **params, **({"after": after} if after else {}))
        pages += 1
        out += page["data"]
        if not page["has_more"]:
            return out, pages
        after = page["data"][-1]["id"]


def test_the_device_object(v3: Api, current: Emulator) -> None:
    page = listing(v3, filter="endpoint_name=node-001")
    assert [d["endpoint_name"] for d in page["data"]] == ["node-001"]
    dev = page["data"][0]
    assert dev["object"] == "device"
    assert dev["id"] == current.device_id("node-001")
    assert dev["endpoint_type"] == "TempSensor" and dev["state"] == "registered"
    assert dev["serial_number"] == current.get_value("node-001", "/3/0/2").decode()
    assert dev["name"] == "" and dev["host_gateway"] == ""
    assert dev["lifecycle_status"] == "enabled"
    for key in ("vendor_id", "device_class", "account_id"):
        assert HEX32.fullmatch(dev[key]), key
    for key in ("created_at", "updated_at"):
        assert re.fullmatch(STAMP, dev[key]), dev[key]
    assert v3.get(f"/devices/{dev['id']}").json() == dev
    assert_error(v3.get("/devices/" + "0" * 32), 404, "not_found")


def test_a_page_and_its_defaults(v3: Api, current: Emulator) -> None:
    page = listing(v3)
    assert {k: page[k] for k in ("object", "limit", "after", "order", "has_more")} == {
        "object": "list",
        "limit": 50,
        "after": None,
        "order": "ASC",
        "has_more": False,
    }
    assert "total_count" not in page
    ids = [d["id"] for d in page["data"]]
    assert ids == sorted(ids)
    assert {d["endpoint_name"] for d in page["data"]} == set(current.endpoints())
    assert listing(v3, include="total_count")["total_count"] == len(ids)


def test_after_order_and_limit(v3: Api) -> None:
    everything = [d["id"] for d in listing(v3)["data"]]
    first = listing(v3, limit=2)
    assert [d["id"] for d in first["data"]] == everything[:2] and first["has_more"]
    second = listing(v3, limit=2, after=everything[1])
    assert second["after"] == everything[1]
    assert [d["id"] for d in second["data"]] == everything[2:4]
    desc = listing(v3, order="DESC")
    assert [d["id"] for d in desc["data"]] == everything[::-1]
    down = listing(v3, order="DESC", limit=2, after=everything[3])
    assert [d["id"] for d in down["data"]] == [everything[2], everything[1]]
    assert listing(v3, limit=1)["limit"] == 2  # clamped
    assert listing(v3, limit=0)["limit"] == 2
    assert listing(v3, limit=99999)["limit"] == 1000
    last = listing(v3, after=everything[-1])
    assert last["data"] == [] and not last["has_more"]


def test_bad_paging_parameters_are_400(v3: Api) -> None:
    body = assert_error(v3.get("/devices", params={"limit": "many"}), 400, "validation_error")
    assert body["fields"][0]["name"] == "limit"
    body = assert_error(v3.get("/devices", params={"order": "UP"}), 400, "validation_error")
    assert body["fields"][0]["name"] == "order"
    body = assert_error(
        v3.get("/devices", params={"filter": "colour=red"}), 400, "validation_error"
    )
    assert body["fields"][0]["name"] == "filter"
    assert_error(v3.get("/devices", params={"state__like": "reg"}), 400, "validation_error")


def test_filters(v3: Api, current: Emulator) -> None:
    current.deregister("node-002")
    names = lambda page: sorted(d["endpoint_name"] for d in page["data"])  # noqa: E731
    assert names(listing(v3, filter="state=deregistered")) == ["node-002"]
    assert names(listing(v3, state__eq="deregistered")) == ["node-002"]
    registered = listing(v3, filter="state=registered", include="total_count")
    assert registered["total_count"] == len(current.endpoints())
    assert "node-002" not in names(registered)
    assert names(listing(v3, endpoint_type__eq="Light")) == ["light-001"]
    assert names(listing(v3, filter="endpoint_type=TempSensor&state=registered")) == ["node-001"]
    both = listing(v3, filter="endpoint_type=TempSensor", state__eq="registered")
    assert names(both) == ["node-001"]
    assert names(listing(v3, endpoint_name__in="node-001,light-001")) == ["light-001", "node-001"]
    assert "node-001" not in names(listing(v3, endpoint_name__neq="node-001"))
    assert names(listing(v3, endpoint_type__nin="TempSensor,Light,MultiSensor")) == ["sleeper-001"]
    dev = current.device_id("light-001")
    assert names(listing(v3, id__eq=dev)) == ["light-001"]
    assert listing(v3, endpoint_name__eq="nobody", include="total_count")["total_count"] == 0
    assert names(listing(v3, filter="state=bootstrapped")) == []


def test_a_new_device_takes_its_place_in_the_order(v3: Api, current: Emulator) -> None:
    current.register("brand-new")
    ids = [d["id"] for d in listing(v3)["data"]]
    assert current.device_id("brand-new") in ids and ids == sorted(ids)


def test_the_legacy_dialect_has_no_device_directory(emulator: Emulator) -> None:
    assert Api(emulator, prefix="/v3").get("/devices").status_code == 404


def test_listing_100000_devices_in_pages_of_1000(big: Emulator) -> None:
    v3 = Api(big, prefix="/v3")
    start = time.monotonic()
    devices, pages = walk(v3, limit=1000)
    took = time.monotonic() - start
    ids = [d["id"] for d in devices]
    assert len(ids) == 100_000 and len(set(ids)) == 100_000
    assert ids == sorted(ids)
    assert pages == 100
    assert took < 15.0, took  # about 1.3 s here; the bound only catches a collapse


def test_100000_devices_descending_with_total_count_and_a_filter(big: Emulator) -> None:
    v3 = Api(big, prefix="/v3")
    first = listing(v3, limit=1000, order="DESC", include="total_count")
    assert first["total_count"] == 100_000 and first["has_more"]
    ids = [d["id"] for d in first["data"]]
    assert ids == sorted(ids, reverse=True)
    lights = listing(v3, limit=1000, endpoint_type__eq="Light", include="total_count")
    expected = sum(1 for d in big.core.devices.values() if d.ept == "Light")
    assert lights["total_count"] == expected > 40_000  # half of the generated ones
    assert all(d["endpoint_type"] == "Light" for d in lights["data"])
    one = listing(v3, filter="endpoint_name=light-000002")
    assert [d["endpoint_name"] for d in one["data"]] == ["light-000002"]
