"""The cluster layer's parts that need no etcd: margins, slot sharing, names, settings."""

from __future__ import annotations

import json

import pytest

from bridge.cluster.config import ClusterConfig, check_ttl, parse_endpoints
from bridge.cluster.etcd import KeyValue, Snapshot, normalize_endpoint, prefix_end
from bridge.cluster.keys import GroupKeys
from bridge.cluster.lease import HeldLease, LeaseTiming
from bridge.cluster.members import MemberInfo, view_from
from bridge.cluster.slots import fair_share, plan, slot_names
from bridge.service.settings import SettingsError, load_settings

BASE = {"connector_url": "http://127.0.0.1:1", "connector_token": "t"}


def test_default_timing_numbers() -> None:
    t = LeaseTiming.for_ttl(5)
    assert (t.margin, t.renew_every, t.request_timeout, t.poll_every) == (1.0, 1.0, 0.8, 0.5)
    short = LeaseTiming.for_ttl(2)
    assert (short.margin, short.renew_every, short.poll_every) == (0.5, 0.375, 0.4)
    assert short.request_timeout == pytest.approx(0.3)
    long = LeaseTiming.for_ttl(60)
    assert (long.margin, long.renew_every, long.request_timeout, long.poll_every) == (
        12.0,
        12.0,
        1.0,
        0.5,
    )


@pytest.mark.parametrize("ttl", [2, 3, 5, 10, 30, 3600])
def test_margins_hold_for_every_ttl(ttl: int) -> None:
    t = LeaseTiming.for_ttl(ttl)
    # Given up before etcd can expire it, by the margin; at least three renewals fit in.
    assert t.valid_until(100.0, ttl) == 100.0 + ttl - t.margin
    assert t.margin >= 0.5
    assert (ttl - t.margin) / t.renew_every >= 4 - 1e-9
    # A try of one endpoint never eats most of the time between renewals.
    assert t.request_timeout <= t.renew_every
    # A dead holder is replaced within TTL + etcd's 0.5 s expiry check + one poll.
    assert t.poll_every <= 0.5


def test_what_etcd_granted_is_what_counts() -> None:
    t = LeaseTiming.for_ttl(2)
    assert t.valid_until(0.0, granted_ttl=3) == 3 - t.margin  # etcd raised it: safe to use
    assert t.valid_until(0.0, granted_ttl=1) == 1 - t.margin  # never beyond what etcd said


def test_held_lease_reads_the_clock() -> None:
    lease = HeldLease(id=1, ttl=2, valid_until=10.0, renewed_sent=8.5)
    assert lease.valid(9.99) and not lease.valid(10.0)
    assert lease.remaining(9.0) == 1.0


@pytest.mark.parametrize("ttl", [0, 1, 3601])
def test_timing_refuses_ttls_etcd_would_not_keep(ttl: int) -> None:
    with pytest.raises(ValueError):
        LeaseTiming.for_ttl(ttl)


def test_fair_share_and_plans() -> None:
    names = slot_names(8)
    assert names[0] == "cmd-0" and names[-1] == "cmd-7"
    assert [fair_share(8, n) for n in (0, 1, 2, 3, 8, 9)] == [8, 8, 4, 3, 1, 1]
    # Alone: claim everything free, in a stable order of preference.
    first = plan("a", names, owned=(), taken=(), members=1)
    assert first.wanted == 8 and sorted(first.candidates) == sorted(names)
    assert first.release == () and plan("a", names, owned=(), taken=(), members=1) == first
    # A newcomer: the holder of all eight lets five go, the newcomer claims from the free.
    held = plan("a", names, owned=names, taken=(), members=3)
    assert len(held.release) == 5 and held.wanted == 0 and held.candidates == ()
    kept = [s for s in names if s not in held.release]
    newcomer = plan("b", names, owned=(), taken=kept, members=3)
    assert newcomer.wanted == 3 and sorted(newcomer.candidates) == sorted(held.release)
    # Every free slot is a candidate (if another member is quicker for one, try the next).
    late = plan("c", names, owned=(), taken=names[:6], members=2)
    assert late.wanted == 2 and sorted(late.candidates) == sorted(names[6:])
    # Nothing free: nothing to claim, even below the share.
    assert plan("c", names, owned=(), taken=names, members=3).wanted == 0


def test_members_prefer_different_slots() -> None:
    names = slot_names(8)
    firsts = {plan(m, names, (), (), 1).candidates[0] for m in ("r0", "r1", "r2", "r3")}
    assert len(firsts) > 1  # rendezvous hashing: not every member races for one slot


def test_keys_and_names() -> None:
    keys = GroupKeys("bridges")
    assert keys.leader == "/bridges/leader"
    assert keys.slot("cmd-3") == "/bridges/slots/cmd-3"
    assert keys.member("h-1") == "/bridges/members/h-1"
    for bad in ("", "a/b", "-x", "x" * 65, "with space"):
        with pytest.raises(ValueError):
            GroupKeys(bad)


