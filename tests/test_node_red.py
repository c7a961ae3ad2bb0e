"""Node-RED runs the example flow (deploy/node-red) against the demo, end to end.

The flow must show the temperature of the demo's devices and switch light-001 with an
MQTT 5 Response Topic. This test starts Mosquitto, the emulator and the real bridge,
starts Node-RED headless with ``deploy/node-red/flow.json``, presses the flow's inject
buttons through Node-RED's admin API, and checks through the broker that

- the flow's temperature table holds values the bridge published for node-001;
- the light really switched (the bridge's value topic and the emulator's device);
- the bridge's reply reached the flow's response topic with the flow's Correlation
  Data, and the flow matched it to its command.

Needs Node-RED (npm package ``node-red`` 4.x, Node.js 18.5+), found through the
environment variable ``NODE_RED`` (path to ``red.js`` or to a ``node-red`` script), else
``deploy/node-red/node_modules`` (``npm ci --prefix deploy/node-red``), else ``node-red``
on PATH. Without it the test is skipped and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.support.broker import MosquittoBroker
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

FLOW_DIR = Path(__file__).resolve().parents[1] / "deploy" / "node-red"
INJECT_ON = "cb0demo0injon001"
INJECT_OFF = "cb0demo0injoff01"
LIGHT_VALUE = "connector/light-001/3311/0/5850"
TEMPERATURE = "connector/node-001/3303/0/5700"
WAIT = 30.0  # generous: Node-RED and the bridge share two cores with the other tests


def node_red_command() -> list[str] | None:
    """How to start Node-RED here, or None when it is not installed."""
    configured = os.environ.get("NODE_RED")
    candidates = [Path(configured)] if configured else []
    candidates.append(FLOW_DIR / "node_modules" / "node-red" / "red.js")
    on_path = shutil.which("node-red")
    if on_path:
        candidates.append(Path(on_path))
    node = shutil.which("node")
    for candidate in candidates:
        if candidate.is_file():
            if candidate.suffix == ".js":
                return [node, str(candidate)] if node else None
            return [str(candidate)]
    return None


class NodeRed:
    """One headless Node-RED process with the example flow, its log kept in memory."""

    def __init__(self, command: list[str], user_dir: Path, broker_port: int) -> None:
        user_dir.mkdir(parents=True, exist_ok=True)
        flow = user_dir / "flow.json"
        shutil.copyfile(FLOW_DIR / "flow.json", flow)  # Node-RED may write next to it
        self.port = free_port()
        env = dict(os.environ)
        env.update(
            CONNECTOR_MQTT_HOST="127.0.0.1",
            CONNECTOR_MQTT_PORT=str(broker_port),
            NODE_RED_HOST="127.0.0.1",
            NODE_RED_PORT=str(self.port),
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        settings = str(FLOW_DIR / "settings.js")
        self.proc = subprocess.Popen(
            [
                *command,
                "--settings",
                settings,
                "--userDir",
                str(user_dir),
                "--no-telemetry",
                str(flow),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip())
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_log(self, text: str, timeout: float = WAIT) -> None:
        with self._changed:
            ok = self._changed.wait_for(
                lambda: any(text in line for line in self.lines) or self.proc.poll() is not None,
                timeout,
            )
            if not ok or not any(text in line for line in self.lines):
                raise AssertionError(f"Node-RED never logged {text!r}:\n" + self.log())

    def log(self) -> str:
        return "\n".join(self.lines[-60:])

    def inject(self, node_id: str) -> None:
        """Press an inject button of the flow (what clicking it in the editor does)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/inject/{node_id}", method="POST", data=b""
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


