"""``connector-bridge run`` as a real process: settings from an env file and the
environment, clean stop on SIGTERM, the will on SIGKILL, and start-up errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.simulator import Emulator
from tests.support.bridge_harness import command, user
from tests.support.broker import MosquittoBroker, env_with_pythonpath

pytestmark = pytest.mark.both_dialects

TOKEN = "cli-TOKEN-5e1f0a"


def bridge_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in env_with_pythonpath().items() if not k.startswith("BRIDGE_")}
    env.update(extra)
    return env


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(token=TOKEN, pull_timeout=1.0) as e:
        yield e


_LOGS: dict[int, Path] = {}


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """``connector-bridge run`` with its output in a file: a pipe nobody reads until the
    end holds 64 KiB, which a bridge logging at DEBUG fills in a few seconds, and then
    the bridge blocks on its next log line."""
    log = cwd / f"bridge-{len(_LOGS)}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", *args],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    _LOGS[proc.pid] = log
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 15) -> tuple[int, str]:
    """Wait for the bridge to exit; its exit code and everything it printed."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        err = _LOGS[proc.pid].read_text()
        raise AssertionError(f"the bridge did not exit; stderr:\n{err[-3000:]}") from None
    return proc.returncode, _LOGS[proc.pid].read_text()


def test_run_serves_and_stops_cleanly_on_sigterm(
    broker: MosquittoBroker, emu: Emulator, tmp_path: Path
) -> None:
    env_file = tmp_path / "bridge.env"
    env_file.write_text(f"BRIDGE_CONNECTOR_URL={emu.url}\nBRIDGE_CONNECTOR_TOKEN={TOKEN}\n")
    env = bridge_env(BRIDGE_MQTT_HOST="127.0.0.1", BRIDGE_LOG_LEVEL="DEBUG")
    args = ["--env-file", str(env_file), "--mqtt-port", str(broker.port),
            "--mqtt-client-id", f"cli-{os.getpid()}"]  # fmt: skip
    with user(broker, "3.1.1", "connector/#") as u:
        proc = start(args, env, tmp_path)
        try:
            u.wait_topic("connector/$bridge/state", payload=b"online", timeout=20)
            u.wait_topic("connector/node-001/$state", payload=b"online")
            u.wait_topic("connector/node-001/3303/0/5700")
            reply = command(u, "connector/light-001/3311/0/5850/set", b"1", transaction="cli")
            assert reply["ok"] and emu.get_value("light-001", "/3311/0/5850") == b"1"
            proc.send_signal(signal.SIGTERM)
            code, err = finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert code == 0, err[-3000:]
        u.wait_for(lambda m: m.topic == "connector/$bridge/state" and m.payload == b"offline")
    assert "SIGTERM received" in err and "bridge stopped" in err
    assert TOKEN not in err  # not even at DEBUG


def test_sigkill_leaves_the_will_offline(
    broker: MosquittoBroker, emu: Emulator, tmp_path: Path
) -> None:
    env = bridge_env(
        BRIDGE_CONNECTOR_URL=emu.url,
        BRIDGE_CONNECTOR_TOKEN=TOKEN,
        BRIDGE_MQTT_HOST="127.0.0.1",
        BRIDGE_MQTT_PORT=str(broker.port),
        BRIDGE_MQTT_PROTOCOL="3.1.1",
        BRIDGE_MQTT_CLIENT_ID=f"cli-kill-{os.getpid()}",
    )
    with user(broker, "5", "connector/$bridge/state") as u:
        proc = start([], env, tmp_path)
        try:
            u.wait_topic("connector/$bridge/state", payload=b"online", timeout=20)
        finally:
            proc.kill()
            proc.wait()
        msg = u.wait_for(lambda m: m.payload == b"offline")[0]
    assert msg.topic == "connector/$bridge/state"


def test_bad_settings_exit_2_naming_them(tmp_path: Path) -> None:
    env = bridge_env(BRIDGE_CONNECTOR_TOKEN=TOKEN, BRIDGE_MQTT_PORT="lots")
    code, err = finish(start(["--env-file", ""], env, tmp_path))
    assert code == 2
    assert "BRIDGE_CONNECTOR_URL (--connector-url): is required" in err
    assert "BRIDGE_MQTT_PORT (--mqtt-port)" in err and "'lots'" in err
    assert TOKEN not in err


def test_a_refused_token_exits_1_naming_the_setting(
    broker: MosquittoBroker, emu: Emulator, tmp_path: Path
) -> None:
    wrong = "not-the-token-1b2c"
    env = bridge_env(
        BRIDGE_CONNECTOR_URL=emu.url,
        BRIDGE_CONNECTOR_TOKEN=wrong,
        BRIDGE_MQTT_PORT=str(broker.port),
        BRIDGE_MQTT_HOST="127.0.0.1",
    )
    code, err = finish(start([], env, tmp_path))
    assert code == 1
    assert "refused the access key" in err and "BRIDGE_CONNECTOR_TOKEN" in err
    assert wrong not in err and TOKEN not in err
