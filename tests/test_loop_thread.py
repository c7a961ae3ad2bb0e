"""LoopThread: start returns after setup, re-raises its failure, and stop runs teardown."""

from __future__ import annotations

import asyncio

import pytest

from bridge.core.loop_thread import LoopThread


def test_setup_runs_before_start_returns_and_teardown_on_stop() -> None:
    events: list[str] = []

    async def setup() -> None:
        await asyncio.sleep(0.01)
        events.append("setup")

    async def teardown() -> None:
        events.append("teardown")

    lt = LoopThread("test-loop")
    lt.start(setup, teardown)
    assert events == ["setup"] and lt.running

    async def where() -> bool:
        return lt.in_loop_thread()

    assert lt.run(where(), timeout=5) is True
    assert not lt.in_loop_thread()
    lt.stop()
    assert events == ["setup", "teardown"] and not lt.running
    lt.stop()  # idempotent


def test_a_failing_setup_is_raised_by_start_and_leaves_nothing_running() -> None:
    async def setup() -> None:
        raise OSError("address in use")

    lt = LoopThread("test-loop")
    with pytest.raises(OSError, match="address in use"):
        lt.start(setup)
    assert not lt.running
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="not running"):
        lt.run(coro)
