"""Health: the retained ``<prefix>/$bridge/health`` message, liveness, readiness, metrics.

- **On MQTT** (like zigbee2mqtt's ``bridge/health``): the key figures of
  :func:`bridge.extensions.health.figures.key_figures` as JSON, retained, every ``health_interval``
  seconds, and at once when readiness changes (start-up done, broker or Connector lost
  or back), so a dashboard sees a problem within seconds. The last one, on a clean
  stop, says ``"state": "offline"``. ``health_interval`` 0 turns the message off.
- **Over HTTP** on ``health_port`` (off unless set): ``/healthz``, ``/readyz`` and
  Prometheus ``/metrics`` (:mod:`bridge.extensions.health.http_server`). One port for all
  three, the one orchestrators already probe.

It also counts the notifications the Connector delivered (``notifications_received``,
one counter addition per channel message), measures the Connector's HTTP latency
(:class:`bridge.extensions.health.figures.ConnectorLatency`) and follows the Connector's
reachability (:class:`~bridge.core.events.ConnectorStateChanged`, from
:mod:`bridge.upstream.reachability`). Everything else is read from the counters the other
parts keep, only when a figure is asked for.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from bridge.core.events import (
    BridgeStarted,
    BridgeStopping,
    ConnectorStateChanged,
    LeadershipChanged,
    MqttConnected,
    MqttDisconnected,
    NotificationsReceived,
)
from bridge.core.workers import Deadline
from bridge.downstream.topics import BRIDGE_LEVEL
from bridge.extensions.base import BridgeContext, Extension
from bridge.extensions.health.figures import Watch, key_figures, readiness
from bridge.extensions.health.http_server import HealthServer, Metrics
from bridge.service.settings import env_name
from bridge.upstream.side import StartupError

log = logging.getLogger("bridge.health")

CHECK_PERIOD = 2.0  # seconds between readiness checks (cheap: no I/O)
LIVENESS_WAIT = 2.0  # the timer thread must run a no-op within this


class Health(Extension):
    name = "health"

    def __init__(self, ctx: BridgeContext) -> None:
        super().__init__(ctx)
        self.watch = Watch()
        self.topic = f"{ctx.topics.prefix}/{BRIDGE_LEVEL}/health"
        self.server: HealthServer | None = None
        self.published = 0
        self._timer: Deadline | None = None
        self._stopping = False
        # (ready, Connector state, role in a group)
        self._last_state: tuple[bool, str | None, str | None] | None = None
        self._last_publish = 0.0
        self._lock = threading.Lock()

    def start(self) -> None:
        bus = self.ctx.bus
        bus.subscribe(NotificationsReceived, self._on_notifications)
        bus.subscribe(BridgeStarted, self._on_started)
        bus.subscribe(BridgeStopping, self._on_stopping)
        bus.subscribe(ConnectorStateChanged, self._on_connector)
        bus.subscribe(MqttConnected, self._on_change)
        bus.subscribe(MqttDisconnected, self._on_change)
        bus.subscribe(LeadershipChanged, self._on_change)
        if not self.watch.latency.attach(self.ctx.port):
            log.warning("Connector latency not measured: the client has no HTTP session")
        s = self.ctx.settings
        if s.health_port is not None:
            self._start_server(s.health_host, s.health_port)
        if s.health_interval > 0:
            self._check()

    def stop(self) -> None:
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        if self.server is not None:
            self.server.stop()

    # ---- figures -------------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        return key_figures(self.ctx, self.watch)

    def alive(self) -> tuple[bool, dict[str, Any]]:
        """Liveness: the deadline thread (every time-out depends on it) runs a no-op."""
        ran = threading.Event()
        deadline = self.ctx.deadlines.schedule(0, ran.set)
        ok = ran.wait(LIVENESS_WAIT)
        if not ok:
            deadline.cancel()
        uptime = round(time.time() - self.ctx.started_at, 3)
        return ok, {"alive": ok, "uptime": uptime, **({} if ok else {"reason": "timer stuck"})}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        reasons = readiness(self.ctx, self.watch)
        return not reasons, {"ready": not reasons, "reasons": reasons}

    # ---- events ----------------------------------------------------------------------------

    def _on_notifications(self, event: NotificationsReceived) -> None:
        self.ctx.counters.add("notifications_received", event.received)

    def _on_started(self, event: BridgeStarted) -> None:
        self.watch.started.set()
        self._on_change(event)

    def _on_connector(self, event: ConnectorStateChanged) -> None:
        self.watch.connector_changed(event)
        self._on_change(event)

    def _on_change(self, event: object) -> None:
        """Readiness may have changed: say so now, not at the next period (on a worker:
        this runs on the thread that emitted the event)."""
        if self.ctx.settings.health_interval > 0 and not self._stopping:
            self.ctx.background.submit(self._check)

    def _on_stopping(self, event: BridgeStopping) -> None:
        with self._lock:  # no periodic check may publish "online" after this
            self._stopping = True
            if self._timer is not None:
                self._timer.cancel()
            if self.ctx.settings.health_interval > 0:
                doc = self.figures()
                doc.update(state="offline", ready=False, reasons=["the bridge stopped"])
                self._publish(doc)

    # ---- the health message --------------------------------------------------------------

    def _publish(self, doc: dict[str, Any]) -> None:
        body = json.dumps(doc, separators=(",", ":"), default=str)
        cluster = self.ctx.cluster
        if cluster is not None:  # a replica: its own, and the group's while it leads
            self.ctx.mqtt.publish(self.ctx.topics.replica_health(cluster.member_id), body,
                                  qos=1, retain=True)  # fmt: skip
            if not cluster.leading:
                self.published += 1
                return
        self.ctx.mqtt.publish(self.topic, body, qos=1, retain=True)
        self.published += 1

    def _check(self) -> None:
        """Publish when readiness changed or the interval passed; then check again later.
        Runs on a background worker (the deadline thread only hands it over)."""
        with self._lock:
            if self._stopping:
                return
            doc = self.figures()
            now = time.monotonic()
            state = (bool(doc["ready"]), doc["connector"]["state"], doc.get("role"))
            changed = state != self._last_state
            if changed or now - self._last_publish >= self.ctx.settings.health_interval:
                if changed and self._last_state is not None and state[0] != self._last_state[0]:
                    reasons = "; ".join(doc["reasons"])
                    log.info("bridge %s", "ready" if state[0] else f"not ready: {reasons}")
                self._publish(doc)
                self._last_state, self._last_publish = state, now
            if self._timer is not None:
                self._timer.cancel()  # one periodic check at a time, however it was called
            wait = min(CHECK_PERIOD, self.ctx.settings.health_interval)
            self._timer = self.ctx.deadlines.schedule(wait, self._hand_over)

    def _hand_over(self) -> None:
        if not self._stopping and not self.ctx.background.submit(self._check):
            # Background queue full (a big start-up): try again on the next period.
            self._timer = self.ctx.deadlines.schedule(CHECK_PERIOD, self._hand_over)

    # ---- the HTTP server -------------------------------------------------------------------

    def _start_server(self, host: str, port: int) -> None:
        metrics: Metrics | None = None
        try:
            from bridge.extensions.health.prometheus import exposition, make_registry
        except ImportError:
            log.warning("/metrics is off: the prometheus-client package is not installed")
        else:
            registry = make_registry(self.figures, self.watch.latency)
            metrics = lambda: exposition(registry)  # noqa: E731
        try:
            self.server = HealthServer(
                host, port, alive=self.alive, ready=self.ready, metrics=metrics
            ).start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {host}:{port} for health and metrics "
                f"({env_name('health_port')}, {env_name('health_host')}): {exc.strerror or exc}"
            ) from None
        log.info(
            "health on http://%s:%d/healthz, /readyz%s",
            host,
            self.server.port,
            ", /metrics" if metrics else "",
        )

    def info(self) -> dict[str, Any]:
        return {
            "ready": not readiness(self.ctx, self.watch),
            "topic": self.topic if self.ctx.settings.health_interval > 0 else None,
            "http_port": self.server.port if self.server is not None else None,
            "messages_published": self.published,
        }
