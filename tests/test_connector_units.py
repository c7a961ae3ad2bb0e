"""Unit tests of the client's pure parts: back-off, parsing, payloads, the async registry."""

from __future__ import annotations

import base64
import threading

import pytest

from bridge.connector import asyncResult, decode_payload, response_codes
from bridge.connector.channel import backoff_delay, parse_message
from bridge.connector.errors import TABLES, UNKNOWN_ERROR
from bridge.connector.pending import PendingAsync
from bridge.connector.result import value_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- back-off ---------------------------------------------------------------------------


def test_backoff_grows_exponentially_and_is_capped() -> None:
    lows = [backoff_delay(n, base=0.5, cap=8.0, rand=lambda: 0.0) for n in range(1, 10)]
    highs = [backoff_delay(n, base=0.5, cap=8.0, rand=lambda: 1.0) for n in range(1, 10)]
    assert highs[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert highs[5:] == [8.0] * 4  # capped
    assert lows == [h / 2 for h in highs]  # equal jitter: never below half


def test_backoff_jitter_stays_in_range_and_varies() -> None:
    values = {backoff_delay(3, base=1.0, cap=30.0) for _ in range(50)}
    assert all(2.0 <= v <= 4.0 for v in values)
    assert len(values) > 1


def test_backoff_survives_huge_failure_counts() -> None:
    assert backoff_delay(10_000, base=0.5, cap=30.0, rand=lambda: 1.0) == 30.0


# ---- messages and payloads --------------------------------------------------------------


@pytest.mark.parametrize("body", ['{"notifications": []}', b'{"notifications": []}'])
def test_parse_message_accepts_str_and_bytes(body: str | bytes) -> None:
    assert parse_message(body) == {"notifications": []}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not an object"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_parse_message_rejects_bad_bodies_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_message(body)


def test_decode_payload() -> None:
    assert decode_payload({"payload": base64.b64encode(b"21.5").decode()}) == b"21.5"
    assert decode_payload({"payload": "MjEuNQ"}) == b"21.5"  # padding missing
    assert decode_payload({}) == b""
    with pytest.raises(ValueError, match="base64"):
        decode_payload({"payload": "not base64!"})


def test_value_type_rule() -> None:
    assert value_of(b"21.5", "text/plain") == "21.5"
    assert value_of(b"21.5", None) == "21.5"
    assert value_of(b'{"a":1}', "application/json") == '{"a":1}'
    assert value_of(b"\xc8\x00\x01", "application/vnd.oma.lwm2m+tlv") == b"\xc8\x00\x01"
    assert value_of(b"\xff\x00", "text/plain") == b"\xff\x00"  # not UTF-8: stays bytes


# ---- the error object -------------------------------------------------------------------


def test_response_codes_fields() -> None:
    err = response_codes("resource", 404)
    assert err.status_code == 404
    assert err.errType == "resource404"
    assert err.error == "Requested endpoint's resource is not found."
    assert response_codes("resource", 999).error == UNKNOWN_ERROR
    assert response_codes("resource", 504, error="TIMEOUT").error == "TIMEOUT"


def test_every_table_text_is_reachable() -> None:
    for parent, table in TABLES.items():
        for status, text in table.items():
            assert response_codes(parent, status).error == text


# ---- the async registry -----------------------------------------------------------------


def test_registry_matches_and_forgets() -> None:
    reg: PendingAsync[str] = PendingAsync(ttl=10.0, clock=FakeClock())
    _, early = reg.register("a", "result-a")
    assert early is None and len(reg) == 1
    assert reg.match({"id": "a"}) == "result-a"
    assert len(reg) == 0
    assert reg.match({"id": "a"}) is None  # a second answer is unknown (kept early)


def test_registry_early_answer_is_matched_at_registration() -> None:
    clock = FakeClock()
    reg: PendingAsync[str] = PendingAsync(ttl=10.0, early_ttl=5.0, clock=clock)
    assert reg.match({"id": "x", "status": 200}) is None
    assert reg.early_count() == 1
    _, early = reg.register("x", "result-x")
    assert early == {"id": "x", "status": 200}
    assert len(reg) == 0 and reg.early_count() == 0


def test_registry_early_answers_expire_and_are_bounded() -> None:
    clock = FakeClock()
    reg: PendingAsync[str] = PendingAsync(ttl=10.0, early_ttl=5.0, max_early=3, clock=clock)
    for i in range(5):
        reg.match({"id": f"u{i}"})
    assert reg.early_count() == 3  # the two oldest were dropped
    clock.now += 5.1
    reg.expire()
    assert reg.early_count() == 0
    _, early = reg.register("u4", "late")
    assert early is None


def test_registry_expiry_in_deadline_order() -> None:
    clock = FakeClock()
    reg: PendingAsync[str] = PendingAsync(ttl=10.0, clock=clock)
    reg.register("a", "A")
    clock.now += 1
    reg.register("b", "B")
    clock.now += 1
    reg.register("c", "C")
    reg.match({"id": "b"})
    assert reg.next_deadline() == 1010.0
    clock.now = 1011.5
    assert reg.expire() == [("a", "A")]  # b was answered; c not due yet
    clock.now = 1013.0
    assert reg.expire() == [("c", "C")]
    assert reg.expire() == []
    assert reg.next_deadline() is None


def test_registry_is_thread_safe() -> None:
    n = 2000
    # Room for every early answer: the consumer may run far ahead of both producers, and
    # the default cap (1000, the oldest dropped) is a separate feature with its own test.
    reg: PendingAsync[int] = PendingAsync(ttl=60.0, max_early=n)
    matched: list[int] = []
    lock = threading.Lock()

    def producer(offset: int) -> None:
        for i in range(offset, n, 2):
            _, early = reg.register(str(i), i)
            if early is not None:
                with lock:
                    matched.append(i)

    def consumer() -> None:
        for i in range(n):
            found = reg.match({"id": str(i)})
            if found is not None:
                with lock:
                    matched.append(found)

    threads = [threading.Thread(target=producer, args=(k,)) for k in (0, 1)]
    threads.append(threading.Thread(target=consumer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Every id completes exactly once: matched on arrival, or claimed early at registration.
    assert sorted(matched) == list(range(n))
    assert len(reg) == 0 and reg.early_count() == 0


# ---- asyncResult ------------------------------------------------------------------------


def test_async_result_starts_like_the_original() -> None:
    r = asyncResult()
    assert r.isDone() is False and r.result == {} and not r.error
    assert r.wait(timeout=0.01) is False


def test_async_result_completes_once_and_calls_back_once() -> None:
    calls: list[asyncResult] = []
    r = asyncResult(callback=calls.append)
    assert r._complete(error=False, result="1", status_code=200)
    assert not r._complete(error=response_codes("resource", 504), result="", status_code=504)
    assert r.wait(0) and r.result == "1" and r.error is False
    assert calls == [r]


def test_async_result_callback_exception_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    def boom(_: asyncResult) -> None:
        raise RuntimeError("callback bug")

    r = asyncResult(callback=boom)
    r._complete(error=False, result="", status_code=200)
    assert r.isDone()
    assert "callback bug" in caplog.text
