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

from bridge.bench.report import render, targets
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

    for qos in ("qos0", "qos1"):
        t = f["throughput"][qos]
        for key in ("bridge_rate", "paho_rate", "mosquitto_rate", "ratio_paho", "ratio_mosquitto"):
            assert _positive(t[key]), (qos, key, t[key])
        assert t["lost"] == 0, t
        run = t["runs"][0]
        for way in ("bridge", "paho", "mosquitto_pub"):
            assert run[way]["received"] == f["throughput"]["n"], (qos, way, run[way])
        assert t["ratio_paho"] == pytest.approx(run["bridge"]["rate"] / run["paho"]["rate"])

    c = f["commands"]
    for key in ("bridge_rate", "floor_rate", "bridge_p50_ms", "floor_p50_ms", "ratio"):
        assert _positive(c[key]), (key, c[key])
    assert c["bridge_p99_ms"] >= c["bridge_p50_ms"] and c["floor_p99_ms"] >= c["floor_p50_ms"]
    assert c["failed"] == 0 and c["unanswered"] == 0, c
    run = c["runs"][0]
    assert run["bridge"]["ok"] == run["floor"]["ok"] == c["m"]
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

    lat = f["latency"]
    assert _positive(lat["p50_ms"]) and lat["p99_ms"] >= lat["p50_ms"], lat
    assert 0 < lat["cpu_share"] <= m["cores"], lat
    assert (
        lat["lost"] == 0 and lat["runs"][0]["samples"] > 0.9 * lat["rate"] * lat["window_seconds"]
    )

    sizes = f["scale"]["sizes"]
    assert [s["endpoints"] for s in sizes] == f["config"]["scale_sizes"]
    for s in sizes:
        assert s["complete"], s
        assert 0 < s["states_s"] <= s["all_s"] and 0 < s["values_s"] <= s["all_s"], s
        assert 10 < s["peak_rss_mib"] < 4096, s

    names = {t["name"] for t in f["targets"]}
    assert "QoS 1 throughput / paho ceiling" in names and "latency p99, ms" in names
    print(f"connector-bridge bench --quick took {elapsed:.0f} s")


def test_the_table_shows_every_section(quick_run: tuple[dict[str, Any], float]) -> None:
    f, _ = quick_run
    text = render(f)
    for heading in (
        "Notification throughput",
        "Command round trip",
        "Notification latency",
        "Scale",
        "Targets",
        f["machine"]["cpu_model"],
        f"machine speed: {f['machine']['python_loop_additions']:,} Python additions took",
        "CPU per command, bridge way (us): client ",
        "the broker and the emulator alone use",
    ):
        assert heading in text
    assert len(targets(f)) == 7  # no 100,000-endpoint size in --quick
