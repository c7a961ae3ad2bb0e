"""``POST /v2/device-requests/{device-id}``: parsing, and the per-device queue.

The answer to an accepted request is always 202 with no body; the result comes later on
the notification channel as an ``async-responses`` entry with the caller's
``async-id``. Each device keeps at most :data:`QUEUE_LIMIT` requests, delivered one at a
time in order: the next only after the previous was answered. A request is attempted
when the device can be reached (registered, awake); one the device does not answer (the
``device_timeout`` fault) uses one of its ``1 + retry`` attempts and waits, with the
requests behind it, for the device's next contact (a wake-up, a registration update or
a registration). When the attempts are used up the answer is ``504 TIMEOUT``; when
``expiry-seconds`` runs out first it is ``429 REQUEST_EXPIRED``; a device that
de-registers (or whose registration expires) answers what it still holds with
``429 DEVICE_REMOVED_REGISTRATION``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import deque
from collections.abc import Mapping
from typing import Any

QUEUE_LIMIT = 20
ASYNC_ID = re.compile(r"[\w\-]{1,40}", re.ASCII)
RETRY_RANGE = (0, 10)
EXPIRY_RANGE = (60, 2_592_000)
DEFAULT_RETRY, DEFAULT_RETRY_QUEUE_MODE = 0, 2
DEFAULT_EXPIRY, DEFAULT_EXPIRY_QUEUE_MODE = 7_200, 3 * 24 * 3600
METHODS = ("GET", "PUT", "POST", "DELETE")


class RequestError(ValueError):
    """A request refused before it is queued: status, message (starting with the
    documented error name where there is one) and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class DeviceRequest:
    __slots__ = (
        "aid",
        "attempts_left",
        "attributes_only",
        "body",
        "expires_at",
        "idx",
        "path",
        "verb",
    )

    def __init__(
        self,
        aid: str,
        verb: str,
        path: str,
        idx: int,
        body: bytes,
        attempts: int,
        expires_at: float,
        attributes_only: bool,
    ) -> None:
        self.aid = aid
        self.verb = verb
        self.path = path
        self.idx = idx
        self.body = body
        self.attempts_left = attempts
        self.expires_at = expires_at
        self.attributes_only = attributes_only


class RequestQueue:
    """One device's requests: ``busy`` while the head is with the device, ``stalled``
    after an attempt it did not answer (until it next contacts the service)."""

    __slots__ = ("busy", "items", "stalled")

    def __init__(self) -> None:
        self.items: deque[DeviceRequest] = deque()
        self.busy = False
        self.stalled = False


class Parsed:
    __slots__ = ("aid", "body", "expiry", "query", "retry", "uri", "verb")

    def __init__(
        self,
        aid: str,
        retry: int | None,
        expiry: int | None,
        verb: str,
        uri: str,
        query: str,
        body: bytes,
    ) -> None:
        self.aid = aid
        self.retry = retry
        self.expiry = expiry
        self.verb = verb
        self.uri = uri
        self.query = query
        self.body = body


def _int_param(query: Mapping[str, str], name: str, bounds: tuple[int, int]) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    lo, hi = bounds
    try:
        value = int(raw)
    except ValueError:
        raise RequestError(400, f"{name} must be an integer {lo}-{hi}", name) from None
    if not lo <= value <= hi:
        raise RequestError(400, f"{name} must be {lo}-{hi}: {value}", name)
    return value


def parse(query: Mapping[str, str], body: bytes) -> Parsed:
    """The query and JSON body of a device request; RequestError says what is wrong."""
    aid = query.get("async-id")
    if aid is None or not ASYNC_ID.fullmatch(aid):
        raise RequestError(
            400, "MALFORMED_ASYNC_ID: async-id must match ^[\\w\\-]{1,40}$", "async-id"
        )
    retry = _int_param(query, "retry", RETRY_RANGE)
    expiry = _int_param(query, "expiry-seconds", EXPIRY_RANGE)
    try:
        req: Any = json.loads(body or b"null")
        if not isinstance(req, dict):
            raise ValueError("the body must be a JSON object")
        verb, uri = req.get("method"), req.get("uri")
        if verb not in METHODS:
            raise ValueError("method must be GET, PUT, POST or DELETE")
        if not isinstance(uri, str) or not uri.startswith("/"):
            raise ValueError("uri must be a resource path")
        if uri == "/" and verb != "DELETE":  # DELETE on "/": the device de-registers
            raise ValueError("uri must be a resource path")
        for key in ("accept", "content-type", "payload-b64"):
            if req.get(key) is not None and not isinstance(req[key], str):
                raise ValueError(f"{key} must be a string")
        payload = base64.b64decode(req.get("payload-b64") or "", validate=True)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise RequestError(400, f"MALFORMED_JSON_CONTENT: {exc}", "body") from None
    path, _, attrs = uri.partition("?")
    return Parsed(aid, retry, expiry, verb, path.rstrip("/") or "/", attrs, payload)
