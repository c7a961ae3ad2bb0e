"""The outbound port: everything the bridge asks of the Connector, one outcome type for all.

Extensions call the Connector only through a :class:`ConnectorPort` (``ctx.port``):
``read``, ``write``, ``execute`` and ``subscribe`` are answered later (by the device,
through the notification channel) and finish with one :class:`Outcome` passed to
``done``, exactly once, within their time-out; ``unsubscribe``, the listings and the
pre-subscription rules are answered at once and return one. An outcome says how the call
ended in the terms of a reply (status, payload, content type, error text) and, for a
failure, its kind by type (:data:`~bridge.core.retry.ErrorKind`), never by text.

:class:`ConnectorPort` holds what every Connector API shares (the time-out and retries of
each call, :mod:`bridge.upstream.async_calls`); an API dialect supplies one try of each
verb and the immediate calls. :class:`SeedPort` is the seed API's (:mod:`bridge.connector`);
nothing of its types shows in the interface, so a second dialect can stand beside it.

Every read, write and execute of a device (a command's, an initial read, a Home Assistant
read) takes its turn in the device's line (:mod:`bridge.upstream.device_queue`): in
arrival order, at most 20 at the service at once, the rest waiting in the bridge (at most
``device_queue`` per device). Only a read from the Connector's cache skips the line (it
never reaches the device). Today's device-request options (:class:`RequestOptions`:
``expiry``, ``retry``) go with the call to the service.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bridge.connector import asyncResult, connector, response_codes
from bridge.connector.dialects import NEXT_ASYNC_ID
from bridge.connector.errors import ASYNC_TIMEOUT, INVALID_RESPONSE, UNSUPPORTED
from bridge.core.counters import Counters
from bridge.core.retry import ErrorKind, RetryPolicy
from bridge.core.workers import Deadlines
from bridge.upstream.async_calls import AsyncCalls, Done, Outcome, Resubmit, Starter
from bridge.upstream.device_queue import DeviceQueues, Ticket
from bridge.upstream.identities import Addressing
from bridge.upstream.lwm2m_json import UNREACHABLE, answered_values, read_groups
from bridge.upstream.side import listing_resources

__all__ = [
    "READ_RETRY",
    "UNREACHABLE",
    "AsyncCalls",
    "ConnectorPort",
    "ListedEndpoint",
    "Outcome",
    "RequestOptions",
    "SeedPort",
    "Verb",
    "outcome_of",
    "read_groups",
]

Verb = Literal["read", "write", "execute", "subscribe"]

READ_RETRY = RetryPolicy(statuses=frozenset({412}), tries=5, base=0.5, cap=2.0)
"""Reads made by the bridge itself: a 412 (no notification channel yet, at start-up) is
tried again, a few times."""


_INSTANCE = re.compile(r"/\d+/\d+")


def _with_instance_values(base: str, done: Done, outcome: Outcome) -> None:
    found = answered_values(base, outcome.content_type, outcome.payload) if outcome.ok else {}
    done(dataclasses.replace(outcome, values=found))


DEFAULT_DEVICE_QUEUE = 1000
"""Requests that may wait in the bridge for one device (the setting ``device_queue``)."""


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """Today's device-request options of one call (the legacy Connector has none):
    ``expiry``, seconds the service keeps trying to deliver it (60-2,592,000; counted
    from the call's start: what is left goes when it is sent), and ``retry``, delivery
    attempts after the first (0-10)."""

    expiry: int | None = None
    retry: int | None = None


@dataclass(frozen=True, slots=True)
class ListedEndpoint:
    """One endpoint of a listing: ``name`` as the bridge calls it (its topics), with the
    service's ``device_id`` and the ``endpoint_name`` the device registered with (all
    three the same on the legacy Connector)."""

    name: str
    type: str | None
    queue_mode: bool
    status: str | None
    device_id: str | None = None
    endpoint_name: str | None = None


class ConnectorPort(ABC):
    """The Connector, as the extensions see it (see the module doc)."""

    def __init__(self, deadlines: Deadlines, device_queue: int = DEFAULT_DEVICE_QUEUE) -> None:
        self._deadlines = deadlines
        self.queues = DeviceQueues(device_queue)

    def calls(
        self, resubmit: Resubmit | None = None, counters: Counters | None = None
    ) -> AsyncCalls:
        """A group of calls under way (an extension's: it counts them and can finish them
        all at a stop). Retries, and first tries that waited their turn, run through
        ``resubmit`` (a worker pool's ``submit``); ``counters`` count the calls that timed
        out (``async_timeouts``)."""
        return AsyncCalls(self._deadlines, counters, resubmit)

    # ---- answered later: ``done`` gets one Outcome ------------------------------------

    def read(
        self,
        endpoint: str,
        path: str,
        done: Done,
        *,
        calls: AsyncCalls,
        timeout: float,
        timeout_text: str,
        cache_only: bool = False,
        retry: RetryPolicy | None = READ_RETRY,
        accepted: Callable[[], object] | None = None,
        options: RequestOptions | None = None,
        async_id: str | None = None,
    ) -> None:
        """Read a resource, the value is the outcome's payload; or an object instance
        (``/3311/0``), whose values the outcome also gives decoded, by resource path
        (``Outcome.values``: LwM2M JSON answers; {} for another format or a failure)."""
        if _INSTANCE.fullmatch(path):
            done = functools.partial(_with_instance_values, path, done)
        self._start("read", endpoint, path, None, cache_only, options, done, calls,
                    timeout, timeout_text, retry, accepted, async_id)  # fmt: skip

    def write(
        self,
        endpoint: str,
        path: str,
        value: bytes | str,
        done: Done,
        *,
        calls: AsyncCalls,
        timeout: float,
        timeout_text: str,
        retry: RetryPolicy | None = None,
        accepted: Callable[[], object] | None = None,
        options: RequestOptions | None = None,
        async_id: str | None = None,
    ) -> None:
        """Write ``value`` (raw bytes; a str as UTF-8 text) to a resource."""
        self._start("write", endpoint, path, value, False, options, done, calls,
                    timeout, timeout_text, retry, accepted, async_id)  # fmt: skip

    def execute(
        self,
        endpoint: str,
        path: str,
        argument: bytes | str,
        done: Done,
        *,
        calls: AsyncCalls,
        timeout: float,
        timeout_text: str,
        retry: RetryPolicy | None = None,
        accepted: Callable[[], object] | None = None,
        options: RequestOptions | None = None,
        async_id: str | None = None,
    ) -> None:
        """Execute a resource with ``argument`` (may be empty)."""
        self._start("execute", endpoint, path, argument, False, options, done, calls,
                    timeout, timeout_text, retry, accepted, async_id)  # fmt: skip

    def _start(
        self,
        verb: Verb,
        endpoint: str,
        path: str,
        value: bytes | str | None,
        cache_only: bool,
        options: RequestOptions | None,
        done: Done,
        calls: AsyncCalls,
        timeout: float,
        timeout_text: str,
        retry: RetryPolicy | None,
        accepted: Callable[[], object] | None,
        async_id: str | None = None,
    ) -> None:
        """A device call, in the device's line (a cache read skips it); ``async_id``: the
        id every try of it uses (a group of bridges names the command slot in it), else a
        new one per try."""
        ticket = None
        if not cache_only:
            ticket = self.queues.ticket(
                endpoint, verb, path, timeout=timeout,
                expiry=options.expiry if options else None,
                retry=options.retry if options else None,
            )  # fmt: skip
        starter = self._try(verb, endpoint, path, value, cache_only, ticket, async_id)
        calls.start(
            starter, timeout, done, timeout_text, retry=retry, accepted=accepted, turn=ticket
        )

    def subscribe(
        self,
        endpoint: str,
        path: str,
        done: Done,
        *,
        calls: AsyncCalls,
        timeout: float,
        timeout_text: str,
    ) -> None:
        """Subscribe to a resource's changes (they come as notifications)."""
        starter = self._try("subscribe", endpoint, path, None, False, None, None)
        calls.start(starter, timeout, done, timeout_text)

    def pending_requests(self, endpoint: str | None = None) -> dict[str, Any]:
        """What waits per device, at the service and in the bridge
        (:meth:`~bridge.upstream.device_queue.DeviceQueues.pending`)."""
        return self.queues.pending(endpoint)

    @property
    @abstractmethod
    def request_options(self) -> bool:
        """Whether the service takes :class:`RequestOptions` (today's device requests)."""

    @abstractmethod
    def _try(
        self,
        verb: Verb,
        endpoint: str,
        path: str,
        value: bytes | str | None,
        cache_only: bool,
        ticket: Ticket | None,
        async_id: str | None = None,
    ) -> Starter:
        """One try of ``verb`` (see :data:`~bridge.upstream.async_calls.Starter`); the
        ``ticket`` gives the request options for the try being made; ``async_id`` the id
        the device request uses (None: the client makes one)."""

    # ---- answered at once ---------------------------------------------------------------

    @abstractmethod
    def unsubscribe(self, endpoint: str, path: str) -> Outcome:
        """End the subscription to a resource."""

    @abstractmethod
    def list_endpoints(self, type: str = "") -> Outcome:
        """The registered endpoints (of ``type``, when given): ``result`` is a list of
        :class:`ListedEndpoint`."""

    @abstractmethod
    def list_resources(self, endpoint: str) -> Outcome:
        """An endpoint's resources: ``result`` is a tuple of
        :class:`~bridge.core.events.Resource`."""

    @abstractmethod
    def get_presubscriptions(self) -> Outcome:
        """The pre-subscription rules in force: ``result`` is the list of rules."""

    @abstractmethod
    def put_presubscriptions(self, rules: Sequence[dict[str, Any]]) -> Outcome:
        """Replace the pre-subscription rules."""

    @abstractmethod
    def limits(self) -> Outcome:
        """The account's limits: ``result`` is a dict."""

    # ---- figures ------------------------------------------------------------------------

    @abstractmethod
    def channel_stats(self) -> dict[str, Any]:
        """The notification channel's counters (long polling: pulls, failures, ...)."""

    @abstractmethod
    def duplicates(self) -> int:
        """How many channel entries were dropped as seen before (same ``uid``)."""

    @abstractmethod
    def pending_count(self) -> int:
        """How many calls wait for their answer from the channel."""

    @property
    @abstractmethod
    def session(self) -> Any:
        """The HTTP session every call goes through (to measure it), or None."""


# ---- the seed API ---------------------------------------------------------------------------

# Client-side failures have status 0 in the client; replies carry an HTTP-like status.
_CLIENT_STATUS = {
    "connection_error": 502,
    "request_timeout": 504,
    ASYNC_TIMEOUT: 504,
    INVALID_RESPONSE: 502,
    # An option or call the service's dialect does not have: nothing was sent.
    UNSUPPORTED: 501,
}

# What an error name of the service looks like (``DEVICE_NOT_CONNECTED``, ``TIMEOUT``).
_ERROR_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")


def error_name(error: response_codes) -> str | None:
    """The service's name for an error (today's error bodies and async responses), or
    None: a name only, never free text, so replies can match on it."""
    code = error.errorCode
    return code if isinstance(code, str) and _ERROR_NAME.fullmatch(code) else None


def error_kind(error: response_codes) -> ErrorKind:
    """The kind of a seed-API failure, by type: the client's ``failure`` (not_sent,
    no_answer), its error type, or the status the answer had."""
    if error.failure is not None:  # "not_sent" or "no_answer", from the HTTP stacks' types
        return error.failure
    if error.errType == ASYNC_TIMEOUT:
        return "timeout"
    if error.errType == INVALID_RESPONSE:
        return "bad_answer"
    if error.status_code:
        return "refused"
    return "no_answer"  # a failure without a status the client did not say more about


def outcome_of(r: asyncResult, result: Any = None, *, keep_result: bool = True) -> Outcome:
    """The outcome of a finished seed-API call (``result`` instead of the call's own
    when ``keep_result`` is False)."""
    value = r.result if keep_result else result
    deferred = r.async_id is not None
    if r.error:
        status = r.error.status_code or _CLIENT_STATUS.get(r.error.errType, 502)
        return Outcome(
            False, status, r.payload, r.error.error, value, None, error_kind(r.error), deferred,
            code=error_name(r.error),
        )  # fmt: skip
    ct = r.raw_data.get("ct") if isinstance(r.raw_data, dict) else None
    return Outcome(
        True, r.status_code, r.payload, None, value, ct if isinstance(ct, str) else None,
        None, deferred,
    )  # fmt: skip


class SeedPort(ConnectorPort):
    """The port over the seed-API client, which must have been created with
    ``asyncTimeout=None`` (the calls' deadlines are the port's)."""

    def __init__(
        self,
        client: connector,
        deadlines: Deadlines,
        addressing: Addressing | None = None,
        *,
        device_queue: int = DEFAULT_DEVICE_QUEUE,
    ) -> None:
        """``addressing`` translates the bridge's endpoint names and the service's
        addresses (today's device IDs); the same by default. ``device_queue``: requests
        that may wait in the bridge for one device."""
        super().__init__(deadlines, device_queue)
        self._client = client
        self._names = addressing or Addressing()
        self._address = self._names.address

    @property
    def request_options(self) -> bool:
        return self._client.api == "current"

    def _try(
        self,
        verb: Verb,
        endpoint: str,
        path: str,
        value: bytes | str | None,
        cache_only: bool,
        ticket: Ticket | None,
        async_id: str | None = None,
    ) -> Starter:
        c = self._client
        endpoint = self._address(endpoint)

        def start(answer: Done) -> Callable[[], object] | None:
            def cb(r: asyncResult) -> None:
                answer(outcome_of(r))

            # Options only when asked for: a legacy client refuses them (unsupported).
            extra: dict[str, Any] = {}
            if ticket is not None and ticket.retry is not None:
                extra["retry"] = ticket.retry
            if ticket is not None and ticket.expiry is not None:
                extra["expiry"] = ticket.expiry_to_send()  # what is left of it, now
            data = value if value is not None else ""
            token = NEXT_ASYNC_ID.set(async_id) if async_id is not None else None
            try:
                if verb == "read":
                    r = c.getResourceValue(endpoint, path, cbfn=cb, cacheOnly=cache_only, **extra)
                elif verb == "write":
                    r = c.putResourceValue(endpoint, path, data, cbfn=cb, **extra)
                elif verb == "execute":
                    r = c.postResource(endpoint, path, data, cbfn=cb, **extra)
                else:
                    r = c.putResourceSubscription(endpoint, path, cbfn=cb)
            finally:
                if token is not None:
                    NEXT_ASYNC_ID.reset(token)
            return None if r.async_id is None else functools.partial(c.forgetAsync, r.async_id)

        return start

    def unsubscribe(self, endpoint: str, path: str) -> Outcome:
        r = self._client.deleteResourceSubscription(self._address(endpoint), path)
        return outcome_of(r, None, keep_result=False)

    def list_endpoints(self, type: str = "") -> Outcome:
        r = self._client.getEndpoints(type)
        listed = None
        if not r.error and isinstance(r.result, list):
            listed = []
            for e in r.result:
                if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                    continue
                original = e.get("endpoint_name")
                original = original if isinstance(original, str) and original else None
                listed.append(
                    ListedEndpoint(
                        self._names.name_for(e["name"], original),
                        e.get("type") if isinstance(e.get("type"), str) else None,
                        bool(e.get("q", False)),
                        e.get("status") if isinstance(e.get("status"), str) else None,
                        e["name"],
                        original or e["name"],
                    )
                )
        return outcome_of(r, listed, keep_result=False)

    def list_resources(self, endpoint: str) -> Outcome:
        r = self._client.getResources(self._address(endpoint))
        resources = None if r.error else listing_resources(r.raw_data, r.result)
        return outcome_of(r, resources, keep_result=False)

    def get_presubscriptions(self) -> Outcome:
        r = self._client.getPreSubscription()
        return outcome_of(r, None if r.error else r.result, keep_result=False)

    def put_presubscriptions(self, rules: Sequence[dict[str, Any]]) -> Outcome:
        r = self._client.putPreSubscription([dict(x) for x in rules])
        return outcome_of(r, None, keep_result=False)

    def limits(self) -> Outcome:
        r = self._client.getLimits()
        return outcome_of(r, None if r.error else r.result, keep_result=False)

    def channel_stats(self) -> dict[str, Any]:
        if self._client.websocketState() != "stopped":
            return self._client.websocketStats()
        return self._client.longPollStats()

    def duplicates(self) -> int:
        return self._client.duplicatesDropped()

    def pending_count(self) -> int:
        return self._client.pendingCount()

    @property
    def session(self) -> Any:
        return getattr(self._client, "_session", None)
