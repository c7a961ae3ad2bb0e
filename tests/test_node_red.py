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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import MosquittoBroker
from tests.support.mqtt_user import MqttUser, Received
from tests.support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.both_dialects]

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


@pytest.fixture
def monitor(broker: MosquittoBroker) -> Iterator[MqttUser]:
    """An MQTT 5 client watching the demo's and the flow's topics."""
    user = MqttUser(broker.port, client_id="node-red-test-monitor")
    user.subscribe("node-red-demo/#", "connector/+/3303/0/5700", LIGHT_VALUE)
    yield user
    user.close()


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
    monitor: MqttUser, demo: Any, node_red: NodeRed
) -> None:
    # The flow's table holds node-001's temperature, a value the bridge published.
    def table_has_bridge_value(m: Received) -> bool:
        if m.topic != "node-red-demo/temperatures":
            return False
        value = json.loads(m.payload).get("node-001")
        return value is not None and any(float(t.payload) == value for t in monitor.on(TEMPERATURE))

    table = monitor.wait_for(table_has_bridge_value, WAIT)[0].payload  # node-001 in the table
    assert isinstance(json.loads(table)["node-001"], (int, float))

    for inject, value in ((INJECT_ON, b"1"), (INJECT_OFF, b"0")):
        since = monitor.mark()
        node_red.inject(inject)
        # the bridge's reply on the flow's response topic, carrying Correlation Data
        [reply] = monitor.wait_for(
            lambda m: m.topic == "node-red-demo/light-001/reply", WAIT, since=since
        )
        correlation = reply.correlation_data
        assert correlation, "the bridge's reply lost the Correlation Data"
        assert json.loads(reply.payload)["ok"] is True, reply
        # the flow matched that reply to the command it sent
        [result] = monitor.wait_for(
            lambda m, c=correlation: (
                m.topic == "node-red-demo/light-001/result"
                and json.loads(m.payload)["correlation"] == c.decode()
            ),
            WAIT,
            since=since,
        )
        outcome = json.loads(result.payload)
        assert outcome["matched"] is True, outcome
        assert outcome["request"]["value"] == value.decode()
        # and the light really is in that state: on the broker and in the device
        monitor.wait_topic(LIGHT_VALUE, WAIT, payload=value, since=since)
        assert demo.get_value("light-001", "/3311/0/5850") == value
