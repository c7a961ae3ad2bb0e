"""Availability: the retained ``<prefix>/<ep>/$state`` and ``<prefix>/<ep>/$resources``.

``$state`` is ``online`` from a registration (or the start-up listing), ``offline`` after a
de-registration and ``expired`` when the registration lapsed. ``$resources`` is the
endpoint's device ID and endpoint name (today's service addresses devices by ID; on the
legacy Connector both are the name), type, queue mode and resource list (path, rt, ct,
obs) as JSON. Both are
retained, so a client that subscribes later learns the fleet at once, and both are
published again after the broker connection comes back. A forgotten endpoint (gone for
good) has both cleared (empty retained messages).
"""

from __future__ import annotations

import functools
import json

from bridge.core.events import (
    EndpointForgotten,
    EndpointRegistered,
    EndpointRemoved,
    EndpointResources,
    MqttConnected,
    Resource,
)
from bridge.downstream.topics import encode_resources
from bridge.extensions.base import Extension


@functools.lru_cache(maxsize=256)
def resources_document(ept: str | None, queue_mode: bool, resources: tuple[Resource, ...]) -> bytes:
    """``$resources``, made once per kind of endpoint: a fleet has few distinct lists."""
    return encode_resources(ept, queue_mode, (r.as_dict() for r in resources))


def identity_prefix(device_id: str, endpoint_name: str) -> bytes:
    """The start of one endpoint's ``$resources``: its own fields before the shared rest."""
    return (
        b'{"device_id":' + json.dumps(device_id).encode()
        + b',"endpoint_name":' + json.dumps(endpoint_name).encode() + b","
    )  # fmt: skip


class Availability(Extension):
    name = "availability"

    def start(self) -> None:
        bus = self.ctx.bus
        bus.subscribe(EndpointRegistered, self._on_registered)
        bus.subscribe(EndpointResources, self._on_resources)
        bus.subscribe(EndpointRemoved, self._on_removed)
        bus.subscribe(EndpointForgotten, self._on_forgotten)
        bus.subscribe(MqttConnected, self._on_connected)

    def _publish_state(self, name: str, state: str) -> None:
        s = self.ctx.settings
        self.ctx.mqtt.publish(self.ctx.topics.state(name), state, qos=s.value_qos, retain=True)

    def _publish_resources(self, event: EndpointResources) -> None:
        shared = resources_document(event.type, event.queue_mode, tuple(event.resources))
        ep = self.ctx.registry.get(event.name)
        device_id = ep.id if ep is not None else event.name
        endpoint_name = (ep.endpoint_name if ep is not None else None) or event.name
        body = identity_prefix(device_id, endpoint_name) + shared[1:]
        s = self.ctx.settings
        self.ctx.mqtt.publish(self.ctx.topics.resources(event.name), body, s.value_qos, True)

    def _on_registered(self, event: EndpointRegistered) -> None:
        self._publish_state(event.name, "online")

    def _on_resources(self, event: EndpointResources) -> None:
        self._publish_resources(event)

    def _on_removed(self, event: EndpointRemoved) -> None:
        self._publish_state(event.name, event.state)

    def _on_forgotten(self, event: EndpointForgotten) -> None:
        qos = self.ctx.settings.value_qos
        for topic in (self.ctx.topics.state(event.name), self.ctx.topics.resources(event.name)):
            self.ctx.mqtt.publish(topic, b"", qos, True)

    def _on_connected(self, event: MqttConnected) -> None:
        # Retained messages normally survive on the broker, but a broker that lost its
        # store (or a new one) must not leave clients without states. This runs on paho's
        # network thread, so the republishing goes to a background worker.
        if not event.first and self.ctx.leading():  # a group's leader announces the fleet
            self.ctx.background.submit(self._republish_all)

    def _republish_all(self) -> None:
        for ep in self.ctx.registry.all():
            self._publish_state(ep.name, ep.state)
            if ep.resources is not None:
                self._publish_resources(
                    EndpointResources(ep.name, ep.type, ep.queue_mode, ep.resources, "startup")
                )
