"""The long-poll notification channel: one background thread that pulls and dispatches.

The thread loops: expire overdue async ids, ``GET /v2/notification/pull``, hand a
message to the dispatcher. Whatever goes wrong (connection refused or reset, a cut poll,
a server that hangs until the read timeout, 5xx, 429, a body that is not a JSON object)
counts as a failure and the thread waits before the next pull: capped exponential
back-off with jitter (the bridge's one back-off, :mod:`bridge.core.retry`), so a dead
server sees a bounded request rate instead of a spinning client. 401/403 (a wrong access
key will not fix itself) waits the cap at once and says so plainly. Empty answers that
come back at once (``noWait``, or a server that ignores the long-poll hold) are paced to
one pull per ``min_empty_interval`` for the same reason. With a ``linger``, a pull that
brought a message is followed by the next one no sooner than ``linger`` seconds after it
started: at a steady trickle each pull then carries several notifications, which costs a
little latency (at most ``linger``) and saves the CPU of most pulls; a busy channel,
whose pulls take longer than that anyway, is not slowed down, and while an answer is
awaited (an async response) the next pull starts at once.

Stopping sets an event, aborts the pull in flight (``abort``: its socket is shut
down, see :mod:`bridge.connector.transport`) and joins with a bound. Should a thread
still be busy when the join gives up (a slow handler), it finishes in the background:
a message already received is still dispatched, so nothing the service handed over is
lost. A new thread can be started meanwhile; it is independent of the old one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.connector.errors import TransportError
from bridge.connector.transport import HttpResponse
from bridge.core.retry import Backoff, backoff_delay

__all__ = ["LongPoller", "Message", "backoff_delay", "parse_message"]

log = logging.getLogger("bridge.connector")

Message = dict[str, Any]


def parse_message(body: bytes | str) -> Message:
    """A channel message (long-poll body or webhook body) as a dict.

    Raises :class:`ValueError` when it is not a JSON object.
    """
    if isinstance(body, bytes | bytearray):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"message is not UTF-8: {exc}") from None
    else:
        text = body
    if not text.strip():
        raise ValueError("message is empty")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"message is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"message is a JSON {type(data).__name__}, not an object")
    return data


def _retry_after(resp: HttpResponse) -> float | None:
    value = resp.headers.get("Retry-After", "")
    try:
        return float(value) if value else None
    except ValueError:
        return None


@dataclass(frozen=True)
class _Outcome:
    """What one pull gave: a message, nothing (``problem is None``), or a problem."""

    message: Message | None = None
    problem: str | None = None
    refused: int | None = None  # 401/403: the access key was refused
    removed: int | None = None  # 404/410: the service has no long poll (today's removed it)
    retry_after: float | None = None


class LongPoller:
    """The long-poll thread of one connector.

    ``pull(noWait)`` performs one ``GET /v2/notification/pull``; ``dispatch(message)``
    handles a parsed message; ``tick()`` runs between pulls (async-id expiry).
    """

    def __init__(
        self,
        pull: Callable[[bool], HttpResponse],
        dispatch: Callable[[Message], object],
        tick: Callable[[], object],
        abort: Callable[[], object] | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        min_empty_interval: float = 1.0,
        linger: float = 0.0,
        awaited: Callable[[], object] | None = None,
    ) -> None:
        self._pull = pull
        self._dispatch = dispatch
        self._tick = tick
        self._abort = abort
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.min_empty_interval = min_empty_interval
        self.linger = linger
        self._awaited = awaited  # True while someone waits for an answer: no linger then
        self._wake = threading.Event()  # cuts a linger short (poke, stop)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._stats: dict[str, Any] = {
            "pulls": 0,
            "messages": 0,
            "empty": 0,
            "failures": 0,
            "consecutive_failures": 0,
            "last_status": None,
            "last_error": None,
        }

    # ---- control -------------------------------------------------------------------

    def start(self, noWait: bool = False, first_pull_wait: float = 0.0) -> threading.Thread:
        """Start the thread (or return the running one).

        The thread's first pull asks with ``noWait`` so that the service answers at once;
        ``start`` waits up to ``first_pull_wait`` seconds for that answer. Once it came,
        the service knows the channel, and a resource call made right after ``start``
        does not meet ``412 No notification channel``.
        """
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            if running and self._stop is not None and not self._stop.is_set():
                assert self._thread is not None
                log.warning("long polling is already active")
                return self._thread
            stop = threading.Event()
            first = threading.Event()
            thread = threading.Thread(
                target=self._run,
                args=(stop, noWait, first),
                name="connector-longpoll",
                daemon=True,
            )
            self._stop, self._thread = stop, thread
            thread.start()
        log.info("long polling started")
        if first_pull_wait > 0:
            first.wait(first_pull_wait)
        return thread

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the thread to stop and join it for up to ``timeout`` s; True if it ended."""
        with self._lock:
            thread, stop = self._thread, self._stop
        if thread is None or stop is None or stop.is_set():
            log.debug("long polling is not active")
            return thread is None or not thread.is_alive()
        stop.set()
        self._wake.set()
        if thread is not threading.current_thread():
            # Abort until the thread is gone: a pull that was about to start when the
            # event was set is in flight a moment later and gets aborted then.
            end = time.monotonic() + timeout
            while thread.is_alive():
                self._abort_pull()
                left = end - time.monotonic()
                if left <= 0:
                    break
                thread.join(min(0.05, left))
        if thread.is_alive():
            log.info("long-poll thread still waits for its pull; it exits when the pull ends")
            return False
        log.info("long polling stopped")
        return True

    def poke(self) -> None:
        """An answer is awaited now: end a linger at once (the next pull starts)."""
        self._wake.set()

    def _answer_awaited(self) -> bool:
        return bool(self._awaited is not None and self._awaited())

    def _abort_pull(self) -> None:
        if self._abort is not None:
            try:
                self._abort()  # ends a pull in flight at once
            except Exception:
                log.exception("aborting the pull in flight failed")

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def is_running(self) -> bool:
        """True while a thread is active and not asked to stop."""
        with self._lock:
            return bool(
                self._thread is not None
                and self._thread.is_alive()
                and self._stop is not None
                and not self._stop.is_set()
            )

    def stats(self) -> dict[str, Any]:
        """Counters: pulls, messages, empty, failures, consecutive_failures, last_*."""
        with self._lock:
            return dict(self._stats)

    # ---- the thread ----------------------------------------------------------------

    def _count(self, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                if key in ("pulls", "messages", "empty", "failures"):
                    self._stats[key] += value
                else:
                    self._stats[key] = value

    def _pull_once(self, noWait: bool) -> _Outcome:
        """One pull, classified."""
        try:
            resp = self._pull(noWait)
        except TransportError as exc:
            if exc.timed_out:
                return _Outcome(problem="no answer before the read timeout (server hangs?)")
            return _Outcome(problem=f"connection failed ({exc.kind})")
        status = resp.status_code
        self._count(pulls=1, last_status=status)
        if status == 204:
            return _Outcome()
        if status == 200:
            try:
                return _Outcome(message=parse_message(resp.content))
            except ValueError as exc:
                return _Outcome(problem=f"HTTP 200 with a bad body: {exc}")
        if status in (401, 403):
            return _Outcome(problem=f"HTTP {status}", refused=status)
        if status in (404, 410):
            return _Outcome(problem=f"HTTP {status}", removed=status)
        return _Outcome(problem=f"HTTP {status}", retry_after=_retry_after(resp))

    def _run(self, stop: threading.Event, noWait: bool, first: threading.Event) -> None:
        backoff = Backoff(self.backoff_base, self.backoff_max)
        while not stop.is_set():
            self._safe_tick()
            started = time.monotonic()
            opening = not first.is_set()
            outcome = self._pull_once(noWait or opening)
            first.set()
            if outcome.problem is None:
                if backoff.failures:
                    log.info("notification channel back after %d failure(s)", backoff.failures)
                    backoff.succeeded()
                    self._count(consecutive_failures=0)
                if outcome.message:
                    self._count(messages=1)
                    self._safe_dispatch(outcome.message)
                    # There may be more: pull again at once, or after the linger.
                    if self.linger > 0 and not self._answer_awaited():
                        rest = self.linger - (time.monotonic() - started)
                        if rest > 0:
                            self._wake.clear()
                            if not self._answer_awaited() and not stop.is_set():
                                self._wake.wait(rest)
                    continue
                self._count(empty=1)
                # Pace empty answers that come back at once (not the opening pull).
                rest = self.min_empty_interval - (time.monotonic() - started)
                if rest > 0 and not opening:
                    stop.wait(rest)
                continue
            if stop.is_set():
                break  # the pull was aborted by stop(): not a failure
            delay = backoff.failed()
            failures = backoff.failures
            self._count(failures=1, consecutive_failures=failures, last_error=outcome.problem)
            if outcome.refused:
                delay = self.backoff_max  # a wrong key will not fix itself
                log.error(
                    "Connector refused the access key on the notification channel "
                    "(HTTP %d): check the token; next try in %.1f s",
                    outcome.refused,
                    delay,
                )
            elif outcome.removed:
                delay = self.backoff_max  # a removed route will not come back soon
                log.error(
                    "the service has no long poll (HTTP %d; today's Device Management "
                    "removed it: use startWebsocket() or putCallback()); next try in %.1f s",
                    outcome.removed,
                    delay,
                )
            else:
                if outcome.retry_after is not None:
                    delay = max(delay, min(outcome.retry_after, self.backoff_max))
                log.warning(
                    "long poll failed: %s; retry %d in %.2f s", outcome.problem, failures, delay
                )
            stop.wait(delay)
        first.set()
        log.info("long-poll thread ends")

    def _safe_tick(self) -> None:
        try:
            self._tick()
        except Exception:
            log.exception("async expiry failed")

    def _safe_dispatch(self, message: Message) -> None:
        try:
            self._dispatch(message)
        except Exception:
            log.exception("dispatching a notification message failed")
