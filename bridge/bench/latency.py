"""Notification latency at a steady rate, and the bridge's CPU use at that rate.

A driver process changes values through the emulator's admin route at a steady
``latency_rate`` per second (round-robin over the observed resources), each new value
being the time it was sent; ``mosquitto_sub`` prints each value topic's message with the
time it arrived, so latency = arrival - value: emulator, the dialect's channel (long
poll or WebSocket), bridge, broker and subscriber included. Each run measures every
dialect of ``--api`` in turn. The first second is warm-up and not counted. The bridge's CPU use
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
    CHANNEL_NAME,
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


def once(env: Env, api: str = "legacy") -> dict[str, Any]:
    cfg = env.config
    prefix = new_prefix("lat")
    settings = {"initial_read": "false", "mqtt_protocol": cfg.mqtt_protocol}
    settings.update(cfg.bridge_settings)
    total = int(cfg.latency_rate * (cfg.latency_seconds + WARMUP))
    emulator = env.emulator(api)
    with BridgeProcess(emulator, env.broker, prefix, settings) as bridge:
        bridge.wait_ready()
        targets = [[ep, path] for ep, path in emulator.subscriptions()]
        if not targets:
            raise BenchError("the emulator has no observed resource")
        qos = int(settings.get("value_qos", "1"))
        sub = CountingSubscriber(
            env.broker, env.control, [f"{prefix}/+/+/+/+"], total, f"{prefix}/$bench/sync/0/0",
            qos, fmt="%U %p",
        )  # fmt: skip
        with sub:
            sampler = CpuSampler(bridge.cpu_seconds)
            messages0 = emulator.channel_messages()
            try:
                driver = start_child(
                    "latency-driver",
                    {
                        "url": emulator.url,
                        "token": emulator.token,
                        "targets": targets,
                        "rate": cfg.latency_rate,
                        "seconds": cfg.latency_seconds + WARMUP,
                    },
                )
                sent = child_result(driver, "latency-driver", timeout=cfg.latency_seconds + 120)
                complete = sub.wait(stall=5.0)
            finally:
                sampler.stop()
            messages = emulator.channel_messages() - messages0
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
        # long polls answered (legacy) or WebSocket frames (current)
        "notifications_per_message": sent["sent"] / max(messages, 1),
    }


def measure(env: Env) -> dict[str, Any]:
    """``{"rate", "window_seconds", <api>: {...}, ...}``: each dialect's medians."""
    cfg = env.config
    runs: dict[str, list[dict[str, Any]]] = {api: [] for api in cfg.apis}
    for r in range(cfg.runs):
        for api in cfg.apis:
            what = f"{cfg.latency_rate:,.0f}/s for {cfg.latency_seconds:g} s"
            env.say(f"latency run {r + 1}/{cfg.runs}, {api} dialect ({CHANNEL_NAME[api]}): {what}")
            result = once(env, api)
            env.say(
                f"  p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms, "
                f"bridge CPU {result['cpu_share'] * 100:.1f}% of a core"
            )
            runs[api].append(result)
    out: dict[str, Any] = {"rate": cfg.latency_rate, "window_seconds": cfg.latency_seconds}
    for api, done in runs.items():
        out[api] = {
            "rate": cfg.latency_rate,
            "window_seconds": cfg.latency_seconds,
            "channel": CHANNEL_NAME[api],
            "p50_ms": median(r["p50_ms"] for r in done),
            "p99_ms": median(r["p99_ms"] for r in done),
            "cpu_share": median(r["cpu_share"] for r in done),
            "driver_rate": median(r["driver_rate"] for r in done),
            "lost": max(r["lost"] for r in done),
            "notifications_per_message": median(r["notifications_per_message"] for r in done),
            "runs": done,
        }
    return out
