"""``connector-bridge simulate`` in the current dialect (its default): the banner and its
walkthrough (the device directory, the WebSocket channel, a device request answered on
the socket), ``--api``; and the admin routes in both dialects."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from queue import Empty, Queue

import pytest
import requests

from bridge.simulator import Emulator
from tests.simulator_support import Api
from tests.support.clients import wait_until
from tests.test_simulator_cli import Running


@pytest.fixture
def running() -> Iterator[Running]:
    r = Running("--port", "0", "--token", "T0k3n")
    yield r
    if r.proc.poll() is None:
        r.proc.kill()
        r.proc.wait()


def snippet(banner: list[str]) -> str:
    """The banner's Python WebSocket watcher, as a user would paste it."""
    start = next(i for i, line in enumerate(banner) if "python -c '" in line)
    end = next(i for i, line in enumerate(banner) if line.endswith("asyncio.run(watch())'"))
    text = "\n".join(banner[start : end + 1])
    return text.split("python -c '", 1)[1].rstrip("'")


def test_the_banner_walkthrough(running: Running) -> None:
    text = "\n".join(running.banner)
    assert "current API" in running.banner[0] and "(5 devices)" in running.banner[0]
    assert "/v3/devices" in text and "websocat" in text and "/v2/device-requests/" in text
    h = {"Authorization": f"Bearer {running.key}"}
    devices = requests.get(f"{running.url}/v3/devices?limit=5", headers=h, timeout=10).json()
    assert devices["object"] == "list" and len(devices["data"]) == 5
    node = next(d for d in devices["data"] if d["endpoint_name"] == "node-001")
    assert f"node-001 is {node['id']}" in text
    r = requests.put(f"{running.url}/v2/notification/websocket", headers=h, timeout=10)
    assert r.status_code == 201
    watcher = subprocess.Popen(
        [sys.executable, "-c", snippet(running.banner)], stdout=subprocess.PIPE, text=True
    )
    try:
        lines: Queue[str] = Queue()
        assert watcher.stdout is not None
        threading.Thread(target=lambda: [lines.put(x) for x in watcher.stdout], daemon=True).start()
        post = next(line for line in running.banner if "-d '" in line)
        body = post.split("-d '", 1)[1].split("'", 1)[0]
        url = f"{running.url}/v2/device-requests/{node['id']}?async-id=read-1"
        status_url = f"{running.url}/v2/notification/websocket"
        assert wait_until(  # the watcher's socket is up
            lambda: requests.get(status_url, headers=h, timeout=5).json()["status"] == "connected",
            timeout=15,
        )
        r = requests.post(url, headers=h, data=body, timeout=10)
        assert r.status_code == 202 and r.content == b""
        while True:
            try:
                message = json.loads(lines.get(timeout=15))
            except Empty:
                raise AssertionError("the watcher printed no async response") from None
            answers = message.get("async-responses", [])
            if answers:
                break
        assert answers[0]["id"] == "read-1" and answers[0]["status"] == 200
        float(base64.b64decode(answers[0]["payload"]))
    finally:
        watcher.kill()
        watcher.wait()
    code, out = running.stop()
    assert code == 0 and "Traceback" not in out


def test_legacy_on_request_and_a_bad_dialect() -> None:
    r = Running("--api", "legacy", "--port", "0", "--token", "k")
    try:
        assert "Connector emulator listening" in r.banner[0]
        h = {"Authorization": "Bearer k"}
        assert requests.get(f"{r.url}/v2/endpoints", headers=h, timeout=10).status_code == 200
        assert requests.get(f"{r.url}/v3/devices", headers=h, timeout=10).status_code == 404
    finally:
        assert r.stop()[0] == 0
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "simulate", "--api", "v1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "--api" in done.stderr


def test_the_current_dialect_is_the_default(running: Running) -> None:
    h = {"Authorization": f"Bearer {running.key}"}
    r = requests.get(f"{running.url}/v2/endpoints", headers=h, timeout=10)
    assert r.status_code == 404 and r.json()["type"] == "not_found"


# --- the admin routes, in both dialects -------------------------------------------------


@pytest.fixture(params=["legacy", "current"])
def any_dialect(request: pytest.FixtureRequest) -> Iterator[Emulator]:
    with Emulator(token="t", api=request.param, drift=False) as emu:
        yield emu


def test_admin_routes_in_both_dialects(any_dialect: Emulator) -> None:
    emu = any_dialect
    api = Api(emu)
    dev_id = emu.device_id("light-001")
    assert api.admin("GET", "device-id", params={"ep": "light-001"}).json() == {
        "ep": "light-001",
        "id": dev_id,
    }
    assert api.admin("GET", "device-id", params={"ep": dev_id}).json()["ep"] == "light-001"
    assert api.admin("GET", "device-id", params={"ep": "nobody"}).status_code == 404
    body = {"ep": "adm-1", "ept": "Light", "lifetime": 60}
    assert api.admin("POST", "register", json=body).status_code == 204
    assert "adm-1" in api.admin("GET", "endpoints").json()
    for name in ("update", "wake", "expire"):
        ep = "adm-1" if name != "wake" else "sleeper-001"
        assert api.admin("POST", name, json={"ep": ep}).status_code == 204, name
    assert api.admin("POST", "deregister", json={"ep": dev_id}).status_code == 204  # an ID
    assert "light-001" not in api.admin("GET", "endpoints").json()
    value = {"ep": emu.device_id("node-001"), "path": "/3303/0/5700", "value": "30.0"}
    assert api.admin("PUT", "value", json=value).status_code == 204
    got = api.admin("GET", "value", params={"ep": "node-001", "path": "/3303/0/5700"})
    assert got.json()["value"] == "30.0"
    assert api.admin("POST", "burst", json={"n": 10, "ep": "node-001", "path": "/3303/0/5700"})
    assert api.admin("GET", "subscriptions").json() == []
    assert api.admin("PUT", "faults", json={"latency": 0.01}).status_code == 204
    assert api.admin("GET", "faults").json() == {"latency": 0.01}
    counters = api.admin("GET", "counters").json()
    assert counters["emitted_registrations"] == 1 and "ws_connects" in counters
    assert "device_requests" in counters and "discarded" in counters
    assert api.admin("DELETE", "counters").status_code == 204
    assert api.admin("GET", "counters").json()["emitted"] == 0
