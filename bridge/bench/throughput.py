"""Notification throughput: the bridge against the paho ceiling and Mosquitto's own clients.

For each QoS (0 and 1) and each run, three ways to get the same N messages to one
counting subscriber (``mosquitto_sub -C N``) at the same broker:

- **bridge**, once per dialect (``--api``): the emulator of that dialect emits N
  notifications (``/admin/burst``), round-robin over every observed resource, and the
  bridge (its own process) carries them through the dialect's channel (the long poll of
  the 2016 Connector, the WebSocket of today's service) to the broker;
- **paho**: a bare paho-mqtt client in one process publishes the same N messages (same
  topics in the same order, same payload sizes, QoS and retain flag), plain ``publish``
  calls with an in-flight limit of 1,000: the ceiling a Python bridge built on paho has;
- **mosquitto_pub**: ``mosquitto_pub -l`` (one message per stdin line, one topic) into
  the same subscriber: the machine's limit with Mosquitto's C clients.

A rate is counted at the subscriber, from its first to its last message; the ratio
bridge/paho of each dialect is taken within each run (both dialects against the same
paho run), and the figures are medians over the runs.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bridge.bench.context import Env
from bridge.bench.harness import (
    CHANNEL_NAME,
    OBSERVED_PATHS,
    BenchError,
    BridgeProcess,
    CountingSubscriber,
    need_tool,
    new_prefix,
    run_child,
    spawn,
)
from bridge.bench.stats import median, rate, ratio

WAYS = ("bridge", "paho", "mosquitto_pub")


def _subscriber(env: Env, prefix: str, n: int, qos: int) -> CountingSubscriber:
    # Values are <prefix>/<ep>/<obj>/<inst>/<res>: four levels after the prefix, which
    # $state, $resources and $bridge/state (two levels) never match.
    return CountingSubscriber(
        env.broker, env.control, [f"{prefix}/+/+/+/+"], n, f"{prefix}/$bench/sync/0/0", qos
    )


def _received(sub: CountingSubscriber, n: int, stall: float) -> dict[str, Any]:
    complete = sub.wait(stall=stall)
    times = sub.times()
    return {
        "received": len(times),
        "lost": n - len(times),
        "complete": complete and len(times) == n,
        "first": times[0] if times else math.nan,
        "last": times[-1] if times else math.nan,
        "rate": rate(len(times), times[0], times[-1]) if times else math.nan,
    }


def bridge_once(env: Env, qos: int, api: str = "legacy") -> dict[str, Any]:
    cfg = env.config
    n = cfg.notifications
    prefix = new_prefix("thr")
    settings = {"value_qos": str(qos), "initial_read": "false", "mqtt_protocol": cfg.mqtt_protocol}
    settings.update(cfg.bridge_settings)
    emulator = env.emulator(api)
    with BridgeProcess(emulator, env.broker, prefix, settings) as bridge:
        bridge.wait_ready()
        with _subscriber(env, prefix, n, qos) as sub:
            cpu0, t0 = bridge.cpu_seconds(), time.time()
            emulator.burst(n, cfg.payload_size)
            got = _received(sub, n, stall=15.0)
            cpu = bridge.cpu_seconds() - cpu0
        if not got["complete"]:
            env.say(
                f"bridge ({api}) lost {got['lost']} of {n} at QoS {qos}; "
                f"log:\n{bridge.log_tail(10)}"
            )
    got["end_to_end_rate"] = got["received"] / (got["last"] - t0) if got["received"] else math.nan
    got["cpu_us_per_message"] = cpu / max(got["received"], 1) * 1e6
    return got


def expected_topics(env: Env, prefix: str) -> list[str]:
    """The bridge's value topics in the order the emulator's burst goes round them (the
    same on both dialects: the bridge names devices by their endpoint names)."""
    return [
        f"{prefix}/{ep}/{path.lstrip('/')}"
        for ep in env.emulator(env.config.apis[0]).endpoints()
        for path in OBSERVED_PATHS
    ]


def paho_once(env: Env, qos: int) -> dict[str, Any]:
    cfg = env.config
    n = cfg.notifications
    prefix = new_prefix("pah")
    args = {
        "host": env.broker.host,
        "port": env.broker.port,
        "protocol": cfg.mqtt_protocol,
        "qos": qos,
        "retain": True,  # as the bridge's values (BRIDGE_VALUE_RETAIN defaults to true)
        "topics": expected_topics(env, prefix),
        "n": n,
        "size": cfg.payload_size,
        "inflight": 1000,
    }
    with _subscriber(env, prefix, n, qos) as sub:
        run_child("paho-publish", args, timeout=900)
        return _received(sub, n, stall=15.0)


def mosquitto_once(env: Env, qos: int, lines: Path) -> dict[str, Any]:
    n = env.config.notifications
    prefix = new_prefix("mos")
    topic = f"{prefix}/lamp-000001/3311/0/5850"
    cmd = [need_tool("mosquitto_pub"), "-h", env.broker.host, "-p", str(env.broker.port)]
    cmd += ["-q", str(qos), "-r", "-t", topic, "-l"]
    with _subscriber(env, prefix, n, qos) as sub:
        # stdin stays open until every message arrived: at end of input mosquitto_pub
        # disconnects at once, dropping QoS 1 messages it has not sent yet.
        pub = spawn(cmd, stdin=subprocess.PIPE)
        assert pub.stdin is not None
        stdin = pub.stdin
        writer = threading.Thread(target=lambda: stdin.write(lines.read_bytes()), daemon=True)
        writer.start()
        try:
            return _received(sub, n, stall=15.0)
        finally:
            writer.join(5)
            with contextlib.suppress(OSError):
                stdin.close()
            try:
                pub.wait(10)
            except subprocess.TimeoutExpired:
                pub.kill()
                pub.wait()


def measure(env: Env) -> dict[str, Any]:
    """``{"n", "payload_size", "topics", <api>: {"qos0": ..., "qos1": ...}, ...}``, and
    ``current_vs_legacy`` (the bridge's rate on today's dialect over the legacy one's,
    within each run) when both ran."""
    cfg = env.config
    apis = cfg.apis
    lines = Path(tempfile.mkstemp(prefix="bench-lines-", suffix=".txt")[1])
    lines.write_bytes(
        "".join(f"{k:0{cfg.payload_size}d}\n" for k in range(cfg.notifications)).encode()
    )
    out: dict[str, Any] = {
        "n": cfg.notifications,
        "payload_size": cfg.payload_size,
        "topics": cfg.endpoints * len(OBSERVED_PATHS),
    }
    for api in apis:
        out[api] = {}
    try:
        for qos in (0, 1):
            runs: dict[str, list[dict[str, Any]]] = {api: [] for api in apis}
            for r in range(cfg.runs):
                step = f"throughput QoS {qos}, run {r + 1}/{cfg.runs}"
                bridges = {}
                for api in apis:
                    env.say(f"{step}: bridge on the {api} dialect ({CHANNEL_NAME[api]})")
                    bridges[api] = b = bridge_once(env, qos, api)
                    env.say(f"  bridge ({api}) {b['rate']:,.0f}/s")
                env.say(f"{step}: paho")
                p = paho_once(env, qos)
                env.say(f"  paho {p['rate']:,.0f}/s; mosquitto_pub")
                m = mosquitto_once(env, qos, lines)
                env.say(f"  mosquitto_pub {m['rate']:,.0f}/s")
                for api in apis:
                    b = bridges[api]
                    run = {
                        "bridge": b,
                        "paho": p,
                        "mosquitto_pub": m,
                        "ratio_paho": ratio(b["rate"], p["rate"]),
                        "ratio_mosquitto": ratio(b["rate"], m["rate"]),
                    }
                    if len(bridges) == 2:
                        run["current_vs_legacy"] = ratio(
                            bridges["current"]["rate"], bridges["legacy"]["rate"]
                        )
                    runs[api].append(run)
            for api in apis:
                out[api][f"qos{qos}"] = summarise(runs[api])
    finally:
        lines.unlink(missing_ok=True)
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if not runs:
        raise BenchError("no run")
    out = {
        "bridge_rate": median(r["bridge"]["rate"] for r in runs),
        "paho_rate": median(r["paho"]["rate"] for r in runs),
        "mosquitto_rate": median(r["mosquitto_pub"]["rate"] for r in runs),
        "ratio_paho": median(r["ratio_paho"] for r in runs),
        "ratio_mosquitto": median(r["ratio_mosquitto"] for r in runs),
        "bridge_cpu_us_per_message": median(r["bridge"]["cpu_us_per_message"] for r in runs),
        "lost": max(r[w]["lost"] for r in runs for w in WAYS),
        "runs": runs,
    }
    if all("current_vs_legacy" in r for r in runs):
        out["current_vs_legacy"] = median(r["current_vs_legacy"] for r in runs)
    return out
