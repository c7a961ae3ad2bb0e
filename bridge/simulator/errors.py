"""Error bodies of the current dialect.

Every error the current dialect answers is the service's ``error-response`` object::

    {"object": "error", "code": 400, "type": "validation_error",
     "message": "MALFORMED_ASYNC_ID: async-id must match ^[\\w\\-]{1,40}$",
     "request_id": "<32 hex>", "fields": [{"name": "async-id", "message": "..."}]}

``message`` starts with the documented upper-case error name where the API file names
one (``DEVICE_NOT_FOUND: ...``); ``fields`` appears on validation errors only.
"""

from __future__ import annotations

import itertools
import json
import os

# The error type of each status the emulator answers (as the service's gateways say).
ERROR_TYPES = {
    400: "validation_error",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    412: "precondition_failed",
    413: "request_entity_too_large",
    415: "unsupported_media_type",
    426: "upgrade_required",
    429: "too_many_requests",
    500: "internal_server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}

_PREFIX = os.urandom(8).hex()
_SEQ = itertools.count(1)


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "internal_server_error" if status >= 500 else "bad_request")


def request_id() -> str:
    """A fresh 32-hex request id (random per process, then counting)."""
    return f"{_PREFIX}{next(_SEQ):016x}"


def error_json(
    status: int,
    message: str,
    type_: str | None = None,
    fields: list[dict[str, str]] | None = None,
) -> bytes:
    body: dict[str, object] = {
        "object": "error",
        "code": status,
        "type": type_ or error_type(status),
        "message": message,
        "request_id": request_id(),
    }
    if fields:
        body["fields"] = fields
    return json.dumps(body).encode()
