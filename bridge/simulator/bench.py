"""Measure the emulator: memory with many endpoints, notification burst rate, and (with
``--listing``) a full ``GET /v3/devices`` listing of the current dialect.

    python -m bridge.simulator.bench [--devices 100000] [--notifications 1000000]
    python -m bridge.simulator.bench --listing [--devices 100000] [--page 1000]

Starts ``connector-bridge simulate`` in a child process (so that the measuring client
does not share its interpreter), reads the child's resident memory, pre-subscribes every
endpoint, then asks for a burst over the admin API while one plain ``requests`` client
long-polls, and prints how many notifications per second arrived through that one pull
channel (JSON decoded by the client), plus the emulator's own emission rate.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import requests

from bridge.connector.messages import MessageKind


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_emulator(
    devices: int, token: str, api: str = "legacy"
) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "bridge", "simulate", "--api", api]
    cmd += ["--port", "0", "--token", token]
    cmd += ["--devices", str(devices), "--no-drift", "--pull-timeout", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain
            return proc, found.group(1)
    raise RuntimeError("the emulator did not start")


def run(devices: int, notifications: int) -> dict[str, float]:
    token = "bench"
    started = time.monotonic()
    proc, url = start_emulator(devices, token)
    try:
        startup = time.monotonic() - started
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        count = len(session.get(f"{url}/v2/endpoints", timeout=60).json())
        memory = rss_mib(proc.pid)
        rules = [{"endpoint-name": "*", "resource-path": ["/3303/0/5700", "/3311/0/5851"]}]
        session.put(f"{url}/v2/subscriptions", json=rules, timeout=60).raise_for_status()
        session.get(f"{url}/v2/notification/pull", params={"noWait": "true"}, timeout=60)

        received = 0
        done = threading.Event()
        last = [0.0]

        def pull_loop() -> None:
            nonlocal received
            puller = requests.Session()
            puller.headers["Authorization"] = f"Bearer {token}"
            while received < notifications:
                r = puller.get(f"{url}/v2/notification/pull", timeout=60)
                if r.status_code == 200:
                    received += len(json.loads(r.content).get(MessageKind.NOTIFICATIONS, ()))
                    last[0] = time.monotonic()
            done.set()

        t0 = time.monotonic()
        threading.Thread(target=pull_loop, daemon=True).start()
        r = session.post(f"{url}/admin/burst", json={"n": notifications}, timeout=600)
        r.raise_for_status()
        emitted_at = time.monotonic()
        if not done.wait(600):
            raise RuntimeError(f"only {received} of {notifications} notifications arrived")
        counters = session.get(f"{url}/admin/counters", timeout=60).json()
        return {
            "endpoints": count,
            "startup_s": startup,
            "rss_mib": memory,
            "rss_after_burst_mib": rss_mib(proc.pid),
            "emit_rate": notifications / (emitted_at - t0),
            "delivered_rate": notifications / (last[0] - t0),
            "delivered": counters["delivered"],
            "dropped": counters["dropped"],
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def listing(devices: int, page: int = 1000) -> dict[str, float]:
    """A full ``GET /v3/devices`` listing (current dialect) in pages of ``page``, following
    ``after``, by one plain ``requests`` client that decodes every page."""
    token = "bench"
    proc, url = start_emulator(devices, token, api="current")
    try:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        session.get(f"{url}/v3/devices", params={"limit": 2}, timeout=60).raise_for_status()
        seen: set[str] = set()
        pages = 0
        after: str | None = None
        t0 = time.monotonic()
        while True:
            params: dict[str, str | int] = {"limit": page}
            if after is not None:
                params["after"] = after
            body = session.get(f"{url}/v3/devices", params=params, timeout=60).json()
            pages += 1
            seen.update(d["id"] for d in body["data"])
            if not body["has_more"]:
                break
            after = body["data"][-1]["id"]
        took = time.monotonic() - t0
        return {"devices": len(seen), "pages": pages, "seconds": took}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bridge.simulator.bench")
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--notifications", type=int, default=1_000_000)
    p.add_argument("--listing", action="store_true", help="time a full /v3/devices listing")
    p.add_argument("--page", type=int, default=1000, help="devices per page (--listing)")
    args = p.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.listing:
        got = listing(args.devices, args.page)
        print(
            f"GET /v3/devices over {got['devices']:.0f} devices: {got['pages']:.0f} pages of "
            f"{args.page} in {got['seconds']:.2f} s ({got['devices'] / got['seconds']:,.0f} "
            "devices/s, decoded by the client)"
        )
        return 0
    f = run(args.devices, args.notifications)
    print(
        f"emulator with {f['endpoints']:.0f} endpoints: started in {f['startup_s']:.1f} s, "
        f"RSS {f['rss_mib']:.0f} MiB ({f['rss_after_burst_mib']:.0f} MiB after the burst)\n"
        f"burst of {args.notifications} notifications: emitted at {f['emit_rate']:,.0f}/s, "
        f"delivered through one long poll at {f['delivered_rate']:,.0f}/s "
        f"(delivered {f['delivered']:.0f}, dropped {f['dropped']:.0f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
