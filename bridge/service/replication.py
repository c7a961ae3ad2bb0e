"""Several bridges for one account: this bridge as one replica of a group on etcd.

Made by :class:`bridge.service.controller.Bridge` when ``BRIDGE_CLUSTER_ETCD`` is set
(:meth:`ClusterConfig.from_settings`); a single bridge has none. It owns:

- the :class:`~bridge.cluster.Replica` (lease, leadership, the ``BRIDGE_CLUSTER_SLOTS``
  slots), whose callbacks become :class:`~bridge.core.events.LeadershipChanged` and
  :class:`~bridge.core.events.SlotChanged` on the bus. The replica's thread only puts
  them in a queue; a hand-over thread of this module emits them, in order, so that a
  slow handler (stopping the channel takes up to 2 s) never delays a lease renewal;
- the **1001 fence**: the service closes a WebSocket with 1001 when another consumer
  opened one on the same channel. A replica told so while it believes it leads steps
  down (:meth:`Replica.step_down`): it stops using the channel at once and does not
  reconnect; the leader key stays under its lease one more TTL, so nobody else takes the
  channel before any replica that might still believe it leads has seen its own lease
  run out; then the others campaign, and this one only after a hold-off that doubles
  with every step-down in a row (a foreign consumer on the same key is not fought in a
  loop: at most once per TTL at first, once per :data:`HOLD_OFF_MAX` at last);
- the **group state** ``<prefix>/$bridge/state``: held by the leader on a small MQTT
  connection of its own, client id ``<mqtt_client_id>-<group>-state``, whose will is
  ``offline`` (retained) with an MQTT 5 Will Delay of TTL + :data:`WILL_MARGIN` s. A new
  leader connects with the same client id and continues that session before the delay
  ends, so the broker never sends the will while any replica serves; when the last one
  dies, nobody does, and the group goes ``offline`` after the delay. A clean stop of
  the last replica publishes ``offline`` at once. Every replica's own main connection
  has its own will, on ``<prefix>/$bridge/replicas/<member>/state``;
- the **mirror** of a follower: what the leader publishes (retained ``$resources`` and
  ``$state``) keeps the follower's registry and device ID bindings up to date, so that
  it can carry out commands for devices registered after it listed them.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.cluster import ClusterConfig, Replica, slot_names
from bridge.cluster.members import default_member_id
from bridge.core.counters import Counters
from bridge.core.events import (
    ConnectorStateChanged,
    EventBus,
    LeadershipChanged,
    Resource,
    SlotChanged,
)
from bridge.core.registry import Registry
from bridge.downstream.link import Inbound, MqttLink, apply_credentials_and_tls
from bridge.downstream.topics import RESOURCES_LEVEL, STATE_LEVEL, Topics, unescape_level
from bridge.service.settings import Settings
from bridge.upstream.identities import Identities

log = logging.getLogger("bridge.cluster")

WILL_MARGIN = 5  # seconds beyond the TTL before the group's will goes out
HOLD_OFF_MAX = 300.0  # seconds: the longest a replica that stepped down stays out
STEADY = 10  # a leadership that lasts this many TTLs ends a run of step-downs


def member_name(settings: Settings) -> str:
    return settings.cluster_member or default_member_id()


class GroupState:
    """The group's ``$bridge/state``, held by the leader (see the module doc)."""

    def __init__(self, settings: Settings, topic: str, client_id: str, ttl: int) -> None:
        self.settings = settings
        self.topic = topic
        self.is_v5 = settings.mqtt_protocol == "5"
        self.will_delay = ttl + WILL_MARGIN
        self._client_id = client_id
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()
        self.connects = 0

    def hold(self) -> None:
        """Take the group state over (connect; ``online`` once connected)."""
        with self._lock:
            if self._client is not None:
                return
            s = self.settings
            c = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self._client_id,
                protocol=mqtt.MQTTv5 if self.is_v5 else mqtt.MQTTv311,
                clean_session=None if self.is_v5 else False,
            )
            apply_credentials_and_tls(c, s)
            if self.is_v5:
                will = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
                will.WillDelayInterval = self.will_delay
                c.will_set(self.topic, "offline", qos=1, retain=True, properties=will)
            else:
                c.will_set(self.topic, "offline", qos=1, retain=True)
            c.reconnect_delay_set(1, 5)
            c.on_connect = self._on_connect
            if self.is_v5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = self.will_delay + 10
                c.connect_async(s.mqtt_host, s.mqtt_port, keepalive=s.mqtt_keepalive,
                                clean_start=False, properties=props)  # fmt: skip
            else:
                c.connect_async(s.mqtt_host, s.mqtt_port, keepalive=s.mqtt_keepalive)
            c.loop_start()
            self._client = c

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:  # fmt: skip
        if getattr(reason, "is_failure", False):
            return
        self.connects += 1
        client.publish(self.topic, "online", qos=1, retain=True)

    def release(self, *, last: bool) -> None:
        """Let the group state go: ``last`` (no other replica serves): ``offline`` now;
        otherwise leave with the will armed (a successor cancels it within its delay)."""
        with self._lock:
            c, self._client = self._client, None
        if c is None:
            return
        try:
            if last:
                c.publish(self.topic, "offline", qos=1, retain=True).wait_for_publish(2.0)
                c.disconnect()
            elif self.is_v5:
                c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
            else:
                c.socket().close() if c.socket() is not None else c.disconnect()  # type: ignore[union-attr]
        except (RuntimeError, ValueError, OSError) as exc:
            log.debug("group state: %s", exc)
        c.loop_stop()


