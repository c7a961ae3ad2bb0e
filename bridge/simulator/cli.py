"""``connector-bridge simulate``: the emulator in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
from collections.abc import Sequence

from bridge.simulator.core import EmulatorCore
from bridge.simulator.emulator import Server
from bridge.simulator.scenario import Scenario, ScenarioError, default_scenario


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="connector-bridge simulate",
        description="Run a local mbed Device Connector with virtual devices.",
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
