"""The broker goes away: nothing the bridge accepted is lost (issue 5, sections 1, 2, 7).

Each test counts what was sent and what arrived and prints the figures
(``[reliability] ...`` lines): sent, received, lost, duplicates, recovery time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.service.controller import Bridge
from bridge.simulator import Emulator
from tests.reliability_support import (
    ACT_EP,
    SETPOINT,
    SETPOINT_TOPIC,
    STREAM_EP,
    STREAM_PATH,
    STREAM_TOPIC,
    VALUE_WIDTH,
    Executions,
    PacedStream,
    Publisher,
    Subscriber,
    counts,
    emitted_range,
    report,
    stream_emulator,
    value,
)
from tests.support.bridge_harness import (
    bridge_settings,
    retained,
    running_bridge,
    wait_initial_reads,
)
from tests.support.broker import MosquittoBroker
from tests.support.clients import wait_until

pytestmark = pytest.mark.both_dialects

N = 3000


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with stream_emulator() as e:
        yield e


def first_after(sub: Subscriber, topic: str, moment: float) -> float:
    """Seconds from ``moment`` to the first arrival on ``topic`` after it."""
    return min(a.at for a in sub.arrivals[topic] if a.at >= moment) - moment


def record_pubacks(bridge: Bridge, topic: str) -> dict[bytes, list[int]]:
    """payload -> the link's connect count at each PUBACK the broker sent for it.

    Instrumentation only: wraps paho's internal completion of a QoS 1 publish."""
    acked: dict[bytes, list[int]] = {}
    client = bridge.mqtt._client
    original = client._do_on_publish

    def on_puback(mid: int, reason: Any, props: Any) -> Any:
        msg = client._out_messages.get(mid)
        if msg is not None and msg.topic == topic:
            acked.setdefault(bytes(msg.payload), []).append(bridge.mqtt.stats["connects"])
        return original(mid, reason, props)

    client._do_on_publish = on_puback  # type: ignore[method-assign]
    return acked


