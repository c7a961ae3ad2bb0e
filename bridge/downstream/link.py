"""The MQTT side: the bridge's one MQTT connection, over paho-mqtt 2.x, in parts.

This module is the link itself: connection, reconnects, availability, subscriptions and
delivery of what arrives. Its parts, each a module beside it:
:mod:`~bridge.downstream.outbox` (publishing with back-pressure, the bounded outbox while
the broker is away), :mod:`~bridge.downstream.ledger` (the QoS 1/2 messages paho holds
unacknowledged, what ``drain`` waits for, the broker's Receive Maximum),
:mod:`~bridge.downstream.acks` (acknowledging received commands when they are done) and
:mod:`~bridge.downstream.paho_client` (paho's client, the only place that touches paho's
private state).

What the link adds to paho, and why:

- **Availability.** The retained will ``<prefix>/$bridge/state`` = ``offline``; ``online``
  published (retained) on every connect once the broker has acknowledged the bridge's
  subscriptions (so a client that sends a command on seeing ``online`` is heard, even on
  a brand-new session); ``offline`` published on a clean stop.
- **Reconnects.** paho's own loop thread reconnects with back-off (1 s doubling to
  30 s); every subscription made through :meth:`MqttLink.subscribe` is renewed on every
  connect, so extensions subscribe once and forget about reconnects.
- **A persistent session** (``mqtt_session_expiry`` > 0: MQTT 5 Clean Start off with a
  Session Expiry Interval, 3.1.1 Clean Session off): the broker keeps the bridge's
  subscriptions and queues the commands sent while it is away.
- **Acknowledging commands when they are done** (``manual_ack``, :mod:`~bridge.downstream.acks`).
- **Never blocking paho's network thread.** Callbacks (``on_message``, ``on_connect``)
  may publish; from that thread a publish never waits (:mod:`~bridge.downstream.outbox`).
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
from bridge.downstream.acks import Held, InboundAcks
from bridge.downstream.ledger import Ledger
from bridge.downstream.outbox import Outbox
from bridge.service.settings import Settings, env_name

log = logging.getLogger("bridge.mqtt")

RECONNECT_MIN = 1
RECONNECT_MAX = 30

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
    # MQTT 5 Message Expiry Interval: the seconds it had left when the broker sent it
    message_expiry: int | None = None
    _ack: Callable[[], object] | None = field(default=None, repr=False)

    def ack(self) -> None:
        """Acknowledge to the broker (only with manual acks and QoS >= 1; once however
        often it is called)."""
        if self._ack is not None:
            self._ack()


InboundHandler = Callable[[Inbound], None]


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
    """The bridge's one MQTT connection.

    ``client_class`` is the paho client to use: :data:`bridge.downstream.paho_client.Client`
    (chosen by the paho version) unless a test says otherwise.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        state_topic: str,
        on_connect: Callable[[bool, bool], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
        manual_ack: bool = False,
        client_class: type[paho_client.PlainClient] = paho_client.Client,
        client_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.state_topic = state_topic
        self.is_v5 = settings.mqtt_protocol == "5"
        self.persistent = settings.mqtt_session_expiry > 0
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self._manual_ack = manual_ack

        client = client_class(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or settings.mqtt_client_id,
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
        # on_publish is installed by the outbox only while a publisher waits for room.
        client.on_message = self._handle_unrouted
        if log.isEnabledFor(logging.DEBUG):
            client.enable_logger(logging.getLogger("bridge.mqtt.paho"))
        self._client = client

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
        self._ledger = Ledger(client, configured_limit=settings.mqtt_max_inflight, is_v5=self.is_v5)
        self._outbox = Outbox(
            client,
            self._ledger,
            self.stats,
            max_queued=settings.mqtt_max_queued,
            buffer_cap=settings.mqtt_buffer,
        )
        self._acks = InboundAcks(client, self.stats)
        # The hot path: the outbox's own method, no call in between.
        self.publish = self._outbox.publish

        self._subs: dict[str, int] = {}  # filter -> qos
        self._subs_lock = threading.Lock()
        self._started = False
        self._ever_connected = False
        self.connected_event = threading.Event()
        # Set once the broker acknowledged the subscriptions renewed at the last connect:
        # only from then on does it route commands to the bridge.
        self.subscribed_event = threading.Event()
        self._connect_sub_mid: int | None = None
        self._connect_failures = 0
        self.auth_failure: str | None = None
        self.auth_failed_event = threading.Event()

    # ---- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retrying with back-off until it works)."""
        if self._started:
            return
        self._started = True
        self._outbox.start()
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
        return self._outbox.connected

    @property
    def inflight_limit(self) -> int:
        """QoS 1/2 messages kept unacknowledged at most: the setting, or the broker's
        Receive Maximum when lower (set at each connect)."""
        return self._ledger.inflight_limit

    def stop(self, timeout: float = 5.0) -> None:
        """Publish ``offline``, send what is queued (bounded by ``timeout``), disconnect."""
        outbox = self._outbox
        if not self._started or outbox.stopping:
            return
        if outbox.connected:
            self.drain(timeout)
        outbox.begin_stop()
        if outbox.connected:
            info = self._client.publish(self.state_topic, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(min(timeout, 2.0))
        self._client.disconnect()
        self._client.loop_stop()
        left = outbox.finish_stop()
        if left:
            log.warning("%d buffered MQTT message(s) not sent: the bridge stopped first", left)
        self.connected_event.clear()
        log.info("MQTT link stopped")

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty and paho has sent everything (QoS 1: acked)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self._outbox.size() and self._ledger.settled():
                return True
            self._outbox.wait_room()
        return False

    def outbox_size(self) -> int:
        return self._outbox.size()

    def held_count(self) -> int:
        """Messages delivered and not yet acknowledged to the broker (manual acks)."""
        return self._acks.held_count()

    # ---- subscriptions -----------------------------------------------------------------

    def subscribe(
        self,
        topic_filter: str,
        handler: InboundHandler,
        qos: int = 1,
        *,
        manual_ack: bool = False,
        share: str | None = None,
    ) -> None:
        """Route messages matching ``topic_filter`` to ``handler``; renewed on reconnects.

        With ``manual_ack`` (and a link made with ``manual_ack=True``) the handler must
        call :meth:`Inbound.ack` once it is done with a QoS 1/2 message (from any thread);
        otherwise the message is acknowledged as soon as the handler returns.

        ``share``: an MQTT 5 shared subscription ``$share/<share>/<topic_filter>`` (the
        broker gives each message to one member of the share group).
        """

        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            self._deliver(msg, handler, manual_ack)

        self._client.message_callback_add(topic_filter, on_message)
        wire = f"$share/{share}/{topic_filter}" if share else topic_filter
        with self._subs_lock:
            self._subs[wire] = qos
        if self._outbox.connected:
            self._client.subscribe([self._sub_entry(wire, qos)])

    def _sub_entry(self, topic_filter: str, qos: int) -> tuple[str, Any]:
        if self.is_v5:
            # No Local: never our own publications; Retain Handling 2: no retained replay.
            # (No Local on a shared subscription is a protocol error: MQTT 5, 3.8.3.1.)
            local = not topic_filter.startswith("$share/")
            return topic_filter, SubscribeOptions(qos=qos, noLocal=local, retainHandling=2)
        return topic_filter, qos

    def _deliver(self, msg: mqtt.MQTTMessage, handler: InboundHandler, manual: bool) -> None:
        self.stats["received"] += 1
        props = msg.properties
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        expiry = getattr(props, "MessageExpiryInterval", None) if props is not None else None
        payload = bytes(msg.payload)
        ack: Callable[[], object] | None = None
        held: Held | None = None
        if self._manual_ack and msg.qos > 0:
            held = self._acks.hold(msg, payload)
            if held is None:
                return  # a resent copy of a message held or just acknowledged
            if manual:
                ack = functools.partial(self._acks.ack, msg.mid, held)
        inbound = Inbound(
            topic=msg.topic,
            payload=payload,
            qos=msg.qos,
            retain=bool(msg.retain),
            response_topic=response_topic or None,
            correlation_data=bytes(correlation) if correlation is not None else None,
            mid=msg.mid,
            dup=bool(msg.dup),
            message_expiry=expiry if isinstance(expiry, int) else None,
            _ack=ack,
        )
        if ack is not None or held is None:
            handler(inbound)
            return
        try:
            handler(inbound)
        finally:
            self._acks.ack(msg.mid, held)

    def _handle_unrouted(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # A persistent session may hold a subscription this configuration no longer makes;
        # with manual acks such a message must still be acknowledged, or the broker keeps
        # it in flight for ever.
        if self._manual_ack and msg.qos > 0:
            client.ack(msg.mid, msg.qos)
        log.debug("message on %r matched no handler; ignored", msg.topic)

    # ---- publishing ----------------------------------------------------------------------
    # ``publish`` is the outbox's (Outbox.publish), bound in __init__.

    def properties(
        self, correlation_data: bytes | None = None, content_type: str | None = None
    ) -> Properties | None:
        """MQTT 5 PUBLISH properties (None on 3.1.1, where there are none)."""
        if not self.is_v5 or (correlation_data is None and content_type is None):
            return None
        return paho_client.publish_properties(correlation_data, content_type)

    # ---- paho callbacks (network thread) -------------------------------------------------

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._outbox.net_ident = threading.get_ident()
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
        self._ledger.apply_receive_maximum(properties)
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
        for mid, qos in self._acks.session_started(session) if self._manual_ack else ():
            client.ack(mid, qos)  # acknowledgements made while disconnected
        dropped = self.stats["dropped_buffer_full"] - self._outbox.dropped_at_disconnect
        if dropped and not first:
            log.warning(
                "%d MQTT message(s) were dropped while the broker was away: the buffer "
                "holds %d (%s)",
                dropped,
                self._outbox.buffer_cap,
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
        self._outbox.connection_up()
        self.connected_event.set()
        log.info(
            "MQTT connected to %s:%d%s",
            self.settings.mqtt_host,
            self.settings.mqtt_port,
            "" if first else " (reconnected)",
        )
        if self._on_connect_cb is not None:
            self._on_connect_cb(first, bool(flags.session_present))

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
            self._outbox.enqueue((self.state_topic, b"online", 1, True, None), front=True)

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
        was = self._outbox.connected
        self._outbox.connection_down()
        self.connected_event.clear()
        self.subscribed_event.clear()
        if self._manual_ack:
            self._acks.session_interrupted()
        if not was:
            return
        self.stats["disconnects"] += 1
        if self._outbox.stopping:
            return
        log.warning(
            "MQTT connection lost (%s); reconnecting with back-off up to %d s",
            reason_code,
            RECONNECT_MAX,
        )
        if self._on_disconnect_cb is not None:
            self._on_disconnect_cb(str(reason_code))
