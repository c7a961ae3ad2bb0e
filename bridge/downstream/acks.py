"""Acknowledging received commands when they are done (the MQTT link's ``manual_ack``).

A QoS 1/2 message is acknowledged to the broker when its handler calls
:meth:`~bridge.downstream.link.Inbound.ack`, not on arrival, so a bridge that dies before
that gets it again. An ack made while disconnected is sent at the next connect if the
session survived; a copy the broker resends (DUP) of a message the bridge still holds or
has just acknowledged is recognised and not handled twice.
"""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as mqtt

log = logging.getLogger("bridge.mqtt")


class Held:
    """A QoS 1/2 message delivered with manual acks and not yet acknowledged to the broker
    (``acked`` False), or acknowledged while disconnected (``deferred``), or whose deferred
    ack went out at the last connect (``flushed``). Kept by packet id, so that a resent
    copy of it (DUP) is recognised."""

    __slots__ = ("acked", "deferred", "flushed", "gen", "payload", "qos", "topic")

    def __init__(self, topic: str, payload: bytes, qos: int, gen: int) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.gen = gen
        self.acked = False
        self.deferred = False
        self.flushed = False


class InboundAcks:
    """The received messages held for their acknowledgement, by packet id."""

    def __init__(self, client: mqtt.Client, stats: dict[str, int]) -> None:
        self._client = client
        self.stats = stats
        self._lock = threading.Lock()
        self._held: dict[int, Held] = {}  # packet id -> message held for its ack
        self._gen = 0  # session generation: acks of an older session are void
        self._open = False  # acks go out now (else they wait for the next connect)
        self._last_delivered: tuple[mqtt.MQTTMessage, Held] | None = None

    def hold(self, msg: mqtt.MQTTMessage, payload: bytes) -> Held | None:
        """Record a message that waits for its ack; None for a resent copy (DUP) of one
        this process holds or has acknowledged since the last connect (that one answers
        for both). Runs on the network thread."""
        last = self._last_delivered
        if last is not None and last[0] is msg:
            return last[1]  # the same message routed to a second handler
        with self._lock:
            held = self._held.get(msg.mid)
            if (
                msg.dup
                and held is not None
                and held.gen == self._gen
                and held.topic == msg.topic
                and held.payload == payload
                and (not held.acked or held.flushed)
            ):
                self.stats["duplicates_ignored"] += 1
                log.info("resent copy of the message on %r ignored: it is handled", msg.topic)
                return None
            held = Held(msg.topic, payload, msg.qos, self._gen)
            self._held[msg.mid] = held
        self._last_delivered = (msg, held)
        return held

    def ack(self, mid: int, held: Held) -> None:
        """Acknowledge once; while disconnected, at the next connect (if the session lasts)."""
        with self._lock:
            if held.acked:
                return
            held.acked = True
            if held.gen != self._gen or self._held.get(mid) is not held:
                return  # the broker lost that session: the packet id means nothing now
            if not self._open:
                held.deferred = True
                self.stats["acks_deferred"] += 1
                return
            del self._held[mid]
        self._client.ack(mid, held.qos)

    def session_started(self, session_present: bool) -> list[tuple[int, int]]:
        """Connect: void the acks of a lost session, or collect the deferred ones
        (packet id, qos) to send now."""
        with self._lock:
            self._open = True
            if not session_present:
                self._gen += 1
                self._held.clear()
                return []
            due = []
            for mid, held in self._held.items():
                if held.deferred and not held.flushed:
                    held.flushed = True
                    due.append((mid, held.qos))
            return due

    def session_interrupted(self) -> None:
        """Disconnect: acks flushed at the last connect have reached the broker or will be
        redelivered; forget them (a DUP from now on may be a new message)."""
        with self._lock:
            self._open = False
            for mid in [m for m, h in self._held.items() if h.flushed]:
                del self._held[mid]
        self._last_delivered = None

    def held_count(self) -> int:
        """Messages delivered and not yet acknowledged to the broker."""
        with self._lock:
            return sum(1 for h in self._held.values() if not h.acked or h.deferred)
