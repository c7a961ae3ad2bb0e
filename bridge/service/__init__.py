"""The bridge as a service: the controller that wires both sides and the extensions, the
settings, the ``run``, ``status`` and ``demo`` commands, logging and CPU pinning."""
