"""paho-mqtt's client with its costliest per-message steps made cheap.

Profiling the bridge under load (``connector-bridge bench``, yappi and per-thread CPU of
the bridge process) put paho's network thread at nearly half of the bridge's CPU, much of
it in places that do far more work than the common packet needs:

- **Every PUBACK** became a :class:`~paho.mqtt.reasoncodes.ReasonCode` and a
  :class:`~paho.mqtt.properties.Properties` object, each building its lookup tables
  anew, for a two-byte packet (5 PUBACKs per endpoint at start-up, one per command
  reply and one per value published). A PUBACK of two bytes (packet id
  only: success) or three (and a reason code, no properties: Mosquitto's 16 "No matching
  subscribers" for a value nobody subscribed to) now goes straight to paho's own
  completion with shared objects; any other PUBACK takes paho's full decoder.
- **Every received MQTT 5 PUBLISH** had its properties decoded by paho's table walks
  (a command's Response Topic and Correlation Data): :func:`unpack_publish_properties`
  reads the common ones directly and leaves the rest (User Property, a repeat, anything
  malformed) to paho.
- **Every read** was a system call for one byte (the packet type), one per byte of the
  remaining length, then one for the rest: three or more calls per packet, each releasing
  and re-taking the GIL. :class:`ReadAheadSocket` reads what the kernel has (up to 64 KiB)
  and serves paho's small reads from it; its ``pending()`` tells paho's loop that bytes
  wait (the same duck-typed hook paho uses for a TLS socket's buffered record).
- **Every MQTT 5 PUBLISH property set** made by the bridge (a reply's Correlation Data
  and Content Type) built paho's tables and packed them by name lookups:
  :func:`publish_properties` makes a :class:`Properties` whose tables are shared by the
  class and whose two fields are packed directly (byte-identical, tested).

The README's "Performance" section has what each of these saves. One addition is about
correctness, not speed: :meth:`FastClient.limit_in_flight` applies
the broker's Receive Maximum, which paho ignores, also to what paho resends after a
reconnect.

**All of the bridge's access to paho's private state is in this module**, and it is behind
one version check (:data:`SPEEDUPS`, from :data:`TESTED_PAHO`): :data:`Client` is
:class:`FastClient` on a paho version this was written and tested against, and
:class:`PlainClient` (paho as it is: no paho method overridden, nothing private touched)
on any other. Both answer the few questions the MQTT link asks of paho
(:meth:`PlainClient.unsent_packets`, :meth:`PlainClient.unacknowledged`,
:meth:`PlainClient.limit_in_flight`); the plain client answers them from paho's public
API, which knows less (see :class:`PlainClient`). tests/test_paho_client.py checks
byte-for-byte agreement with paho's own encoder and decoder, and the whole suite runs on
:data:`Client`.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any, Literal

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

TESTED_PAHO = ("2.1.", "2.2.")
PAHO_VERSION = str(getattr(paho.mqtt, "__version__", ""))
# The one version check: FastClient and the lean properties only on these versions.
SPEEDUPS = PAHO_VERSION.startswith(TESTED_PAHO)
READ_AHEAD = 65536  # bytes asked of the kernel per read


class ReadAheadSocket:
    """A socket whose reads come from a buffer filled by one large ``recv``.

    Everything but ``recv`` and ``pending`` is the wrapped socket's (``__getattr__``), so
    ``select`` (``fileno``), ``send``, ``close`` and ``setsockopt`` work unchanged.
    """

    __slots__ = ("_buf", "_pos", "sock")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos < len(buf):
            end = pos + n
            if end >= len(buf):
                self._buf, self._pos = b"", 0
                return buf[pos:] if pos else buf
            self._pos = end
            return buf[pos:end]
        data: bytes = self.sock.recv(max(n, READ_AHEAD))  # raises as the socket would
        if len(data) <= n:
            return data
        self._buf, self._pos = data, n
        return data[:n]

    def pending(self) -> int:
        """Bytes already read and not yet taken (plus a TLS socket's own)."""
        inner = self.sock.pending() if hasattr(self.sock, "pending") else 0
        return len(self._buf) - self._pos + inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class _PublishProperties(Properties):
    """PUBLISH properties with paho's tables shared by the class, not built per object."""

    def __init__(self) -> None:
        # The tables (types, names, properties) are class attributes: see _share_tables.
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)

    def pack(self) -> bytes:
        if not self.__dict__.keys() <= _LEAN_FIELDS:
            # someone set another property: paho's general packer
            packed: bytes = super().pack()  # type: ignore[no-untyped-call]
            return packed
        body = b""
        content_type = self.__dict__.get("ContentType")
        if content_type is not None:
            raw = content_type.encode("utf-8")
            body += b"\x03" + len(raw).to_bytes(2, "big") + raw
        correlation = self.__dict__.get("CorrelationData")
        if correlation is not None:
            body += b"\x09" + len(correlation).to_bytes(2, "big") + correlation
        return _vbi(len(body)) + body


