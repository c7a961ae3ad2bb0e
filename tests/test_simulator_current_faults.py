"""Fault switches of the current dialect (the WebSocket ones, and the route faults on
the new routes), from Python and over the admin route."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from bridge.simulator import Emulator
from tests.simulator_support import Api
from tests.support.clients import wait_until
from tests.support.ws_client import HandshakeRefused, WsClient
from tests.test_simulator_current_rest import assert_error

UID = {"serialization": {"cfg": {"include_uid": True}}}


@pytest.fixture
def current() -> Iterator[Emulator]:
    with Emulator(token="test-token", api="current", drift=False) as emu:
        yield emu


@pytest.fixture
def api(current: Emulator) -> Api:
    assert Api(current).put("/notification/websocket", json=UID).status_code == 201
    return Api(current)


@pytest.fixture
def clients() -> Iterator[list[WsClient]]:
    made: list[WsClient] = []
    yield made
    for c in made:
        c.close()


def connect(clients: list[WsClient], emu: Emulator, via: str = "bearer") -> WsClient:
    c = WsClient(emu.url, emu.token, via=via)
    clients.append(c)
    return c.connect()


def names(c: WsClient) -> list[str]:
    return [e["original-ep"] for e in c.entries("registrations")]


@pytest.mark.parametrize("code", [1006, 1011, 1012])
def test_ws_close_now(api: Api, current: Emulator, clients: list[WsClient], code: int) -> None:
    ws = connect(clients, current)
    current.set_fault(ws_close={"code": code})
    assert ws.wait_closed() == code
    counters = current.counters()
    assert counters[f"ws_closes_{code}"] == 1
    assert "ws_close" not in current.faults()  # one shot
    current.register("kept-for-the-next")  # queued while disconnected
    again = connect(clients, current)
    assert again.wait_for(names) == ["kept-for-the-next"]


def test_ws_close_after_n_messages(api: Api, current: Emulator, clients: list[WsClient]) -> None:
    current.set_fault(ws_close={"code": 1006, "after": 2})
    assert current.faults()["ws_close"] == {"code": 1006, "after": 2}
    ws = connect(clients, current)
    for k in range(3):
        current.register(f"n-{k}")
        if k < 2:
            ws.wait_for(lambda c, k=k: len(names(c)) == k + 1)
    assert ws.wait_closed() == 1006
    assert names(ws) == ["n-0", "n-1"]
    again = connect(clients, current)
    assert again.wait_for(names) == ["n-2"]  # the third was not lost


def test_cut_sockets_close_instead_of_sending_and_keep_the_message(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    current.set_fault(cut_sockets={"rate": 1.0, "codes": [1012]})
    assert current.faults()["cut_sockets"] == {"rate": 1.0, "codes": [1012]}
    ws = connect(clients, current)
    current.register("cut-1")
    assert ws.wait_closed() == 1012
    assert names(ws) == []
    assert "cut_sockets" in current.faults()  # stays on until switched off
    current.set_fault(cut_sockets=None)
    again = connect(clients, current)
    assert again.wait_for(names) == ["cut-1"]  # it waited in the queue
    assert current.counters()["ws_closes_1012"] == 1


def test_revoke_key_closes_with_1008_and_401_until_cleared(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    ws = connect(clients, current)
    api.admin("PUT", "faults", json={"revoke_key": True})  # admin routes keep the key
    assert ws.wait_closed() == 1008
    assert current.counters()["ws_closes_1008"] == 1
    assert_error(api.get("/notification/websocket"), 401, "unauthorized")
    assert_error(Api(current, prefix="/v3").get("/devices"), 401, "unauthorized")
    for via in ("bearer", "protocol"):
        with pytest.raises(HandshakeRefused) as refused:
            connect(clients, current, via)
        assert refused.value.status == 401
    assert api.admin("GET", "faults").json() == {"revoke_key": True}
    current.set_fault(revoke_key=None)
    assert api.get("/notification/websocket").status_code == 200
    assert connect(clients, current).close_code is None


def test_refuse_handshake_n_times(api: Api, current: Emulator, clients: list[WsClient]) -> None:
    current.set_fault(refuse_handshake={"status": 503, "count": 2})
    for _ in range(2):
        with pytest.raises(HandshakeRefused) as refused:
            connect(clients, current)
        assert refused.value.status == 503
    ws = connect(clients, current)
    current.register("after-refusals")
    assert ws.wait_for(names) == ["after-refusals"]
    counters = current.counters()
    assert counters["ws_handshakes_refused"] == 2 and counters["ws_connects"] == 1


def test_duplicate_messages(api: Api, current: Emulator, clients: list[WsClient]) -> None:
    ws = connect(clients, current)
    current.set_fault(duplicate_messages=2)
    for k in range(3):
        current.register(f"d-{k}")
        ws.wait_for(lambda c, k=k: f"d-{k}" in names(c))
    assert names(ws) == ["d-0", "d-0", "d-1", "d-1", "d-2"]
    regs = ws.entries("registrations")
    assert regs[0]["uid"] == regs[1]["uid"] and regs[2]["uid"] == regs[3]["uid"]
    assert regs[0]["uid"] != regs[2]["uid"]
    assert ws.frames[0] == ws.frames[1]
    counters = current.counters()
    assert counters["ws_duplicates"] == 2 and counters["ws_frames"] == 5
    assert counters["delivered"] == 3  # each entry counted once


def test_route_faults_hit_the_new_routes(api: Api, current: Emulator) -> None:
    v3 = Api(current, prefix="/v3")
    current.set_fault(force_status={"route": "devices", "status": 503, "count": 1})
    assert_error(v3.get("/devices"), 503, "service_unavailable")
    assert v3.get("/devices").status_code == 200
    current.set_fault(error_rate={"route": "device-requests", "rate": 1.0, "statuses": [500]})
    r = api.post(
        f"/device-requests/{current.device_id('node-001')}",
        params={"async-id": "x"},
        json={"method": "GET", "uri": "/3/0/0"},
    )
    assert_error(r, 500, "internal_server_error")
    current.set_fault(error_rate=None, malformed={"route": "channel"})
    r = api.get("/notification/channel")
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    assert api.get("/notification/channel").json() == {"delivery_mechanism": "WEB_SOCKET"}


def test_forced_status_and_hang_on_the_handshake(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    current.set_fault(force_status={"route": "websocket-connect", "status": 502})
    with pytest.raises(HandshakeRefused) as refused:
        connect(clients, current)
    assert refused.value.status == 502
    current.set_fault(hang={"route": "websocket-connect"})
    hanging = WsClient(current.url, current.token)
    clients.append(hanging)
    pending = hanging.start_connect()
    assert wait_until(lambda: current.counters()["ws_handshaking"] == 1)
    with pytest.raises(HandshakeRefused) as busy:
        connect(clients, current)
    assert busy.value.status == 429
    pending.cancel()
    hanging.close()  # the client gives up: the handshake is no longer in progress
    assert wait_until(lambda: current.counters()["ws_handshaking"] == 0)
    assert connect(clients, current).close_code is None


def test_device_faults_take_names_or_ids(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    ws = connect(clients, current)
    dev = current.device_id("node-001")
    current.set_fault(device_timeout={"ep": dev, "path": "/3/0/0"})
    r = api.post(
        f"/device-requests/{dev}", params={"async-id": "t"}, json={"method": "GET", "uri": "/3/0/0"}
    )
    assert r.status_code == 202
    assert ws.async_response("t")["status"] == 504
    current.set_fault(device_timeout=None, device_gone=dev)
    assert_error(api.get(f"/endpoints/{dev}"), 404, "not_found", "DEVICE_NOT_FOUND")


def test_device_status_comes_as_the_async_response(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    ws = connect(clients, current)
    dev = current.device_id("light-001")
    current.set_fault(device_status={"ep": dev, "path": "/3311/0", "status": 415, "count": 2})
    for aid in ("a", "b", "c"):
        r = api.post(
            f"/device-requests/{dev}",
            params={"async-id": aid},
            json={"method": "GET", "uri": "/3311/0"},
        )
        assert r.status_code == 202  # the service takes it; the device refuses it
    refused = ws.async_response("a")
    assert {k: v for k, v in refused.items() if k != "uid"} == {"id": "a", "status": 415}
    assert ws.async_response("b")["status"] == 415
    assert ws.async_response("c")["status"] == 200  # two only
    assert "device_status" not in current.faults()


@pytest.mark.parametrize(
    "bad",
    [
        {"ws_close": {"code": 1000}},
        {"ws_close": {"code": 1006, "after": -1}},
        {"cut_sockets": 1.5},
        {"cut_sockets": {"rate": 0.5, "codes": [1000]}},
        {"revoke_key": "yes"},
        {"refuse_handshake": {"status": 200}},
        {"refuse_handshake": {"status": 503, "count": 0}},
        {"duplicate_messages": -1},
        {"force_status": {"route": "websocket-nope", "status": 500}},
    ],
)
def test_bad_socket_faults_are_refused(current: Emulator, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        current.set_fault(**bad)
    r = requests.put(
        f"{current.url}/admin/faults", json=bad, headers={"Authorization": "Bearer test-token"}
    )
    assert r.status_code == 400


def test_socket_faults_over_the_admin_route(current: Emulator) -> None:
    api = Api(current)
    faults = {
        "ws_close": {"code": 1012, "after": 3},
        "refuse_handshake": {"status": 503, "count": 2},
        "duplicate_messages": 4,
    }
    assert api.admin("PUT", "faults", json=faults).status_code == 204
    assert api.admin("GET", "faults").json() == faults
    assert api.admin("DELETE", "faults").status_code == 204
    assert api.admin("GET", "faults").json() == {}
