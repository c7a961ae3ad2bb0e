"""A full device listing of today's dialect: every page of ``GET /v3/devices`` over
``listing_devices`` lamps (100,000 by default) in pages of ``listing_page`` (1,000, the
service's largest), the first thing the bridge's start-up does after the probe.

An emulator (``--api current``) runs in its own process; a load client of its own
(:func:`bridge.bench.loadgen.listing`) lists every page, ``runs`` times, with a plain
``requests`` client that decodes each page (the emulator's cost and the wire), and as
often with the project's client (``getEndpoints()``, what the bridge calls), alternating.
"""

from __future__ import annotations

from typing import Any

from bridge.bench.context import Env
from bridge.bench.harness import BenchError, EmulatorProcess, run_child
from bridge.bench.stats import median


def measure(env: Env) -> dict[str, Any]:
    cfg = env.config
    size, page = cfg.listing_devices, cfg.listing_page
    env.say(f"listing: starting an emulator (current dialect) with {size:,} devices")
    emulator = EmulatorProcess(size, api="current").start(timeout=600)
    try:
        env.say(f"listing: GET /v3/devices in pages of {page:,}, {cfg.runs} run(s)")
        args = {"url": emulator.url, "token": emulator.token, "page": page, "runs": cfg.runs}
        got = run_child("listing", args, timeout=120 + 120 * cfg.runs)
    finally:
        emulator.stop()
    if got.get("devices") != size or got.get("client_devices") != size:
        raise BenchError(
            f"the listing gave {got.get('devices')} devices (the client "
            f"{got.get('client_devices')}), not {size}"
        )
    out = {
        "devices": size,
        "page": page,
        "pages": got["pages"],
        "plain_s": median(got["plain_s"]),
        "client_s": median(got["client_s"]),
        "runs": {"plain_s": got["plain_s"], "client_s": got["client_s"]},
    }
    env.say(f"  {out['plain_s']:.2f} s (requests), {out['client_s']:.2f} s (getEndpoints)")
    return out
