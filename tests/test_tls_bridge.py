"""The bridge's MQTT connection over TLS: what it trusts, what it refuses, and its settings.

tests/test_bridge_mqtt.py covers the good path with a client certificate and a broker
signed by another CA; this file adds the default (verification on, system CAs), the host
name check, the insecure switch, mutual TLS without a certificate and setting errors.

A refusal is proved by what the bridge *did*, not by waiting for nothing to happen: the
TLS alert it sent. Mosquitto logs the alert it receives from a client that rejected its
certificate ("alert unknown ca", "alert bad certificate"); each test waits for that line in
the broker's log, then checks the bridge never got connected. Each refusal has a control
that changes one setting and connects, so the refusal is known to be about that setting.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.service.controller import Bridge
from bridge.service.settings import Settings, SettingsError, load_settings
from bridge.simulator import Emulator
from tests.support.bridge_harness import bridge_settings
from tests.support.broker import MosquittoBroker
from tests.support.certs import Pki, make_test_pki

pytestmark = pytest.mark.both_dialects

WAIT = 15.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    return make_test_pki(tmp_path_factory.mktemp("tls-pki"))


@pytest.fixture(scope="module")
def named_only(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A server certificate for the name ``localhost`` only (not the address 127.0.0.1)."""
    return make_test_pki(tmp_path_factory.mktemp("tls-named"), server_hosts=("localhost",))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("tls-foreign"), ca_name="some other CA")


@pytest.fixture(scope="module")
def emu(dialect: str) -> Iterator[Emulator]:
    with Emulator(token="tok-tls", pull_timeout=1.0) as e:
        yield e


def tls_broker(pki: Pki, *, require_certificate: bool = False) -> MosquittoBroker:
    """Mosquitto with TLS on its one listener. The broker picks the port itself (and picks
    another if a parallel run took it); the TLS lines apply to that listener, the last one
    defined before them."""
    config = (
        f"user root\n"
        f"cafile {pki.ca_cert}\ncertfile {pki.server.cert}\nkeyfile {pki.server.key}\n"
        f"require_certificate {str(require_certificate).lower()}\n"
    )
    return MosquittoBroker(extra_config=config)


def broker_log(broker: MosquittoBroker) -> str:
    return broker.log_path.read_text(errors="replace")


def wait_for_log(broker: MosquittoBroker, text: str, timeout: float = WAIT) -> None:
    end = time.monotonic() + timeout
    while text not in broker_log(broker):
        if time.monotonic() > end:
            raise AssertionError(f"{text!r} not in the broker's log:\n{broker_log(broker)[-2000:]}")
        time.sleep(0.02)


def settings(emu: Emulator, broker: MosquittoBroker, **kw: Any) -> Settings:
    return bridge_settings(emu, broker, **kw)


def assert_refused(emu: Emulator, broker: MosquittoBroker, alert: str, **kw: Any) -> None:
    bridge = Bridge(settings(emu, broker, **kw)).start()
    try:
        wait_for_log(broker, alert)
        assert not bridge.mqtt.connected and bridge.mqtt.stats["connects"] == 0
    finally:
        bridge.stop()


def assert_connects(emu: Emulator, broker: MosquittoBroker, **kw: Any) -> None:
    bridge = Bridge(settings(emu, broker, **kw)).start()
    try:
        assert bridge.mqtt.wait_connected(WAIT), broker_log(broker)[-2000:]
    finally:
        bridge.stop()


UNKNOWN_CA = "alert unknown ca"
BAD_CERTIFICATE = "alert bad certificate"


# --- server verification ---------------------------------------------------------------


def test_verification_is_on_by_default_with_the_systems_cas(emu: Emulator, pki: Pki) -> None:
    assert Settings.model_fields["mqtt_tls_verify"].default is True
    with tls_broker(pki) as broker:
        # mqtt_tls alone: the system's CAs, which do not know the test CA.
        assert_refused(emu, broker, UNKNOWN_CA, mqtt_host="localhost", mqtt_tls=True)
        # Control: the CA file setting makes exactly this broker trusted.
        assert_connects(emu, broker, mqtt_host="localhost", mqtt_tls_ca=str(pki.ca_cert))


