"""The MQTT link's way out: publishing with back-pressure, and the outbox.

- **Back-pressure instead of unbounded memory.** A publisher waits while paho holds
  ``mqtt_max_queued`` messages (QoS 1/2: paho's queue; QoS 0: its socket write queue), so
  a burst from the Connector slows the channel down instead of growing the heap.
- **A buffer while the broker is away.** Messages published while disconnected go to a
  bounded outbox (``mqtt_buffer``; the oldest are dropped, counted and logged when it is
  full) and are sent, in order, by the outbox thread after the next connect: first paho
  resends the QoS 1/2 messages it held (:meth:`Ledger.await_resent`), then the outbox
  drains, and only then do publishers send directly again (``open``), so a retained value
  can never be overtaken by an older one.
- **Never blocking paho's network thread.** From that thread (a callback that publishes)
  a publish never waits: it goes to the outbox when paho is full, because the thread it
  would wait for is itself.

The link (:mod:`bridge.downstream.link`) tells the outbox when the connection comes and
goes (:meth:`Outbox.connection_up`, :meth:`Outbox.connection_down`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.downstream.ledger import Ledger
from bridge.downstream.paho_client import PlainClient

log = logging.getLogger("bridge.mqtt")

WAIT_SLICE = 0.05  # longest single wait for room; a missed wake-up costs at most this

# topic, payload, qos, retain, properties
Msg = tuple[str, bytes, int, bool, Properties | None]


class Outbox:
    """Publishing for one MQTT link: direct while open, else through the bounded outbox."""

    def __init__(
        self,
        client: PlainClient,
        ledger: Ledger,
        stats: dict[str, int],
        *,
        max_queued: int,
        buffer_cap: int,
    ) -> None:
        self._client = client
        self._ledger = ledger
        self.stats = stats
        self._max_queued = max_queued
        # Publishers that found paho full resume when it has drained to half: waking them
        # at every single write would cost a thread switch per message.
        self._low_water = max_queued // 2
        self.buffer_cap = buffer_cap
        # paho's gauges (see PlainClient): bound once, read at every publish.
        self._unsent = client.unsent_packets
        self._unacked = client.unacknowledged

        self.connected = False
        # Publishers send directly only when open: connected, paho's held messages resent
        # and acknowledged, and the outbox drained (the outbox thread opens it).
        self.open = False
        self.stopping = False
        self.net_ident: int | None = None  # paho's network thread, once it has connected
        self.dropped_at_disconnect = 0

        self._send_lock = threading.Lock()  # keeps the order of producers' messages
        self.room = threading.Condition()  # outbox state; on_publish wakes waiters
        self._waiters = 0
        self._queue: deque[Msg] = deque()
        self._thread = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)

    # ---- the link's side -----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def connection_up(self) -> None:
        with self.room:
            self.connected = True
            self.room.notify_all()

    def connection_down(self) -> None:
        with self.room:
            self.connected = False
            self.open = False
            self.room.notify_all()
        self.dropped_at_disconnect = self.stats["dropped_buffer_full"]

    def begin_stop(self) -> None:
        self.stopping = True
        with self.room:
            self.room.notify_all()

    def finish_stop(self) -> int:
        """Join the outbox thread; drop what is left (counted) and say how many."""
        self._thread.join(timeout=1.0)
        with self.room:
            left = len(self._queue)
            self._queue.clear()
        self.stats["dropped_errors"] += left
        self.connected = False
        return left

    def size(self) -> int:
        return len(self._queue)

    # ---- publishing ----------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish; waits while paho is full (back-pressure) unless called from a paho
        callback; buffers while disconnected. Never raises for connection problems."""
        msg: Msg = (
            topic,
            payload.encode("utf-8") if isinstance(payload, str) else payload,
            qos,
            retain,
            properties,
        )
        if self._queue or not self.open:
            self.enqueue(msg)
        elif threading.get_ident() == self.net_ident:
            self._send_nowait(msg)
        else:
            with self._send_lock:
                self._send(msg, front=False)

    def _send(self, msg: Msg, front: bool) -> None:
        """Hand one message to paho, waiting for room; requeue it if the link is down."""
        topic, payload, qos, retain, props = msg
        client = self._client
        while True:
            if self.stopping and not self.connected:
                self._count_drop("dropped_errors", topic)
                return
            if not self.connected:
                self.enqueue(msg, front=front)
                return
            if qos == 0 and self._unsent() >= self._max_queued:
                self.wait_room()
                continue
            try:
                rc = client.publish(topic, payload, qos, retain, props).rc
            except ValueError as exc:  # bad topic or payload: a bug, not the network
                log.error("cannot publish on %r: %s", topic, exc)
                self._count_drop("dropped_errors", topic)
                return
            if rc == mqtt.MQTT_ERR_SUCCESS:
                self.stats["published"] += 1
                return
            if rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                self.wait_room()
                continue
            if rc == mqtt.MQTT_ERR_NO_CONN:
                if qos > 0:
                    self.stats["published"] += 1  # paho keeps it and sends it on reconnect
                else:
                    self.enqueue(msg, front=front)
                return
            log.error("publish on %r failed: %s", topic, mqtt.error_string(rc))
            self._count_drop("dropped_errors", topic)
            return

    def _send_nowait(self, msg: Msg) -> None:
        topic, payload, qos, retain, props = msg
        try:
            rc = self._client.publish(topic, payload, qos, retain, props).rc
        except ValueError as exc:
            log.error("cannot publish on %r: %s", topic, exc)
            self._count_drop("dropped_errors", topic)
            return
        if rc == mqtt.MQTT_ERR_SUCCESS or (rc == mqtt.MQTT_ERR_NO_CONN and qos > 0):
            self.stats["published_from_callbacks"] += 1
        else:
            self.enqueue(msg)

    # ---- back-pressure -------------------------------------------------------------------

    def wait_room(self) -> None:
        """Wait until paho has drained to half (or at most WAIT_SLICE)."""
        with self.room:
            self._waiters += 1
            if self._waiters == 1:
                # on_publish is installed only while a publisher waits: with a callback
                # set, paho builds two objects for every QoS 0 packet it writes, which
                # halves the throughput of the hot path.
                self._client.on_publish = self._handle_publish
            self.room.wait(WAIT_SLICE)
            self._waiters -= 1
            if self._waiters == 0:
                self._client.on_publish = None

    def _handle_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # Runs with paho's message lock held: only wake waiters, never publish here.
        if (
            self._waiters
            and self._unsent() <= self._low_water
            and self._unacked() <= self._low_water + 1  # this one is not popped yet
        ):
            with self.room:
                self.room.notify_all()

    # ---- the outbox ----------------------------------------------------------------------

    def enqueue(self, msg: Msg, front: bool = False) -> None:
        """Put a message in the outbox (sent in order by the outbox thread)."""
        on_net_thread = threading.get_ident() == self.net_ident
        with self.room:
            # While connected the outbox is only a passage (it holds one at least).
            while len(self._queue) >= max(self.buffer_cap, int(self.connected)):
                if self.connected and not on_net_thread and not self.stopping:
                    # The outbox thread is draining (it notifies as it pops): wait for it.
                    self.room.wait(WAIT_SLICE)
                    continue
                if self.connected and on_net_thread:
                    break  # never block the network thread; the cap is soft here
                if not self._queue or front:
                    # Full: a message put back at the head is the oldest one itself.
                    self._count_drop("dropped_buffer_full", msg[0])
                    return
                dropped = self._queue.popleft()
                self._count_drop("dropped_buffer_full", dropped[0])
            if front:
                self._queue.appendleft(msg)
            else:
                self._queue.append(msg)
            self.stats["buffered"] += 1
            self.room.notify_all()

    def _count_drop(self, what: str, topic: str) -> None:
        self.stats[what] += 1
        n = self.stats[what]
        if n == 1 or n % 1000 == 0:
            log.warning("MQTT message on %r dropped (%s, %d so far)", topic, what, n)

    def _run(self) -> None:
        """After each connect: wait for paho's resends, drain the outbox in order, then let
        publishers send directly (``open``); later, drain whatever lands in the outbox."""
        while True:
            with self.room:
                while not self.stopping and not (self.connected and (self._queue or not self.open)):
                    self.room.wait()
                if self.stopping:
                    return
            with self._send_lock:
                if not self.open:
                    self._ledger.await_resent(self._may_wait, self.room)
                while True:
                    with self.room:
                        if not self.connected or self.stopping:
                            break
                        if not self._queue:
                            self.open = True
                            break
                        msg = self._queue.popleft()
                        self.room.notify_all()
                    self._send(msg, front=True)

    def _may_wait(self) -> bool:
        return self.connected and not self.stopping
