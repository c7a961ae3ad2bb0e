"""The readable table of a bench run, the README's table (``--markdown``), and the targets
each figure is held against.

The figures of a part that runs the bridge (throughput, commands, latency, scale) are
keyed by dialect: ``f[part]["legacy"]`` and ``f[part]["current"]``, each as one dialect's
run; ``f["channels"]`` and ``f["listing"]`` have no bridge and no dialect key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from bridge.bench.harness import APIS, CHANNEL_NAME

TARGET_RATIO = 0.7  # commands: the bridge's throughput at least this share of the floor's
SCALE_TARGET_SIZE = 100_000  # the start-up targets hold at this many endpoints
RSS_LIMIT_MIB = 400e6 / 2**20  # the start-up target is 400 MB: 381.5 MiB (the bench reports MiB)
TIMES = "\N{MULTIPLICATION SIGN}"  # as in the README's table
DIALECT_NAME = {"legacy": "2016 Connector", "current": "Device Management"}


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


def dialects(part: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(api, that dialect's figures) for each dialect the part ran on, in APIS order."""
    for api in APIS:
        found = part.get(api)
        if isinstance(found, dict):
            yield api, found


def _apis(f: Mapping[str, Any]) -> list[str]:
    """The dialects of any part that ran (the configured ones otherwise)."""
    seen = {api for name in ("throughput", "commands", "latency", "scale") if name in f
            for api, _ in dialects(f[name])}  # fmt: skip
    return [api for api in APIS if api in seen] or list(f.get("config", {}).get("apis", APIS))


def scale_size(scale: Mapping[str, Any], endpoints: int) -> dict[str, Any] | None:
    for s in scale.get("sizes", ()):
        if s.get("endpoints") == endpoints:
            found: dict[str, Any] = s
            return found
    return None


def targets(f: dict[str, Any]) -> list[Target]:
    """The issue's targets, for the measurements that ran, each dialect on its own."""
    out: list[Target] = []

    def add(name: str, value: Any, goal: str, ok: Callable[[float], bool]) -> None:
        v = _num(value)
        out.append(Target(name, v, goal, not math.isnan(v) and ok(v)))

    for api in _apis(f):
        tag = f" ({api})"
        t = f.get("throughput", {}).get(api)
        if t is not None:
            add("QoS 0 throughput / paho ceiling" + tag, t["qos0"]["ratio_paho"], ">= 0.9",
                lambda v: v >= 0.9)  # fmt: skip
            add("QoS 1 throughput / paho ceiling" + tag, t["qos1"]["ratio_paho"], ">= 1.4",
                lambda v: v >= 1.4)  # fmt: skip
        c = f.get("commands", {}).get(api)
        if c is not None:
            add("command throughput / floor" + tag, c["ratio"], f">= {TARGET_RATIO:g}",
                lambda v: v >= TARGET_RATIO)  # fmt: skip
            add("command p50 added by the bridge, one at a time, ms" + tag, c["added_p50_ms"],
                "<= 2", lambda v: v <= 2)  # fmt: skip
        lat = f.get("latency", {}).get(api)
        if lat is not None:
            add("latency p50, ms" + tag, lat["p50_ms"], "< 5", lambda v: v < 5)
            add("latency p99, ms" + tag, lat["p99_ms"], "< 20", lambda v: v < 20)
            add("bridge CPU at 1,000/s, % of a core" + tag, _num(lat["cpu_share"]) * 100, "< 15",
                lambda v: v < 15)  # fmt: skip
        sc = f.get("scale", {}).get(api)
        s = scale_size(sc, SCALE_TARGET_SIZE) if sc is not None else None
        if s is not None:
            add("start-up with 100,000 endpoints, s" + tag, s["all_s"], "< 90", lambda v: v < 90)
            add("peak RSS with 100,000 endpoints, MiB" + tag, s["peak_rss_mib"], "< 381",
                lambda v: v < RSS_LIMIT_MIB)  # fmt: skip
    return out


def _rate(v: Any) -> str:
    x = _num(v)
    return "-" if math.isnan(x) else f"{x:,.0f}/s"


def _f(v: Any, spec: str = ".2f", unit: str = "") -> str:
    x = _num(v)
    return "-" if math.isnan(x) else f"{x:{spec}}{unit}"


def _ms(v: Any, sign: str = "") -> str:
    return _f(v, sign + ".2f", " ms")


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


def _header(f: Mapping[str, Any]) -> list[str]:
    m = f["machine"]
    cfg = f.get("config", {})
    return [
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
        "dialects: "
        + ", ".join(f"{api} ({DIALECT_NAME[api]}, {CHANNEL_NAME[api]})" for api in _apis(f)),
        f"each figure is the median of {cfg.get('runs', '?')} run(s)"
        + (
            f" ({cfg['scale_runs']} for scale)"
            if "scale" in f and cfg.get("scale_runs") not in (None, cfg.get("runs"))
            else ""
        )
        + "; each ratio is taken within one run, each dialect against its own floor",
    ]


