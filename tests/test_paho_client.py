"""bridge/downstream/paho_client.py: paho's client (FastClient) with cheap PUBACKs, read-ahead
and lean PUBLISH properties. Checked byte for byte against paho's own encoder, and end to
end against a real Mosquitto (both PUBACK paths, bursts of packets read ahead, MQTT 5 and
3.1.1)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import (
    MQTTException,  # where paho 2.1 and 2.2 both have it
    Properties,
)

from bridge.downstream import paho_client
from bridge.downstream.paho_client import ReadAheadSocket, publish_properties
from tests.support.broker import MosquittoBroker


def test_speedups_are_on_for_the_installed_paho() -> None:
    # A paho release outside TESTED_PAHO silently gets the plain client: this test says
    # so, so that whoever upgrades paho re-checks the overridden private methods.
    assert paho_client.SPEEDUPS, f"paho {paho.mqtt.__version__} is not in {paho_client.TESTED_PAHO}"
    assert paho_client.Client is paho_client.FastClient
    print(f"paho-mqtt {paho.mqtt.__version__}: speed-ups on")  # shown with -s (CI's paho run)


def _paho_properties(corr: bytes | None, ct: str | None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if corr is not None:
        props.CorrelationData = corr
    if ct is not None:
        props.ContentType = ct
    return props


@settings(max_examples=300, deadline=None)
@given(
    corr=st.none() | st.binary(max_size=300),
    # MQTT strings exclude U+0000 and U+FEFF (paho's decoder refuses them; surrogates
    # cannot be encoded at all)
    ct=st.none()
    | st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ufeff"), max_size=200
    ),
)
def test_publish_properties_pack_like_paho(corr: bytes | None, ct: str | None) -> None:
    lean = publish_properties(corr, ct)
    assert lean.pack() == _paho_properties(corr, ct).pack()
    # and read back by paho's decoder, field by field
    back = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    back.unpack(lean.pack())
    assert getattr(back, "CorrelationData", None) == corr
    assert getattr(back, "ContentType", None) == ct


def test_publish_properties_behave_as_paho_properties() -> None:
    lean = publish_properties(b"\x00\x07", "application/json")
    assert isinstance(lean, Properties)
    assert lean.CorrelationData == b"\x00\x07"
    assert lean.ContentType == "application/json"
    assert not lean.isEmpty()
    assert lean.json() == {"CorrelationData": "0007", "ContentType": "application/json"}
    # a property set later (paho's checks apply) is packed by paho's general packer
    lean.MessageExpiryInterval = 30
    full = _paho_properties(b"\x00\x07", "application/json")
    full.MessageExpiryInterval = 30
    assert lean.pack() == full.pack()
    with pytest.raises(MQTTException):
        lean.SessionExpiryInterval = 5  # not a PUBLISH property: paho refuses, as before


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    b.setblocking(False)
    return a, b


def test_read_ahead_serves_small_reads_from_one_large_one() -> None:
    writer, reader = _pair()
    with writer, reader:
        sock = ReadAheadSocket(reader)
        data = bytes(range(256)) * 4
        writer.sendall(data)
        time.sleep(0.05)
        got = [sock.recv(1), sock.recv(1)]
        assert sock.pending() == len(data) - 2  # the rest was read ahead
        got.append(sock.recv(100))
        got.append(sock.recv(10_000))  # asks more than is buffered: gets the rest
        assert b"".join(got) == data
        assert sock.pending() == 0
        with pytest.raises(BlockingIOError):
            sock.recv(1)  # nothing buffered, nothing in the kernel: as the socket itself
        writer.close()
        assert sock.recv(1) == b""  # end of file passes through
        assert sock.fileno() == reader.fileno()  # everything else is the socket's


def test_read_ahead_returns_a_short_read_as_it_comes() -> None:
    writer, reader = _pair()
    with writer, reader:
        sock = ReadAheadSocket(reader)
        writer.sendall(b"abc")
        time.sleep(0.05)
        assert sock.recv(10) == b"abc"
        assert sock.pending() == 0


def _connect(broker: MosquittoBroker, protocol: int, name: str) -> paho_client.FastClient:
    client = paho_client.FastClient(
        CallbackAPIVersion.VERSION2, client_id=f"{name}-{protocol}", protocol=protocol
    )
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert connected.wait(10)
    return client


PROTOCOLS = [pytest.param(mqtt.MQTTv5, id="v5"), pytest.param(mqtt.MQTTv311, id="v311")]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_burst_of_messages_arrives_whole_and_in_order(
    shared_broker: MosquittoBroker, protocol: int
) -> None:
    n = 3000
    got: list[tuple[str, bytes, Any]] = []
    done = threading.Event()
    sub = _connect(shared_broker, protocol, "burst-sub")
    pub = _connect(shared_broker, protocol, "burst-pub")
    try:
        assert isinstance(sub.socket(), ReadAheadSocket)

        def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
            corr = getattr(msg.properties, "CorrelationData", None)
            got.append((msg.topic, msg.payload, corr))
            if len(got) == n:
                done.set()

        subscribed = threading.Event()
        sub.on_message = on_message
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.subscribe(f"burst/{protocol}/#", qos=1)
        assert subscribed.wait(10)
        v5 = protocol == mqtt.MQTTv5
        infos = []
        for k in range(n):
            props = publish_properties(k.to_bytes(4, "big"), "text/plain") if v5 else None
            payload = (b"x" * (k % 300)) + str(k).encode()  # sizes across the length bytes
            infos.append(pub.publish(f"burst/{protocol}/{k % 7}", payload, 1, properties=props))
        assert done.wait(30), f"{len(got)} of {n} arrived"
        for info in infos:
            info.wait_for_publish(10)
        assert all(info.is_published() for info in infos)
        for k, (topic, payload, corr) in enumerate(got):
            assert topic == f"burst/{protocol}/{k % 7}"
            assert payload == (b"x" * (k % 300)) + str(k).encode()
            assert corr == (k.to_bytes(4, "big") if v5 else None)
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()


def test_both_puback_paths_report_the_broker_reason(
    broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mosquitto answers an MQTT 5 QoS 1 PUBLISH that nobody subscribed to with reason
    16 "No matching subscribers" (a 3-byte PUBACK) and one with a subscriber with a bare
    2-byte PUBACK: both take the fast path, complete the message and reach on_publish
    with the right reason code."""
    reasons: dict[int, int] = {}
    acked = threading.Event()
    decoded: list[str] = []  # PUBACKs that went through paho's own decoder
    paho_handler = mqtt.Client._handle_pubackcomp

    def counting(self: mqtt.Client, cmd: Any) -> Any:
        decoded.append(cmd)
        return paho_handler(self, cmd)

    monkeypatch.setattr(mqtt.Client, "_handle_pubackcomp", counting)
    pub = _connect(broker, mqtt.MQTTv5, "reasons-pub")
    sub = _connect(broker, mqtt.MQTTv5, "reasons-sub")
    try:

        def on_publish(c: mqtt.Client, u: Any, mid: int, rc: Any, props: Any) -> None:
            reasons[mid] = rc.value
            if len(reasons) == 2:
                acked.set()

        pub.on_publish = on_publish
        nobody = pub.publish("reasons/nobody", b"1", qos=1)
        subscribed = threading.Event()
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.subscribe("reasons/someone", qos=1)
        assert subscribed.wait(10)
        someone = pub.publish("reasons/someone", b"2", qos=1)
        assert acked.wait(10)
        assert reasons[nobody.mid] == 16
        assert reasons[someone.mid] == 0
        nobody.wait_for_publish(5)  # marked just after on_publish returns
        someone.wait_for_publish(5)
        assert nobody.is_published() and someone.is_published()
        assert decoded == []  # neither needed paho's decoder
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()


