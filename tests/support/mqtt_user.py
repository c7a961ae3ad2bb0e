"""A paho client acting as a user of the bridge: subscribes, publishes, waits for messages.

Every wait is on a condition with a generous time-out (never sleep-then-assert).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT = 10.0


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    correlation_data: bytes | None = None
    content_type: str | None = None

    @property
    def text(self) -> str:
        return self.payload.decode()

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttUser:
    """One MQTT client; ``protocol`` is ``5`` or ``3.1.1``.

    ``persistent`` (MQTT 3.1.1 only): a session that outlives the connection
    (``clean_session=False``; give a ``client_id`` to come back to it), reconnecting every
    second, so a broker restart costs it nothing of what it subscribed to.
    """

    def __init__(
        self,
        port: int,
        protocol: str = "5",
        client_id: str | None = None,
        persistent: bool = False,
    ) -> None:
        self.protocol = protocol
        if persistent and protocol == "5":
            raise ValueError("persistent sessions here are MQTT 3.1.1 ones")
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"user-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
            clean_session=False if persistent else None,
        )
        if persistent:
            self.client.reconnect_delay_set(1, 1)
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._mids = itertools.count()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = msg.properties
        rec = Received(
            msg.topic,
            bytes(msg.payload),
            bool(msg.retain),
            msg.qos,
            getattr(props, "CorrelationData", None) if props else None,
            getattr(props, "ContentType", None) if props else None,
        )
        with self._cond:
            self.messages.append(rec)
            self._cond.notify_all()

    def _on_subscribe(self, *args: Any) -> None:
        self._subscribed.set()

    def subscribe(self, *filters: str, qos: int = 1) -> MqttUser:
        self._subscribed.clear()
        self.client.subscribe([(f, qos) for f in filters])
        assert self._subscribed.wait(WAIT), "SUBACK not received"
        return self

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        message_expiry: int | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """Publish and wait (bounded) until it is sent (QoS 0) or acknowledged.
        ``message_expiry``: the MQTT 5 Message Expiry Interval, seconds."""
        props = None
        if response_topic or correlation_data or message_expiry is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation_data:
                props.CorrelationData = correlation_data
            if message_expiry is not None:
                props.MessageExpiryInterval = message_expiry
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(WAIT)
        return info

    def wait_for(
        self,
        predicate: Callable[[Received], bool],
        timeout: float = WAIT,
        count: int = 1,
        since: int = 0,
    ) -> list[Received]:
        """The first ``count`` messages (received so far or later) matching ``predicate``,
        counting from message ``since`` (a :meth:`mark`) on."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages[since:] if predicate(m)]
                if len(found) >= count:
                    return found[:count]
                left = end - time.monotonic()
                if left <= 0:
                    topics = sorted({m.topic for m in self.messages})[:40]
                    raise AssertionError(
                        f"waited {timeout}s for {count} message(s), got {len(found)}; "
                        f"topics seen: {topics}"
                    )
                self._cond.wait(left)

    def wait_nothing_missing(
        self,
        missing: Callable[[], str | None],
        between: Callable[[], None] = lambda: None,
        timeout: float = WAIT,
    ) -> None:
        """Until ``missing()`` says nothing is missing (returns None), looking again at
        every new message and at least every second; ``between`` runs before each wait.
        On time-out, AssertionError with what ``missing()`` said last."""
        end = time.monotonic() + timeout
        while True:
            what = missing()
            if what is None:
                return
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(what)
            between()
            with self._cond:
                self._cond.wait(min(left, 1.0))  # woken by the next message

    def wait_topic(
        self, topic: str, timeout: float = WAIT, payload: bytes | None = None, since: int = 0
    ) -> Received:
        return self.wait_for(
            lambda m: m.topic == topic and (payload is None or m.payload == payload),
            timeout,
            since=since,
        )[0]

    def mark(self) -> int:
        """A position in :attr:`messages`: ``wait_for(..., since=mark)`` skips older ones."""
        with self._cond:
            return len(self.messages)

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
