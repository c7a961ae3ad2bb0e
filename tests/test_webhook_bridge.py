"""The callback channel of a running bridge: its secret, 503 and the Connector's retries,
HTTPS, and a TLS-terminating reverse proxy in front of it.

The emulator plays the Connector. For HTTPS it runs as its own process with the test CA in
``SSL_CERT_FILE`` (its HTTP client reads the trust store once, at import), exactly as a
Connector that trusts the certificate would.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web

from bridge.core.loop_thread import LoopThread
from bridge.service.controller import Bridge
from bridge.service.settings import Settings, load_settings
from bridge.simulator import Emulator
from bridge.upstream.callback_receiver import CallbackReceiver, server_ssl_context
from bridge.upstream.side import StartupError
from tests.support.bridge_harness import bridge_settings, command, retained, running_bridge, user
from tests.support.broker import MosquittoBroker, env_with_pythonpath
from tests.support.certs import Pki, make_test_pki
from tests.support.clients import wait_until
from tests.support.mqtt_user import MqttUser
from tests.support.ports import free_port, wait_for_port

pytestmark = pytest.mark.both_dialects

DIMMER_PATH = "/3311/0/5851"
DIMMER = "connector/light-001/3311/0/5851"
WAIT = 20.0


def callback_overrides(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "notification_channel": "callback",
        "callback_url": f"http://127.0.0.1:{port}/connector/notify",
        "callback_listen": f"127.0.0.1:{port}",
        **extra,
    }


def receiver_of(bridge: Bridge) -> CallbackReceiver:
    receiver = bridge.connector_side._receiver
    assert receiver is not None
    return receiver


# --- the secret ------------------------------------------------------------------------------


def test_a_new_random_secret_at_every_start(broker: MosquittoBroker, emulator: Emulator) -> None:
    registered = []
    for _ in range(2):
        port = free_port()
        with running_bridge(bridge_settings(emulator, broker, **callback_overrides(port))):
            assert emulator.core.callback is not None
            registered.append(emulator.core.callback["headers"]["Authorization"])
    assert registered[0] != registered[1]
    for header in registered:
        scheme, _, secret = header.partition(" ")
        assert scheme == "Bearer" and len(secret) >= 43  # 32 random bytes, URL-safe base64


def test_a_configured_secret_from_a_file(
    broker: MosquittoBroker, emulator: Emulator, tmp_path: Path
) -> None:
    secret = "configured-" + uuid.uuid4().hex
    secret_file = tmp_path / "callback-secret"
    secret_file.write_text(secret + "\n")
    port = free_port()
    settings = bridge_settings(
        emulator, broker, **callback_overrides(port, callback_secret_file=str(secret_file))
    )
    with running_bridge(settings) as bridge, user(broker, "5", "connector/#") as u:
        assert emulator.core.callback is not None
        assert emulator.core.callback["headers"] == {"Authorization": f"Bearer {secret}"}
        body = {"notifications": [{"ep": "light-001", "path": DIMMER_PATH, "payload": "NDI="}]}
        url = f"http://127.0.0.1:{port}/connector/notify"
        ok = requests.put(url, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=10)
        assert ok.status_code == 204
        u.wait_topic(DIMMER, payload=b"42")
        assert requests.put(url, json=body, timeout=10).status_code == 401
        assert receiver_of(bridge).stats["refused_secret"] == 1


# --- 503 and the Connector's retries ---------------------------------------------------------


@pytest.fixture
def persistent_broker() -> Iterator[MosquittoBroker]:
    """A broker whose sessions survive a restart. ("user root": started as root, Mosquitto
    would drop to its own user and fail to save into the test's private directory.)"""
    with MosquittoBroker(extra_config="user root\n" if os.geteuid() == 0 else "") as b:
        yield b


def test_503_while_the_broker_is_away_and_the_connectors_retries_deliver_everything(
    persistent_broker: MosquittoBroker,
) -> None:
    """With the broker down and the bridge's buffer (3 messages) full, the receiver answers
    503 instead of letting the buffer drop the oldest; the Connector keeps what it could
    not deliver and retries; after the broker returns every value arrives, in order."""
    broker = persistent_broker
    values = [str(101 + i).encode() for i in range(12)]  # the dimmer starts at 100
    with Emulator(token="tok-503", pull_timeout=1.0, drift=False) as emu:
        port = free_port()
        # Only values in the buffer: no discovery configs, no periodic health message.
        settings = bridge_settings(
            emu, broker, **callback_overrides(port), mqtt_buffer=3,
            homeassistant=False, health_interval=0,
        )  # fmt: skip
        with running_bridge(settings) as bridge:
            # The start-up read's value is retained before the subscriber listens (a late
            # one would arrive live, as if it were one of the test's).
            retained(broker, DIMMER, 1)
            # A session that outlives the broker restart: after reconnecting it receives
            # what was published for it while it was away (QoS 1). MQTT 3.1.1: Mosquitto
            # 2.0.11 does not restore MQTT 5 sessions from its persistence file
            # (eclipse-mosquitto/mosquitto#2265).
            sub = MqttUser(
                broker.port, "3.1.1", f"persistent-{uuid.uuid4().hex[:8]}", persistent=True
            )
            sub.subscribe(DIMMER)
            try:
                emu.reset_counters()
                broker.stop()
                assert wait_until(lambda: not bridge.mqtt.connected, WAIT)
                for v in values:
                    emu.set_value("light-001", DIMMER_PATH, v)
                assert wait_until(lambda: emu.counters()["retried"] >= 2, WAIT)
                refused = receiver_of(bridge).stats["refused_unavailable"]
                assert refused >= 2
                assert bridge.mqtt.outbox_size() <= 3
                broker.start()
                sub.wait_for(lambda m: not m.retain and m.payload == values[-1], WAIT)
                # (not the value retained before this test's values)
                got = [m.payload for m in sub.messages if not m.retain]
            finally:
                sub.close()
            counters = emu.counters()
            link = dict(bridge.mqtt.stats)
    # Every value, in order; a value delivered twice (an answer lost) would show as a repeat.
    unique = [p for i, p in enumerate(got) if i == 0 or p != got[i - 1]]
    assert unique == values, got
    # The Connector kept and retried what was refused, and has nothing left.
    assert counters["emitted_notifications"] == len(values)
    assert counters["dropped"] == 0 and counters["pending"] == 0
    assert counters["retried"] >= 2
    assert link["dropped_buffer_full"] == 0
    print(
        f"\n503 test: {len(values)} values, receiver refused {refused} time(s), "
        f"emulator retried {counters['retried']}, received {len(got)} "
        f"({len(got) - len(unique)} repeats)"
    )


# --- HTTPS and a reverse proxy (the emulator as a process that trusts the test CA) -------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("webhook-bridge-pki"))


class EmulatorProcess:
    """``connector-bridge simulate`` as a process; its admin routes drive it."""

    def __init__(self, token: str, trust: Path | None) -> None:
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = env_with_pythonpath()
        if trust is not None:
            env["SSL_CERT_FILE"] = str(trust)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "simulate", "--api", "legacy",
             "--port", str(self.port), "--token", token, "--pull-timeout", "1", "--no-drift"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_for_port(self.port, timeout=20)
        except TimeoutError:
            self.stop()
            raise

    def admin(self, method: str, name: str, body: Any = None) -> Any:
        resp = requests.request(
            method, f"{self.url}/admin/{name}", json=body, timeout=10,
            headers={"Authorization": f"Bearer {self.token}"},
        )  # fmt: skip
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def set_value(self, ep: str, path: str, value: str) -> None:
        self.admin("PUT", "value", {"ep": ep, "path": path, "value": value})

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


@contextlib.contextmanager
def emulator_process(trust: Path | None) -> Iterator[EmulatorProcess]:
    emu = EmulatorProcess(f"tok-{uuid.uuid4().hex[:12]}", trust)
    try:
        yield emu
    finally:
        emu.stop()


def settings_for(emu: EmulatorProcess, broker: MosquittoBroker, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "connector_url": emu.url,
        "connector_token": emu.token,
        "mqtt_host": "127.0.0.1",
        "mqtt_port": broker.port,
        "mqtt_client_id": f"webhook-bridge-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        "command_timeout": 5.0,
        "queue_mode_timeout": 10.0,
        "notification_channel": "callback",
        **overrides,
    }
    return load_settings(None, env_file=None, overrides=values)


def values_and_commands_flow(emu: EmulatorProcess, broker: MosquittoBroker) -> None:
    with user(broker, "5", DIMMER, f"{DIMMER}/set/reply") as u:
        emu.set_value("light-001", DIMMER_PATH, "77")
        u.wait_topic(DIMMER, payload=b"77")  # a notification, by webhook
        reply = command(u, f"{DIMMER}/set", b"78", transaction="https")
        assert reply["ok"], reply  # the device's answer came back by webhook too
        u.wait_topic(DIMMER, payload=b"78")


def test_the_webhook_over_https(broker: MosquittoBroker, pki: Pki) -> None:
    port = free_port()
    with emulator_process(trust=pki.ca_cert) as emu:
        settings = settings_for(
            emu, broker,
            callback_url=f"https://localhost:{port}/connector/notify",
            callback_listen=f"127.0.0.1:{port}",
            callback_tls_cert=str(pki.server.cert),
            callback_tls_key=str(pki.server.key),
        )  # fmt: skip
        with running_bridge(settings) as bridge:
            receiver = receiver_of(bridge)
            assert receiver.scheme == "https"
            values_and_commands_flow(emu, broker)
            assert receiver.stats["messages"] >= 2
            # Plain HTTP to the HTTPS port gets nowhere.
            with pytest.raises(requests.ConnectionError):
                requests.put(f"http://127.0.0.1:{port}/connector/notify", data=b"{}", timeout=5)


class TlsReverseProxy:
    """What nginx or Caddy would do in front of the bridge: TLS on the public port, then
    plain HTTP to the bridge on loopback, the path rewritten from ``public`` to ``inner``."""

    def __init__(self, pki: Pki, public: str, upstream: str) -> None:
        self.public, self.upstream = public, upstream
        self.port = free_port()
        self.forwarded: list[tuple[str, int]] = []
        self._runtime = LoopThread("test-reverse-proxy")
        self._context = server_ssl_context(pki.server.cert, pki.server.key)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _forward(self, request: web.Request) -> web.Response:
        if request.path != self.public:
            return web.Response(status=404)
        assert self._session is not None
        headers = {
            k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")
        }
        headers["X-Forwarded-For"] = request.remote or ""
        async with self._session.request(
            request.method, self.upstream, data=await request.read(), headers=headers
        ) as resp:
            self.forwarded.append((request.path, resp.status))
            return web.Response(status=resp.status, body=await resp.read())

    def start(self) -> TlsReverseProxy:
        async def setup() -> None:
            self._session = aiohttp.ClientSession()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._forward)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(
                self._runner, "127.0.0.1", self.port, ssl_context=self._context
            ).start()

        async def teardown() -> None:
            if self._session is not None:
                await self._session.close()
            if self._runner is not None:
                await self._runner.cleanup()

        self._runtime.start(setup, teardown)
        return self

    def stop(self) -> None:
        self._runtime.stop()


