"""The emulated Connector service: registry, device requests, subscriptions, channel.

One core speaks one dialect (``api``): ``legacy`` names devices by endpoint name on the
wire; ``current`` by device ID (:mod:`bridge.simulator.identity`), with the name in
``original-ep``, and keeps nothing while no notification channel (callback or WebSocket)
is registered, as the service does. Entry fragments come from the core's
:class:`~bridge.simulator.channel.Encoder`, chosen per dialect and channel options.

Everything here runs on the emulator's single event loop (the HTTP handlers, the timer
task and, through ``run_coroutine_threadsafe``, the Python control calls), so the state
needs no locks. The HTTP layer (:mod:`bridge.simulator.app`) turns requests into calls of
the methods below, which answer with a :class:`Reply`.

Time-driven behaviour (drifting sensors, registration lifetimes, sleeping devices that
wake up) is driven by one timer task over all devices, whatever their number.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import json
import random
import time
from collections import deque
from typing import Any, Literal, NamedTuple

import aiohttp

from bridge.simulator import channel as ch
from bridge.simulator import device_requests as dr
from bridge.simulator import webhook
from bridge.simulator.devices import (
    IPSO_OBJECTS,
    REBOOT_PATH,
    Device,
    DeviceError,
    DeviceTemplate,
    drift_value,
    lwm2m_json,
    resource_from_dict,
)
from bridge.simulator.directory import Directory, QueryError
from bridge.simulator.errors import error_json
from bridge.simulator.faults import Faults
from bridge.simulator.presubs import Rule, mask_for, parse_rules
from bridge.simulator.scenario import Scenario, default_scenario
from bridge.simulator.websocket import COUNTER_NAMES as WS_COUNTER_NAMES
from bridge.simulator.websocket import WebSocketChannel

VERSION_TEXT = "DeviceServer v3.0.0-520\nREST version = v2"
MAX_INFLIGHT = 256  # requests under way to one awake endpoint before 429
TICK = 0.05


class Reply(NamedTuple):
    status: int
    body: bytes = b""
    content_type: str = "text/plain"


def text(status: int, message: str = "") -> Reply:
    return Reply(status, message.encode())


def as_json(status: int, obj: Any) -> Reply:
    return Reply(status, json.dumps(obj).encode(), "application/json")


def api_error(
    status: int, message: str, type_: str | None = None, fields: list[dict[str, str]] | None = None
) -> Reply:
    """A current-dialect error body (see :mod:`bridge.simulator.errors`)."""
    return Reply(status, error_json(status, message, type_, fields), "application/json")


Api = Literal["legacy", "current"]
APIS: tuple[Api, ...] = ("legacy", "current")


class Job(NamedTuple):
    """A request on its way to a device (or waiting for a sleeping one)."""

    verb: str  # GET PUT POST DELETE SUBSCRIBE DELETE-EP
    device: Device
    path: str
    idx: int  # resource index, -1 for object-level paths and endpoint operations
    body: bytes
    aid: str | None  # None: noResp, nobody waits for an answer


_EXPIRE, _WAKE, _REQUESTS_EXPIRE = 0, 1, 2

_EMITTED_KIND = tuple(f"emitted_{k.replace('-', '_')}" for k in ch.KIND_KEYS)

COUNTER_NAMES = (
    "emitted",
    "delivered",
    "retried",
    "dropped",
    "redelivered",
    "transactions",
    "requests",
    "pulls",
    "pulls_empty",
    "pulls_cut",
    "pulls_refused",
    "webhook_posts",
    "callback_puts",  # callback URLs registered (PUT /notification/callback accepted)
    "callback_deletes",  # callback URLs removed
    "async_requests",
    "discarded",
    "device_requests",
    "device_requests_refused",
    "device_request_attempts",
    "device_request_cache_hits",
    "device_request_timeouts",
    "device_request_expired",
    "device_request_removed",
    *WS_COUNTER_NAMES,
    *_EMITTED_KIND,
)


class EmulatorCore:
    """The state and behaviour of one emulated Connector (one access key, one domain)."""

    def __init__(
        self,
        token: str,
        scenario: Scenario | None = None,
        devices: int | None = None,
        *,
        pull_timeout: float = 30.0,
        latency: float = 0.0,
        callback_retry_period: float = 900.0,
        seed: int | None = None,
        drift: bool = True,
        max_pending: int = 1_000_000,
        batch_size: int = 10_000,
        channel_idle_timeout: float = 120.0,
        transaction_quota: int = 10_000,
        api: Api = "legacy",
        expiry_scale: float = 1.0,
    ) -> None:
        if api not in APIS:
            raise ValueError(f"api must be one of {', '.join(APIS)}: {api!r}")
        self.api: Api = api
        if not expiry_scale > 0:
            raise ValueError("expiry_scale must be greater than 0")
        # Device requests expire after expiry-seconds times this (tests: a small share).
        self.expiry_scale = expiry_scale
        self.current = api == "current"
        # Entry fragments of this dialect; a current-dialect channel registered with
        # serialization options brings its own (see set_encoder).
        self.enc = ch.Encoder(self.current)
        self.token = token
        self.scenario = default_scenario() if scenario is None else scenario
        self.pull_timeout = pull_timeout
        self.latency = latency
        self.callback_retry_period = callback_retry_period
        self.drift = drift
        self.channel_idle_timeout = channel_idle_timeout
        self.transaction_quota = transaction_quota
        self.rng = random.Random(seed)
        self.faults = Faults(random.Random(None if seed is None else seed + 1))
        self.outbox = ch.Outbox(max_pending, batch_size)
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.devices: dict[str, Device] = {}  # by endpoint name
        self.by_id: dict[str, Device] = {}  # by device ID
        self.ids: list[str] = []  # every device ID, sorted (the device directory's order)
        # The devices as REST paths name them: by name (legacy) or by device ID (current).
        self.by_ep = self.by_id if self.current else self.devices
        self._generated: list[Device] = []  # drifted round-robin, a slice per tick
        self._featured: list[Device] = []  # named devices, drifted every tick
        self._drift_pos = 0
        self._heap: list[tuple[float, int, int, Device]] = []
        self._seq = 0
        # What devices carried out (verb, endpoint, path, body), when a test asks for it
        # (``Emulator.record_actions``): the count of each command shows duplicates and losses.
        self.actions: list[tuple[str, str, str, bytes]] | None = None
        self._next_id = 1073741824
        self.rules: list[Rule] = []
        self.rules_json: list[Any] = []
        self._rule_masks: dict[tuple[int, DeviceTemplate], int] = {}
        self.callback: dict[str, Any] | None = None
        # The current dialect's one notification channel: "CALLBACK" or "WEB_SOCKET".
        self.channel_kind: str | None = None
        self._channel_gen = 0  # counts deleted channels (their queue must not come back)
        self.ws = WebSocketChannel(self)
        self.directory = Directory(self)
        self.pull_open = False
        self.last_pull_end = -1e18
        self.loop: asyncio.AbstractEventLoop | None = None
        self.http: aiohttp.ClientSession | None = None
        self._webhook_task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._channel_waiters: list[asyncio.Future[None]] = []
        self._generic = DeviceTemplate("Sensor", "Sensor", IPSO_OBJECTS["3303"])
        now = time.monotonic()
        wall = time.time()
        named = {name for name, _ in self.scenario.devices}
        for name, template in self.scenario.endpoints(devices):
            dev = Device(name, template)
            self._add(dev, wall)
            (self._featured if name in named else self._generated).append(dev)
            self._activate(dev, now)
        self.ids = sorted(self.by_id)
        self.endpoint_quota = max(100, len(self.devices))

    def _add(self, dev: Device, wall: float) -> None:
        if self.current:
            dev.ep = dev.id
        dev.created_at = dev.updated_at = wall
        self.devices[dev.name] = dev
        self.by_id[dev.id] = dev

    # --- lifecycle ------------------------------------------------------------------

    async def startup(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.outbox.rebind()
        self.ws.rebind()
        self._channel_waiters.clear()
        self.pull_open = False
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10.0))
        self._ticker = asyncio.create_task(self._tick_forever())
        if self.callback is not None:  # started again: the webhook carries on
            self._start_webhook()

    async def shutdown(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.ws.shutdown(), 2.0)
        for task in (self._ticker, self._webhook_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._ticker = self._webhook_task = None
        if self.http is not None:
            await self.http.close()
            self.http = None

    def now(self) -> float:
        return time.monotonic()

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def snapshot_counters(self) -> dict[str, int]:
        out = dict(self.counters)
        out["dropped"] += self.outbox.dropped
        out["pending"] = len(self.outbox)
        out["endpoints"] = sum(1 for d in self.devices.values() if d.registered)
        out["subscriptions"] = sum(d.subs.bit_count() for d in self.devices.values() if d.subs)
        out["ws_connected"] = int(self.ws.connected)
        out["ws_handshaking"] = self.ws.handshaking
        return out

    def reset_counters(self) -> None:
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)
        self.outbox.dropped = 0

    # --- emitting -------------------------------------------------------------------

    def emit(self, entry: ch.Entry) -> None:
        self.counters["emitted"] += 1
        self.counters[_EMITTED_KIND[entry[0]]] += 1
        if self._discarding():
            self.counters["discarded"] += 1
            return
        self.outbox.put(entry)

    def _discarding(self) -> bool:
        """Current dialect without a notification channel: the service keeps nothing."""
        return self.current and self.channel_kind is None

    def notify(self, dev: Device, index: int) -> None:
        """The device's value at ``index`` changed: a notification if it is observed."""
        if not dev.subs >> index & 1:
            return
        spec = dev.template.resources[index]
        value = dev.values[index]
        self.emit(self.enc.notification(dev.ep, dev.endpoint_name, spec.path, value, spec.ct))
        self._cache(dev, index, value)

    def _cache(self, dev: Device, index: int, value: bytes) -> None:
        if dev.cache is None:
            dev.cache = {}
        dev.cache[index] = value

    # --- registry -------------------------------------------------------------------

    def template_for(self, ept: str) -> DeviceTemplate:
        templates = self.scenario.templates
        if ept in templates:
            return templates[ept]
        for tpl in templates.values():
            if tpl.ept == ept:
                return tpl
        return self._generic

    def _activate(self, dev: Device, now: float) -> None:
        """Mark registered, start the lifetime and the wake cycle (no message)."""
        dev.registered = True
        self._refresh_lifetime(dev, now)
        if dev.q:
            dev.awake_until = 0.0
            if dev.queue is None:
                dev.queue = deque()
            self._schedule(dev, _WAKE, now + dev.template.wake_interval)
        if self.rules:
            dev.subs = self._presub_mask(dev)

    def _refresh_lifetime(self, dev: Device, now: float) -> None:
        if dev.lifetime:
            self._schedule(dev, _EXPIRE, now + dev.lifetime)
        else:
            dev.expires_at = 0.0

    def _schedule(self, dev: Device, kind: int, when: float) -> None:
        if kind == _EXPIRE:
            dev.expires_at = when
        else:
            dev.wake_at = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, dev))

    def register(
        self,
        ep: str,
        ept: str = "Sensor",
        resources: list[dict[str, Any]] | None = None,
        q: bool = False,
        lifetime: float | None = None,
        endpoint_name: str | None = None,
    ) -> None:
        """A device (re-)registers: a ``registrations`` entry, pre-subscriptions applied.
        ``endpoint_name``: the name it registers with, when not ``ep`` (today's service
        may hold two devices of one name: a device enrolled again gets a new ID)."""
        if not ep or not isinstance(ep, str):
            raise ValueError("endpoint name must be a non-empty string")
        if resources is not None:
            template = DeviceTemplate(ept, ept, [resource_from_dict(r) for r in resources])
        else:
            existing = self.devices.get(ep)
            template = (
                existing.template
                if existing is not None and existing.ept == ept
                else self.template_for(ept)
            )
        dev = self.devices.get(ep)
        if dev is None:
            dev = Device(ep, template, ept=ept, q=q, lifetime=lifetime)
            if endpoint_name:
                dev.endpoint_name = endpoint_name
            self._add(dev, time.time())
            bisect.insort(self.ids, dev.id)
            self._featured.append(dev)
        else:
            self._drop_queue(dev)
            dev.template, dev.ept, dev.q, dev.lifetime = template, ept, q, lifetime
            dev.reset_values()
            dev.cache = None
        dev.subs = 0
        self._activate(dev, self.now())
        self._emit_registration(ch.REGISTRATION, dev)
        self._contact(dev)

    def _emit_registration(self, kind: int, dev: Device) -> None:
        dev.updated_at = time.time()
        self.emit(
            self.enc.registration(
                kind,
                dev.ep,
                dev.endpoint_name,
                dev.ept,
                dev.q,
                dev.template.registration_resources_json,
            )
        )

    def device(self, ep: str) -> Device:
        """A device by endpoint name, or by device ID (control calls and admin routes)."""
        dev = self.devices.get(ep) or self.by_id.get(ep)
        if dev is None:
            raise KeyError(f"unknown endpoint {ep!r}")
        return dev

    def device_id(self, ep: str) -> str:
        return self.device(ep).id

    def registered_device(self, ep: str) -> Device:
        dev = self.device(ep)
        if not dev.registered:
            raise KeyError(f"endpoint {ep!r} is not registered")
        return dev

    def update(self, ep: str) -> None:
        dev = self.registered_device(ep)
        self._refresh_lifetime(dev, self.now())
        self._emit_registration(ch.REG_UPDATE, dev)
        self._contact(dev)

    def deregister(self, ep: str) -> None:
        self._unregister(self.registered_device(ep), ch.DEREGISTRATION)

    def expire(self, ep: str) -> None:
        self._unregister(self.registered_device(ep), ch.EXPIRED)

    def _unregister(self, dev: Device, kind: int) -> None:
        dev.registered = False
        dev.subs = 0
        dev.cache = None
        dev.expires_at = dev.wake_at = 0.0
        self._drop_queue(dev)
        dev.updated_at = time.time()
        self.emit(self.enc.gone(kind, dev.ep, dev.endpoint_name))
        self._drop_requests(dev)

    def _drop_queue(self, dev: Device) -> None:
        """Requests waiting for a device that goes away are answered 410."""
        if dev.queue:
            jobs = list(dev.queue)
            dev.queue.clear()
            for job in jobs:
                dev.inflight -= 1
                if job.aid is not None:
                    self.emit(self.enc.async_response(job.aid, 410, error="GONE"))

    def wake(self, ep: str) -> None:
        self._wake(self.registered_device(ep), self.now())

    def _wake(self, dev: Device, now: float) -> None:
        """A sleeping device wakes: it updates its registration and serves its queue."""
        dev.awake_until = now + dev.template.awake_time
        self._refresh_lifetime(dev, now)
        self._emit_registration(ch.REG_UPDATE, dev)
        if dev.queue:
            jobs = list(dev.queue)
            dev.queue.clear()
            for job in jobs:
                self._dispatch(job)
        if dev.q:
            self._schedule(dev, _WAKE, now + dev.template.wake_interval)
        self._contact(dev)

    def set_value(self, ep: str, path: str, value: bytes) -> None:
        dev = self.device(ep)
        index = dev.template.index.get(path)
        if index is None:
            raise KeyError(f"{ep} has no resource {path}")
        dev.values[index] = value
        if dev.registered:
            self.notify(dev, index)

    def get_value(self, ep: str, path: str) -> bytes:
        dev = self.device(ep)
        index = dev.template.index.get(path)
        if index is None:
            raise KeyError(f"{ep} has no resource {path}")
        return dev.values[index]

    def registered_names(self) -> list[str]:
        return [name for name, dev in self.devices.items() if dev.registered]

    def subscription_pairs(self) -> set[tuple[str, str]]:
        return {
            (dev.name, path)
            for dev in self.devices.values()
            if dev.subs
            for path in dev.subscribed_paths()
        }

    async def burst(
        self, n: int, ep: str | None = None, path: str | None = None, size: int | None = None
    ) -> int:
        """Emit ``n`` notifications as fast as possible; payloads count up (zero-padded
        to ``size`` digits when given). Without ``ep``/``path`` they go round the
        observed resources (or, with no subscription at all, every observable one)."""
        if n < 0:
            raise ValueError("n must not be negative")
        targets = self._burst_targets(ep, path)
        if not targets:
            raise ValueError("no observable resource to notify")
        width = size or 0
        start = self.counters["emitted_notifications"]
        chunk = 5_000
        done = 0
        ntargets = len(targets)
        b64 = ch.b64
        kind = ch.NOTIFICATION
        while done < n:
            entries: list[ch.Entry] = []
            meta = self.enc.meta  # (a new channel may bring its own)
            plain = meta is ch.no_meta
            for k in range(done, min(n, done + chunk)):
                dev, index, prefix = targets[k % ntargets]
                value = f"{start + k:0{width}d}".encode()
                dev.values[index] = value
                if plain:
                    entries.append((kind, f'{prefix}{b64(value)}","max-age":60}}'))
                else:
                    entries.append((kind, f'{prefix}{b64(value)}","max-age":60{meta()}}}'))
            if self._discarding():
                self.counters["discarded"] += len(entries)
            else:
                self.outbox.put_many(entries)
            self.counters["emitted"] += len(entries)
            self.counters["emitted_notifications"] += len(entries)
            done += len(entries)
            if done < n:
                await asyncio.sleep(0)  # let pulls stream while a big burst is built
        return n

    def _burst_targets(self, ep: str | None, path: str | None) -> list[tuple[Device, int, str]]:
        devices = (
            [self.registered_device(ep)]
            if ep is not None
            else [d for d in self.devices.values() if d.registered]
        )
        any_subs = any(d.subs for d in devices)
        targets = []
        for dev in devices:
            for i, spec in enumerate(dev.template.resources):
                if path is not None:
                    if spec.path != path:
                        continue
                elif not spec.obs or (any_subs and not dev.subs >> i & 1):
                    continue
                prefix = self.enc.notification_prefix(dev.ep, dev.endpoint_name, spec.path, spec.ct)
                targets.append((dev, i, prefix))
        if path is not None and not targets:
            raise KeyError(f"no resource {path} on {ep or 'any endpoint'}")
        return targets

    # --- time-driven behaviour --------------------------------------------------------

    async def _tick_forever(self) -> None:
        next_drift = self.now() + self.scenario.drift_interval
        while True:
            await asyncio.sleep(TICK)
            now = self.now()
            self._run_due(now)
            if self.drift and now >= next_drift:
                next_drift = now + self.scenario.drift_interval
                self._drift_step()

    def _run_due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, kind, dev = heapq.heappop(heap)
            if not dev.registered:
                continue
            if kind == _EXPIRE and dev.expires_at == when:
                self._unregister(dev, ch.EXPIRED)
            elif kind == _WAKE and dev.wake_at == when and dev.q:
                self._wake(dev, now)
            elif kind == _REQUESTS_EXPIRE:
                self._expire_requests(dev, now)

    def _drift_step(self) -> None:
        for dev in self._featured:
            self._drift_device(dev)
        gen = self._generated
        if not gen:
            return
        budget = self.scenario.drift_budget
        visited = 0
        while budget > 0 and visited < len(gen):
            dev = gen[self._drift_pos % len(gen)]
            self._drift_pos += 1
            visited += 1
            budget -= self._drift_device(dev)

    def _drift_device(self, dev: Device) -> int:
        if not dev.registered:
            return 0
        resources = dev.template.resources
        for i in dev.template.drift_indexes:
            dev.values[i] = drift_value(resources[i], dev.values[i], self.rng)
            if dev.subs >> i & 1:
                self.notify(dev, i)
        return len(dev.template.drift_indexes) or 1

    # --- the notification channel -----------------------------------------------------

    def channel_ready(self) -> bool:
        if self.current:
            return self.channel_kind is not None
        return (
            self.callback is not None
            or self.pull_open
            or self.now() - self.last_pull_end < self.channel_idle_timeout
        )

    def pull_started(self) -> None:
        self.pull_open = True
        self.count("pulls")
        self._wake_channel_waiters()

    def _wake_channel_waiters(self) -> None:
        for fut in self._channel_waiters:
            if not fut.done():
                fut.set_result(None)
        self._channel_waiters.clear()

    def pull_ended(self) -> None:
        self.pull_open = False
        self.last_pull_end = self.now()

    async def wait_channel(self, timeout: float) -> bool:
        if self.channel_ready():
            return True
        assert self.loop is not None
        fut: asyncio.Future[None] = self.loop.create_future()
        self._channel_waiters.append(fut)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(fut, timeout)
        return self.channel_ready()

    async def set_callback(self, body: bytes) -> Reply:
        try:
            url, headers = webhook.parse_callback(body)
            options = self._channel_options(body) if self.current else None
        except ValueError as exc:
            return text(400, str(exc))
        if self.current and self.channel_kind == "WEB_SOCKET":
            return api_error(400, "another kind of channel (WEB_SOCKET) exists: delete it first")
        assert self.http is not None
        problem = await webhook.check_reachable(self.http, url, headers)
        if problem:
            return text(400, f"callback url is not reachable: {problem}")
        if self.current and self.channel_kind == "WEB_SOCKET":  # registered meanwhile
            return api_error(400, "another kind of channel (WEB_SOCKET) exists: delete it first")
        self.stop_webhook()
        self.count("callback_puts")
        self.callback = {"url": url, "headers": headers}
        if self.current and self.channel_kind is None:
            self._channel_opened("CALLBACK", options)
        self._start_webhook()
        self._wake_channel_waiters()
        return Reply(204)

    # --- the current dialect's one channel: callback or WebSocket ---------------------

    @staticmethod
    def _channel_options(body: bytes) -> ch.Serialization:
        """The serialization options of a channel registration body (may be empty)."""
        if not body.strip():
            return ch.Serialization()
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ValueError("the body must be JSON") from None
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return ch.parse_serialization(data.get("serialization"))

    def _channel_opened(self, kind: str, options: ch.Serialization | None) -> None:
        """A channel is registered: its options hold until it is deleted; the queue
        starts empty (nothing was kept while there was no channel)."""
        self.channel_kind = kind
        self.enc = ch.Encoder(True, options)
        self.outbox.clear()
        self._wake_channel_waiters()

    def _channel_closed(self) -> None:
        """The channel is deleted, and its queue with it."""
        self.channel_kind = None
        self._channel_gen += 1
        self.enc = ch.Encoder(True)
        self.outbox.clear()

    def callback_info(self) -> Reply:
        """``GET /v2/notification/callback``: url and headers (and, current dialect, the
        serialization options it was registered with)."""
        if self.callback is None:
            return text(404, "no callback URL set")
        out = dict(self.callback)
        if self.current and self.enc.options.given:
            out["serialization"] = self.enc.options.to_json()
        return as_json(200, out)

    def channel_info(self) -> Reply:
        """``GET /v2/notification/channel``."""
        kind = self.channel_kind
        if not self.current:
            if self.callback is not None:
                kind = "CALLBACK"
            elif self.channel_ready():
                kind = "LONG_POLLING"
        if kind is None:
            return text(404, "no notification channel")
        return as_json(200, {"delivery_mechanism": kind})

    def _websocket_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "connected" if self.ws.connected else "disconnected",
            "queue_size": len(self.outbox),
        }
        if self.enc.options.given:
            out["serialization"] = self.enc.options.to_json()
        return out

    def put_websocket(self, body: bytes) -> Reply:
        """``PUT /v2/notification/websocket``: 201 registered, 200 it already was (and
        the call has no effect), 400 another kind of channel exists."""
        try:
            options = self._channel_options(body)
        except ValueError as exc:
            return api_error(400, str(exc))
        if self.channel_kind == "CALLBACK":
            return api_error(400, "another kind of channel (CALLBACK) exists: delete it first")
        if self.channel_kind == "WEB_SOCKET":
            return as_json(200, self._websocket_json())
        self._channel_opened("WEB_SOCKET", options)
        return as_json(201, self._websocket_json())

    def get_websocket(self) -> Reply:
        if self.channel_kind != "WEB_SOCKET":
            return api_error(404, "no WebSocket channel")
        return as_json(200, self._websocket_json())

    def delete_websocket(self) -> Reply:
        """204: the channel and its queue are gone, the socket is closed with 1000."""
        if self.channel_kind != "WEB_SOCKET":
            return api_error(404, "no WebSocket channel")
        self._channel_closed()
        self.ws.close_soon(1000)
        return Reply(204)

    # --- the device directory (current dialect) ------------------------------------------

    def list_devices(self, query: Any) -> Reply:
        """``GET /v3/devices`` (see :mod:`bridge.simulator.directory`)."""
        try:
            return Reply(200, self.directory.page(query), "application/json")
        except QueryError as exc:
            return api_error(400, str(exc), fields=[{"name": exc.name, "message": str(exc)}])

    def get_device(self, dev_id: str) -> Reply:
        body = self.directory.one(dev_id)
        if body is None:
            return api_error(404, f"no device {dev_id}")
        return Reply(200, body, "application/json")

    def apply_faults(self, **kw: Any) -> None:
        """Switch faults (see :mod:`bridge.simulator.faults`); wakes the WebSocket
        sender so that a socket fault takes effect at once."""
        self.faults.apply(**kw)
        if self.current:
            self.outbox.poke()

    def _start_webhook(self) -> None:
        assert self.loop is not None and self.http is not None and self.callback is not None
        generation = self._channel_gen

        def same_channel() -> bool:
            return generation == self._channel_gen

        self._webhook_task = self.loop.create_task(
            webhook.deliver_forever(
                self.outbox,
                self.http,
                self.callback["url"],
                self.callback["headers"],
                self.callback_retry_period,
                self.count,
                lambda: self.enc.chunk,
                same_channel,
            )
        )

    def stop_webhook(self) -> None:
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            self._webhook_task = None

    def delete_callback(self) -> Reply:
        if self.callback is None:
            return text(404, "no callback URL set")
        self.callback = None
        self.count("callback_deletes")
        self.stop_webhook()
        if self.current:
            self._channel_closed()
        self.last_pull_end = -1e18  # the channel is gone until a pull or a new callback
        return Reply(204)

    # --- REST operations ----------------------------------------------------------------

    def limits(self) -> Reply:
        return as_json(
            200,
            {
                "transaction-quota": self.transaction_quota,
                "transaction-count": self.counters["transactions"],
                "endpoint-quota": self.endpoint_quota,
                "endpoint-count": sum(1 for d in self.devices.values() if d.registered),
            },
        )

    def list_endpoints(self, ept: str | None) -> Reply:
        parts = [
            f'{{"name":{json.dumps(d.name)},"type":{json.dumps(d.ept)},"status":"ACTIVE",'
            f'"q":{"true" if d.q else "false"}}}'
            for d in self.devices.values()
            if d.registered and (not ept or d.ept == ept)
        ]
        return Reply(200, ("[" + ",".join(parts) + "]").encode(), "application/json")

    def is_gone(self, dev: Device) -> bool:
        """The ``device_gone`` fault hits this device (named by its name or its ID)."""
        faults = self.faults
        return faults.is_gone(dev.name) or faults.is_gone(dev.id)

    def _lookup(self, ep: str) -> Device | Reply:
        dev = self.by_ep.get(ep)
        if self.current:
            if dev is None:
                return api_error(404, f"DEVICE_NOT_FOUND: no device {ep}")
            if not dev.registered or self.is_gone(dev):
                return api_error(404, f"DEVICE_NOT_FOUND: device {ep} is not registered")
            return dev
        if dev is None:
            return text(404, f"Endpoint {ep} not found")
        if not dev.registered or self.is_gone(dev):
            return text(410, f"Endpoint {ep} is gone")
        return dev

    def endpoint_resources(self, ep: str) -> Reply:
        dev = self._lookup(ep)
        if isinstance(dev, Reply):
            return dev
        return Reply(200, dev.template.listing_json, "application/json")

    def resource_request(
        self, verb: str, ep: str, path: str, body: bytes, no_resp: bool, cache_only: bool
    ) -> Reply:
        dev = self._lookup(ep)
        if isinstance(dev, Reply):
            return dev
        template = dev.template
        index = template.index.get(path, -1)
        if index < 0 and (verb != "GET" or not template.object_indexes(path)):
            return text(404, f"Resource {path} not found on {ep}")
        if cache_only and verb == "GET":
            cached = None if dev.cache is None or index < 0 else dev.cache.get(index)
            if cached is None:
                return Reply(205)
            return Reply(200, cached, template.resources[index].ct)
        return self._submit(Job(verb, dev, path, index, body, None), no_resp)

    # --- device requests (POST /v2/device-requests, see device_requests.py) -------------

    def device_request(self, ep: str, query: Any, body: bytes) -> Reply:
        """202 with no body, or an error body; the result comes on the channel."""
        try:
            reply = self._device_request(ep, query, body)
        except dr.RequestError as exc:
            fields = None if exc.field is None else [{"name": exc.field, "message": str(exc)}]
            reply = api_error(exc.status, str(exc), fields=fields)
        if reply.status >= 400:
            self.count("device_requests_refused")
        return reply

    def _device_request(self, ep: str, query: Any, body: bytes) -> Reply:
        req = dr.parse(query, body)
        dev = self.by_ep.get(ep)
        if dev is None:
            raise dr.RequestError(404, f"DEVICE_NOT_FOUND: no device {ep}")
        if not dev.registered or self.is_gone(dev):
            raise dr.RequestError(400, f"DEVICE_NOT_CONNECTED: device {ep} is not registered")
        template = dev.template
        index = template.index.get(req.uri, -1)
        # DELETE on "/" asks the device to de-register (the legacy DELETE /endpoints/{ep}).
        whole = req.verb == "DELETE" and req.uri == "/"
        if index < 0 and not whole and not template.object_indexes(req.uri):
            raise dr.RequestError(404, f"URI_PATH_DOES_NOT_EXISTS: {ep} has no {req.uri}")
        if not self.channel_ready():
            return api_error(412, "No notification channel")
        self.count("transactions")
        if req.verb == "GET" and index >= 0 and dev.subs >> index & 1:
            # Observed: the service has the value (every change is notified) and answers
            # from its cache, without the device, still on the channel.
            spec = template.resources[index]
            self.count("device_requests")
            self.count("device_request_cache_hits")
            self.emit(self.enc.async_response(req.aid, 200, dev.values[index], spec.ct, max_age=60))
            return Reply(202)
        queue = dev.requests
        if queue is None:
            queue = dev.requests = dr.RequestQueue()
        if len(queue.items) >= dr.QUEUE_LIMIT:
            raise dr.RequestError(
                400, f"QUEUE_IS_FULL: {dr.QUEUE_LIMIT} requests wait for {ep} already"
            )
        retry = req.retry
        if retry is None:
            retry = dr.DEFAULT_RETRY_QUEUE_MODE if dev.q else dr.DEFAULT_RETRY
        expiry = req.expiry
        if expiry is None:
            expiry = dr.DEFAULT_EXPIRY_QUEUE_MODE if dev.q else dr.DEFAULT_EXPIRY
        expires_at = self.now() + expiry * self.expiry_scale
        attributes_only = bool(req.query) and req.verb == "PUT" and not req.body
        queue.items.append(
            dr.DeviceRequest(
                req.aid,
                req.verb,
                req.uri,
                index,
                req.body,
                1 + retry,
                expires_at,
                attributes_only,
            )
        )
        self.count("device_requests")
        self.count("async_requests")
        self._seq += 1
        heapq.heappush(self._heap, (expires_at, self._seq, _REQUESTS_EXPIRE, dev))
        self._pump(dev)
        return Reply(202)

    def _reachable(self, dev: Device) -> bool:
        return dev.registered and not self.is_gone(dev) and not dev.asleep(self.now())

    def _contact(self, dev: Device) -> None:
        """The device contacted the service: requests it did not answer get their next
        attempt now."""
        queue = dev.requests
        if queue is not None:
            queue.stalled = False
            self._pump(dev)

    def _pump(self, dev: Device) -> None:
        """Give the device the head of its queue, if it can take it now."""
        queue = dev.requests
        if queue is None or queue.busy or queue.stalled or not queue.items:
            return
        if not self._reachable(dev):
            return
        assert self.loop is not None
        queue.busy = True
        delay = self.faults.device_latency
        if delay is None:
            delay = self.latency
        head = queue.items[0]
        if delay > 0:
            self.loop.call_later(delay, self._attempt, dev, head)
        else:
            self.loop.call_soon(self._attempt, dev, head)

    def _attempt(self, dev: Device, req: dr.DeviceRequest) -> None:
        queue = dev.requests
        assert queue is not None
        queue.busy = False
        if not queue.items or queue.items[0] is not req:  # answered meanwhile (dropped)
            self._pump(dev)
            return
        if not dev.registered or self.is_gone(dev):
            return  # gone while the request was on its way: it waits (or is dropped)
        self.count("device_request_attempts")
        if self.times_out(dev, req.path):
            req.attempts_left -= 1
            if req.attempts_left <= 0:
                queue.items.popleft()
                self.count("device_request_timeouts")
                self.emit(self.enc.async_response(req.aid, 504, error="TIMEOUT"))
            queue.stalled = True  # the next attempt waits for the device's next contact
            return
        queue.items.popleft()
        refused = self.refused_by_device(dev, req.path)
        if refused is not None:
            self.emit(self.enc.async_response(req.aid, refused))
        elif req.attributes_only:  # PUT /5/0/1?pmax=120: notification attributes written
            self.emit(self.enc.async_response(req.aid, 200, b""))
        else:
            verb = "DELETE-EP" if req.verb == "DELETE" and req.path == "/" else req.verb
            job = Job(verb, dev, req.path, req.idx, req.body, req.aid)
            try:
                self._execute(job)
            except DeviceError as exc:
                self._answer(job, exc.status, error=exc.error)
        self._pump(dev)

    def _expire_requests(self, dev: Device, now: float) -> None:
        """Requests whose expiry-seconds ran out before delivery: 429 REQUEST_EXPIRED."""
        queue = dev.requests
        if queue is None or not queue.items:
            return
        head = queue.items[0] if queue.busy else None  # with the device: it completes
        kept: deque[dr.DeviceRequest] = deque()
        for req in queue.items:
            if req is not head and req.expires_at <= now:
                self.count("device_request_expired")
                self.emit(self.enc.async_response(req.aid, 429, error="REQUEST_EXPIRED"))
            else:
                kept.append(req)
        queue.items = kept
        self._pump(dev)

    def _drop_requests(self, dev: Device) -> None:
        """The device's registration is gone, and the requests waiting for it with it."""
        queue = dev.requests
        if queue is None or not queue.items:
            return
        waiting = list(queue.items)
        queue.items.clear()
        queue.stalled = False
        for req in waiting:
            self.count("device_request_removed")
            self.emit(self.enc.async_response(req.aid, 429, error="DEVICE_REMOVED_REGISTRATION"))

    def delete_endpoint(self, ep: str) -> Reply:
        dev = self._lookup(ep)
        if isinstance(dev, Reply):
            return dev
        return self._submit(Job("DELETE-EP", dev, "", -1, b"", None), False)

    def _submit(self, job: Job, no_resp: bool) -> Reply:
        dev = job.device
        if no_resp and dev.q:
            return text(409, "noResp is not supported for a queue-mode endpoint")
        if not no_resp and not self.channel_ready():
            return text(412, "No notification channel")
        asleep = dev.asleep(self.now())
        if asleep:
            assert dev.queue is not None
            if len(dev.queue) >= dev.template.queue_size:
                return text(429, f"queue of {dev.name} is full")
        elif dev.inflight >= MAX_INFLIGHT:
            return text(429, f"too many requests under way to {dev.name}")
        self.count("transactions")
        aid = None
        if not no_resp:
            self.count("async_requests")
            aid = job.aid
            if aid is None:
                aid = f"{self._next_id}#{dev.ep}@domain{job.path}"
                self._next_id += 1
                job = job._replace(aid=aid)
        dev.inflight += 1
        if asleep:
            assert dev.queue is not None
            dev.queue.append(job)
        else:
            self._dispatch(job)
        if aid is None:
            return Reply(204)
        return as_json(202, {"async-response-id": aid})

    def refused_by_device(self, dev: Device, path: str) -> int | None:
        """The status of the ``device_status`` fault that hits this request, if any."""
        faults = self.faults
        status = faults.refusal(dev.name, path)
        return status if status is not None else faults.refusal(dev.id, path)

    def times_out(self, dev: Device, path: str) -> bool:
        """The ``device_timeout`` fault hits this request (device by name or ID)."""
        faults = self.faults
        return faults.times_out(dev.name, path) or faults.times_out(dev.id, path)

    def _dispatch(self, job: Job) -> None:
        assert self.loop is not None
        delay = self.faults.device_latency
        if delay is None:
            delay = self.latency
        if delay > 0:
            self.loop.call_later(delay, self._run_job, job)
        else:
            self.loop.call_soon(self._run_job, job)

    def _answer(
        self,
        job: Job,
        status: int,
        payload: bytes | None = None,
        ct: str = "",
        error: str | None = None,
    ) -> None:
        if job.aid is not None:
            self.emit(self.enc.async_response(job.aid, status, payload, ct or "text/plain", error))

    def _run_job(self, job: Job) -> None:
        dev = job.device
        dev.inflight -= 1
        if not dev.registered or self.is_gone(dev):
            self._answer(job, 410, error="GONE")
            return
        if self.times_out(dev, job.path):
            self._answer(job, 504, error="TIMEOUT")
            return
        refused = self.refused_by_device(dev, job.path)
        if refused is not None:
            self._answer(job, refused)
            return
        try:
            self._execute(job)
        except DeviceError as exc:
            self._answer(job, exc.status, error=exc.error)

    def _execute(self, job: Job) -> None:
        dev, index, verb = job.device, job.idx, job.verb
        if self.actions is not None:
            self.actions.append((verb, dev.ep, job.path, bytes(job.body or b"")))
        template = dev.template
        if verb == "DELETE-EP":
            self._answer(job, 202)
            self._unregister(dev, ch.DEREGISTRATION)
            return
        if index < 0 and verb != "GET":  # an object or instance: read only, here
            raise DeviceError(405, "METHOD_NOT_ALLOWED")
        if index < 0:  # object-level read
            idx = template.object_indexes(job.path)
            ct = "application/vnd.oma.lwm2m+json"
            self._answer(job, 200, lwm2m_json(template, dev.values, job.path, idx), ct)
            return
        spec = template.resources[index]
        if verb == "GET":
            if spec.executable:
                raise DeviceError(405, "METHOD_NOT_ALLOWED")
            value = dev.values[index]
            self._cache(dev, index, value)
            self._answer(job, 200, value, spec.ct)
        elif verb == "SUBSCRIBE":
            dev.subs |= 1 << index
            self._answer(job, 200, dev.values[index], spec.ct)
        elif verb == "PUT":
            if not spec.writable:
                raise DeviceError(405, "METHOD_NOT_ALLOWED")
            value = spec.validate(job.body)
            # A success carries a payload, empty when the device sent nothing, as the
            # Connector's does (the original library decodes it and waits for it).
            self._answer(job, 200, b"")
            changed = dev.values[index] != value
            dev.values[index] = value
            if changed:
                self.notify(dev, index)
        elif verb == "POST":
            if not spec.executable:
                raise DeviceError(405, "METHOD_NOT_ALLOWED")
            self._answer(job, 200, b"")
            if spec.path == REBOOT_PATH:
                self._reboot(dev)
        else:  # DELETE of a resource: LwM2M devices refuse it
            raise DeviceError(405, "METHOD_NOT_ALLOWED")

    def _reboot(self, dev: Device) -> None:
        """A reboot really de-registers the device and registers it again, fresh."""
        assert self.loop is not None

        def down() -> None:
            if dev.registered:
                self._unregister(dev, ch.DEREGISTRATION)
                self.loop.call_later(self.scenario.reboot_time, up)  # type: ignore[union-attr]

        def up() -> None:
            if not dev.registered:
                dev.reset_values()
                self._activate(dev, self.now())
                self._emit_registration(ch.REGISTRATION, dev)

        self.loop.call_later(0.01, down)

    # --- subscriptions ------------------------------------------------------------------

    def subscribe(self, ep: str, path: str) -> Reply:
        dev = self._lookup(ep)
        if isinstance(dev, Reply):
            return dev
        index = dev.template.index.get(path)
        if index is None:
            return text(404, f"Resource {path} not found on {ep}")
        if not dev.template.resources[index].obs:
            return text(412, f"Resource {path} is not observable")
        if dev.asleep(self.now()):
            return self._submit(Job("SUBSCRIBE", dev, path, index, b"", None), False)
        self.count("transactions")
        dev.subs |= 1 << index
        return Reply(200)

    def subscription_get(self, ep: str, path: str) -> Reply:
        dev = self.by_ep.get(ep)
        index = None if dev is None else dev.template.index.get(path)
        if dev is None or index is None or not dev.subs >> index & 1:
            return text(404, f"{ep}{path} is not subscribed")
        return Reply(200, f"/subscriptions/{ep}{path}\n".encode(), "text/uri-list")

    def subscription_delete(self, ep: str, path: str) -> Reply:
        dev = self.by_ep.get(ep)
        index = None if dev is None else dev.template.index.get(path)
        if dev is None or index is None or not dev.subs >> index & 1:
            return text(404, f"{ep}{path} is not subscribed")
        dev.subs &= ~(1 << index)
        return Reply(204)

    def endpoint_subscriptions(self, ep: str) -> Reply:
        dev = self.by_ep.get(ep)
        if dev is None:
            return text(404, f"Endpoint {ep} not found")
        lines = "".join(f"/subscriptions/{ep}{p}\n" for p in dev.subscribed_paths())
        return Reply(200, lines.encode(), "text/uri-list")

    def endpoint_subscriptions_delete(self, ep: str) -> Reply:
        dev = self.by_ep.get(ep)
        if dev is None:
            return text(404, f"Endpoint {ep} not found")
        dev.subs = 0
        return Reply(204)

    def delete_all_subscriptions(self) -> Reply:
        for dev in self.devices.values():
            dev.subs = 0
        return Reply(204)

    def put_presubscriptions(self, body: bytes) -> Reply:
        try:
            data = json.loads(body or b"null")
            rules = parse_rules(data)
        except (ValueError, UnicodeDecodeError) as exc:
            return text(400, f"malformed pre-subscriptions: {exc}")
        self.set_rules(rules, data)
        return Reply(204)

    def set_rules(self, rules: list[Rule], data: list[Any]) -> None:
        """New rules replace the old ones and every existing subscription."""
        self.rules, self.rules_json = rules, data
        self._rule_masks.clear()
        for dev in self.devices.values():
            dev.subs = self._presub_mask(dev) if dev.registered and rules else 0

    def _presub_mask(self, dev: Device) -> int:
        return mask_for(self.rules, dev.endpoint_name, dev.ept, dev.template, self._rule_masks)

    def get_presubscriptions(self) -> Reply:
        return as_json(200, self.rules_json)


def bool_arg(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1", "yes")
