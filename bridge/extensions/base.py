"""What every extension gets (:class:`BridgeContext`) and what it is (:class:`Extension`).

An extension is one capability of the bridge in one file (values, availability,
commands, bridge requests; later Home Assistant discovery, health...). It reacts to
events on the bus and to MQTT messages on the topics it subscribes to, and acts through
the context: publish with ``ctx.mqtt``, call the Connector through its port ``ctx.port``
(:class:`~bridge.upstream.port.ConnectorPort`: never a Connector client itself), look
endpoints up in ``ctx.registry``. Extensions never import or call each other; when one
has something for others it emits an event.

Writing one::

    class Health(Extension):
        name = "health"

        def start(self) -> None:
            self.ctx.bus.subscribe(MqttConnected, self._on_connected)

        def _on_connected(self, event: MqttConnected) -> None:
            self.ctx.mqtt.publish(f"{self.ctx.topics.prefix}/$bridge/health", b"...")

and add the class to ``DEFAULT_EXTENSIONS`` in ``bridge/extensions/__init__.py`` (or
pass ``extensions=[...]`` to :class:`bridge.service.controller.Bridge`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from bridge.core.counters import Counters
from bridge.core.events import EndpointForgotten, EventBus, ForgetReason
from bridge.core.registry import Endpoint, Registry
from bridge.core.workers import Deadlines, WorkerPool
from bridge.downstream.link import Inbound, MqttLink
from bridge.downstream.topics import Topics
from bridge.service.settings import Settings
from bridge.upstream.port import ConnectorPort

REPLY_QOS = 1


class ClusterRole(Protocol):
    """This bridge's part in a group of replicas (:mod:`bridge.service.replication`)."""

    member_id: str

    @property
    def leading(self) -> bool: ...

    @property
    def role(self) -> str: ...

    def figures(self) -> dict[str, Any]: ...

    def readiness(self) -> list[str]: ...


@dataclass
class BridgeContext:
    """The bridge's shared parts, handed to every extension."""

    settings: Settings
    topics: Topics
    bus: EventBus
    mqtt: MqttLink
    port: ConnectorPort  # the Connector: every call the extensions make goes through it
    registry: Registry
    counters: Counters
    commands: WorkerPool  # REST calls for commands and bridge requests
    background: WorkerPool  # start-up descriptions and initial reads
    deadlines: Deadlines
    rules: list[dict[str, Any]]  # the pre-subscription rules in force
    listed: threading.Event = field(default_factory=threading.Event)  # start-up listing done
    started_at: float = field(default_factory=time.time)
    info: dict[str, Any] = field(default_factory=dict)  # facts for the `info` request
    cluster: ClusterRole | None = None  # a replica of a group (None: a single bridge)

    def leading(self) -> bool:
        """Whether this bridge does the fleet-wide work (announcing endpoints, discovery):
        always for a single bridge; only the leader of a group."""
        return self.cluster is None or self.cluster.leading

    def forget_endpoint(
        self, name: str, reason: ForgetReason, since: int | None = None
    ) -> Endpoint | None:
        """Let go of an endpoint that is not online (see :meth:`Registry.forget`) and tell
        the extensions (:class:`EndpointForgotten`); returns what was forgotten, or None."""
        ep = self.registry.forget(name, since)
        if ep is not None:
            self.counters.add("endpoints_forgotten")
            self.bus.emit(EndpointForgotten(name, ep.resources, reason))
        return ep

    def response_topic_problem(self, request: Inbound) -> str | None:
        """Why the request's MQTT 5 Response Topic is refused (None: fine or absent)."""
        if request.response_topic is None:
            return None
        problem = self.topics.response_topic_problem(request.response_topic)
        return None if problem is None else f"response topic refused: {problem}"

    def respond(self, request: Inbound, default_topic: str, body: bytes) -> None:
        """Publish ``body`` as the answer to ``request``: on its MQTT 5 Response Topic
        with its Correlation Data when it has an acceptable one, else on
        ``default_topic`` (with the Correlation Data all the same)."""
        topic = request.response_topic
        if topic is None or self.topics.response_topic_problem(topic) is not None:
            topic = default_topic
        props = self.mqtt.properties(request.correlation_data, "application/json")
        self.mqtt.publish(topic, body, qos=REPLY_QOS, retain=False, properties=props)


class Extension:
    """One capability of the bridge; see the module docstring."""

    name: ClassVar[str] = "extension"

    def __init__(self, ctx: BridgeContext) -> None:
        self.ctx = ctx

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        """Whether the bridge should load this extension with these settings."""
        return True

    def start(self) -> None:
        """Subscribe to events and topics. Called once, before the Connector side starts."""

    def stop(self) -> None:
        """Stop taking new work and answer what is under way. Called once, in reverse order."""

    def info(self) -> dict[str, Any]:
        """Figures for the bridge ``info`` request (under the extension's name)."""
        return {}
