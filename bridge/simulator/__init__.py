"""The Connector emulator: a local device cloud service with virtual devices.

It speaks one of two dialects over real HTTP: ``legacy``, the 2016 mbed Device Connector
REST API (endpoint names, long polling and callback URL channels, resource verbs,
subscriptions, pre-subscriptions), and ``current``, today's Device Management Connect
API (device IDs, ``GET /v3/devices``, ``POST /v2/device-requests`` with the service's
queueing, one callback or WebSocket channel with serialization options, error bodies).
It hosts virtual IPSO devices from a scenario, and can be steered and broken on purpose
from Python (:class:`Emulator`, ``api="legacy"`` by default) or over ``/admin/`` HTTP
routes. ``connector-bridge simulate`` runs it in the foreground (``--api current`` by
default).
"""

from bridge.simulator.emulator import Emulator
from bridge.simulator.scenario import Scenario, ScenarioError, default_scenario

__all__ = ["Emulator", "Scenario", "ScenarioError", "default_scenario"]
