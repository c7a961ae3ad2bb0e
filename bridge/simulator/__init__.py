"""The Connector emulator: a local mbed Device Connector with virtual devices.

It speaks the 2016 Connector REST API (long polling and
callback URL channels, subscriptions, pre-subscriptions, asynchronous device requests)
over real HTTP, hosts virtual IPSO devices from a scenario, and can be steered and
broken on purpose from Python (:class:`Emulator`) or over ``/admin/`` HTTP routes.
``connector-bridge simulate`` runs it in the foreground.
"""

from bridge.simulator.emulator import Emulator
from bridge.simulator.scenario import Scenario, ScenarioError, default_scenario

__all__ = ["Emulator", "Scenario", "ScenarioError", "default_scenario"]
