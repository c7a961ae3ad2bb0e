"""A real three-member etcd cluster owned by the tests, on free loopback ports.

Each member has its own data directory, client port and peer port. Tests kill
(SIGKILL), pause (SIGSTOP), resume (SIGCONT), stop and restart single members by pid,
as a machine or a process of a production cluster would fail. The binary comes from
``scripts/etcd_binary.py`` (on PATH, ``$ETCD_BINARY``, or Debian's package unpacked into
the user's cache without installing it: no system service is ever started).

Data directories live on ``/dev/shm`` where it exists: etcd fsyncs every write, and on
a busy two-core disk that alone can take longer than a heartbeat.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from scripts import etcd_binary
from tests.support.ports import free_port

_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    """No etcd outlives the test run, even one a failing test left behind."""
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()


def die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EtcdUnavailable(RuntimeError):
    """No etcd binary here and none could be fetched (the message says why)."""


def etcd_binary_path() -> Path:
    """The etcd binary, fetched into the cache if need be; EtcdUnavailable if impossible."""
    found = etcd_binary.find()
    if found is not None:
        return found
    try:
        return etcd_binary.fetch()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        raise EtcdUnavailable(f"etcd is not available: {exc}") from None


def _post(url: str, body: dict[str, Any], timeout: float = 1.0) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def process_state(pid: int) -> str:
    """The state of a process from /proc: ``R (running)``, ``T (stopped)``, ... or ``""``."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def wait_state(pid: int, *, stopped: bool, timeout: float = 5.0) -> None:
    """Until the kernel shows ``pid`` stopped (or running again): signals arrive later."""
    deadline = time.monotonic() + timeout
    while process_state(pid).startswith(("T", "t")) != stopped:
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} not {'stopped' if stopped else 'running'}")
        time.sleep(0.002)


class MemberExited(RuntimeError):
    """A member that should be running has exited (a port taken, a bad data dir)."""


