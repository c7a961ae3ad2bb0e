"""The broker fixture itself: it must really run, stop and come back on the same port."""

from __future__ import annotations

import socket

import pytest

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


def test_broker_does_not_mistake_another_listener_for_itself() -> None:
    """A port taken by someone else between choosing and binding is replaced, not shared."""
    stranger = socket.socket()
    stranger.bind(("127.0.0.1", 0))
    stranger.listen()
    taken = stranger.getsockname()[1]
    with stranger:
        b = MosquittoBroker()
        b.port = taken  # as if another process took the port the broker had picked
        try:
            b.start()
            assert b.port != taken and b.running
            assert _accepts(b.port)
        finally:
            b.close()
        fixed = MosquittoBroker(port=taken)
        try:
            with pytest.raises(RuntimeError, match="Address already in use"):
                fixed.start()
        finally:
            fixed.close()


def test_retained_messages_survive_a_clean_restart(broker: MosquittoBroker) -> None:
    """Persistence really works (tests of persistent sessions rely on it)."""
    import subprocess

    pub = ["mosquitto_pub", "-p", str(broker.port), "-t", "fixture/kept", "-r", "-q", "1"]
    subprocess.run([*pub, "-m", "still here"], check=True, timeout=10)
    broker.restart()
    sub = ["mosquitto_sub", "-p", str(broker.port), "-t", "fixture/kept", "-C", "1", "-W", "5"]
    out = subprocess.run(sub, check=True, timeout=10, capture_output=True, text=True).stdout
    assert out.strip() == "still here"
    assert "Permission denied" not in broker.log_path.read_text()
