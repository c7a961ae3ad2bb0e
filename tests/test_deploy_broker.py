"""The production broker set-up (deploy/mosquitto/) proves each of its rules, over TLS.

Mosquitto runs with deploy/mosquitto/mosquitto.conf itself, only its paths and ports
changed (``production_config`` refuses to run if the file no longer has the lines it
adapts), the ACL file byte for byte, a password file made here with mosquitto_passwd and
certificates made by tests/support/certs.py. Real paho clients verify the server's
certificate (CA file, host name) exactly as the bridge and its users will.

"Never receives" is proved without sleeping: a forbidden publish is acknowledged first
(QoS 1), then the watching subscriber makes a round trip to the broker (``barrier``).
Mosquitto routes a PUBLISH to every subscriber before it acknowledges it and writes each
connection's packets in order, so anything routed to the watcher arrives before the
answer to its round trip.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.simulator import Emulator
from tests.support.broker import MosquittoBroker, env_with_pythonpath
from tests.support.certs import CertKey, Pki, make_test_pki
from tests.support.ports import free_port

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"
PRODUCTION_CONF = DEPLOY / "mosquitto.conf"
PRODUCTION_ACL = DEPLOY / "acl"
BROKER_README = DEPLOY / "README.md"

BRIDGE_USER = "connector-bridge"  # the ACL's bridge block
CLIENT_USER = "mqtt-client"  # the ACL's client template block
ADDED_USER = "home-assistant"  # added by the README's procedure, in the fixture
STRANGER = "stranger"  # in the password file, but without a block in the ACL
TIMEOUT = 10.0
MAX_COMMAND_DEPTH = 6  # resource path levels the ACL grants commands for
NOT_AUTHORIZED = 135  # MQTT 5 reason code


# --- the production broker, adapted only in paths and ports --------------------------------


def production_config(
    text: str,
    *,
    tls_port: int,
    plain_port: int,
    files: dict[str, Path],
    require_certificate: bool | None = None,
) -> str:
    """deploy/mosquitto/mosquitto.conf with its paths and ports replaced, nothing else.

    ``files`` maps directives (password_file, acl_file, persistence_location, cafile,
    certfile, keyfile) to local paths. Both listeners move to free loopback ports.
    ``require_certificate`` flips the documented mutual-TLS switch.
    """
    found: dict[str, int] = {}

    def seen(key: str) -> None:
        found[key] = found.get(key, 0) + 1

    out = []
    for line in text.splitlines():
        key = line.split(" ", 1)[0]
        if key in files:
            suffix = "/" if key == "persistence_location" else ""
            line = f"{key} {files[key]}{suffix}"
            seen(key)
        elif line == "listener 8883":
            line = f"listener {tls_port} 127.0.0.1"
            seen("tls listener")
        elif line == "listener 1883 127.0.0.1":
            line = f"listener {plain_port} 127.0.0.1"
            seen("loopback listener")
        elif key == "require_certificate":
            if require_certificate is not None:
                line = f"require_certificate {str(require_certificate).lower()}"
            seen(key)
        out.append(line)
    expected = {*files, "tls listener", "loopback listener", "require_certificate"}
    wrong = {k: found.get(k, 0) for k in expected if found.get(k, 0) != 1}
    if wrong:
        raise AssertionError(f"{PRODUCTION_CONF} changed; lines found (want 1 each): {wrong}")
    return "\n".join(out) + "\n"


def make_password_file(path: Path, users: dict[str, str]) -> None:
    """A Mosquitto password file made by mosquitto_passwd (salted PBKDF2 hashes)."""
    for i, (user, password) in enumerate(users.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            ["mosquitto_passwd", *create, "-b", str(path), user, password],
            check=True,
            capture_output=True,
        )


def readme_add_client_acl_line() -> str:
    """The README's command that gives a new client user the template block's rights."""
    for line in BROKER_README.read_text().splitlines():
        if line.startswith("sed -n '/^user mqtt-client$/"):
            return line
    raise AssertionError(f"{BROKER_README} no longer shows how to add a client user")


def readme_home_assistant_acl_line() -> str:
    """The README's command that adds Home Assistant's two discovery lines."""
    for line in BROKER_README.read_text().splitlines():
        if line.startswith("printf '%s\\n' 'topic read homeassistant/"):
            return line
    raise AssertionError(f"{BROKER_README} no longer shows Home Assistant's ACL lines")


def add_users_as_the_readme_says(b: ProductionBroker) -> None:
    """ADDED_USER (home-assistant) gets its ACL block exactly the way the README tells an
    administrator: the client template, then Home Assistant's discovery lines."""
    for command in (readme_add_client_acl_line(), readme_home_assistant_acl_line()):
        command = command.replace("/etc/mosquitto/acl", str(b.acl_file))
        subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True)
    assert f"user {ADDED_USER}" in b.acl_file.read_text()


