"""The current dialect's notification channels: one kind at a time (callback or
WebSocket), ``GET /v2/notification/channel``, the callback with device IDs, and the
serialization options on both kinds."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from bridge.simulator import Emulator
from bridge.simulator.core import EmulatorCore
from tests.simulator_support import Api
from tests.support.ws_client import WsClient
from tests.test_simulator_channel import Receiver
from tests.test_simulator_current_rest import assert_error
from tests.test_simulator_websocket import BrokenSocket

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ALL_ON = {"deregistrations_as_object": True, "include_uid": True}
ALL_ON |= {"include_timestamp": True, "include_original_ep": True}


@pytest.fixture
def current() -> Iterator[Emulator]:
    with Emulator(token="test-token", api="current", drift=False) as emu:
        yield emu


@pytest.fixture
def api(current: Emulator) -> Api:
    return Api(current)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def clients() -> Iterator[list[WsClient]]:
    made: list[WsClient] = []
    yield made
    for c in made:
        c.close()


def connect(clients: list[WsClient], emu: Emulator) -> WsClient:
    c = WsClient(emu.url, emu.token).connect()
    clients.append(c)
    return c


def serialization(chunk: int | str | None = None, **cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "v2", "cfg": cfg}
    if chunk is not None:
        out["max_chunk_size"] = chunk
    return {"serialization": out}


def lifecycle(emu: Emulator) -> None:
    """One entry of every kind but async responses, for device light-001 and others."""
    emu.register("ser-001", ept="Light")
    emu.update("light-001")
    emu.deregister("node-002")
    emu.expire("node-001")


# --- one kind at a time ---------------------------------------------------------------


def test_a_callback_excludes_a_websocket_and_back(api: Api, receiver: Receiver) -> None:
    assert_error(api.get("/notification/channel"), 404, "not_found")
    assert api.put("/notification/callback", json={"url": receiver.url}).status_code == 204
    assert api.get("/notification/channel").json() == {"delivery_mechanism": "CALLBACK"}
    assert_error(api.put("/notification/websocket"), 400, "validation_error")
    assert_error(api.get("/notification/websocket"), 404, "not_found")
    assert api.delete("/notification/callback").status_code == 204
    assert_error(api.get("/notification/channel"), 404, "not_found")
    assert api.put("/notification/websocket").status_code == 201
    assert api.get("/notification/channel").json() == {"delivery_mechanism": "WEB_SOCKET"}
    r = api.put("/notification/callback", json={"url": receiver.url})
    assert_error(r, 400, "validation_error")
    assert len(receiver.messages) == 1  # only the first registration's check reached it
    assert api.delete("/notification/websocket").status_code == 204
    assert api.put("/notification/callback", json={"url": receiver.url}).status_code == 204
    assert api.get("/notification/channel").json() == {"delivery_mechanism": "CALLBACK"}


def test_the_legacy_channel_route(emulator: Emulator, receiver: Receiver) -> None:
    api = Api(emulator)
    assert api.get("/notification/channel").status_code == 404
    api.open_channel()
    assert api.get("/notification/channel").json() == {"delivery_mechanism": "LONG_POLLING"}
    api.put("/notification/callback", json={"url": receiver.url})
    assert api.get("/notification/channel").json() == {"delivery_mechanism": "CALLBACK"}


def test_the_callback_delivers_device_ids(api: Api, current: Emulator, receiver: Receiver) -> None:
    body = {"url": receiver.url, "headers": {"Authorization": "secret"}}
    assert api.put("/notification/callback", json=body).status_code == 204
    assert receiver.messages[0][1] == b"{}"  # the verification PUT
    assert api.get("/notification/callback").json() == body
    dev = current.device_id("light-001")
    assert api.put(f"/subscriptions/{dev}/3311/0/5850").status_code == 200
    current.set_value("light-001", "/3311/0/5850", "1")
    r = api.post(
        f"/device-requests/{dev}",
        params={"async-id": "cb-1"},
        json={"method": "GET", "uri": "/3/0/0"},
    )
    assert r.status_code == 202
    receiver.wait(lambda: receiver.entries("async-responses"))
    assert receiver.entries("notifications")[0]["ep"] == dev
    assert receiver.entries("async-responses")[0]["id"] == "cb-1"
    headers, _ = receiver.messages[-1]
    assert headers["Authorization"] == "secret"


def test_deleting_the_callback_drops_its_queue(
    api: Api, current: Emulator, receiver: Receiver, clients: list[WsClient]
) -> None:
    receiver.statuses = [200, 500, 500, 500, 500, 500, 500]  # check, then failures
    api.put("/notification/callback", json={"url": receiver.url})
    current.register("stuck-1")
    assert api.delete("/notification/callback").status_code == 204
    api.put("/notification/websocket")
    ws = connect(clients, current)
    current.register("marker")
    names = ws.wait_for(lambda c: [e["original-ep"] for e in c.entries("registrations")])
    assert names == ["marker"]


# --- serialization options ------------------------------------------------------------


def test_without_options(api: Api, current: Emulator, clients: list[WsClient]) -> None:
    api.put("/notification/websocket")
    ws = connect(clients, current)
    lifecycle(current)
    ws.wait_for(lambda c: c.entries("registrations-expired"))
    reg = ws.entries("registrations")[0]
    assert reg["original-ep"] == "ser-001" and "uid" not in reg and "timestamp" not in reg
    assert ws.entries("de-registrations") == [current.device_id("node-002")]
    assert ws.entries("registrations-expired") == [current.device_id("node-001")]


def test_every_option_on(api: Api, current: Emulator, clients: list[WsClient]) -> None:
    r = api.put("/notification/websocket", json=serialization(500, **ALL_ON))
    assert r.status_code == 201
    assert r.json()["serialization"] == {"type": "v2", "max_chunk_size": 500, "cfg": ALL_ON}
    ws = connect(clients, current)
    dev = current.device_id("light-001")
    api.put(f"/subscriptions/{dev}/3311/0/5850")
    before = datetime.now(timezone.utc)
    lifecycle(current)
    current.set_value("light-001", "/3311/0/5850", "1")
    api.post(
        f"/device-requests/{dev}",
        params={"async-id": "opt"},
        json={"method": "GET", "uri": "/3/0/0"},
    )
    ws.async_response("opt")
    kinds = ("notifications", "registrations", "reg-updates", "de-registrations")
    kinds += ("registrations-expired", "async-responses")
    entries = {kind: ws.entries(kind) for kind in kinds}
    assert all(len(found) == 1 for found in entries.values()), entries
    uids = [found[0]["uid"] for found in entries.values()]
    assert all(UUID.fullmatch(u) for u in uids) and len(set(uids)) == len(uids)
    for found in entries.values():
        stamp = found[0]["timestamp"]
        assert STAMP.fullmatch(stamp), stamp
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert abs((when - before).total_seconds()) < 10
    assert entries["de-registrations"][0] == {
        "ep": current.device_id("node-002"),
        "original-ep": "node-002",
        "uid": entries["de-registrations"][0]["uid"],
        "timestamp": entries["de-registrations"][0]["timestamp"],
    }
    assert entries["registrations-expired"][0]["original-ep"] == "node-001"
    assert entries["notifications"][0]["original-ep"] == "light-001"
    assert entries["notifications"][0]["ep"] == dev
    assert entries["reg-updates"][0]["original-ep"] == "light-001"
    assert "original-ep" not in entries["async-responses"][0]  # an async response has no ep


def test_deregistrations_as_objects_alone(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    api.put("/notification/websocket", json=serialization(deregistrations_as_object=True))
    ws = connect(clients, current)
    lifecycle(current)
    ws.wait_for(lambda c: c.entries("registrations-expired"))
    assert ws.entries("de-registrations") == [{"ep": current.device_id("node-002")}]
    assert ws.entries("registrations-expired") == [{"ep": current.device_id("node-001")}]


def test_original_ep_alone(api: Api, current: Emulator, clients: list[WsClient]) -> None:
    api.put("/notification/websocket", json=serialization(include_original_ep="true"))
    ws = connect(clients, current)
    dev = current.device_id("light-001")
    api.put(f"/subscriptions/{dev}/3311/0/5850")
    current.set_value("light-001", "/3311/0/5850", "1")
    note = ws.wait_for(lambda c: c.entries("notifications"))[0]
    assert note["original-ep"] == "light-001" and "uid" not in note
    current.deregister("node-002")  # plain strings: no room for original-ep
    assert ws.wait_for(lambda c: c.entries("de-registrations")) == [current.device_id("node-002")]


def test_max_chunk_size_caps_the_entries_of_a_message(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    api.put("/notification/websocket", json=serialization("100"))  # a string, as the file's
    current.burst(250, "node-001", "/3303/0/5700")
    ws = connect(clients, current)
    ws.wait_for(lambda c: len(c.entries("notifications")) == 250)
    assert [len(m["notifications"]) for m in ws.messages] == [100, 100, 50]


def test_the_first_registration_s_options_stay(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    api.put("/notification/websocket", json=serialization(include_uid=True))
    again = api.put("/notification/websocket", json=serialization(include_uid=False))
    assert again.status_code == 200
    assert again.json()["serialization"]["cfg"]["include_uid"] is True
    ws = connect(clients, current)
    current.register("uid-1")
    assert "uid" in ws.wait_for(lambda c: c.entries("registrations"))[0]
    assert api.delete("/notification/websocket").status_code == 204
    assert ws.wait_closed() == 1000
    api.put("/notification/websocket")
    ws2 = connect(clients, current)
    current.register("uid-2")
    assert "uid" not in ws2.wait_for(lambda c: c.entries("registrations"))[0]


def test_callback_options_and_a_second_put_keep_them(
    api: Api, current: Emulator, receiver: Receiver
) -> None:
    body = {"url": receiver.url, **serialization(include_uid="true", include_timestamp=True)}
    assert api.put("/notification/callback", json=body).status_code == 204
    replaced = {"url": receiver.url + "/other", **serialization()}
    assert api.put("/notification/callback", json=replaced).status_code == 204  # URL replaced
    shown = api.get("/notification/callback").json()
    assert shown["url"] == receiver.url + "/other"
    assert shown["serialization"]["cfg"]["include_uid"] is True
    current.register("cb-uid")
    receiver.wait(lambda: receiver.entries("registrations"))
    reg = receiver.entries("registrations")[0]
    assert UUID.fullmatch(reg["uid"]) and STAMP.fullmatch(reg["timestamp"])


@pytest.mark.parametrize(
    "bad",
    [
        {"serialization": {"type": "v1"}},
        {"serialization": {"max_chunk_size": 99}},
        {"serialization": {"max_chunk_size": 10_001}},
        {"serialization": {"max_chunk_size": "lots"}},
        {"serialization": {"cfg": {"include_uid": "yes"}}},
        {"serialization": {"cfg": {"include_everything": True}}},
        {"serialization": {"cfg": []}},
        {"serialization": "v2"},
    ],
)
def test_bad_options_are_400(api: Api, bad: dict[str, Any]) -> None:
    assert_error(api.put("/notification/websocket", json=bad), 400, "validation_error")
    # (refused before the URL is checked: nothing listens there)
    r = api.put("/notification/callback", json={"url": "http://127.0.0.1:9/hook", **bad})
    assert_error(r, 400, "validation_error")
    assert_error(api.get("/notification/channel"), 404, "not_found")


def test_a_redelivered_entry_keeps_its_uid() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        core = EmulatorCore("t", api="current", drift=False)
        await core.startup()
        try:
            options = json.dumps(serialization(include_uid=True)).encode()
            assert core.put_websocket(options).status == 201
            core.register("r-1")
            core.register("r-2")
            queued = [fragment for _, fragment in core.outbox.take(100)]
            core.outbox.put_back([(1, f) for f in queued])
            broken: Any = BrokenSocket()
            core.ws.socket = broken
            await asyncio.wait_for(core.ws._send_loop(broken), 5)  # the send fails
            again = [fragment for _, fragment in core.outbox.take(100)]
            return queued, again
        finally:
            await core.shutdown()

    queued, again = asyncio.run(scenario())
    assert again == queued
    assert len({json.loads(f)["uid"] for f in again}) == 2


def test_timestamps_say_when_an_entry_was_queued(
    api: Api, current: Emulator, clients: list[WsClient]
) -> None:
    api.put("/notification/websocket", json=serialization(include_timestamp=True))
    current.register("early")
    queued_at = time.time()
    time.sleep(0.3)  # the entry waits in the queue; its timestamp stays the queueing time
    ws = connect(clients, current)
    reg = ws.wait_for(lambda c: c.entries("registrations"))[0]
    stamped = datetime.fromisoformat(reg["timestamp"].replace("Z", "+00:00")).timestamp()
    assert abs(stamped - queued_at) < 0.2
