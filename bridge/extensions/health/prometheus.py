"""Prometheus exposition of the bridge's key figures (``GET /metrics``).

A custom collector reads :func:`bridge.extensions.health.figures.key_figures` at scrape time, so the
bridge's hot path never calls into ``prometheus_client`` and there is one bookkeeping,
not two: the counters the parts already keep. Imported only when the health server
runs (``BRIDGE_HEALTH_PORT``), so ``prometheus-client`` is needed only then.

Metric names: ``bridge_*`` for the bridge, plus the client library's ``process_*``
(CPU, memory, open files) and ``python_info``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from bridge.core.events import ConnectorState
from bridge.extensions.health.figures import ConnectorLatency

Figures = Callable[[], dict[str, Any]]

# Counters of bridge.core.counters with an explicit metric below; the others are exported
# as bridge_<name>_total with these help texts (or a generic one).
_EXPLICIT = frozenset(
    (
        "notifications_received",
        "notifications_published",
        "notifications_bad",
        "commands_received",
        "commands_ok",
        "commands_failed",
        "async_timeouts",
        "connector_outages",
        "connector_recoveries",
    )
)
HELP: dict[str, str] = {
    "registrations": "Endpoint registrations received from the Connector",
    "reg_updates": "Registration updates received from the Connector",
    "de_registrations": "Endpoint de-registrations received from the Connector",
    "registrations_expired": "Endpoint registrations that expired",
    "endpoints_forgotten": "Endpoints forgotten (remove request or BRIDGE_ENDPOINT_REMOVE_AFTER)",
    "commands_busy": "Commands refused because the command queue was full",
    "bridge_requests": "Bridge requests received on <prefix>/$bridge/request/+",
    "initial_reads_ok": "Initial reads of observed resources that succeeded",
    "initial_reads_failed": "Initial reads of observed resources that failed",
    "initial_reads_skipped": "Initial reads skipped (background queue full)",
}
_PER_VERB = re.compile(r"^commands_(set|post|get)_(ok|failed|timeout|busy)$")
_NAME = re.compile(r"[^a-zA-Z0-9_]")


class BridgeCollector(Collector):
    """Turns one reading of the key figures into metric families."""

    def __init__(self, figures: Figures, latency: ConnectorLatency) -> None:
        self._figures = figures
        self._latency = latency

    def collect(self) -> Iterator[Metric]:
        seen: set[str] = set()
        for metric in self._collect(self._figures()):
            if metric.name not in seen:  # a counter may never shadow an explicit metric
                seen.add(metric.name)
                yield metric

    def _collect(self, f: dict[str, Any]) -> Iterator[Metric]:
        mqtt, connector, commands = f["mqtt"], f["connector"], f["commands"]

        info = GaugeMetricFamily("bridge_info", "The bridge's version", labels=["version"])
        info.add_metric([f["version"]], 1)
        yield info
        yield _gauge(
            "bridge_ready",
            "1 when start-up is done, MQTT is connected and the "
            "Connector channel is healthy (what /readyz says)",
            f["ready"],
        )
        yield _gauge("bridge_uptime_seconds", "Seconds since the bridge started", f["uptime"])

        # notifications: Connector -> MQTT
        yield _counter(
            "bridge_notifications_received",
            "Notifications received from the Connector",
            f["notifications"]["received"],
        )
        yield _counter(
            "bridge_notifications_published",
            "Notifications published on value topics",
            f["notifications"]["published"],
        )
        yield _counter(
            "bridge_notifications_bad",
            "Notifications ignored (no endpoint or path, bad payload, topic too long)",
            f["notifications"]["bad"],
        )

        # commands: MQTT -> Connector
        yield _counter(
            "bridge_commands_received", "Commands received (set, post, get)", commands["received"]
        )
        by_verb = CounterMetricFamily(
            "bridge_commands",
            "Commands answered, by verb and outcome (ok, failed, timeout, busy)",
            labels=["verb", "outcome"],
        )
        for verb, outcomes in sorted(commands["by_verb"].items()):
            for outcome, n in sorted(outcomes.items()):
                by_verb.add_metric([verb, outcome], n)
        yield by_verb
        outcome = CounterMetricFamily(
            "bridge_command_replies", "Command replies by result", labels=["result"]
        )
        outcome.add_metric(["ok"], commands["ok"])
        outcome.add_metric(["failed"], commands["failed"])
        yield outcome
        yield _gauge(
            "bridge_commands_under_way",
            "Commands waiting for the device's answer",
            commands["under_way"],
        )
        yield _gauge(
            "bridge_commands_waiting",
            "Commands and requests queued for a worker",
            commands["waiting"],
        )

        # async responses
        yield _gauge(
            "bridge_async_pending",
            "Async responses the Connector client waits for",
            connector["async_pending"],
        )
        yield _counter(
            "bridge_async_timeouts",
            "Calls the bridge gave up waiting for",
            connector["async_timeouts"],
        )

        # MQTT side
        yield _gauge("bridge_mqtt_connected", "1 while connected to the broker", mqtt["connected"])
        yield _counter(
            "bridge_mqtt_connects", "Successful connections to the broker", mqtt["connects"]
        )
        yield _counter(
            "bridge_mqtt_reconnects",
            "Connections to the broker after the first",
            mqtt["reconnects"],
        )
        yield _counter("bridge_mqtt_disconnects", "Broker connections lost", mqtt["disconnects"])
        yield _counter(
            "bridge_mqtt_published", "Messages handed to the broker connection", mqtt["published"]
        )
        yield _counter(
            "bridge_mqtt_received", "Messages received from the broker", mqtt["received"]
        )
        yield _gauge(
            "bridge_mqtt_buffer_messages",
            "Messages in the outbox (kept while the broker is away)",
            mqtt["buffer"],
        )
        yield _counter(
            "bridge_mqtt_buffered", "Messages that went through the outbox", mqtt["buffered"]
        )
        dropped = CounterMetricFamily(
            "bridge_mqtt_dropped", "Messages dropped, by reason", labels=["reason"]
        )
        for reason, n in sorted(mqtt["dropped"].items()):
            dropped.add_metric([reason], n)
        yield dropped

        # Connector side
        yield _gauge(
            "bridge_connector_reachable",
            "1 while the Connector answers",
            connector["reachable"],
        )
        yield _counter("bridge_connector_pulls", "Long polls made", connector["pulls"])
        yield _counter(
            "bridge_connector_channel_failures",
            "Long polls that failed",
            connector["channel_failures"],
        )
        states = GaugeMetricFamily(
            "bridge_connector_state",
            "The Connector's reachability: 1 for the current state (up, down, refused, "
            "taken_over, revoked, deleted, rejected)",
            labels=["state"],
        )
        for state in get_args(ConnectorState):
            states.add_metric([state], 1.0 if connector["state"] == state else 0.0)
        yield states
        yield _counter(
            "bridge_connector_outages",
            "Times the Connector became unreachable or refused the access key",
            connector["outages"],
        )
        yield _counter(
            "bridge_connector_recoveries",
            "Times the Connector answered again after being down or refusing",
            connector["recoveries"],
        )
        histogram = HistogramMetricFamily(
            "bridge_connector_request_duration_seconds",
            "Connector REST call latency (request sent to whole answer read), long polls left out",
            labels=["method", "route"],
        )
        for (method, route), snap in self._latency.snapshots().items():
            buckets = [("+Inf" if math.isinf(le) else repr(le), float(n)) for le, n in snap.buckets]
            histogram.add_metric([method, route], buckets, snap.sum)
        yield histogram

        # endpoints
        endpoints = GaugeMetricFamily("bridge_endpoints", "Endpoints by state", labels=["state"])
        for state, n in sorted(f["endpoints"].items()):
            endpoints.add_metric([state], n)
        yield endpoints

        # every other counter the parts keep
        for name, value in sorted(f["counters"].items()):
            if name in _EXPLICIT or _PER_VERB.match(name):
                continue
            metric = "bridge_" + _NAME.sub("_", name)
            yield _counter(metric, HELP.get(name, f"Bridge counter {name}"), value)


def _gauge(name: str, text: str, value: float | bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=float(value))


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=float(value))


def make_registry(figures: Figures, latency: ConnectorLatency) -> CollectorRegistry:
    """A registry of its own (not the library's global one): the bridge's collector,
    the process and the platform collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BridgeCollector(figures, latency))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The body and content type of a ``/metrics`` answer."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
