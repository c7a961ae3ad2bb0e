"""A TCP forwarder between an MQTT client and a real broker that counts what the client
keeps in flight.

MQTT 5 lets a broker cap the QoS 1/2 PUBLISH packets a client may have unacknowledged
(Receive Maximum, in CONNACK). Neither the client nor Mosquitto reports how many were
really outstanding on the wire, so the tap reads the packets as it forwards them: a
PUBLISH with a packet id from the client adds the id, a PUBACK (QoS 1) or PUBCOMP (QoS 2)
from the broker removes it, and the largest number outstanding is kept per connection.

An acknowledgement is counted before it is forwarded, and a PUBLISH when it has been
read, so the tap never counts more than the client itself has in flight.
:meth:`MqttTap.cut` closes every connection, as a network failure would.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from types import TracebackType

from tests.support.ports import free_port

PUBLISH, PUBACK, PUBREC, PUBCOMP = 3, 4, 5, 7


@dataclass
class Connection:
    """One client connection through the tap."""

    outstanding: set[int] = field(default_factory=set)
    most: int = 0  # the largest number of unacknowledged QoS 1/2 PUBLISHes seen
    publishes: int = 0  # QoS 1/2 PUBLISH packets the client sent


class _Packets:
    """Splits a byte stream into MQTT packets: (first byte, body)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while True:
            length, shift, i = 0, 0, 1
            while True:
                if i >= len(self._buf):
                    return out
                byte = self._buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            if len(self._buf) < i + length:
                return out
            out.append((self._buf[0], bytes(self._buf[i : i + length])))
            del self._buf[: i + length]


class MqttTap:
    """Listens on ``port`` and forwards each connection to the broker on ``upstream``."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, name="mqtt-tap", daemon=True).start()

    def __enter__(self) -> MqttTap:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def most_in_flight(self) -> list[int]:
        """Per connection, the most QoS 1/2 PUBLISHes that were unacknowledged at once."""
        with self._lock:
            return [c.most for c in self.connections]

    def publishes(self) -> list[int]:
        with self._lock:
            return [c.publishes for c in self.connections]

    def cut(self) -> None:
        """Close every connection now (the client sees its connection reset)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                broker = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            for s in (client, broker):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection()
            with self._lock:
                self.connections.append(conn)
                self._sockets += [client, broker]
            threading.Thread(
                target=self._pump, args=(client, broker, conn, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(broker, client, conn, False), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, conn: Connection, up: bool) -> None:
        packets = _Packets()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                for first, body in packets.feed(data):
                    self._count(conn, first, body, up)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _count(self, conn: Connection, first: int, body: bytes, up: bool) -> None:
        kind = first >> 4
        with self._lock:
            if up and kind == PUBLISH and (first >> 1) & 3:
                topic_len = int.from_bytes(body[:2], "big")
                pid = int.from_bytes(body[2 + topic_len : 4 + topic_len], "big")
                conn.outstanding.add(pid)
                conn.publishes += 1
                conn.most = max(conn.most, len(conn.outstanding))
            elif not up and kind in (PUBACK, PUBCOMP):
                conn.outstanding.discard(int.from_bytes(body[:2], "big"))
