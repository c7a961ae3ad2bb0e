"""The bridge's key figures, read in one go from the parts that already keep them.

Nothing here sits on the hot path. The parts count what they do in the places they
already have (:class:`~bridge.core.counters.Counters`, the MQTT link's ``stats``, the
Connector client's long-poll statistics and pending async ids, the registry); this
module *reads* them when somebody asks: a Prometheus scrape
(:mod:`bridge.extensions.health.prometheus`), the periodic health message on MQTT and the
``/readyz`` answer (:mod:`bridge.extensions.health.extension`). The only thing measured here is
the latency of the Connector's HTTP calls (:class:`ConnectorLatency`: a timer around
each REST call, one bisect and one short lock per call, none per notification).

:func:`key_figures` is the one reading: a JSON-ready document, the retained
``<prefix>/$bridge/health`` message as it is, and what the Prometheus collector turns
into metrics.
"""

from __future__ import annotations

import bisect
import functools
import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from bridge import __version__
from bridge.core.events import ConnectorStateChanged

if TYPE_CHECKING:  # the extensions import this module
    from bridge.extensions.base import BridgeContext

# Seconds. A Connector call answers in milliseconds on a LAN and in a few hundred over
# the internet; the top buckets catch the calls that run into the request time-out.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_COMMAND_COUNTER = re.compile(r"^commands_(set|post|get)_(ok|failed|timeout|busy)$")


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Cumulative bucket counts (``le`` upper bound -> count, +Inf last), sum and count."""

    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int

    def quantile(self, q: float) -> float | None:
        """An estimate of the ``q`` quantile, interpolated within its bucket the way
        Prometheus' ``histogram_quantile`` does; None without observations."""
        if self.count == 0:
            return None
        rank = q * self.count
        lower, below = 0.0, 0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):
                    return lower  # beyond the last finite bucket: its bound is all we know
                inside = cumulative - below
                share = (rank - below) / inside if inside else 0.0
                return lower + (le - lower) * share
            lower, below = le, cumulative
        return lower


class LatencyHistogram:
    """A fixed-bucket histogram of seconds; thread-safe, one short lock per observation."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("buckets must be distinct and increasing")
        self.bounds = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        i = bisect.bisect_left(self.bounds, seconds)
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, out = 0, []
        for le, n in zip((*self.bounds, math.inf), counts, strict=True):
            cumulative += n
            out.append((le, cumulative))
        return HistogramSnapshot(tuple(out), total, cumulative)


def route_of(path: str) -> str:
    """The kind of Connector call a URL path is, for a metric label of few values.

    ``/v2/endpoints`` -> ``endpoints``; ``/v2/endpoints/{ep}`` -> ``endpoint``;
    ``/v2/endpoints/{ep}/{res...}`` -> ``resource``; ``/v2/subscriptions...`` ->
    ``subscriptions``; ``/v2/notification/...`` -> ``notification``; today's
    ``/v2/device-requests/{id}`` (reads, writes, executes) -> ``device-requests`` and
    ``/v3/devices...`` (the listing) -> ``devices``; else ``other``.
    Called for every REST call: the path is cut with partition, never fully split.
    """
    head, _, rest = path.split("?", 1)[0].strip("/").partition("/")
    if head[:1] == "v" and head[1:].isdigit():
        head, _, rest = rest.strip("/").partition("/")
    if head == "endpoints":
        rest = rest.strip("/")
        return "endpoints" if not rest else "resource" if "/" in rest else "endpoint"
    if head in ("subscriptions", "notification", "device-requests", "devices"):
        return head
    return "other"


def _url_path(url: str) -> str:
    """The path of an absolute URL (query and fragment cut off), without urlsplit's cost."""
    scheme = url.find("://")
    slash = url.find("/", scheme + 3) if scheme >= 0 else url.find("/")
    if slash < 0:
        return "/"
    path = url[slash:]
    for sep in "?#":
        cut = path.find(sep)
        if cut >= 0:
            path = path[:cut]
    return path


