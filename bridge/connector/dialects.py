"""The two dialects of the service, behind one interface: the calls that differ.

The seed API was written for the 2016 Connector (:class:`Legacy`). Today's Device
Management (:class:`Current`) removed three of its routes: the endpoint list (now
``GET /v3/devices``), the resource calls ``/v2/endpoints/{id}/{path}`` (now
``POST /v2/device-requests/{id}``) and the long poll (now a WebSocket or the callback);
and the version and limits routes are gone. Everything else (resource listings,
subscriptions, pre-subscriptions, the callback) is the same in both, and stays in
:class:`~bridge.connector.api.connector`. Each seed method that differs asks the
client's dialect, so no call branches on the dialect's name.

A seed option a dialect has no equivalent for (``noResp`` and ``cacheOnly`` today;
``retry`` and ``expiry`` on the legacy service; the version and limits calls today)
completes the result at once with an ``unsupported`` error: nothing is sent, and nothing
is silently ignored.
"""

from __future__ import annotations

import base64
import contextvars
import json
import uuid
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from bridge.connector.errors import INVALID_RESPONSE, UNSUPPORTED, response_codes
from bridge.connector.result import asyncResult
from bridge.connector.transport import HttpResponse

#: The async id the next device request made in this context uses (None: a new uuid).
#: A group of bridges sets it to an id that names the command slot
#: (:mod:`bridge.cluster.commands`), so that the channel holder knows where the answer goes.
NEXT_ASYNC_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "NEXT_ASYNC_ID", default=None
)

if TYPE_CHECKING:
    from bridge.connector.api import connector

Api = Literal["legacy", "current"]
API_NAMES: tuple[Api, ...] = ("legacy", "current")

#: ``GET /v3/devices`` page size the client asks for (the service's maximum).
DEVICE_PAGE = 1000


def unsupported(result: asyncResult, text: str) -> asyncResult:
    """Complete ``result`` with an ``unsupported`` error: nothing was sent."""
    result._complete(
        error=response_codes.client(UNSUPPORTED, text), result="", status_code=0, raw_data=b""
    )
    return result


class Dialect(ABC):
    """How one dialect of the service carries the seed calls that differ."""

    name: ClassVar[Api]

    def __init__(self, client: connector) -> None:
        self._c = client

    @abstractmethod
    def service_info(self, result: asyncResult, parent: str, path: str, kind: str) -> asyncResult:
        """``getConnectorVersion``, ``getApiVersions``, ``getLimits``."""

    @abstractmethod
    def list_endpoints(
        self, result: asyncResult, type_: str, device_objects: bool = True
    ) -> asyncResult:
        """``getEndpoints``: the registered endpoints in the seed's shape (``device_objects``:
        today's listing keeps each device object beside them)."""

    @abstractmethod
    def listing_flags(self, noResp: bool, cacheOnly: bool) -> dict[str, str] | str | None:
        """The query of ``getResources`` for the flags, or a str saying why they cannot go."""

    @abstractmethod
    def resource_call(
        self,
        result: asyncResult,
        method: str,
        ep: str,
        res: str,
        data: object,
        *,
        noResp: bool = False,
        cacheOnly: bool = False,
        retry: int | None = None,
        expiry: int | None = None,
    ) -> asyncResult:
        """Read (GET), write (PUT), execute (POST) ``res`` on ``ep``, or delete the
        endpoint (DELETE with ``res`` empty); the answer comes now or later."""


class Legacy(Dialect):
    """The 2016 Connector (and on-premise Device Server): the seed's own routes."""

    name: ClassVar[Api] = "legacy"

    def service_info(self, result: asyncResult, parent: str, path: str, kind: str) -> asyncResult:
        c = self._c
        versioned = path == "/limits"
        return c._simple(result, parent, c._request("GET", path, versioned=versioned), (200,), kind)

    def list_endpoints(
        self, result: asyncResult, type_: str, device_objects: bool = True
    ) -> asyncResult:
        c = self._c
        params = {"type": type_} if type_ else None
        resp = c._request("GET", "/endpoints", params=params)
        return c._simple(result, "get_endpoints", resp, (200,), "json")

    def listing_flags(self, noResp: bool, cacheOnly: bool) -> dict[str, str] | str | None:
        # Both flags go out when either is set (as the original did).
        if not (noResp or cacheOnly):
            return None
        return {
            "noResp": "true" if noResp else "false",
            "cacheOnly": "true" if cacheOnly else "false",
        }

    def resource_call(
        self,
        result: asyncResult,
        method: str,
        ep: str,
        res: str,
        data: object,
        *,
        noResp: bool = False,
        cacheOnly: bool = False,
        retry: int | None = None,
        expiry: int | None = None,
    ) -> asyncResult:
        if retry is not None or expiry is not None:
            return unsupported(
                result,
                "retry and expiry are options of today's device requests; the legacy "
                "Connector has none (use api='current')",
            )
        c = self._c
        path = "/endpoints" + c._ep_path(ep, res)
        if method == "GET":
            flags = self.listing_flags(noResp, cacheOnly)
            resp = c._request("GET", path, params=None if isinstance(flags, str) else flags)
            return c._resource(result, "resource", resp, (200,))
        if method == "DELETE":
            return c._resource(result, "resource", c._request("DELETE", path), (200,))
        body, ctype = c._body(data)
        if method == "PUT":  # an empty value is still a body, as the Connector expects
            body, ctype = (body if body is not None else b""), (ctype or "text/plain")
        resp = c._request(method, path, body=body, content_type=ctype)
        return c._resource(result, "resource", resp, (200, 201))


