"""Subscriptions and pre-subscriptions (wildcards, types, limits, later registrations)."""

from __future__ import annotations

import itertools

import pytest

from bridge.simulator import Emulator
from tests.simulator_support import Api


@pytest.fixture
def api(emulator: Emulator) -> Api:
    return Api(emulator)


def test_subscription_routes(api: Api, emulator: Emulator) -> None:
    res = "/node-001/3303/0/5700"
    assert api.get("/subscriptions" + res).status_code == 404
    assert api.put("/subscriptions" + res).status_code == 200
    r = api.get("/subscriptions" + res)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/uri-list")
    assert r.text.splitlines() == ["/subscriptions/node-001/3303/0/5700"]
    assert ("node-001", "/3303/0/5700") in emulator.subscriptions()
    assert api.put("/subscriptions/node-001/3304/0/5700").status_code == 200
    lines = api.get("/subscriptions/node-001").text.splitlines()
    assert sorted(lines) == [
        "/subscriptions/node-001/3303/0/5700",
        "/subscriptions/node-001/3304/0/5700",
    ]
    assert api.delete("/subscriptions" + res).status_code == 204
    assert api.delete("/subscriptions" + res).status_code == 404
    assert api.get("/subscriptions" + res).status_code == 404
    assert api.delete("/subscriptions/node-001").status_code == 204
    assert emulator.subscriptions() == set()
    assert api.get("/subscriptions/node-001").text == ""
    assert api.get("/subscriptions/nobody").status_code == 404
    assert api.delete("/subscriptions/nobody").status_code == 404


def test_subscription_errors(api: Api) -> None:
    assert api.put("/subscriptions/node-001/3/0/0").status_code == 412  # not observable
    assert api.put("/subscriptions/node-001/9/9/9").status_code == 404
    assert api.put("/subscriptions/nobody/3303/0/5700").status_code == 404


def test_delete_all_subscriptions_unversioned_with_slash(emulator: Emulator) -> None:
    api = Api(emulator, prefix="")
    api.put("/subscriptions/node-001/3303/0/5700")
    api.put("/subscriptions/light-001/3311/0/5850")
    assert len(emulator.subscriptions()) == 2
    assert api.delete("/subscriptions/").status_code == 204
    assert emulator.subscriptions() == set()


def test_subscribed_drifting_sensor_notifies_at_least_once_a_second(api: Api) -> None:
    api.open_channel()
    api.put("/subscriptions/node-001/3303/0/5700")
    api.wait_for(lambda s: len(api.notifications("node-001", "/3303/0/5700")) >= 3, timeout=5)
    values = api.notifications("node-001", "/3303/0/5700")
    assert all(a != b for a, b in itertools.pairwise(values))
    # unsubscribed resources do not notify
    assert not [n for n in api.seen["notifications"] if n["ep"] != "node-001"]


def test_presubscription_wildcards(emulator: Emulator) -> None:
    api = Api(emulator, prefix="")  # the original library sends it unversioned
    rules = [
        {"endpoint-name": "node*", "resource-path": ["/3303/0/5700"]},
        {"endpoint-type": "Light", "resource-path": ["/3311/*"]},
        {"endpoint-name": "multi-001", "resource-path": ["/3304/0/5700", "/3200/*"]},
    ]
    assert api.put("/subscriptions", json=rules).status_code == 204
    assert api.get("/subscriptions").json() == rules
    assert api.get("/subscriptions/").json() == rules
    subs = emulator.subscriptions()
    assert subs == {
        ("node-001", "/3303/0/5700"),
        ("node-002", "/3303/0/5700"),
        ("light-001", "/3311/0/5850"),
        ("light-001", "/3311/0/5851"),
        ("light-001", "/3311/0/5706"),
        ("multi-001", "/3304/0/5700"),
        ("multi-001", "/3200/0/5500"),
        ("multi-001", "/3200/0/5501"),
    }


def test_presubscription_without_paths_takes_every_observable_resource(emulator: Emulator) -> None:
    api = Api(emulator)
    assert api.put("/subscriptions", json=[{"endpoint-name": "light-001"}]).status_code == 204
    assert {p for ep, p in emulator.subscriptions()} == {
        "/3311/0/5850",
        "/3311/0/5851",
        "/3311/0/5706",
        "/3201/0/5550",
    }


def test_presubscriptions_apply_to_later_registrations(api: Api, emulator: Emulator) -> None:
    api.put("/subscriptions", json=[{"endpoint-name": "late-*", "resource-path": ["/3303/*"]}])
    assert emulator.subscriptions() == set()
    emulator.register("late-1", ept="TempSensor")
    emulator.register("other-1", ept="TempSensor")
    assert emulator.subscriptions() == {("late-1", "/3303/0/5700")}
    api.open_channel()
    emulator.set_value("late-1", "/3303/0/5700", "30.5")
    emulator.set_value("other-1", "/3303/0/5700", "31.5")
    api.wait_for(lambda s: api.notifications("late-1", "/3303/0/5700") == [b"30.5"])
    assert api.notifications("other-1", "/3303/0/5700") == []


def test_new_rules_clear_existing_subscriptions(api: Api, emulator: Emulator) -> None:
    api.put("/subscriptions/light-001/3311/0/5850")
    api.put("/subscriptions", json=[{"endpoint-name": "node-001", "resource-path": ["/3304/*"]}])
    assert emulator.subscriptions() == {("node-001", "/3304/0/5700")}
    assert api.put("/subscriptions", json=[]).status_code == 204
    assert api.get("/subscriptions").json() == []
    assert emulator.subscriptions() == set()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"endpoint-name": "x"}',
        b'["x"]',
        b'[{"endpoint-name": "a*b"}]',
        b'[{"endpoint-name": ""}]',
        b'[{"resource-path": "/3303/0/5700"}]',
        b'[{"resource-path": []}]',
        b'[{"resource-path": [5]}]',
        b'[{"endpoint-nam": "x"}]',
        ('[{"endpoint-name": "' + "n" * 65 + '"}]').encode(),
        ('[{"endpoint-type": "' + "t" * 65 + '"}]').encode(),
        ('[{"resource-path": ["/' + "p" * 128 + '"]}]').encode(),
        ("[" + ",".join(['{"endpoint-name": "x"}'] * 1025) + "]").encode(),
    ],
)
def test_malformed_presubscriptions_are_400_and_change_nothing(api: Api, body: bytes) -> None:
    rules = [{"endpoint-name": "node-001"}]
    api.put("/subscriptions", json=rules)
    r = api.put("/subscriptions", data=body)
    assert r.status_code == 400, r.text
    assert api.get("/subscriptions").json() == rules


def test_presubscription_limits_are_inclusive(api: Api) -> None:
    rules = [
        {"endpoint-name": "n" * 64, "endpoint-type": "t" * 64, "resource-path": ["/" + "p" * 127]}
    ] * 1024
    assert api.put("/subscriptions", json=rules).status_code == 204
    assert len(api.get("/subscriptions").json()) == 1024
