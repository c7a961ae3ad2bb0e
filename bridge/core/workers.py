"""Small fixed pools of worker threads and one timer thread: the bridge's only helpers.

REST calls block (they wait for the Connector), so they never run on paho's network
thread nor on the long-poll thread: those hand a task to a :class:`WorkerPool` through
a bounded queue and return at once. Time-outs of commands and reads are all kept by one
:class:`Deadlines` thread (a heap), never a thread or a timer per message.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger("bridge.workers")

Task = Callable[[], object]


class WorkerPool:
    """``size`` threads taking tasks from a queue of at most ``queue_size``."""

    def __init__(self, name: str, size: int, queue_size: int) -> None:
        self.name = name
        self._queue: queue.Queue[Task | None] = queue.Queue(maxsize=queue_size)
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(size)
        ]
        self._started = False
        self._stopping = False

    def start(self) -> WorkerPool:
        if not self._started:
            self._started = True
            for t in self._threads:
                t.start()
        return self

    def submit(self, task: Task) -> bool:
        """Queue ``task`` without waiting; False when the queue is full or stopping."""
        if self._stopping:
            return False
        try:
            self._queue.put_nowait(task)
        except queue.Full:
            return False
        return True

    def submit_wait(self, task: Task, timeout: float | None = None) -> bool:
        """Queue ``task``, waiting for room up to ``timeout``; False if there was none.

        Only for threads that may block (the start-up thread, a worker of another pool).
        """
        if self._stopping:
            return False
        try:
            self._queue.put(task, timeout=timeout)
        except queue.Full:
            return False
        return True

    def pending(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the queued tasks (bounded by ``timeout``), then end the threads."""
        if not self._started or self._stopping:
            self._stopping = True
            return
        self._stopping = True
        end = time.monotonic() + timeout
        for _ in self._threads:
            try:
                self._queue.put(None, timeout=max(end - time.monotonic(), 0.01))
            except queue.Full:
                break
        for t in self._threads:
            t.join(max(end - time.monotonic(), 0.01))
        alive = sum(t.is_alive() for t in self._threads)
        if alive:
            log.warning("%s: %d worker(s) still busy after %.1f s", self.name, alive, timeout)

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            try:
                task()
            except Exception:
                log.exception("%s: task %r failed", self.name, task)


class Deadline:
    """A scheduled call; ``cancel()`` it when what it guards has happened."""

    __slots__ = ("cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[[], object]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Deadlines:
    """One thread that calls each scheduled function when its time comes.

    Cancelled entries stay in the heap until their time (cheap: a flag) unless they
    pile up, when the heap is rebuilt. The calls run on this thread and must be quick.
    """

    def __init__(self, name: str = "bridge-deadlines") -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Deadlines:
        self._thread.start()
        return self

    def schedule(self, delay: float, fn: Callable[[], object]) -> Deadline:
        d = Deadline(time.monotonic() + delay, fn)
        with self._cond:
            first = not self._heap or d.when < self._heap[0][0]
            heapq.heappush(self._heap, (d.when, next(self._seq), d))
            if len(self._heap) > 4096 and len(self._heap) % 4096 == 0:
                self._heap = [e for e in self._heap if not e[2].cancelled]
                heapq.heapify(self._heap)
            if first:
                self._cond.notify()
        return d

    def __len__(self) -> int:
        with self._cond:
            return sum(1 for _, _, d in self._heap if not d.cancelled)

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopped:
                    return
                _, _, d = heapq.heappop(self._heap)
            if d.cancelled:
                continue
            try:
                d.fn()
            except Exception:
                log.exception("deadline call %r failed", d.fn)
