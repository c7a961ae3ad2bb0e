"""The result object of every call (:class:`asyncResult`) and payload decoding.

A result is created *pending* by a call and completed exactly once: at once when the
service answered for good (200, 201, 204, an error), or later when the matching
``async-responses`` entry arrives on the notification channel, or when the id expires.
Completion sets the fields, then wakes :meth:`asyncResult.wait`, then calls ``cbfn``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from bridge.connector.errors import response_codes

log = logging.getLogger("bridge.connector")

#: Content types whose payload is text (``result`` is ``str`` when it is valid UTF-8).
_TEXT_TYPES = ("text/", "application/json", "application/link-format", "application/xml")


def decode_payload(entry: Mapping[str, Any]) -> bytes:
    """The raw bytes of a ``notifications`` or ``async-responses`` entry's ``payload``.

    The channel carries payloads as base64; a missing or empty payload is ``b""``.
    Missing ``=`` padding is tolerated. Raises :class:`ValueError` when the payload is
    not base64.
    """
    raw = entry.get("payload")
    if raw is None or raw == "":
        return b""
    if not isinstance(raw, str | bytes):
        raise ValueError(f"payload is {type(raw).__name__}, not a base64 string")
    text = raw.encode("ascii", "replace") if isinstance(raw, str) else raw
    text = text.strip()
    text += b"=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"payload is not valid base64: {exc}") from None


def is_text_type(content_type: str | None) -> bool:
    """True when a content type announces text (or is absent: LwM2M defaults to text)."""
    if not content_type:
        return True
    ct = content_type.split(";", 1)[0].strip().lower()
    return ct.startswith(_TEXT_TYPES) or ct.endswith("+json")


def value_of(payload: bytes, content_type: str | None) -> str | bytes:
    """``payload`` as ``str`` if it is text (by content type) and valid UTF-8, else bytes."""
    if is_text_type(content_type):
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return payload
    return payload


Callback = Callable[["asyncResult"], object]


class asyncResult:
    """The result of a call. Check ``isDone()`` and ``error`` before ``result``.

    :var error: ``False`` when the call succeeded, else a :class:`response_codes`.
        ``False`` while pending too: check ``isDone()`` first.
    :var result: initially ``{}``. When done:

        - resource values (``getResourceValue``, and whatever a device answers to a
          PUT, POST or DELETE): ``str`` when the content type is textual
          (``text/*``, JSON, or none given) and the bytes are valid UTF-8, otherwise
          ``bytes`` (e.g. ``application/vnd.oma.lwm2m+tlv``, CBOR, opaque data); ``""``
          when there is no value (204 ``noResp``, an empty answer);
        - JSON routes (endpoints, resources, limits, rest-versions, pre-subscriptions,
          callback): the decoded JSON (``list`` or ``dict``);
        - text routes (version, subscription listings): ``str``;
        - on error: the error body as ``str`` (may be ``""``).
    :var payload: the raw value bytes (base64-decoded), whatever the type; ``None`` when
        there is no value.
    :var status_code: the HTTP status of the call; once an async response arrives, that
        response's status (the HTTP status stays in ``http_status``). 0 when no HTTP
        answer came (see :class:`response_codes`).
    :var raw_data: the HTTP body (``bytes``); once an async response arrives, that
        ``async-responses`` entry (``dict``).
    :var async_id: the ``async-response-id`` of a 202 answer, else ``None``.
    :var endpoint, resource: what the call was about (``""`` if not applicable).

    ``cbfn`` (``callback``) is called exactly once, with this object, when it is done:
    on the calling thread for an immediate answer (or an async answer that arrived
    before the 202 returned), on the thread that delivered the async response otherwise
    (the long-poll thread, or the caller of ``handler()``); an expiry calls it on the
    thread that found the id overdue.
    """

    error: Literal[False] | response_codes
    result: Any
    payload: bytes | None
    status_code: int | None
    http_status: int | None
    status: int | None
    raw_data: Any
    async_id: str | None
    endpoint: str
    resource: str
    callback: Callback | str | None
    extra: dict[str, Any]

    def __init__(self, callback: Callback | str | None = "") -> None:
        self.is_done = False
        self.result = {}
        self.payload = None
        self.status_code = None
        self.http_status = None
        self.status = None
        self.raw_data = {}
        self.callback = callback
        self.next_step = ""
        self.extra = {}
        self.error = False
        self.endpoint = ""
        self.resource = ""
        self.async_id = None
        # Made by the first wait(): most results end in a callback and are never waited
        # for, and an Event (a Condition and two locks) per call is measurable at scale.
        self._event: threading.Event | None = None
        self._lock = threading.Lock()
        # Set by the connector for pending async results: when wait() reaches this
        # monotonic deadline it asks the connector to expire overdue ids, so a waiter
        # gets its timeout error on time even when nothing else runs the expiry.
        self._deadline: float | None = None
        self._expire: Callable[[], None] | None = None

    def isDone(self) -> bool:
        """True once the operation has completed (successfully or not)."""
        return self.is_done

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done (``True``) or until ``timeout`` seconds passed (``False``)."""
        with self._lock:
            if self.is_done:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        end = None if timeout is None else time.monotonic() + timeout
        expiry_checked = False
        while not event.is_set():
            now = time.monotonic()
            step = None if end is None else end - now
            if step is not None and step <= 0:
                break
            deadline, expire = self._deadline, self._expire
            if deadline is not None and expire is not None and not expiry_checked:
                until_expiry = max(deadline - now, 0.0) + 0.01
                step = until_expiry if step is None else min(step, until_expiry)
            else:
                deadline = expire = None
            if event.wait(step):
                break
            if deadline is not None and expire is not None and time.monotonic() >= deadline:
                expire()  # completes this result with its timeout error
                expiry_checked = True
        return event.is_set()

    def _complete(
        self,
        *,
        error: Literal[False] | response_codes,
        result: Any,
        status_code: int | None,
        raw_data: Any = None,
        payload: bytes | None = None,
    ) -> bool:
        """Fill the fields, mark done, wake waiters, call ``cbfn``. Only the first call counts."""
        with self._lock:
            if self.is_done:
                return False
            self.error = error
            self.result = result
            self.status_code = status_code
            if raw_data is not None:
                self.raw_data = raw_data
            self.payload = payload
            self._deadline = None
            self._expire = None
            self.is_done = True
            event = self._event
        if event is not None:
            event.set()
        cb = self.callback
        if cb and callable(cb):
            try:
                cb(self)
            except Exception:
                log.exception("cbfn %r raised for %s%s", cb, self.endpoint, self.resource)
        return True

    def _accepted(self, status_code: int, raw_data: Any) -> None:
        """The service accepted the call (202); its answer comes later, unless it came
        already (on the channel's thread, while the 202 was on its way)."""
        with self._lock:
            if not self.is_done:
                self.status_code = status_code
                self.raw_data = raw_data

    def __repr__(self) -> str:
        state = "done" if self.is_done else "pending"
        err = f", error={self.error.errType!r}" if self.error else ""
        return (
            f"<asyncResult {state} status_code={self.status_code!r}"
            f" endpoint={self.endpoint!r} resource={self.resource!r}"
            f" async_id={self.async_id!r}{err}>"
        )
