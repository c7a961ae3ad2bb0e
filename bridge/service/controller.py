"""The bridge: wires the Connector side and the MQTT side to the extensions.

::

    Connector --channel--> ConnectorSide --events--> extensions --> MqttLink --> broker
    broker --> MqttLink --> extensions (commands) --ConnectorPort--> Connector
                                 (async response / time-out) --> MqttLink (reply)

:class:`Bridge` owns every long-lived part and thread: paho's network thread and the
outbox thread (:mod:`bridge.downstream.link`), the long-poll thread or the callback receiver
(:mod:`bridge.upstream.side`), a fixed pool of command workers, a small background pool
(start-up descriptions, initial reads), one deadline thread, and the start-up thread.

Start-up, on its own thread so that ``start()`` returns at once: check the Connector
(retrying with back-off while it does not answer; a refused token is fatal), open the
notification channel, put the pre-subscription rules (one call for the whole fleet),
list the registered endpoints and announce each (``$state``), then describe each
(``$resources``) and read its observed values, with bounded concurrency.
``ready`` is set when that is done; ``failed`` (with ``failure``) if it cannot be.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from bridge.cluster import ClusterConfig, slot_names
from bridge.cluster.commands import CommandSlots, InflightStore
from bridge.core.counters import Counters
from bridge.core.events import (
    BridgeStarted,
    BridgeStopping,
    EndpointRegistered,
    EndpointResources,
    EndpointsListed,
    EventBus,
    LeadershipChanged,
    MqttConnected,
    MqttDisconnected,
    SlotChanged,
)
from bridge.core.registry import Registry
from bridge.core.retry import Backoff
from bridge.core.workers import Deadlines, WorkerPool
from bridge.downstream.link import MqttLink
from bridge.downstream.topics import Topics
from bridge.extensions import DEFAULT_EXTENSIONS, BridgeContext, Extension
from bridge.extensions.commands import Commands
from bridge.service.replication import Replication, member_name
from bridge.service.settings import Settings
from bridge.upstream.callback_receiver import publications
from bridge.upstream.port import SeedPort
from bridge.upstream.side import ConnectorSide, StartupError

log = logging.getLogger("bridge")

T = TypeVar("T")
BACKGROUND_WORKERS = 4
BACKGROUND_QUEUE = 10_000
RETRY_BASE = 0.5
RETRY_MAX = 30.0


class _Stopped(Exception):
    pass


class Bridge:
    """One bridge between one Connector and one MQTT broker."""

    def __init__(
        self, settings: Settings, extensions: Sequence[type[Extension]] | None = None
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.bus = EventBus()
        self.registry = Registry()
        self.counters = Counters()
        self.connector_side = ConnectorSide(settings, self.bus, self.registry, self.counters)
        # Several bridges for one account (BRIDGE_CLUSTER_ETCD): this one is a replica; its
        # own connection's state and will are its own, the group's are the leader's.
        self.cluster = ClusterConfig.from_settings(settings)
        member = member_name(settings) if self.cluster is not None else None
        self.mqtt = MqttLink(
            settings,
            client_id=f"{settings.mqtt_client_id}-{member}" if member else None,
            state_topic=self.topics.replica_state(member) if member else self.topics.bridge_state,
            on_connect=lambda first, present: self.bus.emit(MqttConnected(first, present)),
            on_disconnect=lambda reason: self.bus.emit(MqttDisconnected(reason)),
            manual_ack=True,  # a command is acknowledged once carried out or answered
        )
        self.connector_side.admit_callback = self._admit_callback
        self.deadlines = Deadlines()
        self.ctx = BridgeContext(
            settings=settings,
            topics=self.topics,
            bus=self.bus,
            mqtt=self.mqtt,
            port=SeedPort(
                self.connector_side.client,
                self.deadlines,
                self.connector_side,
                device_queue=settings.device_queue,
            ),
            registry=self.registry,
            counters=self.counters,
            commands=WorkerPool("bridge-command", settings.command_workers, settings.command_queue),
            background=WorkerPool("bridge-background", BACKGROUND_WORKERS, BACKGROUND_QUEUE),
            deadlines=self.deadlines,
            rules=[dict(r) for r in settings.presubscriptions],
        )
        # A command waiting for a sleeping device's answers is acknowledged to the broker
        # (it may wait for hours); one for an awake device only once the service took it.
        self.ctx.port.queues.ack_early = self._queue_mode
        self.replication: Replication | None = None
        self.slots: CommandSlots | None = None
        if self.cluster is not None:
            self.replication = Replication(
                self.cluster, settings, topics=self.topics, bus=self.bus, mqtt_link=self.mqtt,
                registry=self.registry, identities=self.connector_side.identities,
                counters=self.counters,
            )  # fmt: skip
            self.ctx.cluster = self.replication
            self.bus.subscribe(LeadershipChanged, self._on_leadership)
            replica = self.replication.replica
            # Commands come through the group's slots (bridge.cluster.commands).
            self.slots = CommandSlots(
                settings, store=InflightStore(self.cluster.client(), self.cluster.group),
                slots=slot_names(settings.cluster_slots), member_id=self.replication.member_id,
                client=self.connector_side.client, mqtt=self.mqtt,
                lease=lambda: replica.lease_id,
            )  # fmt: skip
        self._lead_lock = threading.Lock()
        self._lead_stop = threading.Event()  # the leader's start-up/channel must end
        self._lead_thread: threading.Thread | None = None
        self._probed = threading.Event()
        classes = DEFAULT_EXTENSIONS if extensions is None else extensions
        self.extensions = [cls(self.ctx) for cls in classes if cls.enabled(settings)]
        self.ctx.info["extensions"] = {e.name: e.info for e in self.extensions}
        commands = next((e for e in self.extensions if isinstance(e, Commands)), None)
        if self.slots is not None and commands is not None:
            commands.use_gate(self.slots)
            self.slots.attach(commands.take, commands.reply_for)
            self.bus.subscribe(SlotChanged, self._on_slot)
            self.ctx.info["cluster_commands"] = self.slots.counters
        self.ready = threading.Event()
        self.failed = threading.Event()
        self.failure: str | None = None
        self._stop = threading.Event()
        self._startup_thread: threading.Thread | None = None
        self._started = False
        self._stopped = False

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> Bridge:
        """Start everything; returns at once (see ``ready`` / :meth:`wait_ready`)."""
        if self._started:
            return self
        self._started = True
        self.deadlines.start()
        self.ctx.commands.start()
        self.ctx.background.start()
        if self.slots is not None:
            self.slots.start()
        for ext in self.extensions:
            ext.start()
        if self.replication is not None:
            self.replication.subscribe()
        self.mqtt.start()
        self._startup_thread = threading.Thread(
            target=self._startup, name="bridge-startup", daemon=True
        )
        self._startup_thread.start()
        return self

    def wait_ready(self, timeout: float) -> bool:
        """Wait until start-up is done; raises StartupError if it failed (or the broker
        refused our credentials); False on time-out."""
        end = time.monotonic() + timeout
        while True:
            if self.failed.is_set():
                raise StartupError(self.failure or "start-up failed")
            if self.mqtt.auth_failure:
                raise StartupError(self.mqtt.auth_failure)
            if self.ready.is_set():
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.ready.wait(min(left, 0.1))

    def stop(self) -> None:
        """Stop cleanly: answer commands under way, close the channel, publish offline."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        self._stop.set()
        log.info("bridge stopping")
        self.bus.emit(BridgeStopping())
        for ext in reversed(self.extensions):
            try:
                ext.stop()
            except Exception:
                log.exception("extension %s failed to stop", ext.name)
        self._lead_stop.set()
        # A replica leaves the callback URL registered: the others still receive.
        self.connector_side.stop_channel(keep_callback=self.replication is not None)
        if self._startup_thread is not None:
            self._startup_thread.join(timeout=5.0)
        if self._lead_thread is not None:
            self._lead_thread.join(timeout=5.0)
        if self.slots is not None:
            self.slots.stop()  # after the commands: their claims end, the clients go
        if self.replication is not None:
            self.replication.stop()  # after the channel: the next leader finds it free
        self.ctx.commands.stop(timeout=2.0)
        self.ctx.background.stop(timeout=2.0)
        self.deadlines.stop()
        self.mqtt.stop()
        self.connector_side.close()
        log.info("bridge stopped")

    def __enter__(self) -> Bridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _queue_mode(self, name: str) -> bool:
        ep = self.registry.get(name)
        return ep is not None and ep.queue_mode

    def _admit_callback(self, message: Mapping[str, Any]) -> str | None:
        """Whether the MQTT side can take a webhook message now (None) or why not.

        While the broker is away, publications wait in the link's bounded buffer, which
        drops its oldest when full. A message that does not fit is refused instead (the
        receiver answers 503), so the Connector keeps it and delivers it again later:
        nothing it delivered by webhook is dropped. (Checked just before the hand-over;
        the buffer's own drop-oldest stays the last resort if the link goes down between.)
        """
        if self.mqtt.connected:
            return None  # publishing waits for room: back-pressure, nothing dropped
        queued, cap = self.mqtt.outbox_size(), self.settings.mqtt_buffer
        if queued + publications(message) > cap:
            return f"MQTT broker unreachable and the bridge's buffer full ({queued} of {cap})"
        return None

    # ---- start-up --------------------------------------------------------------------------

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn`` until it works, with capped exponential back-off and jitter."""
        backoff = Backoff(RETRY_BASE, RETRY_MAX)
        while True:
            if self._halted():
                raise _Stopped
            try:
                return fn()
            except ConnectionError as exc:
                delay = backoff.failed()
                log.warning(
                    "%s failed (%s); retry %d in %.1f s", what, exc, backoff.failures, delay
                )
                if self._stop.wait(delay) or self._halted():
                    raise _Stopped from None

    def _halted(self) -> bool:
        """The bridge stops, or (a replica) the leadership this start-up was for ended."""
        return self._stop.is_set() or (
            self.replication is not None and threading.current_thread() is self._lead_thread
            and self._lead_stop.is_set()
        )  # fmt: skip

    def _startup(self) -> None:
        try:
            self._run_startup()
        except _Stopped:
            return
        except StartupError as exc:
            self.failure = str(exc)
            log.error("cannot start: %s", exc)
            self.failed.set()
        except Exception as exc:
            self.failure = f"start-up failed: {exc}"
            log.exception("start-up failed")
            self.failed.set()

    def _run_startup(self) -> None:
        self._probe()
        if self.replication is None:
            self._lead()
            return
        # A replica: list the fleet without announcing it (the leader does), so that
        # commands find their devices; the leader's retained $resources and $state keep
        # the list up to date from then on (bridge.service.replication).
        self._follow()
        if self.connector_side.channel == "callback":
            self.connector_side.start_receiver()
        self.replication.start()
        self.ready.set()

    def _probe(self) -> None:
        side = self.connector_side
        version = self._retry("connecting to the Connector", side.probe)
        self.ctx.info["connector_version"] = version
        self.ctx.info["connector_api"] = side.api
        self.ctx.info["channel"] = side.channel
        if side.api == "legacy":
            rest = side.client.getApiVersions()
            self.ctx.info["rest_versions"] = None if rest.error else rest.result
        log.info("Connector at %s: %s", self.settings.connector_url, version.splitlines()[0])
        self._probed.set()

    def _follow(self) -> None:
        side = self.connector_side
        listed = self._retry("listing endpoints", side.list_endpoints)
        for e in listed:
            ept = e.get("type")
            self.registry.put(
                e["name"], ept if isinstance(ept, str) else None, bool(e.get("q", False)),
                None, e.get("device_id"), e.get("endpoint_name"),
            )  # fmt: skip
        self.ctx.listed.set()
        self.bus.emit(EndpointsListed(len(listed)))
        log.info("%d endpoint(s) registered (listed as a replica of the group)", len(listed))

    # ---- the leader's part (a replica) ------------------------------------------------------

    def _on_slot(self, event: SlotChanged) -> None:
        assert self.slots is not None
        (self.slots.slot_gained if event.owned else self.slots.slot_lost)(event.slot)

    def _on_leadership(self, event: LeadershipChanged) -> None:
        """On the replication's hand-over thread: start or end the leader's part."""
        with self._lead_lock:
            if self._stop.is_set():
                return
            if event.leading:
                old = self._lead_thread
                if old is not None and old.is_alive():
                    old.join(timeout=5.0)
                self._lead_stop.clear()
                self._lead_thread = threading.Thread(
                    target=self._leader_startup, args=(event.term,), name="bridge-leader",
                    daemon=True,
                )  # fmt: skip
                self._lead_thread.start()
                return
            # Lost: stop using the channel now (the start-up under way ends at its next step).
            self._lead_stop.set()
            self.counters.add("cluster_channel_stops")
            self.connector_side.stop_channel(keep_callback=True)
            log.warning("no longer the leader: the notification channel is stopped")

    def _leader_startup(self, term: int | None) -> None:
        assert self.replication is not None
        try:
            self._probed.wait()
            if self._lead_stop.is_set() or not self.replication.leading:
                return
            log.info("leader of the group (term %s): taking the notification channel", term)
            self._lead()
        except _Stopped:
            return
        except StartupError as exc:
            log.error("leader start-up failed: %s", exc)
            self.failure = str(exc)
        except Exception:
            log.exception("leader start-up failed")

    def _lead(self) -> None:
        side = self.connector_side
        side.start_channel()
        self._retry(
            "putting the pre-subscription rules", lambda: side.put_presubscriptions(self.ctx.rules)
        )
        mark = self.registry.mark()
        listed = self._retry("listing endpoints", side.list_endpoints)
        fresh = [e for e in listed if not self.registry.changed_since(e["name"], mark)]
        for e in fresh:
            name, ept, q = e["name"], e.get("type"), bool(e.get("q", False))
            self.registry.put(
                name, ept if isinstance(ept, str) else None, q, None,
                e.get("device_id"), e.get("endpoint_name"),
            )  # fmt: skip
            self.bus.emit(EndpointRegistered(name, ept, q, "startup"))
        # From here on, a channel event for an endpoint makes its start-up description stale.
        mark = self.registry.mark()
        self.ctx.listed.set()
        self.bus.emit(EndpointsListed(len(listed)))
        log.info("%d endpoint(s) registered at start-up", len(listed))

        remaining = [len(fresh)]
        all_described = threading.Event()
        lock = threading.Lock()
        if not fresh:
            all_described.set()

        def describe(name: str) -> None:
            try:
                if self._stop.is_set():
                    return
                resources = side.describe(name)
                if resources is None or self.registry.changed_since(name, mark):
                    return
                ep = self.registry.set_resources(name, resources)
                if ep is not None:
                    self.bus.emit(
                        EndpointResources(name, ep.type, ep.queue_mode, resources, "startup")
                    )
            finally:
                with lock:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        all_described.set()

        for e in fresh:
            task = functools.partial(describe, e["name"])
            while not self.ctx.background.submit_wait(task, timeout=0.5):
                if self._halted():
                    raise _Stopped
        while not all_described.wait(0.5):
            if self._halted():
                raise _Stopped
        self.ready.set()
        self.bus.emit(BridgeStarted(len(listed)))
        log.info("bridge ready: %d endpoint(s) announced", len(listed))
