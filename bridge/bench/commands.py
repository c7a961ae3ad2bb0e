"""Command round trip: MQTT ``.../set`` through the bridge against the same PUTs made
straight to the Connector with the project's client (the floor).

In each run, M commands (the dimmer of each lamp in turn, a value that differs from the
lamp's previous one) with ``inflight`` outstanding:

- **floor**: ``bridge.connector`` in its own process: ``putResourceValue`` from
  ``floor_threads`` threads (as many as the bridge has command workers), each command
  waited for until its async response arrives on the long poll;
- **bridge**: a paho client in its own process publishes ``<prefix>/<ep>/3311/0/5851/set``
  (MQTT 5, QoS 1, Correlation Data) and waits for the reply on ``.../set/reply``.

Throughput is M over the time until the last reply; latency is per command, from just
before it is sent to its reply. The ratio and the added p50 are taken within each run.
"""

from __future__ import annotations

from typing import Any

from bridge.bench.context import Env
from bridge.bench.harness import COMMAND_PATH, BenchError, BridgeProcess, new_prefix, run_child
from bridge.bench.stats import median, ratio

WAYS = ("floor", "bridge")


def floor_once(env: Env) -> dict[str, Any]:
    cfg = env.config
    args = {
        "url": env.emulator.url,
        "token": env.emulator.token,
        "endpoints": env.emulator.endpoints(),
        "path": COMMAND_PATH,
        "m": cfg.commands,
        "inflight": cfg.inflight,
        "threads": cfg.floor_threads,
    }
    return run_child("connector-commands", args, timeout=600)


def bridge_once(env: Env) -> dict[str, Any]:
    cfg = env.config
    prefix = new_prefix("cmd")
    settings = {"initial_read": "false", "mqtt_protocol": cfg.mqtt_protocol}
    settings.update(cfg.bridge_settings)
    with BridgeProcess(env.emulator, env.broker, prefix, settings) as bridge:
        bridge.wait_ready()
        args = {
            "host": env.broker.host,
            "port": env.broker.port,
            "prefix": prefix,
            "endpoints": env.emulator.endpoints(),
            "path": COMMAND_PATH,
            "m": cfg.commands,
            "inflight": cfg.inflight,
        }
        cpu0 = bridge.cpu_seconds()
        result = run_child("mqtt-commands", args, timeout=600)
        result["cpu_us_per_command"] = (bridge.cpu_seconds() - cpu0) / max(result["done"], 1) * 1e6
        if not result["complete"]:
            env.say(f"bridge answered {result['done']} of {cfg.commands}:\n{bridge.log_tail(10)}")
    return result


def measure(env: Env) -> dict[str, Any]:
    cfg = env.config
    runs: list[dict[str, Any]] = []
    for r in range(cfg.runs):
        env.say(f"commands run {r + 1}/{cfg.runs}: floor (Connector client)")
        floor = floor_once(env)
        env.say(f"  floor {floor['rate']:,.0f}/s p50 {floor['p50_ms']:.2f} ms; bridge")
        bridge = bridge_once(env)
        env.say(f"  bridge {bridge['rate']:,.0f}/s p50 {bridge['p50_ms']:.2f} ms")
        runs.append(
            {
                "floor": floor,
                "bridge": bridge,
                "ratio": ratio(bridge["rate"], floor["rate"]),
                "added_p50_ms": bridge["p50_ms"] - floor["p50_ms"],
                "added_p99_ms": bridge["p99_ms"] - floor["p99_ms"],
            }
        )
    if not runs:
        raise BenchError("no run")
    return {
        "m": cfg.commands,
        "inflight": cfg.inflight,
        "floor_threads": cfg.floor_threads,
        "bridge_rate": median(r["bridge"]["rate"] for r in runs),
        "bridge_p50_ms": median(r["bridge"]["p50_ms"] for r in runs),
        "bridge_p99_ms": median(r["bridge"]["p99_ms"] for r in runs),
        "floor_rate": median(r["floor"]["rate"] for r in runs),
        "floor_p50_ms": median(r["floor"]["p50_ms"] for r in runs),
        "floor_p99_ms": median(r["floor"]["p99_ms"] for r in runs),
        "ratio": median(r["ratio"] for r in runs),
        "added_p50_ms": median(r["added_p50_ms"] for r in runs),
        "added_p99_ms": median(r["added_p99_ms"] for r in runs),
        "bridge_cpu_us_per_command": median(r["bridge"]["cpu_us_per_command"] for r in runs),
        "failed": max(r[w]["failed"] for r in runs for w in WAYS),
        "unanswered": max(cfg.commands - r[w]["done"] for r in runs for w in WAYS),
        "runs": runs,
    }
