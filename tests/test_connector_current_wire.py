"""What the client sends to today's service, byte for byte, where the emulator cannot
tell: device requests (body, async id, retry and expiry), the ``/v3/devices`` pages, and
an answer that arrives on the channel before the request's 202 has come back."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator

import pytest

from bridge.connector import connector
from tests.support.wire import Recorded, RecordingServer, Reply

DEVICE = "015f3850a657000000000001001002ab"
TEXT, OCTETS = "text/plain", "application/octet-stream"


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer(lambda req: Reply(202, b"")) as srv:
        yield srv


def client(srv: RecordingServer, fast_http: bool) -> connector:
    return connector("key", srv.url, api="current", fastHttp=fast_http, timeout=5.0)


def request_of(rec: Recorded) -> dict[str, object]:
    body = json.loads(rec.body)
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize(
    ("call", "method", "uri", "payload", "ctype"),
    [
        (lambda c: c.getResourceValue(DEVICE, "/3303/0/5700"), "GET", "/3303/0/5700", None, None),
        (lambda c: c.putResourceValue(DEVICE, "3311/0/5850", "1"), "PUT", "/3311/0/5850", b"1", TEXT),  # noqa: E501
        (lambda c: c.putResourceValue(DEVICE, "/5/0/0", b"\x00"), "PUT", "/5/0/0", b"\x00", OCTETS),
        (lambda c: c.postResource(DEVICE, "/3/0/4"), "POST", "/3/0/4", None, None),
        (lambda c: c.postResource(DEVICE, "/3/0/4", "now"), "POST", "/3/0/4", b"now", TEXT),
        (lambda c: c.deleteEndpoint(DEVICE), "DELETE", "/", None, None),
    ],
    ids=["get", "put-text", "put-bytes", "post", "post-argument", "delete-endpoint"],
)  # fmt: skip
def test_every_resource_call_is_one_device_request(
    server: RecordingServer,
    fast_http: bool,
    call: object,
    method: str,
    uri: str,
    payload: bytes | None,
    ctype: str | None,
) -> None:
    c = client(server, fast_http)
    try:
        r = call(c)  # type: ignore[operator]
        assert not r.isDone() and r.http_status == 202 and r.status_code == 202
        (rec,) = server.requests
        assert rec.method == "POST" and rec.path == f"/v2/device-requests/{DEVICE}"
        assert rec.headers["Content-Type"] == "application/json"
        assert rec.headers["Authorization"] == "Bearer key"
        (async_id,) = rec.query["async-id"]
        assert re.fullmatch(r"[\w\-]{1,40}", async_id) and r.async_id == async_id
        assert "retry" not in rec.query and "expiry-seconds" not in rec.query
        body = request_of(rec)
        assert body["method"] == method and body["uri"] == uri
        if payload is None:
            assert "payload-b64" not in body
        else:
            assert base64.b64decode(str(body["payload-b64"])) == payload
            assert body["content-type"] == ctype
        assert c.pendingCount() == 1
    finally:
        c.close()


def test_retry_and_expiry_go_as_query_parameters(server: RecordingServer, fast_http: bool) -> None:
    c = client(server, fast_http)
    try:
        c.getResourceValue(DEVICE, "/3303/0/5700", retry=3)
        c.putResourceValue(DEVICE, "/3311/0/5850", "0", expiry=600)
        c.postResource(DEVICE, "/3/0/4", "", retry=0, expiry=86400)
        got = [(r.query.get("retry"), r.query.get("expiry-seconds")) for r in server.requests]
        assert got == [(["3"], None), (None, ["600"]), (["0"], ["86400"])]
        with pytest.raises(TypeError, match="retry must be an int"):
            c.getResourceValue(DEVICE, "/3303/0/5700", retry="2")  # type: ignore[arg-type]
        assert len(server.requests) == 3
    finally:
        c.close()


def test_every_async_id_is_new(server: RecordingServer, fast_http: bool) -> None:
    c = client(server, fast_http)
    try:
        ids = {c.getResourceValue(DEVICE, "/3303/0/5700").async_id for _ in range(200)}
        assert len(ids) == 200 and None not in ids
    finally:
        c.close()


def test_an_answer_that_comes_before_the_202_completes_its_result(fast_http: bool) -> None:
    """The channel's thread may deliver the answer while the POST is still on its way
    back: the id waited before the request went out, so the answer is matched."""
    holder: dict[str, connector] = {}
    delivered = threading.Event()

    def answer(rec: Recorded) -> Reply:
        (async_id,) = rec.query["async-id"]
        entry = {"id": async_id, "status": 200, "ct": "text/plain", "max-age": "0",
                 "payload": base64.b64encode(b"21.5").decode()}  # fmt: skip
        holder["c"].handler({"async-responses": [entry]})
        delivered.set()
        return Reply(202, b"")

    with RecordingServer(answer) as srv:
        c = holder["c"] = client(srv, fast_http)
        try:
            r = c.getResourceValue(DEVICE, "/3303/0/5700")
            assert delivered.is_set() and r.isDone()
            assert not r.error and r.result == "21.5" and r.status_code == 200
            assert r.http_status == 202 and r.raw_data["max-age"] == 0
            assert c.pendingCount() == 0
        finally:
            c.close()


def test_a_refused_device_request_ends_its_wait_with_the_error_body(fast_http: bool) -> None:
    body = {"object": "error", "code": 404, "type": "not_found", "request_id": "ab" * 16,
            "message": "DEVICE_NOT_FOUND: no device " + DEVICE}  # fmt: skip
    with RecordingServer(lambda req: Reply(404, json.dumps(body))) as srv:
        c = client(srv, fast_http)
        try:
            r = c.putResourceValue(DEVICE, "/3311/0/5850", "1")
            assert r.isDone() and r.error and r.http_status == 404
            assert r.error.status_code == 404 and r.error.errorCode == "DEVICE_NOT_FOUND"
            assert r.error.error == body["message"] and r.error.requestId == "ab" * 16
            assert c.pendingCount() == 0  # the id does not wait for an answer that cannot come
        finally:
            c.close()


def _pages(total: int, page_size: int) -> RecordingServer:
    ids = [f"{i:032x}" for i in range(1, total + 1)]

    def answer(rec: Recorded) -> Reply:
        after = rec.query.get("after", [None])[0]
        start = 0 if after is None else ids.index(after) + 1
        chunk = ids[start : start + page_size]
        data = [{"object": "device", "id": i, "endpoint_name": f"node-{i[-4:]}",
                 "endpoint_type": "Sensor", "state": "registered"} for i in chunk]  # fmt: skip
        page = {"object": "list", "limit": page_size, "order": "ASC", "after": after,
                "has_more": start + page_size < total, "data": data}  # fmt: skip
        return Reply(200, json.dumps(page))

    return RecordingServer(answer)


def test_get_endpoints_reads_every_page_of_v3_devices(fast_http: bool) -> None:
    with _pages(2500, 1000) as srv:
        c = client(srv, fast_http)
        try:
            r = c.getEndpoints("Sensor")
            assert not r.error and len(r.result) == 2500 and r.extra["pages"] == 3
            assert len({e["name"] for e in r.result}) == 2500
            first = r.result[0]
            assert first["name"] == f"{1:032x}" and first["endpoint_name"] == "node-0001"
            assert first["type"] == "Sensor" and first["status"] == "ACTIVE"
            assert first["device"]["object"] == "device"
            assert [rec.path for rec in srv.requests] == ["/v3/devices"] * 3
            q = [rec.query for rec in srv.requests]
            assert all(x["limit"] == ["1000"] and x["state__eq"] == ["registered"] for x in q)
            assert all(x["endpoint_type__eq"] == ["Sensor"] for x in q)
            assert "after" not in q[0]
            assert q[1]["after"] == [f"{1000:032x}"] and q[2]["after"] == [f"{2000:032x}"]
        finally:
            c.close()


def test_get_endpoints_without_device_objects(fast_http: bool) -> None:
    """``deviceObjects=False`` (the bridge's start-up listing): the same entries, pages and
    requests, without the device object beside each."""
    with _pages(1500, 1000) as srv:
        c = client(srv, fast_http)
        try:
            r = c.getEndpoints(deviceObjects=False)
            assert not r.error and len(r.result) == 1500 and r.extra["pages"] == 2
            assert r.result[0] == {"name": f"{1:032x}", "endpoint_name": "node-0001",
                                   "type": "Sensor", "status": "ACTIVE"}  # fmt: skip
            assert not any("device" in e for e in r.result)
            assert [rec.path for rec in srv.requests] == ["/v3/devices"] * 2
        finally:
            c.close()


def test_a_page_that_is_not_a_list_page_is_an_invalid_response(fast_http: bool) -> None:
    with RecordingServer(lambda req: Reply(200, b'{"object":"device"}')) as srv:
        c = client(srv, fast_http)
        try:
            r = c.getEndpoints()
            assert r.error and r.error.errType == "invalid_response"
        finally:
            c.close()