class Current(Dialect):
    """Today's Device Management (Pelion, now Izuma Networks): ``/v3/devices`` and
    device requests. Endpoints are addressed by device ID."""

    name: ClassVar[Api] = "current"

    def service_info(self, result: asyncResult, parent: str, path: str, kind: str) -> asyncResult:
        return unsupported(result, f"today's service has no {path} route (removed)")

    def list_endpoints(
        self, result: asyncResult, type_: str, device_objects: bool = True
    ) -> asyncResult:
        """Every registered device, all pages of ``GET /v3/devices``, in the seed's shape:
        ``name`` is the device ID (what every call takes), ``endpoint_name`` the name
        the device registered with, ``device`` the whole device object (left out without
        ``device_objects``: some 1.6 KB each, 160 MB for 100,000 devices)."""
        c = self._c
        params = {"limit": str(DEVICE_PAGE), "state__eq": "registered"}
        if type_:
            params["endpoint_type__eq"] = type_
        listed: list[dict[str, Any]] = []
        pages = 0
        while True:
            resp = c._request("GET", "/devices", api_version="/v3", params=params)
            if isinstance(resp, response_codes):
                return c._fail_transport(result, resp)
            if resp.status_code != 200:
                result.http_status = resp.status_code
                return c._error(result, "get_endpoints", resp)
            page = _page(resp)
            if page is None:
                err = response_codes.client(
                    INVALID_RESPONSE, "GET /v3/devices: not a list page", status_code=200
                )
                result._complete(
                    error=err, result=c._text(resp), status_code=200, raw_data=resp.content
                )
                return result
            pages += 1
            for device in page["data"]:
                if isinstance(device, dict) and isinstance(device.get("id"), str):
                    listed.append(_seed_endpoint(device, device_objects))
            if not page.get("has_more") or not page["data"]:
                break
            params["after"] = str(page["data"][-1].get("id"))
        result.http_status = 200
        result.extra["pages"] = pages
        if type_:
            result.extra["type"] = type_
        result._complete(error=False, result=listed, status_code=200, raw_data=b"")
        return result

    def listing_flags(self, noResp: bool, cacheOnly: bool) -> dict[str, str] | str | None:
        if noResp or cacheOnly:
            return "today's service has no noResp or cacheOnly option"
        return None

    def resource_call(
        self,
        result: asyncResult,
        method: str,
        ep: str,
        res: str,
        data: object,
        *,
        noResp: bool = False,
        cacheOnly: bool = False,
        retry: int | None = None,
        expiry: int | None = None,
    ) -> asyncResult:
        """``POST /v2/device-requests/{id}?async-id=``: the id is made here and waits for
        its answer before the request goes out, so the answer can never come unknown."""
        if noResp or cacheOnly:
            return unsupported(
                result,
                "today's service has no noResp or cacheOnly: every device request is "
                "answered on the notification channel",
            )
        c = self._c
        request: dict[str, Any] = {"method": method, "uri": _uri(res)}
        body, ctype = c._body(data)
        if body is not None:
            request["payload-b64"] = base64.b64encode(body).decode("ascii")
            request["content-type"] = ctype
        params = {"async-id": NEXT_ASYNC_ID.get() or uuid.uuid4().hex}
        for name, value in (("retry", retry), ("expiry-seconds", expiry)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f"{name} must be an int (seconds for expiry)")
                params[name] = str(value)
        return c._device_request(result, ep, params, json.dumps(request).encode())


def _uri(res: str) -> str:
    if not isinstance(res, str):
        raise TypeError("res must be a string (a resource path such as /3303/0/5700)")
    return res if res.startswith("/") else "/" + res


def _page(resp: HttpResponse) -> dict[str, Any] | None:
    try:
        page = json.loads(resp.content)
    except ValueError:
        return None
    if not isinstance(page, dict) or not isinstance(page.get("data"), list):
        return None
    return page


def _seed_endpoint(device: dict[str, Any], with_device: bool = True) -> dict[str, Any]:
    state = device.get("state")
    entry = {
        "name": device["id"],
        "endpoint_name": device.get("endpoint_name"),
        "type": device.get("endpoint_type"),
        "status": "ACTIVE" if state == "registered" else state,
    }
    if with_device:
        entry["device"] = device
    return entry


DIALECTS: dict[Api, type[Dialect]] = {"legacy": Legacy, "current": Current}
