"""Scenarios: which virtual devices the emulator hosts, read from a JSON file.

A scenario names device *templates* (IPSO objects by id, plus custom resources) and the
devices built from them. ``--devices N`` adds generated endpoints, cycling through the
templates listed under ``scale``, until there are N endpoints in all.

```json
{"templates": {"TempSensor": {"type": "TempSensor", "objects": ["3303"],
                              "resources": [{"path": "/dev/x", "kind": "int", "value": 1}],
                              "queue": false, "lifetime": null}},
 "devices": [{"name": "node-001", "template": "TempSensor"}],
 "scale": {"templates": ["TempSensor"], "name": "{template}-{n:06d}"},
 "drift": {"interval": 0.5, "budget": 2000}, "reboot_time": 0.5}
```
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from bridge.simulator.devices import IPSO_OBJECTS, DeviceTemplate, resource_from_dict


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message says where and why."""


@dataclass
class Scenario:
    templates: dict[str, DeviceTemplate]
    devices: list[tuple[str, str]]  # (endpoint name, template name)
    scale_templates: list[str] = field(default_factory=list)
    scale_name: str = "{template}-{n:06d}"
    drift_interval: float = 0.5
    drift_budget: int = 2000
    reboot_time: float = 0.5

    def endpoints(self, total: int | None = None) -> Iterator[tuple[str, DeviceTemplate]]:
        """The named devices, then generated ones until there are ``total`` (if given)."""
        named = self.devices if total is None else self.devices[:total]
        taken = set()
        for name, tpl in named:
            taken.add(name)
            yield name, self.templates[tpl]
        if total is None or total <= len(named):
            return
        cycle = self.scale_templates or list(self.templates)
        made, n = len(named), 0
        while made < total:
            n += 1
            tpl_name = cycle[(n - 1) % len(cycle)]
            name = self.scale_name.format(template=tpl_name.lower(), n=n)
            if name in taken:
                continue
            yield name, self.templates[tpl_name]
            made += 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        try:
            return _parse(data)
        except ScenarioError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ScenarioError(f"invalid scenario: {exc!r}") from exc

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScenarioError(f"scenario {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ScenarioError(f"scenario {path} must be a JSON object")
        return cls.from_dict(data)


def _parse(data: Mapping[str, Any]) -> Scenario:
    raw_templates = data.get("templates")
    if not isinstance(raw_templates, dict) or not raw_templates:
        raise ScenarioError("scenario needs a non-empty 'templates' object")
    for key, kind, word in (
        ("devices", list, "array"),
        ("scale", dict, "object"),
        ("drift", dict, "object"),
    ):
        if not isinstance(data.get(key, kind()), kind):
            raise ScenarioError(f"scenario '{key}' must be a JSON {word}")
    templates = {name: _template(name, spec) for name, spec in raw_templates.items()}
    devices: list[tuple[str, str]] = []
    for i, dev in enumerate(data.get("devices", [])):
        if not isinstance(dev, dict) or not isinstance(dev.get("name"), str) or not dev["name"]:
            raise ScenarioError(f"devices[{i}] needs a 'name'")
        if dev.get("template") not in templates:
            raise ScenarioError(f"devices[{i}] names unknown template {dev.get('template')!r}")
        devices.append((dev["name"], dev["template"]))
    if len({d[0] for d in devices}) != len(devices):
        raise ScenarioError("a device name appears twice")
    scale = data.get("scale", {})
    scale_templates = list(scale.get("templates", list(templates)))
    for name in scale_templates:
        if name not in templates:
            raise ScenarioError(f"scale names unknown template {name!r}")
    scale_name = str(scale.get("name", "{template}-{n:06d}"))
    try:
        scale_name.format(template="x", n=1)
    except (KeyError, IndexError, ValueError) as exc:
        raise ScenarioError(f"scale name pattern {scale_name!r}: {exc}") from exc
    drift = data.get("drift", {})
    return Scenario(
        templates=templates,
        devices=devices,
        scale_templates=scale_templates,
        scale_name=scale_name,
        drift_interval=float(drift.get("interval", 0.5)),
        drift_budget=int(drift.get("budget", 2000)),
        reboot_time=float(data.get("reboot_time", 0.5)),
    )


def _template(name: str, spec: Any) -> DeviceTemplate:
    if not isinstance(spec, dict):
        raise ScenarioError(f"template {name!r} must be an object")
    resources = []
    for obj in spec.get("objects", []):
        if str(obj) not in IPSO_OBJECTS:
            raise ScenarioError(
                f"template {name!r}: unknown IPSO object {obj!r} (known: {sorted(IPSO_OBJECTS)})"
            )
        resources.extend(IPSO_OBJECTS[str(obj)])
    try:
        resources.extend(resource_from_dict(r) for r in spec.get("resources", []))
        lifetime = spec.get("lifetime")
        return DeviceTemplate(
            name,
            str(spec.get("type", name)),
            resources,
            q=bool(spec.get("queue", False)),
            lifetime=None if lifetime is None else float(lifetime),
            wake_interval=float(spec.get("wake_interval", 10.0)),
            awake_time=float(spec.get("awake_time", 1.0)),
            queue_size=int(spec.get("queue_size", 16)),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ScenarioError(f"template {name!r}: {exc}") from exc


def default_scenario() -> Scenario:
    """The built-in scenario (``bridge/simulator/default_scenario.json``)."""
    text = (
        importlib_resources.files("bridge.simulator")
        .joinpath("default_scenario.json")
        .read_text(encoding="utf-8")
    )
    return Scenario.from_dict(json.loads(text))
