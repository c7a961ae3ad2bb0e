"""The emulator benchmark script runs (small sizes here; the real figures come from
``python -m bridge.simulator.bench``, 100,000 endpoints and 1,000,000 notifications)."""

from __future__ import annotations

from bridge.simulator import bench


def test_bench_small_run_delivers_everything() -> None:
    figures = bench.run(devices=2000, notifications=30_000)
    print(f"\nemulator bench (small): {figures}")
    assert figures["endpoints"] == 2000
    assert figures["delivered"] >= 30_000
    assert figures["dropped"] == 0
    assert figures["rss_mib"] > 0 and figures["delivered_rate"] > 0


def test_bench_listing_small_run_sees_every_device_once() -> None:
    figures = bench.listing(devices=3000, page=1000)
    print(f"\nemulator listing bench (small): {figures}")
    assert figures["devices"] == 3000 and figures["pages"] == 3
