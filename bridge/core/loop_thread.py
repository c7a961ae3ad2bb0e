"""An asyncio event loop on one thread of its own, for aiohttp servers in a threaded program.

The bridge is thread-based (the seed API's long-poll thread, paho's network thread, worker
pools), but two of its HTTP servers (the emulator and the webhook receiver) are aiohttp
applications. Each runs on a ``LoopThread``: one long-lived thread with one loop, started
and stopped from ordinary code, so no caller has to know asyncio. (The health endpoint is
a plain ``http.server``.)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """Runs ``setup()`` on a new loop in a daemon thread, then the loop until ``stop()``.

    ``start`` returns once ``setup`` has finished and re-raises its exception (for example
    ``OSError`` when the port is taken), so a caller knows the server listens when it
    returns. ``stop`` runs ``teardown`` on the loop and joins the thread; both are
    idempotent.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    @property
    def running(self) -> bool:
        return self._thread is not None

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def start(
        self,
        setup: Callable[[], Awaitable[object]],
        teardown: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(setup())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                if teardown is not None:
                    loop.run_until_complete(teardown())
                loop.close()

        thread = threading.Thread(target=run, name=self.name, daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._loop, self._thread = loop, thread

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=timeout)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop from another thread and return its result."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError(f"{self.name} is not running")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=timeout)
