"""``connector-bridge simulate`` as a user runs it: banner, curl-like use, clean stop."""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.ports import free_port


class Running:
    def __init__(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "bridge", "simulate", *args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.proc.stdout is not None
        self.banner: list[str] = []
        for line in self.proc.stdout:
            self.banner.append(line.rstrip("\n"))
            if "Ctrl-C stops it" in line:
                break
        text = "\n".join(self.banner)
        found = re.search(r"listening on (http://\S+)", text)
        key = re.search(r"access key:\s+(\S+)", text)
        assert found and key, text
        self.url, self.key = found.group(1), key.group(1)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=10)
        return self.proc.returncode, out


@pytest.fixture
def running() -> Iterator[Running]:
    r = Running("--api", "legacy", "--port", "0", "--token", "T0k3n", "--pull-timeout", "2")
    yield r
    if r.proc.poll() is None:
        r.proc.kill()
        r.proc.wait()


def test_banner_and_the_curl_walkthrough(running: Running) -> None:
    assert running.key == "T0k3n"
    assert running.url.startswith("http://127.0.0.1:")
    assert any('curl -H "Authorization: Bearer T0k3n"' in line for line in running.banner)
    h = {"Authorization": f"Bearer {running.key}"}
    names = [e["name"] for e in requests.get(f"{running.url}/v2/endpoints", headers=h).json()]
    assert "node-001" in names
    opened = requests.get(f"{running.url}/v2/notification/pull?noWait=true", headers=h)
    assert opened.status_code == 204
    r = requests.get(f"{running.url}/v2/endpoints/node-001/3303/0/5700", headers=h)
    aid = r.json()["async-response-id"]
    entry = None
    for _ in range(5):
        body = requests.get(f"{running.url}/v2/notification/pull", headers=h).json()
        entry = next((e for e in body.get("async-responses", []) if e["id"] == aid), None)
        if entry:
            break
    assert entry is not None and entry["status"] == 200
    float(base64.b64decode(entry["payload"]))
    assert requests.get(f"{running.url}/v2/endpoints").status_code == 401


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly(running: Running, sig: int) -> None:
    code, out = running.stop(sig)
    assert code == 0
    assert "stopping" in out
    assert "Traceback" not in out


def test_random_token_when_none_given() -> None:
    r = Running("--api", "legacy", "--port", "0", "--devices", "50")
    try:
        assert len(r.key) >= 20
        assert "(50 endpoints)" in r.banner[0]
        ok = requests.get(f"{r.url}/endpoints", headers={"Authorization": f"Bearer {r.key}"})
        assert len(ok.json()) == 50
    finally:
        assert r.stop()[0] == 0


def test_bad_scenario_and_busy_port(tmp_path: Path) -> None:
    bad = tmp_path / "s.json"
    bad.write_text('{"templates": {}}')
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "simulate", "--scenario", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "templates" in done.stderr
    port = free_port()
    first = Running("--port", str(port))
    try:
        busy = subprocess.run(
            [sys.executable, "-m", "bridge", "simulate", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert busy.returncode == 1 and "cannot listen" in busy.stderr
    finally:
        first.stop()
