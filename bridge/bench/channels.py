"""Notification channels of the client compared: one burst through each, end to end.

:func:`burst_rate` measures one client whose channel already runs: the emulator emits
``n`` notifications as fast as it can (``Emulator.burst``), and the clock runs from just
before the burst is asked for to the moment the handler has seen the ``n``-th
notification (the handler runs on the channel's thread, so this includes parsing and
dispatch). :func:`compare` does it for the long poll (the legacy emulator and
``startLongPolling``) and for the WebSocket channel (the current emulator and
``startWebsocket``), alternating, in one process, and reports medians::

    python -m bridge.bench.channels 100000 --runs 5 [--chunk 100]

The emulator and the client share this process (and its GIL), so the figures are lower
than with the service elsewhere; the ratio between the channels, taken in the same run,
is the figure to read. ``connector-bridge bench --only channels`` runs :func:`compare` in
a child process of its own (:func:`measure`), with ``--channel-burst`` and ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bridge.bench.stats import median
from bridge.connector import connector
from bridge.simulator import Emulator

if TYPE_CHECKING:
    from bridge.bench.context import Env

CHANNELS = ("long_poll", "websocket", "websocket_no_uid")


class _Counter:
    """Counts notification entries; ``reached`` is set at the ``n``-th."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.at: float | None = None
        self.reached = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, message: dict[str, Any]) -> None:
        entries = message.get("notifications")
        added = len(entries) if isinstance(entries, list) else 0
        with self._lock:
            self.count += added
            if self.at is None and self.count >= self.n:
                self.at = time.perf_counter()
                self.reached.set()


def burst_rate(
    client: connector, emulator: Emulator, n: int, timeout: float = 120.0
) -> dict[str, Any]:
    """Notifications per second through ``client``'s running channel for a burst of ``n``
    from ``emulator`` (its ``notifications`` handler is replaced for the measurement).

    Returns ``n``, ``received`` (notification entries seen before the time-out),
    ``seconds`` (burst asked for to the ``n``-th handled; None if it never came) and
    ``rate`` (per second; None likewise)."""
    if n < 1:
        raise ValueError("n must be at least 1")
    counter = _Counter(n)
    client.setHandler("notifications", counter)
    try:
        start = time.perf_counter()
        emulator.burst(n)
        counter.reached.wait(timeout)
    finally:
        client.setHandler("notifications", None)
    seconds = None if counter.at is None else counter.at - start
    return {
        "n": n,
        "received": counter.count,
        "seconds": seconds,
        "rate": None if not seconds else n / seconds,
    }


def _long_poll(n: int, chunk: int | None = None) -> dict[str, Any]:
    batch = 10_000 if chunk is None else chunk
    with Emulator(drift=False, pull_timeout=5.0, batch_size=batch) as emu:
        c = connector(emu.token, emu.url, timeout=10.0)
        try:
            c.startLongPolling()
            if not emu.wait_channel(10.0):
                raise RuntimeError("the long poll never reached the emulator")
            return burst_rate(c, emu, n)
        finally:
            c.close()


def _websocket(n: int, chunk: int | None = None, include_uid: bool = True) -> dict[str, Any]:
    with Emulator(drift=False, api="current") as emu:
        c = connector(emu.token, emu.url, api="current", timeout=10.0)
        try:
            state = c.startWebsocket(include_uid=include_uid, max_chunk_size=chunk)
            if state != "connected":
                raise RuntimeError(f"the WebSocket channel did not connect: {state}")
            return burst_rate(c, emu, n)
        finally:
            c.close()


def _websocket_no_uid(n: int, chunk: int | None = None) -> dict[str, Any]:
    return _websocket(n, chunk, include_uid=False)


RUNNERS: dict[str, Callable[[int, int | None], dict[str, Any]]] = {
    "long_poll": _long_poll,
    "websocket": _websocket,
    "websocket_no_uid": _websocket_no_uid,
}


