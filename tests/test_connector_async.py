"""Async-response matching: results filled from the channel, early answers, unknown ids,
expiry, error entries, and many threads calling while the long-poll thread matches."""

from __future__ import annotations

import base64
import json
import threading

import pytest

from bridge.connector import asyncResult, connector
from bridge.simulator import Emulator
from tests.support.clients import Collector, client_for, wait_until
from tests.support.wire import Recorded, RecordingServer, Reply

TEMP = ("node-001", "/3303/0/5700")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def async_server(ids: list[str]) -> RecordingServer:
    """Answers every resource verb with 202 and the next id of ``ids``."""
    lock = threading.Lock()

    def answer(_: Recorded) -> Reply:
        with lock:
            aid = ids.pop(0)
        return Reply(202, json.dumps({"async-response-id": aid}))

    return RecordingServer(answer)


# ---- through the emulator's long-poll channel --------------------------------------------


def test_callbacks_run_on_the_long_poll_thread(emulator: Emulator, fast_http: bool) -> None:
    # The device answers after the 202 is back: an answer that came before it would be
    # completed on the calling thread, as asyncResult documents (a fast device and a busy
    # caller made this test fail now and then).
    emulator.set_fault(device_latency=0.3)
    done: Collector[asyncResult] = Collector()
    with client_for(emulator, fastHttp=fast_http) as c:
        r = c.getResourceValue(*TEMP, cbfn=done)
        assert done.wait(1, timeout=5.0)
    assert done.items == [r] and r.isDone() and r.error is False
    assert done.threads == ["connector-longpoll"]


def test_device_timeout_is_an_async_error(emulator: Emulator, fast_http: bool) -> None:
    emulator.set_fault(device_timeout={"ep": TEMP[0], "path": TEMP[1]})
    done: Collector[asyncResult] = Collector()
    with client_for(emulator, fastHttp=fast_http) as c:
        r = c.getResourceValue(*TEMP, cbfn=done)
        assert r.http_status == 202 and r.wait(5.0)
    assert r.error and r.error.status_code == 504 and r.status_code == 504
    assert r.error.errType == "async-responses-handler504"
    assert r.error.error == r.raw_data["error"]  # the device's own text ("TIMEOUT")
    assert done.items == [r]


def test_binary_value_stays_bytes(emulator: Emulator, fast_http: bool) -> None:
    """An object-level read answers TLV or JSON; the type rule decides str vs bytes."""
    with client_for(emulator, fastHttp=fast_http) as c:
        r = c.getResourceValue("node-001", "/3303/0")
        assert r.wait(5.0)
    assert r.error is False and r.payload
    ct = r.raw_data.get("ct", "")
    if "json" in ct or ct.startswith("text/"):
        assert isinstance(r.result, str) and r.result.encode() == r.payload
    else:
        assert isinstance(r.result, bytes) and r.result == r.payload


def test_many_threads_call_while_the_channel_matches(emulator: Emulator, fast_http: bool) -> None:
    """8 threads x 10 reads and writes at once: each result completes exactly once."""
    calls: Collector[asyncResult] = Collector()
    results: list[asyncResult] = []
    lock = threading.Lock()
    with client_for(emulator, fastHttp=fast_http) as c:

        def worker(k: int) -> None:
            for i in range(10):
                if i % 2:
                    r = c.putResourceValue("light-001", "/3311/0/5851", str(k * 10 + i), calls)
                else:
                    r = c.getResourceValue(f"node-00{1 + k % 2}", "/3303/0/5700", calls)
                with lock:
                    results.append(r)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert calls.wait(80, timeout=20.0)
        assert all(r.wait(5.0) for r in results)
    bad = [r for r in results if r.error]
    # A device answers one request at a time up to a limit; 429 is a legitimate answer.
    assert all(r.error.status_code == 429 for r in bad if r.error)
    assert len(bad) < len(results)
    assert sorted(map(id, calls.items)) == sorted(map(id, results))  # once each
    assert c.pendingCount() == 0


# ---- early answers, unknown ids, bad entries ----------------------------------------------


def test_answer_arriving_before_the_202_returns(fast_http: bool) -> None:
    """The channel delivers the answer while the HTTP call is still on its way back."""
    holder: dict[str, connector] = {}
    aid = "7#node-001@domain/3303/0/5700"

    def answer(_: Recorded) -> Reply:
        entry = {"id": aid, "status": 200, "ct": "text/plain", "payload": b64(b"22.0")}
        assert holder["c"].handler({"async-responses": [entry]})  # before the 202 leaves
        return Reply(202, json.dumps({"async-response-id": aid}))

    done: Collector[asyncResult] = Collector()
    with (
        RecordingServer(answer) as srv,
        connector("k", srv.url, timeout=5.0, fastHttp=fast_http) as c,
    ):
        holder["c"] = c
        r = c.getResourceValue(*TEMP, cbfn=done)
    assert r.isDone() and r.error is False and r.result == "22.0"
    assert done.items == [r] and done.threads == ["MainThread"]
    assert c.pendingCount() == 0


def test_unknown_async_id_is_ignored(caplog: pytest.LogCaptureFixture, fast_http: bool) -> None:
    caplog.set_level("DEBUG", logger="bridge.connector")
    with RecordingServer() as srv, connector("k", srv.url, fastHttp=fast_http) as c:
        seen: Collector[dict[str, object]] = Collector()
        c.setHandler("async-responses", seen)
        msg = {"async-responses": [{"id": "nobody#asked", "status": 200, "payload": b64(b"1")}]}
        assert c.handler(msg) is True
        assert seen.items == [msg]  # the user's handler still sees it
        assert c.pendingCount() == 0
    assert "nobody#asked" in caplog.text


