"""The readable table of a bench run, and the targets each figure is held against."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

TARGET_RATIO = 0.7  # commands: the bridge's throughput at least this share of the floor's


class Target(NamedTuple):
    name: str
    value: float
    goal: str
    met: bool


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def targets(f: dict[str, Any]) -> list[Target]:
    """The issue's targets, for the measurements that ran."""
    out: list[Target] = []

    def add(name: str, value: Any, goal: str, ok: Callable[[float], bool]) -> None:
        v = _num(value)
        out.append(Target(name, v, goal, not math.isnan(v) and ok(v)))

    if "throughput" in f:
        t = f["throughput"]
        add(
            "QoS 0 throughput / paho ceiling", t["qos0"]["ratio_paho"], ">= 0.9", lambda v: v >= 0.9
        )
        add(
            "QoS 1 throughput / paho ceiling", t["qos1"]["ratio_paho"], ">= 1.4", lambda v: v >= 1.4
        )
    if "commands" in f:
        c = f["commands"]
        add(
            "command throughput / floor",
            c["ratio"],
            f">= {TARGET_RATIO:g}",
            lambda v: v >= TARGET_RATIO,
        )
        add(
            "command p50 added by the bridge, one at a time, ms",
            c["added_p50_ms"],
            "<= 2",
            lambda v: v <= 2,
        )
    if "latency" in f:
        lat = f["latency"]
        add("latency p50, ms", lat["p50_ms"], "< 5", lambda v: v < 5)
        add("latency p99, ms", lat["p99_ms"], "< 20", lambda v: v < 20)
        add(
            "bridge CPU at 1,000/s, % of a core",
            _num(lat["cpu_share"]) * 100,
            "< 15",
            lambda v: v < 15,
        )
    if "scale" in f:
        for s in f["scale"]["sizes"]:
            if s["endpoints"] == 100_000:
                add("start-up with 100,000 endpoints, s", s["all_s"], "< 90", lambda v: v < 90)
                add(
                    "peak RSS with 100,000 endpoints, MiB",
                    s["peak_rss_mib"],
                    "< 400",
                    lambda v: v < 400,
                )
    return out


def _rate(v: Any) -> str:
    x = _num(v)
    return "-" if math.isnan(x) else f"{x:,.0f}/s"


def _f(v: Any, spec: str = ".2f", unit: str = "") -> str:
    x = _num(v)
    return "-" if math.isnan(x) else f"{x:{spec}}{unit}"


def _cpu_accounting(c: Mapping[str, Any]) -> list[str]:
    """Where the CPU of a command goes, by process, and what that allows (see
    bridge.bench.commands.cpu_bounds)."""
    cpu, bounds = c.get("cpu_us"), c.get("bounds")
    if not isinstance(cpu, Mapping) or not isinstance(bounds, Mapping):
        return []  # figures of an older bench
    lines = []
    for way in ("bridge", "floor"):
        parts = cpu.get(way, {})
        total = sum(_num(v) for v in parts.values())
        shown = ", ".join(f"{name} {_f(v, '.0f')}" for name, v in parts.items())
        lines.append(f"  CPU per command, {way} way (us): {shown}; total {_f(total, '.0f')}")
    lines.append(
        f"  what that CPU allows on {c.get('cores', '?')} cores, as a ratio to the floor: "
        f"{_f(bounds.get('all_processes'))} (all processes), {_f(bounds.get('without_bridge'))} "
        f"(with a bridge that cost nothing), {_f(bounds.get('one_core'))} (the bridge alone "
        "on a core of its own)"
    )
    lines.append(
        f"  for {TARGET_RATIO:g} of the floor all processes together may use "
        f"{_f(bounds.get('budget_us'), '.0f')} us per command; the broker and the emulator "
        f"alone use {_f(bounds.get('fixed_us'), '.0f')}"
    )
    return lines


def _table(rows: list[list[str]], right_from: int = 1) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [
            c.ljust(widths[i]) if i < right_from else c.rjust(widths[i]) for i, c in enumerate(r)
        ]
        lines.append("  " + "   ".join(cells).rstrip())
    return lines