def compare(n: int = 20_000, runs: int = 3, chunk: int | None = None) -> dict[str, Any]:
    """Every channel of :data:`CHANNELS`, ``runs`` times each, alternating; medians of
    the rates and of each one's ratio to the long poll within a run.

    ``websocket`` asks for ``uid`` (the default), which the client's duplicate drop then
    checks entry by entry; ``websocket_no_uid`` does not (the legacy long poll has no
    uid either). ``chunk``: entries per message on both channels (the WebSocket's
    ``max_chunk_size``, the legacy emulator's ``batch_size``; None: 10,000 on both)."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in CHANNELS}
    ratios: dict[str, list[float]] = {name: [] for name in CHANNELS[1:]}
    for _ in range(runs):
        run = {name: RUNNERS[name](n, chunk) for name in CHANNELS}
        for name in CHANNELS:
            results[name].append(run[name])
        lp = run["long_poll"]["rate"]
        for name in CHANNELS[1:]:
            rate = run[name]["rate"]
            if lp and rate:
                ratios[name].append(rate / lp)
    summary: dict[str, Any] = {"n": n, "runs": runs, "chunk": chunk, "results": results}
    for name in CHANNELS:
        rates = [r["rate"] for r in results[name] if r["rate"]]
        summary[f"{name}_rate"] = median(rates) if rates else None
    for name in CHANNELS[1:]:
        summary[f"{name}_ratio"] = median(ratios[name]) if ratios[name] else None
    return summary


def measure(env: Env) -> dict[str, Any]:
    """The bench part ``channels``: :func:`compare` in a child process (an interpreter of
    its own, nothing else of the bench in it), ``channel_burst`` notifications a burst."""
    from bridge.bench.harness import BenchError, python_env

    cfg = env.config
    env.say(
        f"channels: bursts of {cfg.channel_burst:,} through the long poll and the WebSocket "
        f"channel, {cfg.runs} run(s)"
    )
    cmd = [sys.executable, "-m", "bridge.bench.channels", str(cfg.channel_burst)]
    cmd += ["--runs", str(cfg.runs), "--json"]
    try:
        done = subprocess.run(
            cmd, env=python_env(), capture_output=True, text=True, timeout=300 + 60 * cfg.runs
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError("the channel comparison did not finish") from exc
    if done.returncode != 0:
        raise BenchError(f"the channel comparison failed: {done.stderr[-1500:]}")
    summary: dict[str, Any] = json.loads(done.stdout)
    for name in CHANNELS:
        if summary.get(f"{name}_rate") is None:
            raise BenchError(f"the channel comparison got no rate for {name}")
    env.say(
        "  long poll {long_poll_rate:,.0f}/s, WebSocket {websocket_rate:,.0f}/s "
        "(x{websocket_ratio:.2f}), without uid {websocket_no_uid_rate:,.0f}/s".format(**summary)
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bridge.bench.channels",
        description="Notifications per second through the long poll and the WebSocket "
        "channel, a burst of N from the emulator, end to end.",
    )
    parser.add_argument("n", nargs="?", type=int, default=20_000, help="burst size")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--chunk", type=int, default=None, help="entries per message (100-10000; default 10000)"
    )
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = parser.parse_args(argv)
    summary = compare(args.n, args.runs, args.chunk)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    chunk = summary["chunk"] or 10_000
    print(f"burst of {summary['n']}, {chunk} entries a message, notifications per second")
    for name in CHANNELS:
        runs = summary["results"][name]
        rates = ", ".join(f"{r['rate']:.0f}" if r["rate"] else "-" for r in runs)
        best = summary[f"{name}_rate"]
        ratio = summary.get(f"{name}_ratio")
        vs = f"  x{ratio:.2f} of the long poll" if ratio else ""
        print(f"{name:16s} median {best or 0:9.0f}/s  (runs: {rates}){vs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
