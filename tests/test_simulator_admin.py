"""The /admin/ routes: the Python control API over HTTP, for other processes."""

from __future__ import annotations

import base64

import pytest

from bridge.simulator import Emulator
from tests.simulator_support import Api, decode


@pytest.fixture
def api(emulator: Emulator) -> Api:
    a = Api(emulator)
    a.open_channel()
    return a


def test_register_update_expire_deregister(api: Api, emulator: Emulator) -> None:
    body = {"ep": "adm-1", "ept": "Light", "lifetime": 60}
    assert api.admin("POST", "register", json=body).status_code == 204
    assert "adm-1" in api.admin("GET", "endpoints").json()
    assert api.admin("POST", "update", json={"ep": "adm-1"}).status_code == 204
    assert api.admin("POST", "expire", json={"ep": "adm-1"}).status_code == 204
    assert api.admin("POST", "register", json={"ep": "adm-2"}).status_code == 204
    assert api.admin("POST", "deregister", json={"ep": "adm-2"}).status_code == 204
    api.wait_for(lambda s: s["de-registrations"] == ["adm-2"])
    assert [r["ep"] for r in api.seen["registrations"]] == ["adm-1", "adm-2"]
    assert [u["ep"] for u in api.seen["reg-updates"] if u["ep"].startswith("adm")] == ["adm-1"]
    assert api.seen["registrations-expired"] == ["adm-1"]
    assert emulator.endpoints().count("adm-1") == 0


def test_register_with_resources_and_queue_mode(api: Api, emulator: Emulator) -> None:
    body = {
        "ep": "adm-q",
        "ept": "Box",
        "q": True,
        "resources": [{"path": "/1/0/1", "obs": True, "value": "v"}],
    }
    assert api.admin("POST", "register", json=body).status_code == 204
    entry = next(e for e in api.get("/endpoints").json() if e["name"] == "adm-q")
    assert entry == {"name": "adm-q", "type": "Box", "status": "ACTIVE", "q": True}
    aid = api.get("/endpoints/adm-q/1/0/1").json()["async-response-id"]
    assert api.admin("POST", "wake", json={"ep": "adm-q"}).status_code == 204
    assert decode(api.async_response(aid)) == b"v"


def test_values_and_subscriptions(api: Api, emulator: Emulator) -> None:
    api.put("/subscriptions/light-001/3311/0/5706")
    assert api.admin("GET", "subscriptions").json() == [["light-001", "/3311/0/5706"]]
    body = {"ep": "light-001", "path": "/3311/0/5706", "value": "FF0000"}
    assert api.admin("PUT", "value", json=body).status_code == 204
    raw = {
        "ep": "light-001",
        "path": "/3311/0/5706",
        "value_b64": base64.b64encode(b"\x01\x02").decode(),
    }
    assert api.admin("PUT", "value", json=raw).status_code == 204
    got = api.admin("GET", "value", params={"ep": "light-001", "path": "/3311/0/5706"}).json()
    assert got["value_b64"] == base64.b64encode(b"\x01\x02").decode()
    api.wait_for(
        lambda s: api.notifications("light-001", "/3311/0/5706") == [b"FF0000", b"\x01\x02"]
    )


def test_burst_and_counters(api: Api, emulator: Emulator) -> None:
    assert api.admin("DELETE", "counters").status_code == 204
    r = api.admin(
        "POST", "burst", json={"n": 500, "ep": "node-001", "path": "/3303/0/5700", "size": 6}
    )
    assert r.json() == {"emitted": 500}
    api.wait_for(lambda s: len(s["notifications"]) >= 500)
    values = api.notifications("node-001", "/3303/0/5700")[:500]
    assert values[0] == b"000000" and values[-1] == b"000499"
    counters = api.admin("GET", "counters").json()
    assert counters["emitted_notifications"] >= 500
    assert counters["delivered"] == counters["emitted"] - counters["pending"]
    for name in ("emitted", "delivered", "retried", "dropped", "transactions", "pulls"):
        assert name in counters


def test_burst_without_target_goes_round_the_subscriptions(api: Api) -> None:
    api.put("/subscriptions/node-001/3303/0/5700")
    api.put("/subscriptions/light-001/3311/0/5850")
    assert api.admin("POST", "burst", json={"n": 10}).json() == {"emitted": 10}
    api.wait_for(lambda s: len(s["notifications"]) >= 10)
    sources = {(n["ep"], n["path"]) for n in api.seen["notifications"]}
    assert {("node-001", "/3303/0/5700"), ("light-001", "/3311/0/5850")} <= sources


def test_admin_errors(api: Api) -> None:
    assert api.admin("POST", "update", json={"ep": "nobody"}).status_code == 404
    assert api.admin("POST", "update", json={}).status_code == 400
    assert api.admin("POST", "update", data=b"[1]").status_code == 400
    assert api.admin("POST", "update", data=b"{bad").status_code == 400
    assert api.admin("PUT", "value", json={"ep": "node-001", "path": "/3/0/0"}).status_code == 400
    bad_path = {"ep": "node-001", "path": "/x", "value": "1"}
    assert api.admin("PUT", "value", json=bad_path).status_code == 404
    assert api.admin("POST", "burst", json={"n": 1, "ep": "nobody"}).status_code == 404
    assert (
        api.admin("POST", "register", json={"ep": "x", "resources": [{"path": "y"}]}).status_code
        == 400
    )
    assert api.admin("GET", "nothing").status_code == 404
