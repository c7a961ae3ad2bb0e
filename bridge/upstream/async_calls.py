"""Connector calls whose answer comes later, each finished exactly once.

A resource verb answers at once (cache, error) or later on the notification channel;
the bridge also gives up after its own time-out. Whichever comes first finishes the
call, through one ``dict.pop`` (atomic), so a command gets exactly one reply however the
answer, a refusal and the time-out race. Time-outs are entries in the shared
:class:`~bridge.core.workers.Deadlines` heap, not threads.

A call may be tried again when its HTTP request failed in a way a retry can mend (the
caller's ``retry`` policy says which, and how long to wait): the retry is scheduled on
the deadline heap and made on a worker (``resubmit``), never by sleeping on a thread,
and only while the call's own time-out leaves room for an answer. If the time-out comes
first, the call ends with the last failure (say 503 or a connection error), not a
misleading "no answer from the device".
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.connector import asyncResult
from bridge.core.counters import Counters
from bridge.core.workers import Deadline, Deadlines

log = logging.getLogger("bridge.calls")

# Client-side failures have status 0 in the client; replies carry an HTTP-like status.
_CLIENT_STATUS = {
    "connection_error": 502,
    "request_timeout": 504,
    "async_timeout": 504,
    "invalid_response": 502,
}
RETRY_MARGIN = 0.5  # a retry is made only if this much time is left after its delay


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended, in the terms of a reply."""

    ok: bool
    status: int | None
    payload: bytes | None = None
    error: str | None = None
    result: Any = None
    content_type: str | None = None  # of an async response's payload (its ``ct``)


def outcome_of(r: asyncResult) -> Outcome:
    if r.error:
        status = r.error.status_code or _CLIENT_STATUS.get(r.error.errType, 502)
        return Outcome(False, status, r.payload, r.error.error, r.result)
    ct = r.raw_data.get("ct") if isinstance(r.raw_data, dict) else None
    return Outcome(
        True, r.status_code, r.payload, None, r.result, ct if isinstance(ct, str) else None
    )


Done = Callable[[Outcome], None]
Starter = Callable[[Callable[[asyncResult], None]], object]
RetryPolicy = Callable[[asyncResult, int], "float | None"]
"""``(failed result, attempt number) -> seconds to wait before the next try, or None``.
Asked only for failures of the HTTP call itself (no async id was given)."""
Resubmit = Callable[[Callable[[], object]], bool]
"""Runs a task on a worker; False when it cannot (the call then ends with its failure)."""


@dataclass(slots=True)
class _Call:
    call: Starter
    end: float  # monotonic time of the call's time-out
    retry: RetryPolicy | None
    resubmit: Resubmit | None
    accepted: Callable[[], object] | None
    last: Outcome | None = None  # the last failure of a try that is being retried


class AsyncCalls:
    """Calls under way; each finishes once, by its answer or by its deadline."""

    def __init__(self, deadlines: Deadlines, counters: Counters | None = None) -> None:
        self._deadlines = deadlines
        self._counters = counters  # counts "async_timeouts" when given
        self._pending: dict[int, tuple[Done, Deadline]] = {}
        self._seq = itertools.count()

    def start(
        self,
        call: Starter,
        timeout: float,
        done: Done,
        timeout_text: str,
        *,
        retry: RetryPolicy | None = None,
        resubmit: Resubmit | None = None,
        accepted: Callable[[], object] | None = None,
    ) -> int:
        """Run ``call(cbfn)`` (which must call ``cbfn`` once with the result) and call
        ``done`` once: with the result, or with a 504 ``timeout_text`` after ``timeout``.

        ``retry``/``resubmit``: try again (see the module doc). ``accepted`` is called
        once the Connector has taken the call (an async id, or an answer that is not
        retried): from then on the bridge alone owes the answer.
        """
        key = next(self._seq)
        c = _Call(call, time.monotonic() + timeout, retry, resubmit, accepted)
        deadline = self._deadlines.schedule(timeout, lambda: self._time_out(key, c, timeout_text))
        self._pending[key] = (done, deadline)
        self._attempt(key, c, 1)
        return key

    def _attempt(self, key: int, c: _Call, attempt: int) -> None:
        if key not in self._pending:
            return  # timed out while waiting for this try
        retried = False

        def cbfn(r: asyncResult) -> None:
            nonlocal retried
            if c.retry is not None and c.resubmit is not None and r.error and r.async_id is None:
                delay = c.retry(r, attempt)
                if delay is not None and time.monotonic() + delay + RETRY_MARGIN < c.end:
                    retried = True
                    c.last = outcome_of(r)
                    log.info(
                        "Connector call failed (%s); try %d in %.2f s", r.error, attempt + 1, delay
                    )
                    self._deadlines.schedule(delay, lambda: self._again(key, c, attempt + 1))
                    return
            self._finish(key, outcome_of(r))

        try:
            c.call(cbfn)
        except Exception as exc:  # a bug or a bad argument: still one answer
            log.exception("call failed")
            self._finish(key, Outcome(False, 500, None, f"bridge error: {exc}"))
            return
        if retried:
            return
        c.last = None  # taken: from now on a time-out means no answer from the device
        if c.accepted is not None:
            c.accepted()

    def _time_out(self, key: int, c: _Call, text: str) -> None:
        if key in self._pending and self._counters is not None:
            self._counters.add("async_timeouts")
        self._finish(key, c.last or Outcome(False, 504, None, text))

    def _again(self, key: int, c: _Call, attempt: int) -> None:
        """On the deadline thread: hand the next try to a worker."""
        if key not in self._pending:
            return
        assert c.resubmit is not None
        if not c.resubmit(lambda: self._attempt(key, c, attempt)):
            self._finish(key, c.last or Outcome(False, 503, None, "bridge busy"))

    def _finish(self, key: int, outcome: Outcome) -> None:
        entry = self._pending.pop(key, None)
        if entry is None:
            return  # already finished (answer after time-out, or the other way round)
        done, deadline = entry
        deadline.cancel()
        try:
            done(outcome)
        except Exception:
            log.exception("completion of a call failed")

    def finish_all(self, outcome: Outcome) -> int:
        """Finish every call under way with ``outcome`` (shutdown); returns how many."""
        n = 0
        for key in list(self._pending):
            if key in self._pending:
                self._finish(key, outcome)
                n += 1
        return n

    def __len__(self) -> int:
        return len(self._pending)
