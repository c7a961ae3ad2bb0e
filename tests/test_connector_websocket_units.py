"""The pure parts of the WebSocket channel: the registration body, the socket's URL, and
what each close code and refused answer leads to."""

from __future__ import annotations

import pytest

from bridge.connector.websocket import (
    STATES,
    TERMINAL_STATES,
    Serialization,
    after_close,
    after_handshake,
    after_register,
    origin_of,
    websocket_url,
)


def test_serialization_defaults_ask_for_uid_and_original_ep() -> None:
    assert Serialization().body() == {
        "serialization": {
            "type": "v2",
            "cfg": {
                "include_uid": True,
                "include_original_ep": True,
                "include_timestamp": False,
                "deregistrations_as_object": False,
            },
        }
    }


def test_serialization_carries_every_option_and_the_chunk_size() -> None:
    body = Serialization(
        include_uid=False,
        include_original_ep=False,
        include_timestamp=True,
        deregistrations_as_object=True,
        max_chunk_size=500,
    ).body()["serialization"]
    assert body["max_chunk_size"] == 500
    assert body["cfg"] == {
        "include_uid": False,
        "include_original_ep": False,
        "include_timestamp": True,
        "deregistrations_as_object": True,
    }


@pytest.mark.parametrize("size", [99, 10_001, 0, -5])
def test_chunk_size_outside_the_services_range_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="100 and 10,000"):
        Serialization(max_chunk_size=size)


@pytest.mark.parametrize(
    "kw", [{"max_chunk_size": "500"}, {"include_uid": 1}, {"max_chunk_size": True}]
)
def test_options_of_the_wrong_type_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        Serialization(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/v2/notification/websocket-connect"),
        (
            "https://api.us-east-1.mbedcloud.com",
            "wss://api.us-east-1.mbedcloud.com/v2/notification/websocket-connect",
        ),
        ("HTTPS://h.example/prefix/", "wss://h.example/prefix/v2/notification/websocket-connect"),
    ],
)
def test_the_socket_url_follows_the_base_urls_scheme(base: str, url: str) -> None:
    assert websocket_url(base) == url


def test_a_base_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError):
        websocket_url("ftp://h.example")


def test_origin_is_the_services_scheme_and_host() -> None:
    assert origin_of("https://api.example:8443/x") == "https://api.example:8443"
    assert origin_of("http://127.0.0.1:9") == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("code", "action", "state"),
    [
        (None, "retry", "reconnecting"),  # cut without a close frame
        (1006, "retry", "reconnecting"),
        (1012, "retry", "reconnecting"),
        (1011, "register", "reconnecting"),
        (1001, "stop", "taken_over"),
        (1008, "stop", "revoked"),
        (1000, "stop", "deleted"),
        (1013, "retry", "reconnecting"),  # a code the service does not document
        (4000, "retry", "reconnecting"),
    ],
)
def test_close_codes(code: int | None, action: str, state: str) -> None:
    verdict = after_close(code, "why")
    assert (verdict.action, verdict.state) == (action, state)
    assert "why" in verdict.detail


@pytest.mark.parametrize(
    ("status", "action", "state"),
    [
        (401, "stop", "refused"),
        (403, "stop", "refused"),
        (429, "retry", "reconnecting"),
        (500, "retry", "reconnecting"),
        (503, "retry", "reconnecting"),
        (400, "stop", "rejected"),
        (404, "stop", "rejected"),
        (426, "stop", "rejected"),
    ],
)
def test_handshake_answers(status: int, action: str, state: str) -> None:
    verdict = after_handshake(status)
    assert (verdict.action, verdict.state) == (action, state)
    assert str(status) in verdict.detail


@pytest.mark.parametrize(
    ("answer", "action", "state"),
    [
        (401, "stop", "refused"),
        (403, "stop", "refused"),
        (400, "stop", "rejected"),  # another kind of channel exists
        (404, "stop", "rejected"),  # a service without WebSocket channels
        (429, "register", "reconnecting"),
        (502, "register", "reconnecting"),
        ("ConnectionError: refused", "register", "reconnecting"),
    ],
)
def test_registration_answers(answer: int | str, action: str, state: str) -> None:
    verdict = after_register(answer)
    assert verdict is not None
    assert (verdict.action, verdict.state) == (action, state)


@pytest.mark.parametrize("status", [200, 201])
def test_a_registered_channel_goes_on_to_connect(status: int) -> None:
    assert after_register(status) is None


def test_every_stop_verdict_names_a_terminal_state() -> None:
    verdicts = [after_close(c) for c in (1000, 1001, 1006, 1008, 1011, 1012)]
    verdicts += [after_handshake(s) for s in (400, 401, 429, 503)]
    verdicts += [v for v in (after_register(s) for s in (400, 401, 503)) if v is not None]
    for v in verdicts:
        assert v.state in STATES
        assert (v.action == "stop") == (v.state in TERMINAL_STATES)
