"""Prometheus metrics: the pure parts, then ``/metrics`` of a running bridge.

The end-to-end tests run a real bridge between Mosquitto and the emulator (drift off, so
that only what the test causes happens), do known things (a burst of notifications,
commands that succeed and fail, a broker outage with a small buffer) and compare the
metrics before and after with what was done.
"""

from __future__ import annotations

import contextlib
import math
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from bridge import __version__
from bridge.extensions.health.figures import LatencyHistogram, _url_path, route_of
from bridge.service.controller import Bridge
from bridge.simulator import Emulator
from tests.support.bridge_harness import bridge_settings, command, running_bridge, user
from tests.support.broker import MosquittoBroker
from tests.support.clients import wait_until
from tests.support.listening import wait_listening
from tests.support.mqtt_user import MqttUser

pytestmark = pytest.mark.both_dialects

parser = pytest.importorskip(
    "prometheus_client.parser", reason="prometheus-client renders /metrics"
)

WAIT = 20.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# ---------------------------------------------------------------------- the pure parts


def test_histogram_counts_cumulatively_and_estimates_quantiles_like_prometheus() -> None:
    h = LatencyHistogram([0.1, 0.2, 0.4])
    for seconds in (0.05, 0.1, 0.15, 0.15, 0.3, 0.3, 0.3, 0.3, 1.0, 5.0):
        h.observe(seconds)
    snap = h.snapshot()
    # le is inclusive, as in Prometheus: 0.1 falls into the 0.1 bucket
    assert snap.buckets == ((0.1, 2), (0.2, 4), (0.4, 8), (math.inf, 10))
    assert snap.count == 10 and snap.sum == pytest.approx(7.65)
    # histogram_quantile: rank q*count, linear inside the bucket that holds it
    assert snap.quantile(0.5) == pytest.approx(0.2 + (0.4 - 0.2) * (5 - 4) / 4)
    assert snap.quantile(0.1) == pytest.approx(0.1 * 1 / 2)
    assert snap.quantile(0.95) == 0.4  # in +Inf: the highest finite bound
    assert LatencyHistogram().snapshot().quantile(0.5) is None
    with pytest.raises(ValueError):
        LatencyHistogram([0.2, 0.1])


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v2/endpoints", "endpoints"),
        ("/v2/endpoints?type=Light", "endpoints"),
        ("/v2/endpoints/node-001", "endpoint"),
        ("/v2/endpoints/node-001/3303/0/5700?noResp=true", "resource"),
        ("/v2/subscriptions/node-001/3303/0/5700", "subscriptions"),
        ("/v2/subscriptions", "subscriptions"),
        ("/v2/notification/callback", "notification"),
        ("/", "other"),
        ("/rest-versions", "other"),
        ("/v2/device-requests/015f3850a657000000000001001002ab?async-id=a1", "device-requests"),
        ("/v3/devices?limit=1000&state__eq=registered", "devices"),
        ("/v3/devices/015f3850a657000000000001001002ab", "devices"),
    ],
)
def test_route_labels_are_few_and_name_the_kind_of_call(path: str, route: str) -> None:
    assert route_of(path) == route


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/v2/endpoints/node-001/3303/0/5700?noResp=true",
        "https://connector.example:443/v2/notification/pull",
        "http://host/",
        "http://host",
        "http://host?x=1",
        "http://host/a#frag?not-query",
        "http://host/rest-versions#x",
    ],
)
def test_url_path_is_what_urlsplit_gives(url: str) -> None:
    assert _url_path(url) == (urlsplit(url).path or "/")


# ------------------------------------------------------------------ a running bridge