def _throughput(t: Mapping[str, Any]) -> list[str]:
    lines = [
        "",
        f"Notification throughput: N={t['n']:,} values of {t['payload_size']} bytes over "
        f"{t['topics']} topics, retained, counted by mosquitto_sub",
    ]
    columns = [(api, qos, d[qos]) for qos in ("qos0", "qos1") for api, d in dialects(t)]

    def row(name: str, key: str, fmt: Callable[[Any], str]) -> list[str]:
        return [name, *(fmt(q.get(key, math.nan)) for _, _, q in columns)]

    def us(v: Any) -> str:
        return _f(v, ".1f", " us")

    rows = [
        ["", *(f"QoS {qos[-1]}, {api}" for api, qos, _ in columns)],
        ["", *(f"({CHANNEL_NAME[api]})" for api, _, _ in columns)],
        row("bridge (emulator -> channel -> bridge -> broker)", "bridge_rate", _rate),
        row("paho ceiling (bare paho client, in-flight 1,000)", "paho_rate", _rate),
        row("machine's limit (mosquitto_pub -l)", "mosquitto_rate", _rate),
        row("bridge / paho ceiling", "ratio_paho", _f),
        row("bridge / mosquitto_pub", "ratio_mosquitto", _f),
    ]
    if any("current_vs_legacy" in q for _, _, q in columns):
        rows.append(row("bridge, current / legacy", "current_vs_legacy", _f))
    rows += [
        row("bridge CPU per message", "bridge_cpu_us_per_message", us),
        row("messages lost (worst run)", "lost", str),
    ]
    return lines + _table(rows)


