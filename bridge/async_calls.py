"""Connector calls whose answer comes later, each finished exactly once.

A resource verb answers at once (cache, error) or later on the notification channel;
the bridge also gives up after its own time-out. Whichever comes first finishes the
call, through one ``dict.pop`` (atomic), so a command gets exactly one reply however the
answer, a refusal and the time-out race. Time-outs are entries in the shared
:class:`~bridge.workers.Deadlines` heap, not threads.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.connector import asyncResult
from bridge.workers import Deadline, Deadlines

log = logging.getLogger("bridge.calls")

# Client-side failures have status 0 in the client; replies carry an HTTP-like status.
_CLIENT_STATUS = {
    "connection_error": 502,
    "request_timeout": 504,
    "async_timeout": 504,
    "invalid_response": 502,
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended, in the terms of a reply."""

    ok: bool
    status: int | None
    payload: bytes | None = None
    error: str | None = None
    result: Any = None


def outcome_of(r: asyncResult) -> Outcome:
    if r.error:
        status = r.error.status_code or _CLIENT_STATUS.get(r.error.errType, 502)
        return Outcome(False, status, r.payload, r.error.error, r.result)
    return Outcome(True, r.status_code, r.payload, None, r.result)


Done = Callable[[Outcome], None]
Starter = Callable[[Callable[[asyncResult], None]], object]


class AsyncCalls:
    """Calls under way; each finishes once, by its answer or by its deadline."""

    def __init__(self, deadlines: Deadlines) -> None:
        self._deadlines = deadlines
        self._pending: dict[int, tuple[Done, Deadline]] = {}
        self._seq = itertools.count()

    def start(self, call: Starter, timeout: float, done: Done, timeout_text: str) -> int:
        """Run ``call(cbfn)`` (which must call ``cbfn`` once with the result) and call
        ``done`` once: with the result, or with a 504 ``timeout_text`` after ``timeout``."""
        key = next(self._seq)
        deadline = self._deadlines.schedule(
            timeout, lambda: self._finish(key, Outcome(False, 504, None, timeout_text))
        )
        self._pending[key] = (done, deadline)
        try:
            call(lambda r: self._finish(key, outcome_of(r)))
        except Exception as exc:  # a bug or a bad argument: still one answer
            log.exception("call failed")
            self._finish(key, Outcome(False, 500, None, f"bridge error: {exc}"))
        return key

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
