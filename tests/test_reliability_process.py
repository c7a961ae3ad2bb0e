"""``connector-bridge run`` killed or stopped under load (issue 5, sections 2, 5 and 7).

The bridge is a real process; commands come from a plain MQTT client; the emulator logs
what the devices carried out. Figures are printed as ``[reliability] ...`` lines.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.simulator import Emulator
from tests.reliability_support import (
    ACT_EP,
    SETPOINT,
    SETPOINT_TOPIC,
    BridgeProcess,
    Executions,
    Publisher,
    Subscriber,
    bridge_process,
    report,
    stream_emulator,
)
from tests.support.bridge_harness import bridge_settings, running_bridge
from tests.support.broker import MosquittoBroker
from tests.support.clients import wait_until

pytestmark = pytest.mark.both_dialects

STATE = "connector/$bridge/state"


def device_latency(dialect: str, legacy: float, rate: float) -> float:
    """The devices' latency for a stream of ``rate`` commands a second to one device.

    The legacy Connector's devices carry requests out side by side, so any latency keeps
    commands under way. Today's service gives a device one request at a time (at most 20
    wait for it): a latency longer than the commands' interval piles them up past those 20
    places, where they wait in the bridge, acknowledged (the documented exception: a stop
    answers them 503, a kill loses them) and time out. Today's devices therefore answer
    within the interval: commands are still under way at the service when the stop or
    the kill comes, and the device keeps up with the load."""
    return legacy if dialect == "legacy" else 0.5 / rate


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with stream_emulator() as e:
        yield e


def wait_online(watch: Subscriber, since: float, timeout: float = 30) -> None:
    watch.wait(
        lambda: any(
            a.payload == b"online" and a.at >= since for a in watch.arrivals.get(STATE, [])
        ),
        timeout,
        "the bridge to come online",
    )


def start_ready(bp: BridgeProcess, watch: Subscriber, pub: Publisher, probe: str) -> float:
    """Start the bridge and wait until it answers a command; returns when it started."""
    started = time.monotonic()
    bp.start()
    wait_online(watch, started)
    pub.command(f"{SETPOINT_TOPIC}/set", probe, probe)
    try:
        pub.wait_replies({probe.encode()}, 30)
    except AssertionError:
        raise AssertionError(f"the bridge did not answer; log:\n{bp.log()[-3000:]}") from None
    return started


class Sender:
    """Sends ``n`` commands (unique values) at ``rate`` per second from its own thread."""

    def __init__(self, pub: Publisher, prefix: str, n: int, rate: float) -> None:
        self.pub, self.keys, self.rate = pub, [f"{prefix}-{i:04d}" for i in range(n)], rate
        self.sent = 0
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        for key in self.keys:
            self.pub.command(f"{SETPOINT_TOPIC}/set", key, key)
            self.sent += 1
            time.sleep(1 / self.rate)
        self.done.set()


def test_bridge_killed_with_commands_queued_for_it_carries_each_out_after_a_restart(
    broker: MosquittoBroker, emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = Executions(emu)
    watch = Subscriber(broker.port, (STATE,))
    pub = Publisher(broker.port)
    try:
        with bridge_process(emu, broker, tmp_path) as bp:
            start_ready(bp, watch, pub, "probe-1")
            # Queued for it: the bridge is frozen (connected, reading nothing) while the
            # commands come, and killed before it ever runs again.
            bp.signal(signal.SIGSTOP)
            keys = [f"queued-{i:03d}" for i in range(100)]
            for key in keys:
                pub.command(f"{SETPOINT_TOPIC}/set", key, key)
            bp.kill()
            restarted = time.monotonic()
            bp.start()
            pub.wait_replies({k.encode() for k in keys}, 60)
            answered_in = time.monotonic() - restarted
            replies = {k: pub.reply_json(k.encode()) for k in keys}
            reply_counts = [pub.count(k.encode()) for k in keys]
    finally:
        watch.close()
        pub.close()
    done = log.bodies(ACT_EP, SETPOINT, "PUT")
    report(
        capsys,
        "bridge SIGKILL with commands queued",
        sent=len(keys),
        carried_out=sum(done[k.encode()] >= 1 for k in keys),
        duplicates=sum(max(done[k.encode()] - 1, 0) for k in keys),
        answered=sum(n >= 1 for n in reply_counts),
        redelivered_flag=sum(bool(r.get("redelivered")) for r in replies.values()),
        lost=sum(done[k.encode()] == 0 for k in keys),
        recovery_s=answered_in,
    )
    assert all(done[k.encode()] >= 1 for k in keys), "each carried out at least once"
    assert all(r["ok"] and r["status"] == 200 for r in replies.values()), "and answered"


def test_bridge_killed_mid_stream_of_commands_nothing_is_lost(
    broker: MosquittoBroker,
    emu: Emulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    dialect: str,
) -> None:
    """Killed while commands stream in and are under way: every command is carried out
    at least once; the only ones without a reply are those the Connector had already
    taken before the kill (their reply died with the bridge: the documented window)."""
    log = Executions(emu)
    watch = Subscriber(broker.port, (STATE,))
    pub = Publisher(broker.port)
    try:
        with bridge_process(emu, broker, tmp_path) as bp:
            start_ready(bp, watch, pub, "probe-2")
            emu.set_fault(device_latency=device_latency(dialect, 0.05, rate=150))
            sender = Sender(pub, "stream", 300, rate=150)
            pub_wait = time.monotonic() + 20
            while len(pub.replies) < 60 and time.monotonic() < pub_wait:
                time.sleep(0.01)
            bp.kill()
            taken_before_kill = log.accepted_bodies()
            restarted = time.monotonic()
            bp.start()
            assert sender.done.wait(30)
            keys = sender.keys

            def all_carried_out() -> bool:
                done = log.bodies(ACT_EP, SETPOINT, "PUT")
                return all(done[k.encode()] >= 1 for k in keys)

            deadline = time.monotonic() + 60
            while not all_carried_out():
                assert time.monotonic() < deadline, "not every command was carried out"
                time.sleep(0.1)
            # Replies of the last ones: a marker command after them, on the same path.
            pub.command(f"{SETPOINT_TOPIC}/set", "marker", "marker")
            pub.wait_replies({b"marker"}, 30)
            recovery = time.monotonic() - restarted
            answered = {k for k in keys if pub.count(k.encode())}
    finally:
        watch.close()
        pub.close()
    done = log.bodies(ACT_EP, SETPOINT, "PUT")
    unanswered = [k for k in keys if k not in answered]
    report(
        capsys,
        "bridge SIGKILL mid-stream of commands",
        sent=len(keys),
        carried_out=sum(done[k.encode()] >= 1 for k in keys),
        duplicates=sum(max(done[k.encode()] - 1, 0) for k in keys),
        answered=len(answered),
        unanswered_taken_before_kill=len(unanswered),
        lost=sum(done[k.encode()] == 0 for k in keys),
        recovery_s=recovery,
    )
    assert all(done[k.encode()] >= 1 for k in keys)
    assert all(k.encode() in taken_before_kill for k in unanswered)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_under_load_answers_what_it_took_and_leaves_the_rest_for_the_next_start(
    broker: MosquittoBroker,
    emu: Emulator,
    tmp_path: Path,
    sig: signal.Signals,
    capsys: pytest.CaptureFixture[str],
    dialect: str,
) -> None:
    log = Executions(emu)
    watch = Subscriber(broker.port, (STATE,))
    pub = Publisher(broker.port)
    try:
        with bridge_process(emu, broker, tmp_path, BRIDGE_STOP_TIMEOUT="5") as bp:
            start_ready(bp, watch, pub, "probe-3")
            # commands are under way when the stop comes
            emu.set_fault(device_latency=device_latency(dialect, 0.3, rate=100))
            sender = Sender(pub, f"load-{sig.name}", 200, rate=100)
            while len(pub.replies) < 40:
                time.sleep(0.01)
            stop_at = time.monotonic()
            bp.signal(sig)
            code = bp.wait(30)
            stop_took = time.monotonic() - stop_at
            watch.wait(
                lambda: watch.arrivals[STATE][-1].at >= stop_at, 10, "a state after the stop"
            )
            offline = watch.arrivals[STATE][-1].payload
            assert sender.done.wait(30)
            keys = sender.keys
            # What the Connector took for the devices is carried out (they are slower than
            # the stop): every accepted command executed, a counter, not a pause.
            sent = {k.encode() for k in keys}
            assert wait_until(
                lambda: sent & log.accepted_bodies() <= set(log.bodies(ACT_EP, SETPOINT, "PUT")),
                10,
            )
            executed_by_first = log.bodies(ACT_EP, SETPOINT, "PUT")
            answered_by_first = {k for k in keys if pub.count(k.encode())}
            first_log = bp.log()
            # what the first run did not take, the next one does
            bp.start()
            pub.wait_replies({k.encode() for k in keys}, 60)
            # A second execution would come before the reply to a marker sent after them.
            pub.command(f"{SETPOINT_TOPIC}/set", "marker", "marker")
            pub.wait_replies({b"marker"}, 30)
    finally:
        watch.close()
        pub.close()
    done = log.bodies(ACT_EP, SETPOINT, "PUT")
    executed_first = {k for k in keys if executed_by_first[k.encode()]}
    report(
        capsys,
        f"{sig.name} under load",
        exit_code=code,
        stop_s=stop_took,
        sent=len(keys),
        taken_and_answered=len(answered_by_first),
        left_for_next_start=len(keys) - len(answered_by_first),
        carried_out=sum(done[k.encode()] >= 1 for k in keys),
        duplicates=sum(max(done[k.encode()] - 1, 0) for k in keys),
        lost=sum(done[k.encode()] == 0 for k in keys),
    )
    assert code == 0, first_log[-3000:]
    assert offline == b"offline"
    assert f"{sig.name} received" in first_log and "bridge stopped" in first_log
    # nothing taken was left unanswered: what the devices carried out got its reply
    assert executed_first <= answered_by_first
    assert len(answered_by_first) < len(keys), "the stop came while commands still came in"
    assert all(done[k.encode()] == 1 for k in keys), "each carried out once, none lost"


def test_a_stop_answers_what_is_under_way_within_stop_timeout(
    broker: MosquittoBroker, emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Devices slower than ``stop_timeout``: their commands get a 503 reply (never none),
    and the stop takes about ``stop_timeout``, not the devices' time."""
    settings = bridge_settings(emu, broker, stop_timeout=0.5, command_timeout=10.0,
                               queue_mode_timeout=20.0)  # fmt: skip
    log = Executions(emu)
    pub = Publisher(broker.port)
    try:
        with running_bridge(settings) as bridge:
            emu.set_fault(device_latency=5.0)
            keys = [f"slow-{i}" for i in range(5)]
            for key in keys:
                pub.command(f"{SETPOINT_TOPIC}/set", key, key)
            deadline = time.monotonic() + 10
            while len(log.accepted_bodies() & {k.encode() for k in keys}) < len(keys):
                assert time.monotonic() < deadline, "the commands never got under way"
                time.sleep(0.02)
            stop_at = time.monotonic()
            bridge.stop()
            stop_took = time.monotonic() - stop_at
        pub.wait_replies({k.encode() for k in keys}, 10)
        replies = [pub.reply_json(k.encode()) for k in keys]
    finally:
        pub.close()
    report(capsys, "stop with slow devices", under_way=len(keys), stop_s=stop_took,
           answered_503=sum(r["status"] == 503 for r in replies))  # fmt: skip
    assert all(r["status"] == 503 and "stopped" in r["error"] for r in replies)
    assert stop_took < 5.0