class Replication:
    """This bridge's part in a group (see the module doc)."""

    def __init__(
        self,
        config: ClusterConfig,
        settings: Settings,
        *,
        topics: Topics,
        bus: EventBus,
        mqtt_link: MqttLink,
        registry: Registry,
        identities: Identities,
        counters: Counters,
    ) -> None:
        self.config = config
        self.settings = settings
        self.topics = topics
        self.bus = bus
        self.mqtt = mqtt_link
        self.registry = registry
        self.identities = identities
        self.counters = counters
        self.member_id = member_name(settings)
        self.replica: Replica = config.replica(
            member_id=self.member_id,
            slots=slot_names(settings.cluster_slots),
            on_leadership=self._on_leadership,
            on_slot=self._on_slot,
        )
        self.group_state = GroupState(
            settings, topics.bridge_state, f"{settings.mqtt_client_id}-{config.group}-state",
            config.ttl,
        )  # fmt: skip
        self._events: queue.SimpleQueue[object | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._step_downs_in_a_row = 0
        self._led_since: float | None = None
        self.mirrored = 0
        self.started = False

    # ---- what others read --------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self.replica.leading

    @property
    def role(self) -> str:
        if self.replica.leading:
            return "leader"
        return "follower" if self.replica.lease_remaining() > 0 else "candidate"

    def figures(self) -> dict[str, Any]:
        r = self.replica
        return {
            "group": self.config.group,
            "member": self.member_id,
            "role": self.role,
            "term": r.term,
            "lease_remaining": round(r.lease_remaining(), 3),
            "slots": sorted(r.owned_slots()),
            "step_downs": r.step_downs,
            "leaderships": r.counters.leaderships,
            "lost_leases": r.counters.lost_leases,
            "mirrored": self.mirrored,
        }

    def readiness(self) -> list[str]:
        """Why this replica does not serve (follower: lease and broker; the leader's
        channel is checked by the health extension as for a single bridge)."""
        reasons = []
        if self.replica.lease_remaining() <= 0:
            reasons.append("no etcd lease (not a member of the group now)")
        return reasons

    # ---- life cycle --------------------------------------------------------------------

    def subscribe(self) -> None:
        """Before the link connects: the mirror's subscriptions and the 1001 fence."""
        prefix = self.topics.prefix
        self.mqtt.subscribe(f"{prefix}/+/{RESOURCES_LEVEL}", self._on_resources, qos=1)
        self.mqtt.subscribe(f"{prefix}/+/{STATE_LEVEL}", self._on_state, qos=1)
        self.bus.subscribe(ConnectorStateChanged, self._on_connector)

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        self._thread = threading.Thread(target=self._hand_over, name="bridge-cluster",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        self.replica.start()
        log.info("replica %s of group %s on etcd %s (TTL %d s, %d slots)", self.member_id,
                 self.config.group, ",".join(self.config.endpoints), self.config.ttl,
                 self.settings.cluster_slots)  # fmt: skip

    def stop(self) -> None:
        """Leave the group: the leadership and the slots go to the others at once."""
        if not self.started:
            return
        others = self._others_serving()
        self.replica.stop()
        self._events.put(None)
        if self._thread is not None:
            self._thread.join(10.0)
        self.group_state.release(last=not others)

    def _others_serving(self) -> bool:
        try:
            view = self.replica.view()
        except Exception as exc:  # etcd away: assume the others serve (the will decides)
            log.warning("cluster: cannot read the group on leaving (%s)", exc)
            return True
        return any(m.id != self.member_id for m in view.members)

    # ---- the replica's callbacks (its thread: only queue) ------------------------------

    def _on_leadership(self, leading: bool) -> None:
        self._events.put(LeadershipChanged(leading, self.replica.term if leading else None))

    def _on_slot(self, slot: str, owned: bool) -> None:
        self._events.put(SlotChanged(slot, owned))

    def _hand_over(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            if isinstance(event, LeadershipChanged):
                self._leadership(event)
            self.bus.emit(event)

    def _leadership(self, event: LeadershipChanged) -> None:
        now = time.monotonic()
        if event.leading:
            self._led_since = now
            self.counters.add("cluster_leaderships")
            self.group_state.hold()
            return
        since, self._led_since = self._led_since, None
        if since is not None and now - since >= STEADY * self.config.ttl:
            self._step_downs_in_a_row = 0
        # Another replica takes the group state over within the will's delay.
        self.group_state.release(last=False)

    # ---- the 1001 fence ----------------------------------------------------------------

    def _on_connector(self, event: ConnectorStateChanged) -> None:
        if event.state != "taken_over":
            return
        self.counters.add("cluster_taken_over")
        if not self.replica.leading:
            log.info("cluster %s: the channel was taken over (1001) and this replica no "
                     "longer leads: nothing to do", self.member_id)  # fmt: skip
            return
        self._step_downs_in_a_row += 1
        hold_off = min(HOLD_OFF_MAX, 2.0 * self.config.ttl * 2 ** (self._step_downs_in_a_row - 1))
        log.warning(
            "cluster %s: the service gave the channel to another consumer (1001) while "
            "etcd says this replica leads: stepping down",
            self.member_id,
        )
        if self.replica.step_down(hold_off):
            self.counters.add("cluster_step_downs")

    # ---- the follower's mirror of the leader's retained messages ------------------------

    def _endpoint(self, topic: str, level: str) -> str | None:
        head, tail = self.topics.prefix + "/", "/" + level
        if not topic.startswith(head) or not topic.endswith(tail):
            return None
        try:
            return unescape_level(topic[len(head) : -len(tail)])
        except ValueError:
            return None

    def _on_resources(self, msg: Inbound) -> None:
        if self.replica.leading or not msg.payload:
            return
        name = self._endpoint(msg.topic, RESOURCES_LEVEL)
        try:
            doc = json.loads(msg.payload)
            resources = tuple(Resource.from_dict(r) for r in doc.get("resources") or ())
        except (ValueError, TypeError, AttributeError):
            return
        if name is None or not isinstance(doc, dict):
            return
        device_id = doc.get("device_id") if isinstance(doc.get("device_id"), str) else None
        original = doc.get("endpoint_name") if isinstance(doc.get("endpoint_name"), str) else None
        if device_id is not None and device_id != name:
            self.identities.bind(device_id, name)
        ept = doc.get("type") if isinstance(doc.get("type"), str) else None
        old = self.registry.get(name)
        self.registry.put(name, ept, bool(doc.get("q", False)), resources, device_id, original)
        if old is not None and old.state != "online":
            self.registry.remove(name, old.state)
        self.mirrored += 1

    def _on_state(self, msg: Inbound) -> None:
        if self.replica.leading:
            return
        name = self._endpoint(msg.topic, STATE_LEVEL)
        state = msg.payload.decode("utf-8", "replace")
        if name is None:
            return
        old = self.registry.get(name)
        if state in ("offline", "expired"):
            self.registry.remove(name, state)  # type: ignore[arg-type]
        elif state == "online" and old is not None and old.state != "online":
            self.registry.put(name, old.type, old.queue_mode, old.resources, old.device_id,
                              old.endpoint_name)  # fmt: skip
        self.mirrored += 1