@dataclass
class Seen:
    """Everything the monitor client received, with a condition to wait on."""

    messages: list[tuple[str, bytes, Any]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def add(self, msg: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.messages.append((msg.topic, msg.payload, msg.properties))
            self.changed.notify_all()

    def mark(self) -> int:
        """A position in the message list: ``wait(..., since=mark)`` ignores older ones."""
        with self.changed:
            return len(self.messages)

    def wait(
        self, what: str, predicate: Callable[[str, bytes, Any], bool], since: int = 0
    ) -> tuple[str, bytes, Any]:
        """The latest message from ``since`` on that satisfies ``predicate``."""
        with self.changed:
            found: list[tuple[str, bytes, Any]] = []

            def check() -> bool:
                found[:] = [m for m in self.messages[since:] if predicate(*m)]
                return bool(found)

            if not self.changed.wait_for(check, WAIT):
                recent = "\n".join(f"{t} {p[:200]!r}" for t, p, _ in self.messages[-20:])
                raise AssertionError(f"never saw {what}; last messages:\n{recent}")
            return found[-1]

    def payloads(self, topic: str) -> list[bytes]:
        with self.changed:
            return [p for t, p, _ in self.messages if t == topic]


@pytest.fixture
def monitor(broker: MosquittoBroker) -> Iterator[Seen]:
    """An MQTT 5 client watching the demo's and the flow's topics."""
    seen = Seen()
    subscribed = threading.Event()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="node-red-test-monitor", protocol=mqtt.MQTTv5
    )
    client.on_message = lambda c, u, msg: seen.add(msg)
    client.on_subscribe = lambda c, u, mid, codes, props: subscribed.set()
    client.on_connect = lambda c, u, f, rc, props: c.subscribe(
        [("node-red-demo/#", 1), ("connector/+/3303/0/5700", 1), (LIGHT_VALUE, 1)]
    )
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert subscribed.wait(10), "monitor could not subscribe"
    yield seen
    client.loop_stop()
    client.disconnect()


@pytest.fixture
def node_red_cmd() -> list[str]:
    command = node_red_command()
    if command is None:
        pytest.skip(
            "Node-RED is not installed: `npm ci --prefix deploy/node-red` "
            "(or set NODE_RED to red.js) to run this test"
        )
    return command


@pytest.fixture
def demo(node_red_cmd: list[str], broker: MosquittoBroker, emulator: Any) -> Iterator[Any]:
    """The real bridge between the emulator (default scenario) and ``broker``.

    Yields the emulator, whose devices the test inspects.
    """
    try:
        from bridge.service.controller import Bridge
        from bridge.service.settings import load_settings
    except ImportError as exc:
        pytest.skip(f"needs the bridge service (bridge.service.controller): {exc}")
    settings = load_settings(
        env_file=None,
        overrides={
            "connector_url": emulator.url,
            "connector_token": emulator.token,
            "mqtt_host": "127.0.0.1",
            "mqtt_port": broker.port,
        },
    )
    bridge = Bridge(settings).start()
    try:
        assert bridge.wait_ready(WAIT), f"bridge not ready: {bridge.failure}"
        yield emulator
    finally:
        bridge.stop()


@pytest.fixture
def node_red(
    node_red_cmd: list[str], tmp_path: Path, broker: MosquittoBroker, demo: Any
) -> Iterator[NodeRed]:
    started = time.monotonic()
    process = NodeRed(node_red_cmd, tmp_path / "node-red", broker.port)
    try:
        process.wait_log("Connected to broker")
        print(f"Node-RED connected to the broker {time.monotonic() - started:.1f} s after start")
        yield process
    finally:
        process.stop()


def test_flow_shows_temperatures_and_switches_the_light_with_a_response_topic(
    monitor: Seen, demo: Any, node_red: NodeRed
) -> None:
    # The flow's table holds node-001's temperature, a value the bridge published.
    def table_has_bridge_value(topic: str, payload: bytes, _props: Any) -> bool:
        if topic != "node-red-demo/temperatures":
            return False
        value = json.loads(payload).get("node-001")
        return value is not None and any(float(p) == value for p in monitor.payloads(TEMPERATURE))

    _, table, _ = monitor.wait("node-001 in the flow's temperature table", table_has_bridge_value)
    assert isinstance(json.loads(table)["node-001"], (int, float))

    for inject, value in ((INJECT_ON, b"1"), (INJECT_OFF, b"0")):
        since = monitor.mark()
        node_red.inject(inject)
        # the bridge's reply on the flow's response topic, carrying Correlation Data
        _, reply, props = monitor.wait(
            f"the reply to {value!r} on the response topic",
            lambda t, p, pr: t == "node-red-demo/light-001/reply",
            since,
        )
        correlation = getattr(props, "CorrelationData", None)
        assert correlation, "the bridge's reply lost the Correlation Data"
        assert json.loads(reply)["ok"] is True, reply
        # the flow matched that reply to the command it sent
        _, result, _ = monitor.wait(
            f"the flow's result for {value!r}",
            lambda t, p, pr, c=correlation: (
                t == "node-red-demo/light-001/result" and json.loads(p)["correlation"] == c.decode()
            ),
            since,
        )
        outcome = json.loads(result)
        assert outcome["matched"] is True, outcome
        assert outcome["request"]["value"] == value.decode()
        # and the light really is in that state: on the broker and in the device
        monitor.wait(
            f"{LIGHT_VALUE} = {value!r}",
            lambda t, p, pr, v=value: t == LIGHT_VALUE and p == v,
            since,
        )
        assert demo.get_value("light-001", "/3311/0/5850") == value