def test_early_answers_expire_unclaimed(fast_http: bool) -> None:
    ids = ["late#1"]
    with (
        async_server(ids) as srv,
        connector("k", srv.url, asyncTimeout=0.3, fastHttp=fast_http) as c,
    ):
        c.handler({"async-responses": [{"id": "late#1", "status": 200}]})
        assert c._pending.early_count() == 1

        def unclaimed_dropped() -> bool:
            c._pending.expire()  # what the long-poll thread runs between pulls
            return c._pending.early_count() == 0

        assert wait_until(unclaimed_dropped, 2.0)
        r = c.getResourceValue(*TEMP)  # registered after the early answer was dropped
    assert not r.isDone() and r.async_id == "late#1"


@pytest.mark.parametrize(
    "entries",
    [
        "not a list",
        [42, None, "x"],
        [{"status": 200}],
        [{"id": 12, "status": 200}],
    ],
)
def test_bad_async_entries_do_not_break_matching(entries: object, fast_http: bool) -> None:
    ids = ["good#1"]
    with async_server(ids) as srv, connector("k", srv.url, fastHttp=fast_http) as c:
        r = c.getResourceValue(*TEMP)
        assert c.handler({"async-responses": entries}) is True
        assert not r.isDone()
        c.handler({"async-responses": [{"id": "good#1", "status": 200, "payload": b64(b"x")}]})
    assert r.isDone() and r.result == "x"


def test_bad_base64_payload_is_an_error(fast_http: bool) -> None:
    with async_server(["b#1"]) as srv, connector("k", srv.url, fastHttp=fast_http) as c:
        r = c.getResourceValue(*TEMP)
        c.handler({"async-responses": [{"id": "b#1", "status": 200, "payload": "%%%"}]})
    assert r.isDone() and r.error and r.error.errType == "invalid_response"
    assert "base64" in r.error.error


def test_status_and_text_of_error_entries(fast_http: bool) -> None:
    with async_server(["e#1", "e#2"]) as srv, connector("k", srv.url, fastHttp=fast_http) as c:
        with_text = c.getResourceValue(*TEMP)
        without = c.putResourceValue(*TEMP, "1")
        c.handler(
            {
                "async-responses": [
                    {"id": "e#1", "status": 504, "error": "TIMEOUT"},
                    {"id": "e#2", "status": 415},
                ]
            }
        )
    assert with_text.error and with_text.error.error == "TIMEOUT"
    assert with_text.error.status_code == 504 and with_text.result == "TIMEOUT"
    assert without.error and without.error.status_code == 415
    assert without.error.error == "Media type is not supported by the endpoint."


# ---- expiry ---------------------------------------------------------------------------


def test_unanswered_id_expires_for_a_waiter(fast_http: bool) -> None:
    done: Collector[asyncResult] = Collector()
    with (
        async_server(["never#1"]) as srv,
        connector("k", srv.url, asyncTimeout=0.3, fastHttp=fast_http) as c,
    ):
        r = c.getResourceValue(*TEMP, cbfn=done)
        assert c.pendingCount() == 1
        assert r.wait(timeout=5.0)  # wakes at the deadline and expires the id itself
        assert c.pendingCount() == 0
    assert r.error and r.error.errType == "async_timeout" and r.error.status_code == 0
    assert "never#1" in r.error.error and "0.3 s" in r.error.error
    assert r.status_code == 202 and done.items == [r]
    assert r.wait(timeout=0)  # stays done


def test_unanswered_id_expires_via_the_long_poll_thread(
    emulator: Emulator, fast_http: bool
) -> None:
    """Nobody waits: the long-poll thread expires the id between pulls, cbfn is called."""
    emulator.set_fault(device_latency=30.0)  # the device will not answer in time
    done: Collector[asyncResult] = Collector()
    with client_for(emulator, asyncTimeout=0.5, fastHttp=fast_http) as c:
        r = c.getResourceValue(*TEMP, cbfn=done)
        assert r.http_status == 202
        assert done.wait(1, timeout=5.0)  # within asyncTimeout + one pull (1 s)
        assert done.threads == ["connector-longpoll"]
        assert c.pendingCount() == 0
    assert r.error and r.error.errType == "async_timeout"


def test_expiry_is_lazy_on_new_calls_too(fast_http: bool) -> None:
    with (
        async_server(["old#1", "new#2"]) as srv,
        connector("k", srv.url, asyncTimeout=0.2, fastHttp=fast_http) as c,
    ):
        old = c.getResourceValue(*TEMP)
        assert wait_until(lambda: c._pending.next_deadline() is not None)
        threading.Event().wait(0.3)  # let the deadline pass with nothing running
        assert not old.isDone()  # no timer thread: nothing happened by itself
        c.getResourceValue(*TEMP)  # any registration runs the expiry
    assert old.isDone() and old.error and old.error.errType == "async_timeout"


def test_a_late_answer_after_expiry_is_ignored(fast_http: bool) -> None:
    with (
        async_server(["slow#1"]) as srv,
        connector("k", srv.url, asyncTimeout=0.2, fastHttp=fast_http) as c,
    ):
        r = c.getResourceValue(*TEMP)
        assert r.wait(3.0) and r.error
        c.handler({"async-responses": [{"id": "slow#1", "status": 200, "payload": b64(b"1")}]})
    assert r.error and r.error.errType == "async_timeout"  # unchanged