def hand_to_broker_user(*paths: Path) -> None:
    """Mosquitto started as root drops to its own user before it reads the password and
    ACL files (as in production, where they must be readable by that user): give it the
    files when the tests run as root."""
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        user = pwd.getpwnam("nobody")
    for top in paths:
        for p in [top, *top.rglob("*")] if top.is_dir() else [top]:
            os.chown(p, user.pw_uid, user.pw_gid)


class ProductionBroker(MosquittoBroker):
    """Mosquitto running deploy/mosquitto/mosquitto.conf with the shipped ACL file."""

    def __init__(
        self, pki: Pki, users: dict[str, str], *, require_certificate: bool | None = None
    ) -> None:
        super().__init__(port=free_port(), persistence=True, listener=False)
        self.tls_port = self.port
        self.plain_port = free_port()
        self.pki = pki
        self.users = dict(users)
        self.require_certificate = require_certificate
        # The broker's own copies: Mosquitto reads them after dropping privileges.
        self.certs = self.dir / "certs"
        self.certs.mkdir()
        for name in ("ca.crt", "server.crt", "server.key"):
            shutil.copyfile(pki.directory / name, self.certs / name)
        self.password_file = self.dir / "passwd"
        self.acl_file = self.dir / "acl"
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir()
        shutil.copyfile(PRODUCTION_ACL, self.acl_file)
        make_password_file(self.password_file, self.users)

    def _write_config(self) -> None:
        files = {
            "password_file": self.password_file,
            "acl_file": self.acl_file,
            "persistence_location": self.data_dir,
            "cafile": self.certs / "ca.crt",
            "certfile": self.certs / "server.crt",
            "keyfile": self.certs / "server.key",
        }
        text = production_config(
            PRODUCTION_CONF.read_text(),
            tls_port=self.tls_port,
            plain_port=self.plain_port,
            files=files,
            require_certificate=self.require_certificate,
        )
        self.config_path.write_text(text)

    def start(self) -> ProductionBroker:
        hand_to_broker_user(self.dir)
        super().start()
        return self


# --- a paho client whose results can be waited for -----------------------------------------