def test_prefix_end_and_endpoints() -> None:
    assert prefix_end("/g/") == b"/g0"
    assert prefix_end("/é") == b"/\xc3\xaa"  # bytes, not characters
    assert prefix_end("") == b"\0"
    assert normalize_endpoint("etcd-0") == "http://etcd-0:2379"
    assert normalize_endpoint(" https://e:1234/ ") == "https://e:1234"
    assert normalize_endpoint("[::1]:2379") == "http://[::1]:2379"
    for bad in ("", "ftp://e", "http://e:2379/v3", "http://e:99999"):
        with pytest.raises(ValueError):
            normalize_endpoint(bad)
    assert parse_endpoints("a,b:1") == ("http://a:2379", "http://b:1")
    with pytest.raises(ValueError, match="twice"):
        parse_endpoints("a,http://a:2379")


def test_member_entries_and_the_view() -> None:
    info = MemberInfo("h-1", "h", 42, 1700000000.5, "leader", ("cmd-0",))
    assert MemberInfo.from_json(info.to_json()) == info
    snapshot = Snapshot(
        7,
        (
            KeyValue("/g/leader", b"h-1", 11, 5, 5),
            KeyValue("/g/members/h-1", info.to_json().encode(), 11, 3, 6),
            KeyValue("/g/members/h-2", b"not json", 12, 4, 4),
            KeyValue("/g/slots/cmd-0", b"h-1", 11, 6, 6),
            KeyValue("/g/slots/cmd-10", b"h-2", 12, 6, 6),
        ),
    )
    view = view_from(snapshot, "g", slot_names(3))
    assert view.revision == 7 and view.leader == "h-1"
    assert [m.id for m in view.members] == ["h-1", "h-2"]
    assert list(view.slots) == ["cmd-0", "cmd-1", "cmd-2", "cmd-10"]
    assert view.slots == {"cmd-0": "h-1", "cmd-1": None, "cmd-2": None, "cmd-10": "h-2"}
    assert view.owned_by("h-2") == ("cmd-10",)
    text = "\n".join(view.lines())
    assert "leader h-1" in text and "unowned slots: cmd-1,cmd-2" in text
    json.dumps(view.slots)  # plain data


def test_settings_unset_is_a_single_bridge() -> None:
    settings = load_settings([], env_file=None, overrides=BASE)
    assert settings.cluster_etcd is None
    assert (settings.cluster_group, settings.cluster_ttl) == ("connector-bridge", 5)
    assert ClusterConfig.from_settings(settings) is None


def test_settings_make_a_cluster_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_CLUSTER_ETCD", "etcd-0, http://etcd-1:2379,https://etcd-2:4001")
    monkeypatch.setenv("BRIDGE_CLUSTER_GROUP", "plant-7")
    monkeypatch.setenv("BRIDGE_CLUSTER_TTL", "8")
    config = ClusterConfig.from_settings(load_settings([], env_file=None, overrides=BASE))
    assert config == ClusterConfig(
        ("http://etcd-0:2379", "http://etcd-1:2379", "https://etcd-2:4001"), "plant-7", 8
    )
    assert config.timing.margin == pytest.approx(1.6)


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("BRIDGE_CLUSTER_TTL", "1", "BRIDGE_CLUSTER_TTL (--cluster-ttl): must be from 2"),
        ("BRIDGE_CLUSTER_TTL", "2.5", "BRIDGE_CLUSTER_TTL (--cluster-ttl): must be a whole"),
        ("BRIDGE_CLUSTER_TTL", "soon", "BRIDGE_CLUSTER_TTL (--cluster-ttl): must be a whole"),
        ("BRIDGE_CLUSTER_ETCD", "ftp://e", "BRIDGE_CLUSTER_ETCD (--cluster-etcd): 'ftp://e'"),
        ("BRIDGE_CLUSTER_ETCD", "a,,b", "BRIDGE_CLUSTER_ETCD (--cluster-etcd): an endpoint"),
        ("BRIDGE_CLUSTER_GROUP", "a/b", "BRIDGE_CLUSTER_GROUP (--cluster-group): the group"),
    ],
)
def test_bad_cluster_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as err:
        load_settings([], env_file=None, overrides=BASE)
    assert expected in str(err.value)


def test_check_ttl_takes_whole_seconds_only() -> None:
    assert check_ttl(" 5 ") == 5 and check_ttl(2) == 2
    for bad in (True, 5.0, "5s", None):
        with pytest.raises(ValueError):
            check_ttl(bad)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [({"mqtt_protocol": "3.1.1"}, "BRIDGE_MQTT_PROTOCOL"),
     ({"mqtt_session_expiry": 0}, "BRIDGE_MQTT_SESSION_EXPIRY")],
)  # fmt: skip
def test_a_replica_refuses_what_its_command_slots_cannot_do(
    overrides: dict[str, object], named: str
) -> None:
    """MQTT 3.1.1 has no shared subscriptions; slots without sessions lose commands."""
    from bridge.service.controller import Bridge

    settings = load_settings(None, env_file=None, overrides={
        **BASE, "cluster_etcd": "127.0.0.1:1", **overrides})  # fmt: skip
    with pytest.raises(ValueError, match=named):
        Bridge(settings)
