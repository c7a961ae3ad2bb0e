"""A cluster replica in a process of its own, for tests that SIGKILL or SIGSTOP it.

Run as ``python -m tests.support.cluster_replica --endpoints ... --group ... --id ...``:
it starts a :class:`bridge.cluster.replica.Replica` and writes one JSON object per line
to ``--log``: every callback (``leadership``, ``slot``) as it happens, and every *check*
the main thread makes, every ``--tick`` seconds, of what it may act on now
(``leading``, ``slots``), with ``gap``, the seconds since its previous check (a paused
process shows a gap longer than the pause). Times are :func:`time.monotonic`, which is
one clock for every process of the machine, so the test compares them with its own.

:class:`ReplicaProcess` is the test's side: start, SIGKILL, SIGSTOP, SIGCONT, SIGTERM,
each by pid, and the lines the process wrote.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.etcd import die_with_parent, wait_state

_LIVE: set[subprocess.Popen[bytes]] = set()


def main(argv: list[str] | None = None) -> int:
    from bridge.cluster.etcd import EtcdClient
    from bridge.cluster.lease import LeaseTiming
    from bridge.cluster.replica import Replica
    from bridge.cluster.slots import slot_names

    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--slots", type=int, default=0)
    parser.add_argument("--log", required=True)
    parser.add_argument("--tick", type=float, default=0.02)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(relativeCreated)6d %(message)s"
    )
    out = open(args.log, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    lock = threading.Lock()

    def write(event: str, **fields: Any) -> None:
        line = json.dumps({"ev": event, "t": time.monotonic(), **fields})
        with lock:
            out.write(line + "\n")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    timing = LeaseTiming.for_ttl(args.ttl)
    client = EtcdClient(args.endpoints.split(","), timeout=timing.request_timeout)
    replica = Replica(
        client,
        args.group,
        ttl=args.ttl,
        member_id=args.id,
        slots=slot_names(args.slots),
        on_leadership=lambda leading: write("leadership", leading=leading),
        on_slot=lambda slot, owned: write("slot", slot=slot, owned=owned),
    )
    write("started", pid=os.getpid())
    replica.start()
    last = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        # What the bridge would act on: both reads check the lease against the clock.
        leading = replica.leading
        slots = sorted(replica.owned_slots())
        write("check", leading=leading, slots=slots, gap=round(now - last, 4))
        last = now
        stop.wait(args.tick)
    replica.stop()
    write("stopped", counters=dataclasses.asdict(replica.counters))
    return 0


class ReplicaProcess:
    """One replica process, started and signalled by pid."""

    def __init__(
        self,
        log_dir: Path,
        endpoints: list[str],
        group: str,
        member_id: str,
        *,
        ttl: int = 2,
        slots: int = 0,
    ) -> None:
        self.member_id = member_id
        self.log_path = log_dir / f"{member_id}.jsonl"
        self.err_path = log_dir / f"{member_id}.err"
        self.cmd = [
            sys.executable, "-m", "tests.support.cluster_replica",
            "--endpoints", ",".join(endpoints), "--group", group, "--id", member_id,
            "--ttl", str(ttl), "--slots", str(slots), "--log", str(self.log_path),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ReplicaProcess:
        from tests.support.broker import env_with_pythonpath

        with self.err_path.open("ab") as err:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env_with_pythonpath(),
                preexec_fn=die_with_parent,  # no replica outlives a killed test run
            )
        _LIVE.add(self.proc)
        return self

    def pause(self) -> None:
        """SIGSTOP by pid; returns once the kernel shows the process stopped."""
        os.kill(self.pid, signal.SIGSTOP)
        wait_state(self.pid, stopped=True)

    def resume(self) -> None:
        """SIGCONT by pid."""
        os.kill(self.pid, signal.SIGCONT)
        wait_state(self.pid, stopped=False)

    def kill(self) -> None:
        """SIGKILL by pid, and reap it."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        _LIVE.discard(self.proc)

    def terminate(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean leave), SIGKILL if it does not end in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGCONT)
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        _LIVE.discard(self.proc)

    def lines(self) -> list[dict[str, Any]]:
        try:
            text = self.log_path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):  # a line being written
                out.append(json.loads(line))
        return out

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.lines() if e["ev"] == kind]

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""


@atexit.register
def _kill_leftovers() -> None:
    """No replica process outlives the test run, even one a failing test left behind."""
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
