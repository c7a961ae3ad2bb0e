"""Run a real Home Assistant with its MQTT integration in this process, driven over stdin/stdout.

Started by tests/support/home_assistant.py with the python of the Home Assistant venv
(scripts/home_assistant_env.py installs it), never imported by the project: only the
standard library and ``homeassistant`` are used here.

Usage: ``python ha_driver.py <config_dir> <mqtt_port>``. Before start it writes one MQTT
config entry (broker 127.0.0.1:<mqtt_port>, HA's defaults: discovery on, prefix
``homeassistant``, birth ``online`` on ``homeassistant/status``) into
``<config_dir>/.storage/core.config_entries`` (an existing file only gets the new port,
so a restart on the same config dir keeps the registries), then boots Home Assistant
without its default integrations: the core, ``mqtt`` and what mqtt depends on
(``http`` on a free loopback port, ``file_upload``).

Protocol (one JSON object per line). Once MQTT is connected the driver writes, unasked,
``{"event": "ready", "homeassistant": ..., "python": ..., "http_port": ..., "boot_seconds":
...}``; if the boot fails it writes ``{"event": "failed", "error": ...}`` and exits 1.
Requests ``{"id": n, "op": ..., ...}`` may come at any time; they are served after the boot,
one at a time and in order. Each gets ``{"id": n, "ok": true, "result": ...}`` or
``{"id": n, "ok": false, "error": ...}``; ``stop`` is answered once HA has stopped.
Ops: ready, snapshot, call, update_entity, update_device, create_area, events, warnings,
stop (see the ``op_*`` methods). EOF on stdin stops Home Assistant as ``stop`` does.

The protocol uses a duplicate of the original stdout; fd 1 is pointed at stderr so that
nothing else printed can corrupt it. Home Assistant logs at INFO to
``<config_dir>/home-assistant.log``; records at WARNING or above are kept for ``warnings``.
Times in ``events`` are ``time.monotonic()``: the same clock as the test's on Linux.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
import logging
import os
import platform
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

_LOGGER = logging.getLogger("ha_driver")
BOOT_TIMEOUT = 60.0  # seconds from start until MQTT is connected (about 0.5 s when idle)
STOP_TIMEOUT = 30.0
LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s (%(threadName)s) [%(name)s] %(message)s"


def jsonable(value: Any) -> Any:
    """A JSON-safe copy: enums by value, sets as sorted lists, datetimes as ISO text."""
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((jsonable(item) for item in value), key=lambda v: json.dumps(v))
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return str(value)


class Capture(logging.Handler):
    """Keeps every record at WARNING or above for the ``warnings`` op."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[dict[str, Any]] = []
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the record
            message = f"{record.msg!r} % {record.args!r}"
        if record.exc_info and record.exc_info[0] is not None:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        with self._lock_records:
            self.records.append(
                {
                    "logger": record.name,
                    "level": record.levelname,
                    "message": message,
                    "time": record.created,
                }
            )

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock_records:
            return list(self.records)


