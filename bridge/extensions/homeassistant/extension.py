"""Home Assistant discovery: retained configs that make every endpoint a device in HA.

What goes on the topics is decided by the pure functions of
:mod:`bridge.extensions.homeassistant.discovery`; this extension decides *when*:

- an endpoint's resources become known (start-up, registration, reg-update): its configs
  are published, retained, under ``<discovery prefix>/<component>/<node>/<object>/config``.
  Only configs whose bytes changed are sent again, and configs of resources that went
  away are removed (empty retained message);
- once per endpoint registration, the device object (``/3/0/0`` manufacturer, ``/3/0/1``
  model, ``/3/0/2`` serial, ``/3/0/3`` firmware, ``/3/0/18`` hardware) and the units of
  its sensors (``/<obj>/<inst>/5701``) are read in the background (the device object
  with one instance read where the device answers it in LwM2M JSON), so that Home
  Assistant's device registry shows what the device says; an awake endpoint's configs
  are published once that is done, with that information (a queue-mode endpoint's at
  once, and again when it has answered). At most ``INFO_READS`` endpoints are read at
  once; the REST calls run on the background workers, never on the channel thread;
- Home Assistant announces itself (``online`` on ``<discovery prefix>/status``): every
  config is published again (Home Assistant may have lost its state, and a broker
  without persistence may have lost the retained configs);
- the broker connection comes back without its session: everything again, like the
  availability extension does for ``$state``;
- an endpoint **de-registers** or its registration **expires**: it keeps its configs.
  A rebooting device de-registers and registers again moments later; removing its
  configs would make Home Assistant delete its device and entities and lose what the
  user set (area, names, a renamed entity id). Meanwhile its ``$state`` (``offline``,
  ``expired``) makes every entity unavailable. When it comes back, only what changed is
  sent: configs of resources it no longer has are removed, new ones published;
- an endpoint is **forgotten** (gone for good: a remove bridge request, or away for
  longer than ``endpoint_remove_after``): its configs are removed (empty retained
  messages) and Home Assistant deletes its device.

The bridge itself is a device too (its connection state as a connectivity sensor); every
endpoint device is reached ``via_device`` it. Availability of every entity needs both
``<prefix>/$bridge/state`` and ``<prefix>/<ep>/$state`` to be ``online``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from collections import deque
from collections.abc import Callable

from bridge.core.events import EndpointForgotten, EndpointResources, MqttConnected
from bridge.core.events import Resource as EventResource
from bridge.downstream.link import Inbound
from bridge.extensions.base import BridgeContext, Extension
from bridge.extensions.homeassistant.discovery import (
    DEVICE_FIELDS,
    SENSORS,
    DiscoverySettings,
    EndpointView,
    bridge_discovery_messages,
    discovery_messages,
    encode_config,
    ha_status_topic,
    is_ha_online,
)
from bridge.service.settings import Settings
from bridge.upstream.port import UNREACHABLE, Outcome, read_groups

log = logging.getLogger("bridge.homeassistant")

CONFIG_QOS = 1
INFO_READS = 16  # endpoints whose device information is being read at once
PUMP_RETRY = 0.05  # seconds before trying again when the background queue is full


@functools.lru_cache(maxsize=256)  # asked for every endpoint; a fleet has few lists
def info_paths(resources: tuple[EventResource, ...]) -> tuple[str, ...]:
    """The resources worth reading once for Home Assistant: the device object's
    registry fields and the units (5701) of sensor objects, where the endpoint has them."""
    present = {r.path for r in resources}
    paths = [p for p in DEVICE_FIELDS if p in present]
    for path in sorted(present):
        segments = path.strip("/").split("/")
        if (
            len(segments) == 3
            and segments[2] == "5701"
            and segments[0].isdigit()
            and int(segments[0]) in SENSORS
        ):
            paths.append(path)
    return tuple(paths)


def _digest(payload: bytes) -> bytes:
    """What is remembered of a published config: enough to tell a change."""
    return hashlib.blake2b(payload, digest_size=16).digest()


class HomeAssistant(Extension):
    name = "homeassistant"

    def __init__(self, ctx: BridgeContext) -> None:
        super().__init__(ctx)
        s = ctx.settings
        self.discovery = DiscoverySettings(
            topic_prefix=s.topic_prefix, discovery_prefix=s.homeassistant_discovery_prefix
        )
        self.status_topic = ha_status_topic(s.homeassistant_discovery_prefix)
        self._calls = ctx.port.calls(ctx.background.submit, ctx.counters)
        # Publishing one endpoint (compare, send, remember) happens under this lock, so
        # two threads never interleave the configs of one endpoint out of order.
        self._publish_lock = threading.Lock()
        # endpoint -> topic -> digest of the payload published (not the payload: ~1 KB a
        # config, hundreds of MB with 100,000 endpoints)
        self._published: dict[str, dict[str, bytes]] = {}
        self._values: dict[str, dict[str, str]] = {}  # endpoint -> path -> value read
        # endpoints whose reads ended incomplete while the bridge took them for awake
        # devices (not queue mode), to be read again if they turn out to sleep
        self._incomplete_awake: set[str] = set()
        self._lock = threading.Lock()  # guards the read queue below
        self._waiting: deque[str] = deque()
        self._queued: set[str] = set()
        self._reading = 0
        self._pump_scheduled = False
        self._stopping = False
        self.counts = {"configs_published": 0, "configs_removed": 0, "announcements": 0}

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.homeassistant

    def start(self) -> None:
        bus = self.ctx.bus
        bus.subscribe(EndpointResources, self._on_resources)
        bus.subscribe(EndpointForgotten, self._on_forgotten)
        bus.subscribe(MqttConnected, self._on_connected)
        self.ctx.mqtt.subscribe(self.status_topic, self._on_ha_status, qos=1)
        self._publish_bridge()

    def stop(self) -> None:
        # The configs stay: the retained bridge state `offline` makes every entity
        # unavailable until the bridge is back.
        self._stopping = True
        self._calls.finish_all(Outcome(False, 503, None, "bridge stopping"))

    # ---- events ------------------------------------------------------------------------

    def _on_resources(self, event: EndpointResources) -> None:
        if event.source == "reg-update" and event.queue_mode and self._read_awake(event.name):
            # Today's device directory does not say which devices are in queue mode: at
            # start-up the bridge took this one for an awake device, and its reads ran out
            # while it slept. Its first reg-update says it sleeps, and that it is awake now:
            # read again (once), with the time-out of a queue-mode device.
            self.publish_endpoint(event.name)
            self._enqueue_read(event.name)
            return
        if event.source == "reg-update" or not info_paths(event.resources):
            self.publish_endpoint(event.name)
            return  # same registration: what was read still holds
        # Start-up, or a new registration (which may follow a firmware update): read the
        # device object again; the values known so far stay until new ones come. The
        # configs go out once, with what was read (an awake device answers in moments);
        # a queue-mode device may answer only when it wakes: its configs go out now too.
        if event.queue_mode:
            self.publish_endpoint(event.name)
        self._enqueue_read(event.name)

    def _on_forgotten(self, event: EndpointForgotten) -> None:
        with self._lock:
            self._values.pop(event.name, None)
            self._incomplete_awake.discard(event.name)
        with self._publish_lock:
            old = self._published.pop(event.name, {})
            for topic in old:
                self._send(topic, b"")
            self.counts["configs_removed"] += len(old)
        if old:
            log.info("Home Assistant: %d config(s) of %r removed", len(old), event.name)

    def _on_connected(self, event: MqttConnected) -> None:
        # A broker that kept our session kept the retained configs too; one that did not
        # may have lost them. On paho's network thread: the work goes to a worker.
        if not event.first and not event.session_present and self.ctx.leading():
            self.ctx.background.submit(self.publish_all)

    def _on_ha_status(self, msg: Inbound) -> None:
        if is_ha_online(msg.payload) and self.ctx.leading():  # a group: its leader
            self.counts["announcements"] += 1
            log.info("Home Assistant came online: publishing every discovery config again")
            if not self.ctx.background.submit(self.publish_all):
                log.warning("Home Assistant announcement ignored: background queue full")

    # ---- publishing ----------------------------------------------------------------------

    def _send(self, topic: str, payload: bytes) -> None:
        self.ctx.mqtt.publish(topic, payload, qos=CONFIG_QOS, retain=True)

    def _publish_bridge(self) -> None:
        for topic, config in bridge_discovery_messages(self.discovery):
            self._send(topic, encode_config(config))

    def endpoint(self, name: str) -> EndpointView | None:
        """What discovery needs to know about ``name`` now (None: nothing to publish)."""
        ep = self.ctx.registry.get(name)
        if ep is None or ep.resources is None:
            return None  # forgotten, or its resources not known yet
        with self._lock:
            values = dict(self._values.get(name, {}))
        return EndpointView(ep, values)

    def publish_endpoint(self, name: str, force: bool = False) -> int:
        """Publish the configs of ``name`` that changed (all with ``force``), remove the
        ones it no longer has; returns how many messages were sent."""
        endpoint = self.endpoint(name)
        if endpoint is None:
            return 0
        new = {
            topic: encode_config(config)
            for topic, config in discovery_messages(endpoint, self.discovery)
        }
        sent = 0
        with self._publish_lock:
            old = self._published.get(name, {})
            for topic in old.keys() - new.keys():
                self._send(topic, b"")
                self.counts["configs_removed"] += 1
                sent += 1
            digests = {}
            for topic, payload in new.items():
                digest = _digest(payload)
                digests[topic] = digest
                if force or old.get(topic) != digest:
                    self._send(topic, payload)
                    self.counts["configs_published"] += 1
                    sent += 1
            self._published[name] = digests
        return sent

    def publish_all(self) -> None:
        """Every config again (Home Assistant or the broker may have lost them)."""
        self._publish_bridge()
        sent = 0
        for ep in self.ctx.registry.all():
            if self._stopping:
                return
            sent += self.publish_endpoint(ep.name, force=True)
        log.info("Home Assistant: %d discovery config(s) published", sent)

    # ---- device information, read once per registration -------------------------------

    def _enqueue_read(self, name: str) -> None:
        with self._lock:
            if name in self._queued:
                return
            self._queued.add(name)
            self._waiting.append(name)
        self._pump()

    def _pump(self) -> None:
        """Start reading waiting endpoints while fewer than INFO_READS are under way."""
        while True:
            with self._lock:
                if self._stopping or self._reading >= INFO_READS or not self._waiting:
                    return
                name = self._waiting.popleft()
                self._reading += 1
            if not self.ctx.background.submit(functools.partial(self._read_info, name)):
                # The workers are busy (a start-up with many endpoints): the endpoint keeps
                # its place and the pump tries again shortly, from the deadline thread.
                with self._lock:
                    self._reading -= 1
                    self._waiting.appendleft(name)
                    if self._pump_scheduled:
                        return
                    self._pump_scheduled = True
                self.ctx.deadlines.schedule(PUMP_RETRY, self._pump_again)
                return

    def _pump_again(self) -> None:
        with self._lock:
            self._pump_scheduled = False
        self._pump()

    def _read_info(self, name: str) -> None:
        """Start the reads of one endpoint (a background worker)."""
        ep = self.ctx.registry.get(name)
        paths = info_paths(ep.resources) if ep is not None and ep.resources else ()
        if ep is None or ep.state != "online" or not paths or self._stopping:
            if not self._stopping:
                self.publish_endpoint(name)  # nothing to read: what is known now
            self._read_done(name)
            return
        s = self.ctx.settings
        queue_mode = ep.queue_mode
        timeout = s.queue_mode_timeout if queue_mode else s.command_timeout
        values: dict[str, str] = {}
        remaining = [len(paths)]
        lock = threading.Lock()

        def settle(path: str, payload: bytes | None) -> None:
            text = payload.decode("utf-8", "replace").strip() if payload is not None else ""
            with lock:
                if text:
                    values[path] = text
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                with self._lock:
                    if queue_mode or len(values) == len(paths):
                        self._incomplete_awake.discard(name)
                    else:
                        self._incomplete_awake.add(name)
                self._store(name, values)

        def one_done(path: str, outcome: Outcome) -> None:
            settle(path, outcome.payload if outcome.ok else None)

        def instance_done(base: str, covered: list[str], outcome: Outcome) -> None:
            # One read of the device object instance (/3/0) instead of one per field;
            # what it did not give is read field by field (see bridge.upstream.lwm2m_json).
            found = outcome.values or {}
            for path in covered:
                if path in found:
                    settle(path, found[path])
                elif outcome.status in UNREACHABLE or not self.ctx.background.submit(
                    functools.partial(
                        self._read, name, path, timeout, functools.partial(one_done, path)
                    )
                ):
                    settle(path, None)

        for target, covered in read_groups(paths):
            done = (
                functools.partial(one_done, target)
                if covered == [target]
                else functools.partial(instance_done, target, covered)
            )
            self._read(name, target, timeout, done)

    def _read(self, name: str, path: str, timeout: float, done: Callable[[Outcome], None]) -> None:
        # A 412 (no notification channel yet, at start-up) is tried again by the port.
        def finished(outcome: Outcome) -> None:
            if not outcome.ok:
                log.debug("reading %s%s for Home Assistant failed: %s", name, path, outcome.error)
            done(outcome)

        self.ctx.port.read(
            name, path, finished, calls=self._calls, timeout=timeout,
            timeout_text=f"no answer within {timeout:g} s",
        )  # fmt: skip

    def _store(self, name: str, values: dict[str, str]) -> None:
        """All reads of ``name`` ended (on the channel or deadline thread): keep what
        was read and republish on a worker, then let the next endpoint be read."""
        if not self.ctx.registry.is_online(name):
            self._read_done(name)  # left meanwhile: nothing to keep
            return
        with self._lock:
            self._values[name] = {**self._values.get(name, {}), **values}

        def republish() -> None:
            try:
                self.publish_endpoint(name)
            finally:
                self._read_done(name)

        if not self.ctx.background.submit(republish):
            republish()  # rare (queue full): here, rather than never

    def _read_awake(self, name: str) -> bool:
        """Whether ``name``'s last device-information reads, made while the bridge took it
        for an awake device, ended without every value (and no read is under way)."""
        with self._lock:
            return name in self._incomplete_awake and name not in self._queued

    def _read_done(self, name: str) -> None:
        with self._lock:
            self._reading -= 1
            self._queued.discard(name)
        self._pump()

    def info(self) -> dict[str, object]:
        with self._publish_lock:
            devices = len(self._published)
            configs = sum(len(t) for t in self._published.values())
        with self._lock:
            waiting, reading = len(self._waiting), self._reading
        return {
            "discovery_prefix": self.discovery.discovery_prefix,
            "devices": devices,
            "configs": configs,
            "device_info_waiting": waiting,
            "device_info_reading": reading,
            **self.counts,
        }
