"""Values: Connector notifications to ``<prefix>/<ep>/<res>``, and the initial reads.

The hot path of the bridge: one event per channel message carries its notifications,
already decoded by the Connector side; each becomes a cached topic look-up and a publish,
on the thread that delivered the message (paho's publish is thread-safe, and waits when
paho is full, which slows the channel down instead of growing memory).

Initial reads: when the bridge learns an endpoint's resources (at start-up, or from a
registration) it reads every observed resource once (``initial_read``), so retained
values exist before the first change. At most ``initial_read_concurrency`` reads are
under way at once. A read refused with 412 (the notification channel is still being set
up) is tried again a few times (the port's read does that).

A forgotten endpoint (gone for good) has its retained values cleared.
"""

from __future__ import annotations

import logging
import threading

from bridge.core.events import (
    EndpointForgotten,
    EndpointResources,
    NotificationsReceived,
    ValueRead,
)
from bridge.downstream.topics import fits
from bridge.extensions.base import BridgeContext, Extension
from bridge.service.settings import env_name
from bridge.upstream.port import UNREACHABLE, Outcome, read_groups
from bridge.upstream.rules import observed_paths

log = logging.getLogger("bridge.values")


class Values(Extension):
    name = "values"

    def __init__(self, ctx: BridgeContext) -> None:
        super().__init__(ctx)
        self._calls = ctx.port.calls(ctx.background.submit)
        self._slots = threading.Semaphore(ctx.settings.initial_read_concurrency)
        self._stopping = threading.Event()

    def start(self) -> None:
        bus = self.ctx.bus
        bus.subscribe(NotificationsReceived, self._on_notifications)
        bus.subscribe(ValueRead, self._on_value_read)
        if self.ctx.settings.value_retain:
            bus.subscribe(EndpointForgotten, self._on_forgotten)
        if self.ctx.settings.initial_read:
            bus.subscribe(EndpointResources, self._on_resources)

    def stop(self) -> None:
        self._stopping.set()

    # ---- notifications (the hot path) -------------------------------------------------

    def _on_notifications(self, event: NotificationsReceived) -> None:
        publish = self.ctx.mqtt.publish
        value_topic = self.ctx.topics.value
        qos = self.ctx.settings.value_qos
        retain = self.ctx.settings.value_retain
        sent = bad = 0
        for endpoint, path, payload in event.values:
            try:
                topic = value_topic(endpoint, path)
            except (TypeError, ValueError) as exc:
                bad += 1
                log.warning("notification of %.200r %.200r ignored (%s)", endpoint, path, exc)
                continue
            if not fits(topic):
                bad += 1
                log.warning("notification ignored: topic longer than MQTT allows")
                continue
            publish(topic, payload, qos, retain)
            sent += 1
        self.ctx.counters.add("notifications_published", sent)
        if bad:
            self.ctx.counters.add("notifications_bad", bad)

    def _on_value_read(self, event: ValueRead) -> None:
        self.publish_value(event.endpoint, event.path, event.payload)

    def publish_value(self, endpoint: str, path: str, payload: bytes) -> None:
        s = self.ctx.settings
        topic = self.ctx.topics.value(endpoint, path)
        if fits(topic):
            self.ctx.mqtt.publish(topic, payload, s.value_qos, s.value_retain)

    def _on_forgotten(self, event: EndpointForgotten) -> None:
        # Gone for good: its retained values go too (an empty retained message clears one).
        for resource in event.resources or ():
            self.publish_value(event.name, resource.path, b"")

    # ---- initial reads ----------------------------------------------------------------

    def _on_resources(self, event: EndpointResources) -> None:
        if event.source == "reg-update":
            return
        paths = observed_paths(
            self.ctx.rules, event.name, event.type, ((r.path, r.obs) for r in event.resources)
        )
        if not paths:
            return
        if event.source == "startup":
            # On a background worker: waiting for a free slot is the back-pressure.
            self._read_all(event.name, paths, event.queue_mode)
        elif not self.ctx.background.submit(
            lambda: self._read_all(event.name, paths, event.queue_mode)
        ):
            self.ctx.counters.add("initial_reads_skipped", len(paths))
            log.warning("initial read of %r skipped: background queue full", event.name)

    def _read_all(
        self, name: str, paths: list[str], queue_mode: bool, by_instance: bool = True
    ) -> None:
        """Read ``paths``, one slot per request; resources of one object instance with
        one instance read where ``by_instance`` (see :mod:`bridge.upstream.lwm2m_json`)."""
        groups = read_groups(paths) if by_instance else [(p, [p]) for p in paths]
        for target, covered in groups:
            while not self._slots.acquire(timeout=0.5):
                if self._stopping.is_set():
                    return
            if self._stopping.is_set():
                self._slots.release()
                return
            self._read(name, target, covered, queue_mode)

    def _read(self, name: str, target: str, covered: list[str], queue_mode: bool) -> None:
        """One read of ``target`` (a resource, or the instance of ``covered``); the caller
        holds a slot, released when the read ends."""
        s = self.ctx.settings
        timeout = s.queue_mode_timeout if queue_mode else s.command_timeout
        setting = env_name("queue_mode_timeout" if queue_mode else "command_timeout")
        single = covered == [target]

        def done(outcome: Outcome) -> None:
            self._slots.release()
            if single:
                self._single_done(name, target, outcome)
            else:
                self._instance_done(name, target, covered, queue_mode, outcome)

        self.ctx.port.read(
            name, target, done, calls=self._calls, timeout=timeout,
            timeout_text=f"no answer within {timeout:g} s ({setting})",
        )  # fmt: skip

    def _single_done(self, name: str, path: str, outcome: Outcome) -> None:
        if outcome.ok:
            # Counted once the value is with the MQTT link: a count that has reached its
            # total means every value read is queued for the broker.
            if outcome.payload is not None:
                self.publish_value(name, path, outcome.payload)
            self.ctx.counters.add("initial_reads_ok")
            return
        self.ctx.counters.add("initial_reads_failed")
        log.info("initial read of %s%s failed: %s %s", name, path, outcome.status, outcome.error)

    def _instance_done(
        self, name: str, base: str, covered: list[str], queue_mode: bool, outcome: Outcome
    ) -> None:
        values = outcome.values or {}
        got = [p for p in covered if p in values]
        for path in got:
            self.publish_value(name, path, values[path])
        if got:
            self.ctx.counters.add("initial_reads_ok", len(got))
        missing = [p for p in covered if p not in values]
        if not missing:
            return
        if outcome.status in UNREACHABLE:
            self.ctx.counters.add("initial_reads_failed", len(missing))
            log.info(
                "initial read of %s%s failed: %s %s", name, base, outcome.status, outcome.error
            )
            return
        # Another format, another error, or resources left out: read those one by one.
        log.debug(
            "instance read of %s%s gave %d of %d value(s) (%s %s %s); reading the rest singly",
            name,
            base,
            len(got),
            len(covered),
            outcome.status,
            outcome.content_type,
            outcome.error or "",
        )
        if self._stopping.is_set() or not self.ctx.background.submit(
            lambda: self._read_all(name, missing, queue_mode, by_instance=False)
        ):
            self.ctx.counters.add("initial_reads_skipped", len(missing))

    def info(self) -> dict[str, object]:
        return {"initial_reads_under_way": len(self._calls)}
