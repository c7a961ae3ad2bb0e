"""The :class:`connector` class: the seed API over HTTP.

Every call goes through one HTTP session (connection reuse, a pool sized for several
threads calling at once; ``requests`` or the lean stack, see
:mod:`bridge.connector.transport`), with a
timeout, the ``Authorization: Bearer`` header and the paths, query parameters and
bodies of the REST page. A call never raises for what the network or the service did:
it returns an :class:`asyncResult` whose ``error`` says what went wrong. Programming
errors (an argument of the wrong type, an unknown handler name) raise ``TypeError`` or
``ValueError``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal
from urllib.parse import quote, urlsplit

from bridge.connector.channel import LongPoller, Message, parse_message
from bridge.connector.dialects import API_NAMES, DIALECTS, Api, unsupported
from bridge.connector.errors import (
    ASYNC_TIMEOUT,
    CONNECTION_ERROR,
    INVALID_RESPONSE,
    REQUEST_TIMEOUT,
    TransportError,
    response_codes,
)
from bridge.connector.messages import DISPATCH_ORDER, MessageKind, RecentIds, drop_seen
from bridge.connector.pending import PendingAsync
from bridge.connector.result import Callback, asyncResult, decode_payload, value_of
from bridge.connector.transport import RESPONSE_TYPES, HttpResponse, make_session
from bridge.connector.websocket import Serialization, StateListener, WebSocketChannel

log = logging.getLogger("bridge.connector")

#: The notification types ``setHandler`` accepts, in the order a message is dispatched
#: (:data:`bridge.connector.messages.DISPATCH_ORDER`).
HANDLER_NAMES: Final = DISPATCH_ORDER

_LEVELS: Final = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}

# Characters left as they are in an endpoint name (a single path segment) and in a
# resource path (slashes kept). Everything else is percent-encoded, so a name with
# "?", "#", "%" or a space cannot change the meaning of the URL.
_SEGMENT_SAFE: Final = "-._~!$&'()*+,;=:@"
_PATH_SAFE: Final = _SEGMENT_SAFE + "/"


class _Secret:
    """Holds the access key; its repr never shows it (nor does ``vars(connector)``)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"


def _debug_handler() -> logging.Handler:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(levelname)s %(threadName)s %(name)s] %(message)s"))
    handler.set_name("bridge.connector.debug")
    return handler


