"""Shared fixtures: real servers on free loopback ports, started and stopped by the tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge.simulator import Emulator
from tests.support.broker import MosquittoBroker


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    """A fresh Mosquitto for one test; the test may stop, kill and restart it."""
    with MosquittoBroker() as b:
        yield b


@pytest.fixture(scope="session")
def shared_broker() -> Iterator[MosquittoBroker]:
    """One Mosquitto for tests that only publish and subscribe (cheaper than one each)."""
    with MosquittoBroker() as b:
        yield b


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A Connector emulator on a free loopback port (default scenario, token "test-token",
    1 s long-poll timeout, drifting sensors); stopped after the test."""
    with Emulator(token="test-token", pull_timeout=1.0) as emu:
        yield emu


@pytest.fixture(params=[False, True], ids=["requests", "lean"])
def fast_http(request: pytest.FixtureRequest) -> bool:
    """The client's HTTP stack, for client tests that run on both:
    ``connector(..., fastHttp=fast_http)`` (False: requests, True: the lean session)."""
    return bool(request.param)