def test_a_certificate_from_another_ca_is_refused(emu: Emulator, pki: Pki, foreign: Pki) -> None:
    with tls_broker(pki) as broker:
        assert_refused(
            emu, broker, UNKNOWN_CA, mqtt_host="localhost", mqtt_tls_ca=str(foreign.ca_cert)
        )


def test_a_certificate_for_another_host_name_is_refused(emu: Emulator, named_only: Pki) -> None:
    ca = str(named_only.ca_cert)
    with tls_broker(named_only) as broker:
        # The certificate names "localhost"; the bridge asks for 127.0.0.1.
        assert_refused(emu, broker, BAD_CERTIFICATE, mqtt_host="127.0.0.1", mqtt_tls_ca=ca)
        assert_connects(emu, broker, mqtt_host="localhost", mqtt_tls_ca=ca)


def test_the_insecure_switch_turns_verification_off(emu: Emulator, pki: Pki, foreign: Pki) -> None:
    """BRIDGE_MQTT_TLS_VERIFY=false accepts any certificate (for a lab, never production)."""
    with tls_broker(pki) as broker:
        assert_connects(
            emu, broker, mqtt_host="127.0.0.1", mqtt_tls_ca=str(foreign.ca_cert),
            mqtt_tls_verify=False,
        )  # fmt: skip


# --- mutual TLS -----------------------------------------------------------------------------


def test_mutual_tls_refuses_a_bridge_without_a_client_certificate(emu: Emulator, pki: Pki) -> None:
    ca = str(pki.ca_cert)
    with tls_broker(pki, require_certificate=True) as broker:
        bridge = Bridge(settings(emu, broker, mqtt_host="localhost", mqtt_tls_ca=ca)).start()
        try:
            wait_for_log(broker, "peer did not return a certificate")
            assert not bridge.mqtt.connected and bridge.mqtt.stats["connects"] == 0
        finally:
            bridge.stop()
        assert_connects(
            emu, broker, mqtt_host="localhost", mqtt_tls_ca=ca,
            mqtt_tls_cert=str(pki.client.cert), mqtt_tls_key=str(pki.client.key),
        )  # fmt: skip


def test_mutual_tls_refuses_a_client_certificate_from_another_ca(
    emu: Emulator, pki: Pki, foreign: Pki
) -> None:
    with tls_broker(pki, require_certificate=True) as broker:
        bridge = Bridge(
            settings(
                emu, broker, mqtt_host="localhost", mqtt_tls_ca=str(pki.ca_cert),
                mqtt_tls_cert=str(foreign.client.cert), mqtt_tls_key=str(foreign.client.key),
            )
        ).start()  # fmt: skip
        try:
            wait_for_log(broker, "certificate verify failed")
            assert not bridge.mqtt.connected and bridge.mqtt.stats["connects"] == 0
        finally:
            bridge.stop()


# --- settings ---------------------------------------------------------------------------------


BASE = {"connector_url": "http://127.0.0.1:1", "connector_token": "tok"}


def settings_error(**kw: Any) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(None, env_file=None, overrides={**BASE, **kw})
    return str(info.value)


def test_tls_setting_errors_name_the_setting(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "missing.crt"
    assert "BRIDGE_MQTT_TLS_CA" in settings_error(mqtt_tls_ca=str(missing))
    assert str(missing) in settings_error(mqtt_tls_ca=str(missing))
    assert "BRIDGE_MQTT_TLS_CERT" in settings_error(mqtt_tls_cert=str(missing))
    text = settings_error(mqtt_tls_key=str(pki.client.key))
    assert "BRIDGE_MQTT_TLS_KEY" in text and "BRIDGE_MQTT_TLS_CERT" in text
    assert "BRIDGE_MQTT_TLS_CA" in settings_error(mqtt_tls_ca=str(tmp_path))  # a directory


def test_tls_is_on_when_a_ca_or_client_certificate_is_given(pki: Pki) -> None:
    def tls(**kw: Any) -> bool:
        return load_settings(None, env_file=None, overrides={**BASE, **kw}).tls_enabled

    assert not tls()
    assert tls(mqtt_tls=True)
    assert tls(mqtt_tls_ca=str(pki.ca_cert))
    assert tls(mqtt_tls_cert=str(pki.client.cert), mqtt_tls_key=str(pki.client.key))
