"""Commands: ``.../set`` -> PUT, ``.../post`` -> POST, ``.../get`` -> GET, one reply each.

A command arrives on paho's network thread; everything that can be decided without the
Connector is decided there (topic well-formed, payload within ``max_payload`` and a
valid envelope, endpoint known and online) and answered at once. The rest goes through
a bounded queue to the fixed pool of command workers, which make the REST call; the
answer comes back on the channel thread (async response) or from the deadline heap
(time-out), and whichever comes first publishes the one reply:

- on ``<command topic>/reply``, or on the MQTT 5 Response Topic with its Correlation
  Data when the command had one;
- JSON with endpoint, path, verb, method, status, ok, payload (+ encoding), error and the
  envelope's ``transaction`` (see :func:`bridge.downstream.topics.parse_command_payload`).

A successful ``get`` also republishes the value on the value topic. Commands that arrive
before the start-up listing of endpoints is done wait for it (bounded), so that a
persistent session's queued commands are not refused as "unknown endpoint".

At least once: a QoS 1 command is acknowledged to the broker only when the Connector
has taken it (an async id, or its answer) or its error reply has been published, so a
bridge that dies before that gets it again from its persistent session. The exception:
a command that must wait in the bridge for an earlier one to be answered (its device's
20 places at the service are taken, :mod:`bridge.upstream.device_queue`) is
acknowledged when it starts to wait, since it may wait as long as the device sleeps and
an unacknowledged one would hold one of the broker's in-flight places for the bridge
(Mosquitto's ``max_inflight_messages``, 20) all that time, stopping every other command;
a stop answers it (503), a crash loses it. Such a resent
command may have been carried out already: its reply then carries ``"redelivered":
true`` (the MQTT DUP flag). A REST call that fails in a way a retry can mend is tried
again with back-off within the command's time-out (:data:`RETRY` says which).

In a group of bridges (``BRIDGE_CLUSTER_ETCD``) the same path carries the commands of
the replica's command slots (:class:`bridge.cluster.commands.CommandSlots`, the
:class:`CommandGate`): the slots' clients hand their commands to :meth:`Commands.take`
(the main link takes none), the gate writes the command's in-flight record and names
the async id just before the device request goes out, and claims the command's
``answered`` mark before its one reply; a command another replica answered (a copy the
broker resent, a slot taken over) is only acknowledged here.

Stopping: new commands are no longer taken (with a persistent session they stay with the
broker, unacknowledged, for the next start; without one they get a 503 reply), commands
under way get ``stop_timeout`` seconds to be answered, then a 503 reply.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.core.events import EndpointsListed, ValueRead
from bridge.core.retry import RetryPolicy
from bridge.downstream.link import Inbound
from bridge.downstream.topics import (
    BRIDGE_LEVEL,
    Command,
    CommandPayload,
    PayloadError,
    TopicError,
    check_size,
    encode_reply,
    parse_command_payload,
)
from bridge.extensions.base import BridgeContext, Extension
from bridge.service.settings import env_name
from bridge.upstream.device_queue import EXPIRY_GRACE, EXPIRY_RANGE
from bridge.upstream.port import Outcome, RequestOptions

log = logging.getLogger("bridge.commands")

RETRY_BASE = 0.25  # seconds before the second try of a REST call (doubling, jittered)
RETRY_CAP = 5.0
RETRY_TRIES = 8  # tries of one command at most (its time-out usually ends them first)


# Retried for every verb: what the Connector certainly did not carry out (no connection,
# 412 no notification channel yet, 429 too many requests, 503 unavailable). For ``set``
# and ``get`` (PUT and GET, which do the same when done twice) also other 5xx and lost
# connections or time-outs after the request went out. A ``post`` (execute) that may
# have reached the Connector is never sent twice.
_NOT_TAKEN = frozenset({412, 429, 503})
RETRY: dict[str, RetryPolicy] = {
    verb: RetryPolicy(
        statuses=_NOT_TAKEN,
        kinds=frozenset({"not_sent"}),
        transient=verb != "post",
        tries=RETRY_TRIES,
        base=RETRY_BASE,
        cap=RETRY_CAP,
    )
    for verb in ("set", "post", "get")
}


def retry_delay(verb: str, failure: Outcome, attempt: int) -> float | None:
    """Seconds to wait before trying a command's failed REST call again, or None
    (:data:`RETRY`)."""
    return RETRY[verb].delay(failure, attempt)


def mark_redelivered(reply: bytes) -> bytes:
    """A reply (a JSON object) with ``"redelivered": true`` added."""
    return reply[:-1] + b',"redelivered":true}'


@dataclass(slots=True)
class _Job:
    command: Command
    body: CommandPayload
    request: Inbound
    slot: str | None = None  # the command slot it came through (a group of bridges)
    async_id: str | None = None  # set by the gate: the command's record is in the store


class CommandGate(Protocol):
    """The command path's hooks in a group of bridges (see the module doc)."""

    def known(self, slot: str, msg: Inbound) -> bool:
        """Whether a copy the broker resent (DUP) is a command the group already carried
        out or carries out (the gate acknowledges it when it is answered)."""

    def before(
        self, slot: str, msg: Inbound, cmd: Command, transaction: Any, timeout: float
    ) -> str | Outcome | None:
        """Just before the device request goes out: the async id it must use (its record
        is written); an Outcome to reply instead (nothing was sent); None: the slot is no
        longer this replica's (the command is left to the broker for its next owner)."""

    def finish(self, slot: str, async_id: str, reply: Callable[[bool], None]) -> None:
        """Claim the command's ``answered`` mark, then ``reply(won)`` (any thread)."""


