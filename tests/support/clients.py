"""Helpers for the Connector client tests: a client bound to an emulator, waiting tools."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from bridge.connector import connector
from bridge.simulator import Emulator

T = TypeVar("T")


@contextmanager
def client_for(emu: Emulator, *, poll: bool = True, **kw: Any) -> Iterator[connector]:
    """A connector for ``emu``; with ``poll`` its long polling runs (and the emulator has
    seen the channel, so resource verbs do not get ``412 No notification channel``)."""
    kw.setdefault("timeout", 5.0)
    c = connector(emu.token, emu.url, **kw)
    try:
        if poll:
            c.startLongPolling()
            assert emu.wait_channel(5.0), "the long-poll thread never reached the emulator"
        yield c
    finally:
        c.stopLongPolling(timeout=3.0)
        c.close()


def wait_until(pred: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll a condition on state we cannot wait on directly (e.g. the emulator's); True
    once it holds, False if it still does not after ``timeout`` (``assert wait_until(...)``).

    The tests' one polling wait. Waiting for MQTT messages is event-driven instead:
    :meth:`tests.support.mqtt_user.MqttUser.wait_for` and ``wait_nothing_missing``."""
    end = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(interval)


class Collector(Generic[T]):
    """A thread-safe list to hand to callbacks; ``wait(n)`` blocks until n items came."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self.threads: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, item: T) -> None:
        with self._cond:
            self.items.append(item)
            self.threads.append(threading.current_thread().name)
            self._cond.notify_all()

    def wait(self, n: int = 1, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.items) >= n, timeout)

    def wait_for(self, pred: Callable[[list[T]], bool], timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: pred(self.items), timeout)
