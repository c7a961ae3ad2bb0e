"""The Connector side: the client, its notification channel, and typed events out.

It owns the :class:`~bridge.connector.connector` (one HTTP session) and the channel
(long polling, or the callback receiver), and turns every channel message into events
on the bus (:mod:`bridge.core.events`), keeping the endpoint registry up to date first.
The wire format ends here: notification payloads are decoded from base64 and the
entries' field names read once (:func:`decode_notifications`), so the events carry
values. It knows nothing about MQTT.
"""

from __future__ import annotations

import binascii
import functools
import logging
import secrets
import ssl
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NoReturn

from bridge.connector import connector, decode_payload, response_codes
from bridge.connector.dialects import Api
from bridge.connector.messages import MessageKind
from bridge.core.counters import Counters
from bridge.core.events import (
    EndpointRegistered,
    EndpointRemoved,
    EndpointResources,
    EventBus,
    Notification,
    NotificationsReceived,
    Resource,
    Source,
)
from bridge.core.registry import Registry
from bridge.core.retry import Backoff
from bridge.service.settings import Channel, Settings, env_name
from bridge.upstream.callback_receiver import CallbackReceiver, server_ssl_context
from bridge.upstream.identities import Addressing, Identities
from bridge.upstream.reachability import Monitor, Reachability, is_refusal, is_transient

log = logging.getLogger("bridge.connector_side")

DESCRIBE_TRIES = 4  # a resource listing that fails transiently is tried this often
DESCRIBE_RETRY = 0.5  # seconds before the first retry (doubling, jittered)
DESCRIBE_RETRY_MAX = 4.0


class StartupError(Exception):
    """The bridge cannot start: the message says which setting to look at."""


def parse_resources(items: Any) -> tuple[Resource, ...]:
    """Resources from a registration (``path``) or an endpoint listing (``uri``)."""
    if not isinstance(items, list):
        return ()
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        path = item.get("path") or item.get("uri")
        if not isinstance(path, str) or not path:
            continue
        rt, ct = item.get("rt"), item.get("ct")
        out.append(
            Resource(
                path=path,
                rt=rt if isinstance(rt, str) else None,
                ct=ct if isinstance(ct, str) else None,
                obs=bool(item.get("obs", False)),
            )
        )
    return _shared(tuple(out))


# Endpoints of one type have the same resource list: one tuple for all of them instead of
# one per endpoint (~1.5 KB each, 150 MB with 100,000 endpoints). Bounded; the values are
# immutable, so sharing is safe across threads.
_SHARED_LISTS: dict[tuple[Resource, ...], tuple[Resource, ...]] = {}
_SHARED_MAX = 10_000


def _shared(resources: tuple[Resource, ...]) -> tuple[Resource, ...]:
    found = _SHARED_LISTS.get(resources)
    if found is None:
        if len(_SHARED_LISTS) >= _SHARED_MAX:
            _SHARED_LISTS.clear()
        _SHARED_LISTS[resources] = found = resources
    return found


_PARSED_LISTINGS: dict[bytes, tuple[Resource, ...]] = {}


def listing_resources(body: Any, items: Any) -> tuple[Resource, ...]:
    """:func:`parse_resources` of a resource listing, remembered by the listing's bytes:
    endpoints of one kind send the very same listing, so it is parsed once per kind."""
    if not isinstance(body, bytes):
        return parse_resources(items)
    found = _PARSED_LISTINGS.get(body)
    if found is None:
        if len(_PARSED_LISTINGS) >= _SHARED_MAX:
            _PARSED_LISTINGS.clear()
        _PARSED_LISTINGS[body] = found = parse_resources(items)
    return found


if sys.version_info >= (3, 11):
    # Strict: a character outside the alphabet is an error, not skipped (":" would
    # decode to b""); the client's decoder then has the last word (missing padding).
    _a2b = functools.partial(binascii.a2b_base64, strict_mode=True)
else:  # pragma: no cover - Python 3.10 has no strict mode: the lenient C decoder
    _a2b = binascii.a2b_base64
