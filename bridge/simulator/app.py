"""The HTTP face of the emulator: aiohttp, one dispatcher over the REST routes.

Every route answers under ``/v2/x`` and ``/x``, with or without a trailing slash. Path
segments are percent-decoded one by one, so an endpoint name may contain an encoded
``/``. Faults are applied here, by route name, before the operation runs.

The current dialect answers every error with the service's error body
(:mod:`bridge.simulator.errors`), and the routes the service removed (the endpoint list,
the resource verbs, the long poll, the version and limits routes) with 404 ``not_found``,
as a route that does not exist.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import NoReturn
from urllib.parse import unquote

from aiohttp import web

from bridge.simulator import channel as ch
from bridge.simulator.admin import handle_admin
from bridge.simulator.core import (
    VERSION_TEXT,
    EmulatorCore,
    Reply,
    api_error,
    as_json,
    bool_arg,
    text,
)
from bridge.simulator.errors import error_json
from bridge.simulator.websocket import key_matches, protocol_key

Handler = Callable[[web.Request, list[str]], Awaitable[Reply | web.StreamResponse]]

MALFORMED_BODY = b'{"notifications":[{"ep":"node-001","pa'


def split_path(raw_path: str) -> list[str]:
    """``/v2/endpoints/node-001/3303/0/5700/`` -> ``['endpoints', 'node-001', '3303', ...]``."""
    parts = raw_path.split("/")[1:]
    while parts and parts[-1] == "":
        parts.pop()
    if parts and parts[0] == "v2":
        parts = parts[1:]
    return [unquote(p) for p in parts]


# Routes only the current dialect has.
CURRENT_ONLY = frozenset(
    {"devices", "device", "websocket-put", "websocket-get", "websocket-delete", "websocket-connect"}
)
# Routes the current dialect no longer has (the service removed them).
REMOVED = frozenset(
    {
        "version",
        "rest-versions",
        "limits",
        "endpoints",
        "endpoint-delete",
        "resource-get",
        "resource-put",
        "resource-post",
        "resource-delete",
        "pull",
    }
)


def resolve(method: str, parts: list[str], current: bool = False) -> tuple[str | None, bool]:
    """The route name for a method and path; (None, path_known) when there is none. In
    the current dialect a removed route is no route (None, False)."""
    _, known = _resolve(method, parts)
    if not known:
        return None, False
    gone = REMOVED if current else CURRENT_ONLY
    table = {m: _resolve(m, parts)[0] for m in ("GET", "PUT", "POST", "DELETE")}
    live = {m: r for m, r in table.items() if r is not None and r not in gone}
    if not live:
        return None, False
    return live.get(method), True


def _resolve(method: str, parts: list[str]) -> tuple[str | None, bool]:
    n = len(parts)
    head = parts[0] if parts else ""
    table: dict[str, str] = {}
    if n == 0:
        table = {"GET": "version"}
    elif head == "rest-versions" and n == 1:
        table = {"GET": "rest-versions"}
    elif head == "limits" and n == 1:
        table = {"GET": "limits"}
    elif head == "endpoints":
        if n == 1:
            table = {"GET": "endpoints"}
        elif n == 2:
            table = {"GET": "endpoint", "DELETE": "endpoint-delete"}
        else:
            table = {
                "GET": "resource-get",
                "PUT": "resource-put",
                "POST": "resource-post",
                "DELETE": "resource-delete",
            }
    elif head == "subscriptions":
        if n == 1:
            table = {
                "PUT": "presubscription-put",
                "GET": "presubscription-get",
                "DELETE": "subscriptions-delete-all",
            }
        elif n == 2:
            table = {"GET": "endpoint-subscriptions-get", "DELETE": "endpoint-subscriptions-delete"}
        else:
            table = {
                "PUT": "subscription-put",
                "GET": "subscription-get",
                "DELETE": "subscription-delete",
            }
    elif head == "v3" and n in (2, 3) and parts[1] == "devices":
        table = {"GET": "devices" if n == 2 else "device"}
    elif head == "device-requests" and n == 2:
        table = {"POST": "device-requests"}
    elif head == "notification" and n == 2 and parts[1] == "pull":
        table = {"GET": "pull"}
    elif head == "notification" and n == 2 and parts[1] == "callback":
        table = {"PUT": "callback-put", "GET": "callback-get", "DELETE": "callback-delete"}
    elif head == "notification" and n == 2 and parts[1] == "channel":
        table = {"GET": "channel"}
    elif head == "notification" and n == 2 and parts[1] == "websocket":
        table = {"PUT": "websocket-put", "GET": "websocket-get", "DELETE": "websocket-delete"}
    elif head == "notification" and n == 2 and parts[1] == "websocket-connect":
        table = {"GET": "websocket-connect"}
    if not table:
        return None, False
    return table.get(method), True


class RestApp:
    """Builds the aiohttp application around one :class:`EmulatorCore`."""

    def __init__(self, core: EmulatorCore) -> None:
        self.core = core
        self.app = web.Application(client_max_size=16 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self.dispatch)

    def authorized(self, request: web.Request, parts: list[str]) -> bool:
        """The access key is right: a bearer token, or (on the WebSocket handshake) a
        ``pelion_<key>`` subprotocol. While the ``revoke_key`` fault is on, only the
        admin routes still take the key."""
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        token = self.core.token
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            key.strip().encode(), token.encode()
        )
        if not ok and parts[-2:] == ["notification", "websocket-connect"]:
            ok = key_matches(protocol_key(request), token)
        if ok and self.core.faults.key_revoked:
            return bool(parts) and parts[0] == "admin"
        return ok

    def error(self, status: int, message: str) -> web.Response:
        """An error answer: plain text (legacy) or the service's error body (current)."""
        if self.core.current:
            return web.Response(
                status=status, body=error_json(status, message), content_type="application/json"
            )
        return web.Response(status=status, text=message)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = split_path(request.rel_url.raw_path)
        if not self.authorized(request, parts):
            return self.error(401, "Unauthorized: missing or wrong access key")
        if parts and parts[0] == "admin" and not request.rel_url.raw_path.startswith("/v2/"):
            return await handle_admin(self.core, request, parts[1:])
        route, known = resolve(request.method, parts, self.core.current)
        if route is None:
            if known:
                return self.error(405, f"{request.method} not allowed here")
            return self.error(404, "no such route")
        core = self.core
        core.count("requests")
        if route == "websocket-connect":
            return await core.ws.connect(request, lambda: self.route_faults(route))
        faulted = await self.route_faults(route)
        if faulted is not None:
            return faulted
        if core.faults.malformed_for(route):
            return web.Response(status=200, body=MALFORMED_BODY, content_type="application/json")
        if route == "pull":
            return await self.pull(request)
        reply = await self.operate(route, request, parts)
        if core.current and reply.status >= 400 and reply.content_type != "application/json":
            reply = api_error(reply.status, reply.body.decode("utf-8", "replace"))
        return web.Response(status=reply.status, body=reply.body or None, headers=_ct(reply))

    async def route_faults(self, route: str) -> web.Response | None:
        """The faults that hit a request before it runs: hang, forced status, error rate,
        latency. An answer when one decides it, else None."""
        core = self.core
        faults = core.faults
        if faults.hang_for(route):
            await asyncio.Event().wait()  # never answers; ends when the client gives up
        forced = faults.forced_for(route)
        if forced is not None:
            if core.current and forced.status >= 400 and not forced.body:
                return self.error(forced.status, f"forced status {forced.status}")
            return web.Response(status=forced.status, text=forced.body)
        error = faults.error_for(route)
        if error is not None:
            return self.error(error, f"injected error {error}")
        if faults.latency:
            await asyncio.sleep(faults.latency)
        return None

    async def operate(self, route: str, request: web.Request, parts: list[str]) -> Reply:
        core = self.core
        q = request.query
        if route == "version":
            return text(200, VERSION_TEXT)
        if route == "rest-versions":
            return as_json(200, ["v1", "v2"])
        if route == "limits":
            return core.limits()
        if route == "endpoints":
            return core.list_endpoints(q.get("type"))
        if route == "callback-put":
            return await core.set_callback(await request.read())
        if route == "callback-get":
            return core.callback_info()
        if route == "callback-delete":
            return core.delete_callback()
        if route == "channel":
            return core.channel_info()
        if route == "devices":
            return core.list_devices(q)
        if route == "device":
            return core.get_device(parts[2])
        if route == "websocket-put":
            return core.put_websocket(await request.read())
        if route == "websocket-get":
            return core.get_websocket()
        if route == "websocket-delete":
            return core.delete_websocket()
        if route == "presubscription-put":
            return core.put_presubscriptions(await request.read())
        if route == "presubscription-get":
            return core.get_presubscriptions()
        if route == "subscriptions-delete-all":
            return core.delete_all_subscriptions()
        ep = parts[1]
        res = "/" + "/".join(parts[2:])
        if route == "endpoint":
            return core.endpoint_resources(ep)
        if route == "device-requests":
            return core.device_request(ep, q, await request.read())
        if route == "endpoint-delete":
            return core.delete_endpoint(ep)
        if route.startswith("resource-"):
            verb = request.method
            body = await request.read() if verb in ("PUT", "POST") else b""
            return core.resource_request(
                verb, ep, res, body, bool_arg(q.get("noResp")), bool_arg(q.get("cacheOnly"))
            )
        if route == "subscription-put":
            return core.subscribe(ep, res)
        if route == "subscription-get":
            return core.subscription_get(ep, res)
        if route == "subscription-delete":
            return core.subscription_delete(ep, res)
        if route == "endpoint-subscriptions-get":
            return core.endpoint_subscriptions(ep)
        if route == "endpoint-subscriptions-delete":
            return core.endpoint_subscriptions_delete(ep)
        raise AssertionError(f"route {route} has no operation")

    async def pull(self, request: web.Request) -> web.StreamResponse:
        """One long poll. Messages are taken from the queue only when they can be written,
        and go back to its head when the write fails or the client is gone."""
        core = self.core
        if core.callback is not None:
            core.count("pulls_refused")
            return web.Response(status=409, text="a callback URL is set; pulling is refused")
        if core.pull_open:
            core.count("pulls_refused")
            return web.Response(status=409, text="another pull is already open")
        core.pull_started()
        try:
            if not bool_arg(request.query.get("noWait")):
                await core.outbox.wait(core.pull_timeout)
            if core.faults.cut_poll():
                core.count("pulls_cut")
                _drop_connection(request)
            # Let the loop deliver a reset or close that is already on its way, so that a
            # client which died before its pull was read cannot take messages with it.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            transport = request.transport
            if core.callback is not None or transport is None or transport.is_closing():
                core.count("pulls_empty")
                return web.Response(status=204)
            batch = core.outbox.take()
            if not batch:
                core.count("pulls_empty")
                return web.Response(status=204)
            body = ch.encode(batch)
            resp = web.StreamResponse(status=200)
            resp.content_type = "application/json"
            resp.content_length = len(body)
            try:
                await resp.prepare(request)
                await resp.write(body)
                await resp.write_eof()
                # A failed socket write does not raise: the transport closes itself.
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError("the pulling client went away")
            except BaseException as exc:
                core.outbox.put_back(batch)
                core.count("redelivered", len(batch))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                _drop_connection(request, exc)
            core.count("delivered", len(batch))
            return resp
        finally:
            core.pull_ended()


def _drop_connection(request: web.Request, cause: BaseException | None = None) -> NoReturn:
    """Close the connection without an answer; aiohttp treats the cancellation as a client
    that went away (no error log, no 500 attempt on a dead socket)."""
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError from cause


def _ct(reply: Reply) -> dict[str, str]:
    return {"Content-Type": reply.content_type} if reply.body else {}
