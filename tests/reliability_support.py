"""Helpers of the reliability and fuzz tests (tests/test_reliability_*.py, tests/test_fuzz*.py).

Everything is real: a Mosquitto of the test's own, the emulator over HTTP, the bridge
in-process or as a ``connector-bridge run`` process. What the tests count comes from the
parts themselves: the emulator's counters and its log of what devices carried out, the
subscriber's log of what arrived, the bridge's own counters.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.simulator import Emulator, Scenario
from bridge.simulator.device_requests import parse as parse_device_request
from tests.support.broker import MosquittoBroker, env_with_pythonpath

TOKEN = "reliability-token"
STREAM_EP, STREAM_PATH = "stream-1", "/1/0/1"
STREAM_TOPIC = "connector/stream-1/1/0/1"
ACT_EP, SETPOINT, RUN = "act-1", "/2/0/1", "/2/0/2"
SETPOINT_TOPIC = "connector/act-1/2/0/1"
RUN_TOPIC = "connector/act-1/2/0/2"
VALUE_WIDTH = 9  # burst values are zero-padded counters: they sort as they were emitted

SCENARIO = {
    "templates": {
        "Stream": {
            "type": "Stream",
            "resources": [{"path": STREAM_PATH, "rt": "counter", "obs": True, "kind": "string"}],
        },
        "Actuator": {
            "type": "Actuator",
            "resources": [
                {"path": SETPOINT, "rt": "setpoint", "writable": True, "kind": "string"},
                {"path": RUN, "rt": "run", "executable": True},
            ],
        },
    },
    "devices": [
        {"name": STREAM_EP, "template": "Stream"},
        {"name": ACT_EP, "template": "Actuator"},
    ],
}


def stream_emulator(**kw: Any) -> Emulator:
    """An emulator with one streaming sensor and one actuator, no drifting values (every
    notification is one the test emitted)."""
    kw.setdefault("pull_timeout", 1.0)
    return Emulator(token=TOKEN, scenario=Scenario.from_dict(SCENARIO), drift=False, seed=1, **kw)


def report(
    capsys: pytest.CaptureFixture[str], name: str, *, tag: str = "reliability", **figures: Any
) -> str:
    """One line of figures, printed for the closing note (shown without ``-s`` too)."""
    parts = [f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()]
    line = f"[{tag}] {name}: " + " ".join(parts)
    with capsys.disabled():
        print("\n" + line)
    return line


# ---------------------------------------------------------------------------- emulator side


class Executions:
    """What the emulated devices carried out (``done``) and what the Connector took on
    for them (``accepted``, answered 202 or 204; on today's service every device request
    answered 202, also one the service answers from its cache): (endpoint, path, verb,
    body), in order."""

    def __init__(self, emu: Emulator) -> None:
        self.done: list[tuple[str, str, str, bytes]] = []
        self.accepted: list[tuple[str, str, str, bytes]] = []
        self._lock = threading.Lock()
        core = emu.core
        execute_original, submit_original = core._execute, core._submit
        device_request_original = core.device_request

        def execute(job: Any) -> None:
            with self._lock:
                self.done.append((job.device.name, job.path, job.verb, bytes(job.body)))
            execute_original(job)

        def submit(job: Any, no_resp: bool) -> Any:
            reply = submit_original(job, no_resp)
            if reply.status in (202, 204):
                with self._lock:
                    self.accepted.append((job.device.name, job.path, job.verb, bytes(job.body)))
            return reply

        def device_request(ep: str, query: Any, body: bytes) -> Any:
            # today's service: POST /v2/device-requests/{id}, taken on when answered 202
            reply = device_request_original(ep, query, body)
            if reply.status == 202:
                req = parse_device_request(query, body)
                verb = "DELETE-EP" if (req.verb, req.uri) == ("DELETE", "/") else req.verb
                with self._lock:
                    self.accepted.append((core.by_ep[ep].name, req.uri, verb, req.body))
            return reply

        core._execute = execute  # type: ignore[method-assign]
        core._submit = submit  # type: ignore[method-assign]
        core.device_request = device_request  # type: ignore[method-assign]

    def accepted_bodies(self) -> set[bytes]:
        with self._lock:
            return {b for _, _, _, b in self.accepted}

    def bodies(self, ep: str, path: str, verb: str) -> Counter[bytes]:
        with self._lock:
            return Counter(b for e, p, v, b in self.done if (e, p, v) == (ep, path, verb))


def emitted_range(emu: Emulator) -> int:
    """The first value the next burst will carry (bursts count emitted notifications)."""
    return emu.counters()["emitted_notifications"]


def value(i: int) -> bytes:
    return f"{i:0{VALUE_WIDTH}d}".encode()


class PacedStream:
    """Emits ``total`` notifications of the stream sensor in chunks, on its own thread."""

    def __init__(self, emu: Emulator, total: int, chunk: int, interval: float) -> None:
        self.emu, self.total, self.chunk, self.interval = emu, total, chunk, interval
        self.first = emitted_range(emu)
        self.emitted = 0
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-stream", daemon=True)

    def start(self) -> PacedStream:
        self._thread.start()
        return self

    def _run(self) -> None:
        while self.emitted < self.total:
            n = min(self.chunk, self.total - self.emitted)
            self.emitted += self.emu.burst(n, ep=STREAM_EP, path=STREAM_PATH, size=VALUE_WIDTH)
            time.sleep(self.interval)
        self.done.set()

    @property
    def values(self) -> set[bytes]:
        return {value(self.first + k) for k in range(self.total)}


# ---------------------------------------------------------------------------- MQTT side


@dataclass
class Arrival:
    payload: bytes
    at: float
    dup: bool


@dataclass
class Subscriber:
    """A persistent subscriber (Clean Start off / Clean Session off): it keeps its session
    over broker restarts and subscribes again only when the broker lost it."""

    port: int
    filters: tuple[str, ...]
    protocol: str = "5"
    client_id: str = field(default_factory=lambda: f"rel-sub-{uuid.uuid4().hex[:10]}")
    arrivals: dict[str, list[Arrival]] = field(default_factory=dict)
    sessions: list[bool] = field(default_factory=list)  # session_present per connect
    connected_at: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        v5 = self.protocol == "5"
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
        )
        c.reconnect_delay_set(1, 2)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: self._subscribed.set()
        self.client = c
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 600
            c.connect("127.0.0.1", self.port, keepalive=30, clean_start=False, properties=props)
        else:
            c.connect("127.0.0.1", self.port, keepalive=30)
        c.loop_start()
        assert self._subscribed.wait(10), "SUBACK not received"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            return
        with self._cond:
            self.sessions.append(bool(flags.session_present))
            self.connected_at.append(time.monotonic())
            self._cond.notify_all()
        if not flags.session_present:
            client.subscribe([(f, 1) for f in self.filters])

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.arrivals.setdefault(msg.topic, []).append(
                Arrival(bytes(msg.payload), time.monotonic(), bool(msg.dup))
            )
            self._cond.notify_all()

    def payloads(self, topic: str) -> list[bytes]:
        with self._cond:
            return [a.payload for a in self.arrivals.get(topic, ())]

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"waited {timeout} s for {what}")
                self._cond.wait(min(left, 0.5))

    def wait_values(self, topic: str, wanted: set[bytes], timeout: float) -> None:
        def complete() -> bool:
            got = {a.payload for a in self.arrivals.get(topic, ())}
            return wanted <= got

        try:
            self.wait(complete, timeout, f"{len(wanted)} values on {topic}")
        except AssertionError:
            got = set(self.payloads(topic))
            raise AssertionError(
                f"{len(wanted - got)} of {len(wanted)} values never arrived on {topic}"
            ) from None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def counts(received: list[bytes], wanted: set[bytes]) -> dict[str, int]:
    """sent / received / unique / lost / duplicates of a stream of distinct values."""
    got = Counter(p for p in received if p in wanted)
    return {
        "sent": len(wanted),
        "received": sum(got.values()),
        "lost": len(wanted - set(got)),
        "duplicates": sum(n - 1 for n in got.values()),
    }


class Publisher:
    """An MQTT client sending commands and collecting their replies, keyed by Correlation
    Data (MQTT 5) or else by the envelope's transaction. Its session is persistent, so
    replies published while it was cut off (a broker restart) still reach it."""

    def __init__(self, port: int, filters: tuple[str, ...] = ("connector/#",)) -> None:
        self.replies: dict[bytes, list[tuple[str, bytes]]] = {}
        self.filters = filters
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"rel-pub-{uuid.uuid4().hex[:10]}",
            protocol=mqtt.MQTTv5,
        )
        c.reconnect_delay_set(1, 2)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: self._subscribed.set()
        c.max_inflight_messages_set(500)
        self.client = c
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 600
        c.connect("127.0.0.1", port, keepalive=30, clean_start=False, properties=props)
        c.loop_start()
        assert self._subscribed.wait(10), "SUBACK not received"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure and not flags.session_present:
            # No Local: its own commands are not replies
            client.subscribe([(f, SubscribeOptions(qos=1, noLocal=True)) for f in self.filters])

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        key = bytes(corr) if corr is not None else None
        if key is None and msg.topic.endswith("/reply"):
            with contextlib.suppress(ValueError, AttributeError):
                key = str(json.loads(msg.payload).get("transaction")).encode()
        if key is None:
            return
        with self._cond:
            self.replies.setdefault(key, []).append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def send(
        self,
        topic: str,
        payload: bytes,
        corr: bytes | None = None,
        response_topic: str | None = None,
        wait: bool = True,
    ) -> mqtt.MQTTMessageInfo:
        props = None
        if corr is not None or response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if corr is not None:
                props.CorrelationData = corr
            if response_topic is not None:
                props.ResponseTopic = response_topic
        info = self.client.publish(topic, payload, qos=1, properties=props)
        if wait:
            info.wait_for_publish(10)
        return info

    def command(self, topic: str, value: str, key: str, corr: bool = True) -> None:
        """A command in an envelope whose transaction is ``key`` (and, MQTT 5, the
        same as Correlation Data)."""
        body = json.dumps({"transaction": key, "value": value}).encode()
        self.send(topic, body, key.encode() if corr else None)

    def reply_json(self, key: bytes) -> dict[str, Any]:
        with self._cond:
            found = self.replies.get(key)
        assert found, f"no reply for {key!r}"
        doc: dict[str, Any] = json.loads(found[0][1])
        return doc

    def count(self, key: bytes) -> int:
        with self._cond:
            return len(self.replies.get(key, ()))

    def wait_replies(self, keys: set[bytes], timeout: float) -> None:
        end = time.monotonic() + timeout
        with self._cond:
            while not keys <= set(self.replies):
                left = end - time.monotonic()
                if left <= 0:
                    missing = keys - set(self.replies)
                    raise AssertionError(f"{len(missing)} of {len(keys)} replies missing")
                self._cond.wait(min(left, 0.5))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---------------------------------------------------------------------------- the bridge process


class BridgeProcess:
    """``connector-bridge run`` as a child process, its log in a file (a pipe could fill
    up and stall it)."""

    def __init__(self, emu: Emulator, broker: MosquittoBroker, log_dir: Path, **env: str) -> None:
        self.env = {k: v for k, v in env_with_pythonpath().items() if not k.startswith("BRIDGE_")}
        self.env.update(
            BRIDGE_CONNECTOR_URL=emu.url,
            BRIDGE_CONNECTOR_TOKEN=emu.token,
            BRIDGE_MQTT_HOST="127.0.0.1",
            BRIDGE_MQTT_PORT=str(broker.port),
            BRIDGE_MQTT_CLIENT_ID=f"rel-bridge-{uuid.uuid4().hex[:10]}",
            BRIDGE_COMMAND_TIMEOUT="5",
            BRIDGE_QUEUE_MODE_TIMEOUT="10",
            BRIDGE_HOMEASSISTANT="false",
        )
        self.env.update(env)
        self.log_dir = log_dir
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"bridge-{self.runs}.log"

    def start(self) -> BridgeProcess:
        self.runs += 1
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run", "--env-file", ""],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the bridge did not exit; log:\n{self.log()[-3000:]}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def bridge_process(
    emu: Emulator, broker: MosquittoBroker, log_dir: Path, **env: str
) -> Iterator[BridgeProcess]:
    b = BridgeProcess(emu, broker, log_dir, **env)
    try:
        yield b
    finally:
        b.kill()
