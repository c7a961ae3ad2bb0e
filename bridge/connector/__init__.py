"""The Connector client: the ``mbed_connector_api`` Python API, on Python 3, done right.

Code written for the original library runs after changing only its import line::

    from bridge.connector import connector

    c = connector("ACCESS-KEY", "http://127.0.0.1:8080")
    c.startLongPolling()                      # async answers arrive on this channel

    r = c.getEndpoints()
    if not r.error:
        for ep in r.result:                   # [{"name": ..., "type": ..., ...}]
            print(ep["name"], ep["type"])

    r = c.getResourceValue("node-001", "/3303/0/5700")
    if r.wait(timeout=10) and not r.error:
        print("temperature:", r.result)       # str for text values, bytes for binary
    c.stopLongPolling()

What differs from the original, and where the Connector's REST API description, the seed
reference and the original library disagree (what was chosen):

- Paths: every call goes to ``/v2/...`` except ``GET /`` and ``GET /rest-versions``,
  the two the page marks unversioned. The original sent ``PUT /subscriptions``
  (pre-subscriptions), ``PUT``/``GET /notification/callback`` unversioned (but
  ``DELETE`` versioned) and ``DELETE /v2/subscriptions/`` with a trailing slash; the
  page gives them under ``/v2`` without the slash, and the page wins.
- PUT/POST bodies are raw bytes (``str`` as UTF-8 ``text/plain``, ``bytes`` as
  ``application/octet-stream``), as the page says; the original JSON-quoted them.
- 204 (``noResp``) is a success with ``result == ""`` and ``payload is None`` (page);
  the original reported it as an error. 205 (``cacheOnly``, nothing cached) stays an
  error, as in the original: the value asked for is not there. PUT accepts 200 and 201
  as immediate success, POST 200 and 201 (the original: only 200, only 201).
- An async response with ``status >= 400`` is an error with or without an ``error``
  text (page); the original reported it as success without the text.
- ``status_code`` becomes the async response's status once it arrives (the HTTP 202
  stays in ``http_status``); the original left 202 there and set ``.status``, which is
  set too.
- ``cbfn`` is called exactly once for every call that takes one, when the result is
  done: immediate answers and errors included (the original: only async answers and a
  200 GET).
- ``port`` is used only when ``webAddress`` names no port and ``port`` is not ``"80"``
  (the original stored it and never used it; the seed documents it without meaning).
- ``getResources(ep, noResp, cacheOnly)`` sends both flags when either is set, as the
  seed and the original do, although the page lists no query for that route.
- ``putCallback(url, headers)``: the seed types ``headers`` as ``str``, the page as a JSON
  object. A dict, a JSON object string or ``"Name: value"`` lines are accepted and sent
  as an object (the original crashed whenever ``headers`` was given).
- ``startLongPolling(noWait=True)`` really pulls with ``?noWait=true`` (the original
  ignored the flag); empty answers are paced to one pull a second.
- ``setHandler("async-responses", fn)`` no longer switches off the matching of async
  ids: results are always completed and ``fn`` is called too. An unknown handler name or
  ``debug`` level raises ``ValueError`` (the original logged a warning).
- Failed connections and timeouts return a result with ``error.status_code == 0``
  (``errType`` ``connection_error`` / ``request_timeout``); the original raised the
  ``requests`` exception. ``error.failure`` (an addition) tells by type whether the
  request certainly never reached the service (``"not_sent"``) or may have
  (``"no_answer"``); it is None for an HTTP answer. Async ids expire after
  ``asyncTimeout`` (``async_timeout``).
- Error texts of pre-subscription and subscription-listing calls come from their own
  tables (the original's lookups produced "ERROR: Unknown error.").
- ``handler(data)`` takes ``str``, ``bytes`` or a parsed dict (the original: ``str``).
- ``debug()`` controls the ``bridge.connector`` logger (the original: a stream handler
  on a global ``mdc-api-logger`` added by every constructor).

Today's service (``connector(token, url, api="current")``; the default ``api="legacy"``
is the 2016 Connector and on-premise Device Server the seed was written for). Device
Management, run by Izuma Networks, removed the endpoint list, the resource calls and the
long poll; each seed method maps onto what it has now (:mod:`bridge.connector.dialects`):

====================================  ====================================================
seed method                           today's call
====================================  ====================================================
``getEndpoints(type)``                every page of ``GET /v3/devices`` (``limit`` 1000,
                                      ``after``; ``state__eq=registered``, the type as
                                      ``endpoint_type__eq``); ``name`` is the device ID,
                                      ``endpoint_name`` and ``device`` beside it
``getResources(ep)``                  ``GET /v2/endpoints/{id}`` (as before)
``getResourceValue``,                 ``POST /v2/device-requests/{id}?async-id=`` with
``putResourceValue``,                 ``GET``/``PUT``/``POST``/``DELETE`` (``uri`` ``/``
``postResource``, ``deleteEndpoint``  for ``deleteEndpoint``), the value base64 in
                                      ``payload-b64``; the async id is made by the client
                                      and waits before the request goes out; the answer
                                      always comes on the channel; ``retry`` and
                                      ``expiry`` become ``retry`` and ``expiry-seconds``
subscriptions, pre-subscriptions,     the same routes
callback
``startLongPolling``                  removed by the service (404, logged as such): use
                                      ``startWebsocket()`` or ``putCallback()``
``getConnectorVersion``,              no such routes: an ``unsupported`` error
``getApiVersions``, ``getLimits``
``noResp``, ``cacheOnly``             no equivalent: an ``unsupported`` error
====================================  ====================================================

``retry`` and ``expiry`` on the legacy service give the ``unsupported`` error too. Error
bodies of today's service (``{"object": "error", ...}``) are read into the error object
(``errorType``, ``errorCode``, ``requestId``, ``fields``); an async response's ``error``
(``TIMEOUT``, ``REQUEST_EXPIRED``) is its ``errorCode``. Channel entries whose ``uid``
was seen before are dropped (a window of the last ``duplicateWindow`` uids) and counted
(:meth:`~connector.duplicatesDropped`); an async response's ``max-age`` is read as a
number whether it came as one or as a string.

Exports: :class:`connector`, :class:`asyncResult`, :class:`response_codes` and
:func:`decode_payload` (the bytes of a notification's base64 ``payload``).
"""

import logging

from bridge.connector.api import HANDLER_NAMES, connector
from bridge.connector.errors import response_codes
from bridge.connector.result import asyncResult, decode_payload

logging.getLogger("bridge.connector").addHandler(logging.NullHandler())

__all__ = ["HANDLER_NAMES", "asyncResult", "connector", "decode_payload", "response_codes"]