class EtcdMember:
    """One etcd process of the cluster; its ports and data directory outlive a restart."""

    def __init__(self, name: str, binary: Path, base_dir: Path) -> None:
        self.name = name
        self.binary = binary
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = base_dir / f"{name}.etcd"
        self.log_path = base_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.args: list[str] = []

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), *self.args],
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self.paused = False
        _LIVE.add(self.proc)

    def _end(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if self.paused and sig != signal.SIGKILL:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _LIVE.discard(self.proc)
        self.proc = None
        self.paused = False

    def kill(self) -> None:
        """SIGKILL by pid: the member dies at once, as with a lost machine."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: a clean stop."""
        self._end(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP: the member stays in the cluster's list but answers nothing. Returns
        once the kernel shows the process stopped (signals arrive asynchronously)."""
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True
        wait_state(self.pid, stopped=True)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.paused = False
        wait_state(self.pid, stopped=False)

    def healthy(self, timeout: float = 1.0) -> bool:
        """The member answers /health with true (it has a leader and a quorum)."""
        if not self.running or self.paused:
            return False
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=timeout) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def status(self, timeout: float = 1.0) -> dict[str, Any]:
        """``/v3/maintenance/status``: this member's id, the leader's id, the raft term."""
        return _post(self.client_url + "/v3/maintenance/status", {}, timeout)

    def log_tail(self, size: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""


class EtcdCluster:
    """``size`` etcd members on 127.0.0.1, started together, each its own process.

    ``heartbeat_ms`` and ``election_ms`` are etcd's raft timings; the defaults are etcd's
    own (100 ms, 1 s), under which its shortest lease is 2 s.
    """

    def __init__(self, size: int = 3, heartbeat_ms: int = 100, election_ms: int = 1000) -> None:
        self.binary = etcd_binary_path()
        shm = Path("/dev/shm")
        parent = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
        self.dir = Path(tempfile.mkdtemp(prefix="etcd-cluster-", dir=parent))
        self.size = size
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.members: list[EtcdMember] = []

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def _configure(self) -> None:
        token = f"test-{uuid.uuid4().hex[:12]}"
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.args = [
                "--name", m.name,
                "--data-dir", str(m.data_dir),
                "--listen-client-urls", m.client_url,
                "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url,
                "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", token,
                "--heartbeat-interval", str(self.heartbeat_ms),
                "--election-timeout", str(self.election_ms),
                "--logger", "zap",
                "--log-outputs", "stderr",
                "--log-level", "warn",
            ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        """Start every member; return once all are healthy. Fresh ports on a collision."""
        last_error = ""
        for attempt in range(3):
            for m in self.members:
                m.kill()
            shutil.rmtree(self.dir / f"try{attempt}", ignore_errors=True)
            base = self.dir / f"try{attempt}"
            base.mkdir()
            self.members = [EtcdMember(f"m{i}", self.binary, base) for i in range(self.size)]
            self._configure()
            for m in self.members:
                m.start()
            try:
                self.wait_healthy(timeout)
                return self
            except MemberExited as exc:
                last_error = str(exc)  # most likely a port taken meanwhile: new ports
            except TimeoutError as exc:
                last_error = str(exc)
                break
        self.close()
        raise RuntimeError(f"etcd cluster did not start: {last_error}")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running, unpaused member is healthy, and at least a quorum is."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None:
                    raise MemberExited(f"{m.name} exited ({m.proc.returncode}): {m.log_tail(600)}")
            live = [m for m in self.members if m.running and not m.paused]
            if len(live) > self.size // 2 and all(m.healthy() for m in live):
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {m.name}:\n{m.log_tail(800)}" for m in self.members)
                raise TimeoutError(f"etcd members not healthy after {timeout}s\n{tails}")
            time.sleep(0.05)

    def leader(self) -> EtcdMember:
        """The member that is raft leader now (asked of any member that answers)."""
        for m in self.members:
            if not m.running or m.paused:
                continue
            try:
                status = m.status()
            except (OSError, ValueError):
                continue
            leader_id = status.get("leader")
            for other in self.members:
                if other.running and not other.paused:
                    try:
                        if other.status()["header"]["member_id"] == leader_id:
                            return other
                    except (OSError, ValueError, KeyError):
                        continue
        raise RuntimeError("no etcd member knows a leader")

    def revive(self, timeout: float = 30.0) -> None:
        """Every member running and unpaused again (after a test killed or paused some)."""
        for m in self.members:
            if m.paused and m.running:
                m.resume()
            if not m.running:
                m.start()
        self.wait_healthy(timeout)

    def close(self) -> None:
        for m in self.members:
            m.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start() if not self.members else self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def describe(cluster: EtcdCluster) -> str:
    """One line per member: name, pid, ports, state (for failure messages)."""
    rows = []
    for m in cluster.members:
        state = "paused" if m.paused else ("running" if m.running else "down")
        pid = m.proc.pid if m.proc else "-"
        rows.append(f"{m.name} pid={pid} client={m.client_port} peer={m.peer_port} {state}")
    return "\n".join(rows)


def etcd_fixtures(**cluster_args: Any) -> tuple[Any, Any]:
    """Two fixtures for a test module: ``etcd_cluster`` (module scope: one cluster for the
    module's tests, about a second to start) and ``etcd`` (each test: the same cluster
    with every member running again, after a test killed or paused some).

    Without etcd (no binary, none fetchable) the tests skip, naming the reason; in CI
    (``CI`` set) they fail instead: CI must have etcd.
    """

    @pytest.fixture(scope="module")
    def etcd_cluster() -> Iterator[EtcdCluster]:
        try:
            cluster = EtcdCluster(**cluster_args)
        except EtcdUnavailable as exc:
            if os.environ.get("CI"):
                pytest.fail(f"{exc} (CI must have etcd: ./dev setup fetches it)")
            pytest.skip(str(exc))
        with cluster.start():
            yield cluster

    @pytest.fixture
    def etcd(etcd_cluster: EtcdCluster) -> EtcdCluster:
        etcd_cluster.revive()
        return etcd_cluster

    return etcd_cluster, etcd


def fresh_group() -> str:
    """A group name no other test uses (tests share a cluster, never a group)."""
    return f"t-{uuid.uuid4().hex[:10]}"


def wait_for(what: str, predicate: Callable[[], Any], timeout: float) -> Any:
    """The first true value of ``predicate`` within ``timeout`` seconds, else AssertionError
    naming ``what`` (checked every 20 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)
