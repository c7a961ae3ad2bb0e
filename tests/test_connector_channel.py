"""The notification channel: dispatch of every message type, webhook input, and a
long-poll thread that survives dead, failing, hanging and garbage-talking servers with
a bounded request rate, and stops and starts again."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from bridge.connector import HANDLER_NAMES, asyncResult, connector, decode_payload
from bridge.simulator import Emulator
from tests.support.clients import Collector, client_for, wait_until
from tests.support.wire import ClosingServer, Recorded, RecordingServer, Reply

TEMP = ("node-001", "/3303/0/5700")
Message = dict[str, Any]


def pause(seconds: float) -> None:
    """Let the client run for a measured window (rate tests count what happened in it)."""
    threading.Event().wait(seconds)


# ---- dispatch ---------------------------------------------------------------------------


def test_every_message_type_reaches_its_handler(emulator: Emulator, fast_http: bool) -> None:
    got = {name: Collector[Message]() for name in HANDLER_NAMES}
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        for name, collector in got.items():
            c.setHandler(name, collector)
        c.startLongPolling()
        assert emulator.wait_channel(5.0)

        assert c.putResourceSubscription(*TEMP).error is False
        emulator.set_value(*TEMP, "30.5")
        emulator.register("new-001", ept="Light")
        emulator.update("new-001")
        r = c.getResourceValue("light-001", "/3311/0/5850")
        emulator.deregister("new-001")
        emulator.register("new-002", ept="Light")
        emulator.expire("new-002")

        def has(name: str, pred: Any) -> bool:
            return got[name].wait_for(lambda items: any(pred(m[name]) for m in items))

        assert has("notifications", lambda es: any(e["ep"] == TEMP[0] for e in es))
        assert has("registrations", lambda es: any(e["ep"] == "new-001" for e in es))
        assert has("reg-updates", lambda es: any(e["ep"] == "new-001" for e in es))
        assert has("de-registrations", lambda es: "new-001" in es)
        assert has("registrations-expired", lambda es: "new-002" in es)
        assert has("async-responses", lambda es: any(e["id"] == r.async_id for e in es))
        assert r.wait(5.0) and r.error is False  # matched although a user handler is set
    assert all(t == "connector-longpoll" for col in got.values() for t in col.threads)


def test_notification_payloads_stay_base64(emulator: Emulator, fast_http: bool) -> None:
    seen: Collector[Message] = Collector()
    with client_for(emulator, fastHttp=fast_http) as c:
        c.setHandler("notifications", seen)
        assert c.putResourceSubscription(*TEMP).error is False
        emulator.set_value(*TEMP, "-4.75")

        def entries() -> list[dict[str, Any]]:
            return [e for m in seen.items for e in m["notifications"] if e["ep"] == TEMP[0]]

        assert seen.wait_for(lambda _: any(decode_payload(e) == b"-4.75" for e in entries()))
    assert all(isinstance(e["payload"], str) for e in entries())


def test_handler_takes_str_bytes_bytearray_and_dict(fast_http: bool) -> None:
    with RecordingServer() as srv, connector("k", srv.url, fastHttp=fast_http) as c:
        seen: Collector[Message] = Collector()
        c.setHandler("de-registrations", seen)
        msg = {"de-registrations": ["node-009"]}
        text = json.dumps(msg)
        for data in (text, text.encode(), bytearray(text.encode()), msg):
            assert c.handler(data) is True
    assert seen.items == [msg] * 4


@pytest.mark.parametrize("data", ["", b"   ", "{broken", b"[1,2]", b"\xff\xfe", 42, None])
def test_handler_rejects_bad_input_clearly(
    data: Any, caplog: pytest.LogCaptureFixture, fast_http: bool
) -> None:
    with RecordingServer() as srv, connector("k", srv.url, fastHttp=fast_http) as c:
        seen: Collector[Message] = Collector()
        for name in HANDLER_NAMES:
            c.setHandler(name, seen)
        assert c.handler(data) is False
    assert seen.items == []
    assert "message ignored" in caplog.text


def test_a_failing_handler_does_not_stop_dispatch(emulator: Emulator, fast_http: bool) -> None:
    calls: Collector[Message] = Collector()

    def broken(message: Message) -> None:
        calls(message)
        raise RuntimeError("handler bug")

    async_seen: Collector[Message] = Collector()
    with client_for(emulator, fastHttp=fast_http) as c:
        c.setHandler("registrations", broken)
        c.setHandler("async-responses", async_seen)
        emulator.register("new-003", ept="Light")
        assert calls.wait(1)
        emulator.register("new-004", ept="Light")
        assert calls.wait(2)  # the thread lives on
        r = c.getResourceValue(*TEMP)
        assert r.wait(5.0) and r.error is False


def test_set_handler_validates_and_resets(fast_http: bool) -> None:
    with RecordingServer() as srv, connector("k", srv.url, fastHttp=fast_http) as c:
        with pytest.raises(ValueError, match="notification type"):
            c.setHandler("notification", print)
        with pytest.raises(TypeError):
            c.setHandler("notifications", 42)  # type: ignore[arg-type]
        seen: Collector[Message] = Collector()
        c.setHandler("notifications", seen)
        c.handler({"notifications": []})
        c.setHandler("notifications", None)  # back to the default (log only)
        c.handler({"notifications": []})
    assert len(seen.items) == 1


# ---- restart ----------------------------------------------------------------------------


def test_stop_and_start_again(emulator: Emulator, fast_http: bool) -> None:
    seen: Collector[Message] = Collector()
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        c.setHandler("registrations", seen)
        first = c.startLongPolling()
        assert c.startLongPolling() is first  # already running: the same thread
        assert emulator.wait_channel(5.0)
        c.stopLongPolling()
        assert not first.is_alive()
        second = c.startLongPolling()
        assert second is not first and second.is_alive()
        emulator.register("after-restart", ept="Light")
        assert seen.wait_for(
            lambda ms: any(e["ep"] == "after-restart" for m in ms for e in m["registrations"])
        )
        c.stopLongPolling()
        c.stopLongPolling()  # twice is harmless
        assert not second.is_alive()
        third = c.startLongPolling()
        assert third.is_alive()
    assert not third.is_alive()  # close() stops it


def test_stop_ends_a_pull_in_flight(fast_http: bool) -> None:
    """With a 30 s long-poll hold, stop must not wait for the service to answer."""
    with (
        Emulator(token="t", pull_timeout=30.0) as emu,
        connector("t", emu.url, fastHttp=fast_http) as c,
    ):
        thread = c.startLongPolling()
        assert emu.wait_channel(5.0)
        c.stopLongPolling(timeout=10.0)
        assert not thread.is_alive()
        stats = c.longPollStats()
    assert stats["failures"] == 0  # an aborted pull is not a failure


def test_no_wait_pulls_are_paced(emulator: Emulator, fast_http: bool) -> None:
    with connector(emulator.token, emulator.url, fastHttp=fast_http) as c:
        emulator.reset_counters()
        c.startLongPolling(noWait=True)
        pause(2.0)
        c.stopLongPolling()
    pulls = emulator.counters()["pulls"]
    assert 2 <= pulls <= 5  # the opening pull, then one a second: not a spin


# ---- failure and back-off -----------------------------------------------------------------


def test_dead_server_sees_a_bounded_request_rate(fast_http: bool) -> None:
    with ClosingServer() as dead, connector("k", dead.url, backoffMax=1.0, fastHttp=fast_http) as c:
        c.startLongPolling()
        pause(2.0)
        stats = c.longPollStats()
        c.stopLongPolling()
    n = len(dead.accepted)
    # Back-off floors 0.25, 0.5, 0.5, ... s: at most 5 tries in 2 s (a spin makes thousands).
    assert 2 <= n <= 6, n
    assert stats["failures"] >= n - 1 and stats["running"]
    gaps = [b - a for a, b in zip(dead.accepted, dead.accepted[1:], strict=False)]
    assert all(g >= 0.2 for g in gaps), gaps


@pytest.mark.parametrize("status", [500, 503, 429])
def test_failing_server_sees_a_bounded_rate_then_recovers(
    emulator: Emulator, status: int, fast_http: bool
) -> None:
    emulator.set_fault(force_status={"route": "pull", "status": status, "count": 1000})
    seen: Collector[Message] = Collector()
    with connector(emulator.token, emulator.url, backoffMax=1.0, fastHttp=fast_http) as c:
        c.setHandler("registrations", seen)
        emulator.reset_counters()
        c.startLongPolling()
        pause(1.5)
        tries = emulator.counters()["requests"]
        assert 2 <= tries <= 5, tries  # floors 0.25, 0.5, 0.5 s: at most 4 in 1.5 s
        assert c.longPollStats()["last_error"] == f"HTTP {status}"
        emulator.clear_faults()
        emulator.register("back-001", ept="Light")
        assert seen.wait_for(
            lambda ms: any(e["ep"] == "back-001" for m in ms for e in m["registrations"])
        )
        assert c.longPollStats()["consecutive_failures"] == 0


def test_wrong_key_backs_off_at_the_cap_and_says_so(
    emulator: Emulator, caplog: pytest.LogCaptureFixture, fast_http: bool
) -> None:
    with connector("not-the-key", emulator.url, backoffMax=1.0, fastHttp=fast_http) as c:
        c.startLongPolling()
        pause(2.0)
        stats = c.longPollStats()
        c.stopLongPolling()
    assert 2 <= stats["pulls"] <= 4, stats  # one try per backoffMax, from the first failure
    assert stats["last_status"] == 401
    assert "refused the access key" in caplog.text and "HTTP 401" in caplog.text
    assert "not-the-key" not in caplog.text


def test_retry_after_is_respected(fast_http: bool) -> None:
    def answer(_: Recorded) -> Reply:
        return Reply(429, "slow down", "text/plain", {"Retry-After": "1"})

    with (
        RecordingServer(answer) as srv,
        connector("k", srv.url, backoffMax=5.0, fastHttp=fast_http) as c,
    ):
        c.startLongPolling()
        reqs = srv.wait_for(2, timeout=5.0)
        c.stopLongPolling()
    assert len(reqs) >= 2
    assert reqs[1].at - reqs[0].at >= 0.9  # not the 0.25-0.5 s of a first back-off


def test_malformed_pull_body_is_survived(
    emulator: Emulator, caplog: pytest.LogCaptureFixture, fast_http: bool
) -> None:
    seen: Collector[Message] = Collector()
    with client_for(emulator, fastHttp=fast_http) as c:
        c.setHandler("registrations", seen)
        emulator.set_fault(malformed={"route": "pull", "count": 2})
        assert wait_until(lambda: c.longPollStats()["failures"] >= 2, 10.0)
        emulator.register("after-garbage", ept="Light")
        assert seen.wait_for(
            lambda ms: any(e["ep"] == "after-garbage" for m in ms for e in m["registrations"])
        )
    assert "not valid JSON" in caplog.text


def test_hanging_pull_times_out_and_recovers(emulator: Emulator, fast_http: bool) -> None:
    seen: Collector[Message] = Collector()
    with client_for(emulator, poll=False, pollTimeout=0.5, fastHttp=fast_http) as c:
        c.setHandler("registrations", seen)
        emulator.set_fault(hang={"route": "pull", "count": 1})
        c.startLongPolling()
        assert wait_until(lambda: c.longPollStats()["failures"] == 1, 5.0)
        assert "read timeout" in str(c.longPollStats()["last_error"])
        emulator.register("after-hang", ept="Light")
        assert seen.wait_for(
            lambda ms: any(e["ep"] == "after-hang" for m in ms for e in m["registrations"]),
            timeout=10.0,
        )


def test_cut_polls_lose_nothing(emulator: Emulator, fast_http: bool) -> None:
    seen: Collector[Message] = Collector()
    with client_for(emulator, backoffMax=0.5, fastHttp=fast_http) as c:
        c.setHandler("registrations", seen)
        emulator.set_fault(cut_polls=1.0)  # every poll is cut while messages wait
        names = [f"cut-{i:02d}" for i in range(12)]
        for name in names:
            emulator.register(name, ept="Light")
        assert wait_until(lambda: emulator.counters()["pulls_cut"] >= 3, 10.0)
        # (the client notices a cut a moment after the emulator counted it)
        assert wait_until(lambda: c.longPollStats()["failures"] >= 3, 10.0)
        emulator.set_fault(cut_polls=0.5)
        pause(0.5)
        emulator.clear_faults()

        def all_seen(ms: list[Message]) -> bool:
            got = {e["ep"] for m in ms for e in m["registrations"]}
            return set(names) <= got

        assert seen.wait_for(all_seen, timeout=10.0)


def test_user_async_handler_and_callbacks_both_run(emulator: Emulator, fast_http: bool) -> None:
    user: Collector[Message] = Collector()
    done: Collector[asyncResult] = Collector()
    with client_for(emulator, fastHttp=fast_http) as c:
        c.setHandler("async-responses", user)
        r = c.getResourceValue(*TEMP, cbfn=done)
        assert done.wait(1) and user.wait(1)
    assert r.error is False
    assert any(e["id"] == r.async_id for m in user.items for e in m["async-responses"])