class Commands(Extension):
    name = "commands"

    def __init__(self, ctx: BridgeContext) -> None:
        super().__init__(ctx)
        self._calls = ctx.port.calls(ctx.commands.submit, ctx.counters)
        self._bridge_space = f"{ctx.topics.prefix}/{BRIDGE_LEVEL}/"
        self._lock = threading.Lock()
        self._listed = False
        self._early: deque[_Job] = deque()
        # Per endpoint, commands waiting for the worker that drains it (see _dispatch).
        self._lines: dict[str, deque[tuple[_Job, bool]]] = {}
        self._stopping = False
        self._queued = 0  # jobs handed to the command workers and not started yet
        self._left = 0  # commands left with the broker at a stop
        self._warned_retained: set[str] = set()
        self.gate: CommandGate | None = None

    def use_gate(self, gate: CommandGate) -> None:
        """A replica of a group: commands come through the gate's slots (:meth:`take`),
        not the main link. Before :meth:`start`."""
        self.gate = gate

    def start(self) -> None:
        if self.gate is None:
            for topic_filter in self.ctx.topics.command_filters(self.ctx.settings.max_path_depth):
                self.ctx.mqtt.subscribe(topic_filter, self._on_message, qos=1, manual_ack=True)
        self.ctx.bus.subscribe(EndpointsListed, self._on_listed)

    # ---- arrival (paho's network thread) --------------------------------------------

    def _on_message(self, msg: Inbound) -> None:
        self.take(msg)

    def take(self, msg: Inbound, slot: str | None = None) -> None:
        """A command from the main link, or (``slot``) from a command slot's client."""
        if msg.topic.startswith(self._bridge_space):
            if slot is not None:
                msg.ack()  # a slot's filters also match bridge requests: not ours here
            return  # bridge requests have their own extension
        if msg.retain:
            # A retained command is replayed by the broker at every (re)subscription:
            # carrying it out again each time would be wrong (MQTT 5 already asks the
            # broker not to send it: Retain Handling 2).
            if msg.topic not in self._warned_retained and len(self._warned_retained) < 1000:
                self._warned_retained.add(msg.topic)
                log.warning("retained command on %r ignored (send commands unretained)", msg.topic)
            msg.ack()
            return
        if slot is not None and msg.dup and self.gate is not None and self.gate.known(slot, msg):
            self.ctx.counters.add("commands_redelivered_known")
            return
        self.ctx.counters.add("commands_received")
        try:
            cmd = self.ctx.topics.parse_command(msg.topic)
        except TopicError as exc:
            self._reject_topic(msg, exc)
            return
        try:
            check_size(msg.payload, self.ctx.settings.max_payload)
            body = parse_command_payload(cmd.verb, msg.payload)
        except PayloadError as exc:
            self._reply(cmd, msg, Outcome(False, exc.status, None, exc.reason), exc.transaction)
            return
        problem = self.ctx.response_topic_problem(msg)
        if problem is not None:
            self._reply(cmd, msg, Outcome(False, 400, None, problem), body.transaction)
            return
        job = _Job(cmd, body, msg, slot)
        with self._lock:
            if not self._listed:
                if len(self._early) < self.ctx.settings.command_queue:
                    self._early.append(job)
                    return
                early_full = True
            else:
                early_full = False
        if early_full:
            self._finish(job, Outcome(False, 503, None, "bridge is starting; try again"))
            return
        self._dispatch(job)

    def _on_listed(self, event: EndpointsListed) -> None:
        with self._lock:
            self._listed = True
            early = list(self._early)
            self._early.clear()
        for job in early:
            self._dispatch(job)

    def _dispatch(self, job: _Job) -> None:
        if self._stopping:
            self._leave(job)
            return
        cmd = job.command
        asks_options = job.body.expiry is not None or job.body.retry is not None
        if asks_options and not self.ctx.port.request_options:
            self._finish(job, Outcome(False, 501, None, self._no_options_text()))
            return
        ep = self.ctx.registry.get(cmd.endpoint)
        if ep is None:
            self._finish(job, Outcome(False, 404, None, f"unknown endpoint {cmd.endpoint!r}"))
            return
        if ep.state != "online":
            self._finish(job, Outcome(False, 410, None, f"endpoint is {ep.state}"))
            return
        # Commands of one device go to the port in the order they came (its line keeps
        # that order to the service): one worker at a time takes them, oldest first.
        name, limit = cmd.endpoint, self.ctx.settings.command_queue
        with self._lock:
            busy = self._queued >= limit
            line = self._lines.get(name)
            if not busy:
                self._queued += 1
                if line is not None:
                    line.append((job, ep.queue_mode))  # the worker draining it takes it
                    return
                self._lines[name] = deque([(job, ep.queue_mode)])
        if not busy and self.ctx.commands.submit(functools.partial(self._drain, name)):
            return
        if not busy:
            with self._lock:
                jobs = list(self._lines.pop(name, ()))
                self._queued -= len(jobs)
        else:
            jobs = [(job, ep.queue_mode)]
        self.ctx.counters.add("commands_busy", len(jobs))
        for refused, _ in jobs:
            self._finish(
                refused,
                Outcome(
                    False,
                    503,
                    None,
                    f"bridge busy: {limit} commands already wait ({env_name('command_queue')})",
                ),
            )

    def _drain(self, name: str) -> None:
        """A command worker: the commands of one device, oldest first, until none is left."""
        while True:
            with self._lock:
                line = self._lines.get(name)
                if not line:
                    self._lines.pop(name, None)
                    return
                job, queue_mode = line.popleft()
            self._call(job, queue_mode)

    def _no_options_text(self) -> str:
        s = self.ctx.settings
        found = " (found by auto)" if s.connector_api == "auto" else ""
        return (
            "expiry and retry are options of today's Device Management (device requests); "
            f"the legacy Connector this bridge talks to{found} has neither "
            f"({env_name('connector_api')}={s.connector_api}): not sent"
        )

    def _options(self, job: _Job) -> RequestOptions | None:
        """The device-request options of a command: the envelope's, and for ``expiry``
        else the MQTT 5 Message Expiry Interval (today's service only, at least its
        minimum): the command is worth nothing after it, at the service either."""
        body, expiry, mqtt_expiry = job.body, job.body.expiry, job.request.message_expiry
        if expiry is None and mqtt_expiry is not None and self.ctx.port.request_options:
            lo, hi = EXPIRY_RANGE
            expiry = min(hi, max(lo, mqtt_expiry))
        if expiry is None and body.retry is None:
            return None
        return RequestOptions(expiry, body.retry)

    # ---- the REST call (a command worker) ---------------------------------------------

    def _leave(self, job: _Job) -> None:
        """Stopping: leave the command to the next start (a persistent session keeps it,
        unacknowledged), or refuse it (503) when nothing would keep it."""
        if self.ctx.mqtt.persistent and job.request.qos > 0:
            with self._lock:
                self._left += 1
            return
        self._finish(job, Outcome(False, 503, None, "bridge is stopping"))

    def _call(self, job: _Job, queue_mode: bool) -> None:
        with self._lock:
            self._queued -= 1
        if self._stopping:
            self._leave(job)
            return
        s = self.ctx.settings
        options = self._options(job)
        expiry = options.expiry if options is not None else None
        if queue_mode and expiry is not None:
            # The reply comes when the device answers or the service gives up on it.
            timeout = expiry + EXPIRY_GRACE
            text = (
                f"no answer within {timeout:g} s: the request's expiry ({expiry} s) passed "
                "and the service said nothing"
            )
        elif queue_mode:
            timeout = s.queue_mode_timeout
            text = (
                f"no answer within {timeout:g} s ({env_name('queue_mode_timeout')}); "
                "the endpoint is in queue mode and answers when it wakes"
            )
        else:
            timeout = s.command_timeout
            text = f"no answer from the device within {timeout:g} s ({env_name('command_timeout')})"
        cmd, body, port = job.command, job.body, self.ctx.port
        if job.slot is not None and self.gate is not None:
            verdict = self.gate.before(job.slot, job.request, cmd, body.transaction, timeout)
            if verdict is None:
                return  # the slot is gone: left unacknowledged, its next owner takes it
            if isinstance(verdict, Outcome):
                self._finish(job, verdict)
                return
            job.async_id = verdict
        aid = job.async_id

        def done(outcome: Outcome) -> None:
            self._finish(job, outcome)

        # Acknowledged when the Connector has taken the call (or its failure was replied):
        # from then on the bridge alone owes the reply, and the broker may forget it.
        retry, ack = RETRY[cmd.verb], job.request.ack
        if cmd.verb == "set":
            port.write(
                cmd.endpoint, cmd.path, body.value, done, calls=self._calls,
                timeout=timeout, timeout_text=text, retry=retry, accepted=ack,
                options=options, async_id=aid,
            )  # fmt: skip
        elif cmd.verb == "post":
            port.execute(
                cmd.endpoint, cmd.path, body.value, done, calls=self._calls,
                timeout=timeout, timeout_text=text, retry=retry, accepted=ack,
                options=options, async_id=aid,
            )  # fmt: skip
        else:
            port.read(
                cmd.endpoint, cmd.path, done, calls=self._calls, timeout=timeout,
                timeout_text=text, cache_only=body.cache_only, retry=retry, accepted=ack,
                options=options, async_id=None if body.cache_only else aid,
            )  # fmt: skip

    # ---- the one reply -----------------------------------------------------------------

    def _finish(self, job: _Job, outcome: Outcome) -> None:
        if job.async_id is not None and job.slot is not None and self.gate is not None:
            # A group: the one to claim the command's answered mark replies.
            self.gate.finish(
                job.slot, job.async_id, functools.partial(self._finished, job, outcome)
            )
            return
        self._finished(job, outcome, True)

    def reply_for(
        self,
        topic: str,
        outcome: Outcome,
        *,
        response_topic: str | None,
        correlation_data: bytes | None,
        transaction: Any,
        dup: bool,
        ack: Callable[[], object] | None = None,
    ) -> None:
        """The reply to a command this replica did not take (a group: a record of a slot
        it took over, claimed), as if it had."""
        cmd = self.ctx.topics.parse_command(topic)
        msg = Inbound(topic, b"", 1, False, response_topic, correlation_data, dup=dup, _ack=ack)
        self._finished(_Job(cmd, CommandPayload(b"", transaction), msg), outcome, True)

    def _finished(self, job: _Job, outcome: Outcome, won: bool) -> None:
        if not won:
            self.ctx.counters.add("commands_answered_elsewhere")
            job.request.ack()  # another replica replied (a slot taken over meanwhile)
            return
        cmd = job.command
        self.ctx.counters.add("commands_ok" if outcome.ok else "commands_failed")
        label = "ok" if outcome.ok else "timeout" if outcome.status == 504 else "failed"
        self.ctx.counters.add(f"commands_{cmd.verb}_{label}")
        self._reply(cmd, job.request, outcome, job.body.transaction)
        if outcome.ok and cmd.verb == "get" and outcome.payload is not None:
            self.ctx.bus.emit(ValueRead(cmd.endpoint, cmd.path, outcome.payload))
        if not outcome.ok:
            log.info(
                "%s %s%s failed: %s %s",
                cmd.method, cmd.endpoint, cmd.path, outcome.status, outcome.error,
            )  # fmt: skip

    def _reply(self, cmd: Command, msg: Inbound, outcome: Outcome, transaction: object) -> None:
        code = None if outcome.ok else outcome.code
        error = outcome.error
        if code is not None and not (error or "").startswith(code):
            error = f"{code}: {error}" if error else code  # ``error`` starts with the name
        body = encode_reply(
            endpoint=cmd.endpoint,
            path=cmd.path,
            verb=cmd.verb,
            status=outcome.status,
            ok=outcome.ok,
            payload=outcome.payload if outcome.ok else None,
            error=error,
            transaction=transaction,
            code=code,
        )
        if msg.dup:
            body = mark_redelivered(body)
        self.ctx.respond(msg, cmd.reply_topic, body)
        msg.ack()

    def _reject_topic(self, msg: Inbound, exc: TopicError) -> None:
        """A command topic that is not well-formed: an error reply where one can go."""
        self.ctx.counters.add("commands_failed")
        if exc.reply_topic is None and (
            msg.response_topic is None or self.ctx.response_topic_problem(msg) is not None
        ):
            log.warning("command on %r ignored: %s", msg.topic[:200], exc.reason)
            msg.ack()
            return
        verb = msg.topic.rsplit("/", 1)[-1]
        body = encode_reply(
            endpoint=None,
            path=None,
            verb=verb,
            status=400,
            ok=False,
            error=f"bad command topic: {exc.reason}",
        )
        if msg.dup:
            body = mark_redelivered(body)
        self.ctx.respond(msg, exc.reply_topic or "", body)
        msg.ack()

    # ---- shutdown ----------------------------------------------------------------------

    def stop(self) -> None:
        """Take no new commands; wait up to ``stop_timeout`` for the answers of those under
        way, then answer the rest 503. Runs before the channel and the workers stop."""
        self._stopping = True
        with self._lock:
            early = list(self._early)
            self._early.clear()
            self._listed = True
        for job in early:
            self._leave(job)
        end = time.monotonic() + self.ctx.settings.stop_timeout
        while (len(self._calls) or self._queued) and time.monotonic() < end:
            time.sleep(0.02)
        n = self._calls.finish_all(
            Outcome(False, 503, None, "bridge stopped before the device answered")
        )
        if n:
            log.warning(
                "%d command(s) answered 503: no answer within %g s (%s)",
                n, self.ctx.settings.stop_timeout, env_name("stop_timeout"),
            )  # fmt: skip
        if self._left:
            log.info("%d command(s) left with the broker for the next start", self._left)

    def info(self) -> dict[str, object]:
        return {
            "under_way": len(self._calls),
            "waiting": self.ctx.commands.pending(),
            "left_at_stop": self._left,
            "device_lines": self.ctx.port.queues.counts(),
        }
