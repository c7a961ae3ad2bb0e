"""Every seed method against the emulator: what it returns on success, and each status
code the REST page lists for it (forced with the emulator's ``force_status`` switch when
the virtual devices would not produce it by themselves)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bridge.connector import asyncResult, connector
from bridge.connector.errors import TABLES, UNKNOWN_ERROR, error_text
from bridge.simulator import Emulator
from tests.support.clients import Collector, client_for
from tests.support.wire import Recorded, RecordingServer, Reply

TEMP = ("node-001", "/3303/0/5700")
LIGHT = ("light-001", "/3311/0/5850")
REBOOT = "/3/0/4"

Call = Callable[[connector], asyncResult]

# method -> (call, emulator route, error table, error statuses the REST page lists)
RESOURCE_ERRORS = [404, 409, 410, 412, 413, 415, 429, 502, 503, 504]
SUBSCRIBE_ERRORS = [404, 412, 413, 415, 429, 502, 503, 504]
METHODS: dict[str, tuple[Call, str, str, list[int]]] = {
    "getConnectorVersion": (lambda c: c.getConnectorVersion(), "version", "get_mdc_version", []),
    "getApiVersions": (lambda c: c.getApiVersions(), "rest-versions", "get_rest_version", []),
    "getLimits": (lambda c: c.getLimits(), "limits", "limit", []),
    "getEndpoints": (lambda c: c.getEndpoints(), "endpoints", "get_endpoints", []),
    "getResources": (lambda c: c.getResources("node-001"), "endpoint", "get_resources", [404]),
    "getResourceValue": (
        lambda c: c.getResourceValue(*TEMP),
        "resource-get",
        "resource",
        [*RESOURCE_ERRORS, 205],
    ),
    "putResourceValue": (
        lambda c: c.putResourceValue(*LIGHT, "1"),
        "resource-put",
        "resource",
        RESOURCE_ERRORS,
    ),
    "postResource": (
        lambda c: c.postResource("multi-001", REBOOT),
        "resource-post",
        "resource",
        RESOURCE_ERRORS,
    ),
    "deleteEndpoint": (
        lambda c: c.deleteEndpoint("node-002"),
        "endpoint-delete",
        "resource",
        RESOURCE_ERRORS,
    ),
    "putResourceSubscription": (
        lambda c: c.putResourceSubscription(*TEMP),
        "subscription-put",
        "subscribe",
        SUBSCRIBE_ERRORS,
    ),
    "getResourceSubscription": (
        lambda c: c.getResourceSubscription(*TEMP),
        "subscription-get",
        "get_resource_subscription",
        [404],
    ),
    "deleteResourceSubscription": (
        lambda c: c.deleteResourceSubscription(*TEMP),
        "subscription-delete",
        "unsubscribe",
        [404],
    ),
    "getEndpointSubscriptions": (
        lambda c: c.getEndpointSubscriptions("node-001"),
        "endpoint-subscriptions-get",
        "get_endpoint_subscription",
        [404],
    ),
    "deleteEndpointSubscriptions": (
        lambda c: c.deleteEndpointSubscriptions("node-001"),
        "endpoint-subscriptions-delete",
        "delete_endpoint_subscription",
        [404],
    ),
    "deleteAllSubscriptions": (
        lambda c: c.deleteAllSubscriptions(),
        "subscriptions-delete-all",
        "unsubscribe",
        [],
    ),
    "putPreSubscription": (
        lambda c: c.putPreSubscription([{"endpoint-name": "node*"}]),
        "presubscription-put",
        "presubscription",
        [400],
    ),
    "getPreSubscription": (
        lambda c: c.getPreSubscription(),
        "presubscription-get",
        "presubscription",
        [],
    ),
    "putCallback": (
        lambda c: c.putCallback("http://127.0.0.1:9/hook"),
        "callback-put",
        "put_callback_url",
        [400],
    ),
    "getCallback": (lambda c: c.getCallback(), "callback-get", "get_callback_url", [404]),
    "deleteCallback": (
        lambda c: c.deleteCallback(),
        "callback-delete",
        "delete_callback_url",
        [404],
    ),
}

ERROR_CASES = [
    pytest.param(name, status, id=f"{name}-{status}")
    for name, (_, _, _, statuses) in METHODS.items()
    for status in statuses
]


def test_the_table_covers_every_rest_method() -> None:
    from tests.test_connector_signatures import REFERENCE

    rest = {n for n in REFERENCE if n[:3] in ("get", "put", "pos", "del")}
    assert rest == set(METHODS)


@pytest.mark.parametrize(("name", "status"), ERROR_CASES)
def test_error_code(emulator: Emulator, name: str, status: int, fast_http: bool) -> None:
    call, route, table, _ = METHODS[name]
    emulator.set_fault(force_status={"route": route, "status": status, "body": "forced"})
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        r = call(c)
    assert r.isDone()
    assert r.error, f"{name} reported success for HTTP {status}"
    assert r.status_code == status
    assert r.error.status_code == status
    assert r.error.errType == f"{table}{status}"
    assert r.error.error == TABLES[table][status]
    assert r.result == "forced"  # the body stays readable


@pytest.mark.parametrize("name", sorted(METHODS))
def test_wrong_access_key_is_401_for_every_method(
    emulator: Emulator, name: str, fast_http: bool
) -> None:
    call, _, table, _ = METHODS[name]
    with connector("wrong-key", emulator.url, timeout=5.0, fastHttp=fast_http) as c:
        r = call(c)
    assert r.isDone() and r.error
    assert (r.status_code, r.error.status_code, r.error.errType) == (401, 401, f"{table}401")
    assert r.error.error == error_text(table, 401) != UNKNOWN_ERROR


@pytest.mark.parametrize("name", sorted(METHODS))
def test_server_errors_are_reported_for_every_method(
    emulator: Emulator, name: str, fast_http: bool
) -> None:
    call, route, table, _ = METHODS[name]
    emulator.set_fault(force_status={"route": route, "status": 500})
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        r = call(c)
    assert r.isDone() and r.error and r.error.status_code == 500
    assert r.error.errType == f"{table}500"


# ---- success: service information -------------------------------------------------------


def test_service_information(emulator: Emulator, fast_http: bool) -> None:
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        version = c.getConnectorVersion()
        versions = c.getApiVersions()
        limits = c.getLimits()
    assert version.error is False and version.status_code == 200
    assert isinstance(version.result, str) and "REST version" in version.result
    assert versions.error is False and "v2" in versions.result
    assert limits.error is False and isinstance(limits.result, dict)
    assert "transaction-quota" in limits.result


def test_endpoints_and_resources(emulator: Emulator, fast_http: bool) -> None:
    emulator.register("extra-light", ept="Light")
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        every = c.getEndpoints()
        lights = c.getEndpoints("Light")
        resources = c.getResources("node-001")
        flagged = c.getResources("node-001", noResp=True, cacheOnly=True)
    names = {e["name"] for e in every.result}
    assert {"node-001", "light-001", "sleeper-001", "extra-light"} <= names
    assert names == set(emulator.endpoints())
    assert {e["name"] for e in lights.result} == {"light-001", "extra-light"}
    assert lights.extra["type"] == "Light"
    assert resources.error is False and resources.endpoint == "node-001"
    assert "/3303/0/5700" in {r["uri"] for r in resources.result}
    assert flagged.error is False and flagged.result == resources.result


# ---- success: resource verbs --------------------------------------------------------------


def test_get_value_async_202(emulator: Emulator, fast_http: bool) -> None:
    emulator.set_value(*TEMP, "19.25")
    done: Collector[asyncResult] = Collector()
    with client_for(emulator, fastHttp=fast_http) as c:
        r = c.getResourceValue(*TEMP, cbfn=done)
        assert r.http_status == 202 and r.async_id and TEMP[0] in r.async_id
        assert r.wait(5.0)
    assert done.wait(1) and done.items == [r]
    assert r.error is False and r.status_code == 200
    assert r.result in ("19.25", emulator.get_value(*TEMP).decode())  # drift may move it
    assert isinstance(r.result, str) and r.payload == r.result.encode()
    assert r.raw_data["id"] == r.async_id  # the async-responses entry


def test_get_value_cache_200_and_205(emulator: Emulator, fast_http: bool) -> None:
    with client_for(emulator, fastHttp=fast_http) as c:
        nothing = c.getResourceValue("node-002", "/3303/0/5700", cacheOnly=True)
        assert c.getResourceValue("node-002", "/3303/0/5700").wait(5.0)
        cached = c.getResourceValue("node-002", "/3303/0/5700", cacheOnly=True)
    assert nothing.isDone() and nothing.status_code == 205
    assert nothing.error and nothing.error.errType == "resource205"
    assert nothing.error.error == "No cache available for resource." and nothing.payload is None
    assert cached.error is False and cached.status_code == 200 and cached.async_id is None
    assert isinstance(cached.result, str) and float(cached.result)
    assert cached.payload == cached.result.encode()


def test_get_value_no_response_204(emulator: Emulator, fast_http: bool) -> None:
    called: Collector[asyncResult] = Collector()
    with client_for(emulator, fastHttp=fast_http) as c:
        r = c.getResourceValue(*TEMP, cbfn=called, noResp=True)
    assert r.isDone() and r.error is False and r.status_code == 204
    assert r.result == "" and r.payload is None and r.async_id is None
    assert called.items == [r]  # cbfn also for immediate answers, exactly once


def test_put_value_async(emulator: Emulator, fast_http: bool) -> None:
    with client_for(emulator, fastHttp=fast_http) as c:
        r = c.putResourceValue(*LIGHT, "1")
        assert r.http_status == 202 and r.wait(5.0)
        assert r.error is False and r.status_code == 200
        assert emulator.get_value(*LIGHT) == b"1"
        r = c.putResourceValue(*LIGHT, b"0")
        assert r.wait(5.0) and r.error is False
        assert emulator.get_value(*LIGHT) == b"0"


def test_post_async(emulator: Emulator, fast_http: bool) -> None:
    with client_for(emulator, fastHttp=fast_http) as c:
        r = c.postResource("multi-001", REBOOT, "now")
        assert r.http_status == 202 and r.wait(5.0)
    assert r.error is False and r.status_code in (200, 201, 202, 204)


def test_delete_endpoint_async(emulator: Emulator, fast_http: bool) -> None:
    with client_for(emulator, fastHttp=fast_http) as c:
        r = c.deleteEndpoint("node-002")
        assert r.http_status == 202 and r.wait(5.0)
    assert r.error is False and r.endpoint == "node-002"


@pytest.mark.parametrize(
    ("name", "route", "status"),
    [
        ("putResourceValue", "resource-put", 200),
        ("putResourceValue", "resource-put", 201),
        ("postResource", "resource-post", 201),
        ("postResource", "resource-post", 200),
        ("deleteEndpoint", "endpoint-delete", 200),
    ],
)
def test_immediate_success_codes(
    emulator: Emulator, name: str, route: str, status: int, fast_http: bool
) -> None:
    emulator.set_fault(force_status={"route": route, "status": status, "body": "ok"})
    call = METHODS[name][0]
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        r = call(c)
    assert r.isDone() and r.error is False and r.status_code == status
    assert r.result == "ok" and r.payload == b"ok"


def test_immediate_answer_calls_cbfn_once(emulator: Emulator, fast_http: bool) -> None:
    emulator.set_fault(force_status={"route": "resource-post", "status": 201})
    called: Collector[asyncResult] = Collector()
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        r = c.postResource("multi-001", REBOOT, cbfn=called)
    assert called.items == [r] and r.error is False


def test_202_without_async_id_is_a_clear_error(emulator: Emulator, fast_http: bool) -> None:
    emulator.set_fault(force_status={"route": "resource-get", "status": 202, "body": "{}"})
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        r = c.getResourceValue(*TEMP)
    assert r.isDone() and r.error and r.error.errType == "invalid_response"
    assert "async-response-id" in r.error.error


# ---- success: subscriptions -------------------------------------------------------------


def test_subscription_lifecycle(emulator: Emulator, fast_http: bool) -> None:
    with client_for(emulator, fastHttp=fast_http) as c:
        sub = c.putResourceSubscription(*TEMP)
        assert sub.isDone() and sub.error is False and sub.status_code == 200
        assert TEMP in emulator.subscriptions()
        one = c.getResourceSubscription(*TEMP)
        assert one.error is False and one.result.strip() == "/subscriptions/node-001/3303/0/5700"
        listing = c.getEndpointSubscriptions("node-001")
        assert listing.error is False and isinstance(listing.result, str)
        assert "/subscriptions/node-001/3303/0/5700" in listing.result.splitlines()
        gone = c.deleteResourceSubscription(*TEMP)
        assert gone.error is False and gone.status_code == 204
        assert TEMP not in emulator.subscriptions()
        missing = c.getResourceSubscription(*TEMP)
        assert missing.error and missing.error.error == "Resource is not subscribed."

        assert c.putResourceSubscription("node-001", "/3304/0/5700").error is False
        ep_gone = c.deleteEndpointSubscriptions("node-001")
        assert ep_gone.error is False and ep_gone.status_code == 204
        assert not any(ep == "node-001" for ep, _ in emulator.subscriptions())

        assert c.putResourceSubscription(*LIGHT).error is False
        everything = c.deleteAllSubscriptions()
        assert everything.error is False and everything.status_code == 204
        assert emulator.subscriptions() == set()


def test_subscription_real_errors(emulator: Emulator, fast_http: bool) -> None:
    with client_for(emulator, fastHttp=fast_http) as c:
        not_observable = c.putResourceSubscription("node-001", "/3/0/0")
        unknown = c.putResourceSubscription("nobody", "/3303/0/5700")
    assert not_observable.error and not_observable.error.errType == "subscribe412"
    assert not_observable.error.error == TABLES["subscribe"][412]
    assert unknown.error and unknown.error.errType == "subscribe404"


def test_subscription_to_sleeping_device_is_async(emulator: Emulator, fast_http: bool) -> None:
    with client_for(emulator, fastHttp=fast_http) as c:
        r = c.putResourceSubscription("sleeper-001", "/3301/0/5700")
        if r.http_status == 202:  # asleep (the usual case): answered when it wakes
            emulator.wake("sleeper-001")
        assert r.wait(5.0)
    assert r.error is False
    assert ("sleeper-001", "/3301/0/5700") in emulator.subscriptions()


def test_presubscriptions(emulator: Emulator, fast_http: bool) -> None:
    rules = [
        {"endpoint-name": "node*", "resource-path": ["/3303/0/5700"]},
        {"endpoint-type": "Light", "resource-path": ["/3311/*"]},
    ]
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        put = c.putPreSubscription(rules)
        got = c.getPreSubscription()
        from_text = c.putPreSubscription('[{"resource-path": ["/3/0/1"]}]')
        got_text = c.getPreSubscription()
        cleared = c.putPreSubscription([])
        empty = c.getPreSubscription()
    assert put.error is False and put.status_code == 204 and put.result == []
    assert got.error is False and got.result == rules
    assert from_text.error is False and got_text.result == [{"resource-path": ["/3/0/1"]}]
    assert cleared.error is False and empty.result == []


def test_presubscription_rejects_non_lists_before_sending(
    emulator: Emulator, fast_http: bool
) -> None:
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        with pytest.raises(TypeError, match="list"):
            c.putPreSubscription(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="JSON"):
            c.putPreSubscription("[not json")


# ---- success: the callback (webhook) channel --------------------------------------------


def test_callback_mode_end_to_end(emulator: Emulator, fast_http: bool) -> None:
    """putCallback with headers, then the webhook bodies go through handler(bytes)."""
    holder: dict[str, connector] = {}
    hooked: Collector[Recorded] = Collector()

    def receive(req: Recorded) -> Reply:
        if req.method == "PUT" and req.body:
            hooked(req)
            holder["c"].handler(req.body)  # bytes, as a web framework hands them over
        return Reply(204)

    with (
        RecordingServer(receive) as hook,
        client_for(emulator, poll=False, fastHttp=fast_http) as c,
    ):
        holder["c"] = c
        url = hook.url + "/notify"
        put = c.putCallback(url, {"Authorization": "hook-secret"})
        assert put.error is False and put.status_code == 204
        got = c.getCallback()
        assert got.error is False
        assert got.result == {"url": url, "headers": {"Authorization": "hook-secret"}}

        r = c.getResourceValue(*TEMP)
        assert r.http_status == 202 and r.wait(5.0)
        assert r.error is False and isinstance(r.result, str)
        assert hooked.wait(1)
        assert hooked.items[0].headers.get("Authorization") == "hook-secret"

        deleted = c.deleteCallback()
        assert deleted.error is False and deleted.status_code == 204
        again = c.getCallback()
        assert again.error and again.error.errType == "get_callback_url404"


def test_callback_unreachable_url_is_400(emulator: Emulator, fast_http: bool) -> None:
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        r = c.putCallback("http://127.0.0.1:9/nothing-listens")
    assert r.error and r.error.errType == "put_callback_url400"
    assert r.error.error == "Given URL is not accessible."


# ---- bad answers and a server that hangs ------------------------------------------------


@pytest.mark.parametrize(
    ("call", "route"),
    [
        (lambda c: c.getEndpoints(), "endpoints"),
        (lambda c: c.getResources("node-001"), "endpoint"),
        (lambda c: c.getLimits(), "limits"),
        (lambda c: c.getPreSubscription(), "presubscription-get"),
    ],
)
def test_malformed_json_answer(emulator: Emulator, call: Call, route: str, fast_http: bool) -> None:
    emulator.set_fault(malformed={"route": route})
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        r = call(c)
        again = call(c)  # the fault was counted: the next call is fine
    assert r.isDone() and r.error and r.error.errType == "invalid_response"
    assert r.error.status_code == 200 and "not valid JSON" in r.error.error
    assert isinstance(r.result, str)  # the unusable body, for a look
    assert again.error is False


def test_hanging_server_times_out(emulator: Emulator, fast_http: bool) -> None:
    emulator.set_fault(hang={"route": "endpoints"})
    with client_for(emulator, poll=False, timeout=1.5, fastHttp=fast_http) as c:
        r = c.getEndpoints()
        after = c.getEndpoints()  # the time-out also bounds this one: not too short
    assert r.isDone() and r.error and r.error.errType == "request_timeout"
    assert r.error.status_code == 0 and r.status_code == 0
    assert "no answer within 1.5 s" in r.error.error
    assert after.error is False


def test_unreachable_server_is_a_connection_error(fast_http: bool) -> None:
    from tests.support.ports import free_port

    with connector("k", f"http://127.0.0.1:{free_port()}", timeout=1.0, fastHttp=fast_http) as c:
        r = c.getEndpoints()
        called: Collector[asyncResult] = Collector()
        v = c.getResourceValue("x", "/1/0/1", cbfn=called)
    assert r.isDone() and r.error and r.error.errType == "connection_error"
    assert r.error.status_code == 0
    assert v.error and v.error.errType == "connection_error" and called.items == [v]


def test_endpoint_names_are_escaped(emulator: Emulator, fast_http: bool) -> None:
    odd = "odd name?#%"
    emulator.register(odd, ept="Light")
    with client_for(emulator, fastHttp=fast_http) as c:
        resources = c.getResources(odd)
        r = c.getResourceValue(odd, "/3311/0/5850")
        assert r.wait(5.0)
    assert resources.error is False and resources.result
    assert r.error is False
