"""The MQTT link's acknowledgement ledger: the QoS 1/2 messages handed to paho and not yet
acknowledged by the broker, and how many may be.

paho keeps these messages itself (and resends them after a reconnect); the ledger asks
it through :mod:`bridge.downstream.paho_client` how many there are, which is what
:meth:`Ledger.settled` (the link's ``drain``) and :meth:`Ledger.await_resent` (the outbox
thread after a connect) wait for. It also applies **the broker's Receive Maximum** (MQTT 5
CONNACK): the QoS 1/2 messages in flight stay below it if it is lower than
``mqtt_max_inflight``, also for what paho resends after a reconnect.

With :class:`~bridge.downstream.paho_client.PlainClient` (a paho version the speed-ups
were not written for) paho does not say how many it holds: "acknowledged" becomes
"written", and the Receive Maximum is not applied (a warning says so when the broker's is
the lower).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from paho.mqtt.properties import Properties

from bridge.downstream.paho_client import PlainClient
from bridge.service.settings import env_name

log = logging.getLogger("bridge.mqtt")

RESEND_WAIT = 10.0  # longest wait after a connect for paho's held messages to be acknowledged


class Ledger:
    """What one paho client holds unacknowledged, and the limit on it."""

    def __init__(self, client: PlainClient, *, configured_limit: int, is_v5: bool) -> None:
        self._client = client
        self._configured = configured_limit
        self._is_v5 = is_v5
        # QoS 1/2 messages kept unacknowledged at most: the setting, or the broker's
        # Receive Maximum when lower (set at each connect).
        self.inflight_limit = configured_limit

    def unacknowledged(self) -> int:
        """QoS 1/2 messages paho holds, in flight or queued (0 where paho does not say)."""
        return self._client.unacknowledged()

    def settled(self) -> bool:
        """paho has written everything and (QoS 1/2) had it acknowledged."""
        return not self._client.unsent_packets() and not self._client.unacknowledged()

    def await_resent(self, may_wait: Callable[[], bool], wake: threading.Condition) -> None:
        """Wait (bounded) until the QoS 1/2 messages paho held over a reconnect have been
        resent and acknowledged, so that no newer message overtakes them. ``may_wait``
        says whether waiting still makes sense (connected, not stopping); ``wake`` is
        notified when paho makes progress."""
        end = time.monotonic() + RESEND_WAIT
        unacked = self._client.unacknowledged
        while unacked() and may_wait():
            if time.monotonic() >= end:
                log.warning(
                    "%d resent MQTT message(s) still unacknowledged after %.0f s; "
                    "sending the buffered ones anyway",
                    unacked(),
                    RESEND_WAIT,
                )
                return
            with wake:
                wake.wait(0.02)

    def apply_receive_maximum(self, properties: Properties | None) -> None:
        """In flight: ``mqtt_max_inflight``, or fewer if the broker says so (at connect).

        An MQTT 5 broker's CONNACK may carry Receive Maximum, the most QoS 1/2 messages a
        client may leave unacknowledged (Mosquitto: ``max_inflight_messages``, 20 by
        default). Sending more breaks the protocol, and a strict broker disconnects the
        client for it. Without the property the broker allows 65,535."""
        configured = self._configured
        allowed = getattr(properties, "ReceiveMaximum", None) if self._is_v5 else None
        limit = min(configured, allowed) if isinstance(allowed, int) and allowed > 0 else configured
        if not self._client.limit_in_flight(limit):
            if limit < configured:
                log.warning(
                    "the broker's Receive Maximum %d is below %s (%d), and plain paho "
                    "cannot apply it on an open connection: set %s to %d or less",
                    limit,
                    env_name("mqtt_max_inflight"),
                    configured,
                    env_name("mqtt_max_inflight"),
                    limit,
                )
            self.inflight_limit = configured
            return
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