class Peer:
    """One MQTT client over TLS (server verification on) with waitable results."""

    def __init__(
        self,
        port: int,
        user: str | None,
        password: str | None,
        *,
        cafile: Path | None,
        protocol: MQTTProtocolVersion = mqtt.MQTTv5,
        client_cert: CertKey | None = None,
        context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.host, self.port = host, port
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{user or 'anonymous'}-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        if context is None and cafile is not None:
            context = ssl.create_default_context(cafile=str(cafile))
            if client_cert:
                context.load_cert_chain(str(client_cert.cert), str(client_cert.key))
        if context is not None:
            self.client.tls_set_context(context)
        self._cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.closed = False
        self.messages: list[mqtt.MQTTMessage] = []
        self._acks: dict[int, ReasonCode] = {}
        self._done_mids: set[int] = set()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_sub
        self.client.on_unsubscribe = self._on_sub

    # callbacks (paho's network thread)
    def _notify(self, change: Callable[[], None]) -> None:
        with self._cond:
            change()
            self._cond.notify_all()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._notify(lambda: setattr(self, "connack", rc))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        self._notify(lambda: setattr(self, "closed", True))

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        self._notify(lambda: self._acks.__setitem__(mid, rc))

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._notify(lambda: self.messages.append(msg))

    def _on_sub(self, _c: Any, _u: Any, mid: int, _rcs: Any, _p: Any) -> None:
        self._notify(lambda: self._done_mids.add(mid))

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(done, TIMEOUT):
                raise AssertionError(f"timed out after {TIMEOUT}s waiting for {what}")

    # actions
    def connect(self) -> ReasonCode | None:
        """The CONNACK's reason code, or None if the link closed without one."""
        self.client.connect(self.host, self.port, keepalive=30)
        # Driven by hand until the CONNACK: paho's background thread would retry a refused
        # connection after a back-off, and stopping it would wait for that back-off.
        deadline = time.monotonic() + TIMEOUT
        while self.connack is None and not self.closed:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {TIMEOUT}s waiting for CONNACK or close")
            self.client.loop(timeout=0.05)
        if self.connack is not None and not self.connack.is_failure:
            self.client.loop_start()
        return self.connack

    def connected(self) -> Peer:
        rc = self.connect()
        assert rc is not None and not rc.is_failure, f"connect refused: {rc}"
        return self

    def subscribe(self, topic_filter: str) -> None:
        _, mid = self.client.subscribe(topic_filter, qos=1)
        self._wait(lambda: mid in self._done_mids, f"SUBACK for {topic_filter}")

    def publish(
        self,
        topic: str,
        payload: bytes = b"x",
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code (MQTT 3.1.1: always 0)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        self._wait(lambda: info.mid in self._acks, f"PUBACK for {topic}")
        return self._acks[info.mid]

    def barrier(self) -> None:
        """A round trip to the broker: whatever it routed to us before has arrived."""
        _, mid = self.client.unsubscribe(f"barrier/{uuid.uuid4().hex}")
        self._wait(lambda: mid in self._done_mids, "UNSUBACK (barrier)")

    def wait_message(self, topic: str, payload: bytes | None = None) -> mqtt.MQTTMessage:
        """The first message on ``topic`` (with ``payload``, if given) since we connected."""

        def find() -> mqtt.MQTTMessage | None:
            return next(
                (
                    m
                    for m in self.messages
                    if m.topic == topic and (payload is None or m.payload == payload)
                ),
                None,
            )

        self._wait(lambda: find() is not None, f"a message on {topic}")
        found = find()
        assert found is not None
        return found

    def topics(self, *, live_only: bool = True) -> set[str]:
        """Topics received. ``live_only`` leaves out retained messages that other tests
        left behind: a publish that gets through reaches existing subscribers live
        (retain flag clear) even when it was sent retained."""
        with self._cond:
            return {m.topic for m in self.messages if not (live_only and m.retain)}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA, unrelated to the broker's, with its own server and client certificates."""
    return make_test_pki(tmp_path_factory.mktemp("foreign-pki"), ca_name="some other CA")


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    return {u: uuid.uuid4().hex for u in (BRIDGE_USER, CLIENT_USER, ADDED_USER, STRANGER)}


@pytest.fixture(scope="module")
def broker(pki: Pki, passwords: dict[str, str]) -> Iterator[ProductionBroker]:
    b = ProductionBroker(pki, passwords)
    add_users_as_the_readme_says(b)
    with b.start():
        yield b


@pytest.fixture
def peers(broker: ProductionBroker, pki: Pki, passwords: dict[str, str]) -> Iterator[Any]:
    """``peers(user, protocol=..., ...)`` makes clients of ``broker``; all closed after."""
    made: list[Peer] = []

    def make(user: str | None, password: str | None = None, **kw: Any) -> Peer:
        if user is not None and password is None:
            password = passwords.get(user)
        kw.setdefault("cafile", pki.ca_cert)
        peer = Peer(kw.pop("port", broker.tls_port), user, password, **kw)
        made.append(peer)
        return peer

    yield make
    for p in made:
        p.close()


def unique_ep() -> str:
    """A fresh endpoint name, so retained messages of one test never meet another."""
    return f"node-{uuid.uuid4().hex[:8]}"


# Topics only the bridge may publish (MQTT contract, shared/docs/design.md).
def device_data_topics(ep: str) -> list[str]:
    return [
        f"connector/{ep}/3303/0/5700",  # value
        f"connector/{ep}/3/0/7/0",  # value, 4-level path
        f"connector/{ep}/$state",
        f"connector/{ep}/$resources",
        f"connector/{ep}/3311/0/5850/set/reply",  # reply
        f"connector/{ep}/3/0/4/post/reply",
        f"connector/{ep}/3/0/0/get/reply",
        "connector/$bridge/state",
        "connector/$bridge/response/endpoints",
    ]


def command_topics(ep: str) -> list[str]:
    """Every command shape the ACL grants: three verbs, paths of 1..MAX levels."""
    paths = ["3", "3/0", "3311/0/5850", "3/0/7/0", "1/2/3/4/5", "1/2/3/4/5/6"]
    assert [p.count("/") + 1 for p in paths] == list(range(1, MAX_COMMAND_DEPTH + 1))
    topics = [f"connector/{ep}/{p}/{verb}" for p in paths for verb in ("set", "post", "get")]
    return [*topics, "connector/$bridge/request/endpoints", "connector/$bridge/request/info"]


PROTOCOLS = [pytest.param(mqtt.MQTTv5, id="mqtt5"), pytest.param(mqtt.MQTTv311, id="mqtt311")]


# --- authentication -----------------------------------------------------------------------


def test_the_production_config_changes_only_in_paths_and_ports(broker: ProductionBroker) -> None:
    shipped = PRODUCTION_CONF.read_text().splitlines()
    running = broker.config_path.read_text().splitlines()
    assert len(shipped) == len(running)
    changed = {a.split(" ", 1)[0] for a, b in zip(shipped, running, strict=True) if a != b}
    assert changed <= {
        "password_file", "acl_file", "persistence_location", "cafile", "certfile",
        "keyfile", "listener",
    }  # fmt: skip
    assert broker.acl_file.read_bytes().startswith(PRODUCTION_ACL.read_bytes())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_anonymous_client_is_refused(peers: Any, protocol: int) -> None:
    rc = peers(None, protocol=protocol).connect()
    assert rc is not None and rc.is_failure and rc.value == NOT_AUTHORIZED, rc


@pytest.mark.parametrize("user", [CLIENT_USER, BRIDGE_USER, "nobody-we-know"])
def test_wrong_password_or_unknown_user_is_refused(peers: Any, user: str) -> None:
    rc = peers(user, "not-the-password").connect()
    assert rc is not None and rc.is_failure and rc.value == NOT_AUTHORIZED, rc


# --- what the bridge's user may do ------------------------------------------------------


@pytest.mark.parametrize("reader_protocol", PROTOCOLS)
def test_bridge_publishes_device_data_and_client_users_read_it(
    peers: Any, reader_protocol: int
) -> None:
    ep = unique_ep()
    readers = [peers(u, protocol=reader_protocol).connected() for u in (CLIENT_USER, ADDED_USER)]
    for r in readers:
        r.subscribe("connector/#")
    bridge = peers(BRIDGE_USER).connected()
    for topic in device_data_topics(ep):
        payload = f"from the bridge: {topic}".encode()
        rc = bridge.publish(topic, payload, retain=topic.endswith(("$state", "$resources")))
        assert not rc.is_failure, f"{topic}: {rc}"
        for r in readers:
            assert r.wait_message(topic, payload).retain is False


def test_retained_state_reaches_a_client_that_subscribes_later(peers: Any) -> None:
    ep = unique_ep()
    bridge = peers(BRIDGE_USER).connected()
    assert not bridge.publish(f"connector/{ep}/$state", b"online", retain=True).is_failure
    late = peers(CLIENT_USER, protocol=mqtt.MQTTv311).connected()
    late.subscribe(f"connector/{ep}/+")
    msg = late.wait_message(f"connector/{ep}/$state", b"online")
    assert (msg.payload, msg.retain) == (b"online", True)


def test_replies_on_an_mqtt5_response_topic_under_the_prefix_reach_the_requester(
    peers: Any,
) -> None:
    app = peers(CLIENT_USER).connected()
    response_topic = f"connector/$reply/{CLIENT_USER}/{uuid.uuid4().hex[:6]}"
    app.subscribe(response_topic)
    bridge = peers(BRIDGE_USER).connected()
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = b"request-42"
    assert not bridge.publish(response_topic, b'{"ok": true}', properties=props).is_failure
    msg = app.wait_message(response_topic)
    assert msg.properties is not None
    assert msg.properties.CorrelationData == b"request-42"


def test_the_bridge_user_cannot_publish_outside_the_prefix(peers: Any) -> None:
    bridge = peers(BRIDGE_USER).connected()
    for topic in ("elsewhere/reply", "$SYS/broker/fake", "connectorX/a/b"):
        assert bridge.publish(topic).value == NOT_AUTHORIZED, topic


# --- what client users may and may not do ------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_user_cannot_publish_device_data(peers: Any, protocol: int) -> None:
    ep = unique_ep()
    watcher = peers(BRIDGE_USER).connected()  # may read everything under the prefix
    watcher.subscribe("connector/#")
    app = peers(CLIENT_USER, protocol=protocol).connected()
    forbidden = [*device_data_topics(ep), f"connector/{ep}/3303/0/5700/set/reply"]
    for topic in forbidden:
        rc = app.publish(topic, b"forged", retain=topic.endswith("$state"))
        # MQTT 5 says why; MQTT 3.1.1 has no way to (its PUBACK has no reason code, paho
        # reports 0 "Success") and the broker drops the message silently.
        assert rc.value == (NOT_AUTHORIZED if protocol == mqtt.MQTTv5 else 0), f"{topic}: {rc}"
    allowed = f"connector/{ep}/3311/0/5850/set"
    assert not app.publish(allowed, b"1").is_failure
    watcher.wait_message(allowed)
    watcher.barrier()
    assert watcher.topics() & set(forbidden) == set()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_user_commands_reach_the_bridge(peers: Any, protocol: int) -> None:
    ep = unique_ep()
    bridge = peers(BRIDGE_USER).connected()
    bridge.subscribe("connector/#")
    app = peers(ADDED_USER, protocol=protocol).connected()
    for topic in command_topics(ep):
        assert not app.publish(topic, b"1").is_failure, topic
        bridge.wait_message(topic, b"1")


def test_commands_deeper_than_the_acl_limit_are_dropped(peers: Any) -> None:
    ep = unique_ep()
    bridge = peers(BRIDGE_USER).connected()
    bridge.subscribe("connector/#")
    app = peers(CLIENT_USER).connected()
    deep = f"connector/{ep}/" + "/".join("1234567"[: MAX_COMMAND_DEPTH + 1]) + "/set"
    assert len(deep.split("/")) - 3 == MAX_COMMAND_DEPTH + 1  # prefix, ep, verb
    assert app.publish(deep).value == NOT_AUTHORIZED
    bridge.barrier()
    assert deep not in bridge.topics()


def test_a_user_without_an_acl_block_can_neither_read_nor_write(peers: Any) -> None:
    ep = unique_ep()
    stranger = peers(STRANGER).connected()  # in the password file: it may connect
    stranger.subscribe("connector/#")  # Mosquitto grants SUBSCRIBE; delivery is checked
    assert stranger.publish(f"connector/{ep}/3/0/4/post").value == NOT_AUTHORIZED
    bridge = peers(BRIDGE_USER).connected()
    value = f"connector/{ep}/3303/0/5700"
    assert not bridge.publish(value, b"21.5").is_failure
    stranger.barrier()
    assert stranger.topics(live_only=False) == set()


# --- Home Assistant discovery --------------------------------------------------------------


def test_home_assistant_discovery_configs_come_from_the_bridge_only(peers: Any) -> None:
    """Only the bridge writes discovery configs (a forged config would put a fake device in
    Home Assistant); Home Assistant's user reads them and announces itself to the bridge;
    an ordinary client user does neither."""
    ep = unique_ep()
    config = f"homeassistant/switch/connector__{ep}/3311_0_5850/config"
    bridge = peers(BRIDGE_USER).connected()
    bridge.subscribe("homeassistant/status")
    ha = peers(ADDED_USER).connected()
    ha.subscribe("homeassistant/#")
    app = peers(CLIENT_USER).connected()
    app.subscribe("homeassistant/#")

    assert not bridge.publish(config, b'{"name": "x"}', retain=True).is_failure
    ha.wait_message(config)
    for forger in (app, ha):
        assert forger.publish(config, b'{"name": "forged"}').value == NOT_AUTHORIZED
    assert app.publish("homeassistant/status", b"online").value == NOT_AUTHORIZED
    assert bridge.publish("homeassistant/status", b"online").value == NOT_AUTHORIZED
    assert not ha.publish("homeassistant/status", b"online").is_failure
    bridge.wait_message("homeassistant/status", b"online")
    for reader in (app, ha):
        reader.barrier()
    assert app.topics(live_only=False) == set()
    assert [m.payload for m in ha.messages if m.topic == config] == [b'{"name": "x"}']
    assert not bridge.publish(config, b"", retain=True).is_failure  # remove the retained one


# --- TLS ----------------------------------------------------------------------------------


def test_plain_mqtt_on_the_tls_port_gets_no_connack(broker: ProductionBroker, peers: Any) -> None:
    # Raw bytes first: an MQTT 3.1.1 CONNECT (client id "x") must not get a CONNACK (0x20).
    connect = bytes([0x10, 13, 0, 4, *b"MQTT", 4, 2, 0, 30, 0, 1, *b"x"])
    with socket.create_connection(("127.0.0.1", broker.tls_port), timeout=TIMEOUT) as sock:
        sock.sendall(connect)
        try:
            answer = sock.recv(64)  # a TLS alert (0x15), or nothing: the broker hangs up
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"\x20"), answer
    # And a real client without TLS: the link closes before any CONNACK.
    plain = peers(CLIENT_USER, cafile=None)
    assert plain.connect() is None and plain.closed


def test_a_client_trusting_another_ca_refuses_the_server(peers: Any, foreign_pki: Pki) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        peers(CLIENT_USER, cafile=foreign_pki.ca_cert).connect()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_accepted(peers: Any, pki: Pki, version: ssl.TLSVersion) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.minimum_version = context.maximum_version = version
    peer = peers(CLIENT_USER, context=context).connected()
    ssl_sock = peer.client.socket()
    assert isinstance(ssl_sock, ssl.SSLSocket)
    assert ssl_sock.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]


