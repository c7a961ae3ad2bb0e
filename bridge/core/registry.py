"""What the bridge knows about the Connector's endpoints: name, type, mode, resources, state.

Written by the Connector side (registrations, departures, the start-up listing) and read
by the extensions (is this endpoint known? is it in queue mode? what are its resources?).
One lock guards it; every method is short.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Literal

from bridge.core.events import Resource

State = Literal["online", "offline", "expired"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint. ``name`` is what the bridge calls it (its topics); today's service
    addresses it by ``device_id`` and reports the name it registered with as
    ``endpoint_name`` (both are ``name`` on the legacy Connector, which has no IDs)."""

    name: str
    type: str | None
    queue_mode: bool
    resources: tuple[Resource, ...] | None
    state: State
    device_id: str | None = None
    endpoint_name: str | None = None

    @property
    def id(self) -> str:
        """The service's address of the endpoint: its device ID, or its name."""
        return self.device_id or self.name

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "device_id": self.id,
            "endpoint_name": self.endpoint_name or self.name,
            "type": self.type,
            "q": self.queue_mode,
            "state": self.state,
            "resources": None if self.resources is None else [r.as_dict() for r in self.resources],
        }


class Registry:
    """Endpoints by name. Entries stay after a departure (with their state) so that a
    command to a departed endpoint can say so, until :meth:`forget` drops them;
    ``changed_since`` lets the start-up listing skip endpoints whose registration
    changed while it ran."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[str, Endpoint] = {}
        self._generation: dict[str, int] = {}
        self._clock = 0

    def put(
        self,
        name: str,
        type_: str | None,
        queue_mode: bool,
        resources: tuple[Resource, ...] | None,
        device_id: str | None = None,
        endpoint_name: str | None = None,
    ) -> Endpoint:
        """An endpoint is registered; unknown resources (None) keep the known ones."""
        with self._lock:
            old = self._endpoints.get(name)
            if resources is None and old is not None:
                resources = old.resources
            ep = Endpoint(name, type_, queue_mode, resources, "online", device_id, endpoint_name)
            self._endpoints[name] = ep
            self._clock += 1
            self._generation[name] = self._clock
            return ep

    def set_resources(self, name: str, resources: tuple[Resource, ...]) -> Endpoint | None:
        with self._lock:
            old = self._endpoints.get(name)
            if old is None:
                return None
            ep = self._endpoints[name] = replace(old, resources=resources)
            return ep

    def remove(self, name: str, state: State) -> Endpoint | None:
        """Mark an endpoint gone; returns the entry (None if it was never known)."""
        with self._lock:
            old = self._endpoints.get(name)
            ep = replace(old, state=state) if old else Endpoint(name, None, False, None, state)
            self._endpoints[name] = ep
            self._clock += 1
            self._generation[name] = self._clock
            return old

    def forget(self, name: str, since: int | None = None) -> Endpoint | None:
        """Drop an endpoint that is not online, unless it changed after ``since`` (a
        :meth:`mark`); returns the entry dropped, or None (unknown, online or changed)."""
        with self._lock:
            old = self._endpoints.get(name)
            if old is None or old.state == "online":
                return None
            if since is not None and self._generation.get(name, 0) > since:
                return None
            del self._endpoints[name]
            self._clock += 1
            self._generation[name] = self._clock
            return old

    def mark(self) -> int:
        """A point in time: :meth:`changed_since` tells what changed after it."""
        with self._lock:
            return self._clock

    def changed_since(self, name: str, mark: int) -> bool:
        with self._lock:
            return self._generation.get(name, 0) > mark

    def get(self, name: str) -> Endpoint | None:
        return self._endpoints.get(name)

    def is_online(self, name: str) -> bool:
        ep = self._endpoints.get(name)
        return ep is not None and ep.state == "online"

    def all(self) -> list[Endpoint]:
        with self._lock:
            return list(self._endpoints.values())

    def __len__(self) -> int:
        return len(self._endpoints)

    def counts(self) -> dict[str, int]:
        out = {"online": 0, "offline": 0, "expired": 0}
        for ep in self.all():
            out[ep.state] += 1
        return out
