"""The kinds of message the Connector's notification channel carries, named once.

A channel message (a long-poll answer, a webhook body) is a JSON object whose keys are
these kinds, each holding a list of entries. The client library, the bridge's Connector
side and webhook receiver and the emulator all name the kinds from here. The kinds are
plain strings (the wire keys), so they compare, hash, format and serialise as the keys.
"""

from __future__ import annotations

from typing import Final, Literal

Kind = Literal[
    "notifications",
    "registrations",
    "reg-updates",
    "de-registrations",
    "registrations-expired",
    "async-responses",
]


class MessageKind:
    """The kinds by name: ``MessageKind.REG_UPDATES == "reg-updates"`` (a namespace)."""

    NOTIFICATIONS: Final = "notifications"
    REGISTRATIONS: Final = "registrations"
    REG_UPDATES: Final = "reg-updates"
    DE_REGISTRATIONS: Final = "de-registrations"
    REGISTRATIONS_EXPIRED: Final = "registrations-expired"
    ASYNC_RESPONSES: Final = "async-responses"


#: Every kind, in the order the emulator writes their arrays in a message.
MESSAGE_KINDS: Final[tuple[Kind, ...]] = (
    MessageKind.NOTIFICATIONS,
    MessageKind.REGISTRATIONS,
    MessageKind.REG_UPDATES,
    MessageKind.DE_REGISTRATIONS,
    MessageKind.REGISTRATIONS_EXPIRED,
    MessageKind.ASYNC_RESPONSES,
)

#: Every kind, in the order a received message is dispatched: new registrations before
#: notifications (a message may carry a device's registration and its first values),
#: departures last.
DISPATCH_ORDER: Final[tuple[Kind, ...]] = (
    MessageKind.REGISTRATIONS,
    MessageKind.REG_UPDATES,
    MessageKind.ASYNC_RESPONSES,
    MessageKind.NOTIFICATIONS,
    MessageKind.DE_REGISTRATIONS,
    MessageKind.REGISTRATIONS_EXPIRED,
)
