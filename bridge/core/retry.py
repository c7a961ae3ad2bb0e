"""One back-off for every retry loop of the bridge, and the retry policy of its calls.

:func:`backoff_delay` (and :class:`Backoff`, its counter of consecutive failures) is the
only back-off: start-up, the long poll, the reachability probe, resource listings and
the retries of Connector calls all wait with it. A :class:`RetryPolicy` says which failed
call is tried again; it decides on types only: the HTTP status of the answer and the
:data:`ErrorKind` of a failure without one, never on the text of an error.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

ErrorKind = Literal["not_sent", "no_answer", "refused", "bad_answer", "timeout"]
"""Why a call failed: ``not_sent`` (the request never reached the Connector: no
connection), ``no_answer`` (it may have reached it, no answer came: a reset, a read
time-out), ``refused`` (answered with an error status, by the Connector or the device),
``bad_answer`` (answered, but not with what was asked for), ``timeout`` (no answer from
the device within the call's time-out)."""


def backoff_delay(
    failures: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after ``failures`` consecutive failures (``failures >= 1``).

    Exponential from ``base``, capped at ``cap``, with "equal jitter": the result lies in
    ``[d/2, d]`` for ``d = min(cap, base * 2**(failures-1))``. Jitter spreads clients that
    failed together; the lower half keeps a floor under the request rate.
    """
    exp = min(max(failures - 1, 0), 60)
    d = min(cap, base * (2.0**exp))
    return d / 2 + rand() * d / 2


class Backoff:
    """The consecutive failures of one retry loop, and the wait after each."""

    def __init__(self, base: float, cap: float, rand: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self._rand = rand
        self.failures = 0

    def failed(self) -> float:
        """One more failure: the seconds to wait before the next try."""
        self.failures += 1
        return backoff_delay(self.failures, self.base, self.cap, self._rand)

    def succeeded(self) -> None:
        self.failures = 0


class Failed(Protocol):
    """What a policy looks at: a call's outcome (see :class:`bridge.upstream.port.Outcome`)."""

    @property
    def status(self) -> int | None: ...

    @property
    def kind(self) -> ErrorKind | None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which failed tries of a call are made again, and after how long.

    Retried: an answer with one of ``statuses`` (the Connector says it did not carry the
    call out), a failure of one of ``kinds``, and with ``transient`` also what may pass
    by itself (5xx, 429, no answer, a bad answer) -- only for calls that do the same when
    made twice. At most ``tries`` tries; the waits are :func:`backoff_delay` from
    ``base``, capped at ``cap``.
    """

    statuses: frozenset[int]
    kinds: frozenset[ErrorKind] = frozenset()
    transient: bool = False
    tries: int = 5
    base: float = 0.5
    cap: float = 5.0

    def retries(self, failure: Failed) -> bool:
        """Whether this failure is one the policy tries again (tries aside)."""
        status, kind = failure.status, failure.kind
        if kind in self.kinds or (kind == "refused" and status in self.statuses):
            return True
        return self.transient and is_transient(failure)

    def delay(self, failure: Failed, attempt: int) -> float | None:
        """Seconds before try ``attempt + 1`` after ``failure`` of try ``attempt``, or None."""
        if attempt >= self.tries or not self.retries(failure):
            return None
        return backoff_delay(attempt, self.base, self.cap)


def is_transient(failure: Failed) -> bool:
    """True for failures that may go away by themselves: no answer at all, an answer
    that is not what was asked for, 5xx and 429."""
    kind, status = failure.kind, failure.status
    if kind in ("not_sent", "no_answer", "bad_answer"):
        return True
    return kind == "refused" and status is not None and (status >= 500 or status == 429)