def test_the_webhook_behind_a_tls_reverse_proxy(broker: MosquittoBroker, pki: Pki) -> None:
    """Public URL (BRIDGE_CALLBACK_URL): https at the proxy. Listen address
    (BRIDGE_CALLBACK_LISTEN): plain HTTP on loopback. BRIDGE_CALLBACK_PATH: the path the
    proxy forwards to, when it rewrites it."""
    listen = free_port()
    inner = "/bridge/webhook"
    proxy = TlsReverseProxy(pki, "/public/hook", f"http://127.0.0.1:{listen}{inner}").start()
    try:
        with emulator_process(trust=pki.ca_cert) as emu:
            settings = settings_for(
                emu, broker,
                callback_url=f"https://localhost:{proxy.port}/public/hook",
                callback_listen=f"127.0.0.1:{listen}",
                callback_path=inner,
            )  # fmt: skip
            with running_bridge(settings) as bridge:
                receiver = receiver_of(bridge)
                assert (receiver.scheme, receiver.host, receiver.path) == (
                    "http",
                    "127.0.0.1",
                    inner,
                )
                values_and_commands_flow(emu, broker)
                assert emu.admin("GET", "counters")["webhook_posts"] >= 2
            # Everything came through the proxy: the probe, the values, the answers.
            assert len(proxy.forwarded) >= 3
            assert {status for _, status in proxy.forwarded} == {204}
    finally:
        proxy.stop()


