"""The MQTT side: one thin layer over paho-mqtt 2.x.

What it adds to paho, and why:

- **Availability.** The retained will ``<prefix>/$bridge/state`` = ``offline``; ``online``
  published (retained) on every connect once the broker has acknowledged the bridge's
  subscriptions (so a client that sends a command on seeing ``online`` is heard, even on
  a brand-new session); ``offline`` published on a clean stop.
- **Reconnects.** paho's own loop thread reconnects with back-off (1 s doubling to
  30 s); every subscription made through :meth:`MqttLink.subscribe` is renewed on every
  connect, so extensions subscribe once and forget about reconnects.
- **Back-pressure instead of unbounded memory.** A publisher waits while paho holds
  ``mqtt_max_queued`` messages (QoS 1/2: paho's queue; QoS 0: its socket write queue), so
  a burst from the Connector slows the channel down instead of growing the heap.
- **The broker's Receive Maximum** (MQTT 5 CONNACK) caps the QoS 1/2 messages in flight,
  below ``mqtt_max_inflight`` if lower, also for what paho resends after a reconnect
  (:meth:`bridge.downstream.paho_client.Client.limit_in_flight`).
- **A buffer while the broker is away.** Messages published while disconnected go to a
  bounded outbox (``mqtt_buffer``; the oldest are dropped, counted and logged when it is
  full) and are sent, in order, by the outbox thread after the next connect: first paho
  resends the QoS 1/2 messages it held (and the broker acknowledges them), then the
  outbox drains, and only then do publishers send directly again, so a retained value
  can never be overtaken by an older one.
- **A persistent session** (``mqtt_session_expiry`` > 0: MQTT 5 Clean Start off with a
  Session Expiry Interval, 3.1.1 Clean Session off): the broker keeps the bridge's
  subscriptions and queues the commands sent while it is away.
- **Acknowledging commands when they are done** (``manual_ack``): a QoS 1 message is
  acknowledged when its handler calls :meth:`Inbound.ack`, not on arrival, so a bridge
  that dies before that gets it again. An ack made while disconnected is sent at the
  next connect if the session survived; a copy the broker resends (DUP) of a message the
  bridge still holds or has just acknowledged is recognised and not handled twice.
- **Never blocking paho's network thread.** Callbacks (``on_message``, ``on_connect``)
  may publish; from that thread a publish never waits (it goes to the outbox when paho
  is full), because the thread it would wait for is itself.
- **MQTT 5 and 3.1.1** behind one API: on MQTT 5 subscriptions use No Local (the bridge
  never gets its own publications back) and Retain Handling 2 (commands retained on the
  broker are not replayed at each connect); on 3.1.1 a retained command is ignored.

Threads: paho's network thread (``loop_start``) and one outbox thread. Publishing is
thread-safe; handlers run on the network thread and must not block.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.downstream import paho_client
from bridge.service.settings import Settings, env_name

log = logging.getLogger("bridge.mqtt")

RECONNECT_MIN = 1
RECONNECT_MAX = 30
_WAIT_SLICE = 0.05  # longest single wait for room; a missed wake-up costs at most this
RESEND_WAIT = 10.0  # longest wait after a connect for paho's held messages to be acknowledged

# CONNACK reasons that retrying will not fix.
_AUTH_FAILURES = frozenset((134, 135, 4, 5))  # v5 bad user/pw, not authorized; v3 4, 5


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message from the broker, reduced to what handlers need."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None
    mid: int = 0
    dup: bool = False  # the broker resent it (DUP flag): it may have been handled before
    _ack: Callable[[], object] | None = field(default=None, repr=False)

    def ack(self) -> None:
        """Acknowledge to the broker (only with manual acks and QoS >= 1; once however
        often it is called)."""
        if self._ack is not None:
            self._ack()


InboundHandler = Callable[[Inbound], None]


class _Held:
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


_Msg = tuple[str, bytes, int, bool, Properties | None]


def apply_credentials_and_tls(client: mqtt.Client, settings: Settings) -> None:
    """Give a paho client the broker user, password and TLS set-up from the settings.

    Every MQTT client of the project that speaks for the operator (the bridge, ``status``)
    goes through here, so they all verify the broker the same way.
    """
    if settings.mqtt_username:
        password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
        client.username_pw_set(settings.mqtt_username, password)
    if settings.tls_enabled:
        client.tls_set(
            ca_certs=str(settings.mqtt_tls_ca) if settings.mqtt_tls_ca else None,
            certfile=str(settings.mqtt_tls_cert) if settings.mqtt_tls_cert else None,
            keyfile=str(settings.mqtt_tls_key) if settings.mqtt_tls_key else None,
            cert_reqs=ssl.CERT_REQUIRED if settings.mqtt_tls_verify else ssl.CERT_NONE,
        )
        if not settings.mqtt_tls_verify:
            client.tls_insecure_set(True)


class MqttLink:
    """The bridge's one MQTT connection."""

    def __init__(
        self,
        settings: Settings,
        *,
        state_topic: str,
        on_connect: Callable[[bool, bool], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
        manual_ack: bool = False,
    ) -> None:
        self.settings = settings
        self.state_topic = state_topic
        self.is_v5 = settings.mqtt_protocol == "5"
        self.persistent = settings.mqtt_session_expiry > 0
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self._manual_ack = manual_ack
        self._max_queued = settings.mqtt_max_queued
        # Publishers that found paho full resume when it has drained to half: waking them
        # at every single write would cost a thread switch per message.
        self._low_water = settings.mqtt_max_queued // 2
        self._buffer_cap = settings.mqtt_buffer

        client = paho_client.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.mqtt_client_id,
            protocol=mqtt.MQTTv5 if self.is_v5 else mqtt.MQTTv311,
            clean_session=None if self.is_v5 else not self.persistent,
            manual_ack=manual_ack,
        )
        apply_credentials_and_tls(client, settings)
        client.will_set(state_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN, RECONNECT_MAX)
        client.max_inflight_messages_set(settings.mqtt_max_inflight)
        client.max_queued_messages_set(settings.mqtt_max_queued)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_connect_fail = self._handle_connect_fail
        client.on_subscribe = self._handle_subscribe
        # on_publish is installed only while a publisher waits for room (_wait_room): with a
        # callback set, paho builds two objects for every QoS 0 packet it writes, which
        # halves the throughput of the hot path.
        client.on_message = self._handle_unrouted
        if log.isEnabledFor(logging.DEBUG):
            client.enable_logger(logging.getLogger("bridge.mqtt.paho"))
        self._client = client

        # QoS 1/2 messages kept unacknowledged at most: the setting, or the broker's
        # Receive Maximum when lower (set at each connect).
        self.inflight_limit = settings.mqtt_max_inflight
        self._subs: dict[str, int] = {}  # filter -> qos
        self._subs_lock = threading.Lock()
        self._connected = False
        # Publishers send directly only when open: connected, paho's held messages resent
        # and acknowledged, and the outbox drained (the outbox thread opens it).
        self._open = False
        self._stopping = False
        self._started = False
        self._ever_connected = False
        self._net_ident: int | None = None
        self.connected_event = threading.Event()
        # Set once the broker acknowledged the subscriptions renewed at the last connect:
        # only from then on does it route commands to the bridge.
        self.subscribed_event = threading.Event()
        self._connect_sub_mid: int | None = None
        self._connect_failures = 0
        self.auth_failure: str | None = None
        self.auth_failed_event = threading.Event()

        self._send_lock = threading.Lock()  # keeps the order of producers' messages
        self._room = threading.Condition()  # outbox state; on_publish wakes waiters
        self._waiters = 0
        self._outbox: deque[_Msg] = deque()
        self._dropped_at_disconnect = 0
        self._acks_lock = threading.Lock()
        self._held: dict[int, _Held] = {}  # packet id -> message held for its ack
        self._gen = 0  # session generation: acks of an older session are void
        self._acks_open = False  # acks go out now (else they wait for the next connect)
        self._last_delivered: tuple[mqtt.MQTTMessage, _Held] | None = None
        self._outbox_thread = threading.Thread(
            target=self._run_outbox, name="mqtt-outbox", daemon=True
        )
        self.stats: dict[str, int] = {
            "published": 0,
            "published_from_callbacks": 0,
            "buffered": 0,
            "dropped_buffer_full": 0,
            "dropped_errors": 0,
            "connects": 0,
            "disconnects": 0,
            "received": 0,
            "acks_deferred": 0,
            "duplicates_ignored": 0,
            "sessions_resumed": 0,
            "sessions_new": 0,
        }

    # ---- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retrying with back-off until it works)."""
        if self._started:
            return
        self._started = True
        self._outbox_thread.start()
        s = self.settings
        log.info(
            "connecting to MQTT broker %s:%d (MQTT %s%s) as %r",
            s.mqtt_host,
            s.mqtt_port,
            s.mqtt_protocol,
            ", TLS" if s.tls_enabled else "",
            s.mqtt_client_id,
        )
        if s.tls_enabled and not s.mqtt_tls_verify:
            log.warning(
                "the broker's certificate is NOT verified (%s=false): anyone on the path can "
                "read and change all traffic, the MQTT password included",
                env_name("mqtt_tls_verify"),
            )
        if self.is_v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if self.persistent:
                props.SessionExpiryInterval = s.mqtt_session_expiry
            self._client.connect_async(
                s.mqtt_host,
                s.mqtt_port,
                keepalive=s.mqtt_keepalive,
                clean_start=not self.persistent,
                properties=props,
            )
        else:
            self._client.connect_async(s.mqtt_host, s.mqtt_port, keepalive=s.mqtt_keepalive)
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected_event.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected

    def stop(self, timeout: float = 5.0) -> None:
        """Publish ``offline``, send what is queued (bounded by ``timeout``), disconnect."""
        if not self._started or self._stopping:
            return
        if self._connected:
            self.drain(timeout)
        self._stopping = True
        with self._room:
            self._room.notify_all()
        if self._connected:
            info = self._client.publish(self.state_topic, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(min(timeout, 2.0))
        self._client.disconnect()
        self._client.loop_stop()
        self._outbox_thread.join(timeout=1.0)
        with self._room:
            left = len(self._outbox)
            self._outbox.clear()
        if left:
            self.stats["dropped_errors"] += left
            log.warning("%d buffered MQTT message(s) not sent: the bridge stopped first", left)
        self._connected = False
        self.connected_event.clear()
        log.info("MQTT link stopped")

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty and paho has sent everything (QoS 1: acked)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self._outbox and not self._client._out_messages and not self._client._out_packet:
                return True
            self._wait_room()
        return False

    # ---- subscriptions -----------------------------------------------------------------

    def subscribe(
        self, topic_filter: str, handler: InboundHandler, qos: int = 1, *, manual_ack: bool = False
    ) -> None:
        """Route messages matching ``topic_filter`` to ``handler``; renewed on reconnects.

        With ``manual_ack`` (and a link made with ``manual_ack=True``) the handler must
        call :meth:`Inbound.ack` once it is done with a QoS 1/2 message (from any thread);
        otherwise the message is acknowledged as soon as the handler returns.
        """

        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            self._deliver(msg, handler, manual_ack)

        self._client.message_callback_add(topic_filter, on_message)
        with self._subs_lock:
            self._subs[topic_filter] = qos
        if self._connected:
            self._client.subscribe([self._sub_entry(topic_filter, qos)])

    def _sub_entry(self, topic_filter: str, qos: int) -> tuple[str, Any]:
        if self.is_v5:
            # No Local: never our own publications; Retain Handling 2: no retained replay.
            return topic_filter, SubscribeOptions(qos=qos, noLocal=True, retainHandling=2)
        return topic_filter, qos

    def _deliver(self, msg: mqtt.MQTTMessage, handler: InboundHandler, manual: bool) -> None:
        self.stats["received"] += 1
        props = msg.properties
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        payload = bytes(msg.payload)
        ack: Callable[[], object] | None = None
        held = None
        if self._manual_ack and msg.qos > 0:
            held = self._hold(msg, payload)
            if held is None:
                return  # a resent copy of a message held or just acknowledged
            if manual:
                ack = functools.partial(self._ack, msg.mid, held)
        inbound = Inbound(
            topic=msg.topic,
            payload=payload,
            qos=msg.qos,
            retain=bool(msg.retain),
            response_topic=response_topic or None,
            correlation_data=bytes(correlation) if correlation is not None else None,
            mid=msg.mid,
            dup=bool(msg.dup),
            _ack=ack,
        )
        if ack is not None or held is None:
            handler(inbound)
            return
        try:
            handler(inbound)
        finally:
            self._ack(msg.mid, held)

    # ---- manual acknowledgements -------------------------------------------------------

    def _hold(self, msg: mqtt.MQTTMessage, payload: bytes) -> _Held | None:
        """Record a message that waits for its ack; None for a resent copy (DUP) of one
        this process holds or has acknowledged since the last connect (that one answers
        for both). Runs on the network thread."""
        last = self._last_delivered
        if last is not None and last[0] is msg:
            return last[1]  # the same message routed to a second handler
        with self._acks_lock:
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
            held = _Held(msg.topic, payload, msg.qos, self._gen)
            self._held[msg.mid] = held
        self._last_delivered = (msg, held)
        return held

    def _ack(self, mid: int, held: _Held) -> None:
        """Acknowledge once; while disconnected, at the next connect (if the session lasts)."""
        with self._acks_lock:
            if held.acked:
                return
            held.acked = True
            if held.gen != self._gen or self._held.get(mid) is not held:
                return  # the broker lost that session: the packet id means nothing now
            if not self._acks_open:
                held.deferred = True
                self.stats["acks_deferred"] += 1
                return
            del self._held[mid]
        self._client.ack(mid, held.qos)

    def _session_started(self, session_present: bool) -> list[tuple[int, int]]:
        """Connect: void the acks of a lost session, or collect the deferred ones."""
        with self._acks_lock:
            self._acks_open = True
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

    def _session_interrupted(self) -> None:
        """Disconnect: acks flushed at the last connect have reached the broker or will be
        redelivered; forget them (a DUP from now on may be a new message)."""
        with self._acks_lock:
            self._acks_open = False
            for mid in [m for m, h in self._held.items() if h.flushed]:
                del self._held[mid]
        self._last_delivered = None

    def held_count(self) -> int:
        """Messages delivered and not yet acknowledged to the broker (manual acks)."""
        with self._acks_lock:
            return sum(1 for h in self._held.values() if not h.acked or h.deferred)

    def _handle_unrouted(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # A persistent session may hold a subscription this configuration no longer makes;
        # with manual acks such a message must still be acknowledged, or the broker keeps
        # it in flight for ever.
        if self._manual_ack and msg.qos > 0:
            client.ack(msg.mid, msg.qos)
        log.debug("message on %r matched no handler; ignored", msg.topic)

    # ---- publishing ----------------------------------------------------------------------

    def properties(
        self, correlation_data: bytes | None = None, content_type: str | None = None
    ) -> Properties | None:
        """MQTT 5 PUBLISH properties (None on 3.1.1, where there are none)."""
        if not self.is_v5 or (correlation_data is None and content_type is None):
            return None
        return paho_client.publish_properties(correlation_data, content_type)

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
        msg: _Msg = (
            topic,
            payload.encode("utf-8") if isinstance(payload, str) else payload,
            qos,
            retain,
            properties,
        )
        if self._outbox or not self._open:
            self._enqueue(msg)
        elif threading.get_ident() == self._net_ident:
            self._send_nowait(msg)
        else:
            with self._send_lock:
                self._send(msg, front=False)

    def _send(self, msg: _Msg, front: bool) -> None:
        """Hand one message to paho, waiting for room; requeue it if the link is down."""
        topic, payload, qos, retain, props = msg
        client = self._client
        while True:
            if self._stopping and not self._connected:
                self._count_drop("dropped_errors", topic)
                return
            if not self._connected:
                self._enqueue(msg, front=front)
                return
            if qos == 0 and len(client._out_packet) >= self._max_queued:
                self._wait_room()
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
                self._wait_room()
                continue
            if rc == mqtt.MQTT_ERR_NO_CONN:
                if qos > 0:
                    self.stats["published"] += 1  # paho keeps it and sends it on reconnect
                else:
                    self._enqueue(msg, front=front)
                return
            log.error("publish on %r failed: %s", topic, mqtt.error_string(rc))
            self._count_drop("dropped_errors", topic)
            return

    def _send_nowait(self, msg: _Msg) -> None:
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
            self._enqueue(msg)

    def _wait_room(self) -> None:
        """Wait until paho has drained to half (or at most _WAIT_SLICE)."""
        with self._room:
            self._waiters += 1
            if self._waiters == 1:
                self._client.on_publish = self._handle_publish
            self._room.wait(_WAIT_SLICE)
            self._waiters -= 1
            if self._waiters == 0:
                self._client.on_publish = None

    def _enqueue(self, msg: _Msg, front: bool = False) -> None:
        """Put a message in the outbox (sent in order by the outbox thread)."""
        on_net_thread = threading.get_ident() == self._net_ident
        with self._room:
            # While connected the outbox is only a passage (it holds one at least).
            while len(self._outbox) >= max(self._buffer_cap, int(self._connected)):
                if self._connected and not on_net_thread and not self._stopping:
                    # The outbox thread is draining (it notifies as it pops): wait for it.
                    self._room.wait(_WAIT_SLICE)
                    continue
                if self._connected and on_net_thread:
                    break  # never block the network thread; the cap is soft here
                if not self._outbox or front:
                    # Full: a message put back at the head is the oldest one itself.
                    self._count_drop("dropped_buffer_full", msg[0])
                    return
                dropped = self._outbox.popleft()
                self._count_drop("dropped_buffer_full", dropped[0])
            if front:
                self._outbox.appendleft(msg)
            else:
                self._outbox.append(msg)
            self.stats["buffered"] += 1
            self._room.notify_all()

    def _count_drop(self, what: str, topic: str) -> None:
        self.stats[what] += 1
        n = self.stats[what]
        if n == 1 or n % 1000 == 0:
            log.warning("MQTT message on %r dropped (%s, %d so far)", topic, what, n)

    def outbox_size(self) -> int:
        return len(self._outbox)

    def _run_outbox(self) -> None:
        """After each connect: wait for paho's resends, drain the outbox in order, then let
        publishers send directly (``_open``); later, drain whatever lands in the outbox."""
        while True:
            with self._room:
                while not self._stopping and not (
                    self._connected and (self._outbox or not self._open)
                ):
                    self._room.wait()
                if self._stopping:
                    return
            with self._send_lock:
                if not self._open:
                    self._await_resent()
                while True:
                    with self._room:
                        if not self._connected or self._stopping:
                            break
                        if not self._outbox:
                            self._open = True
                            break
                        msg = self._outbox.popleft()
                        self._room.notify_all()
                    self._send(msg, front=True)

    def _await_resent(self) -> None:
        """Wait (bounded) until the QoS 1/2 messages paho held over a reconnect have been
        resent and acknowledged, so that no newer message overtakes them."""
        end = time.monotonic() + RESEND_WAIT
        client = self._client
        while client._out_messages and self._connected and not self._stopping:
            if time.monotonic() >= end:
                log.warning(
                    "%d resent MQTT message(s) still unacknowledged after %.0f s; "
                    "sending the buffered ones anyway",
                    len(client._out_messages),
                    RESEND_WAIT,
                )
                return
            with self._room:
                self._room.wait(0.02)

    # ---- paho callbacks (network thread) -------------------------------------------------

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._net_ident = threading.get_ident()
        if reason_code.is_failure:
            text = str(reason_code)
            if reason_code.value in _AUTH_FAILURES:
                self.auth_failure = (
                    f"the MQTT broker refused the connection: {text} (check "
                    f"{env_name('mqtt_username')} / {env_name('mqtt_password')})"
                )
                log.error("%s", self.auth_failure)
                self.auth_failed_event.set()
            else:
                log.error("the MQTT broker refused the connection: %s", text)
            return
        self._apply_receive_maximum(properties)
        first = not self._ever_connected
        self._ever_connected = True
        self.stats["connects"] += 1
        session = bool(flags.session_present)
        self.stats["sessions_resumed" if session else "sessions_new"] += 1
        if self.persistent and not session:
            # Normal at the very first start; otherwise the broker lost the session.
            log.log(
                logging.INFO if first else logging.WARNING,
                "MQTT session is new: commands sent while the bridge was away (if any) "
                "were not kept by the broker",
            )
        for mid, qos in self._session_started(session) if self._manual_ack else ():
            client.ack(mid, qos)  # acknowledgements made while disconnected
        dropped = self.stats["dropped_buffer_full"] - self._dropped_at_disconnect
        if dropped and not first:
            log.warning(
                "%d MQTT message(s) were dropped while the broker was away: the buffer "
                "holds %d (%s)",
                dropped,
                self._buffer_cap,
                env_name("mqtt_buffer"),
            )
        with self._subs_lock:
            entries = [self._sub_entry(f, q) for f, q in self._subs.items()]
        self._connect_failures = 0
        if entries:
            # `online` waits for the SUBACK (_handle_subscribe).
            self._connect_sub_mid = client.subscribe(entries)[1]
        else:
            self._publish_online(client)
            self.subscribed_event.set()
        with self._room:
            self._connected = True
            self._room.notify_all()
        self.connected_event.set()
        log.info(
            "MQTT connected to %s:%d%s",
            self.settings.mqtt_host,
            self.settings.mqtt_port,
            "" if first else " (reconnected)",
        )
        if self._on_connect_cb is not None:
            self._on_connect_cb(first, bool(flags.session_present))

    def _apply_receive_maximum(self, properties: Properties | None) -> None:
        """In flight: ``mqtt_max_inflight``, or fewer if the broker says so.

        An MQTT 5 broker's CONNACK may carry Receive Maximum, the most QoS 1/2 messages a
        client may leave unacknowledged (Mosquitto: ``max_inflight_messages``, 20 by
        default). Sending more breaks the protocol, and a strict broker disconnects the
        client for it. Without the property the broker allows 65,535."""
        configured = self.settings.mqtt_max_inflight
        allowed = getattr(properties, "ReceiveMaximum", None) if self.is_v5 else None
        limit = min(configured, allowed) if isinstance(allowed, int) and allowed > 0 else configured
        self._client.limit_in_flight(limit)
        if limit != self.inflight_limit and limit < configured:
            log.info(
                "the broker's Receive Maximum %d is below %s (%d): the bridge keeps at most "
                "%d message(s) in flight",
                limit,
                env_name("mqtt_max_inflight"),
                configured,
                limit,
            )
        self.inflight_limit = limit

    def _handle_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("the broker refused %d subscription(s): %s", len(refused), refused[0])
        if mid == self._connect_sub_mid:
            self._publish_online(client)
            self.subscribed_event.set()

    def _publish_online(self, client: mqtt.Client) -> None:
        if client.publish(self.state_topic, "online", qos=1, retain=True).rc not in (
            mqtt.MQTT_ERR_SUCCESS,
            mqtt.MQTT_ERR_NO_CONN,
        ):
            self._enqueue((self.state_topic, b"online", 1, True, None), front=True)

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError` block: the exception says why.
        self._connect_failures += 1
        n = self._connect_failures
        if n != 1 and n % 10:
            return
        exc = sys.exc_info()[1]
        s = self.settings
        hint = ""
        if isinstance(exc, ssl.SSLError):
            hint = (
                f" (check {env_name('mqtt_host')} against the certificate's names, "
                f"{env_name('mqtt_tls_ca')}, {env_name('mqtt_tls_cert')}/"
                f"{env_name('mqtt_tls_key')})"
            )
        log.warning(
            "cannot connect to the MQTT broker %s:%d: %s%s; retrying with back-off (try %d)",
            s.mqtt_host, s.mqtt_port, exc or "connection failed", hint, n,
        )  # fmt: skip

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self._connected
        with self._room:
            self._connected = False
            self._open = False
            self._room.notify_all()
        self.connected_event.clear()
        self.subscribed_event.clear()
        self._dropped_at_disconnect = self.stats["dropped_buffer_full"]
        if self._manual_ack:
            self._session_interrupted()
        if not was:
            return
        self.stats["disconnects"] += 1
        if self._stopping:
            return
        log.warning(
            "MQTT connection lost (%s); reconnecting with back-off up to %d s",
            reason_code,
            RECONNECT_MAX,
        )
        if self._on_disconnect_cb is not None:
            self._on_disconnect_cb(str(reason_code))

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
            and len(client._out_packet) <= self._low_water
            and len(client._out_messages) <= self._low_water + 1  # this one is not popped yet
        ):
            with self._room:
                self._room.notify_all()
