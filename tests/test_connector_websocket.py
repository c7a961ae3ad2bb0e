"""The client's WebSocket notification channel against the emulator's current dialect,
over a real socket: delivery to the ``setHandler`` handlers and to async results, the
serialization options, every close code and refused handshake, back-off, stop and start.

Absences are proven with counters: the emulator's handshake counter, the channel's own
attempts, the ``running`` flag of a channel that ended. A few frames the emulator never
sends (not JSON, a close that is never answered) come from a small server of this file.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiohttp import web

from bridge.connector import HANDLER_NAMES, connector, decode_payload
from bridge.core.loop_thread import LoopThread
from bridge.simulator import Emulator
from tests.simulator_support import Api
from tests.support.clients import Collector, wait_until
from tests.support.ws_client import WsClient

Message = dict[str, Any]
TEMP = ("node-001", "/3303/0/5700")
LAMP = ("light-001", "/3311/0/5851")


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(token="test-token", api="current", drift=False) as e:
        yield e


class States(Collector[tuple[str, str]]):
    """The ``onState`` listener: every (state, detail) in order."""

    def __call__(self, state: str, detail: str) -> None:  # type: ignore[override]
        super().__call__((state, detail))

    def names(self) -> list[str]:
        return [s for s, _ in self.items]

    def reached(self, state: str, timeout: float = 5.0) -> bool:
        return self.wait_for(lambda items: bool(items) and items[-1][0] == state, timeout)

    def delays(self) -> list[float]:
        """The back-off waits announced by the ``reconnecting`` states."""
        found = (re.search(r"next try in ([0-9.]+) s", d) for s, d in self.items)
        return [float(m.group(1)) for m in found if m]


@contextmanager
def ws_client(emu: Emulator, states: States | None = None, **start: Any) -> Iterator[connector]:
    """A current-dialect client of ``emu`` whose WebSocket channel is connected."""
    c = connector(emu.token, emu.url, api="current", timeout=5.0)
    try:
        assert c.startWebsocket(onState=states, **start) == "connected"
        yield c
    finally:
        c.close()


def notified(col: Collector[Message]) -> list[dict[str, Any]]:
    return [e for m in col.items for e in m.get("notifications", [])]


def values(col: Collector[Message]) -> list[bytes]:
    return [decode_payload(e) for e in notified(col)]


def counter(emu: Emulator, name: str) -> int:
    return emu.counters()[name]


# ---- delivery ---------------------------------------------------------------------------


def test_every_message_type_reaches_its_handler_on_the_channels_thread(emu: Emulator) -> None:
    got: dict[str, Collector[Message]] = {name: Collector() for name in HANDLER_NAMES}
    with ws_client(emu) as c:
        for name, col in got.items():
            c.setHandler(name, col)
        emu.burst(3)
        emu.register("new-001", ept="Light")
        emu.update("new-001")
        r = c.getResourceValue(emu.device_id(TEMP[0]), TEMP[1])
        emu.deregister("new-001")
        emu.register("new-002", ept="Light")
        emu.expire("new-002")
        new1, new2 = emu.device_id("new-001"), emu.device_id("new-002")

        def has(name: str, pred: Any) -> bool:
            return got[name].wait_for(lambda items: any(pred(m[name]) for m in items))

        assert got["notifications"].wait_for(lambda _: len(notified(got["notifications"])) >= 3)
        assert has("registrations", lambda es: any(e["original-ep"] == "new-001" for e in es))
        assert has("reg-updates", lambda es: any(e["ep"] == new1 for e in es))
        assert has("de-registrations", lambda es: new1 in es)
        assert has("registrations-expired", lambda es: new2 in es)
        assert has("async-responses", lambda es: any(e["id"] == r.async_id for e in es))
        assert r.wait(5.0) and r.error is False  # matched although a handler is set
        stats = c.websocketStats()
    assert {t for col in got.values() for t in col.threads} == {"connector-websocket"}
    assert stats["bad_frames"] == 0 and stats["messages"] == stats["frames"]


def test_async_results_complete_from_the_socket(emu: Emulator) -> None:
    with ws_client(emu) as c:
        lamp = emu.device_id(LAMP[0])
        w = c.putResourceValue(lamp, LAMP[1], "42")
        assert w.wait(5.0) and w.error is False, w.error
        r = c.getResourceValue(lamp, LAMP[1])
        assert r.wait(5.0) and r.error is False, r.error
        assert r.result == "42"
        assert c.pendingCount() == 0
    assert emu.get_value(*LAMP) == b"42"


def test_unanswered_async_ids_expire_on_the_channels_tick(emu: Emulator) -> None:
    done: Collector[Any] = Collector()
    emu.set_fault(device_latency=5.0)  # the device answers long after the deadline
    c = connector(emu.token, emu.url, api="current", timeout=5.0, asyncTimeout=0.3)
    try:
        assert c.startWebsocket() == "connected"
        r = c.getResourceValue(emu.device_id(TEMP[0]), TEMP[1], cbfn=done)
        assert done.wait(1, timeout=5.0)  # nobody waits on r: the channel's tick ends it
    finally:
        c.close()
    assert r.error and r.error.errType == "async_timeout"
    assert done.threads == ["connector-websocket"]


def test_the_serialization_options_are_registered_and_applied(emu: Emulator) -> None:
    api = Api(emu)
    seen: Collector[Message] = Collector()
    options: dict[str, Any] = {
        "include_uid": False,
        "include_original_ep": False,
        "include_timestamp": True,
        "deregistrations_as_object": True,
        "max_chunk_size": 100,
    }
    with ws_client(emu, **options) as c:
        c.setHandler("notifications", seen)
        c.setHandler("de-registrations", seen)
        assert api.get("/notification/websocket").json()["serialization"] == {
            "type": "v2",
            "max_chunk_size": 100,
            "cfg": {k: v for k, v in options.items() if k != "max_chunk_size"},
        }
        emu.burst(250)
        assert seen.wait_for(lambda _: len(notified(seen)) == 250)
        emu.deregister("node-002")
        assert seen.wait_for(lambda items: any("de-registrations" in m for m in items))
    sizes = [len(m["notifications"]) for m in seen.items if "notifications" in m]
    assert sizes == [100, 100, 50]  # max_chunk_size entries per frame
    entries = notified(seen)
    assert all("timestamp" in e and "uid" not in e and "original-ep" not in e for e in entries)
    gone = next(m["de-registrations"] for m in seen.items if "de-registrations" in m)
    assert gone == [{"ep": emu.device_id("node-002"), "timestamp": gone[0]["timestamp"]}]


def test_by_default_entries_carry_uid_and_original_ep(emu: Emulator) -> None:
    seen: Collector[Message] = Collector()
    with ws_client(emu) as c:
        c.setHandler("notifications", seen)
        emu.burst(5)
        assert seen.wait_for(lambda _: len(notified(seen)) == 5)
    assert all("uid" in e and e["original-ep"] for e in notified(seen))
    assert all("timestamp" not in e for e in notified(seen))


def test_a_repeated_frame_reaches_the_handlers_once(emu: Emulator) -> None:
    seen: Collector[Message] = Collector()
    with ws_client(emu) as c:
        c.setHandler("notifications", seen)
        emu.set_fault(duplicate_messages=2)
        emu.burst(4, *TEMP)
        emu.burst(4, *TEMP)  # a second frame: the marker that the first was handled
        assert seen.wait_for(lambda _: len(notified(seen)) == 8)
        assert wait_until(lambda: c.websocketStats()["frames"] == 4)
    assert counter(emu, "ws_duplicates") == 2
    assert len({e["uid"] for e in notified(seen)}) == 8


# ---- close codes --------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1006, 1012])
def test_a_close_is_followed_by_a_reconnect_with_back_off_and_nothing_is_lost(
    emu: Emulator, code: int
) -> None:
    states = States()
    seen: Collector[Message] = Collector()
    with ws_client(emu, states) as c:
        c.setHandler("notifications", seen)
        # The socket goes; the first try again is refused (503): the client stays away
        # for two back-off waits, during which the emulator queues a burst.
        emu.set_fault(ws_close={"code": code}, refuse_handshake={"status": 503, "count": 1})
        assert wait_until(lambda: counter(emu, f"ws_closes_{code}") == 1)
        connects = counter(emu, "ws_connects")
        emu.burst(50, *TEMP)
        assert counter(emu, "ws_connects") == connects and counter(emu, "ws_connected") == 0
        assert seen.wait_for(lambda _: len(notified(seen)) == 50, timeout=10.0)
        assert states.reached("connected")
        first_delays = states.delays()
        # That connection delivered: the back-off starts from its shortest wait again.
        emu.set_fault(ws_close={"code": code})
        assert wait_until(lambda: counter(emu, f"ws_closes_{code}") == 2)
        assert states.wait_for(lambda _: len(states.delays()) == 3)
        assert states.reached("connected")
        emu.burst(1, *TEMP)
        assert seen.wait_for(lambda _: len(notified(seen)) == 51)
        stats = c.websocketStats()
    assert len(set(values(seen))) == 51  # each exactly once, in order of emission
    assert values(seen) == sorted(values(seen), key=int)
    assert stats["closes"] == {code: 2} and stats["last_close_code"] == code
    assert stats["connects"] == 3 and stats["reconnects"] == 2 and stats["attempts"] == 4
    assert stats["registrations"] == 1
    d1, d2 = first_delays  # equal jitter: [d/2, d] for d = 0.5, then 1.0
    assert 0.25 <= d1 <= 0.5 and 0.5 <= d2 <= 1.0
    assert 0.25 <= states.delays()[2] <= 0.5
    assert states.names() == [
        "connecting",
        "connected",
        "reconnecting",
        "reconnecting",
        "connected",
        "reconnecting",
        "connected",
        "stopped",  # close()
    ]


def test_1011_registers_the_channel_again_then_reconnects(emu: Emulator) -> None:
    api = Api(emu)
    states = States()
    seen: Collector[Message] = Collector()
    with ws_client(emu, states) as c:
        c.setHandler("notifications", seen)
        emu.set_fault(ws_close={"code": 1006}, refuse_handshake={"status": 503, "count": 1})
        assert wait_until(lambda: counter(emu, "ws_closes_1006") == 1)
        # While the client is away its channel is deleted: the next socket meets 1011.
        assert api.delete("/notification/websocket").status_code == 204
        assert counter(emu, "ws_closes_1000") == 0  # no socket was open to close
        assert states.wait_for(lambda items: any("1011" in d for _, d in items), timeout=10.0)
        assert states.reached("connected")
        assert api.get("/notification/websocket").status_code == 200  # registered again
        emu.burst(3, *TEMP)
        assert seen.wait_for(lambda _: len(notified(seen)) == 3)
        stats = c.websocketStats()
    assert counter(emu, "ws_closes_1011") == 1
    assert stats["closes"] == {1006: 1, 1011: 1}
    assert stats["registrations"] == 2 and stats["connects"] == 3


def test_1001_another_consumer_takes_the_channel_and_the_client_lets_it(emu: Emulator) -> None:
    states = States()
    with ws_client(emu, states) as c:
        other = WsClient(emu.url, emu.token).connect()
        try:
            assert states.reached("taken_over")
            # The channel ended in that state: whatever it would have tried again came
            # before it, and the emulator saw exactly two handshakes (ours, the other's).
            assert counter(emu, "ws_handshakes") == 2
            assert not c.websocketStats()["running"]
            emu.burst(2, *TEMP)
            other.wait_for(lambda o: len(o.entries("notifications")) == 2)  # it has it
            stats = c.websocketStats()
        finally:
            other.close()
    assert c.websocketState() == "taken_over"  # stopping an ended channel keeps its state
    assert states.names() == ["connecting", "connected", "taken_over"]
    assert stats["attempts"] == 1 and stats["closes"] == {1001: 1}
    assert stats["frames"] == 0
    assert counter(emu, "ws_handshakes") == 2


def test_1008_a_revoked_key_ends_the_channel(emu: Emulator) -> None:
    states = States()
    with ws_client(emu, states) as c:
        emu.set_fault(revoke_key=True)
        assert states.reached("revoked")
        assert counter(emu, "ws_handshakes") == 1
        stats = c.websocketStats()
    assert states.names() == ["connecting", "connected", "revoked"]
    assert stats["attempts"] == 1 and stats["closes"] == {1008: 1} and not stats["running"]
    assert "revoked" in stats["detail"]


def test_1000_a_deleted_channel_ends_the_channel(emu: Emulator) -> None:
    states = States()
    with ws_client(emu, states) as c:
        assert Api(emu).delete("/notification/websocket").status_code == 204
        assert states.reached("deleted")
        assert counter(emu, "ws_handshakes") == 1
        stats = c.websocketStats()
    assert stats["closes"] == {1000: 1} and stats["attempts"] == 1 and not stats["running"]


# ---- handshake and registration answers --------------------------------------------------


def test_401_at_the_handshake_is_refused_without_a_retry(emu: Emulator) -> None:
    emu.set_fault(refuse_handshake={"status": 401, "count": 100})
    c = connector(emu.token, emu.url, api="current", timeout=5.0)
    try:
        assert c.startWebsocket() == "refused"
        stats = c.websocketStats()
        assert counter(emu, "ws_handshakes") == 1
    finally:
        c.close()
    assert stats["attempts"] == 1 and stats["retries"] == 0 and not stats["running"]
    assert "401" in stats["detail"]


def test_a_wrong_key_is_refused_at_the_registration(emu: Emulator) -> None:
    c = connector("not-the-key", emu.url, api="current", timeout=5.0)
    try:
        assert c.startWebsocket() == "refused"
        stats = c.websocketStats()
    finally:
        c.close()
    assert counter(emu, "ws_handshakes") == 0
    assert stats["registrations"] == 1 and stats["attempts"] == 0
    assert "401" in stats["detail"]


def test_429_and_503_at_the_handshake_are_tried_again(emu: Emulator) -> None:
    emu.set_fault(refuse_handshake={"status": 429, "count": 1})
    states = States()
    c = connector(emu.token, emu.url, api="current", timeout=5.0)
    try:
        assert c.startWebsocket(onState=states) == "reconnecting"  # the first try failed
        assert states.reached("connected")
        stats = c.websocketStats()
    finally:
        c.close()
    assert counter(emu, "ws_handshakes_refused") == 1
    assert stats["attempts"] == 2 and stats["connects"] == 1 and stats["reconnects"] == 0
    assert states.names()[:3] == ["connecting", "reconnecting", "connected"]
    assert "429" in states.items[1][1]


def test_a_handshake_that_hangs_is_given_up_and_tried_again(emu: Emulator) -> None:
    emu.set_fault(hang={"route": "websocket-connect", "count": 1})
    states = States()
    c = connector(emu.token, emu.url, api="current", timeout=0.5)
    try:
        assert c.startWebsocket(onState=states, connectTimeout=5.0) == "reconnecting"
        assert "no handshake answer" in states.items[1][1]
        assert states.reached("connected")
        stats = c.websocketStats()
    finally:
        c.close()
    assert stats["attempts"] >= 2 and stats["connects"] == 1


def test_another_kind_of_channel_rejects_the_registration(emu: Emulator) -> None:
    with Emulator(token="test-token", api="legacy", drift=False) as legacy:
        c = connector(legacy.token, legacy.url, timeout=5.0)
        try:  # the 2016 Connector has no WebSocket channel
            assert c.startWebsocket() == "rejected"
            assert "404" in c.websocketStats()["detail"]
        finally:
            c.close()


# ---- stop and start -----------------------------------------------------------------------


def test_stop_closes_the_socket_and_start_picks_up_the_queue(emu: Emulator) -> None:
    api = Api(emu)
    seen: Collector[Message] = Collector()
    with ws_client(emu) as c:
        c.setHandler("notifications", seen)
        c.stopWebsocket()
        c.stopWebsocket()  # idempotent
        assert c.websocketState() == "stopped"
        assert wait_until(lambda: counter(emu, "ws_connected") == 0)
        assert c.websocketStats()["closes"] == {1000: 1}  # ours, answered
        emu.burst(5, *TEMP)
        assert api.get("/notification/websocket").json()["queue_size"] == 5
        assert c.startWebsocket() == "connected"
        assert seen.wait_for(lambda _: len(notified(seen)) == 5)
        stats = c.websocketStats()
    assert c.websocketState() == "stopped"  # close() stopped it
    assert stats["registrations"] == 1  # a new start registers anew (200: no effect)
    assert counter(emu, "ws_handshakes") == 2


def test_stop_during_a_burst_dispatches_everything_received(emu: Emulator) -> None:
    n = 50_000
    api = Api(emu)
    states = States()
    seen: Collector[Message] = Collector()

    with ws_client(emu, states, max_chunk_size=500) as c:

        def handler(message: Message) -> None:
            if not seen.items:
                c.stopWebsocket()  # from the channel's thread: asks, returns at once
            seen(message)

        c.setHandler("notifications", handler)
        emu.burst(n, *TEMP)
        assert states.reached("stopped")
        received = len(notified(seen))
        delivered = counter(emu, "delivered")
        queued = api.get("/notification/websocket").json()["queue_size"]
        assert received == delivered < n  # every frame the emulator sent was handled
        assert received + queued == n
        c.setHandler("notifications", seen)
        assert c.startWebsocket() == "connected"
        assert seen.wait_for(lambda _: len(notified(seen)) == n, timeout=10.0)
    assert len(set(values(seen))) == n


def test_the_long_poll_and_the_socket_do_not_run_together(emu: Emulator) -> None:
    with ws_client(emu) as c:
        with pytest.raises(RuntimeError, match="stopWebsocket"):
            c.startLongPolling()
        c.stopWebsocket()
        c.startLongPolling(noWait=True)
        try:
            with pytest.raises(RuntimeError, match="stopLongPolling"):
                c.startWebsocket()
        finally:
            c.stopLongPolling()


def test_starting_a_running_channel_leaves_it_alone(emu: Emulator) -> None:
    with ws_client(emu) as c:
        assert c.startWebsocket() == "connected"
        assert c.websocketStats()["attempts"] == 1
    assert counter(emu, "ws_handshakes") == 1


def test_starts_from_several_threads_make_one_channel(emu: Emulator) -> None:
    c = connector(emu.token, emu.url, api="current", timeout=5.0)
    states: list[str] = []
    try:
        threads = [
            threading.Thread(target=lambda: states.append(c.startWebsocket())) for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10.0)
        assert states == ["connected"] * 4
        assert c.websocketStats()["registrations"] == 1
    finally:
        c.close()
    assert counter(emu, "ws_handshakes") == 1


def test_a_slow_handler_holds_the_socket_back(emu: Emulator) -> None:
    release = threading.Event()
    seen: Collector[Message] = Collector()

    def slow(message: Message) -> None:
        seen(message)
        release.wait(5.0)

    with ws_client(emu) as c:
        c.setHandler("notifications", slow)
        emu.burst(1, *TEMP)
        assert seen.wait(1)
        emu.burst(1, *TEMP)  # a second frame while the first is being handled
        assert wait_until(lambda: counter(emu, "delivered") == 2)
        assert len(seen.items) == 1  # not handled beside the first: one thread
        release.set()
        assert seen.wait(2)


# ---- frames the emulator never sends: a small server of this file ---------------------------


class OddServer:
    """Registers anything; each socket gets ``frames`` (str or bytes) and then, if
    ``answer_close`` is False, never answers the client's close (nor, without
    ``autoping``, a ping). Keeps the handshake's headers."""

    def __init__(
        self, frames: list[str | bytes], answer_close: bool = True, autoping: bool = True
    ) -> None:
        self.frames = frames
        self.answer_close = answer_close
        self.autoping = autoping
        self.headers: list[dict[str, str]] = []
        self.runtime = LoopThread("odd-server")
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def _put(self, request: web.Request) -> web.Response:
        return web.Response(status=201)

    async def _connect(self, request: web.Request) -> web.WebSocketResponse:
        self.headers.append(dict(request.headers))
        ws = web.WebSocketResponse(autoclose=self.answer_close, autoping=self.autoping)
        await ws.prepare(request)
        for frame in self.frames:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
        async for _ in ws:
            pass
        if not self.answer_close:
            await asyncio.sleep(30)
        return ws

    async def _setup(self) -> None:
        app = web.Application()
        app.router.add_put("/v2/notification/websocket", self._put)
        app.router.add_get("/v2/notification/websocket-connect", self._connect)
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def _teardown(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def __enter__(self) -> OddServer:
        self.runtime.start(self._setup, self._teardown)
        return self

    def __exit__(self, *exc: object) -> None:
        self.runtime.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def test_frames_that_are_not_json_objects_are_counted_not_dispatched() -> None:
    good = json.dumps({"notifications": [{"ep": "d", "path": "/1", "payload": "MQ=="}]})
    frames: list[str | bytes] = ["not json", "[1, 2]", "", b"\xff\xfe", "null", good]
    seen: Collector[Message] = Collector()
    with OddServer(frames) as srv:
        c = connector("k", srv.url, api="current", timeout=5.0)
        try:
            c.setHandler("notifications", seen)
            assert c.startWebsocket() == "connected"
            assert seen.wait(1)  # the last frame: everything before it was looked at
            stats = c.websocketStats()
        finally:
            c.close()
    assert stats["frames"] == 6 and stats["bad_frames"] == 5 and stats["messages"] == 1
    assert len(seen.items) == 1 and stats["state"] == "connected"


def test_stop_is_bounded_when_the_close_is_never_answered() -> None:
    with OddServer([], answer_close=False) as srv:
        c = connector("k", srv.url, api="current", timeout=5.0)
        try:
            assert c.startWebsocket() == "connected"
            assert c._ws is not None
            c._ws.close_timeout = 0.3
            started = time.monotonic()
            c.stopWebsocket(timeout=3.0)
            took = time.monotonic() - started
            assert c.websocketState() == "stopped"
        finally:
            c.close()
    assert 0.3 <= took < 2.0


def test_a_peer_that_stops_answering_pings_is_noticed() -> None:
    with OddServer([], autoping=False) as srv:
        c = connector("the-key", srv.url, api="current", timeout=5.0)
        try:
            assert c.startWebsocket(heartbeat=0.2) == "connected"
            assert wait_until(lambda: c.websocketStats()["closes"].get(1006, 0) >= 1)
            stats = c.websocketStats()
        finally:
            c.close()
    assert "no pong" in stats["last_close_reason"]
    assert srv.headers[0]["Authorization"] == "Bearer the-key"
    assert srv.headers[0]["Origin"] == srv.url