_LEAN_FIELDS = frozenset({"packetType", "ContentType", "CorrelationData"})


def _share_tables() -> None:
    template = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name in ("types", "names", "properties"):
        setattr(_PublishProperties, name, getattr(template, name))


_share_tables()


def _vbi(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def plain_publish_properties(
    correlation_data: bytes | None = None, content_type: str | None = None
) -> Properties:
    """PUBLISH properties carrying these two fields, made by paho's public API."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if correlation_data is not None:
        props.CorrelationData = correlation_data
    if content_type is not None:
        props.ContentType = content_type
    return props


def lean_publish_properties(
    correlation_data: bytes | None = None, content_type: str | None = None
) -> Properties:
    """PUBLISH properties carrying these two fields; cheap to make and to pack."""
    lean = _PublishProperties()
    # paho's __setattr__ checks the name against its tables; these two are known good.
    if correlation_data is not None:
        lean.__dict__["CorrelationData"] = bytes(correlation_data)
    if content_type is not None:
        lean.__dict__["ContentType"] = str(content_type)
    return lean


# PUBLISH properties decoded by :func:`unpack_publish_properties`: identifier -> (name,
# kind). Each may appear once and none has a range check in paho's setter (Payload Format
# Indicator's 0/1 is checked here). Anything else (User Property, Subscription
# Identifier, Topic Alias, a repeat, a value cut short) is left to paho's decoder.
_STRING, _BINARY, _INT32, _FLAG = range(4)
_LEAN_UNPACK = {
    1: ("PayloadFormatIndicator", _FLAG),
    2: ("MessageExpiryInterval", _INT32),
    3: ("ContentType", _STRING),
    8: ("ResponseTopic", _STRING),
    9: ("CorrelationData", _BINARY),
}
_NOT_IN_MQTT_STRINGS = ("\x00", "\ufeff")  # paho refuses these (surrogates cannot decode)


def unpack_publish_properties(packet: bytes, start: int) -> tuple[Properties, int] | None:
    """The properties of a received PUBLISH that begin at ``packet[start]``, and the offset
    of the payload; None where paho's own decoder must decide (see ``_LEAN_UNPACK``).

    paho's :meth:`Properties.unpack` finds each name by walking its tables and checks each
    assignment against them; here the common ones are read directly (the README's
    "Performance" section has both costs). The result is a :class:`Properties` equal field
    by field to paho's (tests/test_paho_client.py holds them side by side).
    """
    size = len(packet)
    if start >= size or packet[start] & 0x80:
        return None  # no length byte, or a length of 128 or more: paho's
    end = start + 1 + packet[start]
    if end > size:
        return None
    props = _PublishProperties()
    fields = props.__dict__
    pos = start + 1
    while pos < end:
        known = _LEAN_UNPACK.get(packet[pos])
        if known is None:
            return None
        name, kind = known
        if name in fields:
            return None  # a repeat: paho refuses it
        pos += 1
        value: Any
        if kind == _FLAG:
            if pos >= end or packet[pos] > 1:
                return None
            value, pos = packet[pos], pos + 1
        elif kind == _INT32:
            if pos + 4 > end:
                return None
            value, pos = int.from_bytes(packet[pos : pos + 4], "big"), pos + 4
        else:
            if pos + 2 > end:
                return None
            length = (packet[pos] << 8) | packet[pos + 1]
            pos += 2
            if pos + length > end:
                return None
            value = packet[pos : pos + length]
            pos += length
            if kind == _STRING:
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    return None
                if any(c in value for c in _NOT_IN_MQTT_STRINGS):
                    return None
        fields[name] = value
    return props, end


def _no_delay(sock: Any) -> None:
    """Small packets go out at once (paho leaves Nagle's algorithm on): with Nagle a
    command's reply, written right after its PUBACK, waits for the broker's delayed TCP
    acknowledgement, 40 ms on Linux."""
    if isinstance(sock, socket.socket):  # not paho's websocket wrapper
        with contextlib.suppress(OSError):  # a Unix socket has no Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class PlainClient(mqtt.Client):
    """paho's client as it is, with the link's questions answered from its public API.

    It overrides no paho method and touches nothing private (tests/test_paho_client.py
    checks that), so it works on any paho 2.x. What the public API cannot tell or do:

    - :meth:`unsent_packets` only knows whether paho's socket write queue is empty, so
      a QoS 0 publisher is not held back while paho's socket queue grows (QoS 1/2 still
      are: paho refuses past ``max_queued_messages``);
    - :meth:`unacknowledged` is not known (always 0, :attr:`speedups` False): waiting for
      QoS 1/2 acknowledgements (``drain``) becomes waiting for them to be written, and
      after a reconnect the outbox does not wait for paho's resends to be acknowledged;
    - :meth:`limit_in_flight` cannot change paho's limit on an open connection, so the
      broker's Receive Maximum is not applied (only ``mqtt_max_inflight``).

    TCP_NODELAY is set through paho's public ``on_socket_open`` callback.
    """

    speedups = False  # True: the gauges are exact (FastClient)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_socket_open = lambda client, userdata, sock: _no_delay(sock)

    def unsent_packets(self) -> int:
        """Packets waiting in paho's socket write queue (here: 1 for "some", 0)."""
        return 1 if self.want_write() else 0

    def unacknowledged(self) -> int:
        """QoS 1/2 messages paho holds, in flight or queued (here: not known, 0)."""
        return 0

    def limit_in_flight(self, limit: int) -> bool:
        """Keep at most ``limit`` QoS 1/2 messages in flight from this connection on;
        False where it cannot (paho refuses to change its limit on an open connection)."""
        try:
            self.max_inflight_messages = limit
        except RuntimeError:
            return False
        return True


class FastClient(PlainClient):
    """paho's client with the speed-ups of the module doc (for :data:`TESTED_PAHO`)."""

    speedups = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_socket_open = None  # _create_socket sets TCP_NODELAY
        # The link's gauges, read at every publish: the containers' own __len__ (paho
        # makes them once, in its __init__), so a gauge costs what len() does.
        self.unsent_packets = self._out_packet.__len__  # type: ignore[method-assign]
        self.unacknowledged = self._out_messages.__len__  # type: ignore[method-assign]

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if not isinstance(sock, socket.socket):
            return sock  # paho's websocket wrapper
        _no_delay(sock)
        return ReadAheadSocket(sock)

    def limit_in_flight(self, limit: int) -> bool:
        """Keep at most ``limit`` QoS 1/2 messages unacknowledged, from this connection on.

        For the broker's Receive Maximum, which arrives in CONNACK: call it from
        ``on_connect``, which paho runs before it resends what it held. paho refuses to
        change its limit on an open connection, and its reconnect marks every held message
        for sending at once (its reset never counts what it marks), so a reconnect with a
        backlog sent hundreds. Here the held messages past the limit wait in paho's queue
        instead and go out as acknowledgements free room, in order. A QoS 2 message whose
        PUBLISH the broker already has (PUBREL to resend) is never held back: it cannot be
        sent again as a PUBLISH.
        """
        with self._out_message_mutex:
            self._max_inflight_messages = limit
            # The first ``limit`` go out at CONNACK, the rest wait. paho's CONNACK handler
            # stops at the first queued message, so nothing it must resend may come after
            # one: a PUBREL past the limit (in practice they lead, being the oldest) keeps
            # everything before it sendable, over the limit rather than stuck.
            held = (mqtt.mqtt_ms_publish, mqtt.mqtt_ms_queued)
            messages = list(self._out_messages.values())
            last_pubrel = max(
                (i for i, m in enumerate(messages) if m.state not in held), default=-1
            )
            for place, m in enumerate(messages):
                if m.state in held:
                    send = place < limit or place < last_pubrel
                    m.state = mqtt.mqtt_ms_publish if send else mqtt.mqtt_ms_queued
        return True

    def _handle_publish(self) -> MQTTErrorCode:
        header: int = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if self._protocol != mqtt.MQTTv5 or qos == 3:
            return super()._handle_publish()
        # MQTT 5: what paho does (2.1 and 2.2 alike), with the properties decoded by
        # unpack_publish_properties; anything it does not take is paho's from the start.
        packet = bytes(self._in_packet["packet"])  # paho reads into a bytearray
        if len(packet) < 2:
            return super()._handle_publish()  # cut short: paho's error
        pos = 2 + ((packet[0] << 8) | packet[1])
        topic = packet[2:pos]
        mid = 0
        if qos:
            if pos + 2 > len(packet):
                return super()._handle_publish()
            mid = (packet[pos] << 8) | packet[pos + 1]
            pos += 2
        decoded = unpack_publish_properties(packet, pos)
        if decoded is None:
            return super()._handle_publish()
        message = mqtt.MQTTMessage(mid=mid, topic=topic)
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.properties, pos = decoded
        message.payload = packet[pos:]
        if self.on_log is not None or self._logger is not None:
            try:
                print_topic = topic.decode("utf-8")
            except UnicodeDecodeError:
                print_topic = f"TOPIC WITH INVALID UTF-8: {topic!r}"
            self._easy_log(
                mqtt.MQTT_LOG_DEBUG,
                "Received PUBLISH (d%d, q%d, r%d, m%d), '%s', properties=%s, ...  (%d bytes)",
                message.dup, message.qos, message.retain, message.mid,
                print_topic, message.properties, len(message.payload),
            )  # fmt: skip
        message.timestamp = mqtt.time_func()
        if qos == 0:
            self._handle_on_message(message)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if qos == 1:
            self._handle_on_message(message)
            if self._manual_ack:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            return self._send_puback(mid)
        rc = self._send_pubrec(mid)
        message.state = mqtt.mqtt_ms_wait_for_pubrel
        with self._in_message_mutex:
            self._in_messages[mid] = message
        return rc

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        size = len(packet)
        done = None
        if size == 2:  # packet id only: success (the same in MQTT 3.1.1 and 5)
            done = _outcome(cmd, 0)
        elif self._protocol == mqtt.MQTTv5 and (size == 3 or (size == 4 and packet[3] == 0)):
            done = _outcome(cmd, packet[2])  # a reason code and no properties
        if done is None:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        if self.on_log is not None or self._logger is not None:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received %s (Mid: %d)", cmd, mid)
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, *done)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


_OUTCOMES: dict[tuple[str, int], tuple[ReasonCode, Properties]] = {}


def _outcome(cmd: Literal["PUBACK", "PUBCOMP"], code: int) -> tuple[ReasonCode, Properties] | None:
    """A shared (reason code, no properties) pair for a PUBACK/PUBCOMP with reason ``code``
    (0 "Success", or 16 "No matching subscribers": a value nobody subscribed to); None
    for a code paho would refuse (its decoder then says so)."""
    found = _OUTCOMES.get((cmd, code))
    if found is None:
        t = PacketTypes.PUBACK if cmd == "PUBACK" else PacketTypes.PUBCOMP
        reason = ReasonCode(t)
        try:
            reason.unpack(bytes([code]))
        except Exception:  # whatever paho raises, its own decoder raises again
            return None
        found = _OUTCOMES[(cmd, code)] = (reason, Properties(t))  # type: ignore[no-untyped-call]
    return found


# What the rest of the bridge uses, chosen by the one version check.
Client: type[PlainClient] = FastClient if SPEEDUPS else PlainClient
publish_properties = lean_publish_properties if SPEEDUPS else plain_publish_properties
