"""Pre-subscription rules: parsing (with the service's limits) and matching.

A rule may name ``endpoint-name`` (a trailing ``*`` is the only wildcard),
``endpoint-type`` and ``resource-path`` (a list; a trailing ``*`` matches every path that
starts with what precedes it). A missing key matches everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.simulator.devices import DeviceTemplate

MAX_RULES = 1024
MAX_NAME = 64
MAX_PATH = 128


@dataclass(frozen=True)
class Pattern:
    text: str
    prefix: bool  # True when the text ended with '*' (removed from ``text``)

    @classmethod
    def parse(cls, value: Any, what: str, limit: int) -> Pattern:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{what} must be a non-empty string")
        if len(value) > limit:
            raise ValueError(f"{what} is longer than {limit} characters")
        if "*" in value[:-1]:
            raise ValueError(f"{what} {value!r}: '*' is only allowed at the end")
        if value.endswith("*"):
            return cls(value[:-1], True)
        return cls(value, False)

    def matches(self, text: str) -> bool:
        return text.startswith(self.text) if self.prefix else text == self.text


@dataclass(frozen=True)
class Rule:
    name: Pattern | None
    ept: str | None
    paths: tuple[Pattern, ...] | None

    def matches_endpoint(self, name: str, ept: str) -> bool:
        return (self.name is None or self.name.matches(name)) and (
            self.ept is None or self.ept == ept
        )

    def mask(self, template: DeviceTemplate) -> int:
        """Bit mask of the template's observable resources this rule subscribes."""
        mask = 0
        for i, spec in enumerate(template.resources):
            if spec.obs and (self.paths is None or any(p.matches(spec.path) for p in self.paths)):
                mask |= 1 << i
        return mask


def parse_rules(data: Any) -> list[Rule]:
    """Rules from the JSON body of ``PUT /subscriptions``; ValueError says what is wrong."""
    if not isinstance(data, list):
        raise ValueError("pre-subscriptions must be a JSON array of rules")
    if len(data) > MAX_RULES:
        raise ValueError(f"at most {MAX_RULES} pre-subscription rules")
    rules = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"rule {i} must be an object")
        unknown = set(item) - {"endpoint-name", "endpoint-type", "resource-path"}
        if unknown:
            raise ValueError(f"rule {i}: unknown keys {sorted(unknown)}")
        name = item.get("endpoint-name")
        ept = item.get("endpoint-type")
        paths = item.get("resource-path")
        if ept is not None and (not isinstance(ept, str) or not ept or len(ept) > MAX_NAME):
            raise ValueError(f"rule {i}: endpoint-type must be a string of 1-{MAX_NAME} characters")
        if paths is not None and (not isinstance(paths, list) or not paths):
            raise ValueError(f"rule {i}: resource-path must be a non-empty list of paths")
        rules.append(
            Rule(
                name=None
                if name is None
                else Pattern.parse(name, f"rule {i}: endpoint-name", MAX_NAME),
                ept=ept,
                paths=None
                if paths is None
                else tuple(Pattern.parse(p, f"rule {i}: resource-path", MAX_PATH) for p in paths),
            )
        )
    return rules


def mask_for(
    rules: list[Rule],
    name: str,
    ept: str,
    template: DeviceTemplate,
    cache: dict[tuple[int, DeviceTemplate], int],
) -> int:
    """Bit mask of the resources of one endpoint that the rules subscribe.

    ``cache`` keeps each rule's mask per template (keyed by rule index and template),
    so applying the rules to 100,000 endpoints of a few templates stays cheap; clear it
    whenever the rules change.
    """
    mask = 0
    for i, rule in enumerate(rules):
        if rule.matches_endpoint(name, ept):
            key = (i, template)
            found = cache.get(key)
            if found is None:
                found = cache[key] = rule.mask(template)
            mask |= found
    return mask
