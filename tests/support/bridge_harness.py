"""Running a real bridge in tests: settings for an emulator and a broker, start and stop.

The bridge runs in-process (a :class:`bridge.service.controller.Bridge`) against a real Mosquitto
and the emulator over real HTTP; users are paho clients (:mod:`tests.support.mqtt_user`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

from bridge.service.controller import Bridge
from bridge.service.settings import Settings, load_settings
from bridge.simulator import Emulator
from tests.support.broker import MosquittoBroker
from tests.support.mqtt_user import MqttUser, Received

READY = 15.0
_ids = itertools.count(1)


def bridge_settings(emu: Emulator, broker: MosquittoBroker, **overrides: Any) -> Settings:
    """Settings for a bridge between ``emu`` and ``broker`` (no .env, no flags)."""
    values: dict[str, Any] = {
        "connector_url": emu.url,
        "connector_token": emu.token,
        "mqtt_host": "127.0.0.1",
        "mqtt_port": broker.port,
        "mqtt_client_id": f"bridge-under-test-{os.getpid()}-{next(_ids)}",
        "command_timeout": 5.0,
        "queue_mode_timeout": 10.0,
    }
    values.update(overrides)
    return load_settings(None, env_file=None, overrides=values)


@contextlib.contextmanager
def running_bridge(settings: Settings) -> Iterator[Bridge]:
    bridge = Bridge(settings).start()
    try:
        assert bridge.wait_ready(READY), "the bridge did not become ready"
        assert bridge.mqtt.wait_connected(READY)
        # Commands reach the bridge only once the broker acknowledged its subscriptions, and
        # a late subscriber sees start-up values as retained only once they were published.
        assert bridge.mqtt.subscribed_event.wait(READY), "the broker did not acknowledge"
        assert bridge.mqtt.drain(READY), "the bridge did not publish its start-up messages"
        yield bridge
    finally:
        bridge.stop()


def wait_initial_reads(bridge: Bridge, count: int, timeout: float = READY) -> None:
    """Wait until ``count`` initial reads ended (ok, failed or skipped) and their values
    reached the broker.

    ``running_bridge`` returns once the endpoints are described; a read can still be under
    way then (the Connector answers it later, or refuses it with 412 until the channel is
    up). A test that counts every message on a value topic waits for it first, or the
    start-up value may arrive among the ones it counts."""
    names = ("initial_reads_ok", "initial_reads_failed", "initial_reads_skipped")
    end = time.monotonic() + timeout
    while sum(bridge.ctx.counters.get(n) for n in names) < count:
        assert time.monotonic() < end, f"initial reads: {bridge.ctx.counters.snapshot()}"
        time.sleep(0.02)
    assert bridge.mqtt.drain(max(0.0, end - time.monotonic())), "start-up values not sent"


@contextlib.contextmanager
def user(broker: MosquittoBroker | int, protocol: str = "5", *filters: str) -> Iterator[MqttUser]:
    """A user client of the broker (or of the broker on that port), subscribed to filters."""
    u = MqttUser(broker if isinstance(broker, int) else broker.port, protocol)
    try:
        if filters:
            u.subscribe(*filters)
        yield u
    finally:
        u.close()


def command(
    u: MqttUser,
    topic: str,
    payload: bytes | str = b"",
    *,
    transaction: Any = None,
    timeout: float = 10.0,
    **publish_kw: Any,
) -> dict[str, Any]:
    """Send a command and return its reply (JSON). With ``transaction`` the payload goes
    in an envelope and the reply is matched on it; the reply topic must be subscribed."""
    reply_topic = topic + "/reply"
    if transaction is not None:
        body: dict[str, Any] = {"transaction": transaction}
        if payload:
            body["value"] = payload.decode() if isinstance(payload, bytes) else payload
        payload = json.dumps(body)
    before = len(u.on(reply_topic))
    u.publish(topic, payload, **publish_kw)
    if transaction is not None:
        found = u.wait_for(
            lambda m: m.topic == reply_topic and m.json().get("transaction") == transaction,
            timeout,
        )
    else:
        found = u.wait_for(lambda m: m.topic == reply_topic, timeout, count=before + 1)[before:]
    reply: dict[str, Any] = found[0].json()
    return reply


def request(
    u: MqttUser, action: str, body: dict[str, Any] | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """A bridge request with a fresh transaction; the response topic must be subscribed."""
    transaction = f"t-{next(_ids)}"
    doc = {**(body or {}), "transaction": transaction}
    u.publish(f"connector/$bridge/request/{action}", json.dumps(doc))
    found = u.wait_for(
        lambda m: (
            m.topic == f"connector/$bridge/response/{action}"
            and m.json().get("transaction") == transaction
        ),
        timeout,
    )
    response: dict[str, Any] = found[0].json()
    return response


def retained(broker: MosquittoBroker, topic_filter: str, count: int) -> list[Received]:
    """What a new subscriber gets at once for ``topic_filter`` (retained messages)."""
    with user(broker, "5", topic_filter) as late:
        found = late.wait_for(lambda m: m.retain, count=count)
    return found


def all_retained(broker: MosquittoBroker, topic_filter: str) -> dict[str, bytes]:
    """Every retained message under ``topic_filter`` (a filter ending in ``#``): Mosquitto
    sends them when it handles the SUBSCRIBE, so a message this client publishes
    afterwards (the barrier) arrives after them all."""
    barrier = topic_filter.rstrip("#") + f"zz-barrier/{uuid.uuid4().hex}"
    with user(broker, "5", topic_filter) as late:
        late.publish(barrier, b"x")
        late.wait_topic(barrier, READY * 2)
        return {m.topic: m.payload for m in late.messages if m.retain}
