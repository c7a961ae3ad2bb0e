"""Calls whose answer comes later, each finished exactly once, with one deadline each.

A resource verb answers at once (cache, error) or later on the notification channel;
the bridge also gives up after the call's own time-out. Whichever comes first finishes
the call, through one ``dict.pop`` (atomic), so a command gets exactly one reply however
the answer, a refusal and the time-out race. The time-out is the call's one entry in the
shared :class:`~bridge.core.workers.Deadlines` heap: the client keeps no deadline of its
own for the answer (the port creates it with ``asyncTimeout=None``); when the call ends
first, the try's ``forget`` lets the client stop waiting for it, so nothing is left behind.

A call may be tried again when a try failed in a way a retry can mend (the caller's
:class:`~bridge.core.retry.RetryPolicy` says which, and how long to wait): the retry is
scheduled on the deadline heap and made on a worker (``resubmit``), never by sleeping on a
thread, and only while the call's own time-out leaves room for an answer. If the time-out
comes first, the call ends with the last failure (say 503 or a connection error), not a
misleading "no answer from the device".

A call may also take a *turn* (:class:`Turn`; a request to a device takes its place in
the device's line, :mod:`bridge.upstream.device_queue`): its first try is made when the
turn says so, possibly later and on a worker (``resubmit``); its deadline runs from the
start all the same, and a call that times out while still waiting says so. A try the
turn holds (the service's queue for the device is full) is made again when the turn
says; the turn learns when the service took the call, and when it ended.

This module knows nothing of a Connector API: a try is a :data:`Starter` that some port
implementation (:mod:`bridge.upstream.port`) supplies.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.core.counters import Counters
from bridge.core.retry import ErrorKind, RetryPolicy
from bridge.core.workers import Deadline, Deadlines

log = logging.getLogger("bridge.calls")

RETRY_MARGIN = 0.5  # a retry is made only if this much time is left after its delay


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended, in the terms of a reply.

    ``kind`` says why a failure failed (None for a success, or a failure the bridge
    decided itself); ``deferred``: the answer came later, from the device (the Connector
    had taken the call); ``result``: what a listing or a bridge request gives.
    """

    ok: bool
    status: int | None
    payload: bytes | None = None
    error: str | None = None
    result: Any = None
    content_type: str | None = None  # of an async response's payload (its ``ct``)
    kind: ErrorKind | None = None
    deferred: bool = False
    # A read of an object instance: the values it gave by resource path, decoded on the
    # Connector side ({} when the answer is in a format it does not decode); else None.
    values: Mapping[str, bytes] | None = None
    # A failure the service named (today's ``DEVICE_NOT_CONNECTED``, ``QUEUE_IS_FULL``, an
    # async response's ``TIMEOUT``, ``REQUEST_EXPIRED``...): replies carry it as ``code``.
    code: str | None = None


Done = Callable[[Outcome], None]
Forget = Callable[[], object]
Starter = Callable[[Done], "Forget | None"]
"""One try: ``starter(answer)`` makes the request and calls ``answer`` once with its
outcome (at once, or later from the channel); returns how to tell the client to stop
waiting for the answer (called when the call ends first), or None."""
Resubmit = Callable[[Callable[[], object]], bool]
"""Runs a task on a worker; False when it cannot (the call then ends with its failure)."""


class Turn(Protocol):
    """A call's place in a line (:class:`bridge.upstream.device_queue.Ticket`)."""

    def enter(
        self, go: Callable[[bool], None], accepted: Callable[[], object] | None
    ) -> str | None:
        """Join; ``go(inline)`` makes the first try; a refusal text instead."""

    def taken(self) -> float | None:
        """The service took the call; a later deadline (monotonic) it needs, or None."""

    def hold(self, status: int | None, code: str | None, again: Callable[[], None]) -> bool:
        """Whether the turn holds a refused try, to call ``again`` later."""

    def left(self) -> None:
        """The call ended."""

    def waiting_text(self) -> str | None:
        """Why the call never reached the service, if it did not."""


@dataclass(slots=True)
class _Call:
    call: Starter
    end: float  # monotonic time of the call's time-out (a turn may move it later)
    retry: RetryPolicy | None
    accepted: Callable[[], object] | None
    text: str  # the time-out's text
    turn: Turn | None = None
    deadline: Deadline | None = None
    last: Outcome | None = None  # the last failure of a try that is being retried
    forget: Forget | None = None  # of the try under way, once it gave an async id


