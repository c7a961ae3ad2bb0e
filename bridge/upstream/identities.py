"""Device IDs and the names the bridge publishes them under.

Today's service addresses a device by its device ID (32 hex characters, given by the
service) and also reports the name the device registered with (``endpoint_name``, from
its certificate). Users know the names, so topics use them by default
(``BRIDGE_TOPIC_ENDPOINT=name``); ``id`` puts the device IDs in the topics instead. The
legacy Connector has no IDs: the name is the address, and nothing is translated.

Two registered devices may carry the same endpoint name (two certificates with one
common name, a device enrolled again under a new ID). They must never share a topic: the
device the bridge meets first keeps the name, a later one is published under its device
ID, with a warning. At start-up "first" is the order of the service's device listing (by
device ID); while running, the first to register. A binding lasts while the bridge knows
the device, so a reboot keeps its topic; it ends when the bridge forgets the device.

Thread-safe: the channel's thread binds, the command workers translate.
"""

from __future__ import annotations

import logging
import threading
from typing import Literal

log = logging.getLogger("bridge.identities")

TopicEndpoint = Literal["name", "id"]


class Identities:
    """Topic names for device IDs and back (see the module doc)."""

    def __init__(self, mode: TopicEndpoint = "name") -> None:
        self.mode = mode
        self._lock = threading.Lock()
        self._topic_of: dict[str, str] = {}  # device ID -> topic name
        self._device_of: dict[str, str] = {}  # topic name -> device ID
        self.duplicates = 0  # devices published under their ID because the name was taken

    def topic(self, device_id: str, endpoint_name: str | None) -> str:
        """The topic name of a device, bound on first sight (see the module doc)."""
        known = self._topic_of.get(device_id)
        if known is not None:
            return known
        with self._lock:
            known = self._topic_of.get(device_id)
            if known is not None:
                return known
            name = endpoint_name if self.mode == "name" and endpoint_name else device_id
            holder = self._device_of.get(name)
            if holder is not None and holder != device_id:
                self.duplicates += 1
                log.warning(
                    "device %s registered as %r, a name device %s already has: it is "
                    "published under its device ID %s",
                    device_id, name, holder, device_id,
                )  # fmt: skip
                name = device_id
            self._topic_of[device_id] = name
            self._device_of[name] = device_id
            return name

    def bind(self, device_id: str, name: str) -> bool:
        """Take a binding another replica made (its retained ``$resources``): ``name`` for
        ``device_id``, unless either is bound otherwise already; True when bound."""
        with self._lock:
            if self._topic_of.get(device_id, name) != name:
                return False
            if self._device_of.get(name, device_id) != device_id:
                return False
            self._topic_of[device_id] = name
            self._device_of[name] = device_id
            return True

    def known(self, device_id: str) -> str | None:
        """The topic name of a device already bound, or None (no binding is made)."""
        return self._topic_of.get(device_id)

    def device(self, name: str) -> str:
        """The device ID behind a topic name; a name the bridge does not know is taken
        as the address itself (a device ID given in a topic, or the legacy service)."""
        return self._device_of.get(name, name)

    def forget(self, name: str) -> None:
        """The bridge forgot the endpoint ``name``: its name is free again."""
        with self._lock:
            device_id = self._device_of.pop(name, None)
            if device_id is not None:
                self._topic_of.pop(device_id, None)

    def __len__(self) -> int:
        return len(self._topic_of)


class Addressing:
    """The bridge's names and the service's addresses of endpoints: the same on the
    legacy Connector (this class); today's service addresses device IDs
    (:class:`bridge.upstream.side.ConnectorSide` translates)."""

    def address(self, name: str) -> str:
        """The service's address of the endpoint the bridge calls ``name``."""
        return name

    def name_for(self, device_id: str, endpoint_name: str | None) -> str:
        """The bridge's name of the endpoint the service calls ``device_id``."""
        return device_id
