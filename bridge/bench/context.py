"""What every measurement gets: the options and the shared processes (broker, emulators)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from bridge.bench.harness import APIS, BenchError, Broker, Control, EmulatorProcess


@dataclass
class Config:
    """The bench's options (see ``connector-bridge bench --help``)."""

    runs: int = 3
    quick: bool = False
    apis: tuple[str, ...] = APIS  # the dialects the bridge runs on (--api)
    notifications: int = 200_000  # N, throughput
    payload_size: int = 8  # bytes of each notification's value
    endpoints: int = 100  # lamps of the emulator for throughput, commands and latency
    commands: int = 20_000  # M, command round trip
    inflight: int = 100  # commands outstanding
    floor_threads: int = 8  # threads of the floor client (= the bridge's command workers)
    latency_rate: float = 1000.0  # notifications per second
    latency_seconds: float = 10.0  # measured, after one second of warm-up
    scale_sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    scale_runs: int | None = None  # None: --runs
    channel_burst: int = 100_000  # notifications per burst, channel comparison
    listing_devices: int = 100_000  # devices of the /v3/devices listing
    listing_page: int = 1_000  # devices per page of that listing
    mqtt_protocol: str = "5"  # of the bridge, and of the paho ceiling client
    bridge_settings: dict[str, str] = field(default_factory=dict)  # extra BRIDGE_* values
    verbose: bool = True

    @classmethod
    def quick_config(cls) -> Config:
        return cls(
            runs=1,
            quick=True,
            notifications=20_000,
            endpoints=20,
            commands=2_000,
            latency_seconds=2.0,
            scale_sizes=(200, 1_000),
            channel_burst=10_000,
            listing_devices=5_000,
        )


@dataclass
class Env:
    """The processes shared by the measurements of one bench run: the broker, and an
    emulator of ``config.endpoints`` lamps per dialect (started when first asked for)."""

    config: Config
    broker: Broker
    control: Control
    emulators: dict[str, EmulatorProcess] = field(default_factory=dict)

    def emulator(self, api: str) -> EmulatorProcess:
        """The shared emulator of dialect ``api``."""
        found = self.emulators.get(api)
        if found is None:
            if api not in APIS:
                raise BenchError(f"no dialect {api!r}")
            self.say(f"starting the {api} emulator ({self.config.endpoints} lamps)")
            found = self.emulators[api] = EmulatorProcess(self.config.endpoints, api=api).start()
        return found

    def stop(self) -> None:
        for emulator in self.emulators.values():
            emulator.stop()
        self.emulators.clear()

    def say(self, text: str) -> None:
        """Progress, on stderr (stdout is for the table or the JSON)."""
        if self.config.verbose:
            print(f"bench: {text}", file=sys.stderr, flush=True)
