"""The long poll's linger (``connector(..., pullLinger=s)``): after a pull that brought
something, the next pull starts no sooner than ``s`` after it; nothing is lost or
reordered, and a stop does not wait for the linger."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import requests

from bridge.connector.channel import LongPoller


def _answer(body: bytes) -> requests.Response:
    r = requests.Response()
    r.status_code = 200
    r._content = body
    return r


def test_pulls_that_bring_something_are_spaced_by_the_linger() -> None:
    starts: list[float] = []
    got: list[Any] = []
    done = threading.Event()

    def pull(no_wait: bool) -> requests.Response:
        starts.append(time.monotonic())
        return _answer(b'{"notifications": [{"n": %d}]}' % len(starts))

    def dispatch(message: dict[str, Any]) -> None:
        got.append(message["notifications"][0]["n"])
        if len(got) == 8:
            done.set()

    poller = LongPoller(pull, dispatch, tick=lambda: None, linger=0.03)
    poller.start()
    assert done.wait(10)
    assert poller.stop(timeout=5)
    assert got[:8] == list(range(1, 9))  # every message, in order
    gaps = [b - a for a, b in itertools.pairwise(starts[:8])]
    assert min(gaps) >= 0.03, gaps  # a lower bound the loop guarantees, not a timing goal


def test_a_stop_does_not_wait_out_a_long_linger() -> None:
    pulled = threading.Event()

    def pull(no_wait: bool) -> requests.Response:
        pulled.set()
        return _answer(b'{"notifications": [{"n": 1}]}')

    poller = LongPoller(pull, lambda m: None, tick=lambda: None, linger=60.0)
    thread = poller.start()
    assert pulled.wait(5)
    assert poller.stop(timeout=5)
    assert not thread.is_alive()


def test_no_linger_while_an_answer_is_awaited() -> None:
    got: list[int] = []
    done = threading.Event()

    def pull(no_wait: bool) -> requests.Response:
        return _answer(b'{"notifications": [{"n": 1}]}')

    def dispatch(message: dict[str, Any]) -> None:
        got.append(1)
        if len(got) == 8:
            done.set()

    # A 60 s linger would hold the second pull for a minute; an awaited answer skips it.
    poller = LongPoller(pull, dispatch, tick=lambda: None, linger=60.0, awaited=lambda: 1)
    poller.start()
    assert done.wait(10)
    assert poller.stop(timeout=5)


def test_a_poke_ends_the_linger() -> None:
    pulls: list[float] = []
    first, second = threading.Event(), threading.Event()

    def pull(no_wait: bool) -> requests.Response:
        pulls.append(time.monotonic())
        (first if len(pulls) == 1 else second).set()
        return _answer(b'{"notifications": [{"n": 1}]}')

    poller = LongPoller(pull, lambda m: None, tick=lambda: None, linger=60.0)
    poller.start()
    assert first.wait(5)
    assert not second.wait(0.3)  # lingering
    poller.poke()  # e.g. a call now awaits its async response
    assert second.wait(5)
    assert poller.stop(timeout=5)
