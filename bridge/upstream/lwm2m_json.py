"""Reading several resources of one object instance with one request.

The initial reads fetch the current value of every observed resource. Where several of
them belong to one object instance (a lamp's on/off, dimmer and colour, ``/3311/0/...``),
one LwM2M Read of the instance (``GET /v2/endpoints/{ep}/3311/0``) brings them all: one
REST call and one async response instead of three, which is most of the start-up work of
a large fleet. Devices answer an instance read in a format of their choice; this module
understands LwM2M JSON (``application/vnd.oma.lwm2m+json``, OMA LwM2M 1.0 section 6.4.4).
For any other answer the caller reads the resources one by one, as before.

The values are given back in the plain-text form a single-resource read gives (the form
the bridge publishes): numbers exactly as the device wrote them, booleans ``1``/``0``,
strings as they are, object links ``obj:inst``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable

LWM2M_JSON = "application/vnd.oma.lwm2m+json"
# Answers to an instance read after which the resources are not read one by one: the
# endpoint is gone, unreachable, or did not answer in time; single reads would fare no better.
UNREACHABLE = frozenset({410, 502, 503, 504})


class _Number(str):
    """A JSON number kept as the text the device wrote (told apart from a string)."""


log = logging.getLogger("bridge.lwm2m")
_RESOURCE = re.compile(r"/\d+/\d+/\d+")


def read_groups(paths: Iterable[str]) -> list[tuple[str, list[str]]]:
    """``(what to read, the observed paths it answers)``, in the order first seen.

    Resources (``/obj/inst/res``) that share an instance with another observed resource
    are grouped under the instance path; every other path is read on its own.
    """
    groups: dict[str, list[str]] = {}
    for path in paths:
        key = path.rsplit("/", 1)[0] if _RESOURCE.fullmatch(path) else path
        groups.setdefault(key, []).append(path)
    out: list[tuple[str, list[str]]] = []
    for key, members in groups.items():
        if len(members) > 1:
            out.append((key, members))
        else:
            out.extend((p, [p]) for p in members)
    return out


def is_lwm2m_json(content_type: str | None) -> bool:
    return bool(content_type) and str(content_type).split(";", 1)[0].strip().lower() in (
        LWM2M_JSON,
        "11543",  # the CoAP content-format number some services report instead
    )


def instance_values(base: str, payload: bytes | None) -> dict[str, bytes]:
    """The resource values of an LwM2M JSON answer to a read of ``base``, by full path.

    Entries without a single value of a known kind are left out (so the caller reads
    those resources one by one); a payload that is not LwM2M JSON raises ``ValueError``.
    """
    try:
        doc = json.loads(payload or b"", parse_float=_Number, parse_int=_Number)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not LwM2M JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("e"), list):
        raise ValueError("not LwM2M JSON: no 'e' array")
    bn = doc.get("bn")
    prefix = (
        bn if isinstance(bn, str) and bn and not isinstance(bn, _Number) else base.rstrip("/") + "/"
    )
    values: dict[str, bytes] = {}
    for entry in doc["e"]:
        if not isinstance(entry, dict):
            continue
        if not isinstance(entry.get("n", ""), str) or isinstance(entry.get("n"), _Number):
            continue
        name = entry.get("n", "")
        path = prefix + name if name else prefix.rstrip("/")
        if not path.startswith("/"):
            path = "/" + path
        text = _plain_text(entry)
        if text is not None:
            values[path] = text.encode("utf-8")
    return values


def answered_values(base: str, content_type: str | None, payload: bytes | None) -> dict[str, bytes]:
    """The values a successful instance read of ``base`` gave, by full path; empty when the
    answer is in another format or is not valid LwM2M JSON (read those one by one)."""
    if not is_lwm2m_json(content_type):
        return {}
    try:
        return instance_values(base, payload)
    except ValueError as exc:
        log.debug("instance read of %s: %s", base, exc)
        return {}


def _plain_text(entry: dict[str, object]) -> str | None:
    kinds = [k for k in ("v", "bv", "sv", "ov") if k in entry]
    if len(kinds) != 1:
        return None
    value = entry[kinds[0]]
    if kinds[0] == "v":
        return str(value) if isinstance(value, _Number) else None
    if kinds[0] == "bv":
        return ("1" if value else "0") if isinstance(value, bool) else None
    return value if isinstance(value, str) and not isinstance(value, _Number) else None
