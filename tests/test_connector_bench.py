"""A quick benchmark of the client against the emulator: figures printed, not asserted.

Run alone with ``-s`` to see them:
``.venv/bin/python -m pytest tests/test_connector_bench.py -q -s``.
``CONNECTOR_BENCH_N`` sets the number of async reads (default 400, quick mode).
"""

from __future__ import annotations

import os
import statistics
import threading
import time

from bridge.connector import asyncResult
from bridge.simulator import Emulator
from tests.support.clients import client_for

N = int(os.environ.get("CONNECTOR_BENCH_N", "400"))
THREADS = 4


def test_bench_async_reads(emulator: Emulator, fast_http: bool) -> None:
    latencies: list[float] = []
    results: list[asyncResult] = []
    lock = threading.Lock()
    devices = ["node-001", "node-002", "multi-001", "light-001"]
    paths = ["/3303/0/5700", "/3303/0/5700", "/3303/0/5700", "/3311/0/5850"]

    with client_for(emulator, fastHttp=fast_http) as c:

        def worker(k: int) -> None:
            for i in range(k, N, THREADS):
                t0 = time.perf_counter()
                r = c.getResourceValue(devices[i % 4], paths[i % 4])
                r.wait(10.0)
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    results.append(r)

        start = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        stats = c.longPollStats()

    assert len(results) == N and all(r.isDone() for r in results)
    ok = sum(1 for r in results if r.error is False)
    assert ok > N // 2
    lat = sorted(latencies)
    print(
        f"\nconnector bench: {N} async reads from {THREADS} threads in {elapsed:.2f} s "
        f"= {N / elapsed:.0f}/s; ok {ok}; latency p50 {statistics.median(lat) * 1000:.1f} ms, "
        f"p95 {lat[int(len(lat) * 0.95) - 1] * 1000:.1f} ms; "
        f"{stats['pulls']} pulls carried {stats['messages']} messages"
    )
