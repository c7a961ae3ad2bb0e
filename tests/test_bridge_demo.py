"""``connector-bridge demo`` as a new user runs it, and the project's ``mosquitto.conf``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.service.demo import PROJECT_CONF, broker_answers, instructions
from bridge.simulator import Emulator
from tests.support.bridge_harness import command, request, user
from tests.support.broker import MosquittoBroker, env_with_pythonpath, mosquitto_binary
from tests.support.ports import free_port


def test_instructions_show_the_readme_commands() -> None:
    text = instructions("localhost", 1883, "connector")
    assert "  mosquitto_sub -t 'connector/#' -v" in text.splitlines()
    assert "  mosquitto_pub -t 'connector/light-001/3311/0/5850/set' -m 1" in text.splitlines()
    other = instructions("127.0.0.1", 18830, "connector")
    assert "mosquitto_sub -h 127.0.0.1 -p 18830 -t 'connector/#' -v" in other


def test_broker_probe(broker: MosquittoBroker) -> None:
    assert broker_answers("127.0.0.1", broker.port)
    assert not broker_answers("127.0.0.1", free_port())
    with Emulator(token="t") as emu:  # an HTTP server is not an MQTT broker
        assert not broker_answers("127.0.0.1", emu.port, timeout=1.0)


def test_project_mosquitto_conf_is_loopback_only_and_valid(tmp_path: Path) -> None:
    text = PROJECT_CONF.read_text()
    assert "LOOPBACK ONLY" in text.splitlines()[0]
    listeners = [line for line in text.splitlines() if line.startswith("listener")]
    assert listeners == ["listener 1883 127.0.0.1"]
    port = free_port()  # never 1883 in tests: same file, another port
    conf = tmp_path / "m.conf"
    conf.write_text(text.replace("listener 1883 ", f"listener {port} "))
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 10
        while not broker_answers("127.0.0.1", port, timeout=0.5):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < end
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(5)


def run_demo(port: int, tmp_path: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in env_with_pythonpath().items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_MQTT_PORT"] = str(port)
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "demo"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float = 30) -> str:
    assert proc.stdout is not None
    lines: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return "".join(lines)
    proc.kill()
    raise AssertionError(f"no {marker!r} in the demo's output: {''.join(lines)}")


def stop_demo(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.mark.parametrize("with_broker", [True, False], ids=["broker-running", "starts-its-own"])
def test_demo_as_a_new_user_runs_it(tmp_path: Path, with_broker: bool) -> None:
    running = MosquittoBroker().start() if with_broker else None
    port = running.port if running else free_port()
    proc = run_demo(port, tmp_path)
    try:
        out = read_until(proc, "Ctrl-C stops the demo.")
        assert f"mosquitto_sub -h localhost -p {port} -t 'connector/#' -v" in out
        assert f"-p {port} -t 'connector/light-001/3311/0/5850/set' -m 1" in out
        expected = "already running" if with_broker else "Mosquitto started from"
        assert expected in out
        # today's dialect, found by the bridge itself, on the WebSocket channel
        assert "today's Device Management API" in out, out
        assert "found that API (current), listens on its websocket channel" in out, out
        with user(port, "5", "connector/#") as u:
            u.wait_topic("connector/node-001/$state", payload=b"online")
            info = request(u, "info")["data"]["connector"]
            assert (info["api"], info["channel"]) == ("current", "websocket"), info
            # devices by name in topics, their device IDs beside the name in $resources
            resources = u.wait_topic("connector/light-001/$resources").json()
            assert resources.get("endpoint_name") == "light-001", resources
            assert len(resources.get("device_id", "")) == 32, resources
            u.wait_for(lambda m: m.topic == "connector/node-001/3303/0/5700", count=2)
            reply = command(u, "connector/light-001/3311/0/5850/set", b"1")
            assert reply["ok"]
            u.wait_topic("connector/light-001/3311/0/5850", payload=b"1")
            assert stop_demo(proc) == 0
            if with_broker:
                u.wait_topic("connector/$bridge/state", payload=b"offline")
        if not with_broker:
            assert not broker_answers("127.0.0.1", port, timeout=0.5)  # its broker is gone
    finally:
        if proc.poll() is None:
            proc.kill()
        if running:
            running.close()


def test_demo_without_any_broker_explains_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in env_with_pythonpath().items() if not k.startswith("BRIDGE_")}
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "demo", "--no-broker", "--mqtt-port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "no MQTT broker answers" in done.stderr and "BRIDGE_MQTT_PORT" in done.stderr


def test_demo_help() -> None:
    env = env_with_pythonpath()
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "demo", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=os.getcwd(),
    )
    assert done.returncode == 0 and "--mqtt-port" in done.stdout
