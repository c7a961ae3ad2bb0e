"""The group and the service's notification channel: ``connector-bridge run`` processes of
one group on a real three-member etcd, one emulator (today's dialect), one Mosquitto.

- The **1001 fence**: another consumer opens the WebSocket with the same key while the
  leader still believes it leads; the service closes the leader's socket with 1001. The
  leader steps down and does not reconnect (handshakes counted at the emulator up to
  markers: the next leader's socket ending the other consumer's, then a health message
  the old leader publishes after its hold-off), its health says so, and the group has a
  leader again within the time the README gives (the leader key stays one TTL, then the
  others campaign).
- The **callback channel** behind a load balancer: only the leader registers the
  callback URL, a delivery to any replica's receiver is published once, and no replica
  deletes the callback when it loses the lead (paused past its lease) or stops.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from bridge.simulator import Emulator
from tests.support.bridge_group import LIGHT_TOPIC, BridgeGroup, Watch, flows, running_group
from tests.support.broker import MosquittoBroker
from tests.support.etcd import EtcdCluster, etcd_fixtures, wait_state
from tests.support.ports import free_port
from tests.support.ws_client import WsClient

etcd_cluster, etcd = etcd_fixtures()

TTL = 2
HOLD_OFF = 2 * TTL  # bridge.service.replication: the first step-down's hold-off
TOPIC = LIGHT_TOPIC
SECRET = "group-callback-secret-0123456789abcdef"


@pytest.fixture
def current() -> Iterator[Emulator]:
    with Emulator(api="current", drift=False) as emu:
        yield emu


@pytest.fixture
def watch(broker: MosquittoBroker) -> Iterator[Watch]:
    w = Watch(broker.port)
    yield w
    w.close()


# --------------------------------------------------------------------- the 1001 fence


@pytest.fixture
def group(current: Emulator, broker: MosquittoBroker, etcd: EtcdCluster) -> Iterator[BridgeGroup]:
    with running_group(current, broker, etcd, ttl=TTL) as g:
        yield g


def test_a_leader_told_1001_steps_down_without_a_reconnect_loop_and_the_group_recovers(
    group: BridgeGroup, current: Emulator, watch: Watch
) -> None:
    a = group.start("a")
    group.wait(lambda: group.leader() == "a", 20, "a leads")
    group.wait(lambda: current.counters()["ws_connects"] == 1, 20, "a's WebSocket")
    b = group.start("b")
    group.wait(lambda: len(group.view().members) == 2, 20, "two members")
    flows(current, watch, "51", 10)
    assert current.counters()["ws_handshakes"] == 1

    # Another consumer with the same key: the service gives it the channel and ends a's
    # socket with 1001, while etcd still says a leads.
    with WsClient(current.url, current.token) as other:
        taken_at = time.monotonic()
        other.connect()
        group.wait(lambda: current.counters()["ws_closes_1001"] == 1, 10, "a's socket closed")
        # Marker 1: the next leader's socket ends the other consumer's (1001 again). Every
        # handshake up to here is accounted for: a's first, the other's, the new leader's.
        assert other.wait_closed(TTL * 2 + 10) == 1001, group.logs()
        recovered = time.monotonic() - taken_at
    counters = current.counters()
    assert (counters["ws_handshakes"], counters["ws_connects"]) == (3, 3), counters
    assert group.leader() == "b"
    flows(current, watch, "52", 10)
    # The README: the leader key stays one TTL under a's lease, then b campaigns (a poll)
    # and opens its socket: about one to two TTLs after the 1001.
    assert TTL - 0.5 < recovered < 2 * TTL + 2, recovered

    # a says so on its health topic: a follower that stepped down once.
    health = group.wait(
        lambda: next(
            (h for h in reversed(watch.health("a")) if h["cluster"]["step_downs"] == 1), None
        ),
        10,
        "a's health after the step-down",
    )
    assert health["role"] == "follower" and health["cluster"]["term"] is None, health

    # Marker 2: a health message a publishes after its hold-off ran out. a has not
    # campaigned (b holds the key) nor connected in between.
    after_hold_off = taken_at + HOLD_OFF + 1
    group.wait(
        lambda: time.monotonic() > after_hold_off and watch.health("a", since=after_hold_off),
        HOLD_OFF + 10,
        "a health message of a after its hold-off",
    )
    counters = current.counters()
    print(f"\n1001 at a: b serves after {recovered:.2f} s (TTL {TTL}); emulator: "
          f"{counters['ws_handshakes']} handshakes, {counters['ws_connects']} connections, "
          f"{counters['ws_closes_1001']} closed with 1001")  # fmt: skip
    assert (counters["ws_handshakes"], counters["ws_connects"]) == (3, 3), counters
    assert counters["ws_closes_1001"] == 2  # a's (by the other), the other's (by b)
    assert group.leader() == "b" and a.running and b.running
    flows(current, watch, "53", 10)
    for v in (b"51", b"52", b"53"):
        assert watch.on(TOPIC).count(v) == 1


# ------------------------------------------------------------- the callback channel


class Balancer:
    """A round-robin HTTP load balancer in front of the replicas' receivers: each PUT goes
    to the next backend; one that refuses the connection or does not answer within a
    second is skipped (as a balancer's health check would), the next one tried."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.lock = threading.Lock()
        self.turn = 0
        self.answered: dict[int, int] = dict.fromkeys(backends, 0)  # 2xx answers per backend
        self.session = requests.Session()
        balancer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, text = balancer.forward(self.path, dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def forward(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        with self.lock:
            first, self.turn = self.turn, self.turn + 1
        keep = {k: v for k, v in headers.items() if k.lower() in ("authorization", "content-type")}
        for i in range(len(self.backends)):
            port = self.backends[(first + i) % len(self.backends)]
            try:
                r = requests.put(f"http://127.0.0.1:{port}{path}", data=body, headers=keep,
                                 timeout=1.0)  # fmt: skip
            except requests.RequestException:
                continue
            if 200 <= r.status_code < 300:
                with self.lock:
                    self.answered[port] += 1
            return r.status_code, r.content
        return 502, b"no backend answered"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_callback_only_the_leader_registers_any_replica_publishes_once_none_deletes(
    current: Emulator, broker: MosquittoBroker, etcd: EtcdCluster, watch: Watch
) -> None:
    members = ("c1", "c2", "c3")
    ports = {m: free_port() for m in members}
    lb = Balancer([ports[m] for m in members])
    url = f"http://127.0.0.1:{lb.port}/connector/notify"
    g = BridgeGroup(current, broker, etcd, ttl=TTL, BRIDGE_NOTIFICATION_CHANNEL="callback",
                    BRIDGE_CALLBACK_URL=url, BRIDGE_CALLBACK_SECRET=SECRET)  # fmt: skip
    try:
        procs = {m: g.start(m, BRIDGE_CALLBACK_LISTEN=f"127.0.0.1:{ports[m]}") for m in members}
        first = g.wait(g.leader, 20, "a leader")
        g.wait(lambda: current.core.callback is not None, 20, "the callback registered")
        g.wait(lambda: len(g.view().members) == 3, 20, "three members")
        # Every replica's receiver is up (it answers the secret with a 2xx for an empty
        # message, as the service's own test message).
        for m in members:
            g.wait(lambda m=m: _takes(ports[m]), 20, f"{m}'s receiver")
        assert current.core.callback == {
            "url": url,
            "headers": {"Authorization": f"Bearer {SECRET}"},
        }
        counters = current.counters()
        assert (counters["callback_puts"], counters["callback_deletes"]) == (1, 0), counters
        assert f"notification channel: callback {url}" in g.process(first).tail(20000)
        for m in members:
            if m != first:
                assert "notification channel: callback" not in g.process(m).tail(20000), m

        # Deliveries through the balancer reach every replica in turn; each is published once.
        before = dict(lb.answered)
        values = [f"6{i}" for i in range(6)]
        for v in values:
            flows(current, watch, v, 10)
        assert all(lb.answered[ports[m]] > before[ports[m]] for m in members), lb.answered
        flows(current, watch, "69", 10)  # a later value from the same publisher: the barrier
        for v in values:
            assert watch.on(TOPIC).count(v.encode()) == 1, (v, watch.on(TOPIC))

        # The leader paused past its lease: another leads (and registers the same URL);
        # resumed, the old leader finds it lost the lead and deletes nothing.
        procs[first].pause()
        wait_state(procs[first].pid, stopped=True)
        second = g.wait(lambda: (x := g.leader()) not in (None, first) and x, TTL + 6, "new")
        g.wait(lambda: current.counters()["callback_puts"] == 2, 10, "the new leader's PUT")
        procs[first].resume()
        resumed = time.monotonic()
        g.wait(
            lambda: any(h["role"] == "follower" for h in watch.health(first, since=resumed)),
            10,
            f"{first} a follower again",
        )
        for v in ("70", "71", "72"):
            flows(current, watch, v, 10)
        assert current.counters()["callback_deletes"] == 0
        assert current.core.callback is not None

        # The new leader stops (SIGTERM): the callback stays; the next leader registers it
        # again and deliveries flow on, once each.
        assert procs[second].terminate() == 0
        third = g.wait(lambda: (x := g.leader()) not in (None, second) and x, TTL + 6, "third")
        g.wait(lambda: current.counters()["callback_puts"] == 3, 10, "the third leader's PUT")
        for v in ("80", "81", "82"):
            flows(current, watch, v, 10)
        counters = current.counters()
        assert counters["callback_deletes"] == 0, counters
        for v in (b"70", b"71", b"72", b"80", b"81", b"82"):
            assert watch.on(TOPIC).count(v) == 1, (v, watch.on(TOPIC))

        # The last ones stop too: nobody deletes the callback (the service keeps what it has
        # for the next start).
        for m in members:
            procs[m].terminate()
        counters = current.counters()
        print(f"\ncallback group: leaders {first}, {second}, {third}; balancer answers "
              f"{lb.answered}; emulator {counters['callback_puts']} PUTs, "
              f"{counters['callback_deletes']} DELETEs")  # fmt: skip
        assert counters["callback_deletes"] == 0 and current.core.callback is not None
    except BaseException:
        print(g.logs())
        raise
    finally:
        g.close()
        lb.close()


def _takes(port: int) -> bool:
    try:
        r = requests.put(f"http://127.0.0.1:{port}/connector/notify", data=b"{}",
                         headers={"Authorization": f"Bearer {SECRET}",
                                  "Content-Type": "application/json"}, timeout=1.0)  # fmt: skip
    except requests.RequestException:
        return False
    return 200 <= r.status_code < 300