# ---- received PUBLISH properties ------------------------------------------------------

_MQTT_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ufeff"), max_size=80
)
_PROPERTY_VALUES: dict[str, Any] = {
    "PayloadFormatIndicator": st.integers(0, 1),
    "MessageExpiryInterval": st.integers(0, 2**32 - 1),
    "ContentType": _MQTT_TEXT,
    "ResponseTopic": _MQTT_TEXT,
    "CorrelationData": st.binary(max_size=300),
    # not taken by the lean decoder: paho's decides
    "TopicAlias": st.integers(1, 65535),
    "UserProperty": st.tuples(_MQTT_TEXT, _MQTT_TEXT),
    "SubscriptionIdentifier": st.integers(1, 268_435_455),
}
_LEAN_NAMES = {"PayloadFormatIndicator", "MessageExpiryInterval", "ContentType"}
_LEAN_NAMES |= {"ResponseTopic", "CorrelationData"}


def _fields(props: Properties) -> dict[str, Any]:
    return {k: v for k, v in vars(props).items() if k not in ("packetType", "types", "names")}


def _fields_of(props: Properties) -> dict[str, Any]:
    fields = _fields(props)
    fields.pop("properties", None)  # paho's table, set on the instance by paho
    return fields


@settings(max_examples=300, deadline=None)
@given(
    chosen=st.fixed_dictionaries({}, optional=_PROPERTY_VALUES),
    head=st.binary(max_size=5),
    payload=st.binary(max_size=50),
)
def test_received_properties_decode_like_paho(
    chosen: dict[str, Any], head: bytes, payload: bytes
) -> None:
    sent = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in chosen.items():
        setattr(sent, name, value)
    packet = head + sent.pack() + payload
    theirs = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    _, used = theirs.unpack(packet[len(head) :])
    decoded = paho_client.unpack_publish_properties(packet, len(head))
    if not set(chosen) <= _LEAN_NAMES or used > 128:
        assert decoded is None  # left to paho: a field of the other kind, or a long set
        return
    assert decoded is not None
    ours, end = decoded
    assert end == len(head) + used
    assert packet[end:] == payload
    assert _fields_of(ours) == _fields_of(theirs)
    assert str(ours) == str(theirs)
    assert isinstance(ours, Properties)


