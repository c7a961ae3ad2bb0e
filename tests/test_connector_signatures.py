"""The seed API, name for name: every method of the reference with its exact signature.

The table below is copied from the seed library's API reference (not read at test time: the
tests never depend on files outside the repository). Keyword-only
extras are allowed (they cannot break a call written for the original library); any
positional parameter, name or default that differs is a failure.
"""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

import pytest

from bridge.connector import asyncResult, connector, response_codes
from bridge.simulator import Emulator

_ = object()  # "no default"

# method -> [(parameter, default or _)] in order, as in the reference.
REFERENCE: dict[str, list[tuple[str, Any]]] = {
    "__init__": [("token", _), ("webAddress", "https://api.connector.mbed.com"), ("port", "80")],
    "debug": [("onOff", _), ("level", "DEBUG")],
    "deleteAllSubscriptions": [],
    "deleteCallback": [],
    "deleteEndpoint": [("ep", _), ("cbfn", "")],
    "deleteEndpointSubscriptions": [("ep", _)],
    "deleteResourceSubscription": [("ep", _), ("res", _)],
    "getApiVersions": [],
    "getCallback": [],
    "getConnectorVersion": [],
    "getEndpointSubscriptions": [("ep", _)],
    "getEndpoints": [("typeOfEndpoint", "")],
    "getLimits": [],
    "getPreSubscription": [],
    "getResourceSubscription": [("ep", _), ("res", _)],
    "getResourceValue": [
        ("ep", _),
        ("res", _),
        ("cbfn", ""),
        ("noResp", False),
        ("cacheOnly", False),
    ],
    "getResources": [("ep", _), ("noResp", False), ("cacheOnly", False)],
    "handler": [("data", _)],
    "postResource": [("ep", _), ("res", _), ("data", ""), ("cbfn", "")],
    "putCallback": [("url", _), ("headers", "")],
    "putPreSubscription": [("JSONdata", _)],
    "putResourceSubscription": [("ep", _), ("res", _), ("cbfn", "")],
    "putResourceValue": [("ep", _), ("res", _), ("data", _), ("cbfn", "")],
    "setHandler": [("handler", _), ("cbfn", _)],
    "startLongPolling": [("noWait", False)],
    "stopLongPolling": [],
}

POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _positional(func: Any) -> list[tuple[str, Any]]:
    params = list(inspect.signature(func).parameters.values())[1:]  # drop self
    assert not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    return [
        (p.name, _ if p.default is inspect.Parameter.empty else p.default)
        for p in params
        if p.kind in POSITIONAL
    ]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_signature_matches_reference(name: str) -> None:
    func = getattr(connector, name)
    assert _positional(func) == REFERENCE[name], name
    extras = [
        p for p in list(inspect.signature(func).parameters.values())[1:] if p.kind not in POSITIONAL
    ]
    for p in extras:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {p.name} must be keyword-only"
        assert p.default is not inspect.Parameter.empty, f"{name}: extra {p.name} needs a default"


def test_async_result_and_error_object_signatures() -> None:
    assert _positional(asyncResult.__init__) == [("callback", "")]
    assert _positional(asyncResult.isDone) == []
    assert _positional(response_codes.__init__) == [("errParent", _), ("status_code", _)]
    r = asyncResult()
    for attr in ("error", "result", "status_code", "raw_data", "payload", "async_id"):
        assert hasattr(r, attr), attr


def test_interface_extras_are_keyword_only() -> None:
    params = inspect.signature(connector.__init__).parameters
    for name, default in (("timeout", 10.0), ("asyncTimeout", 60.0), ("backoffMax", 30.0)):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default == default
    assert _positional(asyncResult.wait) == [("timeout", None)]


def test_module_docstring_example_runs(
    emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """The usage example in ``bridge.connector``'s docstring works as written."""
    import bridge.connector

    doc = bridge.connector.__doc__ or ""
    block: list[str] = []
    for line in doc.split("::\n", 1)[1].splitlines():
        if line.strip() and not line.startswith("    "):
            break  # the first unindented line ends the literal block
        block.append(line)
    code = textwrap.dedent("\n".join(block))
    assert "getEndpoints" in code and "getResourceValue" in code
    code = code.replace("ACCESS-KEY", emulator.token).replace("http://127.0.0.1:8080", emulator.url)
    exec(compile(code, "bridge.connector docstring", "exec"), {})
    out = capsys.readouterr().out
    assert "node-001 TempSensor" in out and "temperature: " in out
