"""``connector-bridge bench``: the bridge measured against the ceiling of its own parts.

Every measurement runs real processes on this machine: the emulator
(``connector-bridge simulate``), a Mosquitto (one started here on a free port, or the one
named with ``--mqtt-host``/``--mqtt-port``), the bridge (``connector-bridge run``) and
counting subscribers (Mosquitto's own ``mosquitto_sub``, so that the counter is never the
bottleneck). Each figure is the median of ``--runs`` runs, and each comparison is a ratio
of two figures measured in the same run, because a shared machine is noisy.

Modules: :mod:`~bridge.bench.harness` (the processes), :mod:`~bridge.bench.loadgen` (the
load clients, run as child processes), one module per measurement
(:mod:`~bridge.bench.throughput`, :mod:`~bridge.bench.commands`,
:mod:`~bridge.bench.latency`, :mod:`~bridge.bench.scale`), :mod:`~bridge.bench.report`
(the table and ``--json``) and :mod:`~bridge.bench.cli`.
"""