@settings(max_examples=500, deadline=None)
@given(junk=st.binary(max_size=40))
def test_received_properties_leave_what_is_odd_to_paho(junk: bytes) -> None:
    """Whatever bytes come, the lean decoder either agrees with paho or declines."""
    decoded = paho_client.unpack_publish_properties(junk, 0)
    if decoded is None:
        return
    theirs = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    _, used = theirs.unpack(junk)  # must not raise: the lean decoder took it
    ours, end = decoded
    assert end == used
    assert _fields_of(ours) == _fields_of(theirs)


def test_received_properties_decline_repeats_and_bad_strings() -> None:
    def one(ident: int, value: bytes) -> bytes:
        return bytes([ident]) + value

    corr = one(9, b"\x00\x01a")
    cases = {
        "repeat": corr + corr,
        "null in a string": one(3, b"\x00\x01\x00"),
        "BOM in a string": one(8, b"\x00\x03\xef\xbb\xbf"),
        "not UTF-8": one(3, b"\x00\x01\xff"),
        "flag 2": one(1, b"\x02"),
        "cut short": one(2, b"\x00\x00"),
        "string past the end": one(3, b"\x00\x09ab"),
        "not a PUBLISH property": one(17, b"\x00\x00\x00\x01"),
    }
    for what, body in cases.items():
        packet = bytes([len(body)]) + body
        assert paho_client.unpack_publish_properties(packet, 0) is None, what


