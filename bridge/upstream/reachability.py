"""Is the Connector reachable? One state (``up``, ``down``, ``refused``) and its changes.

The parts that talk to the Connector already ride out its failures by themselves: the
long poll retries with capped exponential back-off and jitter (:mod:`bridge.core.retry`,
the bridge's one back-off), start-up retries the same way, and commands retry
what is safe to retry within their time-out. This module only *watches*, so that the
bridge can say how it is doing: it turns what those parts see into one state and emits
:class:`~bridge.core.events.ConnectorStateChanged` on the bus when the state changes (the
health extension publishes it).

- ``up``: the Connector answers.
- ``down``: connection errors, 5xx, 429, hanging or cut long polls, for at least
  :data:`DOWN_AFTER` seconds in a row (a single cut poll is not an outage).
- ``refused``: 401 or 403, the access key is refused; at once, since waiting will not
  mend it (the long poll then tries only once per back-off cap, 30 s, not in a loop).
- ``taken_over``, ``revoked``, ``deleted``, ``rejected``: today's service ended the
  WebSocket channel for good: another consumer opened a socket on it (close code 1001),
  the key was revoked (1008), the channel was deleted (1000), or a registration or
  handshake was refused (4xx). The channel does not fight back in a loop; a restart is
  needed.

Who feeds it: the start-up calls (:class:`bridge.upstream.side.ConnectorSide`), and a
monitor thread that reads the long poll's counters once a second (long-poll channel) or
asks for the Connector's version now and then (callback channel, where the bridge
makes no call of its own while all is quiet).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from bridge.connector import response_codes
from bridge.core.counters import Counters
from bridge.core.events import ChannelLost, ConnectorState, ConnectorStateChanged, EventBus
from bridge.core.retry import Backoff

log = logging.getLogger("bridge.reachability")

DOWN_AFTER = 5.0  # seconds of failing in a row before the Connector is called down
CHECK_INTERVAL = 1.0  # how often the monitor reads the long poll's counters
PROBE_INTERVAL = 15.0  # callback channel: one version call this often while up


def is_transient(error: response_codes) -> bool:
    """True for failures that may go away by themselves: no answer at all (connection
    refused or reset, time-out, a body that is not what was asked for), 5xx and 429."""
    status = error.status_code
    return status == 0 or status >= 500 or status == 429 or error.errType == "invalid_response"


def is_refusal(error: response_codes) -> bool:
    return error.status_code in (401, 403)


class Reachability:
    """The Connector's state, fed by success and failure reports from any thread."""

    def __init__(
        self,
        bus: EventBus,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._counters = counters  # connector_outages, connector_recoveries
        self._clock = clock
        self._lock = threading.Lock()
        self._state: ConnectorState | None = None  # None until the first report
        self._since = time.time()
        self._detail: str | None = None
        self._failures = 0
        self._failing_since: float | None = None

    @property
    def state(self) -> ConnectorState | None:
        return self._state

    def snapshot(self) -> dict[str, Any]:
        """The current state as a dict: state, since (Unix time), detail, failures."""
        with self._lock:
            return {
                "state": self._state,
                "since": self._since,
                "detail": self._detail,
                "failures": self._failures,
            }

    def success(self) -> None:
        """The Connector answered (any answer that is not a failure of its own)."""
        with self._lock:
            self._failures = 0
            self._failing_since = None
            event = self._change("up", None)
        self._emit(event)

    def failure(self, detail: str, status: int = 0, failures: int | None = None) -> None:
        """An attempt failed: ``status`` 0 for no answer at all, else the HTTP status.
        ``failures``: the consecutive failures as counted by the caller (else one more)."""
        with self._lock:
            now = self._clock()
            self._failures = self._failures + 1 if failures is None else failures
            if self._failing_since is None:
                self._failing_since = now
            self._detail = detail
            if status in (401, 403):
                event = self._change("refused", detail)
            elif now - self._failing_since >= DOWN_AFTER or self._state == "down":
                event = self._change("down", detail)
            else:
                event = None
        self._emit(event)

    def lost(self, state: ChannelLost, detail: str) -> None:
        """The service ended our channel for good: another consumer took it (1001,
        ``taken_over``) or the key was revoked (1008, ``revoked``). Not retried."""
        with self._lock:
            self._failures += 1
            self._failing_since = self._failing_since or self._clock()
            event = self._change(state, detail)
        self._emit(event)

    def _change(self, state: ConnectorState, detail: str | None) -> ConnectorStateChanged | None:
        """Switch to ``state`` (lock held); the event to emit, or None when unchanged."""
        if state == self._state:
            return None
        previous = self._state
        self._state = state
        self._since = time.time()
        self._detail = detail
        if self._counters is not None and (previous is not None or state != "up"):
            self._counters.add("connector_recoveries" if state == "up" else "connector_outages")
        if state == "up":
            if previous is not None:
                log.info("the Connector answers again (it was %s)", previous)
        elif state == "refused":
            log.error("the Connector refuses the access key: %s", detail)
        elif state == "taken_over":
            log.error(
                "another consumer took the notification channel of this access key (%s): "
                "this bridge gets no notifications until it is restarted",
                detail,
            )
        elif state == "revoked":
            log.error("the access key was revoked (%s): check the key, then restart", detail)
        elif state in ("deleted", "rejected"):
            log.error(
                "the service ended the notification channel (%s: %s): restart the bridge "
                "once the cause is dealt with",
                state,
                detail,
            )
        else:
            log.warning(
                "the Connector is unreachable (%s); retrying with back-off until it answers",
                detail,
            )
        return ConnectorStateChanged(state, self._since, detail, self._failures)

    def _emit(self, event: ConnectorStateChanged | None) -> None:
        if event is not None:
            self._bus.emit(event)


class Monitor:
    """One thread feeding :class:`Reachability` while the notification channel runs."""

    def __init__(
        self,
        reach: Reachability,
        long_poll_stats: Callable[[], dict[str, Any]] | None,
        probe: Callable[[], response_codes | None] | None,
        backoff_max: float = 30.0,
        *,
        websocket_state: Callable[[], object] | None = None,
    ) -> None:
        self._reach = reach
        self._websocket = websocket_state
        self._backoff_max = backoff_max
        self._stats = long_poll_stats
        self._probe = probe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connector-monitor", daemon=True)
        self._seen_pulls = 0
        self._seen_failures = 0

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        backoff = Backoff(CHECK_INTERVAL, self._backoff_max)
        while not self._stop.is_set():
            try:
                if self._websocket is not None:
                    self._websocket()  # reports the channel's state itself
                    delay = CHECK_INTERVAL
                elif self._stats is not None:
                    self._read_long_poll()
                    delay = CHECK_INTERVAL
                elif self._probe_once():
                    backoff.succeeded()
                    delay = PROBE_INTERVAL
                else:
                    delay = backoff.failed()
            except Exception:
                log.exception("watching the Connector failed")
                delay = CHECK_INTERVAL
            self._stop.wait(delay)

    def _read_long_poll(self) -> None:
        assert self._stats is not None
        s = self._stats()
        pulls, failures = int(s.get("pulls", 0)), int(s.get("failures", 0))
        consecutive = int(s.get("consecutive_failures", 0))
        if failures > self._seen_failures and consecutive > 0:
            error = str(s.get("last_error"))
            status = int(error[5:]) if error in ("HTTP 401", "HTTP 403") else 0
            self._reach.failure(f"long poll: {error}", status, consecutive)
        elif pulls > self._seen_pulls and consecutive == 0:
            self._reach.success()
        self._seen_pulls, self._seen_failures = pulls, failures

    def _probe_once(self) -> bool:
        """One version check; True when the Connector answered."""
        assert self._probe is not None
        error = self._probe()
        if error is None or not (is_transient(error) or is_refusal(error)):
            self._reach.success()
            return True
        self._reach.failure(f"version check: {error}", error.status_code)
        return False
