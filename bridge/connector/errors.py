"""The error object of the seed API, :class:`response_codes`, its status tables, and the
typed transport failures (:class:`TransportError`) both HTTP stacks of the client raise.

An error is described by the call that failed (the *parent*, e.g. ``"resource"``), the
status code and a human text. The texts come from the Connector REST documentation, as
in the original library; the tables are keyed by parent and status code instead of by
concatenated strings, so a missing entry cannot hide behind a typo.

Fixed defect of the original: its pre-subscription texts were stored under the
callback keys (``put_callback_url204``) and the subscription listings looked theirs up
under ``unsubscribe``, so those errors read "ERROR: Unknown error.". Here every call
has its own table (``presubscription``, ``get_endpoint_subscription``,
``get_resource_subscription``) and the client uses it.

Client-side failures have no HTTP status; they use ``status_code`` 0 and one of the
client error types below, so callers can tell them from what the server said. Their
``failure`` says, by type and not by text, whether the request certainly never reached
the service (``"not_sent"``) or may have reached it (``"no_answer"``): the HTTP stacks
(:mod:`bridge.connector.transport`) raise :class:`TransportError` subclasses that say so.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar, Final, Literal

#: How a call failed without an HTTP answer: ``"not_sent"``, the request certainly never
#: reached the service (no connection: DNS failure, refused, connect time-out, TLS
#: handshake failure), so sending it again cannot repeat anything; ``"no_answer"``, it was
#: (or may have been) sent, but no complete answer came (read time-out, connection reset
#: or closed before the whole answer).
Failure = Literal["not_sent", "no_answer"]
NOT_SENT: Final = "not_sent"
NO_ANSWER: Final = "no_answer"


class TransportError(Exception):
    """An HTTP call that got no usable answer, raised by either HTTP stack of the client.

    :var failure: ``"not_sent"`` (:class:`NotConnected`), ``"no_answer"``
        (:class:`NoAnswer`) or None (:class:`CannotSend`: the request could not be made
        for a reason of its own, which trying again will not mend).
    :var kind: the failure in a word, as the client's messages name it
        (``ConnectionError``, ``ConnectTimeout``, ``ReadTimeout``, ``SSLError``...).
    :var detail: what happened, in a few words.
    :var timed_out: whether a time-out (connect or read) ended the call.

    ``str()`` is ``"<kind>: <detail>"``.
    """

    failure: ClassVar[Failure | None] = None

    def __init__(self, kind: str, detail: str, *, timed_out: bool = False) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.timed_out = timed_out


class NotConnected(TransportError):
    """The request certainly never reached the server: no connection could be made
    (DNS failure, connection refused, connect time-out, TLS handshake failure)."""

    failure: ClassVar[Failure | None] = NOT_SENT


class NoAnswer(TransportError):
    """The request was (or may have been) sent, but no complete answer came: read
    time-out, connection reset or closed before the whole answer, an answer that is not
    HTTP."""

    failure: ClassVar[Failure | None] = NO_ANSWER


class CannotSend(TransportError):
    """The request could not be made at all (a URL or header it cannot carry): nothing
    was sent, and sending it again would fail the same way."""


UNKNOWN_ERROR = "ERROR: Unknown error."

# Client-side error types (status_code 0 unless noted).
CONNECTION_ERROR = "connection_error"  # could not connect, connection reset or refused
REQUEST_TIMEOUT = "request_timeout"  # the HTTP call got no answer within `timeout`
ASYNC_TIMEOUT = "async_timeout"  # no async-responses entry within `asyncTimeout`
INVALID_RESPONSE = "invalid_response"  # the answer was unusable (status_code = HTTP status)
UNSUPPORTED = "unsupported"  # the dialect in use has no such call or option: nothing was sent

_RESOURCE = {
    200: "Successful GET, PUT, DELETE operation.",
    201: "Successful POST operation.",
    202: "Accepted. Asynchronous response ID.",
    204: "Non confirmable request made, this may or may not reach the endpoint. "
    "No Content given as response.",
    205: "No cache available for resource.",
    404: "Requested endpoint's resource is not found.",
    409: "Conflict. Endpoint is in queue mode and synchronous request can not be made. "
    "If noResp=true, the request is not supported.",
    410: "Gone. Endpoint not found.",
    412: "Request payload has been incomplete.",
    413: "Precondition failed.",
    415: "Media type is not supported by the endpoint.",
    429: "Cannot make a request at the moment, already ongoing other request for this "
    "endpoint or queue is full (for endpoints in queue mode).",
    502: "TCP or TLS connection to endpoint is not established.",
    503: "Operation cannot be executed because endpoint is currently unavailable.",
    504: "Operation cannot be executed due to a time-out from the endpoint.",
}

#: parent -> {status code -> text}. Parents are the names the original library used.
TABLES: dict[str, dict[int, str]] = {
    # GET /
    "get_mdc_version": {
        200: "Successful response containing version of mbed Device Connector and recent "
        "REST API version it supports.",
    },
    # GET /rest-versions
    "get_rest_version": {
        200: "Successful response with a list of version(s) supported by the server.",
    },
    # GET /v2/limits
    "limit": {200: "OK."},
    # GET /v2/endpoints
    "get_endpoints": {200: "Successful response with a list of endpoints."},
    # GET /v2/endpoints/{ep}
    "get_resources": {
        200: "Successful response with a list of metainformation.",
        404: "Endpoint not found.",
    },
    # GET, PUT, POST, DELETE /v2/endpoints/{ep}{res}
    "resource": _RESOURCE,
    # the status of an async-responses entry (the device's answer)
    "async-responses-handler": _RESOURCE,
    # PUT /v2/subscriptions/{ep}{res}
    "subscribe": {
        200: "Successfully subscribed.",
        202: "Accepted. Asynchronous response ID.",
        404: "Endpoint or its resource not found.",
        412: "Cannot make a subscription for a non-observable resource.",
        413: "Cannot make a subscription due to failed precondition.",
        415: "Media type is not supported by the endpoint.",
        429: "Cannot make subscription request at the moment due to already ongoing other "
        "request for this endpoint or (for endpoints in queue mode) queue is full or queue "
        "was cleared because endpoint made full registration.",
        502: "Subscription failed.",
        503: "Subscription could not be established because endpoint is currently unavailable.",
        504: "Subscription could not be established due to a time-out from the endpoint.",
    },
    # DELETE /v2/subscriptions/{ep}{res} and DELETE /v2/subscriptions
    "unsubscribe": {
        204: "Successfully removed subscription.",
        404: "Endpoint or endpoint's resource not found.",
    },
    # GET /v2/subscriptions/{ep}{res}
    "get_resource_subscription": {
        200: "Resource is subscribed.",
        404: "Resource is not subscribed.",
    },
    # GET /v2/subscriptions/{ep}
    "get_endpoint_subscription": {
        200: "List of subscribed resources.",
        404: "Endpoint not found or there are no subscriptions for that endpoint.",
    },
    # DELETE /v2/subscriptions/{ep}
    "delete_endpoint_subscription": {
        204: "Successfully removed.",
        404: "Endpoint not found.",
    },
    # PUT and GET /v2/subscriptions (pre-subscription rules)
    "presubscription": {
        200: "Pre-subscription data.",
        204: "Successfully set pre-subscription data.",
        400: "Malformed content.",
    },
    # PUT /v2/notification/callback
    "put_callback_url": {
        204: "Successfully subscribed.",
        400: "Given URL is not accessible.",
    },
    # GET /v2/notification/callback
    "get_callback_url": {
        200: "URL found.",
        404: "Callback URL does not exist.",
    },
    # DELETE /v2/notification/callback
    "delete_callback_url": {
        204: "Successfully removed.",
        404: "Callback URL does not exist.",
    },
    # GET /v2/notification/pull
    "longpoll": {200: "OK.", 204: "No new notifications."},
}

# Texts every route may answer with (the service's general errors).
_GENERAL = {
    400: "Bad request.",
    401: "Unauthorized: the access key is missing or not valid.",
    403: "Forbidden: the access key may not do this.",
    429: "Too many requests.",
    500: "Internal server error.",
    502: "Bad gateway.",
    503: "Service unavailable.",
    504: "Gateway timeout.",
}


def error_text(errParent: str, status_code: int) -> str:
    """The documented text for ``status_code`` on the call ``errParent``."""
    table = TABLES.get(errParent, {})
    if status_code in table:
        return table[status_code]
    return _GENERAL.get(status_code, UNKNOWN_ERROR)


_CODE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[A-Z]{3,}")


def _error_body(body: bytes) -> dict[str, Any] | None:
    """Today's error body as a dict, or None for anything else (plain text, HTML)."""
    if not body or body[:1] != b"{":
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if isinstance(doc, dict) and doc.get("object") == "error":
        return doc
    return None


