"""The emulator's REST routes, status codes and bodies, over real HTTP."""

from __future__ import annotations

import pytest
import requests

from bridge.simulator import Emulator
from bridge.upstream.lwm2m_json import instance_values
from tests.simulator_support import Api, decode


@pytest.fixture
def api(emulator: Emulator) -> Api:
    return Api(emulator)


def test_service_information(emulator: Emulator) -> None:
    api = Api(emulator, prefix="")
    r = api.get("/")
    assert r.status_code == 200
    assert "REST version = v2" in r.text
    assert api.get("/rest-versions").json() == ["v1", "v2"]
    limits = api.get("/limits").json()
    assert set(limits) == {
        "transaction-quota",
        "transaction-count",
        "endpoint-quota",
        "endpoint-count",
    }
    assert limits["endpoint-count"] == len(emulator.endpoints())


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic test-token", "test-token"])
def test_wrong_or_missing_key_is_401(emulator: Emulator, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    for path in ("/v2/endpoints", "/endpoints", "/", "/v2/notification/pull", "/admin/counters"):
        r = requests.get(emulator.url + path, headers=headers, timeout=5)
        assert r.status_code == 401, path


@pytest.mark.parametrize("path", ["/v2/endpoints", "/endpoints", "/v2/endpoints/", "/endpoints/"])
def test_every_route_answers_versioned_unversioned_and_with_slash(
    emulator: Emulator, path: str
) -> None:
    api = Api(emulator, prefix="")
    r = api.get(path)
    assert r.status_code == 200
    names = {e["name"] for e in r.json()}
    assert {"node-001", "light-001", "sleeper-001"} <= names


def test_endpoint_list_and_type_filter(api: Api) -> None:
    everything = api.get("/endpoints").json()
    node = next(e for e in everything if e["name"] == "node-001")
    assert node == {"name": "node-001", "type": "TempSensor", "status": "ACTIVE", "q": False}
    assert next(e for e in everything if e["name"] == "sleeper-001")["q"] is True
    lights = api.get("/endpoints", params={"type": "Light"}).json()
    assert [e["name"] for e in lights] == ["light-001"]
    assert api.get("/endpoints", params={"type": "Nope"}).json() == []


def test_resource_listing(api: Api) -> None:
    r = api.get("/endpoints/light-001")
    assert r.status_code == 200
    by_uri = {e["uri"]: e for e in r.json()}
    assert by_uri["/3311/0/5850"] == {
        "uri": "/3311/0/5850",
        "rt": "On/Off",
        "obs": True,
        "type": "",
    }
    assert by_uri["/3/0/0"]["obs"] is False
    assert {"/3/0/0", "/3/0/1", "/3/0/4"} <= set(by_uri)
    assert api.get("/endpoints/nobody").status_code == 404
    assert api.get("/endpoints/light-001/", params={"cacheOnly": "true"}).status_code == 200


def test_async_call_without_channel_is_412(api: Api) -> None:
    r = api.get("/endpoints/node-001/3303/0/5700")
    assert r.status_code == 412
    assert r.text == "No notification channel"
    assert api.put("/endpoints/light-001/3311/0/5850", data=b"1").status_code == 412


def test_get_answers_202_then_async_response(api: Api, emulator: Emulator) -> None:
    api.open_channel()
    r = api.get("/endpoints/node-001/3303/0/5700")
    assert r.status_code == 202
    aid = r.json()["async-response-id"]
    assert aid.endswith("#node-001@domain/3303/0/5700")
    entry = api.async_response(aid)
    assert entry["status"] == 200
    assert entry["ct"] == "text/plain"
    value = decode(entry)
    float(value)  # a temperature
    assert api.request_async("GET", "/endpoints/node-001/3/0/0")["status"] == 200


def test_put_takes_effect_and_is_notified_when_observed(api: Api, emulator: Emulator) -> None:
    api.open_channel()
    assert api.put("/subscriptions/light-001/3311/0/5850").status_code == 200
    entry = api.request_async("PUT", "/endpoints/light-001/3311/0/5850", data=b"1")
    assert entry["status"] == 200
    assert emulator.get_value("light-001", "/3311/0/5850") == b"1"
    api.wait_for(lambda s: api.notifications("light-001", "/3311/0/5850") == [b"1"])
    got = api.request_async("GET", "/endpoints/light-001/3311/0/5850")
    assert decode(got) == b"1"


def test_a_successful_put_or_post_answers_with_a_payload_even_an_empty_one(api: Api) -> None:
    """As the Connector does: the original library decodes ``payload`` of every async
    response and never completes a PUT or POST without it."""
    api.open_channel()
    for method, path, body in (
        ("PUT", "/endpoints/light-001/3311/0/5850", b"1"),
        ("POST", "/endpoints/light-001/3/0/4", b""),
    ):
        entry = api.request_async(method, path, data=body)
        assert entry["status"] == 200, entry
        assert "payload" in entry and decode(entry) == b"", entry
    refused = api.request_async("PUT", "/endpoints/node-001/3/0/0", data=b"x")
    assert refused["status"] == 405 and "payload" not in refused  # a failure has none


def test_put_body_is_raw_bytes_and_validated(api: Api, emulator: Emulator) -> None:
    api.open_channel()
    assert api.request_async("PUT", "/endpoints/light-001/3311/0/5851", data=b"42")["status"] == 200
    assert emulator.get_value("light-001", "/3311/0/5851") == b"42"
    bad = api.request_async("PUT", "/endpoints/light-001/3311/0/5851", data=b'"42"')
    assert bad["status"] == 400 and "BAD_REQUEST" in bad["error"]
    out_of_range = api.request_async("PUT", "/endpoints/light-001/3311/0/5851", data=b"101")
    assert out_of_range["status"] == 400
    assert emulator.get_value("light-001", "/3311/0/5851") == b"42"


def test_read_only_and_non_executable_and_delete_fail_with_405(api: Api) -> None:
    api.open_channel()
    ro = api.request_async("PUT", "/endpoints/node-001/3/0/0", data=b"x")
    assert ro["status"] == 405 and ro["error"] == "METHOD_NOT_ALLOWED"
    assert api.request_async("POST", "/endpoints/node-001/3303/0/5700")["status"] == 405
    assert api.request_async("GET", "/endpoints/node-001/3/0/4")["status"] == 405
    assert api.request_async("DELETE", "/endpoints/node-001/3303/0/5700")["status"] == 405


def test_object_level_read_is_lwm2m_json(api: Api) -> None:
    api.open_channel()
    entry = api.request_async("GET", "/endpoints/light-001/3311/0")
    assert entry["status"] == 200
    assert entry["ct"] == "application/vnd.oma.lwm2m+json"
    import json

    body = json.loads(decode(entry))
    assert body["bn"] == "/3311/0/"
    assert {e["n"] for e in body["e"]} >= {"5850", "5851"}
    # Every value, in plain text, is what a read of that resource alone gives.
    values = instance_values("/3311/0", decode(entry))
    assert set(values) >= {"/3311/0/5850", "/3311/0/5851"}
    for path, value in values.items():
        assert decode(api.request_async("GET", f"/endpoints/light-001{path}")) == value, path


def test_unknown_resource_and_endpoint_are_404(api: Api) -> None:
    api.open_channel()
    assert api.get("/endpoints/node-001/9999/0/1").status_code == 404
    assert api.get("/endpoints/nobody/3303/0/5700").status_code == 404
    assert api.put("/endpoints/nobody/3303/0/5700", data=b"1").status_code == 404


def test_no_resp_is_204_and_still_applies(api: Api, emulator: Emulator) -> None:
    # noResp needs no channel: nobody waits for an answer
    r = api.put("/endpoints/light-001/3311/0/5851", params={"noResp": "true"}, data=b"7")
    assert r.status_code == 204
    api.open_channel()
    api.wait_for(lambda s: emulator.get_value("light-001", "/3311/0/5851") == b"7", timeout=5)
    assert api.seen["async-responses"] == []
    # a queue-mode device cannot take a non-confirmable request
    r = api.get("/endpoints/sleeper-001/3301/0/5700", params={"noResp": "true"})
    assert r.status_code == 409


def test_cache_only_205_then_200_with_plain_value(api: Api, emulator: Emulator) -> None:
    path = "/endpoints/light-001/3311/0/5851"
    assert api.get(path, params={"cacheOnly": "true"}).status_code == 205
    api.open_channel()
    value = decode(api.request_async("GET", path))
    r = api.get(path, params={"cacheOnly": "true"})
    assert r.status_code == 200
    assert r.content == value
    assert r.headers["Content-Type"].startswith("text/plain")


def test_deregistered_endpoint_is_410_and_unlisted(api: Api, emulator: Emulator) -> None:
    api.open_channel()
    emulator.deregister("node-002")
    assert "node-002" not in emulator.endpoints()
    assert api.get("/endpoints/node-002/3303/0/5700").status_code == 410
    assert api.get("/endpoints/node-002").status_code == 410
    assert "node-002" not in {e["name"] for e in api.get("/endpoints").json()}
    api.wait_for(lambda s: "node-002" in s["de-registrations"])


def test_delete_endpoint_deregisters_it(api: Api, emulator: Emulator) -> None:
    api.open_channel()
    r = api.delete("/endpoints/node-002")
    assert r.status_code == 202
    entry = api.async_response(r.json()["async-response-id"])
    assert entry["status"] == 202
    api.wait_for(lambda s: "node-002" in s["de-registrations"])
    assert "node-002" not in emulator.endpoints()


def test_percent_encoded_endpoint_name(api: Api, emulator: Emulator) -> None:
    emulator.register("dev/with slash", ept="Light")
    listed = {e["name"] for e in api.get("/endpoints").json()}
    assert "dev/with slash" in listed
    r = api.get("/endpoints/dev%2Fwith%20slash")
    assert r.status_code == 200
    api.open_channel()
    entry = api.request_async("GET", "/endpoints/dev%2Fwith%20slash/3311/0/5850")
    assert entry["status"] == 200
    assert "#dev/with slash@domain/3311/0/5850" in entry["id"]


def test_unknown_route_404_and_wrong_method_405(api: Api) -> None:
    assert api.get("/nothing/here").status_code == 404
    assert api.post("/endpoints").status_code == 405
    assert api.put("/notification/pull").status_code == 405


def test_limits_count_transactions(api: Api) -> None:
    before = api.get("/limits").json()["transaction-count"]
    api.open_channel()
    api.request_async("GET", "/endpoints/node-001/3303/0/5700")
    api.put("/endpoints/light-001/3311/0/5850", params={"noResp": "true"}, data=b"1")
    after = api.get("/limits").json()["transaction-count"]
    assert after == before + 2


def test_execute_reboot_deregisters_and_registers_again(api: Api, emulator: Emulator) -> None:
    api.open_channel()
    assert api.put("/subscriptions/light-001/3311/0/5850").status_code == 200
    emulator.set_value("light-001", "/3311/0/5850", "1")
    entry = api.request_async("POST", "/endpoints/light-001/3/0/4")
    assert entry["status"] == 200
    api.wait_for(
        lambda s: (
            "light-001" in s["de-registrations"]
            and any(r["ep"] == "light-001" for r in s["registrations"])
        ),
        timeout=10,
    )
    reg = next(r for r in api.seen["registrations"] if r["ep"] == "light-001")
    assert reg["ept"] == "Light" and reg["q"] is False
    assert {
        "path": "/3311/0/5850",
        "if": "",
        "rt": "On/Off",
        "ct": "text/plain",
        "obs": True,
    } in reg["resources"]
    # a reboot loses observations and resets actuators
    assert ("light-001", "/3311/0/5850") not in emulator.subscriptions()
    assert emulator.get_value("light-001", "/3311/0/5850") == b"0"
    assert "light-001" in emulator.endpoints()


def test_device_requests_later_api(api: Api, emulator: Emulator) -> None:
    api.open_channel()
    body = {"method": "PUT", "uri": "/3311/0/5851", "payload-b64": "NjA="}
    r = api.post("/device-requests/light-001", params={"async-id": "my-id-1"}, json=body)
    assert r.status_code == 202
    assert api.async_response("my-id-1")["status"] == 200
    assert emulator.get_value("light-001", "/3311/0/5851") == b"60"
    r = api.post(
        "/device-requests/light-001",
        params={"async-id": "my-id-2"},
        json={"method": "GET", "uri": "/3311/0/5851"},
    )
    assert decode(api.async_response("my-id-2")) == b"60"
    assert api.post("/device-requests/light-001", json=body).status_code == 400
    bad = {"method": "PATCH", "uri": "/3311/0/5851"}
    assert api.post("/device-requests/light-001?async-id=x", json=bad).status_code == 400
    assert api.post("/device-requests/nobody?async-id=x", json=body).status_code == 404
