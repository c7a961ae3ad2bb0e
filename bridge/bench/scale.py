"""Scale: the bridge's start-up with 1,000 / 10,000 / 100,000 endpoints, 3 observed
resources each.

For each size an emulator with that many lamps runs in its own process, one per dialect
(``--api``; the runs alternate between them, the bridge on each dialect's channel: on
today's service its start-up lists every page of ``/v3/devices``, opens the WebSocket and
reads the values as device requests); for each run a
fresh broker (a bench-started one is restarted, so that its retained store is empty) and
three ``mosquitto_sub -C`` counters: every ``$state``, every ``$resources`` and every
initial value (3 per endpoint). The figures are the time from the bridge's start (the
moment its process is spawned) to the last message of each kind, and the bridge's peak
resident memory (VmHWM of /proc/<pid>/status).
"""

from __future__ import annotations

import math
from typing import Any

from bridge.bench.context import Env
from bridge.bench.harness import (
    LAMP_NAME,
    OBSERVED_PATHS,
    BridgeProcess,
    Control,
    CountingSubscriber,
    EmulatorProcess,
    cpu_seconds,
    new_prefix,
)
from bridge.bench.stats import median
from bridge.core.events import Resource
from bridge.extensions.homeassistant.discovery import (
    DiscoverySettings,
    bridge_discovery_messages,
    discovery_messages,
    endpoint_view,
)

STALL = 30.0  # seconds without a message before a count is given up


def _fresh_broker(env: Env) -> None:
    if env.broker.own:
        env.control.close()
        env.broker.restart()
        env.control = Control(env.broker)


def discovery_count(emulator: EmulatorProcess, size: int, prefix: str) -> int:
    """How many Home Assistant discovery configs the bridge publishes for ``size`` lamps
    (the pure function's count for one lamp's listing, and the bridge's own)."""
    lamp_id = emulator.device_id(LAMP_NAME.format(n=1))
    answer = emulator.session.get(f"{emulator.url}/v2/endpoints/{lamp_id}")
    answer.raise_for_status()
    settings = DiscoverySettings(discovery_prefix=f"{prefix}-ha", topic_prefix=prefix)
    lamp = endpoint_view(LAMP_NAME.format(n=1), "Lamp", map(Resource.from_dict, answer.json()))
    return size * len(discovery_messages(lamp, settings)) + len(bridge_discovery_messages(settings))


def once(env: Env, emulator: EmulatorProcess, size: int) -> dict[str, Any]:
    cfg = env.config
    _fresh_broker(env)
    prefix = new_prefix("scl")
    nvalues = size * len(OBSERVED_PATHS)
    settings = {"mqtt_protocol": cfg.mqtt_protocol}
    settings.update(cfg.bridge_settings)
    ha_on = settings.get("homeassistant", "true").lower() not in ("false", "0", "no", "off")
    nconfigs = discovery_count(emulator, size, prefix) if ha_on else 0
    qos = int(settings.get("value_qos", "1"))
    broker, control = env.broker, env.control
    with (
        CountingSubscriber(
            broker, control, [f"{prefix}/+/$state"], size, f"{prefix}/$bench-sync/$state", qos
        ) as states,
        CountingSubscriber(
            broker,
            control,
            [f"{prefix}/+/$resources"],
            size,
            f"{prefix}/$bench-sync/$resources",
            qos,
        ) as resources,
        CountingSubscriber(
            broker, control, [f"{prefix}/+/+/+/+"], nvalues, f"{prefix}/$bench/sync/0/0", qos
        ) as values,
        CountingSubscriber(
            broker,
            control,
            [f"{prefix}-ha/+/+/+/config"],
            nconfigs,
            f"{prefix}-ha/$bench/sync/0/config",
            qos,
        ) as configs,
        BridgeProcess(emulator, broker, prefix, settings) as bridge,
    ):
        t0 = bridge.started_at
        limit = 600.0
        ok = all(s.wait(stall=STALL, limit=limit) for s in (states, resources, values))
        # Home Assistant's configs follow the values (each waits for its device's
        # information): timed on their own, not part of "every value".
        configs_ok = nconfigs == 0 or configs.wait(stall=STALL, limit=limit)
        peak = bridge.peak_rss_mib()
        cpu = bridge.cpu_seconds()
        emulator_cpu = cpu_seconds(emulator.pid)
        if not ok:
            env.say(f"scale {size}: not every message came; bridge log:\n{bridge.log_tail(10)}")
        st, rs, vs = states.times(), resources.times(), values.times()
        cs = configs.times() if nconfigs else []
    return {
        "endpoints": size,
        "complete": ok,
        "states": len(st),
        "resources": len(rs),
        "values": len(vs),
        "states_s": (st[-1] - t0) if len(st) == size else math.nan,
        "resources_s": (rs[-1] - t0) if len(rs) == size else math.nan,
        "values_s": (vs[-1] - t0) if len(vs) == nvalues else math.nan,
        "configs": len(cs),
        "configs_s": (cs[-1] - t0) if nconfigs and configs_ok and len(cs) >= nconfigs else math.nan,
        "first_state_s": (st[0] - t0) if st else math.nan,
        "all_s": max(st[-1], rs[-1], vs[-1]) - t0 if ok and st and rs and vs else math.nan,
        "peak_rss_mib": peak,
        "bridge_cpu_s": cpu,  # at the end of the run, start-up included
        "emulator_cpu_s": emulator_cpu,  # since the emulator started (its own start-up too)
    }


def measure(env: Env) -> dict[str, Any]:
    """``{<api>: {"sizes": [...]}}``."""
    cfg = env.config
    runs_per_size = cfg.scale_runs or cfg.runs
    out: dict[str, Any] = {api: {"sizes": []} for api in cfg.apis}
    for size in cfg.scale_sizes:
        emulators: dict[str, EmulatorProcess] = {}
        runs: dict[str, list[dict[str, Any]]] = {api: [] for api in cfg.apis}
        try:
            for api in cfg.apis:
                env.say(f"scale {size:,} endpoints: starting the {api} emulator")
                emulators[api] = EmulatorProcess(size, api=api).start(timeout=600)
            for r in range(runs_per_size):
                for api, emulator in emulators.items():
                    env.say(f"scale {size:,}, run {r + 1}/{runs_per_size}, {api} dialect")
                    result = once(env, emulator, size)
                    env.say(
                        f"  $state {result['states_s']:.1f} s, values {result['values_s']:.1f} s, "
                        f"peak RSS {result['peak_rss_mib']:.0f} MiB"
                    )
                    runs[api].append(result)
            for api, emulator in emulators.items():
                out[api]["sizes"].append(summarise(size, emulator, runs[api]))
        finally:
            for emulator in emulators.values():
                emulator.stop()
    return out


def summarise(size: int, emulator: EmulatorProcess, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "endpoints": size,
        "emulator_start_s": emulator.started_in,
        "emulator_rss_mib": emulator.rss_at_start_mib,
        "states_s": median(r["states_s"] for r in runs),
        "resources_s": median(r["resources_s"] for r in runs),
        "values_s": median(r["values_s"] for r in runs),
        "configs_s": median(r["configs_s"] for r in runs),
        "all_s": median(r["all_s"] for r in runs),
        "peak_rss_mib": median(r["peak_rss_mib"] for r in runs),
        "bridge_cpu_s": median(r["bridge_cpu_s"] for r in runs),
        "complete": all(r["complete"] for r in runs),
        "runs": runs,
    }
