"""``connector-bridge simulate``: the emulator in the foreground until Ctrl-C or SIGTERM.

``--api current`` (the default) speaks today's Device Management dialect (device IDs,
``/v3/devices``, device requests, a callback or WebSocket channel); ``--api legacy`` the
2016 mbed Device Connector (endpoint names, long polling, resource verbs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
from collections.abc import Sequence

from bridge.simulator.core import APIS, EmulatorCore
from bridge.simulator.emulator import Server
from bridge.simulator.identity import device_id
from bridge.simulator.scenario import Scenario, ScenarioError, default_scenario


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="connector-bridge simulate",
        description="Run a local Device Management service (or, with --api legacy, an mbed "
        "Device Connector) with virtual devices.",
    )
    p.add_argument(
        "--api",
        choices=APIS,
        default="current",
        help="dialect: current (Device Management: device IDs, /v3/devices, device requests, "
        "callback or WebSocket channel; the default) or legacy (the 2016 Connector: endpoint "
        "names, long polling)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 = any)")
    p.add_argument("--token", help="access key clients must send (default: a random one)")
    p.add_argument("--scenario", help="scenario JSON file (default: the built-in scenario)")
    p.add_argument(
        "--devices", type=_non_negative_int, help="total endpoints, generated from the templates"
    )
    p.add_argument(
        "--pull-timeout", type=_positive_float, default=30.0, help="long-poll hold, s (30)"
    )
    p.add_argument(
        "--latency", type=_non_negative_float, default=0.0, help="device answer delay, s"
    )
    p.add_argument(
        "--callback-retry-period",
        type=_non_negative_float,
        default=900.0,
        help="how long undelivered webhook messages are retried, s (900)",
    )
    p.add_argument(
        "--expiry-scale",
        type=_positive_float,
        default=1.0,
        help="scale the service's time for device requests: expiry-seconds times this (1)",
    )
    p.add_argument("--seed", type=int, help="random seed for drifting values")
    p.add_argument("--no-drift", action="store_true", help="sensors change only on command")
    return p


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        scenario = Scenario.load(args.scenario) if args.scenario else default_scenario()
    except ScenarioError as exc:
        print(f"connector-bridge simulate: {exc}", file=sys.stderr)
        return 2
    token = args.token or secrets.token_urlsafe(24)
    core = EmulatorCore(
        token,
        scenario,
        args.devices,
        pull_timeout=args.pull_timeout,
        latency=args.latency,
        callback_retry_period=args.callback_retry_period,
        seed=args.seed,
        drift=not args.no_drift,
        api=args.api,
        expiry_scale=args.expiry_scale,
    )
    try:
        asyncio.run(_serve(core, args.host, args.port))
    except OSError as exc:
        print(
            f"connector-bridge simulate: cannot listen on {args.host}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


async def _serve(core: EmulatorCore, host: str, port: int) -> None:
    server = Server(core)
    bound = await server.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{bound}"
    n = len(core.registered_names())
    if core.current:
        print(_current_banner(url, core, n, host), flush=True)
    else:
        print(_banner(url, core.token, n, host), flush=True)
    try:
        await stop.wait()
    finally:
        print("connector-bridge simulate: stopping", flush=True)
        await server.stop()


def _banner(url: str, token: str, endpoints: int, host: str) -> str:
    curl = f'curl -H "Authorization: Bearer {token}"'
    lines = [
        f"Connector emulator listening on {url} ({endpoints} endpoints)",
        f"  access key:  {token}",
        f"  REST API:    {url}/v2   (also unversioned; admin routes under {url}/admin/)",
        "",
        "Try it in another terminal:",
        f"  {curl} '{url}/v2/endpoints'",
        f"  {curl} '{url}/v2/notification/pull?noWait=true'   # opens the channel",
        f"  {curl} '{url}/v2/endpoints/node-001/3303/0/5700'  # -> async-response-id",
        f"  {curl} '{url}/v2/notification/pull'               # -> its async-response",
        '  (the value is the base64 "payload": echo <payload> | base64 -d)',
        "",
        "Ctrl-C stops it.",
    ]
    if host not in ("127.0.0.1", "localhost", "::1"):
        lines.insert(1, f"  WARNING: bound to {host}, reachable from other machines")
    return "\n".join(lines)


def _example(core: EmulatorCore) -> tuple[str, str, str]:
    """A registered device and a readable resource of it, for the banner's examples."""
    fallback: tuple[str, str, str] | None = None
    for dev in core.devices.values():
        if not dev.registered:
            continue
        for spec in dev.template.resources:
            if spec.obs and not spec.executable:
                return dev.name, dev.id, spec.path
        if fallback is None:
            fallback = (dev.name, dev.id, "/3/0/0")
    return fallback or ("node-001", device_id("node-001"), "/3/0/0")


def _current_banner(url: str, core: EmulatorCore, devices: int, host: str) -> str:
    token = core.token
    auth = f'-H "Authorization: Bearer {token}"'
    ws_url = url.replace("http://", "ws://", 1) + "/v2/notification/websocket-connect"
    name, dev_id, path = _example(core)
    body = f'{{"method":"GET","uri":"{path}"}}'
    lines = [
        f"Device Management emulator (current API) listening on {url} ({devices} devices)",
        f"  access key:  {token}",
        f"  REST API:    {url}/v2 and {url}/v3   (admin routes under {url}/admin/)",
        f"  device IDs:  {name} is {dev_id}; all of them: GET /v3/devices",
        "",
        "Try it in another terminal:",
        f"  curl {auth} '{url}/v3/devices?limit=5'",
        f"  curl -X PUT {auth} '{url}/v2/notification/websocket'   # the channel: 201",
        "Then watch the channel (every message is one text frame):",
        f"  websocat -H 'Authorization: Bearer {token}' '{ws_url}'",
        "  or, with the project's Python (it has aiohttp):",
        "  python -c 'import asyncio, aiohttp",
        "async def watch():",
        "    async with aiohttp.ClientSession() as s:",
        f'        async with s.ws_connect("{ws_url}",',
        f'                headers={{"Authorization": "Bearer {token}"}}) as ws:',
        "            async for msg in ws: print(msg.data)",
        "asyncio.run(watch())'",
        "and, in a third terminal, ask the device; the answer comes on the socket:",
        f"  curl -X POST {auth} -H 'Content-Type: application/json' -d '{body}' \\",
        f"       '{url}/v2/device-requests/{dev_id}?async-id=read-1'   # -> 202",
        '  # -> {"async-responses":[{"id":"read-1","status":200,...,"payload":"..."}]}',
        '  (the value is the base64 "payload": echo <payload> | base64 -d)',
        "",
        "Ctrl-C stops it.",
    ]
    if host not in ("127.0.0.1", "localhost", "::1"):
        lines.insert(1, f"  WARNING: bound to {host}, reachable from other machines")
    return "\n".join(lines)
