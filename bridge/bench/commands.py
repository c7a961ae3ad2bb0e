"""Command round trip: MQTT ``.../set`` through the bridge against the same PUTs made
straight to the Connector with the project's client (the floor).

In each run, M commands (the dimmer of each lamp in turn, a value that differs from the
lamp's previous one) with ``inflight`` outstanding, both ways built alike:

- **floor**: ``bridge.connector`` in its own process; commands are issued with
  ``inflight`` outstanding into a queue served by ``floor_threads`` threads (as many as
  the bridge has command workers) calling ``putResourceValue``; each is done when its
  async response arrives on the dialect's channel (the long poll of the 2016 Connector;
  on today's service a device request, by device ID, answered on the WebSocket);
- **bridge**: a paho client in its own process publishes ``<prefix>/<ep>/3311/0/5851/set``
  (MQTT 5, QoS 1, Correlation Data; with a 3.1.1 bridge the JSON envelope's
  ``transaction`` instead) and waits for the reply on ``.../set/reply``.

Throughput is M over the time until the last reply; latency is per command from its
issue to its answer, queueing included. With 100 always outstanding the latency is
mostly queueing (Little's law: 100 / throughput), so the latency the bridge itself adds
is measured apart as well: ``unloaded`` commands, one at a time, both ways. Ratios and
differences are taken within each run, each dialect (``--api``) against its own floor.

Every process of each way is charged its CPU time per command (from /proc: the load
client, the broker, the bridge, the emulator), because on a small machine they all share
the same cores: :func:`cpu_bounds` turns that into the throughput it allows, with and
without the bridge's own share, which tells whether a target is within reach at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.bench.context import Env
from bridge.bench.harness import (
    CHANNEL_NAME,
    COMMAND_PATH,
    BenchError,
    BridgeProcess,
    CpuMeter,
    new_prefix,
    run_child,
    usable_cores,
)
from bridge.bench.report import TARGET_RATIO
from bridge.bench.stats import median, ratio

WAYS = ("floor", "bridge")


def unloaded_count(m: int) -> int:
    return max(50, min(1000, m // 10))


def floor_once(env: Env, m: int, inflight: int, first: int, api: str = "legacy") -> dict[str, Any]:
    emulator = env.emulator(api)
    args = {
        "api": api,
        "url": emulator.url,
        "token": emulator.token,
        "endpoints": emulator.endpoints(),
        "addresses": emulator.addresses(),
        "path": COMMAND_PATH,
        "m": m,
        "inflight": inflight,
        "threads": env.config.floor_threads,
        "first": first,
    }
    meter = CpuMeter({"emulator": emulator.pid})
    result = run_child("connector-commands", args, timeout=600)
    result["cpu_us"] = {"client": result["cpu_us_per_command"], **meter.us_per(result["done"])}
    return result


def bridge_once(env: Env, api: str = "legacy") -> tuple[dict[str, Any], dict[str, Any]]:
    """The loaded run and the unloaded one, through one bridge."""
    cfg = env.config
    prefix = new_prefix("cmd")
    settings = {"initial_read": "false", "mqtt_protocol": cfg.mqtt_protocol}
    settings.update(cfg.bridge_settings)
    emulator = env.emulator(api)
    with BridgeProcess(emulator, env.broker, prefix, settings) as bridge:
        bridge.wait_ready()
        args: dict[str, Any] = {
            "host": env.broker.host,
            "port": env.broker.port,
            "prefix": prefix,
            "endpoints": emulator.endpoints(),
            "path": COMMAND_PATH,
            "m": cfg.commands,
            "inflight": cfg.inflight,
            "first": 0,
            "envelope": settings.get("mqtt_protocol") == "3.1.1",
        }
        meter = CpuMeter({"broker": env.broker.pid, "bridge": bridge.pid, "emulator": emulator.pid})
        loaded = run_child("mqtt-commands", args, timeout=600)
        cpu = meter.us_per(loaded["done"])
        loaded["cpu_us"] = {"client": loaded["client_cpu_us_per_command"], **cpu}
        loaded["cpu_us_per_command"] = cpu["bridge"]
        if not loaded["complete"]:
            env.say(
                f"bridge ({api}) answered {loaded['done']} of {cfg.commands}:\n"
                f"{bridge.log_tail(10)}"
            )
        args.update(m=unloaded_count(cfg.commands), inflight=1, first=cfg.commands)
        unloaded = run_child("mqtt-commands", args, timeout=600)
    return loaded, unloaded


def cpu_bounds(
    floor_rate: float, bridge_cpu: Mapping[str, float], cores: int
) -> dict[str, float | None]:
    """What the CPU accounting of one run allows.

    Every process of the bridge way shares the machine's ``cores``: at best (all of them
    busy all the time) commands go at ``cores / total CPU per command``. As ratios to the
    floor's rate: ``all_processes``; ``without_bridge``, the same with the bridge's own
    CPU left out (the load client, the broker and the emulator alone); ``one_core``, the
    bridge process alone on a core of its own (one GIL). ``budget_us``: the CPU per
    command all the processes together may use for :data:`TARGET_RATIO` of the floor;
    ``fixed_us``: what the broker and the emulator use of it, whatever the bridge does.
    """
    total = sum(bridge_cpu.values())
    own = bridge_cpu.get("bridge", 0.0)
    fixed = sum(v for k, v in bridge_cpu.items() if k not in ("bridge", "client"))

    def bound(us: float, n: int) -> float | None:
        return ratio(n * 1e6 / us, floor_rate) if us > 0 else None

    return {
        "all_processes": bound(total, cores),
        "without_bridge": bound(total - own, cores),
        "one_core": bound(own, 1),
        "budget_us": cores * 1e6 / (TARGET_RATIO * floor_rate) if floor_rate > 0 else None,
        "fixed_us": fixed,
    }


def measure(env: Env) -> dict[str, Any]:
    """``{<api>: {...}}``: each dialect against its own floor, both in every run."""
    cfg = env.config
    runs: dict[str, list[dict[str, Any]]] = {api: [] for api in cfg.apis}
    for r in range(cfg.runs):
        for api in cfg.apis:
            runs[api].append(once(env, api, f"commands run {r + 1}/{cfg.runs}, {api} dialect"))
    out: dict[str, Any] = {api: summarise(env, done) for api, done in runs.items()}
    if len(runs) == 2:
        # the bridge's command rate on today's dialect over the legacy one's, within a run
        pairs = zip(runs["legacy"], runs["current"], strict=True)
        out["current_vs_legacy"] = median(
            ratio(c["bridge"]["rate"], g["bridge"]["rate"]) for g, c in pairs
        )
    return out


def once(env: Env, api: str, step: str) -> dict[str, Any]:
    cfg = env.config
    k = unloaded_count(cfg.commands)
    cores = usable_cores()
    channel = CHANNEL_NAME[api]
    env.say(f"{step}: floor (Connector client, {channel})")
    floor = floor_once(env, cfg.commands, cfg.inflight, 0, api)
    floor1 = floor_once(env, k, 1, cfg.commands, api)
    env.say(f"  floor {floor['rate']:,.0f}/s p50 {floor['p50_ms']:.2f} ms; bridge")
    bridge, bridge1 = bridge_once(env, api)
    env.say(f"  bridge {bridge['rate']:,.0f}/s p50 {bridge['p50_ms']:.2f} ms")
    env.say(f"  one at a time: floor p50 {floor1['p50_ms']:.2f}, bridge {bridge1['p50_ms']:.2f} ms")
    return {
        "floor": floor,
        "bridge": bridge,
        "floor_unloaded": floor1,
        "bridge_unloaded": bridge1,
        "ratio": ratio(bridge["rate"], floor["rate"]),
        "added_p50_ms": bridge1["p50_ms"] - floor1["p50_ms"],
        "added_p99_ms": bridge1["p99_ms"] - floor1["p99_ms"],
        "added_p50_loaded_ms": bridge["p50_ms"] - floor["p50_ms"],
        "bounds": cpu_bounds(floor["rate"], bridge["cpu_us"], cores),
    }


def summarise(env: Env, runs: list[dict[str, Any]]) -> dict[str, Any]:
    cfg = env.config
    if not runs:
        raise BenchError("no run")
    all_ways = (*WAYS, "floor_unloaded", "bridge_unloaded")
    return {
        "m": cfg.commands,
        "inflight": cfg.inflight,
        "unloaded_m": unloaded_count(cfg.commands),
        "floor_threads": cfg.floor_threads,
        "bridge_rate": median(r["bridge"]["rate"] for r in runs),
        "bridge_p50_ms": median(r["bridge"]["p50_ms"] for r in runs),
        "bridge_p99_ms": median(r["bridge"]["p99_ms"] for r in runs),
        "floor_rate": median(r["floor"]["rate"] for r in runs),
        "floor_p50_ms": median(r["floor"]["p50_ms"] for r in runs),
        "floor_p99_ms": median(r["floor"]["p99_ms"] for r in runs),
        "bridge_unloaded_p50_ms": median(r["bridge_unloaded"]["p50_ms"] for r in runs),
        "bridge_unloaded_p99_ms": median(r["bridge_unloaded"]["p99_ms"] for r in runs),
        "floor_unloaded_p50_ms": median(r["floor_unloaded"]["p50_ms"] for r in runs),
        "floor_unloaded_p99_ms": median(r["floor_unloaded"]["p99_ms"] for r in runs),
        "ratio": median(r["ratio"] for r in runs),
        "added_p50_ms": median(r["added_p50_ms"] for r in runs),
        "added_p99_ms": median(r["added_p99_ms"] for r in runs),
        "added_p50_loaded_ms": median(r["added_p50_loaded_ms"] for r in runs),
        "bridge_cpu_us_per_command": median(r["bridge"]["cpu_us_per_command"] for r in runs),
        "floor_cpu_us_per_command": median(r["floor"]["cpu_us_per_command"] for r in runs),
        # CPU per command of each process, by way (median of the runs), and the ratios
        # to the floor that the bridge way's CPU use allows (see cpu_bounds)
        "cpu_us": {
            way: {
                part: median(r[way]["cpu_us"][part] for r in runs)
                for part in runs[0][way]["cpu_us"]
            }
            for way in WAYS
        },
        "bounds": {
            name: median(v for r in runs if (v := r["bounds"][name]) is not None)
            for name in runs[0]["bounds"]
        },
        "cores": usable_cores(),
        "failed": max(r[w]["failed"] for r in runs for w in all_ways),
        "unanswered": max(r[w]["m"] - r[w]["done"] for r in runs for w in all_ways),
        "runs": runs,
    }
