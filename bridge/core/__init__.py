"""The middle of the bridge, shared by both sides and the extensions: typed events and
their bus, the endpoint registry, counters, worker pools and deadlines, the one back-off
and retry policy, and the asyncio loop thread."""
