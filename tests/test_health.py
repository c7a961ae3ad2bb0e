"""Watching the bridge: ``$bridge/health`` on MQTT, ``/healthz`` and ``/readyz``, log formats.

Real Mosquitto, emulator and bridge; the Connector and the broker are stopped and started
again to see readiness and the health message follow.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge import __version__
from bridge.service.controller import Bridge
from bridge.service.logging_setup import JsonFormatter, TextFormatter
from bridge.simulator import Emulator
from bridge.upstream.side import StartupError
from tests.support.bridge_harness import bridge_settings, retained, running_bridge, user
from tests.support.broker import MosquittoBroker, env_with_pythonpath
from tests.support.clients import wait_until
from tests.support.mqtt_user import MqttUser, Received

pytestmark = pytest.mark.both_dialects

HEALTH = "connector/$bridge/health"
WAIT = 20.0


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def health_of(bridge: Bridge) -> Any:
    return next(e for e in bridge.extensions if e.name == "health")


def next_health(u: MqttUser, since: int, **want: Any) -> dict[str, Any]:
    """The first health message after index ``since`` whose top-level fields equal ``want``
    (and whose ``connector.state`` equals ``connector_state``, when given)."""
    state = want.pop("connector_state", None)

    def match(m: Received) -> bool:
        if m.topic != HEALTH:
            return False
        doc = m.json()
        return all(doc.get(k) == v for k, v in want.items()) and (
            state is None or doc["connector"]["state"] == state
        )

    before = sum(1 for m in u.messages[:since] if match(m))
    found: dict[str, Any] = u.wait_for(match, WAIT, count=before + 1)[before].json()
    return found


@pytest.fixture
def watched(broker: MosquittoBroker, emulator: Emulator) -> Iterator[tuple[Bridge, MqttUser]]:
    settings = bridge_settings(
        emulator,
        broker,
        health_port=0,
        health_host="127.0.0.1",
        health_interval=0.5,
        homeassistant=False,
    )
    with user(broker, "5", HEALTH) as u, running_bridge(settings) as bridge:
        yield bridge, u


def test_health_message_is_retained_periodic_and_holds_the_key_figures(
    broker: MosquittoBroker, emulator: Emulator, watched: tuple[Bridge, MqttUser]
) -> None:
    bridge, u = watched
    doc = next_health(u, 0, ready=True)
    assert doc["state"] == "online" and doc["version"] == __version__ and doc["reasons"] == []
    assert doc["endpoints"]["online"] == len(emulator.endpoints())
    assert doc["mqtt"]["connected"] is True and doc["mqtt"]["dropped"]["buffer_full"] == 0
    assert doc["connector"]["state"] == "up" and doc["connector"]["reachable"] is True
    assert doc["connector"]["url"] == emulator.url
    assert doc["process"]["memory_rss_bytes"] > 0
    for key in ("notifications", "commands", "counters"):
        assert isinstance(doc[key], dict)
    assert emulator.token not in json.dumps(doc)

    # periodic: more come by themselves, every health_interval (0.5 s here)
    count = len(u.on(HEALTH))
    u.wait_for(lambda m: m.topic == HEALTH, WAIT, count=count + 2)
    # retained: a client that comes later gets the last one at once
    [late] = retained(broker, HEALTH, 1)
    assert late.json()["state"] == "online"

    bridge.stop()
    last = next_health(u, 0, state="offline")
    assert last["ready"] is False and last["reasons"] == ["the bridge stopped"]
    [late] = retained(broker, HEALTH, 1)
    assert late.json()["state"] == "offline"


def test_liveness_and_readiness_follow_the_connector_and_the_broker(
    broker: MosquittoBroker, emulator: Emulator, watched: tuple[Bridge, MqttUser]
) -> None:
    bridge, u = watched
    port = health_of(bridge).server.port
    assert get(port, "/healthz") == (200, {"alive": True, "uptime": pytest.approx(0, abs=60)})
    assert get(port, "/readyz") == (200, {"ready": True, "reasons": []})
    assert get(port, "/nothing")[0] == 404

    # The Connector goes away: not ready, said at once on MQTT too; alive all the same.
    since = len(u.messages)
    emulator.stop()
    down = next_health(u, since, connector_state="down")
    assert down["ready"] is False and down["connector"]["reachable"] is False
    status, body = get(port, "/readyz")
    assert status == 503 and any(r.startswith("Connector unreachable") for r in body["reasons"])
    assert get(port, "/healthz")[0] == 200

    since = len(u.messages)
    emulator.start()
    up = next_health(u, since, ready=True, connector_state="up")
    assert up["connector"]["recoveries"] == 1 and up["connector"]["outages"] == 1
    assert get(port, "/readyz")[0] == 200

    # The broker goes away: not ready (nobody would read a health message now).
    broker.stop()
    assert wait_until(lambda: not bridge.mqtt.connected, WAIT)  # no event to wait on
    status, body = get(port, "/readyz")
    assert status == 503 and "not connected to the MQTT broker" in body["reasons"]
    broker.start()
    assert bridge.mqtt.wait_connected(WAIT)
    assert get(port, "/readyz")[0] == 200


def test_health_port_in_use_is_a_clear_start_up_error(
    broker: MosquittoBroker, emulator: Emulator
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bridge = Bridge(
            bridge_settings(emulator, broker, health_port=port, health_host="127.0.0.1")
        )
        try:
            with pytest.raises(StartupError, match="BRIDGE_HEALTH_PORT"):
                bridge.start()
        finally:
            bridge.stop()


# ---------------------------------------------------------------------------- log formats


def _log_through(formatter: logging.Formatter) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("tests.health.formats")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("connecting with token %s to %s", "s3cret-T0KEN", "host")
        try:
            raise RuntimeError("header Authorization: Bearer s3cret-T0KEN refused")
        except RuntimeError:
            logger.exception("call failed")
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_json_lines_format_masks_secrets() -> None:
    lines = _log_through(JsonFormatter(["s3cret-T0KEN"]))
    first, second = json.loads(lines[0]), json.loads(lines[1])  # the traceback stays inside
    assert len(lines) == 2
    assert first["level"] == "WARNING" and first["logger"] == "tests.health.formats"
    assert first["message"] == "connecting with token *** to host"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["message"] == "call failed" and "RuntimeError" in second["exception"]
    assert "s3cret-T0KEN" not in "\n".join(lines)


def test_text_format_masks_secrets_too() -> None:
    lines = _log_through(TextFormatter(["s3cret-T0KEN"]))
    assert "WARNING tests.health.formats: connecting with token *** to host" in lines[0]
    assert any("RuntimeError" in line for line in lines)
    assert "s3cret-T0KEN" not in "\n".join(lines)


def test_run_logs_json_lines_when_asked(
    broker: MosquittoBroker, emulator: Emulator, tmp_path: Path
) -> None:
    env = {k: v for k, v in env_with_pythonpath().items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_CONNECTOR_URL=emulator.url,
        BRIDGE_CONNECTOR_TOKEN=emulator.token,
        BRIDGE_MQTT_HOST="127.0.0.1",
        BRIDGE_MQTT_PORT=str(broker.port),
        BRIDGE_MQTT_CLIENT_ID=f"json-log-{os.getpid()}",
        BRIDGE_LOG_FORMAT="json",
        BRIDGE_LOG_LEVEL="DEBUG",
    )
    log = tmp_path / "bridge.err"  # a file, not a pipe: at DEBUG 64 KiB come in seconds
    with user(broker, "5", HEALTH) as u, log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--env-file", ""],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
        try:
            u.wait_for(lambda m: m.topic == HEALTH and m.json()["ready"], WAIT)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = log.read_text()
    assert proc.returncode == 0, err[-2000:]
    records = [json.loads(line) for line in err.splitlines()]  # every line is one object
    messages = [r["message"] for r in records]
    assert "bridge stopped" in messages and any(m.startswith("bridge ready") for m in messages)
    assert {"time", "level", "logger", "message", "thread"} <= set(records[0])
    assert emulator.token not in err
