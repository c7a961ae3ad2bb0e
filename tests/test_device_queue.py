"""The per-device line (bridge/upstream/device_queue.py) driven by real AsyncCalls, with
the real deadline thread and worker pool; a small service stands in for the Connector at
the Starter seam: it takes requests (an async id) up to its queue size, refuses more with
QUEUE_IS_FULL, and answers when the test says the device did."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from bridge.core.workers import Deadlines, WorkerPool
from bridge.downstream import topics
from bridge.upstream import device_queue
from bridge.upstream.async_calls import AsyncCalls, Done, Outcome
from bridge.upstream.device_queue import EXPIRY_GRACE, DeviceQueues, Ticket
from tests.support.clients import wait_until


@dataclass
class Service:
    """Takes requests per device up to ``size``; ``answer()`` makes the device answer
    the oldest. Records what it received, in order, and the most it ever held."""

    size: int = 20
    received: list[str] = field(default_factory=list)
    held: list[Done] = field(default_factory=list)
    refused: int = 0
    most: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def starter(self, name: str, ticket: Ticket) -> Callable[[Done], Callable[[], object] | None]:
        def start(answer: Done) -> Callable[[], object] | None:
            ticket.expiry_to_send()  # as the port does: the expiry left goes with the try
            with self.lock:
                if len(self.held) >= self.size:
                    self.refused += 1
                    full = True
                else:
                    full = False
                    self.received.append(name)
                    self.held.append(answer)
                    self.most = max(self.most, len(self.held))
            if full:
                answer(Outcome(False, 400, None, "QUEUE_IS_FULL: full", kind="refused",
                               code="QUEUE_IS_FULL"))  # fmt: skip
                return None
            return lambda: None

        return start

    def answer(self) -> None:
        with self.lock:
            answer = self.held.pop(0)
        answer(Outcome(True, 200, b"ok", deferred=True))


@pytest.fixture
def parts() -> Iterator[tuple[Deadlines, WorkerPool]]:
    d = Deadlines().start()
    pool = WorkerPool("test-line", 2, 100).start()
    try:
        yield d, pool
    finally:
        pool.stop()
        d.stop()


def run(
    queues: DeviceQueues, calls: AsyncCalls, service: Service, names: list[str],
    timeout: float = 10.0, expiry: int | None = None,
    ended: list[tuple[str, Outcome]] | None = None,
) -> list[tuple[str, Outcome]]:  # fmt: skip
    """Start a write per name; the list the outcomes go to, by name, as they end."""
    ended = [] if ended is None else ended
    for name in names:
        ticket = queues.ticket("dev", "write", "/1/0/1", timeout=timeout, expiry=expiry)
        calls.start(
            service.starter(name, ticket), timeout, lambda o, n=name: ended.append((n, o)),
            "no answer", turn=ticket,
        )  # fmt: skip
    return ended


def test_in_order_and_never_more_than_the_window_at_the_service(
    parts: tuple[Deadlines, WorkerPool],
) -> None:
    d, pool = parts
    service = Service(size=1000)  # a service that would take them all
    queues = DeviceQueues(100, window=20)
    calls = AsyncCalls(d, resubmit=pool.submit)
    names = [f"c{k}" for k in range(50)]
    ended = run(queues, calls, service, names)
    assert wait_until(lambda: len(service.received) == 20)
    assert queues.counts() == {"devices": 1, "at_service": 20, "sending": 0, "waiting": 30,
                               "held": 0, "refused": 0}  # fmt: skip
    for _ in range(50):
        assert wait_until(lambda: bool(service.held))
        service.answer()
    assert wait_until(lambda: len(ended) == 50)
    assert service.received == names and [n for n, _ in ended] == names
    assert service.most == 20 and queues.counts()["devices"] == 0


def test_a_smaller_service_queue_holds_the_request_and_shrinks_the_window(
    parts: tuple[Deadlines, WorkerPool],
) -> None:
    d, pool = parts
    service = Service(size=3)
    queues = DeviceQueues(100, window=20)
    calls = AsyncCalls(d, resubmit=pool.submit)
    names = [f"c{k}" for k in range(10)]
    ended = run(queues, calls, service, names)
    assert wait_until(lambda: queues.counts()["held"] == 1)
    assert service.refused == 1 and service.received == names[:3]
    assert queues.pending()["devices"][0]["window"] == 3
    for _ in range(10):
        assert wait_until(lambda: bool(service.held))
        service.answer()
    assert wait_until(lambda: len(ended) == 10)
    assert [n for n, o in ended if o.ok] == names  # every one, in order
    assert service.most == 3


def test_a_request_that_waits_too_long_times_out_saying_it_was_not_sent(
    parts: tuple[Deadlines, WorkerPool],
) -> None:
    d, pool = parts
    service = Service(size=1000)
    queues = DeviceQueues(100, window=2)
    calls = AsyncCalls(d, resubmit=pool.submit)
    ended = run(queues, calls, service, ["a", "b"], timeout=0.3)
    run(queues, calls, service, ["c"], timeout=0.2, ended=ended)
    assert wait_until(lambda: len(ended) == 3)
    late = dict(ended)["c"]
    assert (late.ok, late.status, late.kind) == (False, 504, "timeout")
    assert late.error is not None
    assert late.error.startswith("not sent: it waited 0.2 s in the bridge behind 2 earlier")
    assert dict(ended)["a"].error == "no answer"  # sent: the call's own text
    assert service.received == ["a", "b"] and queues.counts()["devices"] == 0


def test_the_bound_refuses_at_once_and_the_expiry_left_is_sent(
    parts: tuple[Deadlines, WorkerPool],
) -> None:
    d, pool = parts
    queues = DeviceQueues(2, window=1)
    calls = AsyncCalls(d, resubmit=pool.submit)
    service = Service()
    ended = run(queues, calls, service, ["a", "b", "c", "d"], expiry=61)
    assert [n for n, _ in ended] == ["d"]  # 1 at the service + 2 waiting: the 4th refused
    refused = ended[0][1]
    assert refused.status == 503 and "BRIDGE_DEVICE_QUEUE=2" in (refused.error or "")
    line = queues.pending("dev")["devices"][0]["requests"]
    assert [r["state"] for r in line] == ["at_service", "waiting", "waiting"]
    assert line[0]["sent_expiry"] == 61 and line[1]["sent_expiry"] is None
    overall = DeviceQueues(10, window=1, total=1)
    ended2 = run(overall, calls, service, ["x", "y", "z"])  # x at the service, y waits
    assert [n for n, _ in ended2] == ["z"] and "in all" in (ended2[0][1].error or "")
    ticket = queues.ticket("x", "read", "/1", timeout=1.0, expiry=100)
    ticket.arrived -= 90  # it waited 90 s: 10 left, the service's minimum of 60 goes
    assert ticket.expiry_to_send() == 60
    assert ticket.sent_at is not None


def test_a_verdict_after_the_time_out_moves_the_time_out(
    parts: tuple[Deadlines, WorkerPool],
) -> None:
    """Sent with what is left of its expiry (at least 60 s), a request waits for the
    service's verdict past its own time-out."""
    d, pool = parts
    queues = DeviceQueues(10, window=5)
    calls = AsyncCalls(d, resubmit=pool.submit)
    service = Service()
    ended = run(queues, calls, service, ["a"], timeout=0.2, expiry=60)
    line = queues.pending()["devices"][0]["requests"]
    assert line[0]["timeout_in"] > 60 + EXPIRY_GRACE - 1
    assert not wait_until(lambda: bool(ended), 0.5)  # past its 0.2 s: still waiting
    service.answer()
    assert wait_until(lambda: bool(ended)) and ended[0][1].ok


def test_finish_all_sends_nothing_that_waited(parts: tuple[Deadlines, WorkerPool]) -> None:
    d, pool = parts
    service = Service()
    queues = DeviceQueues(10, window=1)
    calls = AsyncCalls(d, resubmit=pool.submit)
    ended = run(queues, calls, service, ["a", "b", "c"])
    assert calls.finish_all(Outcome(False, 503, None, "stopped")) == 3
    assert [n for n, _ in ended] == ["c", "b", "a"]
    pool.stop()  # whatever was handed to a worker has run
    assert service.received == ["a"] and queues.counts()["devices"] == 0


def test_the_envelope_checks_the_ranges_the_line_sends() -> None:
    assert topics.EXPIRY_RANGE == device_queue.EXPIRY_RANGE == (60, 2_592_000)
    assert topics.RETRY_RANGE == device_queue.RETRY_RANGE == (0, 10)