_new_notification = tuple.__new__  # Notification(...) without its Python-level __new__


def decode_notifications(
    entries: list[Any], names: Identities | None = None
) -> tuple[list[Notification], int]:
    """The values of a message's ``notifications`` entries, and how many entries were
    bad (no endpoint name or path, a payload that is not base64; each is logged).
    ``names``: today's service, whose ``ep`` is a device ID: the endpoint becomes its
    topic name (bound from the entry's ``original-ep`` on first sight).

    The hot path of the bridge: one pass, the C base64 decoder first (the client's
    lenient one only for what it refuses: missing padding, or a non-string).
    """
    known = None if names is None else names.known
    values: list[Notification] = []
    append = values.append
    bad = 0
    for entry in entries:
        try:
            raw = entry.get("payload")
            if raw is None or raw == "":
                payload = b""  # no value (an empty resource)
            else:
                try:
                    payload = _a2b(raw)
                except (binascii.Error, ValueError, TypeError):
                    # tolerates missing padding; refuses a non-string (0, [], false)
                    # with the client's error, as the client's handler does
                    payload = decode_payload(entry)
            endpoint, path = entry["ep"], entry["path"]
            if type(endpoint) is not str or type(path) is not str:
                raise TypeError("ep and path must be strings")
            if known is not None:
                endpoint = known(endpoint) or _bind(names, endpoint, entry)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            bad += 1
            log.warning("notification ignored (%s): %.200r", exc, entry)
            continue
        append(_new_notification(Notification, (endpoint, path, payload)))
    return values, bad


def _bind(names: Identities, device_id: str, entry: Mapping[str, Any]) -> str:
    original = entry.get("original-ep")
    return names.topic(device_id, original if isinstance(original, str) else None)


def _departed(entry: Any) -> str | None:
    """The device of a de-registration or expiry entry: a string, or an object with
    ``ep`` (serialization option ``deregistrations_as_object``)."""
    if isinstance(entry, Mapping):
        entry = entry.get("ep")
    return entry if isinstance(entry, str) else None


def _entries(message: Mapping[str, Any], key: str) -> list[Any]:
    """The entries under ``key`` of a channel message: a list, else none (a string would
    otherwise be taken letter by letter as endpoint names)."""
    items = message.get(key)
    if isinstance(items, list):
        return items
    if items is not None:
        log.warning("%s is a %s, not a list: ignored", key, type(items).__name__)
    return []


def _registered_names(message: Mapping[str, Any]) -> frozenset[str]:
    """The endpoints a channel message registers (or updates)."""
    return frozenset(
        e["ep"]
        for key in (MessageKind.REGISTRATIONS, MessageKind.REG_UPDATES)
        for e in _entries(message, key)
        if isinstance(e, Mapping) and isinstance(e.get("ep"), str)
    )


