"""Each fault switch, from Python and over the admin routes."""

from __future__ import annotations

import json
import time

import pytest
import requests

from bridge.simulator import Emulator
from tests.simulator_support import Api


@pytest.fixture
def api(emulator: Emulator) -> Api:
    return Api(emulator)


def test_latency_is_added_to_every_answer(emulator: Emulator, api: Api) -> None:
    emulator.set_fault(latency=1.0)
    start = time.monotonic()
    assert api.get("/endpoints").status_code == 200
    assert time.monotonic() - start >= 1.0
    emulator.clear_faults()
    start = time.monotonic()
    api.get("/endpoints")
    assert time.monotonic() - start < 1.0  # (a loaded machine may take a few tenths)


def test_device_latency_delays_async_answers(emulator: Emulator, api: Api) -> None:
    api.open_channel()
    emulator.set_fault(device_latency=1.0)
    start = time.monotonic()
    r = api.get("/endpoints/node-001/3303/0/5700")
    assert r.status_code == 202 and time.monotonic() - start < 1.0  # the 202 is immediate
    api.async_response(r.json()["async-response-id"])
    assert time.monotonic() - start >= 1.0


def test_error_rate_per_route() -> None:
    with Emulator(token="t", seed=7, drift=False) as emu:
        api = Api(emu)
        emu.set_fault(error_rate={"route": "endpoints", "rate": 1.0, "statuses": [503]})
        assert {api.get("/endpoints").status_code for _ in range(5)} == {503}
        assert api.get("/limits").status_code == 200  # other routes are untouched
        emu.set_fault(error_rate={"route": "*", "rate": 0.5, "statuses": [500, 429]})
        codes = [api.get("/limits").status_code for _ in range(200)]
        failed = [c for c in codes if c != 200]
        assert 50 < len(failed) < 150
        assert set(failed) == {500, 429}
        emu.set_fault(error_rate=None)
        assert {api.get("/endpoints").status_code for _ in range(5)} == {200}


def test_force_status_next_n_requests(emulator: Emulator, api: Api) -> None:
    api.open_channel()
    emulator.set_fault(
        force_status={"route": "resource-put", "status": 415, "count": 2, "body": "unsupported"}
    )
    path = "/endpoints/light-001/3311/0/5850"
    first = api.put(path, data=b"1")
    assert (first.status_code, first.text) == (415, "unsupported")
    assert api.put(path, data=b"1").status_code == 415
    assert api.put(path, data=b"1").status_code == 202
    assert emulator.counters()["transactions"] == 1  # refused calls did not reach the device


def test_cut_polls_close_without_answer_and_keep_messages(emulator: Emulator, api: Api) -> None:
    api.put("/subscriptions/light-001/3311/0/5850")
    emulator.set_value("light-001", "/3311/0/5850", "1")
    emulator.set_fault(cut_polls=1.0)
    with pytest.raises(requests.ConnectionError):
        api.get("/notification/pull")
    assert emulator.counters()["pulls_cut"] == 1
    emulator.set_fault(cut_polls=0)
    api.wait_for(lambda s: api.notifications("light-001", "/3311/0/5850") == [b"1"])


def test_device_timeout_answers_504(emulator: Emulator, api: Api) -> None:
    api.open_channel()
    emulator.set_fault(device_timeout={"ep": "node-001", "path": "/3303"})
    entry = api.request_async("GET", "/endpoints/node-001/3303/0/5700")
    assert entry["status"] == 504 and entry["error"] == "TIMEOUT"
    assert api.request_async("GET", "/endpoints/node-001/3304/0/5700")["status"] == 200
    emulator.set_fault(device_timeout={"ep": "node-001"})
    assert api.request_async("GET", "/endpoints/node-001/3/0/0")["status"] == 504
    assert api.request_async("GET", "/endpoints/node-002/3/0/0")["status"] == 200


def test_device_status_is_the_devices_own_refusal(emulator: Emulator, api: Api) -> None:
    api.open_channel()
    emulator.set_fault(device_status={"ep": "light-001", "path": "/3311/0", "status": 415})
    assert emulator.faults()["device_status"] == [
        {"ep": "light-001", "path": "/3311/0", "status": 415, "count": 1}
    ]
    done = emulator.counters()["transactions"]
    entry = api.request_async("GET", "/endpoints/light-001/3311/0")
    assert entry["status"] == 415 and "payload" not in entry and "error" not in entry
    assert "device_status" not in emulator.faults()  # counted: one request only
    assert emulator.counters()["transactions"] == done + 1  # taken on, then refused
    assert api.request_async("GET", "/endpoints/light-001/3311/0")["status"] == 200
    with pytest.raises(ValueError):
        emulator.set_fault(device_status={"ep": "light-001", "status": 200})


def test_device_gone_is_410(emulator: Emulator, api: Api) -> None:
    api.open_channel()
    emulator.set_fault(device_gone="node-001")
    assert api.get("/endpoints/node-001/3303/0/5700").status_code == 410
    assert api.put("/subscriptions/node-001/3303/0/5700").status_code == 410
    assert api.get("/endpoints/node-002/3303/0/5700").status_code == 202
    emulator.set_fault(device_gone=None)
    assert api.get("/endpoints/node-001/3303/0/5700").status_code == 202


def test_malformed_body_once(emulator: Emulator, api: Api) -> None:
    emulator.set_fault(malformed={"route": "endpoints", "count": 1})
    r = api.get("/endpoints")
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)
    assert isinstance(api.get("/endpoints").json(), list)


def test_malformed_pull_keeps_messages(emulator: Emulator, api: Api) -> None:
    api.put("/subscriptions/light-001/3311/0/5850")
    emulator.set_value("light-001", "/3311/0/5850", "1")
    emulator.set_fault(malformed={"route": "pull"})
    r = api.get("/notification/pull")
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)
    api.wait_for(lambda s: api.notifications("light-001", "/3311/0/5850") == [b"1"])


def test_hang_never_answers(emulator: Emulator, api: Api) -> None:
    emulator.set_fault(hang={"route": "limits", "count": 1})
    with pytest.raises(requests.ReadTimeout):
        api.get("/limits", timeout=0.3)
    assert api.get("/limits").status_code == 200


def test_bad_faults_are_refused(emulator: Emulator, api: Api) -> None:
    for bad in (
        {"nonsense": 1},
        {"cut_polls": 2},
        {"error_rate": {"route": "nope", "rate": 0.1}},
        {"force_status": {"route": "pull", "status": 999}},
        {"malformed": {"route": "pull", "count": 0}},
    ):
        with pytest.raises(ValueError):
            emulator.set_fault(**bad)
        assert api.admin("PUT", "faults", json=bad).status_code == 400


def test_faults_over_admin_routes(emulator: Emulator, api: Api) -> None:
    faults = {
        "latency": 0.01,
        "device_gone": ["node-002"],
        "cut_polls": 0.5,
        "force_status": [{"route": "limits", "status": 503, "count": 1}],
    }
    assert api.admin("PUT", "faults", json=faults).status_code == 204
    described = api.admin("GET", "faults").json()
    assert described["device_gone"] == ["node-002"] and described["cut_polls"] == 0.5
    assert described["force_status"] == [{"route": "limits", "status": 503, "count": 1, "body": ""}]
    assert api.get("/limits").status_code == 503
    assert "force_status" not in api.admin("GET", "faults").json()  # used up
    assert api.admin("DELETE", "faults").status_code == 204
    assert api.admin("GET", "faults").json() == {}
