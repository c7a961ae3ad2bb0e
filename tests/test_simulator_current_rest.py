"""The emulator's current (Device Management) dialect: identity, error bodies, removed
routes, over real HTTP."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from bridge.simulator import Emulator
from bridge.simulator.identity import device_id
from tests.simulator_support import Api

HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def current() -> Iterator[Emulator]:
    with Emulator(token="test-token", api="current", drift=False) as emu:
        yield emu


@pytest.fixture
def api(current: Emulator) -> Api:
    return Api(current)


def assert_error(r: requests.Response, status: int, type_: str, name: str = "") -> dict[str, Any]:
    """The service's error body: object, code, type, message (starting with the
    documented error name, where given) and a 32-hex request id."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    assert body["object"] == "error"
    assert body["code"] == status
    assert body["type"] == type_
    assert isinstance(body["message"], str) and body["message"]
    if name:
        assert body["message"].startswith(name + ": "), body["message"]
    assert HEX32.fullmatch(body["request_id"])
    return body


def test_device_ids_are_stable_32_hex_from_the_endpoint_name(current: Emulator) -> None:
    expected = hashlib.sha256(b"node-001").hexdigest()[:32]
    assert device_id("node-001") == expected
    assert current.device_id("node-001") == expected
    assert current.device_id(expected) == expected  # an ID is accepted where a name is
    ids = {current.device_id(name) for name in current.endpoints()}
    assert len(ids) == len(current.endpoints()) and all(HEX32.fullmatch(i) for i in ids)
    with Emulator(api="legacy") as legacy:  # the same IDs in the legacy dialect
        assert legacy.device_id("node-001") == expected


def test_unknown_device_id_is_a_key_error(current: Emulator) -> None:
    with pytest.raises(KeyError):
        current.device_id("nobody")


def test_the_dialect_is_checked() -> None:
    with pytest.raises(ValueError, match="api"):
        Emulator(api="v1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/endpoints"),
        ("GET", "/endpoints"),
        ("GET", "/v2/endpoints/"),
        ("GET", "/v2/endpoints/{id}/3303/0/5700"),
        ("PUT", "/v2/endpoints/{id}/3311/0/5850"),
        ("POST", "/v2/endpoints/{id}/3/0/4"),
        ("DELETE", "/v2/endpoints/{id}/3303/0/5700"),
        ("GET", "/v2/notification/pull"),
        ("GET", "/notification/pull"),
        ("GET", "/"),
        ("GET", "/rest-versions"),
        ("GET", "/v2/limits"),
        ("GET", "/limits"),
        ("GET", "/v2/no/such/route"),
    ],
)
def test_removed_routes_answer_404_with_an_error_body(
    current: Emulator, method: str, path: str
) -> None:
    url = current.url + path.format(id=current.device_id("node-001"))
    r = requests.request(method, url, headers={"Authorization": "Bearer test-token"}, timeout=5)
    assert_error(r, 404, "not_found")
    assert current.counters()["requests"] == 0  # no route ran


def test_wrong_key_is_401_with_an_error_body(current: Emulator) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = requests.get(f"{current.url}/v3/devices", headers=headers, timeout=5)
        assert_error(r, 401, "unauthorized")


def test_method_not_allowed_is_an_error_body(api: Api, current: Emulator) -> None:
    assert_error(api.post(f"/endpoints/{current.device_id('node-001')}"), 405, "method_not_allowed")


def test_resource_listing_takes_the_device_id(api: Api, current: Emulator) -> None:
    r = api.get(f"/endpoints/{current.device_id('light-001')}")
    assert r.status_code == 200
    assert {"uri": "/3311/0/5850", "rt": "On/Off", "obs": True, "type": ""} in r.json()
    assert_error(api.get("/endpoints/light-001"), 404, "not_found", "DEVICE_NOT_FOUND")
    current.deregister("light-001")
    r = api.get(f"/endpoints/{current.device_id('light-001')}")
    assert_error(r, 404, "not_found", "DEVICE_NOT_FOUND")


def test_subscriptions_take_the_device_id(api: Api, current: Emulator) -> None:
    dev = current.device_id("node-001")
    assert api.put(f"/subscriptions/{dev}/3303/0/5700").status_code == 200
    assert ("node-001", "/3303/0/5700") in current.subscriptions()  # control: names
    r = api.get(f"/subscriptions/{dev}")
    assert r.status_code == 200 and r.text == f"/subscriptions/{dev}/3303/0/5700\n"
    assert api.get(f"/subscriptions/{dev}/3303/0/5700").status_code == 200
    assert_error(api.put("/subscriptions/node-001/3303/0/5700"), 404, "not_found")
    assert_error(api.get(f"/subscriptions/{dev}/3304/0/5700"), 404, "not_found")
    assert api.delete(f"/subscriptions/{dev}/3303/0/5700").status_code == 204
    assert current.subscriptions() == set()


def test_control_methods_take_names_or_ids(current: Emulator) -> None:
    dev = current.device_id("light-001")
    current.set_value(dev, "/3311/0/5851", "42")
    assert current.get_value("light-001", "/3311/0/5851") == b"42"
    current.deregister(dev)
    assert "light-001" not in current.endpoints()  # endpoints() lists names


def test_presubscriptions_and_their_errors(api: Api) -> None:
    rules = [{"endpoint-name": "node*", "resource-path": ["/3303/0/5700"]}]
    assert api.put("/subscriptions", json=rules).status_code == 204
    assert api.get("/subscriptions").json() == rules
    assert_error(api.put("/subscriptions", data=b"{"), 400, "validation_error")
