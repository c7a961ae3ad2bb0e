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
import logging
import secrets
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from bridge.connector import connector, decode_payload, response_codes
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
from bridge.service.settings import Settings, env_name
from bridge.upstream.callback_receiver import CallbackReceiver, server_ssl_context
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


_a2b = binascii.a2b_base64
_new_notification = tuple.__new__  # Notification(...) without its Python-level __new__


def decode_notifications(entries: list[Any]) -> tuple[list[Notification], int]:
    """The values of a message's ``notifications`` entries, and how many entries were
    bad (no endpoint name or path, a payload that is not base64; each is logged).

    The hot path of the bridge: one pass, the C base64 decoder first (the client's
    lenient one only for what it refuses: missing padding, or a non-string).
    """
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
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            bad += 1
            log.warning("notification ignored (%s): %.200r", exc, entry)
            continue
        append(_new_notification(Notification, (endpoint, path, payload)))
    return values, bad


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


class ConnectorSide:
    def __init__(
        self, settings: Settings, bus: EventBus, registry: Registry, counters: Counters
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.registry = registry
        self.counters = counters
        self.client = connector(
            settings.connector_token.get_secret_value(),
            settings.connector_url,
            timeout=settings.connector_timeout,
            # Every call's deadline is the port's (bridge.upstream.port): none in the client.
            asyncTimeout=None,
            backoffMax=settings.connector_retry_max,
            pullLinger=settings.pull_linger,
            fastHttp=settings.connector_http == "fast",
        )
        self._receiver: CallbackReceiver | None = None
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
        if s.notification_channel == "longpoll":
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
        # A fresh random secret at every start unless one is configured; the Connector
        # sends it back with every callback and the receiver refuses requests without it.
        secret = (
            s.callback_secret.get_secret_value() if s.callback_secret else secrets.token_urlsafe(32)
        )
        self._receiver = self._callback_receiver(secret)
        r = self.client.putCallback(s.callback_url, {"Authorization": f"Bearer {secret}"})
        if r.error:
            self._receiver.stop()
            self._receiver = None
            raise StartupError(
                f"the Connector refused the callback URL {s.callback_url} "
                f"({env_name('callback_url')}): {r.error.status_code} "
                f"{r.result if isinstance(r.result, str) and r.result else r.error.error}"
            )
        log.info(
            "notification channel: callback %s (receiver on %s://%s:%d%s)",
            s.callback_url, self._receiver.scheme, self._receiver.host, self._receiver.port,
            self._receiver.path,
        )  # fmt: skip
        self._monitor = Monitor(self.reachability, None, self._probe, s.connector_retry_max).start()

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

    def _admit(self, message: Mapping[str, Any]) -> str | None:
        return None if self.admit_callback is None else self.admit_callback(message)

    def _probe(self) -> response_codes | None:
        """One cheap call to see whether the Connector answers (callback channel)."""
        r = self.client.getConnectorVersion()
        return r.error or None

    def stop_channel(self) -> None:
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        if self.settings.notification_channel == "longpoll":
            self.client.stopLongPolling(timeout=2.0)
            return
        if self._receiver is not None:
            # From here on the Connector keeps what it has for the next start (503).
            self._receiver.refuse_new()
            self.client.deleteCallback()
            self._receiver.stop()
            self._receiver = None

    def close(self) -> None:
        self.client.close()

    # ---- inventory ---------------------------------------------------------------------------

    def list_endpoints(self) -> list[dict[str, Any]]:
        """The registered endpoints; raises ConnectionError when the Connector fails."""
        r = self.client.getEndpoints()
        if r.error and (is_transient(r.error) or is_refusal(r.error)):
            self.reachability.failure(str(r.error), r.error.status_code)
        if r.error or not isinstance(r.result, list):
            raise ConnectionError(f"listing endpoints failed: {r.error or r.result!r}")
        return [e for e in r.result if isinstance(e, dict) and isinstance(e.get("name"), str)]

    def describe(self, name: str) -> tuple[Resource, ...] | None:
        """An endpoint's resources, or None when the Connector cannot say (a transient
        failure is tried again a few times, with back-off)."""
        backoff = Backoff(DESCRIBE_RETRY, DESCRIBE_RETRY_MAX)
        for attempt in range(1, DESCRIBE_TRIES + 1):
            r = self.client.getResources(name)
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
            name = entry["ep"]
            ept = entry.get("ept") if isinstance(entry.get("ept"), str) else None
            q = bool(entry.get("q", False))
            resources = parse_resources(entry.get("resources"))
            # A reg-update with no resource list leaves the resources as they were.
            known = resources if (resources or source == "registration") else None
            self.registry.put(name, ept, q, known)
            self.counters.add(source.replace("-", "_") + "s")
            self.bus.emit(EndpointRegistered(name, ept, q, source))
            if known is not None:
                self.bus.emit(EndpointResources(name, ept, q, known, source))

    def _on_registrations(self, message: Mapping[str, Any]) -> None:
        self._registered(message, "registrations")

    def _on_reg_updates(self, message: Mapping[str, Any]) -> None:
        self._registered(message, "reg-updates")

    def _on_notifications(self, message: Mapping[str, Any]) -> None:
        entries = message.get("notifications")
        if isinstance(entries, list) and entries:
            values, bad = decode_notifications(entries)
            if bad:
                self.counters.add("notifications_bad", bad)
            self.bus.emit(NotificationsReceived(values, len(entries)))

    def _removed(
        self, message: Mapping[str, Any], key: str, state: Literal["offline", "expired"]
    ) -> None:
        names = _entries(message, key)
        # The client hands registrations over before de-registrations; a message holding
        # both for one endpoint has lost their order. Most likely it rebooted (left, came
        # back): keep it online rather than refuse its commands until it updates.
        back = _registered_names(message) if names else frozenset()
        for name in names:
            if not isinstance(name, str):
                log.warning("%s entry is not an endpoint name: %.200r", key, name)
                continue
            if name in back:
                log.info("%s of %r ignored: the same message registers it", key, name)
                continue
            self.registry.remove(name, state)
            self.counters.add(key.replace("-", "_"))
            self.bus.emit(EndpointRemoved(name, state))

    def _on_deregistrations(self, message: Mapping[str, Any]) -> None:
        self._removed(message, "de-registrations", "offline")

    def _on_expirations(self, message: Mapping[str, Any]) -> None:
        self._removed(message, "registrations-expired", "expired")
