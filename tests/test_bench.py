"""``connector-bridge bench --quick`` keeps working: it runs as a user runs it and gives
every figure, each with a sane value. Timing targets are the bench's business, not a
test's: nothing here asserts how fast the bridge is."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from typing import Any

import pytest

from bridge.bench.cli import build_parser, config_from
from bridge.bench.report import markdown, render, targets
from bridge.bench.stats import median, percentile, rate, ratio
from tests.support.broker import env_with_pythonpath


def test_median_and_percentiles() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert math.isnan(median([]))
    values = [float(i) for i in range(101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert rate(11, 10.0, 12.0) == 5.0
    assert math.isnan(rate(1, 10.0, 10.0))
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run() -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "bench", "--quick", "--json"],
        env=env_with_pythonpath(),
        capture_output=True,
        text=True,
        timeout=170,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), elapsed


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_bench_gives_every_figure(quick_run: tuple[dict[str, Any], float]) -> None:
    f, elapsed = quick_run
    m = f["machine"]
    assert m["cores"] >= 1 and m["cpu_model"] and m["mosquitto"] != "not installed"
    # the machine-speed probe, before and after, so that runs on a VM can be compared
    assert _positive(m["python_loop_s_before"]) and _positive(m["python_loop_s_after"])
    assert m["python_loop_additions"] > 0
    assert f["config"]["quick"] is True
    assert f["config"]["apis"] == ["legacy", "current"]  # --api both is the default

    for api in ("legacy", "current"):
        for qos in ("qos0", "qos1"):
            t = f["throughput"][api][qos]
            for key in (
                "bridge_rate", "paho_rate", "mosquitto_rate", "ratio_paho", "ratio_mosquitto",
                "current_vs_legacy",
            ):  # fmt: skip
                assert _positive(t[key]), (api, qos, key, t[key])
            assert t["lost"] == 0, t
            run = t["runs"][0]
            for way in ("bridge", "paho", "mosquitto_pub"):
                assert run[way]["received"] == f["throughput"]["n"], (api, qos, way, run[way])
            assert t["ratio_paho"] == pytest.approx(run["bridge"]["rate"] / run["paho"]["rate"])
        # both dialects against the same paho run: ratios taken in the same run
        legacy, current = (f["throughput"][a]["qos1"]["runs"][0] for a in ("legacy", "current"))
        assert legacy["paho"] == current["paho"]
        assert f["throughput"]["legacy"]["qos1"]["current_vs_legacy"] == pytest.approx(
            current["bridge"]["rate"] / legacy["bridge"]["rate"]
        )

        c = f["commands"][api]
        for key in ("bridge_rate", "floor_rate", "bridge_p50_ms", "floor_p50_ms", "ratio"):
            assert _positive(c[key]), (api, key, c[key])
        assert c["bridge_p99_ms"] >= c["bridge_p50_ms"] and c["floor_p99_ms"] >= c["floor_p50_ms"]
        assert c["failed"] == 0 and c["unanswered"] == 0, c
        run = c["runs"][0]
        assert run["bridge"]["ok"] == run["floor"]["ok"] == c["m"]
        assert c["ratio"] == pytest.approx(run["bridge"]["rate"] / run["floor"]["rate"])
        # where each command's CPU goes, process by process, and what it allows
        assert set(c["cpu_us"]["bridge"]) == {"client", "broker", "bridge", "emulator"}
        assert set(c["cpu_us"]["floor"]) == {"client", "emulator"}
        for way in ("bridge", "floor"):
            assert all(_positive(v) for v in c["cpu_us"][way].values()), c["cpu_us"]
        assert c["cpu_us"]["bridge"]["bridge"] == c["bridge_cpu_us_per_command"]
        b = c["bounds"]
        assert b["all_processes"] < b["without_bridge"]  # the bridge's own CPU counts
        expected = c["cores"] * 1e6 / sum(run["bridge"]["cpu_us"].values()) / run["floor"]["rate"]
        assert b["all_processes"] == pytest.approx(expected)
        assert b["fixed_us"] == pytest.approx(
            run["bridge"]["cpu_us"]["broker"] + run["bridge"]["cpu_us"]["emulator"]
        )

        lat = f["latency"][api]
        assert _positive(lat["p50_ms"]) and lat["p99_ms"] >= lat["p50_ms"], lat
        assert 0 < lat["cpu_share"] <= m["cores"], lat
        assert lat["lost"] == 0
        assert lat["runs"][0]["samples"] > 0.9 * lat["rate"] * lat["window_seconds"]
        assert _positive(lat["notifications_per_message"]), lat

        sizes = f["scale"][api]["sizes"]
        assert [s["endpoints"] for s in sizes] == f["config"]["scale_sizes"]
        for s in sizes:
            assert s["complete"], (api, s)
            assert 0 < s["states_s"] <= s["all_s"] and 0 < s["values_s"] <= s["all_s"], s
            assert 10 < s["peak_rss_mib"] < 4096, s
    assert _positive(f["commands"]["current_vs_legacy"])

    ch = f["channels"]
    assert ch["n"] == f["config"]["channel_burst"]
    for name in ("long_poll", "websocket", "websocket_no_uid"):
        assert _positive(ch[f"{name}_rate"]), ch
        assert all(r["received"] >= ch["n"] for r in ch["results"][name]), ch["results"]
    assert ch["websocket_ratio"] == pytest.approx(
        ch["results"]["websocket"][0]["rate"] / ch["results"]["long_poll"][0]["rate"]
    )

    li = f["listing"]
    assert li["devices"] == f["config"]["listing_devices"] and li["page"] == 1000
    assert li["pages"] == -(-li["devices"] // li["page"])
    assert _positive(li["plain_s"]) and _positive(li["client_s"]), li

    names = {t["name"] for t in f["targets"]}
    for api in ("legacy", "current"):
        assert f"QoS 1 throughput / paho ceiling ({api})" in names
        assert f"latency p99, ms ({api})" in names
    print(f"connector-bridge bench --quick took {elapsed:.0f} s")


def test_the_table_shows_every_section(quick_run: tuple[dict[str, Any], float]) -> None:
    f, _ = quick_run
    text = render(f)
    for heading in (
        "Notification throughput",
        "QoS 1, current",
        "bridge, current / legacy",
        "Command round trip, legacy dialect (long poll)",
        "Command round trip, current dialect (WebSocket)",
        "Notification latency",
        "current (WebSocket)",
        "Scale",
        "Notification channels of the client",
        "Device listing (current dialect)",
        "Targets",
        f["machine"]["cpu_model"],
        f"machine speed: {f['machine']['python_loop_additions']:,} Python additions took",
        "CPU per command, bridge way (us): client ",
        "the broker and the emulator alone use",
        "| measurement | legacy: 2016 Connector, long poll | current: Device Management, "
        "WebSocket |",
    ):
        assert heading in text, heading
    assert len(targets(f)) == 14  # 7 a dialect; no 100,000-endpoint size in --quick


def test_the_readme_table_has_a_row_per_measurement(
    quick_run: tuple[dict[str, Any], float],
) -> None:
    f, _ = quick_run
    table = markdown(f).splitlines()
    assert table[1] == "|---|---|---|---|---|"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table[2:]}
    for name in (
        "notifications, QoS 0",
        "notifications, QoS 1",
        "commands, 100 in flight",
        "one command at a time, p50",
        "latency at 1,000 notifications/s, p50 / p99",
        "bridge CPU at 1,000/s",
        "start-up to every initial value (200 / 1k)",
        "peak RSS (200 / 1k)",
        "the client's channel, burst of 10,000",
        "`GET /v3/devices`, 5,000 devices, pages of 1,000",
    ):
        assert name in rows, (name, list(rows))
        assert rows[name].count(" | ") == 4, rows[name]  # five cells: both dialects


def test_api_option() -> None:
    both = ("legacy", "current")
    for given, apis in (
        ([], both),
        (["--api", "both"], both),
        (["--api", "current"], ("current",)),
        (["--api", "legacy"], ("legacy",)),
    ):
        assert config_from(build_parser().parse_args(given)).apis == apis
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--api", "2016"])
    parts = build_parser().parse_args(["--only", "channels", "--only", "listing"]).only
    assert parts == ["channels", "listing"]


@pytest.mark.timeout(120)
def test_one_dialect_in_quick_mode() -> None:
    """``--api current`` runs the bridge on today's dialect only (its WebSocket channel),
    and the README's table has that dialect's column alone."""
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "bench", "--quick", "--api", "current",
         "--only", "latency", "--json"],
        env=env_with_pythonpath(),
        capture_output=True,
        text=True,
        timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    f = json.loads(done.stdout)
    assert f["config"]["apis"] == ["current"] and set(f["latency"]) >= {"current"}
    assert "legacy" not in f["latency"]
    lat = f["latency"]["current"]
    assert lat["channel"] == "WebSocket" and _positive(lat["p50_ms"]) and lat["lost"] == 0
    assert "WebSocket" in done.stderr and "long poll" not in done.stderr
    table = markdown(f).splitlines()
    assert table[0] == (
        "| measurement | current: Device Management, WebSocket | reference, same run | target |"
    )
    assert [t.name for t in targets(f)] == [
        "latency p50, ms (current)",
        "latency p99, ms (current)",
        "bridge CPU at 1,000/s, % of a core (current)",
    ]
