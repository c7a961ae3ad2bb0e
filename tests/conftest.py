"""Shared fixtures: real servers on free loopback ports, started and stopped by the tests.

**Both dialects.** A module marked ``pytestmark = pytest.mark.both_dialects`` runs each of
its tests twice, on the legacy Connector and on today's Device Management: the autouse
``dialect`` fixture sets :attr:`Emulator.default_api` for the test, so every emulator the
test makes without ``api=`` speaks that dialect (the bridge finds it out at start-up, as
``BRIDGE_CONNECTOR_API=auto`` does for a user). A test marked ``legacy_only("why")`` or
``current_only("why")`` runs on that dialect alone; the reason is required, so that what
one dialect lacks is written down where the test is. A module-scoped fixture that makes an
emulator takes ``dialect`` as an argument, so that it is made again for the other dialect.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge.simulator import Emulator
from tests.support.broker import MosquittoBroker

DIALECTS = ("legacy", "current")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_dialects: run each test on both dialects")
    config.addinivalue_line("markers", "legacy_only(reason): runs on the legacy dialect only")
    config.addinivalue_line("markers", "current_only(reason): runs on today's dialect only")


def _dialects_of(definition: pytest.Item) -> tuple[str, ...]:
    legacy = definition.get_closest_marker("legacy_only")
    current = definition.get_closest_marker("current_only")
    for mark in (legacy, current):
        if mark is not None and not (mark.args or mark.kwargs.get("reason")):
            raise pytest.UsageError(f"{definition.nodeid}: {mark.name} needs a reason")
    if legacy is not None:
        return ("legacy",)
    if current is not None:
        return ("current",)
    return DIALECTS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "dialect" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("both_dialects") is None:
        return
    metafunc.parametrize(
        "dialect", _dialects_of(metafunc.definition), indirect=True, scope="module"
    )


@pytest.fixture(scope="module", autouse=True)
def dialect(request: pytest.FixtureRequest) -> Iterator[str]:
    """The dialect of the emulators this test makes (``legacy`` outside a
    ``both_dialects`` module)."""
    chosen = str(getattr(request, "param", "legacy"))
    before = Emulator.default_api
    Emulator.default_api = chosen  # type: ignore[assignment]
    try:
        yield chosen
    finally:
        Emulator.default_api = before


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
