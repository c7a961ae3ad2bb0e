"""Pre-subscription rules in the Connector's JSON form: checking and matching (pure).

The bridge hands the rules to the Connector in one ``PUT /v2/subscriptions``; the
Connector then observes the matching resources of every endpoint, registered now or
later. The bridge matches the same rules itself to know which resources are observed
(those are the ones it reads once so that retained values exist from the start).

A rule may name ``endpoint-name`` (a trailing ``*`` is the only wildcard),
``endpoint-type`` (exact) and ``resource-path`` (a list; a trailing ``*`` matches every
path that starts with what precedes it). A missing key matches everything; a resource is
observed when any rule matches it and it is observable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

RULE_KEYS = frozenset(("endpoint-name", "endpoint-type", "resource-path"))
MAX_RULES = 1024


def check_rule(rule: Any, index: int) -> None:
    """Raise ValueError unless ``rule`` is a pre-subscription rule the Connector accepts."""
    if not isinstance(rule, dict):
        raise ValueError(f"rule {index} must be a JSON object")
    unknown = set(rule) - RULE_KEYS
    if unknown:
        raise ValueError(
            f"rule {index}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(RULE_KEYS))}"
        )
    for key in ("endpoint-name", "endpoint-type"):
        if key in rule:
            value = rule[key]
            if not isinstance(value, str) or not value or len(value) > 64:
                raise ValueError(f"rule {index}: {key} must be a string of 1-64 characters")
            if key == "endpoint-name" and "*" in value[:-1]:
                raise ValueError(f"rule {index}: '*' is only allowed at the end of {key}")
    if "resource-path" in rule:
        paths = rule["resource-path"]
        if not isinstance(paths, list) or not paths:
            raise ValueError(f"rule {index}: resource-path must be a non-empty list")
        for path in paths:
            if not isinstance(path, str) or not path or len(path) > 128:
                raise ValueError(f"rule {index}: each resource path must be 1-128 characters")
            if "*" in path[:-1]:
                raise ValueError(f"rule {index}: '*' is only allowed at the end of a path")


def check_rules(rules: Any) -> list[dict[str, Any]]:
    """``rules`` if it is a valid list of rules, else ValueError saying what is wrong."""
    if not isinstance(rules, list):
        raise ValueError("pre-subscription rules must be a JSON array")
    if len(rules) > MAX_RULES:
        raise ValueError(f"at most {MAX_RULES} rules")
    for i, rule in enumerate(rules):
        check_rule(rule, i)
    return rules


def _match(pattern: str, text: str) -> bool:
    return text.startswith(pattern[:-1]) if pattern.endswith("*") else text == pattern


def endpoint_matches(rule: Mapping[str, Any], name: str, ept: str | None) -> bool:
    if "endpoint-name" in rule and not _match(rule["endpoint-name"], name):
        return False
    return not ("endpoint-type" in rule and rule["endpoint-type"] != (ept or ""))


def observed_paths(
    rules: Sequence[Mapping[str, Any]],
    name: str,
    ept: str | None,
    resources: Iterable[tuple[str, bool]],
) -> list[str]:
    """The paths (of ``(path, observable)`` pairs) that the rules observe on one endpoint."""
    matching = [r for r in rules if endpoint_matches(r, name, ept)]
    if not matching:
        return []
    out = []
    for path, obs in resources:
        if not obs:
            continue
        for rule in matching:
            patterns = rule.get("resource-path")
            if patterns is None or any(_match(p, path) for p in patterns):
                out.append(path)
                break
    return out
