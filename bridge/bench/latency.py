"""Notification latency at a steady rate, and the bridge's CPU use at that rate.

A driver process changes values through the emulator's admin route at a steady
``latency_rate`` per second (round-robin over the observed resources), each new value
being the time it was sent; ``mosquitto_sub`` prints each value topic's message with the
time it arrived, so latency = arrival - value: emulator, long poll, bridge, broker and
subscriber included. The first second is warm-up and not counted. The bridge's CPU use
is the growth of utime+stime in /proc/<pid>/stat over the measured window, as a share of
one core.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from typing import Any

from bridge.bench.context import Env
from bridge.bench.harness import (
    BenchError,
    BridgeProcess,
    CountingSubscriber,
    child_result,
    new_prefix,
    start_child,
)
from bridge.bench.stats import median, percentile

WARMUP = 1.0


class CpuSampler:
    """(wall time, CPU seconds) of a process every ``period`` seconds, on a thread."""

    def __init__(self, read: Any, period: float = 0.1) -> None:
        self.samples: list[tuple[float, float]] = []
        self._read = read
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.samples.append((time.time(), float(self._read())))
            except (OSError, ValueError):
                return
            if self._stop.wait(self._period):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def share(self, start: float, end: float) -> float:
        """CPU seconds per second between the samples nearest inside [start, end]."""
        times = [t for t, _ in self.samples]
        i = bisect.bisect_left(times, start)
        j = bisect.bisect_right(times, end) - 1
        if i >= j:
            return math.nan
        (t0, c0), (t1, c1) = self.samples[i], self.samples[j]
        return (c1 - c0) / (t1 - t0)


def once(env: Env) -> dict[str, Any]:
    cfg = env.config
    prefix = new_prefix("lat")
    settings = {"initial_read": "false", "mqtt_protocol": cfg.mqtt_protocol}
    settings.update(cfg.bridge_settings)
    total = int(cfg.latency_rate * (cfg.latency_seconds + WARMUP))
    with BridgeProcess(env.emulator, env.broker, prefix, settings) as bridge:
        bridge.wait_ready()
        targets = [[ep, path] for ep, path in env.emulator.subscriptions()]
        if not targets:
            raise BenchError("the emulator has no observed resource")
        qos = int(settings.get("value_qos", "1"))
        sub = CountingSubscriber(
            env.broker, env.control, [f"{prefix}/+/+/+/+"], total, f"{prefix}/$bench/sync/0/0",
            qos, fmt="%U %p",
        )  # fmt: skip
        with sub:
            sampler = CpuSampler(bridge.cpu_seconds)
            pulls0 = env.emulator.counters().get("pulls", 0)
            try:
                driver = start_child(
                    "latency-driver",
                    {
                        "url": env.emulator.url,
                        "token": env.emulator.token,
                        "targets": targets,
                        "rate": cfg.latency_rate,
                        "seconds": cfg.latency_seconds + WARMUP,
                    },
                )
                sent = child_result(driver, "latency-driver", timeout=cfg.latency_seconds + 120)
                complete = sub.wait(stall=5.0)
            finally:
                sampler.stop()
            pulls = env.emulator.counters().get("pulls", 0) - pulls0
            lines = sub.lines()
    window_start = sent["t_start"] + WARMUP
    latencies = []
    for line in lines:
        received, _, value = line.partition(" ")
        try:
            emitted = float(value)
        except ValueError:
            continue
        if emitted >= window_start:
            latencies.append(float(received) - emitted)
    latencies.sort()
    return {
        "sent": sent["sent"],
        "driver_rate": sent["rate"],
        "driver_late": sent["late"],
        "driver_errors": sent["errors"],
        "received": len(lines),
        "lost": sent["sent"] - len(lines),
        "complete": complete,
        "samples": len(latencies),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p90_ms": percentile(latencies, 90) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": (latencies[-1] * 1000) if latencies else math.nan,
        "cpu_share": sampler.share(window_start, sent["t_end"]),
        "notifications_per_pull": sent["sent"] / max(pulls, 1),
    }


def measure(env: Env) -> dict[str, Any]:
    cfg = env.config
    runs = []
    for r in range(cfg.runs):
        what = f"{cfg.latency_rate:,.0f}/s for {cfg.latency_seconds:g} s"
        env.say(f"latency run {r + 1}/{cfg.runs}: {what}")
        result = once(env)
        env.say(
            f"  p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms, "
            f"bridge CPU {result['cpu_share'] * 100:.1f}% of a core"
        )
        runs.append(result)
    return {
        "rate": cfg.latency_rate,
        "window_seconds": cfg.latency_seconds,
        "p50_ms": median(r["p50_ms"] for r in runs),
        "p99_ms": median(r["p99_ms"] for r in runs),
        "cpu_share": median(r["cpu_share"] for r in runs),
        "driver_rate": median(r["driver_rate"] for r in runs),
        "lost": max(r["lost"] for r in runs),
        "notifications_per_pull": median(r["notifications_per_pull"] for r in runs),
        "runs": runs,
    }
