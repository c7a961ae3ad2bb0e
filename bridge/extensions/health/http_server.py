"""A small HTTP server for orchestrators and monitoring: ``/healthz``, ``/readyz``, ``/metrics``.

- ``GET /healthz`` (liveness): 200 while the process is alive and its timer thread (the
  one every time-out of the bridge depends on) still runs; 503 otherwise, and an
  orchestrator restarts the bridge.
- ``GET /readyz`` (readiness): 200 when start-up is done, the broker connection is up and
  the Connector channel is healthy; 503 with the reasons otherwise.
- ``GET /metrics``: Prometheus text format.

Both health answers are small JSON documents. The server (standard library) runs on one
thread and serves each request on a short-lived thread of its own, at most
``MAX_CLIENTS`` at once (more are closed at once), each with a socket time-out: a slow
or stuck client can neither block a probe nor pile up threads. Requests are rare (a
probe every few seconds, a scrape every 15 s or so); none of this touches the data path.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("bridge.health")

MAX_CLIENTS = 8
CLIENT_TIMEOUT = 5.0

Check = Callable[[], tuple[bool, dict[str, Any]]]
Metrics = Callable[[], tuple[bytes, str]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], routes: dict[str, Callable[[], Any]]) -> None:
        self.routes = routes
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: close, never queue
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = CLIENT_TIMEOUT
    protocol_version = "HTTP/1.1"
    server_version = "connector-bridge"
    sys_version = ""

    def do_GET(self) -> None:
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            self._send(404, b'{"error":"not found: try /healthz, /readyz or /metrics"}\n')
            return
        try:
            status, body, content_type = route()
        except Exception as exc:  # a bug must not kill the server; say so
            log.exception("health endpoint %s failed", self.path)
            body = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n"
            status, content_type = 500, "application/json"
        self._send(status, body, content_type)

    def do_HEAD(self) -> None:
        self.do_GET()

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def _json(ok: bool, doc: dict[str, Any]) -> tuple[int, bytes, str]:
    body = json.dumps(doc, separators=(",", ":"), default=str).encode() + b"\n"
    return (200 if ok else 503), body, "application/json"


class HealthServer:
    """``/healthz``, ``/readyz`` and (optionally) ``/metrics`` on ``host:port``."""

    def __init__(
        self, host: str, port: int, *, alive: Check, ready: Check, metrics: Metrics | None
    ) -> None:
        routes: dict[str, Callable[[], Any]] = {
            "/healthz": lambda: _json(*alive()),
            "/readyz": lambda: _json(*ready()),
        }
        if metrics is not None:
            routes["/metrics"] = lambda: (200, *metrics())
        self._server = _Server((host, port), routes)  # binds now: OSError if it cannot
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(2.0)
        self._server.server_close()
