"""A device that leaves and comes back at once (a reboot) must end up online.

A channel message groups its entries by kind, and the client hands registrations over
before de-registrations, so a de-registration and a registration of one endpoint in one
message lose their order. The emulator never batches them together (its fix), and the
bridge, should a Connector do so, keeps such an endpoint online (its guard).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.simulator import Emulator
from bridge.simulator import channel as ch
from tests.support.bridge_harness import bridge_settings, command, running_bridge, user
from tests.support.broker import MosquittoBroker

pytestmark = pytest.mark.both_dialects

EPS = ("a", "b", "c")
LIFECYCLE = (ch.REGISTRATION, ch.REG_UPDATE, ch.DEREGISTRATION, ch.EXPIRED)


def entry(kind: int, ep: str) -> ch.Entry:
    if kind == ch.NOTIFICATION:
        return ch.notification(ep, "/1/0/1", b"1")
    if kind in (ch.REGISTRATION, ch.REG_UPDATE):
        return ch.registration(kind, ep, "T", False, "[]")
    return ch.endpoint_name(kind, ep)


def drain(outbox: ch.Outbox) -> list[list[ch.Entry]]:
    batches = []
    while len(outbox):
        batches.append(outbox.take())
    return batches


def test_a_reboot_is_split_over_two_messages() -> None:
    outbox = ch.Outbox(batch_size=100)
    sequence = [
        entry(ch.NOTIFICATION, "a"),
        entry(ch.DEREGISTRATION, "a"),
        entry(ch.NOTIFICATION, "b"),
        entry(ch.REGISTRATION, "a"),
        entry(ch.NOTIFICATION, "a"),
    ]
    outbox.put_many(sequence)
    batches = drain(outbox)
    assert batches == [sequence[:3], sequence[3:]]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from((ch.NOTIFICATION, *LIFECYCLE)), st.sampled_from(EPS))),
    st.integers(min_value=1, max_value=8),
)
def test_batches_keep_the_order_and_never_mix_lifecycle_kinds_of_an_endpoint(
    items: list[tuple[int, str]], batch_size: int
) -> None:
    outbox = ch.Outbox(batch_size=batch_size)
    sequence = [entry(kind, ep) for kind, ep in items]
    outbox.put_many(sequence)
    batches = drain(outbox)
    assert [e for b in batches for e in b] == sequence
    start = 0
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        kinds: dict[str, set[int]] = {}
        for kind, ep in items[start : start + len(batch)]:
            if kind in LIFECYCLE:
                kinds.setdefault(ep, set()).add(kind)
        assert all(len(k) == 1 for k in kinds.values())
        start += len(batch)


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as b:
        yield b


def test_the_bridge_keeps_an_endpoint_online_when_one_message_deregisters_and_registers_it(
    broker: MosquittoBroker, emulator: Emulator, dialect: str
) -> None:
    def ep(name: str) -> str:
        # a channel message names a device by its endpoint name on the legacy Connector,
        # by its device ID today (the endpoint name is the registration's original-ep)
        return name if dialect == "legacy" else emulator.device_id(name)

    with running_bridge(bridge_settings(emulator, broker)) as bridge:
        handler = bridge.connector_side.client.handler
        reg = {"ep": ep("light-001"), "ept": "Light", "q": False, "resources": []}
        if dialect == "current":
            reg["original-ep"] = "light-001"
        handler({"de-registrations": [ep("light-001")], "registrations": [reg]})
        assert bridge.registry.get("light-001").state == "online"  # type: ignore[union-attr]
        handler({"de-registrations": [ep("node-002")]})
        assert bridge.registry.get("node-002").state == "offline"  # type: ignore[union-attr]


def test_a_rebooted_device_is_online_and_answers(
    broker: MosquittoBroker, emulator: Emulator
) -> None:
    with (
        running_bridge(bridge_settings(emulator, broker)) as bridge,
        user(broker, "5", "connector/light-001/#") as u,
    ):
        assert command(u, "connector/light-001/3/0/4/post", transaction="reboot")["ok"]
        u.wait_topic("connector/light-001/$state", payload=b"offline")
        u.wait_topic("connector/light-001/$resources")
        deadline = time.monotonic() + 10
        while bridge.registry.get("light-001").state != "online":  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "light-001 stayed offline after its reboot"
            time.sleep(0.05)
        assert command(u, "connector/light-001/3311/0/5850/set", b"1", transaction="after")["ok"]
