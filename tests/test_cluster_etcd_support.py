"""The test etcd itself: three members on loopback ports, each stopped by its own pid."""

from __future__ import annotations

import os
import socket
import time

import pytest

from scripts import etcd_binary
from tests.support import etcd as support
from tests.support.etcd import EtcdCluster, etcd_fixtures, process_state
from tests.support.ports import free_port

etcd_cluster, etcd = etcd_fixtures()


def test_three_members_one_leader_own_ports_and_dirs(etcd: EtcdCluster) -> None:
    members = etcd.members
    assert len(members) == 3 and all(m.healthy() for m in members)
    ports = [p for m in members for p in (m.client_port, m.peer_port)]
    assert len(set(ports)) == 6 and 2379 not in ports and 2380 not in ports
    assert len({m.data_dir for m in members}) == 3 and all(m.data_dir.is_dir() for m in members)
    assert len({m.pid for m in members}) == 3
    ids = {m.status()["header"]["member_id"] for m in members}
    leaders = {m.status()["leader"] for m in members}
    assert len(ids) == 3 and len(leaders) == 1 and leaders <= ids
    assert etcd.leader() in members


def test_kill_pause_and_restart_by_pid(etcd: EtcdCluster) -> None:
    victim = next(m for m in etcd.members if m is not etcd.leader())
    pid = victim.pid
    victim.kill()
    assert not victim.running
    assert not process_state(pid)  # gone and reaped
    others = [m for m in etcd.members if m is not victim]
    assert all(m.healthy() for m in others)  # two of three: still a quorum
    victim.start()
    etcd.wait_healthy(20)
    assert victim.healthy() and victim.pid != pid

    paused = others[0]
    paused.pause()
    assert process_state(paused.pid).startswith("T")  # stopped
    assert not paused.healthy()
    paused.resume()
    etcd.wait_healthy(20)
    assert paused.healthy()


def test_the_binary_is_found_again_without_fetching() -> None:
    found = etcd_binary.find()
    assert found is not None and os.access(found, os.X_OK)
    version = etcd_binary.version_of(found)
    assert version is not None and version >= (3, 4)


def test_a_port_taken_meanwhile_means_new_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    handed = iter([port])
    monkeypatch.setattr(support, "free_port", lambda: next(handed, None) or free_port())
    started = time.monotonic()
    try:
        with EtcdCluster() as cluster:
            assert all(m.healthy() for m in cluster.members)
            assert port not in [p for m in cluster.members for p in (m.client_port, m.peer_port)]
            assert time.monotonic() - started < 20
            pids = [m.pid for m in cluster.members]
    finally:
        taken.close()
    assert all(not process_state(pid) for pid in pids)  # all gone (reaped)