# --- start-up errors name the setting ----------------------------------------------------------


def test_a_key_that_does_not_match_stops_start_up(
    broker: MosquittoBroker, emulator: Emulator, pki: Pki, tmp_path: Path
) -> None:
    other = make_test_pki(tmp_path / "other")
    port = free_port()
    settings = bridge_settings(
        emulator, broker,
        **callback_overrides(port, callback_url=f"https://localhost:{port}/n",
                             callback_tls_cert=str(pki.server.cert),
                             callback_tls_key=str(other.server.key)),
    )  # fmt: skip
    bridge = Bridge(settings).start()
    try:
        with pytest.raises(StartupError, match="BRIDGE_CALLBACK_TLS_CERT"):
            bridge.wait_ready(15)
    finally:
        bridge.stop()


def test_a_connector_that_does_not_trust_the_certificate_refuses_the_url(
    broker: MosquittoBroker, emulator: Emulator, pki: Pki
) -> None:
    # The in-process emulator trusts only the system's CAs, not the test CA.
    port = free_port()
    settings = bridge_settings(
        emulator, broker,
        **callback_overrides(port, callback_url=f"https://localhost:{port}/n",
                             callback_tls_cert=str(pki.server.cert),
                             callback_tls_key=str(pki.server.key)),
    )  # fmt: skip
    bridge = Bridge(settings).start()
    try:
        with pytest.raises(StartupError, match="BRIDGE_CALLBACK_URL") as info:
            bridge.wait_ready(15)
        assert "Certificate" in str(info.value) or "SSL" in str(info.value)
    finally:
        bridge.stop()


def test_a_message_refused_at_stop_stays_with_the_connector(
    broker: MosquittoBroker, emulator: Emulator
) -> None:
    """Stopping: the receiver refuses (503) and the callback is removed; what the Connector
    still had goes to the next bridge that starts."""
    port = free_port()
    settings = bridge_settings(emulator, broker, **callback_overrides(port))
    with running_bridge(settings) as bridge:
        receiver = receiver_of(bridge)
        receiver.refuse_new()  # the first step of Bridge.stop's channel shutdown
        emulator.set_value("light-001", DIMMER_PATH, "61")
        assert wait_until(lambda: receiver.stats["refused_unavailable"] >= 1, WAIT)
    with running_bridge(settings), user(broker, "5", DIMMER) as u:
        u.wait_topic(DIMMER, payload=b"61")