def test_the_loopback_listener_still_requires_a_password(
    peers: Any, broker: ProductionBroker
) -> None:
    anonymous = peers(None, port=broker.plain_port, cafile=None).connect()
    assert anonymous is not None and anonymous.value == NOT_AUTHORIZED
    peers(CLIENT_USER, port=broker.plain_port, cafile=None).connected()


# --- mutual TLS (require_certificate true, the documented switch) -----------------------


@pytest.fixture(scope="module")
def mtls_broker(pki: Pki, passwords: dict[str, str]) -> Iterator[ProductionBroker]:
    b = ProductionBroker(pki, passwords, require_certificate=True)
    add_users_as_the_readme_says(b)
    with b.start():
        yield b


def _mtls_peer(request: pytest.FixtureRequest, broker: ProductionBroker, **kw: Any) -> Peer:
    peer = Peer(broker.tls_port, **kw)
    request.addfinalizer(peer.close)
    return peer


def test_mutual_tls_accepts_a_client_certificate_from_the_ca(
    request: pytest.FixtureRequest, mtls_broker: ProductionBroker, pki: Pki, passwords: Any
) -> None:
    peer = _mtls_peer(
        request, mtls_broker, user=BRIDGE_USER, password=passwords[BRIDGE_USER],
        cafile=pki.ca_cert, client_cert=pki.client,
    )  # fmt: skip
    peer.connected()


