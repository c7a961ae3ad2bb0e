"""The current dialect's WebSocket channel: registration routes, the handshake (both
ways of authenticating, 401, 429, 1011), one socket per channel (1001), queueing while
disconnected, DELETE (1000), and frames that could not be sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.simulator import Emulator
from bridge.simulator.core import EmulatorCore
from tests.simulator_support import Api
from tests.support.clients import wait_until
from tests.support.ws_client import HandshakeRefused, WsClient
from tests.test_simulator_current_rest import assert_error


@pytest.fixture
def current() -> Iterator[Emulator]:
    with Emulator(token="test-token", api="current", drift=False) as emu:
        yield emu


@pytest.fixture
def api(current: Emulator) -> Api:
    return Api(current)


@pytest.fixture
def clients(current: Emulator) -> Iterator[list[WsClient]]:
    made: list[WsClient] = []
    yield made
    for c in made:
        c.close()


def client(
    clients: list[WsClient], emu: Emulator, token: str | None = None, via: str = "bearer"
) -> WsClient:
    c = WsClient(emu.url, emu.token if token is None else token, via=via)
    clients.append(c)
    return c


def registered_names(c: WsClient) -> list[str]:
    return [e["original-ep"] for e in c.entries("registrations")]


def test_register_get_and_delete_the_channel(api: Api) -> None:
    assert_error(api.get("/notification/websocket"), 404, "not_found")
    assert_error(api.delete("/notification/websocket"), 404, "not_found")
    r = api.put("/notification/websocket")
    assert r.status_code == 201
    assert r.json() == {"status": "disconnected", "queue_size": 0}
    again = api.put("/notification/websocket", json={})
    assert again.status_code == 200  # exists: no effect
    assert api.get("/notification/websocket").json() == {"status": "disconnected", "queue_size": 0}
    assert api.get("/notification/channel").json() == {"delivery_mechanism": "WEB_SOCKET"}
    assert api.delete("/notification/websocket").status_code == 204
    assert_error(api.get("/notification/websocket"), 404, "not_found")
    assert_error(api.get("/notification/channel"), 404, "not_found")


def test_a_malformed_registration_body_is_400(api: Api) -> None:
    assert_error(api.put("/notification/websocket", data=b"{"), 400, "validation_error")
    assert_error(api.put("/notification/websocket", data=b"[]"), 400, "validation_error")
    assert_error(api.get("/notification/websocket"), 404, "not_found")


def test_bearer_connection_carries_messages_with_device_ids(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    api.put("/notification/websocket")
    c = client(clients, current).connect()
    assert c.protocol is None
    assert api.get("/notification/websocket").json()["status"] == "connected"
    current.register("new-001", ept="Light")
    reg = c.wait_for(lambda c: c.entries("registrations"))[0]
    assert reg["ep"] == current.device_id("new-001") and reg["original-ep"] == "new-001"
    assert reg["ept"] == "Light" and reg["q"] is False
    current.update("new-001")
    upd = c.wait_for(lambda c: c.entries("reg-updates"))[0]
    assert (upd["ep"], upd["original-ep"]) == (current.device_id("new-001"), "new-001")
    current.deregister("new-001")
    assert c.wait_for(lambda c: c.entries("de-registrations")) == [current.device_id("new-001")]
    current.expire("node-001")
    assert c.wait_for(lambda c: c.entries("registrations-expired")) == [
        current.device_id("node-001")
    ]
    counters = current.counters()
    assert counters["ws_connects"] == 1 and counters["ws_frames"] == len(c.frames)
    assert counters["delivered"] == 4 and counters["ws_connected"] == 1


def test_notifications_carry_the_device_id(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    api.put("/notification/websocket")
    c = client(clients, current).connect()
    dev = current.device_id("light-001")
    assert api.put(f"/subscriptions/{dev}/3311/0/5850").status_code == 200
    current.set_value("light-001", "/3311/0/5850", "1")
    note = c.wait_for(lambda c: c.entries("notifications"))[0]
    assert note == {
        "ep": dev,
        "path": "/3311/0/5850",
        "ct": "text/plain",
        "payload": "MQ==",
        "max-age": 60,
    }


def test_subprotocol_authentication_answers_wss(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    api.put("/notification/websocket")
    c = client(clients, current, via="protocol").connect()
    assert c.protocol == "wss"
    current.register("new-002")
    assert c.wait_for(registered_names) == ["new-002"]


@pytest.mark.parametrize("via", ["bearer", "protocol", "none"])
def test_a_wrong_or_missing_key_is_401(
    api: Api, current: Emulator, clients: list[WsClient], via: str
) -> None:
    api.put("/notification/websocket")
    with pytest.raises(HandshakeRefused) as refused:
        client(clients, current, token="wrong", via=via).connect()
    assert refused.value.status == 401
    assert current.counters()["ws_connects"] == 0


def test_not_an_upgrade_is_426(api: Api) -> None:
    api.put("/notification/websocket")
    assert_error(api.get("/notification/websocket-connect"), 426, "upgrade_required")


def test_connecting_without_a_channel_closes_with_1011(
    current: Emulator, clients: list[WsClient]
) -> None:
    c = client(clients, current).connect()  # the handshake succeeds
    assert c.wait_closed() == 1011
    assert current.counters()["ws_closes_1011"] == 1


def test_a_new_socket_takes_over_and_closes_the_old_with_1001(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    api.put("/notification/websocket")
    first = client(clients, current).connect()
    current.register("before-takeover")
    first.wait_for(registered_names)
    second = client(clients, current).connect()
    assert first.wait_closed() == 1001
    current.register("after-takeover")
    assert second.wait_for(registered_names) == ["after-takeover"]
    assert registered_names(first) == ["before-takeover"]
    counters = current.counters()
    assert counters["ws_closes_1001"] == 1 and counters["ws_connects"] == 2
    assert api.get("/notification/websocket").json()["status"] == "connected"


def test_429_while_another_handshake_is_in_progress(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    api.put("/notification/websocket")
    current.set_fault(latency=1.5)  # the handshake waits inside "in progress"
    slow = client(clients, current)
    pending = slow.start_connect()
    assert wait_until(lambda: current.counters()["ws_handshaking"] == 1)
    with pytest.raises(HandshakeRefused) as refused:
        client(clients, current).connect()
    assert refused.value.status == 429
    pending.result(10)  # the first one completes
    current.clear_faults()
    current.register("after-429")
    assert slow.wait_for(registered_names) == ["after-429"]
    assert current.counters()["ws_handshakes_refused"] == 1


def test_messages_wait_while_disconnected_and_come_on_the_next_connection(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    api.put("/notification/websocket")
    current.register("while-away-1")
    current.register("while-away-2")
    assert api.get("/notification/websocket").json() == {"status": "disconnected", "queue_size": 2}
    c = client(clients, current).connect()
    assert c.wait_for(lambda c: len(registered_names(c)) == 2 and registered_names(c))
    assert registered_names(c) == ["while-away-1", "while-away-2"]
    c.close()
    assert wait_until(lambda: current.counters()["ws_connected"] == 0)
    current.register("while-away-3")
    again = client(clients, current).connect()
    assert again.wait_for(registered_names) == ["while-away-3"]


def test_nothing_is_kept_without_a_channel(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    current.register("no-channel-yet")
    assert current.counters()["discarded"] == 1
    api.put("/notification/websocket")
    c = client(clients, current).connect()
    current.register("marker")
    assert c.wait_for(registered_names) == ["marker"]


def test_delete_closes_with_1000_and_drops_the_queue(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    api.put("/notification/websocket")
    c = client(clients, current).connect()
    assert api.delete("/notification/websocket").status_code == 204
    assert c.wait_closed() == 1000
    api.put("/notification/websocket")
    current.register("queued-then-deleted")
    assert api.get("/notification/websocket").json()["queue_size"] == 1
    assert api.delete("/notification/websocket").status_code == 204
    api.put("/notification/websocket")
    assert api.get("/notification/websocket").json()["queue_size"] == 0
    again = client(clients, current).connect()
    current.register("marker")
    assert again.wait_for(registered_names) == ["marker"]
    assert current.counters()["ws_closes_1000"] == 1


def test_the_legacy_dialect_has_no_websocket(emulator: Emulator) -> None:
    api = Api(emulator)
    assert api.put("/notification/websocket").status_code == 404
    assert api.get("/notification/websocket-connect").status_code == 404
    with WsClient(emulator.url, emulator.token) as c, pytest.raises(HandshakeRefused):
        c.connect()


class BrokenSocket:
    """A socket whose every send fails, as a connection that just went away."""

    closed = False

    async def send_str(self, data: str) -> None:
        raise ConnectionResetError("Cannot write to closing transport")


def test_a_frame_that_could_not_be_sent_goes_back_to_the_head() -> None:
    async def scenario() -> tuple[int, int, list[str]]:
        core = EmulatorCore("t", api="current", drift=False)
        await core.startup()
        try:
            assert core.put_websocket(b"").status == 201
            for name in ("a-1", "a-2", "a-3"):
                core.register(name)
            broken: Any = BrokenSocket()
            core.ws.socket = broken
            await asyncio.wait_for(core.ws._send_loop(broken), 5)
            left = len(core.outbox)
            return left, core.counters["redelivered"], [f for _, f in core.outbox.take()]
        finally:
            await core.shutdown()

    left, redelivered, fragments = asyncio.run(scenario())
    assert redelivered == 3
    assert left == 3
    assert [json.loads(f)["original-ep"] for f in fragments] == ["a-1", "a-2", "a-3"]


def test_the_queue_while_disconnected_is_bounded_and_counts_what_it_drops() -> None:
    with Emulator(token="t", api="current", drift=False, max_pending=5) as emu:
        api = Api(emu)
        api.put("/notification/websocket")
        for k in range(8):
            emu.register(f"b-{k}")
        assert api.get("/notification/websocket").json()["queue_size"] == 5
        assert emu.counters()["dropped"] == 3
        with WsClient(emu.url, emu.token) as c:
            c.connect()
            c.wait_for(lambda c: len(registered_names(c)) == 5)
            assert registered_names(c) == [f"b-{k}" for k in range(3, 8)]  # the oldest went
