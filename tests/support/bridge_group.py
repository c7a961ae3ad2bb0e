"""Several bridges for one account in tests: ``connector-bridge run`` processes of one
group on a real etcd, against one emulator and one Mosquitto, each stopped by its pid.

    group = BridgeGroup(emu, broker, etcd, ttl=2)
    a, b = group.start("r1"), group.start("r2")
    group.wait(lambda: group.leader() is not None, 20)
    a.kill()   # SIGKILL; pause()/resume() for SIGSTOP/SIGCONT; terminate() for SIGTERM

Each process logs to its own file (``tail()``); ``group.close()`` ends every one still
running. The group's view comes from etcd (:func:`bridge.cluster.read_view`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bridge.cluster import ClusterView, EtcdClient, read_view
from bridge.simulator import Emulator
from tests.support.broker import MosquittoBroker, env_with_pythonpath
from tests.support.etcd import EtcdCluster, fresh_group

_ids = itertools.count(1)


class BridgeProcess:
    def __init__(self, member: str, env: dict[str, str], log: Path) -> None:
        self.member = member
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BridgeProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run", "--env-file", ""],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running:
            os.kill(self.pid, signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait(10)

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGCONT, SIGTERM, and SIGKILL if it has not ended within ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:]

    def command_counters(self) -> dict[str, int]:
        """The counters of its command slots, as it logged them when it stopped cleanly
        (bridge.cluster.commands.CommandSlots.stop); {} if it did not."""
        found: dict[str, int] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            _, sep, doc = line.partition(f"cluster commands of {self.member}: ")
            if sep:
                found = json.loads(doc)
        return found


class BridgeGroup:
    """Bridge processes of one fresh group (see the module doc)."""

    def __init__(
        self,
        emu: Emulator,
        broker: MosquittoBroker,
        etcd: EtcdCluster,
        *,
        ttl: int = 2,
        slots: int = 4,
        **settings: str,
    ) -> None:
        self.emu, self.broker, self.etcd = emu, broker, etcd
        self.group = fresh_group()
        self.ttl = ttl
        self.dir = Path(tempfile.mkdtemp(prefix="bridge-group-"))
        self.client_id = f"grp-{os.getpid()}-{next(_ids)}"
        env = {k: v for k, v in env_with_pythonpath().items() if not k.startswith("BRIDGE_")}
        env.update(
            BRIDGE_CONNECTOR_URL=emu.url,
            BRIDGE_CONNECTOR_TOKEN=emu.token,
            BRIDGE_MQTT_HOST="127.0.0.1",
            BRIDGE_MQTT_PORT=str(broker.port),
            BRIDGE_MQTT_CLIENT_ID=self.client_id,
            BRIDGE_CLUSTER_ETCD=",".join(etcd.endpoints),
            BRIDGE_CLUSTER_GROUP=self.group,
            BRIDGE_CLUSTER_TTL=str(ttl),
            BRIDGE_CLUSTER_SLOTS=str(slots),
            BRIDGE_HEALTH_INTERVAL="1",
            BRIDGE_CPU_PIN="off",
            BRIDGE_LOG_LEVEL="INFO",
        )
        env.update(settings)
        self.env = env
        self.processes: list[BridgeProcess] = []
        self._client = EtcdClient(tuple(etcd.endpoints), timeout=1.0)

    def start(self, member: str, **settings: str) -> BridgeProcess:
        env = {**self.env, "BRIDGE_CLUSTER_MEMBER": member, **settings}
        p = BridgeProcess(member, env, self.dir / f"{member}.log").start()
        self.processes.append(p)
        return p

    def view(self) -> ClusterView:
        return read_view(self._client, self.group)

    def leader(self) -> str | None:
        try:
            return self.view().leader
        except Exception:
            return None

    def process(self, member: str) -> BridgeProcess:
        return next(p for p in self.processes if p.member == member)

    @staticmethod
    def wait(predicate: Callable[[], Any], timeout: float, what: str = "condition") -> Any:
        end = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def logs(self) -> str:
        return "\n".join(f"--- {p.member}\n{p.tail()}" for p in self.processes)

    def close(self) -> None:
        for p in self.processes:
            p.terminate(timeout=10.0)
        for p in self.processes:
            assert not p.running, f"{p.member} still runs"


# ---------------------------------------------------------------- what the tests share

LIGHT = ("light-001", "/3311/0/5850")
LIGHT_TOPIC = "connector/light-001/3311/0/5850"


class Watch:
    """Every message on ``connector/#``: arrival time, topic, payload, retain flag."""

    def __init__(self, port: int, client_id: str | None = None) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[float, str, bytes, bool]] = []
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"watch-{time.time_ns()}"
        )
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.subscribe("connector/#", 1)
        self.c.loop_start()

    def _on(self, c: object, u: object, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.seen.append((time.monotonic(), m.topic, bytes(m.payload), bool(m.retain)))

    def on(self, topic: str, since: float = 0.0) -> list[bytes]:
        with self.lock:
            return [p for t0, t, p, _ in self.seen if t == topic and t0 >= since]

    def health(self, member: str, since: float = 0.0) -> list[dict[str, Any]]:
        return [
            json.loads(p) for p in self.on(f"connector/$bridge/replicas/{member}/health", since)
        ]

    def arrivals(self, topic: str) -> dict[bytes, float]:
        """First arrival of each payload on ``topic``."""
        out: dict[bytes, float] = {}
        with self.lock:
            for t, top, p, _ in self.seen:
                if top == topic:
                    out.setdefault(p, t)
        return out

    def retained(self) -> dict[str, bytes]:
        with self.lock:
            return {top: p for _, top, p, r in self.seen if r}

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def flows(emu: Emulator, watch: Watch, value: str, timeout: float) -> float:
    """Set the light's value and wait until it is on MQTT; seconds it took."""
    start = time.monotonic()
    emu.set_value(*LIGHT, value)
    BridgeGroup.wait(lambda: value.encode() in watch.on(LIGHT_TOPIC), timeout, f"{value} on MQTT")
    return time.monotonic() - start


@contextlib.contextmanager
def running_group(
    emu: Emulator, broker: MosquittoBroker, etcd: EtcdCluster, **kw: Any
) -> Iterator[BridgeGroup]:
    """A :class:`BridgeGroup` closed afterwards, its logs printed if the test failed."""
    g = BridgeGroup(emu, broker, etcd, **kw)
    try:
        yield g
    except BaseException:
        print(g.logs())
        raise
    finally:
        g.close()