class ConnectorLatency:
    """Latency of the Connector's HTTP calls, by method and route: the time each call to
    the client's HTTP session takes, from sending the request to having the whole answer
    (or the error).

    It wraps the ``request`` method of the client's session (a ``requests.Session`` or the
    client's own lean session: both have it), which every REST call of the client goes
    through. Long-poll pulls are left out: they are held open by design, so their duration
    says nothing about the Connector's speed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._histograms: dict[tuple[str, str], LatencyHistogram] = {}

    def attach(self, client: Any) -> bool:
        """Measure the calls of ``client`` (the Connector port, or a client);
        False when it has no session to measure."""
        session = getattr(client, "session", None) or getattr(client, "_session", None)
        request = getattr(session, "request", None)
        if not callable(request):
            return False
        observe = self.observe

        @functools.wraps(request)
        def timed(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return request(method, url, *args, **kwargs)
            finally:
                observe(method, url, time.perf_counter() - started)

        session.request = timed  # type: ignore[union-attr]
        return True

    def observe(self, method: str, url: str, seconds: float) -> None:
        path = _url_path(url)
        if path.endswith("/notification/pull"):
            return
        key = (method.upper(), route_of(path))
        histogram = self._histograms.get(key)
        if histogram is None:
            with self._lock:
                histogram = self._histograms.setdefault(key, LatencyHistogram())
        histogram.observe(seconds)

    def snapshots(self) -> dict[tuple[str, str], HistogramSnapshot]:
        with self._lock:
            items = list(self._histograms.items())
        return {key: h.snapshot() for key, h in sorted(items)}

    def overall(self) -> HistogramSnapshot:
        """Every call in one histogram (the health message's summary)."""
        parts = list(self.snapshots().values())
        if not parts:
            return LatencyHistogram().snapshot()
        buckets = tuple(
            (le, sum(p.buckets[i][1] for p in parts)) for i, (le, _) in enumerate(parts[0].buckets)
        )
        return HistogramSnapshot(buckets, sum(p.sum for p in parts), sum(p.count for p in parts))


@dataclass
class Watch:
    """What the health extension observes itself; everything else is read from the parts.

    ``connector`` is the last :class:`~bridge.core.events.ConnectorStateChanged` (the Connector
    side's reachability: ``up``, ``down``, ``refused``; None before the first answer).
    """

    latency: ConnectorLatency = field(default_factory=ConnectorLatency)
    started: threading.Event = field(default_factory=threading.Event)
    connector: ConnectorStateChanged | None = None

    def connector_changed(self, event: ConnectorStateChanged) -> None:
        self.connector = event


def connector_health(watch: Watch) -> tuple[bool, str | None]:
    """Is the Connector reachable now? ``(True, None)`` or ``(False, reason)``."""
    event = watch.connector
    if event is None:
        return False, "not reached yet"
    if event.state == "up":
        return True, None
    what = {
        "refused": "refuses the access key",
        "taken_over": "gave the notification channel to another consumer",
        "revoked": "revoked the access key",
        "deleted": "deleted the notification channel",
        "rejected": "refused the notification channel",
    }.get(event.state, "unreachable")
    return False, f"{what} since {_iso(event.since)}: {event.detail}"


def readiness(ctx: BridgeContext, watch: Watch) -> list[str]:
    """Why the bridge is not ready (empty: ready). Ready = start-up done, connected to
    the broker, and the Connector reachable."""
    reasons = []
    if ctx.cluster is not None:
        # A replica of a group: a follower serves with its lease and the broker; the
        # leader also needs what a single bridge needs (start-up done, channel up).
        reasons.extend(ctx.cluster.readiness())
        if not ctx.cluster.leading:
            if not ctx.mqtt.connected:
                reasons.append("not connected to the MQTT broker")
            return reasons
    if not watch.started.is_set():
        reasons.append("start-up not finished")
    if not ctx.mqtt.connected:
        reasons.append("not connected to the MQTT broker")
    ok, why = connector_health(watch)
    if not ok and why:
        reasons.append(f"Connector {why}")
    return reasons


def commands_by_verb(counters: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """``commands_<verb>_<outcome>`` counters as ``{verb: {outcome: n}}``."""
    out: dict[str, dict[str, int]] = {}
    for name, value in counters.items():
        m = _COMMAND_COUNTER.match(name)
        if m:
            out.setdefault(m.group(1), {})[m.group(2)] = value
    return out


def _process() -> dict[str, Any]:
    rss: int | None = None
    try:
        with open("/proc/self/statm", "rb") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    return {
        "pid": os.getpid(),
        "threads": threading.active_count(),
        "memory_rss_bytes": rss,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="seconds")


def _public_url(url: str) -> str:
    """``url`` without user information (``https://user:pw@host`` -> ``https://host``)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def key_figures(ctx: BridgeContext, watch: Watch) -> dict[str, Any]:
    """The bridge's figures now, as a JSON-ready document (the health message)."""
    counters = ctx.counters.snapshot()
    mqtt = dict(ctx.mqtt.stats)
    channel = ctx.info.get("channel", ctx.settings.notification_channel)
    poll = ctx.port.channel_stats() if channel in ("longpoll", "websocket") else {}
    reachable, why = connector_health(watch)
    reasons = readiness(ctx, watch)
    summary = watch.latency.overall()
    state = watch.connector
    extensions = {name: fn() for name, fn in ctx.info.get("extensions", {}).items()}
    commands_info = extensions.get("commands", {})
    now = time.time()
    return {
        "state": "online",
        **(
            {}
            if ctx.cluster is None
            else {"role": ctx.cluster.role, "cluster": ctx.cluster.figures()}
        ),
        "ready": not reasons,
        "reasons": reasons,
        "version": __version__,
        "time": _iso(now),
        "uptime": round(now - ctx.started_at, 3),
        "process": _process(),
        "mqtt": {
            "connected": ctx.mqtt.connected,
            "protocol": ctx.settings.mqtt_protocol,
            "connects": mqtt.get("connects", 0),
            "reconnects": max(mqtt.get("connects", 0) - 1, 0),
            "disconnects": mqtt.get("disconnects", 0),
            "published": mqtt.get("published", 0) + mqtt.get("published_from_callbacks", 0),
            "received": mqtt.get("received", 0),
            "buffer": ctx.mqtt.outbox_size(),
            "buffered": mqtt.get("buffered", 0),
            "dropped": {
                "buffer_full": mqtt.get("dropped_buffer_full", 0),
                "errors": mqtt.get("dropped_errors", 0),
            },
        },
        "connector": {
            "url": _public_url(ctx.settings.connector_url),
            "api": ctx.info.get("connector_api"),
            "channel": channel,
            "state": state.state if state is not None else None,
            "since": _iso(state.since) if state is not None else None,
            "reachable": reachable,
            "reason": why,
            "failures": state.failures if state is not None else 0,
            "outages": counters.get("connector_outages", 0),
            "recoveries": counters.get("connector_recoveries", 0),
            "pulls": poll.get("pulls", 0),
            "channel_failures": poll.get("failures", poll.get("reconnects", 0)),
            "duplicates": ctx.port.duplicates(),
            "async_pending": ctx.port.pending_count(),
            "async_timeouts": counters.get("async_timeouts", 0),
            "requests": summary.count,
            "latency_ms": {
                "mean": _ms(summary.sum / summary.count) if summary.count else None,
                "p50": _ms(summary.quantile(0.5)),
                "p95": _ms(summary.quantile(0.95)),
            },
        },
        "endpoints": ctx.registry.counts(),
        "notifications": {
            "received": counters.get("notifications_received", 0),
            "published": counters.get("notifications_published", 0),
            "bad": counters.get("notifications_bad", 0),
        },
        "commands": {
            "received": counters.get("commands_received", 0),
            "ok": counters.get("commands_ok", 0),
            "failed": counters.get("commands_failed", 0),
            "busy": counters.get("commands_busy", 0),
            "under_way": commands_info.get("under_way", 0),
            "waiting": ctx.commands.pending(),
            "by_verb": commands_by_verb(counters),
        },
        "counters": counters,
    }
