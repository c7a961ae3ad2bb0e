"""``connector-bridge bench``: run the measurements and print the table (or ``--json``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bridge.bench import channels, commands, latency, listing, scale, throughput
from bridge.bench.context import Config, Env
from bridge.bench.harness import (
    APIS,
    BenchError,
    Broker,
    Control,
    machine_info,
    python_speed_s,
)
from bridge.bench.report import markdown, render, targets

# Every part, in the order they run. throughput, commands, latency and scale run the
# bridge on each dialect of --api; channels (the client's two channels) and listing
# (today's /v3/devices) have no bridge in them and run once.
MEASUREMENTS: dict[str, Callable[[Env], dict[str, Any]]] = {
    "throughput": throughput.measure,
    "commands": commands.measure,
    "latency": latency.measure,
    "channels": channels.measure,
    "listing": listing.measure,
    "scale": scale.measure,
}
PER_DIALECT = ("throughput", "commands", "latency", "scale")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of endpoint counts") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("endpoint counts must be at least 1")
    return sizes


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be greater than 0")
        return value

    return parse


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("NAME=VALUE, e.g. mqtt_max_inflight=200")
    return name.lower().removeprefix("bridge_"), value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="connector-bridge bench",
        description="Measure the bridge against the emulator and a Mosquitto, side by side "
        "with the ceiling of its own parts (paho-mqtt, Mosquitto's C clients, the "
        "Connector client). Every figure is the median of --runs runs.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes, one run: under a minute")
    p.add_argument(
        "--api",
        choices=[*APIS, "both"],
        default="both",
        help="the dialect the bridge runs on: legacy (the 2016 Connector, long poll), current "
        "(today's Device Management, WebSocket) or both (the default: every run measures both, "
        "each against its own floor)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable figures")
    p.add_argument(
        "--markdown", action="store_true", help="print the README's table of the figures"
    )
    p.add_argument("--runs", type=_positive(int), help="runs per figure (default 3; --quick 1)")
    p.add_argument(
        "--only",
        action="append",
        choices=list(MEASUREMENTS),
        help="run only this measurement (repeatable)",
    )
    p.add_argument(
        "--mqtt-host",
        help="use this broker instead of starting one (its limits apply: with Mosquitto's "
        "default max_queued_messages of 1000 a fast publisher overflows the counting "
        "subscriber at QoS 1, reported as lost; measurements leave retained messages under "
        "bench prefixes)",
    )
    p.add_argument("--mqtt-port", type=int, default=1883, help="its port (default 1883)")
    p.add_argument("-n", "--notifications", type=_positive(int), help="N (default 200,000)")
    p.add_argument("--payload-size", type=_positive(int), help="value size, bytes (default 8)")
    p.add_argument("--endpoints", type=_positive(int), help="emulated lamps (default 100)")
    p.add_argument("-m", "--commands", type=_positive(int), help="M (default 20,000)")
    p.add_argument("--inflight", type=_positive(int), help="commands in flight (default 100)")
    p.add_argument("--latency-rate", type=_positive(float), help="notifications/s (1,000)")
    p.add_argument("--latency-seconds", type=_positive(float), help="measured seconds (10)")
    p.add_argument("--scale", type=_sizes, help="endpoint counts (default 1000,10000,100000)")
    p.add_argument("--scale-runs", type=_positive(int), help="runs per scale size (--runs)")
    p.add_argument(
        "--channel-burst", type=_positive(int), help="notifications a burst, channels (100,000)"
    )
    p.add_argument(
        "--listing-devices", type=_positive(int), help="devices of the listing (100,000)"
    )
    p.add_argument("--listing-page", type=_positive(int), help="devices a page (1,000)")
    p.add_argument(
        "--mqtt-protocol", choices=["5", "3.1.1"], help="of the bridge and the paho client (5)"
    )
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        type=_setting,
        default=[],
        metavar="NAME=VALUE",
        help="a bridge setting for every bridge started (repeatable), e.g. mqtt_max_inflight=200",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p


def config_from(args: argparse.Namespace) -> Config:
    cfg = Config.quick_config() if args.quick else Config()
    for name in (
        "runs",
        "notifications",
        "payload_size",
        "endpoints",
        "commands",
        "inflight",
        "latency_rate",
        "latency_seconds",
        "scale_runs",
        "channel_burst",
        "listing_devices",
        "listing_page",
        "mqtt_protocol",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.scale is not None:
        cfg.scale_sizes = args.scale
    cfg.apis = APIS if args.api == "both" else (args.api,)
    cfg.bridge_settings = dict(args.settings)
    cfg.verbose = not args.quiet
    return cfg


def run(cfg: Config, only: Sequence[str], mqtt_host: str | None, mqtt_port: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"machine": machine_info(), "config": _config_summary(cfg)}
    started = time.monotonic()
    broker = Broker(mqtt_host, mqtt_port if mqtt_host else None).start()
    figures["broker"] = broker.describe()
    control: Control | None = None
    env: Env | None = None
    try:
        control = Control(broker)
        env = Env(cfg, broker, control)
        for name in MEASUREMENTS:  # in their order, whatever the order of --only
            if name not in only:
                continue
            t0 = time.monotonic()
            figures[name] = MEASUREMENTS[name](env)
            figures[name]["seconds"] = round(time.monotonic() - t0, 1)
    finally:
        if env is not None:
            env.stop()
            control = env.control  # scale restarts the broker with a new control client
        if control is not None:
            control.close()
        broker.stop()
    figures["machine"]["load_after"] = list(os.getloadavg())
    figures["machine"]["python_loop_s_after"] = python_speed_s()
    figures["seconds"] = round(time.monotonic() - started, 1)
    return figures


def _config_summary(cfg: Config) -> dict[str, Any]:
    out = dict(vars(cfg))
    out["scale_sizes"] = list(cfg.scale_sizes)
    out["apis"] = list(cfg.apis)
    out.pop("verbose", None)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    cfg = config_from(args)
    only = args.only or list(MEASUREMENTS)
    try:
        figures = run(cfg, only, args.mqtt_host, args.mqtt_port)
    except BenchError as exc:
        print(f"connector-bridge bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("connector-bridge bench: interrupted", file=sys.stderr)
        return 130
    figures["command"] = "connector-bridge bench " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    figures["targets"] = [t._asdict() for t in targets(figures)]
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
    elif args.markdown:
        print(markdown(figures))
    else:
        print(render(figures))
    return 0
