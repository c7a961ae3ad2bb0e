"""Failures told apart by type, on both HTTP stacks: a call that got no HTTP answer says
in ``error.failure`` whether the request certainly never reached the service
(``"not_sent"``: refused, connect time-out, TLS handshake failure) or may have
(``"no_answer"``: closed or timed out after the request went out); an HTTP answer is
``failure`` None. The commands' retry policy (:func:`bridge.extensions.commands.retry_delay`)
reads exactly that, so an execute (POST) whose connection timed out is tried again, and
one that was sent but not answered never is. Real loopback servers throughout."""

from __future__ import annotations

import pytest

from bridge.connector import asyncResult, connector
from bridge.connector.errors import CannotSend, NoAnswer, NotConnected
from bridge.connector.transport import make_session
from bridge.extensions.commands import retry_delay
from bridge.upstream.port import outcome_of
from tests.support.ports import free_port
from tests.support.wire import (
    ClosingServer,
    GarbageServer,
    RecordingServer,
    Reply,
    SilentServer,
    full_backlog,
)

EP, EXECUTE, VALUE = "ep1", "/3/0/4", "/3311/0/5850"


def post(url: str, fast_http: bool, timeout: float = 1.0) -> asyncResult:
    """An execute (POST) through the client, as the bridge's commands make it."""
    with connector("k", url, timeout=timeout, fastHttp=fast_http) as c:
        r = c.postResource(EP, EXECUTE)
    assert r.isDone()
    return r


def test_a_post_whose_connection_timed_out_is_retried(fast_http: bool) -> None:
    """The defect of classifying by text: the lean stack said "connecting to ...: timed
    out", the policy looked for "ConnectTimeout", so such a POST was never retried."""
    with full_backlog() as url:
        r = post(url, fast_http, timeout=0.5)
    assert r.error and r.error.failure == "not_sent"
    assert (r.error.status_code, r.error.errType) == (0, "request_timeout")
    assert "no answer within 0.5 s" in r.error.error  # the message users saw before
    assert retry_delay("post", outcome_of(r), 1) is not None


def test_a_post_sent_but_not_answered_is_not_retried(fast_http: bool) -> None:
    with SilentServer(close=True) as server:
        r = post(server.url, fast_http)
        assert server.requests >= 1  # it really went out
    assert r.error and r.error.failure == "no_answer"
    assert retry_delay("post", outcome_of(r), 1) is None
    assert retry_delay("set", outcome_of(r), 1) is not None  # a PUT does the same when done twice


def test_refused_is_not_sent(fast_http: bool) -> None:
    r = post(f"http://127.0.0.1:{free_port()}", fast_http)
    assert r.error and r.error.failure == "not_sent"
    assert (r.error.status_code, r.error.errType) == (0, "connection_error")
    assert r.status_code == 0
    assert retry_delay("post", outcome_of(r), 1) is not None


def test_accepted_then_closed_without_answer_is_no_answer(fast_http: bool) -> None:
    with SilentServer(close=True) as server:
        with connector("k", server.url, timeout=2.0, fastHttp=fast_http) as c:
            r = c.getEndpoints()
        assert server.requests >= 1
    assert r.error and r.error.failure == "no_answer"
    assert (r.error.status_code, r.error.errType) == (0, "connection_error")


def test_read_time_out_is_no_answer(fast_http: bool) -> None:
    with SilentServer(close=False) as server:
        r = post(server.url, fast_http, timeout=0.5)
        assert server.requests == 1
    assert r.error and r.error.failure == "no_answer"
    assert (r.error.status_code, r.error.errType) == (0, "request_timeout")
    assert "no answer within 0.5 s" in r.error.error
    assert retry_delay("post", outcome_of(r), 1) is None


def test_an_http_503_is_an_answer(fast_http: bool) -> None:
    with RecordingServer(lambda _: Reply(503, b"busy", "text/plain")) as server:
        r = post(server.url, fast_http)
    assert r.error and r.error.failure is None
    assert (r.status_code, r.error.status_code, r.error.errType) == (503, 503, "resource503")
    assert r.result == "busy"
    assert retry_delay("post", outcome_of(r), 1) is not None  # 503: the Connector did not take it


@pytest.mark.parametrize("server_type", [GarbageServer, ClosingServer])
def test_tls_handshake_failure_is_not_sent(fast_http: bool, server_type: type) -> None:
    """A port that does not speak TLS: it answers in plain text, or closes at once."""
    with server_type() as server:
        url = f"https://127.0.0.1:{server.port}"
        r = post(url, fast_http)
    assert r.error and r.error.failure == "not_sent", r.error
    assert (r.error.status_code, r.error.errType) == (0, "connection_error")


def test_the_stacks_raise_the_typed_failures_themselves(fast_http: bool) -> None:
    """Below the client: each session raises NotConnected / NoAnswer / CannotSend."""
    pull = "http://127.0.0.1:9/v2/notification/pull"
    session, _ = make_session("k", pull, fast=fast_http)
    try:
        with pytest.raises(NotConnected) as refused:
            session.request("GET", f"http://127.0.0.1:{free_port()}/", timeout=(1, 1))
        assert refused.value.failure == "not_sent" and not refused.value.timed_out
        with full_backlog() as url, pytest.raises(NotConnected) as timed_out:
            session.request("GET", url + "/", timeout=(0.3, 1))
        assert timed_out.value.timed_out and timed_out.value.kind == "ConnectTimeout"
        with SilentServer(close=False) as server, pytest.raises(NoAnswer) as silent:
            session.request("GET", server.url + "/", timeout=(1, 0.3))
        assert silent.value.failure == "no_answer" and silent.value.timed_out
        with pytest.raises(CannotSend) as unsendable:
            session.request("GET", "ftp://127.0.0.1/x", timeout=(1, 1))
        assert unsendable.value.failure is None
    finally:
        session.close()
