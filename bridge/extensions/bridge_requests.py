"""Bridge requests: ``<prefix>/$bridge/request/<action>`` -> ``.../$bridge/response/<action>``.

The body is empty or a JSON object; its ``transaction`` member (any JSON value) is echoed
in the response, which is ``{"action", "ok", "status", "data", "error", "transaction"}``.
MQTT 5 requests with a Response Topic get the response there, with their Correlation
Data. Actions:

====================== ================================== ===============================
action                 body members                       ``data`` of a success
====================== ================================== ===============================
endpoints              ``type`` (optional filter)         list of {name, type, q, status,
                                                          state}
resources              ``endpoint``                       list of {path, rt, ct, obs,
                                                          topic}
subscribe              ``endpoint``, ``path``             {endpoint, path, status}
unsubscribe            ``endpoint``, ``path``             {endpoint, path, status}
get-presubscriptions                                      the rules (list)
set-presubscriptions   ``rules`` (list, Connector form)   the rules now in force
remove                 ``endpoint``                       {endpoint, state, resources}
pending                ``endpoint`` (optional filter)     {devices: [{endpoint,
                                                          at_service, sending, waiting,
                                                          window, requests}], limit,
                                                          window, truncated}
info                                                      version, uptime, Connector,
                                                          counters, ...
====================== ================================== ===============================

``pending`` lists the requests that wait per device (:mod:`bridge.upstream.device_queue`),
oldest first: those at the service (sent, not answered), the one being sent (or held:
the service's queue was full) and those waiting in the bridge (not sent yet), each with
``state``, ``verb``/``method``, ``path``, ``age`` (seconds since it came), ``expiry``
and ``retry`` (as asked), ``sent_expiry`` (the ``expiry-seconds`` it went with) and
``timeout_in`` (seconds until the bridge gives up on it).

``remove`` forgets an endpoint that is gone for good (de-registered or expired): its
retained ``$state``, ``$resources``, values and Home Assistant configs are cleared. A
registered endpoint is refused (409: it would come back at once), one the bridge does not
know is 404.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from bridge import __version__
from bridge.downstream.link import Inbound
from bridge.downstream.topics import PayloadError, encode_bridge_response, parse_bridge_request
from bridge.extensions.base import BridgeContext, Extension
from bridge.service.settings import env_name
from bridge.upstream.port import Outcome
from bridge.upstream.rules import check_rules

log = logging.getLogger("bridge.requests")

Respond = Callable[[Outcome], None]


class _BadRequest(Exception):
    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _text_field(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise _BadRequest(f"{key!r} is required (a non-empty string)")
    return value


class BridgeRequests(Extension):
    name = "bridge_requests"

    def __init__(self, ctx: BridgeContext) -> None:
        super().__init__(ctx)
        self._calls = ctx.port.calls()
        self._actions: dict[str, Callable[[dict[str, Any], Respond], None]] = {
            "endpoints": self._endpoints,
            "resources": self._resources,
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "get-presubscriptions": self._get_presubscriptions,
            "set-presubscriptions": self._set_presubscriptions,
            "remove": self._remove,
            "pending": self._pending,
            "info": self._info,
        }

    def start(self) -> None:
        # A group of bridges: every replica answers, each naming itself (``info`` says
        # which, and status shows the leader's). Not a shared subscription: Mosquitto hands a
        # shared message to a dead replica's persistent session too, where nobody answers it.
        self.ctx.mqtt.subscribe(self.ctx.topics.bridge_request_filter, self._on_message, qos=1)

    # ---- arrival (network thread) -> a command worker ---------------------------------

    def _on_message(self, msg: Inbound) -> None:
        action = self.ctx.topics.bridge_action(msg.topic)
        if action is None or msg.retain:
            msg.ack()
            return
        self.ctx.counters.add("bridge_requests")
        transaction: Any = None

        def respond(outcome: Outcome) -> None:
            data = outcome.result if outcome.ok else None
            body = encode_bridge_response(
                action,
                ok=outcome.ok,
                data=data,
                error=outcome.error,
                status=outcome.status,
                transaction=transaction,
            )
            self.ctx.respond(msg, self.ctx.topics.bridge_response(action), body)
            msg.ack()

        try:
            request = parse_bridge_request(msg.payload)
        except PayloadError as exc:
            respond(Outcome(False, 400, None, exc.reason))
            return
        transaction = request.get("transaction")
        problem = self.ctx.response_topic_problem(msg)
        if problem is not None:
            respond(Outcome(False, 400, None, problem))
            return
        handler = self._actions.get(action)
        if handler is None:
            known = ", ".join(self._actions)
            respond(Outcome(False, 404, None, f"unknown action {action!r}; known: {known}"))
            return

        def run() -> None:
            try:
                handler(request, respond)
            except _BadRequest as exc:
                respond(Outcome(False, exc.status, None, exc.reason))
            except Exception as exc:
                log.exception("bridge request %r failed", action)
                respond(Outcome(False, 500, None, f"bridge error: {exc}"))

        if not self.ctx.commands.submit(run):
            respond(Outcome(False, 503, None, f"bridge busy ({env_name('command_queue')})"))

    # ---- actions (command worker threads) ---------------------------------------------

    @staticmethod
    def _sync(outcome: Outcome, respond: Respond, data: Any) -> None:
        """Answer from a call that completed at once."""
        if outcome.ok:
            respond(Outcome(True, outcome.status, None, None, data))
        else:
            respond(Outcome(False, outcome.status, None, outcome.error))

    def _endpoints(self, body: dict[str, Any], respond: Respond) -> None:
        ept = body.get("type", "")
        if not isinstance(ept, str):
            raise _BadRequest("'type' must be a string")
        outcome = self.ctx.port.list_endpoints(ept)
        data = None
        if outcome.ok:
            data = []
            for e in outcome.result:
                known = self.ctx.registry.get(e.name)
                data.append(
                    {
                        "name": e.name,
                        "device_id": e.device_id or e.name,
                        "endpoint_name": e.endpoint_name or e.name,
                        "type": e.type,
                        # Today's listing has no queue mode (only registration messages
                        # carry it): what the bridge learnt wins over the listing's default.
                        "q": known.queue_mode if known else e.queue_mode,
                        "status": e.status,
                        "state": known.state if known else None,
                    }
                )
        self._sync(outcome, respond, data)

    def _resources(self, body: dict[str, Any], respond: Respond) -> None:
        ep = _text_field(body, "endpoint")
        outcome = self.ctx.port.list_resources(ep)
        data = None
        if outcome.ok:
            data = [
                {**res.as_dict(), "topic": self.ctx.topics.value(ep, res.path)}
                for res in outcome.result
            ]
        self._sync(outcome, respond, data)

    def _subscribe(self, body: dict[str, Any], respond: Respond) -> None:
        ep, path = _text_field(body, "endpoint"), _text_field(body, "path")
        known = self.ctx.registry.get(ep)
        s = self.ctx.settings
        timeout = s.queue_mode_timeout if known and known.queue_mode else s.command_timeout

        def done(outcome: Outcome) -> None:
            data = {"endpoint": ep, "path": path, "status": outcome.status}
            respond(Outcome(outcome.ok, outcome.status, None, outcome.error, data))

        self.ctx.port.subscribe(
            ep, path, done, calls=self._calls, timeout=timeout,
            timeout_text=f"no answer within {timeout:g} s",
        )  # fmt: skip

    def _unsubscribe(self, body: dict[str, Any], respond: Respond) -> None:
        ep, path = _text_field(body, "endpoint"), _text_field(body, "path")
        outcome = self.ctx.port.unsubscribe(ep, path)
        self._sync(outcome, respond, {"endpoint": ep, "path": path, "status": outcome.status})

    def _get_presubscriptions(self, body: dict[str, Any], respond: Respond) -> None:
        outcome = self.ctx.port.get_presubscriptions()
        self._sync(outcome, respond, outcome.result)

    def _set_presubscriptions(self, body: dict[str, Any], respond: Respond) -> None:
        if "rules" not in body:
            raise _BadRequest("'rules' is required (a list of pre-subscription rules)")
        try:
            rules = check_rules(body["rules"])
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        outcome = self.ctx.port.put_presubscriptions(rules)
        if outcome.ok:
            self.ctx.rules[:] = rules
        self._sync(outcome, respond, rules)

    def _remove(self, body: dict[str, Any], respond: Respond) -> None:
        name = _text_field(body, "endpoint")
        ep = self.ctx.forget_endpoint(name, "request")
        if ep is None:
            if self.ctx.registry.get(name) is None:
                raise _BadRequest(f"unknown endpoint {name!r}", 404)
            raise _BadRequest(
                f"endpoint {name!r} is registered; only a de-registered or expired endpoint "
                "can be removed",
                409,
            )
        log.info("%r removed on request (it was %s)", name, ep.state)
        resources = None if ep.resources is None else len(ep.resources)
        respond(
            Outcome(
                True, 200, None, None, {"endpoint": name, "state": ep.state, "resources": resources}
            )
        )

    def _pending(self, body: dict[str, Any], respond: Respond) -> None:
        name = body.get("endpoint")
        if name is not None and (not isinstance(name, str) or not name):
            raise _BadRequest("'endpoint' must be a non-empty string (or left out: every device)")
        respond(Outcome(True, 200, None, None, self.ctx.port.pending_requests(name)))

    def _info(self, body: dict[str, Any], respond: Respond) -> None:
        ctx = self.ctx
        limits = ctx.port.limits()
        extensions = ctx.info.get("extensions", {})
        data = {
            "version": __version__,
            "uptime": round(time.time() - ctx.started_at, 3),
            "started_at": ctx.started_at,
            "connector": {
                "url": ctx.settings.connector_url,
                "version": ctx.info.get("connector_version"),
                "rest_versions": ctx.info.get("rest_versions"),
                "limits": limits.result if limits.ok else None,
                "api": ctx.info.get("connector_api"),
                "channel": ctx.info.get("channel", ctx.settings.notification_channel),
                "channel_stats": ctx.port.channel_stats(),
                "async_pending": ctx.port.pending_count(),
            },
            "mqtt": {
                "protocol": ctx.settings.mqtt_protocol,
                "connected": ctx.mqtt.connected,
                "outbox": ctx.mqtt.outbox_size(),
                **ctx.mqtt.stats,
            },
            "endpoints": ctx.registry.counts(),
            "counters": ctx.counters.snapshot(),
            "extensions": {name: fn() for name, fn in extensions.items()},
            "prefix": ctx.topics.prefix,
            "presubscriptions": list(ctx.rules),
        }
        if ctx.cluster is not None:  # a replica of a group: which one answered
            data["cluster"] = ctx.cluster.figures()
        respond(Outcome(True, 200, None, None, data))
