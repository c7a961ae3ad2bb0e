"""Matching ``async-responses`` entries to the results waiting for them, with expiry.

Three facts shape this registry:

- Several threads register ids (every caller of a resource verb) while the long-poll
  thread matches answers: one lock guards all state, and no callback runs under it.
- The service may answer on the channel *before* the HTTP 202 that names the id has
  reached the caller (a fast device, a busy caller thread). Such an early entry is kept
  for ``early_ttl`` seconds and matched when the id is registered.
- Answers that never come must not pile up: each id gets a deadline, kept in a heap.
  Expiry is lazy (no timer thread, no loop): :meth:`PendingAsync.expire` pops what is
  due and is called between long polls, on every registration and by a waiter whose
  deadline has passed. A caller that keeps its own deadlines (``ttl=None``) gets no
  heap row: it calls :meth:`PendingAsync.forget` when it stops waiting.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger("bridge.connector")

T = TypeVar("T")
Entry = dict[str, Any]


class PendingAsync(Generic[T]):
    """Async ids waiting for their answer, and answers waiting for their id.

    ``ttl``: how long a registered id waits for its answer (None: until it is answered
    or :meth:`forget` is called; the caller keeps the deadline). ``early_ttl``: how long an
    answer for an id nobody registered (yet) is kept. ``max_early``: at most this many
    such answers are kept (the oldest go first), so a flood of foreign ids is bounded.
    """

    def __init__(
        self,
        ttl: float | None,
        early_ttl: float = 30.0,
        max_early: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.early_ttl = early_ttl
        self.max_early = max_early
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[float, T]] = {}
        self._heap: list[tuple[float, str]] = []
        self._early: OrderedDict[str, tuple[float, Entry]] = OrderedDict()

    def register(self, async_id: str, item: T) -> tuple[float, Entry | None]:
        """Wait for ``async_id``; returns (deadline, the early answer if it already came).

        With an early answer the id is not kept: the caller completes the item at once.
        """
        now = self._clock()
        with self._lock:
            early = self._early.pop(async_id, None)
            if early is not None:
                return now, early[1]
            if self.ttl is None:
                self._waiting[async_id] = (math.inf, item)
                return math.inf, None
            deadline = now + self.ttl
            self._waiting[async_id] = (deadline, item)
            heapq.heappush(self._heap, (deadline, async_id))
            return deadline, None

    def forget(self, async_id: str) -> bool:
        """Stop waiting for ``async_id`` (its caller gave up); False if it did not wait."""
        with self._lock:
            return self._waiting.pop(async_id, None) is not None

    def waits_for(self, async_id: str) -> bool:
        """Whether a caller registered ``async_id`` and waits for its answer."""
        with self._lock:
            return async_id in self._waiting

    def match(self, entry: Entry) -> T | None:
        """The item waiting for this entry's id, or ``None`` (the entry is then kept early)."""
        async_id = str(entry.get("id"))
        with self._lock:
            found = self._waiting.pop(async_id, None)
            if found is not None:
                return found[1]
            self._early[async_id] = (self._clock() + self.early_ttl, entry)
            self._early.move_to_end(async_id)
            while len(self._early) > self.max_early:
                old_id, _ = self._early.popitem(last=False)
                log.warning("dropping async response %r: no caller registered it", old_id)
        log.debug("async response %r arrived before (or without) its request; kept", async_id)
        return None

    def expire(self) -> list[tuple[str, T]]:
        """Remove and return the ids whose deadline has passed (oldest first).

        Also forgets early answers that nobody claimed in time.
        """
        now = self._clock()
        due: list[tuple[str, T]] = []
        dropped: list[str] = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                deadline, async_id = heapq.heappop(self._heap)
                waiting = self._waiting.get(async_id)
                # The heap may hold stale rows (answered ids, or an id registered again).
                if waiting is not None and waiting[0] == deadline:
                    del self._waiting[async_id]
                    due.append((async_id, waiting[1]))
            while self._early:
                async_id, (deadline, _) = next(iter(self._early.items()))
                if deadline > now:
                    break
                self._early.popitem(last=False)
                dropped.append(async_id)
            if len(self._heap) > 2 * len(self._waiting) + 1024:
                # Mostly stale rows (answered ids): rebuild from what still waits.
                self._heap = [(d, i) for i, (d, _) in self._waiting.items() if d != math.inf]
                heapq.heapify(self._heap)
        for async_id in dropped:
            log.info("async response %r matched no request; dropped", async_id)
        return due

    def next_deadline(self) -> float | None:
        """The monotonic time of the earliest pending deadline (``None`` if nothing waits)."""
        with self._lock:
            while self._heap:
                deadline, async_id = self._heap[0]
                waiting = self._waiting.get(async_id)
                if waiting is not None and waiting[0] == deadline:
                    break
                heapq.heappop(self._heap)
            return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)

    def early_count(self) -> int:
        """How many answers wait for an id to be registered."""
        with self._lock:
            return len(self._early)