def test_broker_stopped_mid_stream_every_notification_arrives(
    broker: MosquittoBroker, emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM: Mosquitto saves its sessions; the bridge buffers and resends the rest."""
    with running_bridge(bridge_settings(emu, broker)) as bridge:
        sub = Subscriber(broker.port, (STREAM_TOPIC,))
        try:
            stream = PacedStream(emu, N, chunk=100, interval=0.03).start()
            sub.wait(lambda: len(sub.payloads(STREAM_TOPIC)) >= N // 3, 30, "a third")
            broker.stop()
            time.sleep(0.5)
            broker.start()
            up_at = time.monotonic()
            sub.wait_values(STREAM_TOPIC, stream.values, timeout=60)
            assert stream.done.wait(10)
            figures = counts(sub.payloads(STREAM_TOPIC), stream.values)
            recovery = first_after(sub, STREAM_TOPIC, up_at)
            # The retained value is the last one emitted: nothing older overtook it.
            last = retained(broker, STREAM_TOPIC, 1)[0].payload
        finally:
            sub.close()
        report(
            capsys,
            "broker SIGTERM mid-stream",
            **figures,
            recovery_s=recovery,
            buffered=bridge.mqtt.stats["buffered"],
            dropped=bridge.mqtt.stats["dropped_buffer_full"],
        )
    assert figures["lost"] == 0
    assert sub.sessions[-1] is True, "the subscriber's session survived the restart"
    assert last == value(stream.first + N - 1)


def test_broker_killed_mid_stream_the_bridge_loses_nothing(
    broker: MosquittoBroker, emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL: Mosquitto keeps only what it saved (here: at a clean restart before the
    stream). Whatever it acknowledged after that and had not delivered is its own loss;
    the bridge resends everything it did not get a PUBACK for."""
    with running_bridge(bridge_settings(emu, broker)) as bridge:
        sub = Subscriber(broker.port, (STREAM_TOPIC,))
        try:
            broker.stop()  # a clean restart: the broker saves both sessions now
            broker.start()
            sub.wait(lambda: len(sub.sessions) == 2, 20, "the subscriber to reconnect")
            assert bridge.mqtt.wait_connected(20)
            acked = record_pubacks(bridge, STREAM_TOPIC)
            stream = PacedStream(emu, N, chunk=100, interval=0.03).start()
            sub.wait(lambda: len(sub.payloads(STREAM_TOPIC)) >= N // 3, 30, "a third")
            broker.kill()
            killed_epoch = bridge.mqtt.stats["connects"]
            time.sleep(0.5)
            broker.start()
            up_at = time.monotonic()
            assert stream.done.wait(30)
            wanted = stream.values

            def settled() -> bool:
                # every message acknowledged (by either broker), and every one the new
                # broker acknowledged delivered
                if not wanted <= set(acked):
                    return False
                got = set(sub.payloads(STREAM_TOPIC))
                return all(v in got for v in wanted if max(acked[v]) > killed_epoch)

            sub.wait(settled, 60, "every message acknowledged and delivered")
            received = sub.payloads(STREAM_TOPIC)
        finally:
            sub.close()
    figures = counts(received, wanted)
    missing = wanted - set(received)
    by_killed_broker = {v for v in wanted if min(acked[v]) <= killed_epoch}
    resent_or_buffered = len(wanted) - len(by_killed_broker)
    report(
        capsys,
        "broker SIGKILL mid-stream",
        **figures,
        acked_by_killed_broker=len(by_killed_broker),
        acked_after_restart=resent_or_buffered,
        lost_by_broker=len(missing & by_killed_broker),
        lost_by_bridge=len(missing - by_killed_broker),
        recovery_s=first_after(sub, STREAM_TOPIC, up_at),
    )
    # The bridge lost nothing: every message got a PUBACK in the end, and what is missing
    # is only what the killed broker had acknowledged (and neither delivered nor saved).
    assert missing <= by_killed_broker
    assert wanted <= set(acked)


def test_while_the_broker_is_away_the_buffer_keeps_the_newest_in_order(
    broker: MosquittoBroker,
    emu: Emulator,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.mqtt")
    cap, n = 200, 500
    # The device answers the start-up read late, as it may: its (empty) value must not be
    # taken for one of the burst's.
    emu.set_fault(device_latency=0.5)
    # Only values in the buffer: no health message or discovery config published late
    # (on a background worker, after the link dropped) to take one of its places.
    settings = bridge_settings(emu, broker, mqtt_buffer=cap, health_interval=0, homeassistant=False)
    with running_bridge(settings) as bridge:
        wait_initial_reads(bridge, 1)
        emu.clear_faults()
        sub = Subscriber(broker.port, (STREAM_TOPIC,))
        try:
            broker.stop()
            deadline = time.monotonic() + 10
            while bridge.mqtt.connected and time.monotonic() < deadline:
                time.sleep(0.02)
            first = emitted_range(emu)
            emu.burst(n, ep=STREAM_EP, path=STREAM_PATH, size=VALUE_WIDTH)
            deadline = time.monotonic() + 20
            while bridge.mqtt.stats["dropped_buffer_full"] < n - cap:
                assert time.monotonic() < deadline, bridge.mqtt.stats
                time.sleep(0.02)
            assert bridge.mqtt.outbox_size() == cap
            broker.start()
            newest = {value(first + k) for k in range(n - cap, n)}
            sub.wait_values(STREAM_TOPIC, newest, timeout=30)
            # A marker value after the burst, on the same path: the link publishes in
            # order, so once it is here anything else of the burst would be here too.
            marker = value(emitted_range(emu))
            emu.burst(1, ep=STREAM_EP, path=STREAM_PATH, size=VALUE_WIDTH)
            sub.wait_values(STREAM_TOPIC, {marker}, timeout=30)
            got = [p for p in sub.payloads(STREAM_TOPIC) if p != marker]
        finally:
            sub.close()
        dropped = bridge.mqtt.stats["dropped_buffer_full"]
    report(
        capsys, "buffer while broker away", sent=n, buffer=cap, received=len(got), dropped=dropped
    )
    assert dropped >= n - cap  # (and whatever else the bridge published meanwhile)
    assert set(got) == newest, "exactly the newest, the oldest were dropped"
    assert got == sorted(got), "in order"
    assert "dropped while the broker was away" in caplog.text
    assert "dropped (dropped_buffer_full" in caplog.text


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_commands_sent_while_the_bridge_is_away_are_carried_out_when_it_returns(
    broker: MosquittoBroker, emu: Emulator, protocol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log = Executions(emu)
    settings = bridge_settings(emu, broker, mqtt_protocol=protocol)
    with running_bridge(settings):
        pass  # the first run leaves its session (and subscriptions) with the broker
    pub = Publisher(broker.port)
    try:
        keys = [f"away-{protocol}-{i}" for i in range(20)]
        for key in keys:
            pub.command(f"{SETPOINT_TOPIC}/set", key, key, corr=protocol == "5")
        started = time.monotonic()
        with running_bridge(settings) as bridge:
            pub.wait_replies({k.encode() for k in keys}, 20)
            took = time.monotonic() - started
            assert bridge.mqtt.stats["sessions_resumed"] == 1
        replies = [pub.reply_json(k.encode()) for k in keys]
    finally:
        pub.close()
    done = log.bodies(ACT_EP, SETPOINT, "PUT")
    report(
        capsys,
        f"commands while bridge away (MQTT {protocol})",
        sent=len(keys),
        replied=len(replies),
        carried_out=sum(done[k.encode()] > 0 for k in keys),
        duplicates=sum(max(done[k.encode()] - 1, 0) for k in keys),
        all_answered_s=took,
    )
    assert all(r["ok"] and r["status"] == 200 for r in replies)
    assert all(done[k.encode()] == 1 for k in keys)


def test_after_the_broker_lost_everything_subscriptions_and_retained_states_come_back(
    broker: MosquittoBroker, emu: Emulator
) -> None:
    with running_bridge(bridge_settings(emu, broker)) as bridge:
        broker.kill()
        for f in broker.dir.glob("*.db"):
            f.unlink()  # a new broker: no sessions, no retained messages
        broker.start()
        deadline = time.monotonic() + 20
        while bridge.mqtt.stats["connects"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert bridge.mqtt.stats["sessions_new"] == 2
        # The bridge publishes them again (on a background worker): wait until they are
        # there, then check that the broker retains them.
        topics = {
            f"connector/{ep}/{level}"
            for ep in (STREAM_EP, ACT_EP)
            for level in ("$state", "$resources")
        } | {"connector/$bridge/state"}
        watch = Subscriber(broker.port, tuple(topics))
        try:
            watch.wait(lambda: topics <= set(watch.arrivals), 15, "the states again")
        finally:
            watch.close()
        states = retained(broker, "connector/+/$state", 2)
        resources = retained(broker, "connector/+/$resources", 2)
        bridge_state = retained(broker, "connector/$bridge/state", 1)
        pub = Publisher(broker.port)
        try:
            pub.command(f"{SETPOINT_TOPIC}/set", "after-loss", "after-loss")
            pub.wait_replies({b"after-loss"}, 15)
            assert pub.reply_json(b"after-loss")["ok"]
        finally:
            pub.close()
    assert {m.topic for m in states} == {
        f"connector/{STREAM_EP}/$state",
        f"connector/{ACT_EP}/$state",
    }
    assert all(m.payload == b"online" for m in states)
    assert {m.topic for m in resources} == {
        f"connector/{STREAM_EP}/$resources",
        f"connector/{ACT_EP}/$resources",
    }
    assert bridge_state[0].payload == b"online"


@pytest.mark.parametrize("when", ["held", "acked-while-away"])
def test_a_command_the_broker_resends_is_carried_out_once(
    broker: MosquittoBroker, emu: Emulator, when: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The broker restarts while the bridge holds a command: it resends it (DUP) when the
    bridge reconnects. The bridge recognises the copy: one execution, one reply."""
    log = Executions(emu)
    settings = bridge_settings(emu, broker, command_timeout=15.0, queue_mode_timeout=20.0)
    with running_bridge(settings) as bridge:
        pub = Publisher(broker.port)
        try:
            emu.set_fault(latency=3.0)  # the Connector takes 3 s to take the command
            pub.command(f"{SETPOINT_TOPIC}/set", when, when)
            deadline = time.monotonic() + 10
            while bridge.mqtt.held_count() < 1:  # delivered, not yet acknowledged
                assert time.monotonic() < deadline, "the command did not reach the bridge"
                time.sleep(0.02)
            broker.stop()
            if when == "acked-while-away":
                deadline = time.monotonic() + 15
                while bridge.mqtt.stats["acks_deferred"] < 1:
                    assert time.monotonic() < deadline, "the ack was not deferred"
                    time.sleep(0.05)
            broker.start()
            pub.wait_replies({when.encode()}, 30)
            emu.clear_faults()
            # The copy was recognised and dropped (a counter), and a marker command sent
            # after it on the same path is answered: the bridge is past the copy.
            assert wait_until(lambda: bridge.mqtt.stats["duplicates_ignored"] >= 1, 15)
            pub.command(f"{SETPOINT_TOPIC}/set", "marker", f"marker-{when}")
            pub.wait_replies({f"marker-{when}".encode()}, 30)
            replies = pub.count(when.encode())
        finally:
            pub.close()
        stats = dict(bridge.mqtt.stats)
    done = log.bodies(ACT_EP, SETPOINT, "PUT")[when.encode()]
    report(capsys, f"resent command ({when})", sent=1, carried_out=done, replies=replies,
           duplicates_ignored=stats["duplicates_ignored"])  # fmt: skip
    assert done == 1 and replies == 1
    assert stats["duplicates_ignored"] >= 1


def test_the_link_says_why_it_cannot_connect_and_when_commands_reach_it(
    broker: MosquittoBroker, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.mqtt")
    broker.stop()
    bridge = Bridge(bridge_settings(emu, broker)).start()
    try:
        assert bridge.wait_ready(15), "the Connector side does not need the broker"
        deadline = time.monotonic() + 10
        while "cannot connect to the MQTT broker" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        assert not bridge.mqtt.subscribed_event.is_set()
        broker.start()
        assert bridge.mqtt.subscribed_event.wait(20), "SUBACK of the renewed subscriptions"
        pub = Publisher(broker.port)
        try:
            pub.command(f"{SETPOINT_TOPIC}/set", "listening", "listening")
            pub.wait_replies({b"listening"}, 10)  # routed at once: no command lost
        finally:
            pub.close()
    finally:
        bridge.stop()
    assert "Connection refused" in caplog.text