@pytest.mark.parametrize("cert", ["none", "foreign"])
def test_mutual_tls_refuses_a_missing_or_foreign_client_certificate(
    request: pytest.FixtureRequest,
    mtls_broker: ProductionBroker,
    pki: Pki,
    foreign_pki: Pki,
    passwords: Any,
    cert: str,
) -> None:
    peer = _mtls_peer(
        request, mtls_broker, user=BRIDGE_USER, password=passwords[BRIDGE_USER],
        cafile=pki.ca_cert, client_cert=foreign_pki.client if cert == "foreign" else None,
    )  # fmt: skip
    # TLS 1.3 finishes the client's side of the handshake before the server has checked
    # the client's certificate, so the refusal shows either at once or as a closed link.
    try:
        rc = peer.connect()
    except (ssl.SSLError, OSError):
        return
    assert rc is None and peer.closed


def test_mutual_tls_still_requires_the_password(
    request: pytest.FixtureRequest, mtls_broker: ProductionBroker, pki: Pki
) -> None:
    peer = _mtls_peer(
        request, mtls_broker, user=BRIDGE_USER, password="wrong",
        cafile=pki.ca_cert, client_cert=pki.client,
    )  # fmt: skip
    rc = peer.connect()
    assert rc is not None and rc.value == NOT_AUTHORIZED