def _leading_code(message: str | None) -> str | None:
    """The upper-case error name a message starts with (``DEVICE_NOT_CONNECTED: ...``):
    the service documents its device-request errors by these names in the message."""
    if not message:
        return None
    found = _CODE.match(message)
    if found is None:
        return None
    end = found.end()
    return found.group() if end == len(message) or not message[end].isalnum() else None


class response_codes:
    """The error of a failed call, as the seed API defines it.

    :var status_code: the HTTP status (or the async response's status); 0 when there was
        no HTTP answer at all (see ``errType``).
    :var errType: the parent call's name followed by the status code, e.g.
        ``"resource404"``; for client-side failures one of ``connection_error``,
        ``request_timeout``, ``async_timeout``, ``invalid_response``.
    :var error: the error text: from the status tables, or the text the service or the
        device gave.
    :var failure: for a call that got no HTTP answer, ``"not_sent"`` (the request
        certainly never reached the service) or ``"no_answer"`` (it was or may have been
        sent, no complete answer came); None for an answer with an HTTP status and for
        everything else (see :data:`Failure`).

    Today's service answers errors with a JSON body (``{"object": "error", "code",
    "type", "message", "request_id", "fields"}``); :meth:`from_body` reads it into
    ``error`` (the message) and these, None when there was no such body:

    :var errorType: the body's ``type`` (``validation_error``, ``not_found``...).
    :var errorCode: the service's error name the message starts with, or an async
        response's ``error`` (``DEVICE_NOT_CONNECTED``, ``QUEUE_IS_FULL``, ``TIMEOUT``...).
    :var requestId: the body's ``request_id``, to quote to the service's support.
    :var fields: the body's ``fields`` (validation errors: ``[{"name", "message"}]``).
    """

    status_code: int
    errType: str
    error: str
    failure: Failure | None
    errorType: str | None = None
    errorCode: str | None = None
    requestId: str | None = None
    fields: list[dict[str, Any]] | None = None

    def __init__(
        self,
        errParent: str,
        status_code: int,
        *,
        error: str | None = None,
        errType: str | None = None,
        failure: Failure | None = None,
    ) -> None:
        self.status_code = status_code
        self.errType = errType if errType is not None else f"{errParent}{status_code}"
        self.error = error if error else error_text(errParent, status_code)
        self.failure = failure

    @classmethod
    def from_body(cls, errParent: str, status_code: int, body: bytes) -> response_codes:
        """The error of an HTTP answer: read from today's error body when it is one,
        else the documented text for the status (the legacy service's plain bodies)."""
        doc = _error_body(body)
        if doc is None:
            return cls(errParent, status_code)
        message = doc.get("message")
        text = message if isinstance(message, str) and message else None
        err = cls(errParent, status_code, error=text)
        kind = doc.get("type")
        err.errorType = kind if isinstance(kind, str) else None
        err.errorCode = _leading_code(text)
        rid = doc.get("request_id")
        err.requestId = rid if isinstance(rid, str) else None
        fields = doc.get("fields")
        if isinstance(fields, list):
            err.fields = [f for f in fields if isinstance(f, dict)]
        return err

    @classmethod
    def client(
        cls, errType: str, error: str, status_code: int = 0, *, failure: Failure | None = None
    ) -> response_codes:
        """A client-side failure (no usable answer from the service)."""
        return cls(errType, status_code, error=error, errType=errType, failure=failure)

    def __repr__(self) -> str:
        failure = f", failure={self.failure!r}" if self.failure else ""
        return (
            f"response_codes(status_code={self.status_code!r}, "
            f"errType={self.errType!r}, error={self.error!r}{failure})"
        )

    def __str__(self) -> str:
        return f"{self.status_code} {self.errType}: {self.error}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, response_codes):
            return NotImplemented
        return (self.status_code, self.errType, self.error, self.failure) == (
            other.status_code,
            other.errType,
            other.error,
            other.failure,
        )

    def __hash__(self) -> int:
        return hash((self.status_code, self.errType, self.error, self.failure))
