"""Virtual devices: scenarios, drifting sensors, queue mode, lifetimes, scale."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.simulator import Emulator, Scenario, ScenarioError, default_scenario
from tests.simulator_support import Api, decode

SLEEPY = {
    "templates": {
        "Sleeper": {
            "type": "Sleeper",
            "objects": ["3311"],
            "queue": True,
            "wake_interval": 0.5,
            "awake_time": 0.1,
            "queue_size": 3,
        },
        "Nap": {
            "type": "Nap",
            "objects": ["3303"],
            "queue": True,
            "wake_interval": 600,
            "queue_size": 3,
        },
    },
    "devices": [{"name": "sleepy", "template": "Sleeper"}, {"name": "nap", "template": "Nap"}],
}


def test_default_scenario_matches_the_contract() -> None:
    sc = default_scenario()
    devices = dict(sc.devices)
    assert devices["node-001"] == "TempSensor" and devices["light-001"] == "Light"
    node = sc.templates["TempSensor"]
    temp = node.resources[node.index["/3303/0/5700"]]
    assert temp.obs and temp.drift > 0
    light = sc.templates["Light"]
    for path in ("/3311/0/5850", "/3311/0/5851"):
        spec = light.resources[light.index[path]]
        assert spec.obs and spec.writable
    assert any(t.q for t in sc.templates.values())
    for tpl in sc.templates.values():
        assert {"/3/0/0", "/3/0/1", "/3/0/4"} <= set(tpl.index)
        assert tpl.resources[tpl.index["/3/0/4"]].executable


def test_scenario_file_with_custom_resources(tmp_path: Path) -> None:
    data = {
        "templates": {
            "Weird": {
                "type": "Weird",
                "resources": [
                    {
                        "path": "/dev/temp",
                        "rt": "T",
                        "kind": "float",
                        "value": 1.5,
                        "obs": True,
                        "drift": 0.5,
                        "min": 0,
                        "max": 10,
                    },
                    {"path": "/Test/0/D", "value": "hello", "writable": True, "obs": True},
                    {"path": "/dev/go", "executable": True},
                ],
            }
        },
        "devices": [{"name": "w-1", "template": "Weird"}],
        "drift": {"interval": 0.1},
    }
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(data))
    with Emulator(token="t", scenario=Scenario.load(path), pull_timeout=1) as emu:
        assert emu.endpoints() == ["w-1"]
        api = Api(emu)
        listing = {e["uri"]: e for e in api.get("/endpoints/w-1").json()}
        assert {"/dev/temp", "/Test/0/D", "/dev/go", "/3/0/4"} <= set(listing)
        api.put("/subscriptions/w-1/dev/temp")
        api.wait_for(lambda s: len(api.notifications("w-1", "/dev/temp")) >= 2, timeout=5)
        assert all(0 <= float(v) <= 10 for v in api.notifications("w-1", "/dev/temp"))
        assert api.request_async("PUT", "/endpoints/w-1/Test/0/D", data=b"bye")["status"] == 200
        assert emu.get_value("w-1", "/Test/0/D") == b"bye"
        assert api.request_async("POST", "/endpoints/w-1/dev/go")["status"] == 200


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "templates"),
        ({"templates": {"A": {"objects": ["9999"]}}}, "unknown IPSO object"),
        ({"templates": {"A": {}}, "devices": [{"name": "x", "template": "B"}]}, "unknown template"),
        ({"templates": {"A": {}}, "devices": [{"template": "A"}]}, "needs a 'name'"),
        ({"templates": {"A": {"resources": [{"path": "nope"}]}}}, "must start with '/'"),
        ({"templates": {"A": {"resources": [{"path": "/a", "kind": "x"}]}}}, "kind"),
        ({"templates": {"A": {}}, "scale": {"templates": ["B"]}}, "unknown template"),
        ({"templates": {"A": {}}, "scale": {"name": "{oops}"}}, "scale name"),
        ({"templates": {"A": {}}, "drift": 5}, "drift"),
        ({"templates": {"A": {}}, "devices": {"a": 1}}, "devices"),
    ],
)
def test_bad_scenarios_are_refused_with_a_reason(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        Scenario.from_dict(data)


def test_scenario_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        Scenario.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ScenarioError, match="not valid JSON"):
        Scenario.load(bad)


def test_devices_builds_n_endpoints_from_templates() -> None:
    with Emulator(token="t", devices=1000, drift=False) as emu:
        names = emu.endpoints()
        assert len(names) == len(set(names)) == 1000
        assert names[:5] == [name for name, _ in default_scenario().devices]
        assert "tempsensor-000001" in names and "light-000002" in names
        api = Api(emu)
        assert len(api.get("/endpoints").json()) == 1000
        assert len(api.get("/endpoints", params={"type": "Light"}).json()) > 400
        assert api.get("/limits").json()["endpoint-count"] == 1000


def test_drift_off_keeps_values(emulator: Emulator) -> None:
    with Emulator(token="t", drift=False) as emu:
        before = emu.get_value("node-001", "/3303/0/5700")
        time.sleep(1.2)  # longer than two drift periods
        assert emu.get_value("node-001", "/3303/0/5700") == before
    # and with drift on (the fixture), values move by themselves
    first = emulator.get_value("node-001", "/3303/0/5700")
    deadline = time.monotonic() + 5
    while emulator.get_value("node-001", "/3303/0/5700") == first:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_digital_output_write_is_notified(emulator: Emulator) -> None:
    api = Api(emulator)
    api.open_channel()
    api.put("/subscriptions/light-001/3201/0/5550")
    api.request_async("PUT", "/endpoints/light-001/3201/0/5550", data=b"1")
    api.wait_for(lambda s: api.notifications("light-001", "/3201/0/5550") == [b"1"])
    # writing the same value again changes nothing, so nothing is notified
    api.request_async("PUT", "/endpoints/light-001/3201/0/5550", data=b"1")
    api.request_async("PUT", "/endpoints/light-001/3201/0/5550", data=b"0")
    api.wait_for(lambda s: api.notifications("light-001", "/3201/0/5550") == [b"1", b"0"])


# --- queue mode -------------------------------------------------------------------------


@pytest.fixture
def sleepy() -> Any:
    with Emulator(token="t", scenario=Scenario.from_dict(SLEEPY), pull_timeout=1) as emu:
        yield emu


def test_queue_mode_requests_wait_for_the_wake_up(sleepy: Emulator) -> None:
    api = Api(sleepy)
    api.open_channel()
    r = api.get("/endpoints/nap/3303/0/5700")
    assert r.status_code == 202
    aid = r.json()["async-response-id"]
    api.pull(params={"noWait": "true"})
    assert aid not in [e["id"] for e in api.seen["async-responses"]]  # still asleep
    assert api.get("/endpoints/nap/3303/0/5700", params={"cacheOnly": "true"}).status_code == 205
    sleepy.wake("nap")
    entry = api.async_response(aid)
    assert entry["status"] == 200
    assert any(u["ep"] == "nap" for u in api.seen["reg-updates"])  # it woke up


def test_queue_mode_device_wakes_periodically(sleepy: Emulator) -> None:
    api = Api(sleepy)
    api.open_channel()
    entry = api.request_async("PUT", "/endpoints/sleepy/3311/0/5850", data=b"1")
    assert entry["status"] == 200
    assert sleepy.get_value("sleepy", "/3311/0/5850") == b"1"


def test_queue_mode_full_queue_is_429(sleepy: Emulator) -> None:
    api = Api(sleepy)
    api.open_channel()
    codes = [api.get("/endpoints/nap/3303/0/5700").status_code for _ in range(4)]
    assert codes == [202, 202, 202, 429]


def test_queue_mode_subscription_waits_for_wake(sleepy: Emulator) -> None:
    api = Api(sleepy)
    api.open_channel()
    r = api.put("/subscriptions/nap/3303/0/5700")
    assert r.status_code == 202
    assert sleepy.subscriptions() == set()
    sleepy.wake("nap")
    assert api.async_response(r.json()["async-response-id"])["status"] == 200
    assert sleepy.subscriptions() == {("nap", "/3303/0/5700")}


def test_deregistration_answers_queued_requests_410(sleepy: Emulator) -> None:
    api = Api(sleepy)
    api.open_channel()
    aid = api.get("/endpoints/nap/3303/0/5700").json()["async-response-id"]
    sleepy.deregister("nap")
    entry = api.async_response(aid)
    assert entry["status"] == 410


# --- lifetimes --------------------------------------------------------------------------


def test_registration_expires_when_the_device_stops_updating(emulator: Emulator) -> None:
    api = Api(emulator)
    api.open_channel()
    emulator.register("short", ept="TempSensor", lifetime=2.0)
    for _ in range(8):  # updating in time (every 0.4 s for 3.2 s, lifetime 2 s) keeps it
        time.sleep(0.4)
        emulator.update("short")
    assert "short" in emulator.endpoints()
    assert "short" not in api.seen["registrations-expired"]
    api.wait_for(lambda s: "short" in s["registrations-expired"], timeout=10)
    assert "short" not in emulator.endpoints()
    assert api.get("/endpoints/short").status_code == 410
    reg = api.seen["registrations"]
    assert [r["ep"] for r in reg] == ["short"] and reg[0]["ept"] == "TempSensor"
    assert [u["ep"] for u in api.seen["reg-updates"] if u["ep"] == "short"] == ["short"] * 8


def test_register_custom_resources_and_control_calls(emulator: Emulator) -> None:
    api = Api(emulator)
    api.open_channel()
    emulator.register(
        "custom-1",
        ept="Gadget",
        resources=[{"path": "/5/0/1", "rt": "x", "obs": True, "value": "a", "writable": True}],
        q=False,
    )
    listing = {e["uri"] for e in api.get("/endpoints/custom-1").json()}
    assert listing == {"/5/0/1", "/3/0/0", "/3/0/1", "/3/0/2", "/3/0/3", "/3/0/4"}
    assert api.get("/endpoints", params={"type": "Gadget"}).json()[0]["name"] == "custom-1"
    api.put("/subscriptions/custom-1/5/0/1")
    emulator.set_value("custom-1", "/5/0/1", b"\x00\xff")
    api.wait_for(lambda s: api.notifications("custom-1", "/5/0/1") == [b"\x00\xff"])
    emulator.expire("custom-1")
    api.wait_for(lambda s: "custom-1" in s["registrations-expired"])
    emulator.register("custom-1", ept="Light")  # comes back as another kind
    assert api.get("/endpoints/custom-1/3311/0/5850").status_code == 202
    with pytest.raises(KeyError):
        emulator.update("nobody")
    with pytest.raises(KeyError):
        emulator.get_value("node-001", "/9/9/9")
    value = decode(api.request_async("GET", "/endpoints/custom-1/3311/0/5850"))
    assert value == b"0"


def test_every_device_has_a_serial_number_of_its_own(emulator: Emulator) -> None:
    serials = {name: emulator.get_value(name, "/3/0/2") for name in emulator.endpoints()}
    assert len(set(serials.values())) == len(serials) > 1
    assert all(s.startswith(b"SN-") and len(s) == 13 for s in serials.values())
    api = Api(emulator)
    api.open_channel()
    assert decode(api.request_async("GET", "/endpoints/node-001/3/0/2")) == serials["node-001"]
    with Emulator(token="another-run") as other:  # made from the name: every run the same
        assert other.get_value("node-001", "/3/0/2") == serials["node-001"]
    emulator.deregister("node-001")
    emulator.register("node-001", ept="TempSensor")  # a fresh registration keeps it too
    assert emulator.get_value("node-001", "/3/0/2") == serials["node-001"]