# --- the bridge itself through this broker -------------------------------------------------


def bridge_environment(
    broker: ProductionBroker, secrets_dir: Path, *, client_cert: bool = False
) -> dict[str, str]:
    """The bridge's MQTT settings for ``broker``: its own user, the password in a file,
    TLS with the test CA (and the client certificate when ``client_cert``).

    Names: BRIDGE_MQTT_* and BRIDGE_TOPIC_PREFIX as in bridge/service/settings.py (TLS:
    BRIDGE_MQTT_TLS, BRIDGE_MQTT_TLS_CA, _CERT, _KEY; the password from a file with
    BRIDGE_MQTT_PASSWORD_FILE, as deploy/ hands it over).
    """
    password_file = secrets_dir / "mqtt-password"
    password_file.write_text(broker.users[BRIDGE_USER] + "\n")
    password_file.chmod(0o600)
    env = {
        "BRIDGE_MQTT_HOST": "127.0.0.1",  # in the server certificate's subjectAltName
        "BRIDGE_MQTT_PORT": str(broker.tls_port),
        "BRIDGE_MQTT_USERNAME": BRIDGE_USER,
        "BRIDGE_MQTT_PASSWORD_FILE": str(password_file),
        "BRIDGE_MQTT_TLS": "true",
        "BRIDGE_MQTT_TLS_CA": str(broker.pki.ca_cert),
        "BRIDGE_TOPIC_PREFIX": "connector",
    }
    if client_cert:
        env["BRIDGE_MQTT_TLS_CERT"] = str(broker.pki.client.cert)
        env["BRIDGE_MQTT_TLS_KEY"] = str(broker.pki.client.key)
    return env


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_bridge_environment_logs_in_as_the_bridge_user(
    request: pytest.FixtureRequest,
    broker: ProductionBroker,
    mtls_broker: ProductionBroker,
    tmp_path: Path,
    mutual: bool,
) -> None:
    """The hook's settings work: a client configured only from them is the bridge."""
    target = mtls_broker if mutual else broker
    env = bridge_environment(target, tmp_path, client_cert=mutual)
    context = ssl.create_default_context(cafile=env["BRIDGE_MQTT_TLS_CA"])
    if mutual:
        context.load_cert_chain(env["BRIDGE_MQTT_TLS_CERT"], env["BRIDGE_MQTT_TLS_KEY"])
    password = Path(env["BRIDGE_MQTT_PASSWORD_FILE"]).read_text().strip()
    peer = Peer(
        int(env["BRIDGE_MQTT_PORT"]), env["BRIDGE_MQTT_USERNAME"], password,
        cafile=None, context=context, host=env["BRIDGE_MQTT_HOST"],
    )  # fmt: skip
    request.addfinalizer(peer.close)
    peer.connected()
    assert not peer.publish(f"{env['BRIDGE_TOPIC_PREFIX']}/$bridge/state", b"online").is_failure


