"""The bridge's capabilities, one file each (see :mod:`bridge.extensions.base`).

``DEFAULT_EXTENSIONS`` is what :class:`bridge.service.controller.Bridge` loads, in this order
(events reach extensions in the order they subscribed, so availability announces an
endpoint before values reads it). A new capability is a new file here with an
:class:`Extension` subclass, added to this list.
"""

from bridge.extensions.availability import Availability
from bridge.extensions.base import BridgeContext, Extension
from bridge.extensions.bridge_requests import BridgeRequests
from bridge.extensions.commands import Commands
from bridge.extensions.health.extension import Health
from bridge.extensions.homeassistant.extension import HomeAssistant
from bridge.extensions.removal import Removal
from bridge.extensions.values import Values

DEFAULT_EXTENSIONS: list[type[Extension]] = [
    Availability,
    Values,
    Commands,
    BridgeRequests,
    HomeAssistant,
    Removal,
    Health,
]

__all__ = [
    "DEFAULT_EXTENSIONS",
    "Availability",
    "BridgeContext",
    "BridgeRequests",
    "Commands",
    "Extension",
    "Health",
    "HomeAssistant",
    "Removal",
    "Values",
]