def _commands(part: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for api, c in dialects(part):
        lines += [
            "",
            f"Command round trip, {api} dialect ({CHANNEL_NAME[api]}): M={c['m']:,} /set "
            f"commands, {c['inflight']} in flight (then {c['unloaded_m']:,} one at a time), "
            "each waited for until its answer",
        ]

        def row(name: str, way: str, c: Mapping[str, Any] = c) -> list[str]:
            return [name, _rate(c[way + "_rate"]), _ms(c[way + "_p50_ms"]),
                    _ms(c[way + "_p99_ms"])]  # fmt: skip

        def row1(name: str, way: str, c: Mapping[str, Any] = c) -> list[str]:
            p50, p99 = c[way + "_unloaded_p50_ms"], c[way + "_unloaded_p99_ms"]
            return [name, "", _ms(p50), _ms(p99)]

        n, threads = c["inflight"], c["floor_threads"]
        lines += _table(
            [
                ["", "throughput", "p50", "p99"],
                row(f"bridge, {n} in flight (MQTT 5 client -> bridge -> reply)", "bridge"),
                row(f"floor, {n} in flight (Connector client, {threads} threads)", "floor"),
                ["bridge / floor", _f(c["ratio"]), _ms(c["added_p50_loaded_ms"], "+"), ""],
                row1("bridge, one at a time", "bridge"),
                row1("floor, one at a time", "floor"),
                ["added by the bridge, one at a time", "",
                 _ms(c["added_p50_ms"], "+"), _ms(c["added_p99_ms"], "+")],
            ]
        )  # fmt: skip
        lines.append(
            f"  CPU per command: bridge {_f(c['bridge_cpu_us_per_command'], '.0f', ' us')}, "
            f"floor {_f(c['floor_cpu_us_per_command'], '.0f', ' us')} (each its own process)"
        )
        lines += _cpu_accounting(c)
        lines.append(f"  failed commands (worst run): {c['failed']}; unanswered: {c['unanswered']}")
    if "current_vs_legacy" in part:
        lines.append(
            f"  the bridge's command rate, current / legacy (within each run): "
            f"{_f(part['current_vs_legacy'])}"
        )
    return lines


def _latency(part: Mapping[str, Any]) -> list[str]:
    lines = [
        "",
        f"Notification latency at {part['rate']:,.0f}/s for {part['window_seconds']:g} s "
        "(emulator emits -> subscriber receives)",
    ]
    rows = [["", "p50", "p99", "bridge CPU", "driver", "lost", "notifications a message"]]
    for api, lat in dialects(part):
        rows.append(
            [
                f"{api} ({CHANNEL_NAME[api]})",
                _ms(lat["p50_ms"]),
                _ms(lat["p99_ms"]),
                _f(_num(lat["cpu_share"]) * 100, ".1f", "% of a core"),
                _rate(lat["driver_rate"]),
                str(lat["lost"]),
                _f(lat.get("notifications_per_message"), ".1f"),
            ]
        )
    return lines + _table(rows)


def _scale(part: Mapping[str, Any]) -> list[str]:
    lines = [
        "",
        "Scale: start-up with 3 observed resources per endpoint (time from the bridge's start)",
    ]
    rows = [
        ["dialect", "endpoints", "every $state", "every $resources", "every value",
         "every HA config", "peak RSS", "bridge CPU"]
    ]  # fmt: skip
    for api, d in dialects(part):
        for s in d["sizes"]:
            rows.append(
                [
                    api,
                    f"{s['endpoints']:,}" + ("" if s["complete"] else " (incomplete)"),
                    _f(s["states_s"], ".1f", " s"),
                    _f(s["resources_s"], ".1f", " s"),
                    _f(s["values_s"], ".1f", " s"),
                    _f(s.get("configs_s", math.nan), ".1f", " s"),
                    _f(s["peak_rss_mib"], ".0f", " MiB"),
                    _f(s.get("bridge_cpu_s", math.nan), ".1f", " s"),
                ]
            )
    return lines + _table(rows)


def _channels(ch: Mapping[str, Any]) -> list[str]:
    lines = [
        "",
        f"Notification channels of the client: bursts of {ch['n']:,} from the emulator, "
        "end to end (emulator and client in one process, the bench's child)",
    ]
    rows = [["", "notifications/s", "/ long poll"]]
    for name, label in (
        ("long_poll", "long poll (legacy)"),
        ("websocket", "WebSocket (current), with uid"),
        ("websocket_no_uid", "WebSocket (current), no uid"),
    ):
        ratio = ch.get(f"{name}_ratio") if name != "long_poll" else 1.0
        rows.append([label, _rate(ch.get(f"{name}_rate")), _f(ratio)])
    return lines + _table(rows)


def _listing(li: Mapping[str, Any]) -> list[str]:
    per_s = _num(li["devices"]) / _num(li["plain_s"]) if _num(li["plain_s"]) > 0 else math.nan
    return [
        "",
        f"Device listing (current dialect): GET /v3/devices over {li['devices']:,} devices, "
        f"{li['pages']:,} pages of {li['page']:,}",
        f"  {_f(li['plain_s'], '.2f', ' s')} (requests, every page decoded; "
        f"{_rate(per_s)} devices), {_f(li['client_s'], '.2f', ' s')} through the client's "
        "getEndpoints() (what the bridge calls)",
    ]


def render(f: dict[str, Any]) -> str:
    lines = _header(f)
    if "throughput" in f:
        lines += _throughput(f["throughput"])
    if "commands" in f:
        lines += _commands(f["commands"])
    if "latency" in f:
        lines += _latency(f["latency"])
    if "scale" in f:
        lines += _scale(f["scale"])
    if "channels" in f:
        lines += _channels(f["channels"])
    if "listing" in f:
        lines += _listing(f["listing"])
    found = targets(f)
    if found:
        lines += ["", "Targets"]
        lines += _table(
            [[t.name, _f(t.value), t.goal, "met" if t.met else "MISSED"] for t in found]
        )
    lines += ["", "The README's table (connector-bridge bench --markdown):", markdown(f)]
    lines.append(f"\n(bench took {f.get('seconds', 0):.0f} s)")
    return "\n".join(lines)


# ---- the README's table ---------------------------------------------------------------------


def _cells(f: Mapping[str, Any], apis: list[str]) -> list[list[str]]:
    """Rows of the README's table: measurement, one cell per dialect (with a mark where
    a target applies), the reference of the same run, the target."""
    rows: list[list[str]] = []

    def per(
        part: str,
        cell: Callable[[dict[str, Any]], str],
        ok: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[str]:
        out = []
        for api in apis:
            d = f.get(part, {}).get(api)
            if not isinstance(d, dict):
                out.append("")
                continue
            mark = "" if ok is None else (" ✓" if ok(d) else " ✗")
            out.append(cell(d) + mark)
        return out

    t = f.get("throughput")
    if t is not None:
        for qos, goal in (("qos0", 0.9), ("qos1", 1.4)):
            first = next(d[qos] for _, d in dialects(t))

            def rate(d: dict[str, Any], q: str = qos) -> str:
                return f"{_rate(d[q]['bridge_rate'])} = {_f(d[q]['ratio_paho'])} {TIMES} paho"

            def met(d: dict[str, Any], q: str = qos, g: float = goal) -> bool:
                return _num(d[q]["ratio_paho"]) >= g

            rows.append(
                [f"notifications, QoS {qos[-1]}", *per("throughput", rate, met),
                 f"bare paho {_rate(first['paho_rate'])}; `mosquitto_pub -l` "
                 f"{_rate(first['mosquitto_rate'])}",
                 f"≥ {goal:g} {TIMES} paho"]
            )  # fmt: skip
    c = f.get("commands")
    if c is not None:
        inflight = next(d["inflight"] for _, d in dialects(c))
        rows.append(
            [f"commands, {inflight} in flight",
             *per("commands", lambda d: f"{_rate(d['bridge_rate'])}, p50 "
                  f"{_f(d['bridge_p50_ms'], '.1f')} ms = {_f(d['ratio'])} {TIMES} floor "
                  f"({_rate(d['floor_rate'])})", lambda d: _num(d["ratio"]) >= TARGET_RATIO),
             "floor: the Connector client alone, same channel",
             f"≥ {TARGET_RATIO:g} {TIMES} floor"]
        )  # fmt: skip
        rows.append(
            ["one command at a time, p50",
             *per("commands", lambda d: f"{_f(d['bridge_unloaded_p50_ms'])} ms, "
                  f"{_f(d['added_p50_ms'], '+.2f')} ms over the floor's "
                  f"{_f(d['floor_unloaded_p50_ms'])} ms", lambda d: _num(d["added_p50_ms"]) <= 2),
             "", "≤ 2 ms added"]
        )  # fmt: skip
    lat = f.get("latency")
    if lat is not None:
        rows.append(
            [f"latency at {lat['rate']:,.0f} notifications/s, p50 / p99",
             *per("latency", lambda d: f"{_f(d['p50_ms'], '.1f')} / {_f(d['p99_ms'], '.1f')} ms",
                  lambda d: _num(d["p50_ms"]) < 5 and _num(d["p99_ms"]) < 20),
             "", "< 5 / < 20 ms"]
        )  # fmt: skip
        rows.append(
            [f"bridge CPU at {lat['rate']:,.0f}/s",
             *per("latency", lambda d: _f(_num(d["cpu_share"]) * 100, ".1f", "% of a core"),
                  lambda d: _num(d["cpu_share"]) * 100 < 15),
             "", "< 15%"]
        )  # fmt: skip
    sc = f.get("scale")
    if sc is not None:
        sizes = sorted({s["endpoints"] for _, d in dialects(sc) for s in d["sizes"]})
        label = " / ".join(_k(n) for n in sizes)
        big = SCALE_TARGET_SIZE in sizes

        def at(d: dict[str, Any], key: str, spec: str, unit: str) -> str:
            got = [scale_size(d, n) for n in sizes]
            return " / ".join(_f(s[key] if s else math.nan, spec) for s in got) + unit

        def big_ok(key: str, limit: float) -> Callable[[dict[str, Any]], bool] | None:
            if not big:
                return None
            return lambda d: _num((scale_size(d, SCALE_TARGET_SIZE) or {}).get(key)) < limit

        rows += [
            [f"start-up to every `$state` ({label} endpoints)",
             *per("scale", lambda d: at(d, "states_s", ".1f", " s")), "", ""],
            [f"start-up to every initial value ({label})",
             *per("scale", lambda d: at(d, "values_s", ".1f", " s"), big_ok("all_s", 90)), "",
             "< 90 s" if big else ""],
            [f"start-up to every Home Assistant config ({label})",
             *per("scale", lambda d: at(d, "configs_s", ".1f", " s")), "they follow the values",
             ""],
            [f"peak RSS ({label})",
             *per("scale", lambda d: at(d, "peak_rss_mib", ".0f", " MiB"),
                  big_ok("peak_rss_mib", RSS_LIMIT_MIB)), "", "< 400 MB (381 MiB)" if big else ""],
        ]  # fmt: skip
    ch = f.get("channels")
    if ch is not None:
        cells = {
            "legacy": f"long poll {_rate(ch.get('long_poll_rate'))}",
            "current": f"WebSocket {_rate(ch.get('websocket_rate'))} = "
            f"{_f(ch.get('websocket_ratio'))} {TIMES} long poll (without uid "
            f"{_rate(ch.get('websocket_no_uid_rate'))})",
        }
        rows.append(
            [f"the client's channel, burst of {ch['n']:,}", *(cells[api] for api in apis),
             "the emulator in the client's process", ""]
        )  # fmt: skip
    li = f.get("listing")
    if li is not None:
        cells = {
            "legacy": "",
            "current": f"{_f(li['plain_s'], '.2f')} s; {_f(li['client_s'], '.2f')} s "
            "by `getEndpoints()`",
        }
        rows.append(
            [f"`GET /v3/devices`, {li['devices']:,} devices, pages of {li['page']:,}",
             *(cells[api] for api in apis), "", ""]
        )  # fmt: skip
    return rows


def _k(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


def markdown(f: dict[str, Any]) -> str:
    """The README's Performance table: one row per measurement, one column per dialect."""
    apis = _apis(f)
    head = ["measurement", *(f"{api}: {DIALECT_NAME[api]}, {CHANNEL_NAME[api]}" for api in apis),
            "reference, same run", "target"]  # fmt: skip
    rows = _cells(f, apis)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
