"""The one list of channel-message kinds, and the places that follow it."""

from __future__ import annotations

import typing

from bridge.connector import HANDLER_NAMES
from bridge.connector.messages import DISPATCH_ORDER, MESSAGE_KINDS, Kind, MessageKind
from bridge.simulator import channel as ch
from bridge.upstream.callback_receiver import MESSAGE_PARTS


def test_every_kind_is_listed_once_in_both_orders() -> None:
    names = {v for k, v in vars(MessageKind).items() if k.isupper()}
    assert set(MESSAGE_KINDS) == set(DISPATCH_ORDER) == names == set(typing.get_args(Kind))
    assert len(MESSAGE_KINDS) == len(DISPATCH_ORDER) == len(names) == 6
    assert HANDLER_NAMES == DISPATCH_ORDER and MESSAGE_PARTS == MESSAGE_KINDS
    # Registrations before notifications, departures last.
    assert DISPATCH_ORDER.index("registrations") < DISPATCH_ORDER.index("notifications")
    assert DISPATCH_ORDER[-2:] == ("de-registrations", "registrations-expired")


def test_the_emulators_entry_kinds_index_the_list() -> None:
    assert ch.KIND_KEYS[ch.NOTIFICATION] == MessageKind.NOTIFICATIONS
    assert ch.KIND_KEYS[ch.REGISTRATION] == MessageKind.REGISTRATIONS
    assert ch.KIND_KEYS[ch.REG_UPDATE] == MessageKind.REG_UPDATES
    assert ch.KIND_KEYS[ch.DEREGISTRATION] == MessageKind.DE_REGISTRATIONS
    assert ch.KIND_KEYS[ch.EXPIRED] == MessageKind.REGISTRATIONS_EXPIRED
    assert ch.KIND_KEYS[ch.ASYNC_RESPONSE] == MessageKind.ASYNC_RESPONSES
