"""The client's dialect pieces that stand on their own: error bodies, the duplicate
window, options a dialect has no equivalent for (nothing may be sent for those)."""

from __future__ import annotations

import json

import pytest

from bridge.connector import connector, response_codes
from bridge.connector.errors import UNSUPPORTED
from bridge.connector.messages import RecentIds, drop_seen
from bridge.simulator import Emulator
from tests.support.clients import client_for

ERROR_BODY = {
    "object": "error",
    "code": 400,
    "type": "validation_error",
    "message": "DEVICE_NOT_CONNECTED: the device is not connected",
    "request_id": "0161991d63150242ac12000600000000",
    "fields": [{"name": "uri", "message": "bad"}],
}


def test_an_error_body_is_read_into_the_error_object() -> None:
    err = response_codes.from_body("resource", 400, json.dumps(ERROR_BODY).encode())
    assert err.status_code == 400 and err.errType == "resource400"
    assert err.error == ERROR_BODY["message"]
    assert err.errorType == "validation_error"
    assert err.errorCode == "DEVICE_NOT_CONNECTED"
    assert err.requestId == ERROR_BODY["request_id"]
    assert err.fields == [{"name": "uri", "message": "bad"}]


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("QUEUE_IS_FULL", "QUEUE_IS_FULL"),
        ("URI_PATH_DOES_NOT_EXISTS: no /9/9/9", "URI_PATH_DOES_NOT_EXISTS"),
        ("Not found", None),
        ("Device request timed out", None),
    ],
)
def test_the_error_name_is_taken_only_from_the_start_of_the_message(
    message: str, code: str | None
) -> None:
    body = json.dumps({**ERROR_BODY, "message": message}).encode()
    got = response_codes.from_body("resource", 400, body).errorCode
    assert got == code


@pytest.mark.parametrize("body", [b"", b"Endpoint node-9 not found", b"{not json", b'{"a":1}'])
def test_a_body_that_is_not_an_error_body_keeps_the_documented_text(body: bytes) -> None:
    err = response_codes.from_body("resource", 404, body)
    assert err == response_codes("resource", 404)
    assert err.errorCode is None and err.errorType is None and err.requestId is None


def test_entries_seen_before_are_dropped_and_counted_within_a_bounded_window() -> None:
    seen = RecentIds(size=3)
    first = {"notifications": [{"uid": u, "ep": "d"} for u in ("a", "b", "c")]}
    assert drop_seen(first, seen) == 0 and len(first["notifications"]) == 3
    again = {
        "notifications": [{"uid": "b"}, {"uid": "d"}],
        "async-responses": [{"uid": "c", "id": "x"}],
        "de-registrations": ["d1"],  # plain strings carry no uid: kept
    }
    assert drop_seen(again, seen) == 2
    assert again == {"notifications": [{"uid": "d"}], "de-registrations": ["d1"]}
    assert seen.dropped == 2
    # "a" left the window when "d" came in (size 3): it counts as new again.
    late = {"notifications": [{"uid": "a"}]}
    assert drop_seen(late, seen) == 0 and late["notifications"] == [{"uid": "a"}]


def test_an_async_responses_max_age_is_read_as_a_number_whether_number_or_string() -> None:
    msg = {
        "notifications": [{"max-age": "60"}],  # nobody reads it there: left as it came
        "async-responses": [{"id": "1", "max-age": "0"}, {"id": "2", "max-age": 30},
                            {"id": "3", "max-age": "soon"}],
    }  # fmt: skip
    drop_seen(msg, RecentIds())
    assert [e["max-age"] for e in msg["async-responses"]] == [0, 30, "soon"]
    assert msg["notifications"][0]["max-age"] == "60"


def test_duplicates_reach_no_handler_and_are_counted() -> None:
    c = connector("key", "http://127.0.0.1:9", api="current")
    got: list[list[str]] = []
    c.setHandler("notifications", lambda m: got.append([e["uid"] for e in m["notifications"]]))
    try:
        assert c.handler({"notifications": [{"uid": "u1", "ep": "d", "path": "/1", "payload": ""}]})
        assert c.handler({"notifications": [{"uid": "u1", "ep": "d", "path": "/1", "payload": ""}]})
        assert c.handler({"notifications": [{"uid": "u2", "ep": "d", "path": "/1", "payload": ""}]})
        assert got == [["u1"], ["u2"]]
        assert c.duplicatesDropped() == 1
    finally:
        c.close()


def test_an_unknown_dialect_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="api must be one of legacy, current"):
        connector("key", "http://127.0.0.1:9", api="v3")  # type: ignore[arg-type]


def test_retry_and_expiry_on_the_legacy_service_are_unsupported_and_nothing_is_sent() -> None:
    def calls(emu: Emulator) -> int:  # requests other than the long poll's own pulls
        counters = emu.counters()
        return counters["requests"] - counters["pulls"]

    with Emulator() as emu, client_for(emu) as c:
        before = calls(emu)
        results = [
            c.getResourceValue("node-001", "/3303/0/5700", retry=2),
            c.putResourceValue("light-001", "/3311/0/5850", "1", expiry=120),
            c.postResource("multi-001", "/3/0/4", retry=0, expiry=60),
        ]
        for r in results:
            assert r.isDone() and r.error
            assert r.error.errType == UNSUPPORTED and r.error.status_code == 0
            assert "retry and expiry" in r.error.error
        assert calls(emu) == before


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.getConnectorVersion(),
        lambda c: c.getApiVersions(),
        lambda c: c.getLimits(),
        lambda c: c.getResources("d", noResp=True),
        lambda c: c.getResourceValue("d", "/3303/0/5700", cacheOnly=True),
        lambda c: c.getResourceValue("d", "/3303/0/5700", noResp=True),
    ],
    ids=["version", "rest-versions", "limits", "listing-noResp", "cacheOnly", "noResp"],
)
def test_seed_options_today_has_no_equivalent_for_are_unsupported_and_send_nothing(
    call: object,
) -> None:
    with Emulator() as emu:
        c = connector(emu.token, emu.url, api="current", timeout=5.0)
        try:
            before = emu.counters()["requests"]
            r = call(c)  # type: ignore[operator]
            assert r.isDone() and r.error and r.error.errType == UNSUPPORTED
            assert emu.counters()["requests"] == before
        finally:
            c.close()
