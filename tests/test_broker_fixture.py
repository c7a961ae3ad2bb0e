"""The broker fixture itself: it must really run, stop and come back on the same port."""

from __future__ import annotations

import socket

from tests.support.broker import MosquittoBroker


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_broker_stops_and_restarts_on_same_port(broker: MosquittoBroker) -> None:
    port = broker.port
    assert _accepts(port)
    broker.stop()
    assert not _accepts(port)
    broker.start()
    assert broker.port == port
    assert _accepts(port)
