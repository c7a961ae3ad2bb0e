"""``BRIDGE_CPU_PIN``: ``connector-bridge run`` keeps its threads on one CPU (see
bridge/service/cpu_pinning.py for why). The choice is a pure function; the pinning itself is
checked on a real bridge process through /proc, thread by thread."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.service.cpu_pinning import PinError, choose_cpu, current_cpu
from bridge.service.settings import SettingsError, load_settings
from bridge.simulator import Emulator
from tests.support.bridge_harness import user
from tests.support.broker import MosquittoBroker
from tests.test_bridge_cli import TOKEN, bridge_env, finish, start

ALLOWED = sorted(os.sched_getaffinity(0))


def test_choice_of_cpu() -> None:
    assert choose_cpu("off", {0, 1}, 1) is None
    assert choose_cpu("auto", {0, 1, 2, 3}, 2) == 2  # where it runs
    assert choose_cpu("auto", {0, 1}, 5) == 0  # not an allowed one: the first allowed
    assert choose_cpu("auto", {0, 1}, None) == 0
    assert choose_cpu("auto", {3}, 3) is None  # one CPU only: nothing to gain
    assert choose_cpu("auto", set(), None) is None  # the OS cannot say
    assert choose_cpu("2", {0, 1, 2}, 0) == 2
    with pytest.raises(PinError, match=r"CPU 7 is not one this process may run on \[0, 1\]"):
        choose_cpu("7", {0, 1}, 0)


def test_current_cpu_is_one_this_process_may_run_on() -> None:
    assert current_cpu() in ALLOWED


def _load(value: str) -> str:
    args = ["--connector-url", "http://127.0.0.1:1", "--connector-token", "t" * 8]
    return load_settings([*args, "--cpu-pin", value], env_file=None).cpu_pin


def test_setting_takes_auto_off_or_a_number() -> None:
    assert _load("auto") == "auto"
    assert _load(" OFF ") == "off"
    assert _load("01") == "1"
    for bad in ("yes", "-1", "1.5", "", "\u00b2"):
        with pytest.raises(SettingsError, match="BRIDGE_CPU_PIN"):
            _load(bad)


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(token=TOKEN, pull_timeout=1.0) as e:
        yield e


def _thread_cpus(pid: int) -> dict[int, str]:
    """Each thread's allowed CPUs (``Cpus_allowed_list`` of /proc/<pid>/task/<tid>); a
    thread that ended between the listing and the read (a short-lived one) is left out."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out[int(task.name)] = line.split(":", 1)[1].strip()
    return out


def _run_and_read(broker: MosquittoBroker, emu: Emulator, tmp_path: Path, pin: str) -> set[str]:
    env = bridge_env(
        BRIDGE_CONNECTOR_URL=emu.url,
        BRIDGE_CONNECTOR_TOKEN=TOKEN,
        BRIDGE_MQTT_HOST="127.0.0.1",
        BRIDGE_MQTT_PORT=str(broker.port),
        BRIDGE_MQTT_CLIENT_ID=f"pin-{pin}-{os.getpid()}",
        BRIDGE_TOPIC_PREFIX=f"pin-{pin}",  # no retained value of an earlier run
        BRIDGE_CPU_PIN=pin,
    )
    value = f"pin-{pin}/node-001/3303/0/5700"
    with user(broker, "5", value) as u:
        proc = start(["--env-file", ""], env, tmp_path)
        try:
            u.wait_topic(value, timeout=20)  # published at start-up: every thread is up
            cpus = _thread_cpus(proc.pid)
            proc.send_signal(signal.SIGTERM)
            code, err = finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0, err[-2000:]
    assert len(cpus) >= 10, cpus  # paho, long poll, workers, ...: all of them were read
    return set(cpus.values())


@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two CPUs to tell a pin from none")
def test_run_pins_every_thread_to_the_cpu_asked_for(
    broker: MosquittoBroker, emu: Emulator, tmp_path: Path
) -> None:
    last = ALLOWED[-1]
    assert _run_and_read(broker, emu, tmp_path, str(last)) == {str(last)}
    # off: every thread may run anywhere this test may
    unpinned = _run_and_read(broker, emu, tmp_path, "off")
    assert len(unpinned) == 1 and unpinned != {str(last)}
    # auto: one CPU, the same for every thread
    auto = _run_and_read(broker, emu, tmp_path, "auto")
    assert len(auto) == 1 and int(auto.pop()) in ALLOWED


def test_a_cpu_it_may_not_run_on_exits_2_naming_the_setting(tmp_path: Path) -> None:
    env = bridge_env(
        BRIDGE_CONNECTOR_URL="http://127.0.0.1:1",
        BRIDGE_CONNECTOR_TOKEN=TOKEN,
        BRIDGE_CPU_PIN="4095",
    )
    code, err = finish(start(["--env-file", ""], env, tmp_path))
    assert code == 2
    assert "BRIDGE_CPU_PIN: CPU 4095 is not one this process may run on" in err
