"""Admin routes under ``/admin/`` (same bearer token): the Python control API over HTTP,
for tests and benchmarks that run the emulator in another process.

| route | body / query | answer |
|---|---|---|
| `POST /admin/register` | `{"ep","ept","resources","q","lifetime"}` | 204 |
| `POST /admin/update`, `/admin/deregister`, `/admin/expire`, `/admin/wake` | `{"ep"}` | 204 |
| `PUT /admin/value` | `{"ep","path","value"}` or `"value_b64"` | 204 |
| `GET /admin/value?ep=&path=` | | 200 `{"value","value_b64"}` |
| `POST /admin/burst` | `{"n","ep","path","size"}` | 200 `{"emitted": n}` |
| `GET /admin/endpoints` | | 200 list of registered names |
| `GET /admin/device-id?ep=` | a name (or ID) | 200 `{"ep": name, "id": device ID}` |
| `GET /admin/subscriptions` | | 200 `[[ep, path], ...]` |
| `GET/PUT/DELETE /admin/faults` | PUT: `set_fault` keywords | 200 faults / 204 |
| `GET/DELETE /admin/counters` | | 200 counters / 204 (reset) |

Errors: 400 `{"error"}` for a bad body, 404 `{"error"}` for an unknown endpoint.
The admin routes are the same in both dialects and take endpoint names (a device ID
works too); they keep taking the key while the ``revoke_key`` fault is on.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from bridge.simulator.core import EmulatorCore


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


def _value(body: dict[str, Any]) -> bytes:
    if "value_b64" in body:
        return base64.b64decode(body["value_b64"], validate=True)
    value = body.get("value")
    if not isinstance(value, str):
        raise ValueError("give 'value' (text) or 'value_b64'")
    return value.encode()


async def handle_admin(core: EmulatorCore, request: web.Request, parts: list[str]) -> web.Response:
    try:
        return await _handle(core, request, parts)
    except KeyError as exc:
        return _error(404, str(exc.args[0]) if exc.args else "not found")
    except (ValueError, TypeError, binascii.Error) as exc:
        return _error(400, str(exc))


async def _handle(core: EmulatorCore, request: web.Request, parts: list[str]) -> web.Response:
    name = "/".join(parts)
    method = request.method
    if method == "POST" and name in ("register", "update", "deregister", "expire", "wake"):
        body = await _body(request)
        ep = body.get("ep")
        if not isinstance(ep, str):
            raise ValueError("body needs 'ep'")
        if name == "register":
            core.register(
                ep,
                ept=str(body.get("ept", "Sensor")),
                resources=body.get("resources"),
                q=bool(body.get("q", False)),
                lifetime=body.get("lifetime"),
            )
        else:
            getattr(core, name)(ep)
        return web.Response(status=204)
    if name == "value" and method == "PUT":
        body = await _body(request)
        core.set_value(str(body["ep"]), str(body["path"]), _value(body))
        return web.Response(status=204)
    if name == "value" and method == "GET":
        value = core.get_value(request.query["ep"], request.query["path"])
        return web.json_response(
            {
                "value": value.decode("utf-8", "replace"),
                "value_b64": base64.b64encode(value).decode("ascii"),
            }
        )
    if name == "burst" and method == "POST":
        body = await _body(request)
        n = await core.burst(
            int(body.get("n", 1)), body.get("ep"), body.get("path"), body.get("size")
        )
        return web.json_response({"emitted": n})
    if name == "endpoints" and method == "GET":
        return web.json_response(core.registered_names())
    if name == "device-id" and method == "GET":
        dev = core.device(request.query["ep"])
        return web.json_response({"ep": dev.name, "id": dev.id})
    if name == "subscriptions" and method == "GET":
        return web.json_response(sorted([ep, path] for ep, path in core.subscription_pairs()))
    if name == "faults":
        if method == "GET":
            return web.json_response(core.faults.describe())
        if method == "PUT":
            core.apply_faults(**await _body(request))
            return web.Response(status=204)
        if method == "DELETE":
            core.faults.clear()
            return web.Response(status=204)
    if name == "counters":
        if method == "GET":
            return web.json_response(core.snapshot_counters())
        if method == "DELETE":
            core.reset_counters()
            return web.Response(status=204)
    return _error(404, f"no admin route {method} /admin/{name}")