def test_received_commands_keep_every_property(
    broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through Mosquitto: PUBLISHes at QoS 0, 1 and 2 with Response Topic, Correlation
    Data, Message Expiry (a command) take the lean path; one with a User Property takes
    paho's; all arrive whole."""
    fallbacks: list[bytes] = []
    paho_handler = mqtt.Client._handle_publish

    def counting(self: mqtt.Client) -> Any:
        fallbacks.append(self._in_packet["packet"])
        return paho_handler(self)

    monkeypatch.setattr(mqtt.Client, "_handle_publish", counting)
    got: list[mqtt.MQTTMessage] = []
    arrived = threading.Event()
    sub = _connect(broker, mqtt.MQTTv5, "props-sub")
    pub = _connect(broker, mqtt.MQTTv5, "props-pub")
    try:

        def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
            got.append(msg)
            if len(got) == 4:
                arrived.set()

        subscribed = threading.Event()
        sub.on_message = on_message
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.subscribe("props/#", qos=2)
        assert subscribed.wait(10)
        command = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        command.ResponseTopic = "props/lamp/set/reply"
        command.CorrelationData = b"\x01\x02"
        command.MessageExpiryInterval = 60
        tagged = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        tagged.UserProperty = [("a", "1"), ("b", "2")]
        pub.publish("props/lamp/set", b"50", qos=1, properties=command)
        pub.publish("props/tagged", b"t", qos=2, properties=tagged)
        pub.publish("props/plain", b"p", qos=0)
        pub.publish("props/exactly-once", b"2", qos=2, properties=publish_properties(b"\x09"))
        assert arrived.wait(10)
        by_topic = {m.topic: m for m in got}
        cmd = by_topic["props/lamp/set"]
        assert (cmd.payload, cmd.qos) == (b"50", 1)
        assert type(cmd.payload) is bytes  # as paho gives it (its buffer is a bytearray)
        assert type(cmd.properties.CorrelationData) is bytes
        assert cmd.properties.ResponseTopic == "props/lamp/set/reply"
        assert cmd.properties.CorrelationData == b"\x01\x02"
        assert 0 < cmd.properties.MessageExpiryInterval <= 60  # the broker counts it down
        assert by_topic["props/tagged"].properties.UserProperty == [("a", "1"), ("b", "2")]
        assert by_topic["props/tagged"].qos == 2
        assert by_topic["props/plain"].payload == b"p"
        assert not hasattr(by_topic["props/plain"].properties, "ResponseTopic")
        once = by_topic["props/exactly-once"]
        assert (once.qos, once.payload, once.properties.CorrelationData) == (2, b"2", b"\x09")
        assert len(fallbacks) == 1 and b"props/tagged" in fallbacks[0]  # the User Property
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()


def _acked_through(client: mqtt.Client, packet: bytes) -> list[tuple[int, Any, Any]]:
    """Feed one PUBACK ``packet`` (after the fixed header) to a client holding message 7
    in flight; what on_publish got."""
    seen: list[tuple[int, Any, Any]] = []
    client.on_publish = lambda c, u, mid, rc, props: seen.append((mid, rc, props))
    info = mqtt.MQTTMessageInfo(7)
    message = mqtt.MQTTMessage(mid=7, topic=b"t")
    message.qos, message.info = 1, info
    client._out_messages[7] = message
    client._inflight_messages = 1
    client._in_packet["command"] = 0x40
    client._in_packet["packet"] = bytearray(packet)
    client._in_packet["remaining_length"] = len(packet)  # what paho 2.1 reads
    client._handle_pubackcomp("PUBACK")
    return seen


def test_pubacks_with_properties_or_odd_reasons_take_paho_s_decoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[bytes] = []
    paho_handler = mqtt.Client._handle_pubackcomp

    def counting(self: mqtt.Client, cmd: Any) -> Any:
        decoded.append(bytes(self._in_packet["packet"]))
        return paho_handler(self, cmd)

    monkeypatch.setattr(mqtt.Client, "_handle_pubackcomp", counting)
    client = paho_client.FastClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    # reason 0x87 "Not authorized" with a Reason String property: paho's decoder
    reason_string = b"\x1f\x00\x04nope"
    seen = _acked_through(client, b"\x00\x07\x87" + bytes([len(reason_string)]) + reason_string)
    assert [(mid, rc.value, props.ReasonString) for mid, rc, props in seen] == [(7, 0x87, "nope")]
    assert len(decoded) == 1
    # the same reason with an empty property set, and alone: the fast path, same outcome
    for packet in (b"\x00\x07\x87\x00", b"\x00\x07\x87"):
        seen = _acked_through(client, packet)
        assert [(mid, rc.value, rc.getName()) for mid, rc, _ in seen] == [
            (7, 0x87, "Not authorized")
        ]
        assert len(decoded) == 1
    # a reason code PUBACK does not have: paho's decoder, which refuses it as before
    with pytest.raises(Exception) as ours:
        _acked_through(client, b"\x00\x07\x05")
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    with pytest.raises(type(ours.value)) as theirs:
        _acked_through(plain, b"\x00\x07\x05")
    assert str(ours.value) == str(theirs.value)
    assert len(decoded) == 3


def test_limit_in_flight_holds_back_what_is_past_the_limit_in_order() -> None:
    """What a reconnect marked for sending: the first ``limit`` stay marked, the rest wait
    in paho's queue; a QoS 2 message whose PUBLISH the broker has (PUBREL to resend) is
    never turned back into a PUBLISH. (Unit test of the state walk; the wire behaviour is
    tests/test_receive_maximum.py.)"""
    client = paho_client.FastClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pubrel, publish, queued = (
        mqtt.mqtt_ms_resend_pubrel,
        mqtt.mqtt_ms_publish,
        mqtt.mqtt_ms_queued,
    )

    def walk(states: list[int], limit: int) -> list[int]:
        client._out_messages.clear()
        for mid, state in enumerate(states, start=1):
            m = mqtt.MQTTMessage(mid, b"t")
            m.qos, m.state = 2 if state == pubrel else 1, state
            client._out_messages[mid] = m
        client.limit_in_flight(limit)
        assert client._max_inflight_messages == limit
        return [m.state for m in client._out_messages.values()]

    # A queued one before the limit is sent with the others.
    assert walk([pubrel, publish, queued, publish, publish], 3) == [
        pubrel, publish, publish, queued, queued
    ]  # fmt: skip
    assert walk([publish] * 4, 1) == [publish, queued, queued, queued]
    # paho would never resend a PUBREL after a queued message: over the limit, not stuck.
    assert walk([publish, publish, pubrel, publish], 1) == [publish, publish, pubrel, queued]
