"""``connector-bridge status`` against a running bridge (real Mosquitto, emulator, bridge),
against a broker without a bridge, and without a broker; plus its pure formatting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.service.controller import Bridge
from bridge.service.status_cli import Snapshot, duration, endpoint_rows, main, render, split_options
from bridge.simulator import Emulator
from tests.support.bridge_harness import bridge_settings, running_bridge, user
from tests.support.broker import MosquittoBroker, env_with_pythonpath
from tests.support.listening import wait_listening
from tests.support.ports import free_port

pytestmark = pytest.mark.both_dialects

WAIT = 20.0


def status_args(broker_port: int, *extra: str) -> list[str]:
    return ["--env-file", "", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker_port), *extra]


@pytest.fixture
def running(broker: MosquittoBroker, emulator: Emulator) -> Iterator[Bridge]:
    settings = bridge_settings(emulator, broker, health_interval=0.5, homeassistant=False)
    with running_bridge(settings) as bridge, user(broker, "5", "connector/$bridge/#") as u:
        wait_listening(u)
        yield bridge


@pytest.fixture(autouse=True)
def no_bridge_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)


def test_status_prints_every_endpoint_with_state_and_resources_and_key_figures(
    broker: MosquittoBroker,
    emulator: Emulator,
    running: Bridge,
    capsys: pytest.CaptureFixture[str],
    dialect: str,
) -> None:
    emulator.deregister("node-002")  # departed: still shown, from its retained $state
    with user(broker, "5", "connector/#") as u:
        u.wait_topic("connector/node-002/$state", WAIT, payload=b"offline")
        # Today's service tells a device's queue mode only in its registration messages (its
        # device listing has none): the sleeper says it when it updates its registration.
        emulator.update("sleeper-001")
        u.wait_for(lambda m: m.topic == "connector/sleeper-001/$resources" and m.json()["q"], WAIT)
        u.wait_for(lambda m: m.topic == "connector/$bridge/health" and m.json()["ready"], WAIT)
        names = set(emulator.endpoints()) | {"node-002"}
        resources = {
            name: len(u.wait_topic(f"connector/{name}/$resources", WAIT).json()["resources"])
            for name in names
        }
    assert main(status_args(broker.port)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()

    # Today's service has device IDs: a column of their own (the legacy one has names only).
    ids = dialect == "current"
    header = next(i for i, line in enumerate(lines) if line.startswith("ENDPOINT"))
    assert lines[header].split() == [
        "ENDPOINT", *(["DEVICE", "ID"] if ids else []), "TYPE", "STATE", "QUEUE", "RESOURCES"
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[header + 1 :] if line.strip()}
    assert set(rows) == names
    for name in names:
        state = "offline" if name == "node-002" else "online"
        queue = "yes" if name.startswith("sleeper") else "no"
        row = rows[name]
        if ids:
            assert row[1] == emulator.device_id(name), row
            row = [row[0], *row[2:]]
        assert row[2:] == [state, queue, str(resources[name])], rows[name]
    assert rows["light-001"][2 if ids else 1] == "Light"

    figures = {line.split()[0]: line for line in lines[2:header] if line.strip()}
    assert figures["bridge"].split()[1:3] == ["online,", "up"] and "ready" in figures["bridge"]
    channel = "websocket" if dialect == "current" else "longpoll"
    assert emulator.url in figures["connector"] and f"channel {channel}, up" in figures["connector"]
    assert figures["mqtt"].startswith("mqtt           connected (MQTT 5)")
    assert figures["endpoints"].split()[1:] == ["4", "online,", "1", "offline,", "0", "expired"]
    assert "notifications" in figures and "commands" in figures
    assert emulator.token not in out


def test_status_as_json(
    broker: MosquittoBroker,
    emulator: Emulator,
    running: Bridge,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(status_args(broker.port, "--json", "--timeout", "10")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["bridge_state"] == "online" and doc["prefix"] == "connector"
    assert {r["name"] for r in doc["endpoints"]} == set(emulator.endpoints())
    assert doc["info"]["endpoints"]["online"] == len(emulator.endpoints())
    assert doc["errors"] == {}


def test_status_as_a_command_of_connector_bridge(
    broker: MosquittoBroker, running: Bridge, tmp_path: Path
) -> None:
    env = {k: v for k, v in env_with_pythonpath().items() if not k.startswith("BRIDGE_")}
    env.update(BRIDGE_MQTT_HOST="127.0.0.1", BRIDGE_MQTT_PORT=str(broker.port))
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "status"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 0, done.stderr
    assert "light-001" in done.stdout and "ENDPOINT" in done.stdout


def test_no_bridge_is_a_clear_failure(
    broker: MosquittoBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(status_args(broker.port, "--timeout", "0.5")) == 1
    err = capsys.readouterr().err
    assert "no bridge answered on connector/$bridge/request/info within 0.5 s" in err
    assert "nothing is retained on connector/$bridge/state" in err


def test_no_broker_is_a_clear_failure(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    assert main(status_args(port, "--timeout", "1")) == 1
    err = capsys.readouterr().err
    assert f"cannot connect to the MQTT broker at 127.0.0.1:{port}" in err


def test_bad_options_and_settings_name_what_is_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--timeout", "soon"]) == 2
    assert "--timeout takes seconds" in capsys.readouterr().err
    assert main(["--env-file", "", "--mqtt-port", "0"]) == 2
    assert "BRIDGE_MQTT_PORT" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "usage: connector-bridge status" in capsys.readouterr().out


# ------------------------------------------------------------------------ the pure parts


def test_split_options() -> None:
    assert split_options(["--json", "--timeout=2.5", "--mqtt-port", "1"]) == (
        ["--mqtt-port", "1"],
        2.5,
        True,
        False,
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (95, "1m 35s"), (7300, "2h 01m"), (200000, "2d 7h")],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_render_a_snapshot() -> None:
    snap = Snapshot(
        broker="broker:1883",
        prefix="connector",
        bridge_state="online",
        info={
            "version": "9.9",
            "uptime": 95,
            "connector": {"url": "http://c", "channel": "longpoll", "async_pending": 2},
            "mqtt": {"connected": True, "protocol": "5", "connects": 3, "outbox": 0},
            "endpoints": {"online": 1, "offline": 0, "expired": 1},
            "counters": {"commands_received": 4, "commands_ok": 3, "commands_failed": 1},
            "extensions": {"health": {"ready": False}},
        },
        health={"reasons": ["Connector unreachable"], "connector": {"state": "down"}},
        endpoints=[{"name": "a/b", "type": "T", "q": True, "state": "online"}],
        states={"a/b": "online", "gone": "expired"},
        resources={"a/b": {"type": "T", "q": True, "resources": [{}, {}, {}]}},
    )
    text = render(snap)
    assert "bridge         online, up 1m 35s, NOT ready: Connector unreachable" in text
    assert "connector      http://c, channel longpoll, down, async pending 2" in text
    assert "reconnects 2" in text and "3 ok, 1 failed" in text
    assert [r["name"] for r in endpoint_rows(snap)] == ["a/b", "gone"]
    assert text.splitlines()[-2].split() == ["a/b", "T", "online", "yes", "3"]
    assert text.splitlines()[-1].split() == ["gone", "-", "expired", "no", "-"]


def test_render_a_group_from_retained_health_only() -> None:
    """No etcd view: the replicas' retained health and state; a dead replica (its will
    said offline) is gone, with no role or slots, whatever its last health said."""

    def health(role: str, slots: list[str], pid: int) -> dict[str, object]:
        return {"state": "online", "ready": True, "role": role, "process": {"pid": pid},
                "cluster": {"group": "g", "role": role, "slots": slots}}  # fmt: skip

    snap = Snapshot(
        broker="b:1883",
        prefix="connector",
        info={"cluster": {"member": "a", "role": "leader"}},
        replica_states={"a": "online", "b": "online", "c": "offline"},
        replica_health={
            "a": health("leader", ["cmd-0"], 11),
            "b": health("follower", ["cmd-1", "cmd-2"], 12),
            "c": health("leader", ["cmd-3"], 13),
        },
        cluster_etcd="http://etcd:2379",
        cluster_error="no answer",
    )
    lines = render(snap).splitlines()
    assert lines[1] == "figures and endpoints from replica a (leader)"
    head = next(i for i, line in enumerate(lines) if line.startswith("group "))
    assert lines[head] == "group g: 2 replica(s), leader a"
    assert "etcd http://etcd:2379 did not answer (no answer)" in lines[head + 1]
    rows = {r.split()[0]: r.split()[1:] for r in lines[head + 3 : head + 6]}
    assert rows == {
        "a": ["leader", "online", "yes", "-", "11", "cmd-0"],
        "b": ["follower", "online", "yes", "-", "12", "cmd-1,cmd-2"],
        "c": ["gone", "offline", "-", "-", "13", "-"],
    }
    assert snap.as_dict()["group"]["leader"] == "a"