def scrape(port: int) -> tuple[Samples, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        body, content_type = resp.read().decode(), resp.headers["Content-Type"]
    samples: Samples = {}
    for family in parser.text_string_to_metric_families(body):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    return samples, content_type


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class Stack:
    broker: MosquittoBroker
    emu: Emulator
    bridge: Bridge
    user: MqttUser

    @property
    def port(self) -> int:
        health = next(e for e in self.bridge.extensions if e.name == "health")
        assert health.server is not None
        return health.server.port


@pytest.fixture
def quiet_emulator() -> Iterator[Emulator]:
    """The default scenario without drift: only what a test causes happens."""
    with Emulator(token="test-token", pull_timeout=1.0, drift=False) as emu:
        yield emu


@contextlib.contextmanager
def start_stack(broker: MosquittoBroker, emu: Emulator, **overrides: object) -> Iterator[Stack]:
    settings = bridge_settings(
        emu, broker, health_port=0, health_host="127.0.0.1", health_interval=0, **overrides
    )
    with user(broker, "5", "connector/#") as u, running_bridge(settings) as bridge:
        wait_listening(u)
        yield Stack(broker, emu, bridge, u)


@pytest.fixture
def stack(broker: MosquittoBroker, quiet_emulator: Emulator) -> Iterator[Stack]:
    # No reads of its own in the background: every Connector call is the test's.
    with start_stack(broker, quiet_emulator, homeassistant=False, initial_read=False) as s:
        yield s


def test_metrics_count_notifications_commands_and_connector_latency(
    stack: Stack, dialect: str
) -> None:
    before, content_type = scrape(stack.port)
    assert content_type.startswith("text/plain; version=")  # the Prometheus text format
    assert value(before, "bridge_info", version=__version__) == 1
    assert value(before, "bridge_ready") == 1 and value(before, "bridge_mqtt_connected") == 1
    assert value(before, "bridge_connector_state", state="up") == 1
    assert value(before, "bridge_endpoints", state="online") == len(stack.emu.endpoints())
    assert value(before, "process_resident_memory_bytes") > 0

    topic = "connector/node-001/3303/0/5700"
    seen = len(stack.user.on(topic))
    sent = stack.emu.burst(50, ep="node-001", path="/3303/0/5700")
    stack.user.wait_for(lambda m: m.topic == topic, WAIT, count=seen + sent)

    assert command(stack.user, "connector/light-001/3311/0/5850/set", "1")["ok"]
    assert command(stack.user, "connector/node-001/3303/0/5700/get")["ok"]
    assert not command(stack.user, "connector/nobody/3311/0/5850/set", "1")["ok"]
    # The light is observed: switching it on is one more notification.
    stack.user.wait_topic("connector/light-001/3311/0/5850", WAIT, payload=b"1")
    notified = sent + 1
    counters = stack.bridge.ctx.counters
    base = value(before, "bridge_notifications_published_total")
    assert wait_until(lambda: counters.get("notifications_published") - base >= notified, WAIT)
    base_received = value(before, "bridge_notifications_received_total")
    # (the health extension counts the same event just after the values extension)
    assert wait_until(
        lambda: counters.get("notifications_received") - base_received >= notified, WAIT
    )

    after, _ = scrape(stack.port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("bridge_notifications_received_total") == notified
    assert delta("bridge_notifications_published_total") == notified
    assert value(after, "bridge_notifications_bad_total") == 0
    assert delta("bridge_commands_received_total") == 3
    assert delta("bridge_command_replies_total", result="ok") == 2
    assert delta("bridge_command_replies_total", result="failed") == 1
    # the unknown endpoint is refused by the bridge itself: one PUT and one GET reached
    # the Connector (on today's service, two device requests: POSTs)
    if dialect == "legacy":
        calls = {("PUT", "resource"): 1, ("GET", "resource"): 1}
    else:
        calls = {("POST", "device-requests"): 2}
    for (method, route), count in calls.items():
        labels = {"method": method, "route": route}
        assert delta("bridge_connector_request_duration_seconds_count", **labels) == count
        assert value(after, "bridge_connector_request_duration_seconds_sum", **labels) > 0
        buckets = sorted(
            (float(dict(series)["le"]), v)
            for (name, series), v in after.items()
            if name == "bridge_connector_request_duration_seconds_bucket"
            and labels.items() <= dict(series).items()
        )
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and buckets[-1] == (math.inf, count)
    assert value(after, "bridge_async_pending") == 0  # every answer came
    assert value(after, "bridge_mqtt_dropped_total", reason="buffer_full") == 0


def test_commands_by_verb_and_outcome(stack: Stack) -> None:
    assert command(stack.user, "connector/light-001/3311/0/5850/set", "1")["ok"]
    if not any(k.startswith("commands_set_") for k in stack.bridge.ctx.counters.snapshot()):
        pytest.skip("the commands extension does not count by verb yet (requested of it)")
    before, _ = scrape(stack.port)
    assert command(stack.user, "connector/light-001/3311/0/5850/set", "0")["ok"]
    assert command(stack.user, "connector/light-001/3/0/4/post")["ok"]
    assert not command(stack.user, "connector/light-001/3311/0/5850/set", "banana")["ok"]
    after, _ = scrape(stack.port)

    def delta(verb: str, outcome: str) -> float:
        labels = {"verb": verb, "outcome": outcome}
        return value(after, "bridge_commands_total", **labels) - value(
            before, "bridge_commands_total", **labels
        )

    assert delta("set", "ok") == 1
    assert delta("post", "ok") == 1
    assert delta("set", "failed") == 1


def test_buffer_depth_drops_and_reconnects_follow_a_broker_outage(
    broker: MosquittoBroker, quiet_emulator: Emulator
) -> None:
    with start_stack(broker, quiet_emulator, mqtt_buffer=5) as stack:
        emu, port = stack.emu, stack.port
        health = next(e for e in stack.bridge.extensions if e.name == "health")
        broker.stop()
        assert wait_until(lambda: not stack.bridge.mqtt.connected, WAIT)
        sent = emu.burst(20, ep="node-001", path="/3303/0/5700")
        assert wait_until(
            lambda: stack.bridge.ctx.counters.get("notifications_received") >= sent, WAIT
        )
        during, _ = scrape(port)
        assert value(during, "bridge_mqtt_connected") == 0
        assert value(during, "bridge_ready") == 0
        assert value(during, "bridge_mqtt_buffer_messages") == 5  # full: the cap
        assert value(during, "bridge_mqtt_dropped_total", reason="buffer_full") >= sent - 5
        assert health.ready()[0] is False

        broker.start()
        assert wait_until(
            lambda: stack.bridge.mqtt.connected and not stack.bridge.mqtt.outbox_size(), WAIT
        )
        after, _ = scrape(port)
        assert value(after, "bridge_mqtt_reconnects_total") == 1
        assert value(after, "bridge_mqtt_disconnects_total") == 1
        assert value(after, "bridge_mqtt_buffer_messages") == 0
        assert value(after, "bridge_ready") == 1
