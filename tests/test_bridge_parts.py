"""The bridge's small parts on their own: the MQTT link's outbox, the deadline thread, the
worker pool, exactly-once completion, and the event bus."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from bridge.connector import asyncResult
from bridge.core.events import EventBus, MqttConnected
from bridge.core.registry import Registry
from bridge.core.retry import Backoff
from bridge.core.workers import Deadlines, WorkerPool
from bridge.downstream.link import MqttLink
from bridge.service.settings import load_settings
from bridge.upstream.async_calls import AsyncCalls, Outcome
from bridge.upstream.port import READ_RETRY, outcome_of
from tests.support.broker import MosquittoBroker
from tests.support.mqtt_user import MqttUser


def link_settings(port: int, **kw: object):  # type: ignore[no-untyped-def]
    values = {"connector_url": "http://127.0.0.1:1", "connector_token": "t",
              "mqtt_host": "127.0.0.1", "mqtt_port": port,
              "mqtt_client_id": f"link-{uuid.uuid4().hex[:8]}", **kw}  # fmt: skip
    return load_settings(None, env_file=None, overrides=values)


def test_outbox_keeps_the_newest_in_order_and_counts_what_it_dropped(
    broker: MosquittoBroker,
) -> None:
    # A persistent subscriber: the broker queues what arrives while it is away.
    sub_id = f"sub-{uuid.uuid4().hex[:8]}"
    MqttUser(broker.port, "3.1.1", sub_id, persistent=True).subscribe("buf/#").close()

    link = MqttLink(link_settings(broker.port, mqtt_buffer=5), state_topic="buf-state")
    for i in range(10):  # not started yet: everything goes to the outbox
        link.publish("buf/x", str(i).encode(), qos=1)
    assert link.outbox_size() == 5
    assert link.stats["dropped_buffer_full"] == 5
    link.start()
    try:
        assert link.wait_connected(10)
        assert link.drain(10)
    finally:
        link.stop()

    sub = MqttUser(broker.port, "3.1.1", sub_id, persistent=True)
    try:
        sub.wait_for(lambda m: True, count=5)
        got = [m.payload for m in sub.messages]
    finally:
        sub.close()
    assert got == [b"5", b"6", b"7", b"8", b"9"]


def test_link_state_topic_online_then_offline(broker: MosquittoBroker) -> None:
    connected: list[tuple[bool, bool]] = []
    link = MqttLink(
        link_settings(broker.port),
        state_topic="p/$bridge/state",
        on_connect=lambda first, present: connected.append((first, present)),
    )
    watcher = MqttUser(broker.port).subscribe("p/#")
    try:
        link.start()
        assert link.wait_connected(10)
        watcher.wait_topic("p/$bridge/state", payload=b"online")
        link.stop()
        watcher.wait_topic("p/$bridge/state", payload=b"offline")
    finally:
        watcher.close()
    assert connected == [(True, False)]


def test_deadlines_fire_in_order_and_cancelled_ones_do_not() -> None:
    d = Deadlines().start()
    fired: list[str] = []
    done = threading.Event()
    try:
        d.schedule(0.15, lambda: (fired.append("late"), done.set()))
        d.schedule(0.05, lambda: fired.append("early"))
        d.schedule(0.10, lambda: fired.append("cancelled")).cancel()
        assert done.wait(5)
    finally:
        d.stop()
    assert fired == ["early", "late"]


def test_worker_pool_is_bounded() -> None:
    gate = threading.Event()
    pool = WorkerPool("t", size=1, queue_size=1).start()
    try:
        assert pool.submit(gate.wait)  # taken by the worker
        deadline = time.monotonic() + 5
        while pool.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.submit(lambda: None)  # waits in the queue
        assert not pool.submit(lambda: None)  # no room: refused, not queued
    finally:
        gate.set()
        pool.stop()


def test_async_call_finishes_exactly_once_whatever_races() -> None:
    d = Deadlines().start()
    calls = AsyncCalls(d)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def done(o: Outcome) -> None:
        with lock:
            outcomes.append(o)

    results: list[asyncResult] = []
    forgotten: list[asyncResult] = []

    def start(answer: Callable[[Outcome], None]) -> Callable[[], object]:
        r = asyncResult(callback=lambda r: answer(outcome_of(r)))
        results.append(r)
        return lambda: forgotten.append(r)  # the client lets go of the answer

    try:
        for _ in range(200):
            calls.start(start, 0.01, done, "timed out")
        # Half answer around the time-out, racing the deadline thread.
        time.sleep(0.005)
        for r in results[::2]:
            r._complete(error=False, result="v", status_code=200, payload=b"v")
        end = time.monotonic() + 5
        while len(calls) and time.monotonic() < end:
            time.sleep(0.01)
        for r in results[1::2]:  # answers after the time-out are ignored
            r._complete(error=False, result="v", status_code=200, payload=b"v")
    finally:
        d.stop()
    assert len(outcomes) == 200
    assert {o.status for o in outcomes} <= {200, 504}
    assert len(calls) == 0
    # Every call let the client go when it ended: timed out or answered, none is left.
    assert {id(r) for r in forgotten} == {id(r) for r in results}


def test_registry_forgets_only_an_endpoint_that_is_away_and_unchanged() -> None:
    reg = Registry()
    reg.put("a", "T", False, ())
    assert reg.forget("a") is None  # online
    assert reg.forget("nobody") is None
    reg.remove("a", "offline")
    mark = reg.mark()
    reg.put("a", "T", False, ())  # it came back...
    reg.remove("a", "expired")  # ...and left again: the first departure's mark is stale
    assert reg.forget("a", since=mark) is None
    assert reg.get("a") is not None
    gone = reg.forget("a", since=reg.mark())
    assert gone is not None and gone.state == "expired"
    assert reg.get("a") is None and len(reg) == 0
    assert reg.forget("a") is None


def test_event_bus_isolates_a_failing_handler() -> None:
    bus = EventBus()
    seen: list[str] = []

    def broken(event: MqttConnected) -> None:
        raise RuntimeError("boom")

    bus.subscribe(MqttConnected, broken)
    bus.subscribe(MqttConnected, lambda e: seen.append("second"))
    bus.emit(MqttConnected(first=True))
    assert seen == ["second"]
    bus.unsubscribe(MqttConnected, broken)
    assert bus.has_handlers(MqttConnected)


def test_one_backoff_and_a_policy_that_decides_on_types() -> None:
    b = Backoff(0.5, 4.0, rand=lambda: 1.0)
    assert [b.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    b.succeeded()
    assert b.failed() == 0.5
    policy = READ_RETRY
    refused = Outcome(False, 412, None, "no channel", kind="refused")
    assert policy.delay(refused, 1) is not None
    assert policy.delay(refused, policy.tries) is None
    # The text says nothing: only the status and the kind count.
    assert policy.delay(Outcome(False, 404, None, "412", kind="refused"), 1) is None
    assert policy.delay(Outcome(False, 504, None, "no answer", kind="timeout"), 1) is None