class ConnectorSide(Addressing):
    def __init__(
        self, settings: Settings, bus: EventBus, registry: Registry, counters: Counters
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.registry = registry
        self.counters = counters
        # With connector_api=auto the dialect is found at start-up (probe()); until then
        # the client speaks the legacy one.
        self.client = connector(
            settings.connector_token.get_secret_value(),
            settings.connector_url,
            api="legacy" if settings.connector_api == "auto" else settings.connector_api,
            timeout=settings.connector_timeout,
            # Every call's deadline is the port's (bridge.upstream.port): none in the client.
            asyncTimeout=None,
            backoffMax=settings.connector_retry_max,
            pullLinger=settings.pull_linger,
            fastHttp=settings.connector_http == "fast",
        )
        self._receiver: CallbackReceiver | None = None
        # Device IDs <-> the names in topics (today's service; the legacy one has no IDs).
        self.identities = Identities(settings.topic_endpoint)
        self.channel: Channel | None = None  # known once start_channel ran
        # Whether the Connector answers: see bridge.upstream.reachability (events on the bus).
        self.reachability = Reachability(bus, counters)
        self._monitor: Monitor | None = None
        self._stopping = threading.Event()
        # Set by the bridge: why the MQTT side cannot take a callback message now (the
        # receiver then answers 503 and the Connector delivers it again), or None.
        self.admit_callback: Callable[[Mapping[str, Any]], str | None] | None = None
        handlers = {
            MessageKind.REGISTRATIONS: self._on_registrations,
            MessageKind.REG_UPDATES: self._on_reg_updates,
            MessageKind.NOTIFICATIONS: self._on_notifications,
            MessageKind.DE_REGISTRATIONS: self._on_deregistrations,
            MessageKind.REGISTRATIONS_EXPIRED: self._on_expirations,
        }
        for name, fn in handlers.items():
            self.client.setHandler(name, fn)

    # ---- start-up checks ----------------------------------------------------------------

    @property
    def api(self) -> Api:
        """The dialect the client speaks (found by :meth:`probe` with ``auto``)."""
        return self.client.api

    def probe(self) -> str:
        """Check the service and find its dialect (``connector_api=auto``): one call. The
        text describing the service; raises StartupError (401, a channel the dialect does
        not offer) or ConnectionError (no answer: tried again with back-off)."""
        s = self.settings
        if s.connector_api == "auto":
            r = self.client.probeApi()
            if r.error:
                self._startup_failure(r.error)
            self.client.useApi(r.result)
            log.info(
                "the service at %s speaks the %s API (%s=auto: GET /v3/devices answered %d)",
                s.connector_url,
                "current Device Management" if r.result == "current" else "legacy Connector",
                env_name("connector_api"),
                r.status_code,
            )
        try:
            self.channel = s.channel_for(self.api)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        if self.api == "legacy":
            return self.version()
        if s.connector_api != "auto":
            r = self.client.probeApi()
            if r.error:
                self._startup_failure(r.error)
            if r.result != "current":
                raise StartupError(
                    f"{env_name('connector_api')}=current, but the service at "
                    f"{s.connector_url} has no /v3/devices (a legacy Connector?): set "
                    f"{env_name('connector_api')}=legacy or auto"
                )
        self.reachability.success()
        return "Device Management (current API)"

    def _startup_failure(self, error: response_codes) -> NoReturn:
        self.reachability.failure(str(error), error.status_code)
        if error.status_code in (401, 403):
            raise StartupError(
                f"the service at {self.settings.connector_url} refused the access key "
                f"(HTTP {error.status_code}): check {env_name('connector_token')}"
            )
        raise ConnectionError(
            f"the service at {self.settings.connector_url} "
            f"({env_name('connector_url')}) did not answer: {error.error}"
        )

    def version(self) -> str:
        """The Connector's version text; raises StartupError (401) or ConnectionError."""
        r = self.client.getConnectorVersion()
        if r.error:
            self.reachability.failure(str(r.error), r.error.status_code)
            if r.error.status_code in (401, 403):
                raise StartupError(
                    f"the Connector at {self.settings.connector_url} refused the access key "
                    f"(HTTP {r.error.status_code}): check {env_name('connector_token')}"
                )
            raise ConnectionError(
                f"the Connector at {self.settings.connector_url} "
                f"({env_name('connector_url')}) did not answer: {r.error.error}"
            )
        self.reachability.success()
        return str(r.result).strip()

    def put_presubscriptions(self, rules: Sequence[Mapping[str, Any]]) -> None:
        r = self.client.putPreSubscription([dict(x) for x in rules])
        if r.error and is_transient(r.error):
            self.reachability.failure(str(r.error), r.error.status_code)
            raise ConnectionError(f"putting the pre-subscription rules failed: {r.error}")
        if r.error:
            raise StartupError(
                f"the Connector refused the pre-subscription rules "
                f"({env_name('presubscriptions')}): {r.error.status_code} {r.error.error} "
                f"{r.result if isinstance(r.result, str) else ''}".strip()
            )

    # ---- the channel -----------------------------------------------------------------------

    def start_channel(self) -> None:
        s = self.settings
        self._stopping.clear()  # a replica may lead again after it stopped the channel
        if self.channel is None:
            self.channel = s.channel_for(self.api)
        if self.api == "current":
            self._take_channel_over()
        if self.channel == "websocket":
            self.client.startWebsocket(onState=self._websocket_state)
            self._monitor = Monitor(
                self.reachability, None, None, s.connector_retry_max,
                websocket_state=self._websocket_now,
            ).start()  # fmt: skip
            log.info("notification channel: WebSocket (%s)", self.client.websocketState())
            return
        if self.channel == "longpoll":
            # One channel per access key: a callback left behind would refuse our pulls.
            r = self.client.deleteCallback()
            if not r.error:
                log.info("removed a callback URL left on the Connector (long polling now)")
            self.client.startLongPolling()
            self._monitor = Monitor(
                self.reachability, self.client.longPollStats, None, s.connector_retry_max
            ).start()
            return
        assert s.callback_url is not None
        receiver = self.start_receiver()
        r = self.client.putCallback(s.callback_url, {"Authorization": f"Bearer {receiver.secret}"})
        if r.error:
            receiver.stop()
            self._receiver = None
            raise StartupError(
                f"the Connector refused the callback URL {s.callback_url} "
                f"({env_name('callback_url')}): {r.error.status_code} "
                f"{r.result if isinstance(r.result, str) and r.result else r.error.error}"
            )
        log.info(
            "notification channel: callback %s (receiver on %s://%s:%d%s)",
            s.callback_url, receiver.scheme, receiver.host, receiver.port, receiver.path,
        )  # fmt: skip
        self._monitor = Monitor(self.reachability, None, self._probe, s.connector_retry_max).start()

    def start_receiver(self) -> CallbackReceiver:
        """The webhook receiver, started if it is not (a replica of a group runs one
        whether it leads or not: behind a load balancer any replica may get deliveries;
        only the leader registers the callback URL)."""
        if self._receiver is not None:
            return self._receiver
        s = self.settings
        # A fresh random secret at every start unless one is configured (a group needs
        # one: every replica must accept what the leader registered); the Connector sends
        # it back with every callback and the receiver refuses requests without it.
        secret = (
            s.callback_secret.get_secret_value() if s.callback_secret else secrets.token_urlsafe(32)
        )
        self._receiver = self._callback_receiver(secret)
        return self._receiver

    def _callback_receiver(self, secret: str) -> CallbackReceiver:
        """The webhook server for ``secret``, listening (HTTPS with callback_tls_cert)."""
        s = self.settings
        host, port = s.listen_address()
        context = None
        if s.callback_tls_cert is not None:
            try:
                context = server_ssl_context(s.callback_tls_cert, s.callback_tls_key)
            except (ssl.SSLError, OSError) as exc:
                raise StartupError(
                    f"cannot serve HTTPS with {env_name('callback_tls_cert')} and "
                    f"{env_name('callback_tls_key')}: {exc}"
                ) from None
        receiver = CallbackReceiver(
            self.client.handler, secret, host, port, s.callback_max_body,
            path=s.callback_receiver_path(), ssl_context=context, admit=self._admit,
        )  # fmt: skip
        try:
            return receiver.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {host}:{port} for callbacks "
                f"({env_name('callback_listen')}): {exc.strerror or exc}"
            ) from None

    def _take_channel_over(self) -> None:
        """Today's service keeps one channel per access key, of one kind: one of another
        kind is replaced or refused, as ``channel_takeover`` says, and logged either way."""
        want = {"websocket": "WEB_SOCKET", "callback": "CALLBACK"}[str(self.channel)]
        r = self.client.getNotificationChannel()
        found = r.result.get("delivery_mechanism") if isinstance(r.result, dict) else None
        if r.error or not isinstance(found, str) or found == want:
            return
        setting = env_name("channel_takeover")
        if self.settings.channel_takeover == "fail":
            raise StartupError(
                f"a {found} notification channel is registered for this access key and "
                f"{env_name('notification_channel')}={self.channel} needs {want}: delete it, "
                f"or set {setting}=replace"
            )
        gone = (
            self.client.deleteWebsocket() if found == "WEB_SOCKET" else self.client.deleteCallback()
        )
        if gone.error:
            raise StartupError(
                f"cannot delete the {found} notification channel registered for this access "
                f"key ({setting}=replace): {gone.error}"
            )
        log.warning(
            "found a %s notification channel registered for this access key: deleted it "
            "(%s=replace) to open the %s channel",
            found, setting, want,
        )  # fmt: skip

    def _websocket_now(self) -> None:
        stats = self.client.websocketStats()
        self._websocket_state(str(stats.get("state")), stats.get("detail"))

    def _websocket_state(self, state: str, detail: str | None) -> None:
        """The WebSocket channel's state, as the Connector's reachability (called on every
        change, and once a second by the monitor so that a long outage counts as down)."""
        if state == "connected":
            self.reachability.success()
        elif state in ("taken_over", "revoked", "deleted", "rejected"):
            self.reachability.lost(state, detail or state)  # type: ignore[arg-type]
        elif state == "refused":
            self.reachability.failure(f"WebSocket: {detail}", 401)
        elif state in ("reconnecting", "connecting"):
            self.reachability.failure(f"WebSocket: {detail}")

    def _admit(self, message: Mapping[str, Any]) -> str | None:
        return None if self.admit_callback is None else self.admit_callback(message)

    def _probe(self) -> response_codes | None:
        """One cheap call to see whether the Connector answers (callback channel)."""
        r = self.client.getConnectorVersion() if self.api == "legacy" else self.client.probeApi()
        return r.error or None

    def stop_channel(self, keep_callback: bool = False) -> None:
        """Stop the channel. ``keep_callback`` (a replica that no longer leads): the
        callback URL stays registered and the receiver keeps taking deliveries."""
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        if self.channel == "longpoll":
            self.client.stopLongPolling(timeout=2.0)
            return
        if self.channel == "websocket":
            self.client.stopWebsocket(timeout=2.0)
            return
        if self._receiver is not None and not keep_callback:
            # From here on the Connector keeps what it has for the next start (503).
            self._receiver.refuse_new()
            self.client.deleteCallback()
            self._receiver.stop()
            self._receiver = None

    def close(self) -> None:
        if self._receiver is not None:  # kept by stop_channel(keep_callback=True)
            self._receiver.refuse_new()
            self._receiver.stop()
            self._receiver = None
        self.client.close()

    # ---- inventory ---------------------------------------------------------------------------

    def list_endpoints(self) -> list[dict[str, Any]]:
        """The registered endpoints; raises ConnectionError when the Connector fails."""
        # The device objects of today's listing are not used here (1.6 KB a device).
        r = self.client.getEndpoints(deviceObjects=False)
        if r.error and (is_transient(r.error) or is_refusal(r.error)):
            self.reachability.failure(str(r.error), r.error.status_code)
        if r.error or not isinstance(r.result, list):
            raise ConnectionError(f"listing endpoints failed: {r.error or r.result!r}")
        listed = [e for e in r.result if isinstance(e, dict) and isinstance(e.get("name"), str)]
        if self.api == "legacy":
            return listed
        # Today's listing names devices by ID: the bridge's names come from the endpoint
        # names, bound in the listing's order (see bridge.upstream.identities).
        out = []
        for e in listed:
            original = e.get("endpoint_name")
            original = original if isinstance(original, str) and original else None
            out.append(
                {**e, "device_id": e["name"], "endpoint_name": original,
                 "name": self.name_for(e["name"], original)}
            )  # fmt: skip
        return out

    def describe(self, name: str) -> tuple[Resource, ...] | None:
        """An endpoint's resources, or None when the Connector cannot say (a transient
        failure is tried again a few times, with back-off)."""
        backoff = Backoff(DESCRIBE_RETRY, DESCRIBE_RETRY_MAX)
        for attempt in range(1, DESCRIBE_TRIES + 1):
            r = self.client.getResources(self.address(name))
            if not r.error:
                return listing_resources(r.raw_data, r.result)
            if not is_transient(r.error) or attempt == DESCRIBE_TRIES:
                break
            if self._stopping.wait(backoff.failed()):
                return None
        log.warning("cannot list the resources of %r: %s", name, r.error)
        return None

    # ---- channel messages -> events (long-poll thread or callback receiver) -----------------

    def _registered(self, message: Mapping[str, Any], key: str) -> None:
        source: Source = "registration" if key == "registrations" else "reg-update"
        for entry in _entries(message, key):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("ep"), str):
                log.warning("%s entry without an endpoint name ignored: %.200r", key, entry)
                continue
            device_id = entry["ep"]
            original = entry.get("original-ep")
            original = original if isinstance(original, str) and original else None
            name = self.name_for(device_id, original)
            ept = entry.get("ept") if isinstance(entry.get("ept"), str) else None
            q = bool(entry.get("q", False))
            resources = parse_resources(entry.get("resources"))
            # A reg-update with no resource list leaves the resources as they were.
            known = resources if (resources or source == "registration") else None
            self.registry.put(name, ept, q, known, device_id, original)
            self.counters.add(source.replace("-", "_") + "s")
            self.bus.emit(EndpointRegistered(name, ept, q, source))
            if known is not None:
                self.bus.emit(EndpointResources(name, ept, q, known, source))

    def _on_registrations(self, message: Mapping[str, Any]) -> None:
        self._registered(message, "registrations")

    def _on_reg_updates(self, message: Mapping[str, Any]) -> None:
        self._registered(message, "reg-updates")

    def name_for(self, device_id: str, endpoint_name: str | None) -> str:
        """The bridge's name (topics) for an endpoint the service reported."""
        if self.api == "legacy":
            return device_id  # the legacy Connector's "ep" is the name itself
        return self.identities.topic(device_id, endpoint_name)

    def address(self, name: str) -> str:
        """What the service calls the endpoint the bridge calls ``name``."""
        return name if self.api == "legacy" else self.identities.device(name)

    def _on_notifications(self, message: Mapping[str, Any]) -> None:
        entries = message.get("notifications")
        if isinstance(entries, list) and entries:
            names = None if self.api == "legacy" else self.identities
            values, bad = decode_notifications(entries, names)
            if bad:
                self.counters.add("notifications_bad", bad)
            self.bus.emit(NotificationsReceived(values, len(entries)))

    def _removed(
        self, message: Mapping[str, Any], key: str, state: Literal["offline", "expired"]
    ) -> None:
        departed = _entries(message, key)
        # The client hands registrations over before de-registrations; a message holding
        # both for one endpoint has lost their order. Most likely it rebooted (left, came
        # back): keep it online rather than refuse its commands until it updates.
        back = _registered_names(message) if departed else frozenset()
        for entry in departed:
            device_id = _departed(entry)
            if device_id is None:
                log.warning("%s entry is not an endpoint: %.200r", key, entry)
                continue
            if device_id in back:
                log.info("%s of %r ignored: the same message registers it", key, device_id)
                continue
            name = device_id if self.api == "legacy" else self.identities.known(device_id)
            if name is None:
                if isinstance(entry, Mapping) and isinstance(entry.get("original-ep"), str):
                    name = _bind(self.identities, device_id, entry)
                else:
                    log.info("%s of %s, a device the bridge never saw: ignored", key, device_id)
                    continue
            self.registry.remove(name, state)
            self.counters.add(key.replace("-", "_"))
            self.bus.emit(EndpointRemoved(name, state))

    def _on_deregistrations(self, message: Mapping[str, Any]) -> None:
        self._removed(message, "de-registrations", "offline")

    def _on_expirations(self, message: Mapping[str, Any]) -> None:
        self._removed(message, "registrations-expired", "expired")