class AsyncCalls:
    """Calls under way (one group of them: an extension's); each finishes once, by its
    answer or by its deadline."""

    def __init__(
        self,
        deadlines: Deadlines,
        counters: Counters | None = None,
        resubmit: Resubmit | None = None,
    ) -> None:
        self._deadlines = deadlines
        self._counters = counters  # counts "async_timeouts" when given
        self._resubmit = resubmit  # where retries run (no retries without it)
        self._pending: dict[int, tuple[Done, _Call]] = {}
        self._seq = itertools.count()
        self._closing = False  # finish_all under way: a turn that comes is not taken

    def start(
        self,
        call: Starter,
        timeout: float,
        done: Done,
        timeout_text: str,
        *,
        retry: RetryPolicy | None = None,
        accepted: Callable[[], object] | None = None,
        turn: Turn | None = None,
    ) -> int:
        """Run ``call(answer)`` and call ``done`` once: with the outcome, or with a 504
        ``timeout_text`` after ``timeout``.

        ``retry``: try again (see the module doc). ``accepted`` is called once the
        Connector has taken the call (an async id, or an answer that is not retried), or
        its turn says it waits for long: from then on the bridge alone owes the answer.
        ``turn``: the first try waits for it (see the module doc).
        """
        key = next(self._seq)
        c = _Call(call, time.monotonic() + timeout, retry, accepted, timeout_text, turn)
        self._pending[key] = (done, c)
        c.deadline = self._deadlines.schedule(timeout, lambda: self._time_out(key, c))
        if turn is None:
            self._attempt(key, c, 1)
            return key
        refused = turn.enter(lambda inline: self._go(key, c, inline), accepted)
        if refused is not None:
            self._finish(key, Outcome(False, 503, None, refused))
        return key

    def _go(self, key: int, c: _Call, inline: bool) -> None:
        """The turn says the first try may be made: here, or on a worker."""
        if inline or self._resubmit is None:
            self._attempt(key, c, 1)
            return
        if self._closing or key not in self._pending:
            return  # finish_all ends it (and the turn lets the next go)
        if not self._resubmit(lambda: self._attempt(key, c, 1)):
            # Not here (this may be the channel thread, in a chain of such calls).
            busy = Outcome(False, 503, None, "bridge busy: no worker free to send it")
            self._deadlines.schedule(0.0, lambda: self._finish(key, busy))

    def _attempt(self, key: int, c: _Call, attempt: int) -> None:
        if key not in self._pending:
            return  # timed out while waiting for this try
        retried = False

        def answer(outcome: Outcome) -> None:
            nonlocal retried
            if (
                c.turn is not None
                and not outcome.ok
                and not outcome.deferred
                and c.turn.hold(
                    outcome.status, outcome.code, lambda: self._again(key, c, attempt + 1)
                )
            ):
                retried = True  # made again when the turn says
                c.last = outcome
                return
            if (
                c.retry is not None
                and self._resubmit is not None
                and not outcome.ok
                and not outcome.deferred
            ):
                delay = c.retry.delay(outcome, attempt)
                if delay is not None and time.monotonic() + delay + RETRY_MARGIN < c.end:
                    retried = True
                    c.last = outcome
                    log.info(
                        "Connector call failed (%s %s); try %d in %.2f s",
                        outcome.status, outcome.error, attempt + 1, delay,
                    )  # fmt: skip
                    self._deadlines.schedule(delay, lambda: self._again(key, c, attempt + 1))
                    return
            self._finish(key, outcome)

        try:
            forget = c.call(answer)
        except Exception as exc:  # a bug or a bad argument: still one answer
            log.exception("call failed")
            self._finish(key, Outcome(False, 500, None, f"bridge error: {exc}"))
            return
        if retried:
            return
        if forget is not None:
            c.forget = forget
            if key not in self._pending:
                forget()  # ended meanwhile (time-out, stop): the client waits no longer
            elif c.turn is not None:
                later = c.turn.taken()
                if later is not None and later > c.end:
                    c.end = later  # the time-out (below) waits for the service's verdict
        c.last = None  # taken: from now on a time-out means no answer from the device
        if c.accepted is not None:
            c.accepted()

    def _time_out(self, key: int, c: _Call) -> None:
        if key not in self._pending:
            return
        left = c.end - time.monotonic()
        if left > 0.001:  # moved later meanwhile
            c.deadline = self._deadlines.schedule(left, lambda: self._time_out(key, c))
            return
        if self._counters is not None:
            self._counters.add("async_timeouts")
        waiting = c.turn.waiting_text() if c.turn is not None else None
        if waiting is not None:
            self._finish(key, Outcome(False, 504, None, waiting, kind="timeout"))
            return
        self._finish(key, c.last or Outcome(False, 504, None, c.text, kind="timeout"))

    def _again(self, key: int, c: _Call, attempt: int) -> None:
        """On the deadline thread: hand the next try to a worker."""
        if key not in self._pending:
            return
        assert self._resubmit is not None
        if not self._resubmit(lambda: self._attempt(key, c, attempt)):
            self._finish(key, c.last or Outcome(False, 503, None, "bridge busy"))

    def _finish(self, key: int, outcome: Outcome) -> None:
        entry = self._pending.pop(key, None)
        if entry is None:
            return  # already finished (answer after time-out, or the other way round)
        done, c = entry
        if c.deadline is not None:
            c.deadline.cancel()
        if c.forget is not None:
            c.forget()  # answered: a no-op; timed out or stopped: the client lets go
        try:
            done(outcome)
        except Exception:
            log.exception("completion of a call failed")
        if c.turn is not None:
            # After the reply: the next request of the device is sent after this one's
            # reply was handed over, so replies keep the device's order.
            c.turn.left()

    def finish_all(self, outcome: Outcome) -> int:
        """Finish every call under way with ``outcome`` (shutdown); returns how many.
        The latest first, so that a call ending does not let one waiting behind it go."""
        self._closing = True
        n = 0
        try:
            for key in reversed(list(self._pending)):
                if key in self._pending:
                    self._finish(key, outcome)
                    n += 1
        finally:
            self._closing = False
        return n

    def __len__(self) -> int:
        return len(self._pending)
