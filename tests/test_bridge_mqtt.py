"""The bridge's MQTT side end to end: MQTT 3.1.1, credentials, TLS, a broker restart, and
secrets kept out of the logs."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.service.controller import Bridge
from bridge.simulator import Emulator
from bridge.upstream.side import StartupError
from tests.support.bridge_harness import (
    bridge_settings,
    command,
    request,
    running_bridge,
    user,
)
from tests.support.broker import MosquittoBroker
from tests.support.certs import Pki, make_test_pki
from tests.support.clients import wait_until

pytestmark = pytest.mark.both_dialects

DIMMER = "connector/light-001/3311/0/5851"
PASSWORD = "pw-Zq8!never-logged"


def test_bridge_speaking_mqtt311_does_everything_and_never_hears_itself(
    broker: MosquittoBroker, emulator: Emulator
) -> None:
    settings = bridge_settings(emulator, broker, mqtt_protocol="3.1.1")
    with running_bridge(settings) as bridge, user(broker, "3.1.1", "connector/#") as u:
        u.wait_topic("connector/light-001/$resources")
        received = bridge.mqtt.stats["received"]
        emulator.set_value("light-001", "/3311/0/5851", "21")
        u.wait_topic(DIMMER, payload=b"21")
        reply = command(u, f"{DIMMER}/set", b"22", transaction=1)
        assert reply["ok"] and reply["transaction"] == 1
        u.wait_topic(DIMMER, payload=b"22")
        assert request(u, "info")["data"]["mqtt"]["protocol"] == "3.1.1"
        # Without No Local the command filters alone keep the bridge's traffic away:
        # it received exactly the command and the request.
        assert bridge.mqtt.stats["received"] - received == 2


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    passwd = shutil.which("mosquitto_passwd")
    if not passwd:
        pytest.skip("mosquitto_passwd is not installed")
    pwfile = tmp_path / "passwd"
    subprocess.run([passwd, "-b", "-c", str(pwfile), "bridge", PASSWORD], check=True)
    pwfile.chmod(0o600)
    # "user root": a broker started as root would drop to its own user and then fail to
    # read a file in the test's private temporary directory.
    config = f"user root\nallow_anonymous false\npassword_file {pwfile}\n"
    with MosquittoBroker(extra_config=config) as b:
        yield b


def test_broker_credentials(
    password_broker: MosquittoBroker, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = bridge_settings(
        emulator, password_broker, mqtt_username="bridge", mqtt_password=PASSWORD
    )
    with running_bridge(good) as bridge:
        assert bridge.mqtt.connected
    wrong = "wrong-PW-7c1e"
    bad = bridge_settings(emulator, password_broker, mqtt_username="bridge", mqtt_password=wrong)
    bridge = Bridge(bad).start()
    try:
        with pytest.raises(StartupError) as info:
            assert not bridge.wait_ready(15)
        assert "BRIDGE_MQTT_USERNAME" in str(info.value)
        assert "BRIDGE_MQTT_PASSWORD" in str(info.value)
    finally:
        bridge.stop()
    assert PASSWORD not in caplog.text and wrong not in caplog.text
    assert wrong not in str(info.value)
    assert emulator.token not in caplog.text


def test_secrets_never_reach_the_logs(
    broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    token = "tok-SECRET-9f3b2c"
    caplog.set_level(logging.DEBUG)
    with Emulator(token=token, pull_timeout=1.0) as emu:
        settings = bridge_settings(emu, broker, log_level="DEBUG")
        with running_bridge(settings) as bridge, user(broker, "5", "connector/#") as u:
            command(u, f"{DIMMER}/set", b"5")
            command(u, "connector/nobody/1/set", b"5")
            request(u, "info")
            text = (
                repr(settings) + str(settings.public_summary()) + repr(bridge.connector_side.client)
            )
    assert caplog.text, "DEBUG logging was captured"
    assert token not in caplog.text
    assert token not in text


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    made = make_test_pki()
    yield made
    shutil.rmtree(made.directory, ignore_errors=True)


def tls_broker(pki: Pki, require_client_cert: bool) -> MosquittoBroker:
    from tests.support.ports import free_port

    port = free_port()
    config = (
        f"user root\nlistener {port} 127.0.0.1\n"
        f"cafile {pki.ca_cert}\ncertfile {pki.server.cert}\nkeyfile {pki.server.key}\n"
        f"require_certificate {'true' if require_client_cert else 'false'}\n"
    )
    b = MosquittoBroker(port=port, extra_config=config, listener=False)
    return b


def test_tls_with_verification_and_client_certificate(pki: Pki, emulator: Emulator) -> None:
    with tls_broker(pki, require_client_cert=True) as broker:
        settings = bridge_settings(
            emulator,
            broker,
            mqtt_host="localhost",
            mqtt_tls_ca=str(pki.ca_cert),
            mqtt_tls_cert=str(pki.client.cert),
            mqtt_tls_key=str(pki.client.key),
        )
        with running_bridge(settings) as bridge:
            assert bridge.mqtt.connected and settings.tls_enabled


def test_tls_refuses_a_broker_signed_by_another_ca(
    pki: Pki, emulator: Emulator, tmp_path: Path
) -> None:
    other = make_test_pki(tmp_path / "other")
    with tls_broker(pki, require_client_cert=False) as broker:
        settings = bridge_settings(emulator, broker, mqtt_tls_ca=str(other.ca_cert))
        bridge = Bridge(settings).start()
        try:
            assert bridge.wait_ready(15)  # the Connector side does not need the broker
            assert not bridge.mqtt.wait_connected(2.0)
        finally:
            bridge.stop()


def test_broker_restart_reconnects_resubscribes_and_delivers_what_waited(
    broker: MosquittoBroker, emulator: Emulator
) -> None:
    with running_bridge(bridge_settings(emulator, broker)) as bridge:
        broker.stop()
        emulator.set_value("light-001", "/3311/0/5851", "88")  # arrives while down
        broker.start()
        assert bridge.mqtt.wait_connected(15)
        with user(broker, "5", "connector/#") as u:
            u.wait_topic(DIMMER, payload=b"88")  # kept, and sent after the reconnect
            u.wait_topic("connector/$bridge/state", payload=b"online")
            assert command(u, f"{DIMMER}/set", b"89")["ok"]  # subscriptions renewed
        assert bridge.mqtt.stats["connects"] >= 2


def test_publishing_waits_for_room_instead_of_growing(
    broker: MosquittoBroker, emulator: Emulator
) -> None:
    """With a tiny paho queue a burst still arrives complete: publishers wait."""
    settings = bridge_settings(emulator, broker, mqtt_max_inflight=2, mqtt_max_queued=4)
    with running_bridge(settings), user(broker, "5", "connector/burst-ep/#") as u:
        resources = [{"path": "/1/0/1", "rt": "x", "ct": "text/plain", "obs": True,
                      "value": "0", "drift": 0.0, "kind": "int"}]  # fmt: skip
        emulator.register("burst-ep", ept="Burst", resources=resources)
        u.wait_topic("connector/burst-ep/$resources")
        topic = "connector/burst-ep/1/0/1"
        u.wait_topic(topic, payload=b"0")  # the registration's initial read, first
        n = emulator.burst(300, ep="burst-ep", path="/1/0/1", size=6)
        # Burst values count up from the emulator's notification count when it started
        # (other sensors drift meanwhile): n consecutive six-digit numbers.
        u.wait_for(lambda m: m.topic == topic and len(m.payload) == 6, timeout=20, count=n)
        got = [m.payload for m in u.on(topic)]
    numbers = sorted(int(p) for p in got[1:])
    assert got[0] == b"0" and len(got) == n + 1, "each burst value once, none lost"
    assert numbers == list(range(numbers[0], numbers[0] + n))


def _bridge_packets(log: str, client_id: str) -> list[str]:
    """The SUBSCRIBE and `$bridge/state` PUBLISH packets the broker received from one client,
    in the order it processed them (from Mosquitto's own debug log)."""
    seen = []
    for line in log.splitlines():
        if f"Received SUBSCRIBE from {client_id}" in line:
            seen.append("subscribe")
        elif f"Received PUBLISH from {client_id}" in line and "'connector/$bridge/state'" in line:
            seen.append("online" if "(6 bytes)" in line else "state")
    return seen


def test_online_is_published_only_after_the_command_subscriptions_are_in_place(
    emulator: Emulator,
) -> None:
    """A client that sends a command the moment it sees `online` must be heard, even when
    the bridge's session is brand new (the broker drops what nobody subscribed to). The
    broker's log proves the order, on the first connect and on a reconnect."""
    with MosquittoBroker(extra_config="log_type debug\n") as broker:
        settings = bridge_settings(emulator, broker)
        with running_bridge(settings) as bridge:
            first = _bridge_packets(broker.log_path.read_text(), settings.mqtt_client_id)
            assert first[:2] == ["subscribe", "online"], first
            broker.stop()
            mark = len(broker.log_path.read_text())
            broker.start()
            assert bridge.mqtt.wait_connected(15)
            assert bridge.mqtt.subscribed_event.wait(15)

            # (both may still be set from before the restart, and `online` is retained:
            # the broker's log says when the bridge has been through it again)
            def since_restart() -> list[str]:
                log = broker.log_path.read_text()[mark:]
                return _bridge_packets(log, settings.mqtt_client_id)

            assert wait_until(lambda: "online" in since_restart(), 15), since_restart()
            again = since_restart()
            assert again[:2] == ["subscribe", "online"], again
