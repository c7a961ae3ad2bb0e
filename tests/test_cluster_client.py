"""The thin etcd client against a real three-member etcd: leases, transactions, failover."""

from __future__ import annotations

import time

import pytest

from bridge.cluster.etcd import EtcdClient, EtcdError
from tests.support.etcd import EtcdCluster, etcd_fixtures, fresh_group
from tests.support.ports import free_port

etcd_cluster, etcd = etcd_fixtures()


def test_lease_grant_keepalive_revoke(etcd: EtcdCluster) -> None:
    with EtcdClient(etcd.endpoints) as client:
        lease = client.grant(3)
        assert lease.ttl == 3 and lease.id > 0
        assert client.keepalive(lease.id) == 3
        assert client.grant(1).ttl == 2  # etcd raises a TTL below its minimum
        assert client.revoke(lease.id) is True
        assert client.keepalive(lease.id) == 0  # gone: said so, not an error
        assert client.revoke(lease.id) is False


def test_create_if_absent_and_own_writes(etcd: EtcdCluster) -> None:
    key = f"/{fresh_group()}/leader"
    with EtcdClient(etcd.endpoints) as client:
        a, b = client.grant(5), client.grant(5)
        created, kv = client.create(key, "a", lease=a.id)
        assert created and kv is not None and kv.lease == a.id and kv.create_revision > 0
        created, holder = client.create(key, "b", lease=b.id)
        assert not created and holder is not None
        assert (holder.text, holder.lease, holder.create_revision) == (
            "a",
            a.id,
            kv.create_revision,
        )
        # Only the holder's lease may rewrite or delete it.
        assert client.replace_own(key, "b", lease=b.id) is False
        assert client.delete_own(key, lease=b.id) is False
        assert client.replace_own(key, "a2", lease=a.id) is True
        got = client.get(key)
        assert got is not None and (got.text, got.lease) == ("a2", a.id)
        # The key goes with its lease; then b can create it.
        assert client.revoke(a.id)
        assert client.get(key) is None
        created, kv = client.create(key, "b", lease=b.id)
        assert created and kv is not None and kv.lease == b.id
        assert client.delete_own(key, lease=b.id) is True and client.get(key) is None
        client.revoke(b.id)


def test_prefix_range_is_one_revision(etcd: EtcdCluster) -> None:
    group = fresh_group()
    with EtcdClient(etcd.endpoints) as client:
        for name in ("a", "b", "c"):
            client.put(f"/{group}/members/{name}", name)
        client.put(f"/{group}x/other", "not in the group")
        snapshot = client.get_prefix(f"/{group}/")
        assert [kv.key for kv in snapshot.kvs] == [f"/{group}/members/{n}" for n in "abc"]
        assert snapshot.revision >= max(kv.mod_revision for kv in snapshot.kvs)
        assert [kv.text for kv in snapshot.under(f"/{group}/members/")] == ["a", "b", "c"]
        assert client.delete_prefix(f"/{group}/") == 3
        assert client.get_prefix(f"/{group}/").kvs == ()
        assert client.get(f"/{group}x/other") is not None


def test_fails_over_from_a_dead_endpoint_at_once(etcd: EtcdCluster) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused at once
    with EtcdClient([dead, *etcd.endpoints], timeout=1.0) as client:
        started = time.monotonic()
        lease = client.grant(2)
        assert time.monotonic() - started < 0.5
        assert client.failovers == 1 and client.endpoint == etcd.endpoints[0]
        client.keepalive(lease.id)
        assert client.failovers == 1  # sticks to the endpoint that answered


def test_fails_over_from_a_paused_member_within_one_timeout(etcd: EtcdCluster) -> None:
    # A follower: pausing the raft leader would stall every member until an election.
    paused = next(m for m in etcd.members if m is not etcd.leader())
    endpoints = [paused.client_url] + [e for e in etcd.endpoints if e != paused.client_url]
    with EtcdClient(endpoints, timeout=0.3) as client:
        lease = client.grant(5)
        assert client.endpoint == paused.client_url
        paused.pause()  # connected, silent: only a time-out tells
        started = time.monotonic()
        assert client.keepalive(lease.id) == 5
        took = time.monotonic() - started
        assert 0.25 < took < 0.3 + 0.5, took
        assert client.endpoint != paused.client_url and client.failovers == 1


def test_a_renewal_survives_a_paused_raft_leader(etcd: EtcdCluster) -> None:
    leader = etcd.leader()
    endpoints = [leader.client_url] + [e for e in etcd.endpoints if e != leader.client_url]
    with EtcdClient(endpoints, timeout=0.3) as client:
        lease = client.grant(5)
        leader.pause()  # silent; the others elect a new leader after 1 to 2 s
        started = time.monotonic()
        # 0.3 s for the paused one; then a follower holds the renewal until the election.
        assert client.keepalive(lease.id, until=started + 4.0) == 5
        took = time.monotonic() - started
        assert client.endpoint != leader.client_url
    assert 0.3 < took < 4.0
    print(f"renewal through a follower {took:.2f}s after the raft leader was paused")


def test_all_endpoints_down_fails_in_bounded_time(etcd: EtcdCluster) -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]
    with EtcdClient(dead, timeout=0.3) as client:
        with pytest.raises(EtcdError) as err:
            client.grant(2)
        assert err.value.transient and err.value.kind == "not_sent"
    for member in etcd.members:
        member.pause()
    with EtcdClient(etcd.endpoints, timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(EtcdError) as err:
            client.grant(2, until=time.monotonic() + 0.5)
        took = time.monotonic() - started
        assert err.value.transient
        assert took < 0.5 + 0.1, took  # `until` bounds the whole call, not each try


def test_a_definite_answer_is_not_retried_elsewhere(etcd: EtcdCluster) -> None:
    with EtcdClient(etcd.endpoints) as client:
        with pytest.raises(EtcdError) as err:
            client.put("/x", "y", lease=12345)  # no such lease: 404, from the first endpoint
        assert err.value.status == 404 and not err.value.transient
        assert client.failovers == 0
