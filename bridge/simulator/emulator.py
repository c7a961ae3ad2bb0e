"""The in-process emulator: the Connector on its own event loop in a background thread.

Tests construct an :class:`Emulator`, ``start()`` it (or use it as a context manager) and
drive it with thread-safe control methods; each one runs on the emulator's loop and
returns once the change has been applied. The CLI runs the same core in the foreground
(:func:`serve`).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from bridge.core.loop_thread import LoopThread
from bridge.simulator.app import RestApp
from bridge.simulator.core import Api, EmulatorCore
from bridge.simulator.scenario import Scenario

T = TypeVar("T")


class Server:
    """The HTTP server of one core on the running loop."""

    def __init__(self, core: EmulatorCore) -> None:
        self.core = core
        self.runner = web.AppRunner(
            RestApp(core).app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        await self.core.startup()
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        try:
            await site.start()
        except BaseException:
            await self.stop()
            raise
        self.port = int(self.runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        await self.core.shutdown()
        await self.runner.cleanup()


class Emulator:
    """A local mbed Device Connector with virtual devices (the README's "The Connector
    emulator" says what it offers)."""

    #: The dialect of an emulator made without ``api``: the seed library's (legacy). The
    #: test suite sets it per test to run one test on both dialects (``tests/conftest.py``).
    default_api: Api = "legacy"

    def __init__(
        self,
        token: str = "test-token",
        scenario: Scenario | None = None,
        devices: int | None = None,
        pull_timeout: float = 30.0,
        latency: float = 0.0,
        callback_retry_period: float = 900.0,
        seed: int | None = None,
        drift: bool = True,
        *,
        batch_size: int = 10_000,
        max_pending: int = 1_000_000,
        channel_idle_timeout: float = 120.0,
        transaction_quota: int = 10_000,
        api: Api | None = None,
        expiry_scale: float = 1.0,
    ) -> None:
        """``token`` is the access key; ``scenario`` and ``devices`` say which virtual devices
        exist; ``pull_timeout``, ``latency``, ``callback_retry_period``, ``seed`` and
        ``drift`` are the ``simulate`` options of the same names. ``batch_size`` caps the
        entries of one message (pull or webhook PUT); ``max_pending`` bounds the queue (the
        oldest are dropped and counted beyond it); ``channel_idle_timeout`` is how long after
        the last pull the long-poll channel still counts as set up (else async calls get
        412); ``transaction_quota`` is what ``GET /limits`` reports (not enforced).

        ``api`` picks the dialect: ``"legacy"`` (the 2016 mbed Device Connector: ``ep``
        is the endpoint name, long polling) or ``"current"`` (today's Device Management:
        device IDs, ``/v3/devices``, device requests, callback or WebSocket channel, error
        bodies). Control methods take endpoint names in both (a device ID works too).
        ``expiry_scale`` scales the service's time for device requests: a request's
        ``expiry-seconds`` (60 at least, 2 hours by default) lasts that many seconds
        times ``expiry_scale``, so ``expiry_scale=0.005`` lets a test see a 60 s request
        expire after 0.3 s. ``api=None`` takes :attr:`default_api`."""
        if api is None:
            api = type(self).default_api
        self.core = EmulatorCore(
            token,
            scenario,
            devices,
            pull_timeout=pull_timeout,
            latency=latency,
            callback_retry_period=callback_retry_period,
            seed=seed,
            drift=drift,
            batch_size=batch_size,
            max_pending=max_pending,
            channel_idle_timeout=channel_idle_timeout,
            transaction_quota=transaction_quota,
            api=api,
            expiry_scale=expiry_scale,
        )
        self.api = api
        self.token = token
        self.host = "127.0.0.1"
        self.port = 0
        self._runtime = LoopThread("connector-emulator")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- lifecycle --------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int | None = None) -> Emulator:
        """Listen on host:port (port 0: any free port; None: the port of the previous run,
        if any, so that a test can stop the emulator and start it again at the same URL,
        with the same devices and pending messages)."""
        if self._runtime.running:
            return self
        if port is None:
            port = self.port
        server = Server(self.core)
        self._runtime.start(lambda: server.start(host, port), server.stop)
        self.host, self.port = host, server.port
        return self

    def stop(self) -> None:
        """Stop the server and its thread; idempotent."""
        self._runtime.stop()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- running things on the emulator's loop ------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        if not self._runtime.running or self._runtime.in_loop_thread():
            return fn(*args, **kw)

        async def run() -> T:
            return fn(*args, **kw)

        return self._runtime.run(run(), timeout=60.0)

    def _await(self, coro_fn: Callable[..., Any], *args: Any, timeout: float = 300.0) -> Any:
        if not self._runtime.running:
            raise RuntimeError("the emulator is not started")
        return self._runtime.run(coro_fn(*args), timeout=timeout)

    # --- control --------------------------------------------------------------------------

    def register(
        self,
        ep: str,
        ept: str = "Sensor",
        resources: list[dict[str, Any]] | None = None,
        q: bool = False,
        lifetime: float | None = None,
        endpoint_name: str | None = None,
    ) -> None:
        """A device registers (or re-registers): a ``registrations`` message.
        ``endpoint_name``: the name it registers with when not ``ep`` (``ep`` stays the
        emulator's key for it; its device ID comes from ``ep``)."""
        self._call(self.core.register, ep, ept, resources, q, lifetime, endpoint_name)

    def update(self, ep: str) -> None:
        """A registration update: a ``reg-updates`` message; the lifetime restarts."""
        self._call(self.core.update, ep)

    def deregister(self, ep: str) -> None:
        self._call(self.core.deregister, ep)

    def expire(self, ep: str) -> None:
        self._call(self.core.expire, ep)

    def wake(self, ep: str) -> None:
        """A queue-mode device wakes now and serves the requests waiting for it."""
        self._call(self.core.wake, ep)

    def set_value(self, ep: str, path: str, value: bytes | str) -> None:
        raw = value.encode() if isinstance(value, str) else bytes(value)
        self._call(self.core.set_value, ep, path, raw)

    def get_value(self, ep: str, path: str) -> bytes:
        return self._call(self.core.get_value, ep, path)

    def burst(
        self, n: int, ep: str | None = None, path: str | None = None, size: int | None = None
    ) -> int:
        """Emit ``n`` notifications quickly; returns how many were emitted."""
        result: int = self._await(self.core.burst, n, ep, path, size)
        return result

    def device_id(self, ep: str) -> str:
        """The device ID of a device, by its endpoint name (the same in both dialects)."""
        return self._call(self.core.device_id, ep)

    def endpoints(self) -> list[str]:
        return self._call(self.core.registered_names)

    def subscriptions(self) -> set[tuple[str, str]]:
        return self._call(self.core.subscription_pairs)

    def set_fault(self, **kw: Any) -> None:
        self._call(self.core.apply_faults, **kw)

    def clear_faults(self) -> None:
        self._call(self.core.faults.clear)

    def faults(self) -> dict[str, Any]:
        """The faults switched on, with what is left of counted ones (``GET /admin/faults``)."""
        result: dict[str, Any] = self._call(self.core.faults.describe)
        return result

    def counters(self) -> dict[str, int]:
        return self._call(self.core.snapshot_counters)

    def record_actions(self) -> None:
        """From now on, keep what devices carry out (see :meth:`actions`)."""

        def start() -> None:
            self.core.actions = []

        self._call(start)

    def actions(self) -> list[tuple[str, str, str, bytes]]:
        """``(verb, endpoint name, path, body)`` of every request a device carried out
        since :meth:`record_actions`, in order."""
        return self._call(lambda: list(self.core.actions or ()))

    def reset_counters(self) -> None:
        self._call(self.core.reset_counters)

    def wait_channel(self, timeout: float = 10.0) -> bool:
        """Block until a notification channel is set up (a pull open or a callback URL);
        True when it is. Lets a test avoid a ``412 No notification channel`` race."""
        result: bool = self._await(self.core.wait_channel, timeout, timeout=timeout + 5.0)
        return result
