"""Today's WebSocket channel under faults, with the long poll's guarantees: a socket cut
mid-stream (1006) or a service restart (1012) is reconnected and nothing is lost; a
bridge killed and started again gets what the service queued meanwhile; entries the
service sends twice are published once; another consumer taking the channel (1001) and a
revoked key (1008) show as their own connector states, and the bridge does not fight for
the channel. Figures are printed as ``[reliability] ...`` lines."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bridge.simulator import Emulator
from tests.reliability_support import (
    STREAM_EP,
    STREAM_PATH,
    STREAM_TOPIC,
    VALUE_WIDTH,
    PacedStream,
    Subscriber,
    bridge_process,
    counts,
    emitted_range,
    report,
    stream_emulator,
    value,
)
from tests.support.bridge_harness import bridge_settings, running_bridge
from tests.support.broker import MosquittoBroker
from tests.support.clients import wait_until
from tests.support.ws_client import WsClient

HEALTH = "connector/$bridge/health"


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with stream_emulator(api="current") as e:
        yield e


def health_states(sub: Subscriber) -> list[str | None]:
    return [json.loads(p)["connector"]["state"] for p in sub.payloads(HEALTH) if p]


@pytest.mark.parametrize("code", [1006, 1012])
def test_a_cut_socket_or_a_service_restart_loses_no_notification(
    broker: MosquittoBroker, emu: Emulator, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    n, cuts = 2000, 3
    with running_bridge(bridge_settings(emu, broker)) as bridge:
        client = bridge.connector_side.client
        sub = Subscriber(broker.port, (STREAM_TOPIC,))
        try:
            emu.reset_counters()
            started = time.monotonic()
            stream = PacedStream(emu, n, chunk=20, interval=0.02).start()
            for k in range(cuts):
                emu.set_fault(ws_close={"code": code, "after": 10})
                assert wait_until(lambda k=k: emu.counters()[f"ws_closes_{code}"] > k, 20)
                assert wait_until(lambda k=k: client.websocketStats()["connects"] >= k + 2, 20)
            sub.wait_values(STREAM_TOPIC, stream.values, timeout=60)
            took = time.monotonic() - started
            received = sub.payloads(STREAM_TOPIC)
        finally:
            sub.close()
        stats = client.websocketStats()
    figures = counts(received, stream.values)
    report(
        capsys,
        f"WebSocket closed {cuts} times with {code} mid-stream",
        **figures,
        reconnects=stats["reconnects"],
        redelivered_by_service=emu.counters()["redelivered"],
        all_arrived_s=took,
    )
    assert figures["lost"] == 0
    closes = stats["closes"]
    assert closes.get(code, 0) + closes.get(str(code), 0) >= cuts
    assert stats["state"] == "connected"


def test_a_bridge_killed_gets_what_the_service_queued_meanwhile(
    broker: MosquittoBroker, emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sub = Subscriber(broker.port, (STREAM_TOPIC, "connector/$bridge/state"))
    try:
        with bridge_process(emu, broker, tmp_path) as bridge:
            bridge.start()
            sub.wait(lambda: b"online" in sub.payloads("connector/$bridge/state"), 30, "online")
            assert wait_until(lambda: emu.counters()["ws_connects"] >= 1, 15)
            bridge.signal(signal.SIGKILL)
            bridge.wait()
            first = emitted_range(emu)
            n = 500
            emu.burst(n, ep=STREAM_EP, path=STREAM_PATH, size=VALUE_WIDTH)
            wanted = {value(first + k) for k in range(n)}
            queued = emu.counters()["pending"]
            bridge.start()
            sub.wait_values(STREAM_TOPIC, wanted, timeout=60)
        received = sub.payloads(STREAM_TOPIC)
    finally:
        sub.close()
    figures = counts(received, wanted)
    report(capsys, "bridge SIGKILLed, 500 notifications queued at the service", **figures,
           queued_at_service=queued)  # fmt: skip
    assert queued >= 1 and figures["lost"] == 0


def test_entries_the_service_sends_twice_are_published_once(
    broker: MosquittoBroker, emu: Emulator
) -> None:
    with running_bridge(bridge_settings(emu, broker)) as bridge:
        sub = Subscriber(broker.port, (STREAM_TOPIC,))
        try:
            emu.reset_counters()
            emu.set_fault(duplicate_messages=5)
            stream = PacedStream(emu, 200, chunk=10, interval=0.02).start()
            sub.wait_values(STREAM_TOPIC, stream.values, timeout=30)
            assert stream.done.wait(10)
            # A marker after the stream: once it is published, every duplicate was handled.
            marker = value(emitted_range(emu))
            emu.burst(1, ep=STREAM_EP, path=STREAM_PATH, size=VALUE_WIDTH)
            sub.wait_values(STREAM_TOPIC, {marker}, timeout=10)
            received = [p for p in sub.payloads(STREAM_TOPIC) if p != marker]
        finally:
            sub.close()
        dropped = bridge.ctx.port.duplicates()
    figures = counts(received, stream.values)
    assert emu.counters()["ws_duplicates"] == 5
    assert figures["duplicates"] == 0 and figures["lost"] == 0
    assert dropped >= 5  # every entry of the five frames sent twice


def _health_sub(broker: MosquittoBroker) -> Subscriber:
    return Subscriber(broker.port, (HEALTH,))


def test_another_consumer_taking_the_channel_shows_and_is_not_fought(
    broker: MosquittoBroker, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    settings = bridge_settings(emu, broker, health_interval=30.0)
    with running_bridge(settings) as bridge:
        client = bridge.connector_side.client
        sub = _health_sub(broker)
        other = WsClient(emu.url, emu.token)
        try:
            other.connect()
            sub.wait(lambda: "taken_over" in health_states(sub), 15, "taken_over on health")
            assert client.websocketState() == "taken_over"
            assert wait_until(lambda: not client.websocketStats()["running"], 5)
            connects = emu.counters()["ws_connects"]
            # The other consumer keeps the channel: it gets what the service sends now.
            emu.burst(3, ep=STREAM_EP, path=STREAM_PATH, size=VALUE_WIDTH)
            assert wait_until(lambda: len(other.entries("notifications")) >= 3, 10)
            assert emu.counters()["ws_connects"] == connects  # the bridge did not come back
        finally:
            other.close()
            sub.close()
    assert "another consumer took the notification channel" in caplog.text


def test_a_revoked_key_shows_as_revoked(broker: MosquittoBroker, emu: Emulator) -> None:
    settings = bridge_settings(emu, broker, health_interval=30.0)
    with running_bridge(settings) as bridge:
        client = bridge.connector_side.client
        sub = _health_sub(broker)
        try:
            emu.set_fault(revoke_key=True)
            sub.wait(lambda: "revoked" in health_states(sub), 15, "revoked on health")
            assert client.websocketState() == "revoked"
            assert wait_until(lambda: not client.websocketStats()["running"], 5)
        finally:
            emu.clear_faults()
            sub.close()


def _delete_channel(emu: Emulator) -> int:
    r = requests.delete(
        emu.url + "/v2/notification/websocket",
        headers={"Authorization": f"Bearer {emu.token}"},
        timeout=5,
    )
    return r.status_code


def test_a_channel_deleted_under_the_bridge_shows_as_deleted(
    broker: MosquittoBroker, emu: Emulator
) -> None:
    settings = bridge_settings(emu, broker, health_interval=30.0)
    with running_bridge(settings) as bridge:
        client = bridge.connector_side.client
        sub = _health_sub(broker)
        try:
            assert _delete_channel(emu) == 204  # the service closes the socket with 1000
            sub.wait(lambda: "deleted" in health_states(sub), 15, "deleted on health")
            assert client.websocketState() == "deleted"
            assert wait_until(lambda: not client.websocketStats()["running"], 5)
        finally:
            sub.close()


def test_a_channel_gone_at_reconnect_is_registered_again(
    broker: MosquittoBroker, emu: Emulator
) -> None:
    """1011 (no such channel) at a reconnect: the bridge registers the channel again and
    notifications flow once more."""
    with running_bridge(bridge_settings(emu, broker)) as bridge:
        client = bridge.connector_side.client
        sub = Subscriber(broker.port, (STREAM_TOPIC,))
        try:
            emu.reset_counters()
            emu.set_fault(refuse_handshake={"status": 503, "count": 1000})
            emu.set_fault(ws_close={"code": 1006})
            assert wait_until(lambda: emu.counters()["ws_handshakes_refused"] >= 1, 15)
            assert _delete_channel(emu) == 204  # no socket now: the channel just goes
            emu.clear_faults()
            assert wait_until(lambda: client.websocketStats()["registrations"] >= 2, 20)
            assert wait_until(lambda: client.websocketState() == "connected", 10)
            marker = value(emitted_range(emu))
            emu.burst(1, ep=STREAM_EP, path=STREAM_PATH, size=VALUE_WIDTH)
            sub.wait_values(STREAM_TOPIC, {marker}, timeout=10)
        finally:
            sub.close()
        closes = client.websocketStats()["closes"]
    assert emu.counters()["ws_closes_1011"] >= 1
    assert closes.get(1011, 0) + closes.get("1011", 0) >= 1
