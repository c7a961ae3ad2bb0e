"""connector-bridge: the mbed Device Connector REST API joined to MQTT.

Three parts, each usable on its own: the Connector client (:mod:`bridge.connector`),
the bridge service (``connector-bridge run``) and the Connector emulator
(:mod:`bridge.simulator`, ``connector-bridge simulate``).
"""

__version__ = "0.1.0"
