"""A plain ``requests`` client for the emulator's tests (not the project's connector client,
which is tested against the emulator separately)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import requests

from bridge.simulator import Emulator

KINDS = (
    "notifications",
    "registrations",
    "reg-updates",
    "de-registrations",
    "registrations-expired",
    "async-responses",
)


class Api:
    """One HTTP session with the emulator's access key; ``prefix`` is "/v2" or ""."""

    def __init__(self, emu: Emulator, prefix: str = "/v2", token: str | None = None) -> None:
        self.emu = emu
        self.base = emu.url + prefix
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {token or emu.token}"
        self.seen: dict[str, list[Any]] = {k: [] for k in KINDS}

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 10)
        return self.s.request(method, self.base + path, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.call("GET", path, **kw)

    def put(self, path: str, **kw: Any) -> requests.Response:
        return self.call("PUT", path, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.call("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.call("DELETE", path, **kw)

    def admin(self, method: str, name: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 30)
        return self.s.request(method, f"{self.emu.url}/admin/{name}", **kw)

    def open_channel(self) -> None:
        """A quick pull sets up the long-poll channel; what it brings is kept in ``seen``."""
        r = self.get("/notification/pull", params={"noWait": "true"})
        assert r.status_code in (200, 204), r.text
        self._keep(r)

    def pull(self, **kw: Any) -> requests.Response:
        r = self.get("/notification/pull", **kw)
        self._keep(r)
        return r

    def _keep(self, r: requests.Response) -> None:
        if r.status_code == 200:
            for key, entries in r.json().items():
                self.seen[key].extend(entries)

    def wait_for(
        self, done: Callable[[dict[str, list[Any]]], Any], timeout: float = 10.0
    ) -> dict[str, list[Any]]:
        """Pull until ``done(seen)`` is true; everything pulled accumulates in ``seen``."""
        deadline = time.monotonic() + timeout
        while not done(self.seen):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; seen so far: {self.seen}")
            r = self.pull()
            assert r.status_code in (200, 204), (r.status_code, r.text)
        return self.seen

    def async_response(self, aid: str, timeout: float = 10.0) -> dict[str, Any]:
        def found(seen: dict[str, list[Any]]) -> dict[str, Any] | None:
            return next((e for e in seen["async-responses"] if e["id"] == aid), None)

        self.wait_for(found, timeout)
        entry = found(self.seen)
        assert entry is not None
        return entry

    def request_async(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """A resource call that must answer 202; returns its async response."""
        r = self.call(method, path, **kw)
        assert r.status_code == 202, (r.status_code, r.text)
        return self.async_response(r.json()["async-response-id"])

    def notifications(self, ep: str, path: str) -> list[bytes]:
        return [
            decode(n) for n in self.seen["notifications"] if n["ep"] == ep and n["path"] == path
        ]


def decode(entry: dict[str, Any]) -> bytes:
    return base64.b64decode(entry["payload"])