def setup_logging(config_dir: Path) -> Capture:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    file_handler = logging.FileHandler(config_dir / "home-assistant.log", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    root.addHandler(file_handler)
    capture = Capture()
    root.addHandler(capture)
    return capture


def write_config_entries(config_dir: Path, mqtt_port: int) -> None:
    """One MQTT config entry for 127.0.0.1:<mqtt_port>; an existing file only gets the port."""
    path = config_dir / ".storage" / "core.config_entries"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        stored = json.loads(path.read_text())
        for entry in stored["data"]["entries"]:
            if entry.get("domain") == "mqtt":
                entry["data"] = {**entry.get("data", {}), "broker": "127.0.0.1", "port": mqtt_port}
    else:
        # Minor version 1 on purpose: Home Assistant migrates it to its own (1.5 in 2025.4)
        # and mqtt migrates the entry itself (1.1 -> 1.2, options out of data).
        entry = {
            "entry_id": uuid.uuid4().hex,
            "version": 1,
            "domain": "mqtt",
            "title": "MQTT",
            "data": {"broker": "127.0.0.1", "port": mqtt_port},
            "options": {},
            "source": "user",
            "unique_id": None,
            "disabled_by": None,
            "pref_disable_new_entities": None,
            "pref_disable_polling": None,
        }
        stored = {
            "version": 1,
            "minor_version": 1,
            "key": "core.config_entries",
            "data": {"entries": [entry]},
        }
    path.write_text(json.dumps(stored, indent=2))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Driver:
    """Home Assistant plus the request loop; everything but the stdin thread runs on HA's loop."""

    def __init__(self, config_dir: Path, mqtt_port: int, out: TextIO, capture: Capture) -> None:
        self.config_dir = config_dir
        self.mqtt_port = mqtt_port
        self.http_port = free_port()
        self.out = out
        self.capture = capture
        self.hass: Any = None
        self.info: dict[str, Any] = {}
        self.state_events: list[list[Any]] = []
        self.registry_events: list[list[Any]] = []
        self.mqtt_entity_ids: set[str] = set()
        self._out_lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, default=str)
        with self._out_lock:
            self.out.write(line + "\n")
            self.out.flush()

    # -- boot ---------------------------------------------------------------------------

    async def boot(self) -> None:
        from homeassistant import bootstrap, config_entries, core, loader
        from homeassistant.const import __version__
        from homeassistant.setup import async_setup_component

        started = time.monotonic()
        hass = core.HomeAssistant(str(self.config_dir))
        self.hass = hass
        if hasattr(loader, "async_setup"):  # 2024.x and later
            loader.async_setup(hass)
        hass.config.skip_pip = True
        config: dict[str, Any] = {
            "homeassistant": {
                "name": "connector-bridge test",
                "latitude": 52.37,
                "longitude": 4.89,
                "elevation": 0,
                "unit_system": "metric",
                "time_zone": "UTC",
                "currency": "EUR",
                "country": "NL",
            },
            "http": {"server_host": ["127.0.0.1"], "server_port": self.http_port},
        }
        # mqtt reads configuration.yaml itself (for its YAML items); JSON is YAML.
        (self.config_dir / "configuration.yaml").write_text(json.dumps(config, indent=2) + "\n")
        hass.config_entries = config_entries.ConfigEntries(hass, config)
        await self._load_base_functionality(bootstrap, hass)
        for domain in ("homeassistant", "persistent_notification"):
            if not await async_setup_component(hass, domain, config):
                raise RuntimeError(f"setting up {domain} failed")
        try:
            from homeassistant.core_config import async_process_ha_core_config
        except ImportError:  # before 2024.11
            from homeassistant.config import (
                async_process_ha_core_config,
            )
        await async_process_ha_core_config(hass, config["homeassistant"])
        self._listen(hass)
        if not await async_setup_component(hass, "mqtt", config):
            raise RuntimeError("setting up mqtt failed (see home-assistant.log)")
        self._check_entry(hass)
        await hass.async_start()
        await self._wait_connected(hass, started + BOOT_TIMEOUT)
        self.info = {
            "homeassistant": __version__,
            "python": platform.python_version(),
            "http_port": self.http_port,
            "config_dir": str(self.config_dir),
            "boot_seconds": round(time.monotonic() - started, 3),
        }
        _LOGGER.info("ready: %s", self.info)

    @staticmethod
    async def _load_base_functionality(bootstrap: Any, hass: Any) -> None:
        if hasattr(bootstrap, "async_load_base_functionality"):
            await bootstrap.async_load_base_functionality(hass)
            return
        # Older releases loaded these inside async_from_config_dict.
        from homeassistant.helpers import (
            area_registry,
            device_registry,
            entity_registry,
            issue_registry,
        )

        await asyncio.gather(
            area_registry.async_load(hass),
            device_registry.async_load(hass),
            entity_registry.async_load(hass),
            issue_registry.async_load(hass),
            hass.config_entries.async_initialize(),
        )

    @staticmethod
    def _check_entry(hass: Any) -> None:
        """Fail now, not after a time-out, when the mqtt entry could not be set up."""
        from homeassistant.config_entries import ConfigEntryState

        entries = hass.config_entries.async_entries("mqtt")
        if not entries:
            raise RuntimeError("no mqtt config entry was loaded")
        entry = entries[0]
        if entry.state not in (ConfigEntryState.LOADED, ConfigEntryState.SETUP_RETRY):
            reason = getattr(entry, "reason", None)
            raise RuntimeError(
                f"the mqtt config entry is {entry.state} ({reason}; see home-assistant.log)"
            )

    async def _wait_connected(self, hass: Any, deadline: float) -> None:
        from homeassistant.components import mqtt

        remaining = max(deadline - time.monotonic(), 1.0)
        if hasattr(mqtt, "async_wait_for_mqtt_client"):
            try:
                async with asyncio.timeout(remaining):
                    available = await mqtt.async_wait_for_mqtt_client(hass)
            except TimeoutError:
                available = False
            if not available:
                raise RuntimeError("the MQTT client did not become available")
        connected = asyncio.get_running_loop().create_future()

        def on_status(state: bool) -> None:
            if state and not connected.done():
                connected.set_result(True)

        unsubscribe = mqtt.async_subscribe_connection_status(hass, on_status)
        try:
            if not mqtt.is_connected(hass):
                remaining = max(deadline - time.monotonic(), 0.1)
                try:
                    await asyncio.wait_for(connected, remaining)
                except TimeoutError:
                    raise RuntimeError(
                        f"MQTT not connected to 127.0.0.1:{self.mqtt_port} "
                        f"within {BOOT_TIMEOUT:.0f} s"
                    ) from None
        finally:
            unsubscribe()

    def _listen(self, hass: Any) -> None:
        """Record state changes of mqtt entities and every entity registry update."""
        from homeassistant.const import EVENT_STATE_CHANGED
        from homeassistant.core import callback
        from homeassistant.helpers import entity_registry as er

        registry = er.async_get(hass)

        @callback
        def on_state(event: Any) -> None:
            entity_id = event.data.get("entity_id")
            if entity_id not in self.mqtt_entity_ids:
                entry = registry.async_get(entity_id)
                if entry is None or entry.platform != "mqtt":
                    return
                self.mqtt_entity_ids.add(entity_id)
            new_state = event.data.get("new_state")
            state = None if new_state is None else new_state.state
            self.state_events.append([entity_id, state, time.monotonic()])

        @callback
        def on_registry(event: Any) -> None:
            data = dict(event.data)
            action, entity_id = data.pop("action", None), data.pop("entity_id", None)
            entry = registry.async_get(entity_id) if entity_id else None
            if entry is not None and entry.platform == "mqtt":
                self.mqtt_entity_ids.add(entity_id)
            self.registry_events.append([action, entity_id, jsonable(data), time.monotonic()])

        hass.bus.async_listen(EVENT_STATE_CHANGED, on_state)
        hass.bus.async_listen(er.EVENT_ENTITY_REGISTRY_UPDATED, on_registry)

    # -- requests -----------------------------------------------------------------------

    def read_stdin(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
        """Thread: hand each request line to the loop; None for EOF."""
        for line in sys.stdin:
            if line.strip():
                loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    async def serve(self, queue: asyncio.Queue[str | None]) -> Any:
        """Answer requests one at a time, in order, until ``stop`` (its id) or EOF (None)."""
        while True:
            line = await queue.get()
            if line is None:
                _LOGGER.info("stdin closed: stopping")
                return None
            request_id = None
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
                request_id = request.pop("id", None)
                op = request.pop("op", None)
                if op == "stop":
                    return request_id  # answered once Home Assistant has stopped
                method: Callable[..., Awaitable[Any]] | None = getattr(self, f"op_{op}", None)
                if method is None:
                    raise ValueError(f"unknown op {op!r}")
                result = await method(**request)
                self.send({"id": request_id, "ok": True, "result": jsonable(result)})
            except Exception as exc:
                _LOGGER.info("request %s failed", line.strip(), exc_info=True)
                error = f"{type(exc).__name__}: {exc}"
                self.send({"id": request_id, "ok": False, "error": error})

    async def op_ready(self) -> dict[str, Any]:
        """{"homeassistant", "python", "http_port", "config_dir", "boot_seconds"}."""
        return self.info

    async def op_snapshot(self) -> dict[str, Any]:
        """{"entities": [entity views of platform mqtt], "devices": [...], "areas": {id: name}}."""
        from homeassistant.helpers import area_registry as ar
        from homeassistant.helpers import device_registry as dr
        from homeassistant.helpers import entity_registry as er

        entities = er.async_get(self.hass).entities.values()
        return {
            "entities": [self._entity_view(e) for e in entities if e.platform == "mqtt"],
            "devices": [self._device_view(d) for d in dr.async_get(self.hass).devices.values()],
            "areas": {a.id: a.name for a in ar.async_get(self.hass).async_list_areas()},
        }

    async def op_call(self, domain: str, service: str, data: dict[str, Any] | None = None) -> None:
        await self.hass.services.async_call(domain, service, data or {}, blocking=True)

    async def op_update_entity(self, entity_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        from homeassistant.helpers import entity_registry as er

        fields = dict(fields)
        for key, kind in (
            ("disabled_by", "RegistryEntryDisabler"),
            ("hidden_by", "RegistryEntryHider"),
        ):
            if fields.get(key) is not None:
                fields[key] = getattr(er, kind)(fields[key])
        for key in ("aliases", "labels"):
            if isinstance(fields.get(key), list):
                fields[key] = set(fields[key])
        entry = er.async_get(self.hass).async_update_entity(entity_id, **fields)
        return self._entity_view(entry)

    async def op_update_device(self, device_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        from homeassistant.helpers import device_registry as dr

        fields = dict(fields)
        if fields.get("disabled_by") is not None:
            fields["disabled_by"] = dr.DeviceEntryDisabler(fields["disabled_by"])
        if isinstance(fields.get("labels"), list):
            fields["labels"] = set(fields["labels"])
        device = dr.async_get(self.hass).async_update_device(device_id, **fields)
        if device is None:
            raise KeyError(f"no device {device_id}")
        return self._device_view(device)

    async def op_create_area(self, name: str) -> str:
        from homeassistant.helpers import area_registry as ar

        registry = ar.async_get(self.hass)
        create = getattr(registry, "async_get_or_create", None) or registry.async_create
        area_id: str = create(name).id
        return area_id

    async def op_events(self) -> dict[str, Any]:
        """{"states": [[entity_id, state or None, t]], "registry": [[action, entity_id,
        {changes, old_entity_id...}, t]]}: all since start, t from time.monotonic()."""
        return {"states": list(self.state_events), "registry": list(self.registry_events)}

    async def op_warnings(self) -> list[dict[str, Any]]:
        """[{"logger", "level", "message", "time"}] for every record at WARNING or above."""
        return self.capture.snapshot()

    def _entity_view(self, entry: Any) -> dict[str, Any]:
        state = self.hass.states.get(entry.entity_id)
        view = {
            name: getattr(entry, name, None)
            for name in (
                "entity_id",
                "unique_id",
                "platform",
                "domain",
                "device_id",
                "config_entry_id",
                "name",
                "original_name",
                "has_entity_name",
                "device_class",
                "original_device_class",
                "unit_of_measurement",
                "entity_category",
                "icon",
                "original_icon",
                "disabled_by",
                "hidden_by",
                "capabilities",
                "supported_features",
            )
        }
        view["state"] = None if state is None else state.state
        view["attributes"] = {} if state is None else dict(state.attributes)
        result: dict[str, Any] = jsonable(view)
        return result

    @staticmethod
    def _device_view(device: Any) -> dict[str, Any]:
        view = {
            name: getattr(device, name, None)
            for name in (
                "id",
                "name",
                "name_by_user",
                "area_id",
                "suggested_area",
                "manufacturer",
                "model",
                "model_id",
                "sw_version",
                "hw_version",
                "serial_number",
                "via_device_id",
                "configuration_url",
                "entry_type",
                "disabled_by",
            )
        }
        view["identifiers"] = sorted([list(pair) for pair in device.identifiers])
        view["connections"] = sorted([list(pair) for pair in device.connections])
        view["config_entries"] = sorted(device.config_entries)
        result: dict[str, Any] = jsonable(view)
        return result

    # -- main ---------------------------------------------------------------------------

    async def run(self) -> int:
        """Boot, say ``ready`` (or ``failed``), serve requests, stop; the exit status."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(
            target=self.read_stdin,
            args=(asyncio.get_running_loop(), queue),
            name="ha-driver-stdin",
            daemon=True,
        ).start()
        try:
            await self.boot()
        except Exception as exc:
            _LOGGER.exception("Home Assistant did not boot")
            self.send({"event": "failed", "error": f"{type(exc).__name__}: {exc}"})
            await self._stop_hass(force=True)
            return 1
        self.send({"event": "ready", **self.info})
        stop_id = await self.serve(queue)
        await self._stop_hass(force=False)
        if stop_id is not None:
            self.send({"id": stop_id, "ok": True, "result": None})
        return 0

    async def _stop_hass(self, force: bool) -> None:
        if self.hass is None:
            return
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await self.hass.async_stop(force=force)
        except Exception:
            _LOGGER.exception("stopping Home Assistant failed")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} <config_dir> <mqtt_port>", file=sys.stderr)
        return 2
    config_dir, mqtt_port = Path(argv[1]).resolve(), int(argv[2])
    config_dir.mkdir(parents=True, exist_ok=True)
    # The protocol keeps the real stdout; whatever else writes to fd 1 lands on stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    capture = setup_logging(config_dir)
    write_config_entries(config_dir, mqtt_port)
    driver = Driver(config_dir, mqtt_port, out, capture)
    try:
        from homeassistant import runner

        asyncio.set_event_loop_policy(runner.HassEventLoopPolicy(False))
    except Exception:  # the default loop works too, without HA's executor and handler
        _LOGGER.warning("no HassEventLoopPolicy; using asyncio's default", exc_info=True)
    try:
        return asyncio.run(driver.run())
    except BaseException:
        _LOGGER.exception("the driver failed")
        return 1


if __name__ == "__main__":
    code = main(sys.argv)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)  # Home Assistant's leftover threads must not keep the process alive