def render(f: dict[str, Any]) -> str:
    m = f["machine"]
    cfg = f.get("config", {})
    lines = [
        "connector-bridge bench",
        f"machine: {m['cores']} cores ({m['usable_cores']} usable), {m['cpu_model']}, "
        f"{m['memory_mib'] / 1024:.1f} GiB; Python {m['python']}, paho-mqtt {m['paho_mqtt']}, "
        f"Mosquitto {m['mosquitto']}",
        f"load average before/after: {m['load_before'][0]:.2f} / "
        f"{m.get('load_after', [math.nan])[0]:.2f}",
        f"machine speed: {m.get('python_loop_additions', 0):,} Python additions took "
        f"{m.get('python_loop_s_before', math.nan) * 1000:.0f} / "
        f"{m.get('python_loop_s_after', math.nan) * 1000:.0f} ms before/after "
        "(lower is faster; absolute figures of two runs compare only at a like speed)",
        f"broker: {f.get('broker', '?')}",
        f"command: {f.get('command', 'connector-bridge bench')}",
        f"each figure is the median of {cfg.get('runs', '?')} run(s)"
        + (
            f" ({cfg['scale_runs']} for scale)"
            if "scale" in f and cfg.get("scale_runs") not in (None, cfg.get("runs"))
            else ""
        )
        + "; each ratio is taken within one run",
    ]
    if "throughput" in f:
        t = f["throughput"]
        q0, q1 = t["qos0"], t["qos1"]
        lines += [
            "",
            f"Notification throughput: N={t['n']:,} values of {t['payload_size']} bytes over "
            f"{t['topics']} topics, retained, counted by mosquitto_sub",
        ]

        def both(key: str, fmt: Callable[[Any], str]) -> list[str]:
            return [fmt(q0[key]), fmt(q1[key])]

        def us(v: Any) -> str:
            return _f(v, ".1f", " us")

        lines += _table(
            [
                ["", "QoS 0", "QoS 1"],
                ["bridge (emulator -> long poll -> bridge -> broker)", *both("bridge_rate", _rate)],
                ["paho ceiling (bare paho client, in-flight 1,000)", *both("paho_rate", _rate)],
                ["machine's limit (mosquitto_pub -l)", *both("mosquitto_rate", _rate)],
                ["bridge / paho ceiling", *both("ratio_paho", _f)],
                ["bridge / mosquitto_pub", *both("ratio_mosquitto", _f)],
                ["bridge CPU per message", *both("bridge_cpu_us_per_message", us)],
                ["messages lost (worst run)", *both("lost", str)],
            ]
        )
    if "commands" in f:
        c = f["commands"]
        lines += [
            "",
            f"Command round trip: M={c['m']:,} /set commands, {c['inflight']} in flight "
            f"(then {c['unloaded_m']:,} one at a time), each waited for until its answer",
        ]

        def ms(v: Any, sign: str = "") -> str:
            return _f(v, sign + ".2f", " ms")

        def row(name: str, way: str) -> list[str]:
            return [name, _rate(c[way + "_rate"]), ms(c[way + "_p50_ms"]), ms(c[way + "_p99_ms"])]

        def row1(name: str, way: str) -> list[str]:
            p50, p99 = c[way + "_unloaded_p50_ms"], c[way + "_unloaded_p99_ms"]
            return [name, "", ms(p50), ms(p99)]

        n, threads = c["inflight"], c["floor_threads"]
        lines += _table(
            [
                ["", "throughput", "p50", "p99"],
                row(f"bridge, {n} in flight (MQTT 5 client -> bridge -> reply)", "bridge"),
                row(f"floor, {n} in flight (Connector client, {threads} threads)", "floor"),
                ["bridge / floor", _f(c["ratio"]), ms(c["added_p50_loaded_ms"], "+"), ""],
                row1("bridge, one at a time", "bridge"),
                row1("floor, one at a time", "floor"),
                ["added by the bridge, one at a time", "",
                 ms(c["added_p50_ms"], "+"), ms(c["added_p99_ms"], "+")],
            ]
        )  # fmt: skip
        lines.append(
            f"  CPU per command: bridge {_f(c['bridge_cpu_us_per_command'], '.0f', ' us')}, "
            f"floor {_f(c['floor_cpu_us_per_command'], '.0f', ' us')} (each its own process)"
        )
        lines += _cpu_accounting(c)
        lines.append(f"  failed commands (worst run): {c['failed']}; unanswered: {c['unanswered']}")
    if "latency" in f:
        lat = f["latency"]
        lines += [
            "",
            f"Notification latency at {lat['rate']:,.0f}/s for {lat['window_seconds']:g} s "
            "(emulator emits -> subscriber receives)",
            f"  p50 {_f(lat['p50_ms'], '.2f', ' ms')}   p99 {_f(lat['p99_ms'], '.2f', ' ms')}   "
            f"bridge CPU {_f(_num(lat['cpu_share']) * 100, '.1f', '% of one core')}   "
            f"(driver reached {_rate(lat['driver_rate'])}; lost {lat['lost']}; "
            f"{_f(lat['notifications_per_pull'], '.1f')} notifications per pull)",
        ]
    if "scale" in f:
        lines += [
            "",
            "Scale: start-up with 3 observed resources per endpoint (time from the bridge's start)",
        ]
        rows = [
            [
                "endpoints",
                "every $state",
                "every $resources",
                "every value",
                "every HA config",
                "peak RSS",
            ]
        ]
        for s in f["scale"]["sizes"]:
            rows.append(
                [
                    f"{s['endpoints']:,}" + ("" if s["complete"] else " (incomplete)"),
                    _f(s["states_s"], ".1f", " s"),
                    _f(s["resources_s"], ".1f", " s"),
                    _f(s["values_s"], ".1f", " s"),
                    _f(s.get("configs_s", math.nan), ".1f", " s"),
                    _f(s["peak_rss_mib"], ".0f", " MiB"),
                ]
            )
        lines += _table(rows)
    found = targets(f)
    if found:
        lines += ["", "Targets"]
        lines += _table(
            [[t.name, _f(t.value), t.goal, "met" if t.met else "MISSED"] for t in found]
        )
    lines.append(f"\n(bench took {f.get('seconds', 0):.0f} s)")
    return "\n".join(lines)