def wait_live(peer: Peer, topic: str, payload: bytes | None = None) -> mqtt.MQTTMessage:
    """The first message on ``topic`` published while ``peer`` was subscribed (not one
    retained from earlier)."""

    def find() -> mqtt.MQTTMessage | None:
        for m in peer.messages:
            if m.topic == topic and not m.retain and (payload is None or m.payload == payload):
                return m
        return None

    peer._wait(lambda: find() is not None, f"a live message on {topic}")
    found = find()
    assert found is not None
    return found


def start_bridge_process(env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """`connector-bridge run` (the image's entry point and sub-command) with only ``env``
    for settings (``--env-file ''``: no .env file); its output goes to files in ``cwd``."""
    with (cwd / "bridge.out").open("wb") as out, (cwd / "bridge.err").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--env-file", ""],
            env=env, cwd=cwd, stdout=out, stderr=err,
        )  # fmt: skip


def stop_bridge_process(proc: subprocess.Popen[bytes], cwd: Path) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = -9
    output = (cwd / "bridge.out").read_text(errors="replace")
    return code, output + (cwd / "bridge.err").read_text(errors="replace")


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_the_bridge_works_through_the_production_broker_with_its_own_user(
    broker: ProductionBroker,
    mtls_broker: ProductionBroker,
    pki: Pki,
    passwords: dict[str, str],
    emulator: Emulator,
    tmp_path: Path,
    mutual: bool,
) -> None:
    """`connector-bridge run` as deploy/ runs it: settings from the environment, the token
    and the MQTT password from files, TLS with the CA (and its client certificate under
    mutual TLS), the ACL's bridge user. A client user sees it online, reads a value,
    switches the light and gets the reply; SIGTERM publishes offline."""
    target = mtls_broker if mutual else broker
    token_file = tmp_path / "connector-token"
    token_file.write_text(emulator.token + "\n")
    token_file.chmod(0o600)
    env = {k: v for k, v in env_with_pythonpath().items() if not k.startswith("BRIDGE_")}
    env.update(bridge_environment(target, tmp_path, client_cert=mutual))
    env.update(
        BRIDGE_CONNECTOR_URL=emulator.url,
        BRIDGE_CONNECTOR_TOKEN_FILE=str(token_file),
        BRIDGE_MQTT_CLIENT_ID=f"deploy-bridge-{uuid.uuid4().hex[:8]}",
    )
    cert = pki.client if mutual else None

    def client() -> Peer:
        peer = Peer(
            target.tls_port, CLIENT_USER, passwords[CLIENT_USER],
            cafile=pki.ca_cert, client_cert=cert,
        )  # fmt: skip
        return peer.connected()

    app = client()
    ha = Peer(
        target.tls_port, ADDED_USER, passwords[ADDED_USER], cafile=pki.ca_cert, client_cert=cert
    ).connected()
    late: Peer | None = None
    proc = start_bridge_process(env, tmp_path)
    try:
        app.subscribe("connector/#")
        ha.subscribe("homeassistant/+/+/+/config")
        wait_live(app, "connector/$bridge/state", b"online")
        # A client that subscribes later gets the retained state.
        late = client()
        late.subscribe("connector/$bridge/state")
        retained = late.wait_message("connector/$bridge/state", b"online")
        assert retained.retain
        wait_live(app, "connector/node-001/3303/0/5700")
        light = "connector/light-001/3311/0/5850"
        assert not app.publish(f"{light}/set", b"1").is_failure
        reply = json.loads(wait_live(app, f"{light}/set/reply").payload)
        assert reply["ok"] is True, reply
        assert emulator.get_value("light-001", "/3311/0/5850") == b"1"
        wait_live(app, light, b"1")
        # Home Assistant discovery goes through the ACL too: HA's user sees the light.
        ha._wait(
            lambda: any("light-001" in m.topic for m in ha.messages),
            "a discovery config for light-001",
        )
        code, output = stop_bridge_process(proc, tmp_path)
        wait_live(app, "connector/$bridge/state", b"offline")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        app.close()
        ha.close()
        if late is not None:
            late.close()
    assert code == 0, output[-3000:]
    assert target.users[BRIDGE_USER] not in output
    assert emulator.token not in output
