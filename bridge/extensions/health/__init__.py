"""Watching the bridge: the health extension (``$bridge/health``, readiness), its figures,
the HTTP endpoints (``/healthz``, ``/readyz``, ``/metrics``) and the Prometheus export."""