class connector:
    """Interface class to use the Connector REST API; every call returns an asyncResult.

    ``token`` is the access key. ``webAddress`` is the service's base URL (no ``/v2``);
    ``port`` is used only when ``webAddress`` names no port and ``port`` is not the
    seed's default ``"80"`` (the original library stored it and never used it).

    Keyword-only extras: ``timeout`` (seconds, connect and read, per HTTP call),
    ``asyncTimeout`` (seconds an async id waits for its answer before the result ends with
    an ``async_timeout`` error; None: the caller keeps its own deadlines and calls
    :meth:`forgetAsync` when it gives up, the client keeps none), ``backoffMax`` (cap of the
    long-poll back-off, in seconds), ``pollTimeout`` (read timeout of one long poll; keep it
    above the service's hold time of about 30 s) and ``pullLinger`` (seconds: after a pull
    that brought something, the next starts no sooner than this after it, unless an async
    response is awaited; 0, the default, pulls again at once. A few milliseconds let each
    pull carry several notifications at a steady trickle, for a little latency).
    ``fastHttp``: calls go through one ``requests.Session`` by default, as library users
    expect (proxies, ``.netrc``, CA bundle variables); ``True`` uses the project's lean
    keep-alive session instead (:mod:`bridge.connector.lean_http`, about five times less CPU
    per call; the bridge uses it), still falling back to ``requests`` when a proxy applies.

    Expired async ids are found without a timer thread: the long-poll thread checks
    between pulls, every new async call and every ``handler()`` call checks, and
    ``asyncResult.wait()`` checks at its result's deadline. So an unanswered result
    ends at most one pull (about 30 s) after ``asyncTimeout`` even if nobody waits.
    """

    apiVersion: str = "/v2"

    def __init__(
        self,
        token: str,
        webAddress: str = "https://api.connector.mbed.com",
        port: str | int = "80",
        *,
        timeout: float = 10.0,
        asyncTimeout: float | None = 60.0,
        backoffMax: float = 30.0,
        pollTimeout: float = 40.0,
        pullLinger: float = 0.0,
        fastHttp: bool = False,
        api: Api = "legacy",
        duplicateWindow: int = 65_536,
    ) -> None:
        if not isinstance(token, str) or not token.strip():
            raise TypeError("token must be a non-empty string (the Connector access key)")
        if token != token.strip() or not token.isprintable() or not token.isascii():
            # requests would refuse it later, quoting the header (and the key) in its error
            raise ValueError("token holds whitespace or characters not allowed in a header")
        if api not in API_NAMES:
            raise ValueError(f"api must be one of {', '.join(API_NAMES)}, not {api!r}")
        self._token = _Secret(token)
        self.api: Api = api
        self._dialect = DIALECTS[api](self)
        self._seen = RecentIds(int(duplicateWindow))
        self.address = self._base_url(webAddress, port)
        self.port = port
        self.timeout = float(timeout)
        self.asyncTimeout = None if asyncTimeout is None else float(asyncTimeout)
        self.pollTimeout = float(pollTimeout)

        self._session, self._pull_adapter = make_session(
            token, self._url("/notification/pull", True), fast=fastHttp
        )

        self._pending: PendingAsync[asyncResult] = PendingAsync(
            ttl=self.asyncTimeout, early_ttl=min(30.0, self.asyncTimeout or 30.0)
        )
        self._handlers: dict[str, Callable[[Message], object]] = {}
        # A group of bridges: an async response no caller of this client waits for is
        # offered here first (True: taken, e.g. relayed to the replica that made the call).
        self.asyncRelay: Callable[[dict[str, Any]], bool] | None = None
        self._handlers_lock = threading.Lock()
        self._poller = LongPoller(
            pull=self._pull,
            dispatch=self._dispatch,
            tick=self._expire_due,
            abort=self._pull_adapter.abort,
            backoff_max=float(backoffMax),
            linger=max(0.0, float(pullLinger)),
            awaited=self._pending.__len__,
        )

    # ---- plumbing --------------------------------------------------------------------

    @staticmethod
    def _base_url(webAddress: str, port: str | int) -> str:
        address = webAddress.strip().rstrip("/")
        if "://" not in address:
            address = "https://" + address
        parts = urlsplit(address)
        if parts.port is None and str(port).strip() not in ("", "80"):
            address = f"{parts.scheme}://{parts.hostname}:{int(port)}{parts.path}"
        return address

    def _url(self, path: str, versioned: bool) -> str:
        return self.address + (self.apiVersion if versioned else "") + path

    @staticmethod
    def _ep_path(ep: str, res: str = "") -> str:
        if not isinstance(ep, str) or not ep:
            raise TypeError("ep must be a non-empty string (the endpoint name)")
        path = "/" + quote(ep, safe=_SEGMENT_SAFE)
        if res:
            if not isinstance(res, str):
                raise TypeError("res must be a string (a resource path such as /3303/0/5700)")
            path += quote(res if res.startswith("/") else "/" + res, safe=_PATH_SAFE)
        return path

    def _redact(self, text: str) -> str:
        """``text`` without the access key (as is, or escaped as in a repr)."""
        token = self._token.get()
        for form in {token, repr(token)[1:-1], token.strip()}:
            if form:
                text = text.replace(form, "<secret>")
        return text

    def _request(
        self,
        method: str,
        path: str,
        *,
        versioned: bool = True,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        api_version: str | None = None,
    ) -> HttpResponse | response_codes:
        """One HTTP call; a client-side :class:`response_codes` when no answer came, its
        ``failure`` from the type of the stack's :class:`TransportError`. ``api_version``
        replaces ``/v2`` (``/v3`` for today's device directory)."""
        if api_version is None:
            url = self._url(path, versioned)
        else:
            url = self.address + api_version + path
        headers = {"Content-Type": content_type} if content_type else None
        started = time.monotonic()
        try:
            resp = self._session.request(
                method,
                url,
                params=params,
                data=body,
                headers=headers,
                timeout=(self.timeout, self.timeout),
            )
        except TransportError as exc:
            if exc.timed_out:
                err_type = REQUEST_TIMEOUT
                text = f"{method} {url}: no answer within {self.timeout:g} s ({exc.detail})"
            else:
                err_type = CONNECTION_ERROR
                text = f"{method} {url}: {exc}"  # "<kind>: <detail>"
            text = self._redact(text)
            log.warning("%s", text)
            return response_codes.client(err_type, text, failure=exc.failure)
        log.debug(
            "%s %s%s -> %d (%d bytes, %.1f ms)",
            method,
            url,
            f" {dict(params)}" if params else "",
            resp.status_code,
            len(resp.content),
            (time.monotonic() - started) * 1000,
        )
        return resp

    def _pull(self, noWait: bool) -> HttpResponse:
        return self._session.get(
            self._url("/notification/pull", True),
            params={"noWait": "true"} if noWait else None,
            headers={"Connection": "keep-alive", "Accept": "application/json"},
            timeout=(self.timeout, self.pollTimeout),
        )

    @staticmethod
    def _text(resp: HttpResponse) -> str:
        return resp.content.decode("utf-8", "replace")

    def _fail_transport(self, result: asyncResult, err: response_codes) -> asyncResult:
        result._complete(error=err, result="", status_code=0, raw_data=b"")
        return result

    def _simple(
        self,
        result: asyncResult,
        parent: str,
        resp: HttpResponse | response_codes,
        ok: tuple[int, ...],
        kind: str,
    ) -> asyncResult:
        """Complete a synchronous call. ``kind``: json, text or empty (the success body)."""
        if isinstance(resp, response_codes):
            return self._fail_transport(result, resp)
        status = resp.status_code
        result.http_status = status
        if status not in ok:
            return self._error(result, parent, resp)
        value: Any
        if kind == "json" and status != 204:
            try:
                value = json.loads(resp.content)
            except ValueError:
                err = response_codes.client(
                    INVALID_RESPONSE,
                    f"HTTP {status} with a body that is not valid JSON",
                    status_code=status,
                )
                result._complete(
                    error=err, result=self._text(resp), status_code=status, raw_data=resp.content
                )
                return result
        elif kind == "json":
            value = []
        elif kind == "text":
            value = self._text(resp)
        else:
            value = ""
        result._complete(error=False, result=value, status_code=status, raw_data=resp.content)
        return result

    def _error(self, result: asyncResult, parent: str, resp: HttpResponse) -> asyncResult:
        result._complete(
            error=response_codes.from_body(parent, resp.status_code, resp.content),
            result=self._text(resp),
            status_code=resp.status_code,
            raw_data=resp.content,
        )
        return result

    def _resource(
        self,
        result: asyncResult,
        parent: str,
        resp: HttpResponse | response_codes,
        immediate: tuple[int, ...],
    ) -> asyncResult:
        """Complete (or register) a resource verb: immediate value, 202 async id, error."""
        if isinstance(resp, response_codes):
            return self._fail_transport(result, resp)
        status = resp.status_code
        result.http_status = status
        if status == 202:
            return self._register(result, resp)
        if status == 204:  # noResp: sent non-confirmable, no answer will come
            result._complete(error=False, result="", status_code=204, raw_data=resp.content)
            return result
        if status in immediate:
            body = resp.content
            result._complete(
                error=False,
                result=value_of(body, resp.headers.get("Content-Type")),
                status_code=status,
                raw_data=body,
                payload=body if body else None,
            )
            return result
        return self._error(result, parent, resp)

    def _register(self, result: asyncResult, resp: HttpResponse) -> asyncResult:
        try:
            async_id = json.loads(resp.content)["async-response-id"]
            if not isinstance(async_id, str) or not async_id:
                raise ValueError(async_id)
        except (ValueError, KeyError, TypeError):
            err = response_codes.client(
                INVALID_RESPONSE, "HTTP 202 without an async-response-id", status_code=202
            )
            result._complete(
                error=err, result=self._text(resp), status_code=202, raw_data=resp.content
            )
            return result
        result.status_code = 202
        result.raw_data = resp.content
        self._await_async(result, async_id)
        self._expire_due()
        return result

    def _await_async(self, result: asyncResult, async_id: str) -> None:
        """``result`` waits for the ``async-responses`` entry of ``async_id``."""
        result.async_id = async_id
        if self.asyncTimeout is not None:
            result._deadline = time.monotonic() + self.asyncTimeout
            result._expire = self._expire_due
        _, early = self._pending.register(async_id, result)
        self._poller.poke()  # the answer comes on the channel: no linger before that pull
        if early is not None:
            log.debug("async id %r was answered before its 202 came back", async_id)
            self._complete_async(result, early)

    def _device_request(
        self, result: asyncResult, ep: str, params: dict[str, str], body: bytes
    ) -> asyncResult:
        """``POST /v2/device-requests/{ep}``: ``params["async-id"]`` waits for its answer
        before the request goes out; anything but 202 ends the wait and the result."""
        async_id = params["async-id"]
        self._await_async(result, async_id)
        resp = self._request(
            "POST",
            "/device-requests" + self._ep_path(ep),
            params=params,
            body=body,
            content_type="application/json",
        )
        if isinstance(resp, response_codes) or resp.status_code != 202:
            # The service did not take the id: no answer comes on the channel, and the
            # result says so (``async_id`` only for an accepted request), so that the
            # caller judges the call by this answer (or failure) and may try again.
            self._pending.forget(async_id)
            result.async_id = None
            if isinstance(resp, response_codes):
                return self._fail_transport(result, resp)
            result.http_status = resp.status_code
            return self._error(result, "resource", resp)
        result.http_status = 202
        result._accepted(202, resp.content)
        self._expire_due()
        return result

    @staticmethod
    def _complete_async(result: asyncResult, entry: Mapping[str, Any]) -> None:
        """Fill ``result`` from its ``async-responses`` entry."""
        error_text = entry.get("error")
        try:
            status = int(entry.get("status", 500 if error_text else 200))
        except (TypeError, ValueError):
            status = 500
        result.status = status
        result.extra = dict(entry)
        payload: bytes | None = None
        bad_payload = ""
        if entry.get("payload") is not None:
            try:
                payload = decode_payload(entry)
            except ValueError as exc:
                bad_payload = str(exc)
        if status >= 400 or error_text:
            failed = response_codes(
                "async-responses-handler",
                status,
                error=str(error_text) if error_text else None,
            )
            failed.errorCode = str(error_text) if error_text else None
            err: Literal[False] | response_codes = failed
            value: Any = str(error_text) if error_text else ""
        elif bad_payload:
            err = response_codes.client(INVALID_RESPONSE, bad_payload, status_code=status)
            value = ""
        else:
            err = False
            value = value_of(payload, entry.get("ct")) if payload is not None else ""
        result._complete(
            error=err, result=value, status_code=status, raw_data=dict(entry), payload=payload
        )

    def _expire_due(self) -> None:
        for async_id, result in self._pending.expire():
            err = response_codes.client(
                ASYNC_TIMEOUT,
                f"no async response for {async_id!r} within {self.asyncTimeout or 0:g} s",
            )
            log.info("async id %r expired unanswered", async_id)
            result._complete(error=err, result="", status_code=result.status_code)

    def _match_async(self, entries: object) -> None:
        if not isinstance(entries, list):
            log.warning("async-responses is a %s, not a list; ignored", type(entries).__name__)
            return
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                log.warning("async-responses entry without an id ignored: %.200r", entry)
                continue
            relay = self.asyncRelay
            if relay is not None and not self._pending.waits_for(entry["id"]) and relay(entry):
                continue
            result = self._pending.match(entry)
            if result is not None:
                self._complete_async(result, entry)

    def _dispatch(self, message: Message) -> None:
        dropped = drop_seen(message, self._seen)
        if dropped:
            log.debug(
                "%d entr%s seen before (same uid) dropped", dropped, "y" if dropped == 1 else "ies"
            )
            if not any(name in message for name in HANDLER_NAMES):
                return
        for name in HANDLER_NAMES:
            if name not in message:
                continue
            if name == MessageKind.ASYNC_RESPONSES:
                self._match_async(message[name])
            with self._handlers_lock:
                fn = self._handlers.get(name)
            if fn is None:
                self._default_handler(name, message)
                continue
            try:
                fn(message)
            except Exception:
                log.exception("the %r handler %r raised", name, fn)
        self._expire_due()

    @staticmethod
    def _default_handler(name: str, message: Message) -> None:
        items = message.get(name)
        count = len(items) if isinstance(items, list) else 0
        if name != MessageKind.ASYNC_RESPONSES:
            log.debug("%s: %d entr%s (no handler set)", name, count, "y" if count == 1 else "ies")

    # ---- service information -----------------------------------------------------------

    def getConnectorVersion(self) -> asyncResult:
        """GET the current Connector version (``GET /``, unversioned); ``result`` is text.
        Today's service has no such route: an ``unsupported`` error."""
        return self._dialect.service_info(asyncResult(), "get_mdc_version", "/", "text")

    def getApiVersions(self) -> asyncResult:
        """The REST API versions the service accepts (``GET /rest-versions``); a list.
        Today's service has no such route: an ``unsupported`` error."""
        return self._dialect.service_info(
            asyncResult(), "get_rest_version", "/rest-versions", "json"
        )

    def getLimits(self) -> asyncResult:
        """The account's limits (``GET /v2/limits``); a dict. Today's service has no such
        route: an ``unsupported`` error."""
        return self._dialect.service_info(asyncResult(), "limit", "/limits", "json")

    def probeApi(self) -> asyncResult:
        """Which dialect the service speaks, from one call (``GET /v3/devices?limit=2``):
        ``result`` is ``"current"`` (today's Device Management answers it) or
        ``"legacy"`` (a 2016 Connector or Device Server: 404); any other answer is the
        error. Nothing changes in the client: :meth:`useApi` switches."""
        result = asyncResult()
        resp = self._request("GET", "/devices", api_version="/v3", params={"limit": "2"})
        if isinstance(resp, response_codes):
            return self._fail_transport(result, resp)
        result.http_status = resp.status_code
        if resp.status_code in (200, 404):
            api = "current" if resp.status_code == 200 else "legacy"
            result._complete(error=False, result=api, status_code=resp.status_code)
            return result
        return self._error(result, "get_endpoints", resp)

    def useApi(self, api: Api) -> None:
        """Speak ``api`` (``"legacy"`` or ``"current"``) from now on."""
        if api not in API_NAMES:
            raise ValueError(f"api must be one of {', '.join(API_NAMES)}, not {api!r}")
        self.api = api
        self._dialect = DIALECTS[api](self)

    # ---- endpoints and resources ----------------------------------------------------------

    def getEndpoints(self, typeOfEndpoint: str = "", *, deviceObjects: bool = True) -> asyncResult:
        """All registered endpoints, a list of dicts with ``name`` and ``type``: legacy
        ``GET /v2/endpoints[?type=]``; today every page of ``GET /v3/devices`` (registered
        devices, ``endpoint_type`` filter), ``name`` being the device ID every call takes,
        with ``endpoint_name`` and the ``device`` object beside it (``deviceObjects=False``
        leaves the device objects out: a listing of 100,000 then takes 160 MB less)."""
        result = asyncResult()
        if typeOfEndpoint:
            result.extra["type"] = typeOfEndpoint
        return self._dialect.list_endpoints(result, typeOfEndpoint, deviceObjects)

    def getResources(self, ep: str, noResp: bool = False, cacheOnly: bool = False) -> asyncResult:
        """The resources of ``ep`` (``GET /v2/endpoints/{ep}``); a list of dicts."""
        result = asyncResult()
        result.endpoint = ep
        flags = self._dialect.listing_flags(noResp, cacheOnly)
        if isinstance(flags, str):
            return unsupported(result, flags)
        resp = self._request("GET", "/endpoints" + self._ep_path(ep), params=flags)
        return self._simple(result, "get_resources", resp, (200,), "json")

    def getResourceValue(
        self,
        ep: str,
        res: str,
        cbfn: Callback | str = "",
        noResp: bool = False,
        cacheOnly: bool = False,
        *,
        retry: int | None = None,
        expiry: int | None = None,
    ) -> asyncResult:
        """Read ``res`` on ``ep``: 200 is a cached value, 202 an async answer to come.
        Today's service: a device request, always answered later. ``retry`` (delivery
        attempts after the first) and ``expiry`` (seconds delivery is tried) go with a
        device request; the legacy service has neither (an ``unsupported`` error)."""
        result = asyncResult(callback=cbfn)
        result.endpoint, result.resource = ep, res
        return self._dialect.resource_call(
            result, "GET", ep, res, None, noResp=noResp, cacheOnly=cacheOnly,
            retry=retry, expiry=expiry,
        )  # fmt: skip

    @staticmethod
    def _body(data: object) -> tuple[bytes | None, str | None]:
        """A value as raw bytes and its content type (never JSON-quoted)."""
        if data is None or data == "" or data == b"":
            return None, None
        if isinstance(data, bytes | bytearray | memoryview):
            return bytes(data), "application/octet-stream"
        if isinstance(data, bool):
            raise TypeError("give a boolean value as text (e.g. '1' or 'true')")
        if isinstance(data, str | int | float):
            return str(data).encode("utf-8"), "text/plain"
        raise TypeError(f"data must be str or bytes, not {type(data).__name__}")

    def putResourceValue(
        self,
        ep: str,
        res: str,
        data: str | bytes,
        cbfn: Callback | str = "",
        *,
        retry: int | None = None,
        expiry: int | None = None,
    ) -> asyncResult:
        """Write ``data`` (sent as raw bytes: str as UTF-8 text) to ``res`` on ``ep``;
        ``retry`` and ``expiry`` as for :meth:`getResourceValue`."""
        result = asyncResult(callback=cbfn)
        result.endpoint, result.resource = ep, res
        self._body(data)  # a value of the wrong type raises before anything is sent
        return self._dialect.resource_call(result, "PUT", ep, res, data, retry=retry, expiry=expiry)

    def postResource(
        self,
        ep: str,
        res: str,
        data: str | bytes = "",
        cbfn: Callback | str = "",
        *,
        retry: int | None = None,
        expiry: int | None = None,
    ) -> asyncResult:
        """Execute ``res`` on ``ep`` with the optional argument ``data`` (raw bytes);
        ``retry`` and ``expiry`` as for :meth:`getResourceValue`."""
        result = asyncResult(callback=cbfn)
        result.endpoint, result.resource = ep, res
        self._body(data)
        return self._dialect.resource_call(
            result, "POST", ep, res, data, retry=retry, expiry=expiry
        )

    def deleteEndpoint(self, ep: str, cbfn: Callback | str = "") -> asyncResult:
        """Send DELETE to an endpoint (legacy ``DELETE /v2/endpoints/{ep}``; today a
        ``DELETE`` device request on ``/``)."""
        result = asyncResult(callback=cbfn)
        result.endpoint = ep
        return self._dialect.resource_call(result, "DELETE", ep, "", None)

    # ---- subscriptions ------------------------------------------------------------------

    def putResourceSubscription(self, ep: str, res: str, cbfn: Callback | str = "") -> asyncResult:
        """Subscribe to changes of ``res`` on ``ep`` (200 at once, or 202 async)."""
        result = asyncResult(callback=cbfn)
        result.endpoint, result.resource = ep, res
        resp = self._request("PUT", "/subscriptions" + self._ep_path(ep, res))
        return self._resource(result, "subscribe", resp, (200,))

    def deleteEndpointSubscriptions(self, ep: str) -> asyncResult:
        """Remove all subscriptions of ``ep`` (``DELETE /v2/subscriptions/{ep}``)."""
        result = asyncResult()
        result.endpoint = ep
        resp = self._request("DELETE", "/subscriptions" + self._ep_path(ep))
        return self._simple(result, "delete_endpoint_subscription", resp, (204,), "empty")

    def deleteResourceSubscription(self, ep: str, res: str) -> asyncResult:
        """Remove the subscription to ``res`` on ``ep``."""
        result = asyncResult()
        result.endpoint, result.resource = ep, res
        resp = self._request("DELETE", "/subscriptions" + self._ep_path(ep, res))
        return self._simple(result, "unsubscribe", resp, (204,), "empty")

    def deleteAllSubscriptions(self) -> asyncResult:
        """Remove every subscription of the domain (``DELETE /v2/subscriptions``)."""
        result = asyncResult()
        resp = self._request("DELETE", "/subscriptions")
        return self._simple(result, "unsubscribe", resp, (204,), "empty")

    def getEndpointSubscriptions(self, ep: str) -> asyncResult:
        """The subscribed resources of ``ep``; ``result`` is the ``text/uri-list`` text."""
        result = asyncResult()
        result.endpoint = ep
        resp = self._request("GET", "/subscriptions" + self._ep_path(ep))
        return self._simple(result, "get_endpoint_subscription", resp, (200,), "text")

    def getResourceSubscription(self, ep: str, res: str) -> asyncResult:
        """Whether ``res`` on ``ep`` is subscribed (200, the uri-list line) or not (404)."""
        result = asyncResult()
        result.endpoint, result.resource = ep, res
        resp = self._request("GET", "/subscriptions" + self._ep_path(ep, res))
        return self._simple(result, "get_resource_subscription", resp, (200,), "text")

    def putPreSubscription(self, JSONdata: list[dict[str, Any]] | str) -> asyncResult:
        """Set the pre-subscription rules: a list of rules, or the same as a JSON string.

        A single rule (a dict) is sent as a one-rule list. The body is a JSON array.
        """
        rules: object = JSONdata
        if isinstance(rules, str | bytes):
            try:
                rules = json.loads(rules)
            except ValueError as exc:
                raise ValueError(f"pre-subscription data is not valid JSON: {exc}") from None
        if isinstance(rules, dict):
            rules = [rules]
        if isinstance(rules, tuple):
            rules = list(rules)
        if not isinstance(rules, list):
            raise TypeError("pre-subscription data must be a list of rules (JSON array)")
        result = asyncResult()
        resp = self._request(
            "PUT",
            "/subscriptions",
            body=json.dumps(rules).encode("utf-8"),
            content_type="application/json",
        )
        return self._simple(result, "presubscription", resp, (200, 204), "json")

    def getPreSubscription(self) -> asyncResult:
        """The current pre-subscription rules (``GET /v2/subscriptions``); a list."""
        result = asyncResult()
        resp = self._request("GET", "/subscriptions")
        return self._simple(result, "presubscription", resp, (200,), "json")

    # ---- callback (webhook) ---------------------------------------------------------------

    @staticmethod
    def _callback_headers(headers: object) -> dict[str, str]:
        if not headers:
            return {}
        if isinstance(headers, Mapping):
            return {str(k): str(v) for k, v in headers.items()}
        if not isinstance(headers, str):
            raise TypeError("headers must be a dict or a string")
        try:
            parsed = json.loads(headers)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return {str(k): str(v) for k, v in parsed.items()}
        out: dict[str, str] = {}
        for line in headers.splitlines():
            if not line.strip():
                continue
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise ValueError("headers must be a dict, a JSON object or 'Name: value' lines")
            out[name.strip()] = value.strip()
        return out

    def putCallback(self, url: str, headers: Mapping[str, str] | str = "") -> asyncResult:
        """Register the webhook ``url`` (instead of long polling).

        ``headers``: what the service sends back with each call, as a dict, a JSON object
        string or ``"Name: value"`` lines.
        """
        body: dict[str, Any] = {"url": url}
        extra = self._callback_headers(headers)
        if extra:
            body["headers"] = extra
        result = asyncResult()
        resp = self._request(
            "PUT",
            "/notification/callback",
            body=json.dumps(body).encode("utf-8"),
            content_type="application/json",
        )
        return self._simple(result, "put_callback_url", resp, (200, 204), "empty")

    def getCallback(self) -> asyncResult:
        """The registered webhook: ``{"url": ..., "headers": {...}}``, or 404."""
        result = asyncResult()
        resp = self._request("GET", "/notification/callback")
        return self._simple(result, "get_callback_url", resp, (200,), "json")

    def deleteCallback(self) -> asyncResult:
        """Remove the registered webhook (204, or 404 when there is none)."""
        result = asyncResult()
        resp = self._request("DELETE", "/notification/callback")
        return self._simple(result, "delete_callback_url", resp, (200, 204), "empty")

    def getNotificationChannel(self) -> asyncResult:
        """Today's service: the channel registered for this key,
        ``{"delivery_mechanism": "CALLBACK" | "WEB_SOCKET" | "LONG_POLLING"}``, or 404."""
        result = asyncResult()
        resp = self._request("GET", "/notification/channel")
        return self._simple(result, "get_callback_url", resp, (200,), "json")

    def deleteWebsocket(self) -> asyncResult:
        """Today's service: delete the WebSocket channel and its queue (the socket is
        closed with 1000); needed before a channel of another kind can be registered."""
        result = asyncResult()
        resp = self._request("DELETE", "/notification/websocket")
        return self._simple(result, "delete_callback_url", resp, (200, 204), "empty")

    # ---- the notification channel ---------------------------------------------------------

    def setHandler(self, handler: str, cbfn: Callable[[Message], object] | str | None) -> None:
        """Call ``cbfn(message)`` for every channel message holding ``handler`` entries.

        ``handler`` is one of ``async-responses``, ``registrations-expired``,
        ``de-registrations``, ``reg-updates``, ``registrations``, ``notifications``;
        ``cbfn`` gets the whole message dict (payloads still base64). A falsy ``cbfn``
        restores the default (log only). Async responses are matched to their results
        whatever the ``async-responses`` handler does.
        """
        if handler not in HANDLER_NAMES:
            raise ValueError(
                f"{handler!r} is not a notification type; use one of {', '.join(HANDLER_NAMES)}"
            )
        if cbfn and not callable(cbfn):
            raise TypeError("cbfn must be callable")
        with self._handlers_lock:
            if cbfn and callable(cbfn):
                self._handlers[handler] = cbfn
            else:
                self._handlers.pop(handler, None)

    def startLongPolling(self, noWait: bool = False) -> threading.Thread:
        """Start the long-poll thread (or return the running one).

        Returns once the first pull was answered (at most ``timeout`` seconds): from
        then on the service knows the channel, so a resource call made right away does
        not get ``412 No notification channel``. ``noWait=True`` pulls with
        ``?noWait=true`` throughout (answers come at once; empty ones are paced).
        """
        if self._ws is not None and self._ws.is_running():
            raise RuntimeError("the WebSocket channel is running: stopWebsocket() first")
        return self._poller.start(noWait, first_pull_wait=self.timeout)

    def stopLongPolling(self, *, timeout: float = 5.0) -> None:
        """Stop the long-poll thread; waits up to ``timeout`` s for it to end."""
        self._poller.stop(timeout)

    # ---- the WebSocket channel (today's service; bridge/connector/websocket.py) -----------

    _ws: WebSocketChannel | None = None
    _ws_lock = threading.Lock()  # one channel made at a time (start itself waits outside)

    def startWebsocket(
        self,
        *,
        include_uid: bool = True,
        include_original_ep: bool = True,
        include_timestamp: bool = False,
        deregistrations_as_object: bool = False,
        max_chunk_size: int | None = None,
        onState: StateListener | None = None,
        connectTimeout: float | None = None,
        heartbeat: float = 30.0,
    ) -> str:
        """Start the WebSocket notification channel of today's service and return its state.

        Registers the channel (``PUT /v2/notification/websocket`` with the serialization
        options given here; the first registration's options stay in force until the
        channel is deleted), then connects; messages go to the ``setHandler`` handlers and
        complete async results, as with the long poll, on the channel's own thread.
        Returns once the first connection is up (``"connected"``) or failed, at most
        ``connectTimeout`` seconds (default: ``timeout``) later (``"connecting"``: neither
        yet); a failed first try that the channel tries again says ``"reconnecting"``, one
        the service ended says why (``"refused"``, ``"rejected"``...; see
        :mod:`bridge.connector.websocket`).
        ``onState(state, detail)`` is called on every change of state. Raises
        ``RuntimeError`` while long polling runs (one channel at a time); a running
        WebSocket channel is left as it is.
        """
        if self._poller.is_running():
            raise RuntimeError("long polling is running: stopLongPolling() first")
        wait = self.timeout if connectTimeout is None else float(connectTimeout)
        with self._ws_lock:
            channel = self._ws
            if channel is None or not channel.is_running():
                if channel is not None:
                    channel.stop(timeout=1.0)
                channel = self._ws = self._new_websocket(
                    Serialization(
                        include_uid=include_uid,
                        include_original_ep=include_original_ep,
                        include_timestamp=include_timestamp,
                        deregistrations_as_object=deregistrations_as_object,
                        max_chunk_size=max_chunk_size,
                    ),
                    onState,
                    float(heartbeat),
                )
        return channel.start(wait)

    def _new_websocket(
        self, serialization: Serialization, onState: StateListener | None, heartbeat: float
    ) -> WebSocketChannel:
        return WebSocketChannel(
            self.address,
            self._token.get,
            self._register_websocket,
            self._dispatch,
            self._expire_due,
            serialization=serialization,
            on_state=onState,
            backoff_max=self._poller.backoff_max,
            heartbeat=heartbeat,
            connect_timeout=self.timeout,
        )

    def stopWebsocket(self, *, timeout: float = 5.0) -> None:
        """Close the socket (1000) and stop the channel; waits up to ``timeout`` s."""
        if self._ws is not None:
            self._ws.stop(timeout)

    def websocketState(self) -> str:
        """The WebSocket channel's state (``"stopped"`` when it was never started)."""
        return self._ws.state if self._ws is not None else "stopped"

    def websocketStats(self) -> dict[str, Any]:
        """The WebSocket channel's counters and state (:meth:`WebSocketChannel.stats`)."""
        if self._ws is None:
            return {"state": "stopped", "detail": "not started", "running": False}
        stats = self._ws.stats()
        stats["running"] = self._ws.is_running()
        return stats

    def _register_websocket(self, body: Mapping[str, Any]) -> int | str:
        resp = self._request(
            "PUT",
            "/notification/websocket",
            body=json.dumps(body).encode("utf-8"),
            content_type="application/json",
        )
        return resp.error if isinstance(resp, response_codes) else resp.status_code

    def handler(self, data: str | bytes | bytearray | Mapping[str, Any] | HttpResponse) -> bool:
        """Handle one channel message (e.g. the body a webhook received).

        ``data`` may be ``str``, ``bytes``, an already-parsed dict or an HTTP answer
        (its body). Returns ``True`` when the message was dispatched, ``False`` (with a
        logged reason) when it was not a JSON object.
        """
        if isinstance(data, RESPONSE_TYPES):
            data = data.content
        if isinstance(data, Mapping):
            message = dict(data)
        elif isinstance(data, str | bytes | bytearray):
            try:
                message = parse_message(bytes(data) if isinstance(data, bytearray) else data)
            except ValueError as exc:
                log.error("handler: %s; message ignored", exc)
                return False
        else:
            log.error("handler: cannot handle a %s; message ignored", type(data).__name__)
            return False
        self._dispatch(message)
        return True

    def debug(self, onOff: bool, level: str | int = "DEBUG") -> None:
        """Switch the library's log output (logger ``bridge.connector``) on or off.

        On: the logger gets ``level`` and one stderr handler of its own. Off: both are
        removed again and the application's logging configuration decides.
        """
        logger = logging.getLogger("bridge.connector")
        ours = [h for h in logger.handlers if h.get_name() == "bridge.connector.debug"]
        if not onOff:
            logger.setLevel(logging.NOTSET)
            for h in ours:
                logger.removeHandler(h)
            return
        if isinstance(level, str):
            if level.upper() not in _LEVELS:
                raise ValueError(f"unknown level {level!r}; use one of {', '.join(_LEVELS)}")
            numeric = _LEVELS[level.upper()]
        else:
            numeric = int(level)
        logger.setLevel(numeric)
        if not ours:
            logger.addHandler(_debug_handler())
        logger.log(numeric, "connector debugging at level %s", logging.getLevelName(numeric))

    # ---- extras ---------------------------------------------------------------------------

    def longPollStats(self) -> dict[str, Any]:
        """Channel counters: pulls, messages, empty, failures, consecutive_failures, ..."""
        stats = self._poller.stats()
        stats["running"] = self._poller.is_running()
        return stats

    def duplicatesDropped(self) -> int:
        """How many channel entries were dropped because their ``uid`` was seen before."""
        return self._seen.dropped

    def pendingCount(self) -> int:
        """How many async ids wait for their answer."""
        return len(self._pending)

    @staticmethod
    def resultOfAsyncResponse(entry: Mapping[str, Any]) -> asyncResult:
        """The result an ``async-responses`` entry gives (for an answer whose caller is
        gone: a survivor of a group answers the command from its record)."""
        result = asyncResult(callback=None)
        result.async_id = str(entry.get("id"))
        connector._complete_async(result, entry)
        return result

    def awaitsAsync(self, async_id: str) -> bool:
        """Whether a caller of this client waits for the answer to ``async_id``."""
        return self._pending.waits_for(async_id)

    def deliverAsyncResponses(self, entries: list[dict[str, Any]]) -> None:
        """Complete the callers waiting for these ``async-responses`` entries, as if they
        had come on this client's channel (a group of bridges relays them from the
        channel holder)."""
        self._match_async(entries)

    def forgetAsync(self, async_id: str) -> bool:
        """Stop waiting for the answer to ``async_id`` (the caller gave up on it; its
        result stays pending and a late answer is dropped). For callers that keep their
        own deadlines (``asyncTimeout=None``). False when the id did not wait."""
        return self._pending.forget(async_id)

    def close(self) -> None:
        """Stop long polling and close the HTTP session (the object is done after this)."""
        self._poller.stop(timeout=1.0)
        self.stopWebsocket(timeout=1.0)
        self._session.close()

    def __enter__(self) -> connector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<connector {self.address} long_polling="
            f"{'on' if self._poller.is_running() else 'off'} pending={len(self._pending)}>"
        )
