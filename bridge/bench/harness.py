"""The processes a measurement runs, each in its own process, and what is read from /proc.

- :class:`Broker`: a Mosquitto started here on a free loopback port with a temporary
  configuration (the default), or an existing one (``--mqtt-host``/``--mqtt-port``).
- :class:`EmulatorProcess`: ``connector-bridge simulate`` with its admin routes.
- :class:`BridgeProcess`: ``connector-bridge run`` with settings in its environment.
- :class:`CountingSubscriber`: ``mosquitto_sub -C N`` writing one line per message
  (receive time, topic or payload) to a file, read when it is done.

Every child gets SIGKILL when the bench dies (Linux ``PR_SET_PDEATHSIG``), so an
interrupted bench leaves no process behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
import requests
from paho.mqtt.enums import CallbackAPIVersion

from bridge.service.cpu_pinning import allowed_cpus

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A measurement could not be made (a process did not start, messages went missing)."""


# ---- the machine and /proc ------------------------------------------------------------------


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; all of them where unknown)."""
    return len(allowed_cpus()) or os.cpu_count() or 0


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    usable = usable_cores()
    import paho.mqtt

    return {
        "cores": os.cpu_count() or 0,
        "usable_cores": usable,
        "cpu_model": model or platform.processor() or "unknown",
        "memory_mib": _meminfo_mib(),
        "load_before": list(os.getloadavg()),
        "python_loop_additions": SPEED_LOOP,
        "python_loop_s_before": python_speed_s(),
        "python": platform.python_version(),
        "paho_mqtt": getattr(paho.mqtt, "__version__", "?"),
        "mosquitto": mosquitto_version(),
        "kernel": platform.release(),
    }


SPEED_LOOP = 2_000_000  # additions in the machine-speed probe


def python_speed_s() -> float:
    """Seconds a fixed pure-Python loop takes here: the best of three.

    A shared virtual machine's speed changes by the hour (on one day the same code took
    twice the CPU it took on another); the bench prints this before and after its
    measurements so that absolute figures of two runs can be compared."""
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for i in range(SPEED_LOOP):
            total += i
        best = min(best, time.perf_counter() - t0)
    return best


def _meminfo_mib() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def mosquitto_version() -> str:
    binary = mosquitto_binary()
    if binary is None:
        return "not installed"
    try:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    found = re.search(r"version (\S+)", out)
    return found.group(1) if found else "?"


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BenchError(
            f"{name} is not installed (Debian/Ubuntu: apt-get install mosquitto-clients)"
        )
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def status_mib(pid: int, key: str) -> float:
    """A memory figure of /proc/<pid>/status (``VmHWM``: peak RSS; ``VmRSS``) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no {key} for process {pid}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the bench process dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def spawn(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = subprocess.DEVNULL,
    cwd: str | None = None,
    text: bool = False,
) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        list(cmd),
        env=dict(env) if env is not None else None,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        text=text,
        preexec_fn=_die_with_parent,
    )


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def python_env() -> dict[str, str]:
    """The environment for a child Python that must import this very ``bridge`` package,
    without any BRIDGE_* setting of the caller's environment leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _LineTail:
    """Drains a text stream on a thread, keeps the last lines, signals a wanted line."""

    def __init__(self, stream: IO[str], pattern: str, keep: int = 200) -> None:
        self.lines: deque[str] = deque(maxlen=keep)
        self.match: re.Match[str] | None = None
        self.found = threading.Event()
        self.ended = threading.Event()
        self._pattern = re.compile(pattern)
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self.lines.append(line.rstrip("\n"))
                if self.match is None:
                    m = self._pattern.search(line)
                    if m is not None:
                        self.match = m
                        self.found.set()
        except (OSError, ValueError):
            pass
        finally:
            self.ended.set()

    def tail(self, n: int = 30) -> str:
        return "\n".join(list(self.lines)[-n:])


# ---- the broker ------------------------------------------------------------------------------


class Broker:
    """The Mosquitto every measurement of a bench run uses.

    Started here (``host=None``): loopback only, no persistence, queues large enough that
    it never drops what a measurement sends, TCP_NODELAY towards clients. Otherwise an
    existing broker, used as it is configured.
    """

    def __init__(self, host: str | None = None, port: int | None = None) -> None:
        self.own = host is None
        self.host = host or "127.0.0.1"
        self.port = port or 0
        self.proc: subprocess.Popen[Any] | None = None
        self.dir: Path | None = None

    def start(self) -> Broker:
        if not self.own:
            with socket.create_connection((self.host, self.port), timeout=5):
                return self
        binary = mosquitto_binary()
        if binary is None:
            raise BenchError(
                "mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="bench-mosq-"))
        for _attempt in range(5):
            self.port = free_port()
            conf = self.dir / "mosquitto.conf"
            conf.write_text(
                "\n".join(
                    [
                        f"listener {self.port} 127.0.0.1",
                        "allow_anonymous true",
                        "persistence false",
                        "max_queued_messages 1000000",
                        "max_inflight_messages 0",
                        "set_tcp_nodelay true",
                        "log_dest stderr",
                        "log_type error",
                        "",
                    ]
                )
            )
            log = (self.dir / "mosquitto.log").open("ab")
            self.proc = spawn([binary, "-c", str(conf)], stdout=log, stderr=log)
            log.close()
            end = time.monotonic() + 10
            while time.monotonic() < end and self.proc.poll() is None:
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.5):
                        return self
                except OSError:
                    time.sleep(0.02)
            stop_process(self.proc)
        raise BenchError(
            f"mosquitto did not start: {(self.dir / 'mosquitto.log').read_text()[-500:]}"
        )

    @property
    def pid(self) -> int | None:
        """The broker's process when the bench started it (None: an existing broker)."""
        return self.proc.pid if self.proc is not None else None

    def restart(self) -> None:
        """A fresh broker (empty retained store) on the same port; own brokers only."""
        if not self.own or self.proc is None or self.dir is None:
            return
        stop_process(self.proc)
        binary = mosquitto_binary()
        assert binary is not None
        log = (self.dir / "mosquitto.log").open("ab")
        self.proc = spawn([binary, "-c", str(self.dir / "mosquitto.conf")], stdout=log, stderr=log)
        log.close()
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise BenchError("mosquitto did not restart")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def describe(self) -> str:
        where = f"{self.host}:{self.port}"
        return f"mosquitto started by the bench on {where}" if self.own else f"broker at {where}"


class Control:
    """A small paho client of the bench itself: retained sentinels and their removal."""

    def __init__(self, broker: Broker) -> None:
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-control-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv311,
        )
        self._client.connect(broker.host, broker.port, keepalive=60)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        if not info.is_published():
            raise BenchError(f"could not publish on {topic!r}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# ---- counting subscriber ---------------------------------------------------------------------


class CountingSubscriber:
    """``mosquitto_sub -C count+1`` on ``filters``, one line per message into a file.

    To know that it has subscribed before the load starts, a *retained* sentinel is
    published first on ``sentinel_topic`` (which one of the filters must match): the broker
    sends it right after the subscription, so its line, always the first, says "ready".
    Use a topic namespace of its own per measurement so no other retained message matches.
    """

    def __init__(
        self,
        broker: Broker,
        control: Control,
        filters: Sequence[str],
        count: int,
        sentinel_topic: str,
        qos: int = 1,
        fmt: str = "%U",
    ) -> None:
        self.count = count
        self._control = control
        self._sentinel = sentinel_topic
        self._path = Path(tempfile.mkstemp(prefix="bench-sub-", suffix=".txt")[1])
        control.publish(sentinel_topic, b"sentinel", retain=True)
        cmd = [need_tool("mosquitto_sub"), "-h", broker.host, "-p", str(broker.port)]
        cmd += ["-q", str(qos), "-C", str(count + 1), "-F", fmt, "--nodelay"]
        cmd += ["-i", f"bench-sub-{uuid.uuid4().hex[:10]}"]
        for f in filters:
            cmd += ["-t", f]
        self._out = self._path.open("wb")
        self.proc = spawn(cmd, stdout=self._out, stderr=subprocess.PIPE)
        end = time.monotonic() + 15
        while self._path.stat().st_size == 0:
            if self.proc.poll() is not None or time.monotonic() > end:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.close()
                raise BenchError(f"mosquitto_sub did not subscribe: {err.strip()[-300:]}")
            time.sleep(0.005)

    def wait(self, stall: float = 10.0, limit: float = 600.0) -> bool:
        """Wait until ``count`` messages came (True), or none came for ``stall`` seconds
        or ``limit`` passed (False: some went missing)."""
        end = time.monotonic() + limit
        last_size, last_change = -1, time.monotonic()
        while True:
            try:
                self.proc.wait(0.25)
                return True
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            size = self._path.stat().st_size
            if size != last_size:
                last_size, last_change = size, now
            elif now - last_change > stall or now > end:
                return False

    def lines(self) -> list[str]:
        """The lines of the messages received (the sentinel's excluded)."""
        self._out.flush()
        text = self._path.read_text(errors="replace")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return lines[1:]

    def times(self) -> list[float]:
        """Receive times (the first field of each line), in order."""
        return [float(line.split(" ", 1)[0]) for line in self.lines()]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self._out.close()
        with contextlib.suppress(BenchError, OSError):
            self._control.publish(self._sentinel, b"", retain=True)  # remove the sentinel
        self._path.unlink(missing_ok=True)

    def __enter__(self) -> CountingSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- the emulator ----------------------------------------------------------------------------

# The bench's devices: one IPSO light control (3311) each, i.e. three observable resources
# (/3311/0/5850 on/off, /3311/0/5851 dimmer, /3311/0/5706 colour), all writable.
LAMP_NAME = "lamp-{n:06d}"  # the emulator's name for lamp n (from 1)
BENCH_SCENARIO: dict[str, Any] = {
    "description": "connector-bridge bench: N lamps, 3 observable resources each",
    "drift": {"interval": 3600, "budget": 0},
    "templates": {"Lamp": {"type": "Lamp", "objects": ["3311"]}},
    "devices": [],
    "scale": {"templates": ["Lamp"], "name": LAMP_NAME},
}
OBSERVED_PATHS = ("/3311/0/5850", "/3311/0/5851", "/3311/0/5706")
COMMAND_PATH = "/3311/0/5851"  # the dimmer: an int 0..100


APIS = ("legacy", "current")  # the dialects the bench runs on (``--api``)
# The notification channel of each dialect, set explicitly for every bridge the bench
# starts: the long poll on the 2016 Connector, the WebSocket on today's service.
CHANNEL_OF = {"legacy": "longpoll", "current": "websocket"}
CHANNEL_NAME = {"legacy": "long poll", "current": "WebSocket"}


class EmulatorProcess:
    """``connector-bridge simulate --api <api>`` with ``devices`` lamps, in its own process."""

    def __init__(
        self,
        devices: int,
        token: str | None = None,
        pull_timeout: float = 5.0,
        api: str = "legacy",
    ) -> None:
        if api not in APIS:
            raise ValueError(f"api must be one of {APIS}, not {api!r}")
        self.devices = devices
        self.api = api
        self.token = token or f"bench-{uuid.uuid4().hex[:12]}"
        self.pull_timeout = pull_timeout
        self.url = ""
        self.proc: subprocess.Popen[Any] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="bench-emu-"))
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self.token}"
        self.started_in = 0.0
        self.rss_at_start_mib = 0.0
        self._addresses: list[str] | None = None

    def start(self, timeout: float = 180.0) -> EmulatorProcess:
        scenario = self._dir / "scenario.json"
        scenario.write_text(json.dumps(BENCH_SCENARIO))
        cmd = [sys.executable, "-m", "bridge", "simulate", "--api", self.api]
        cmd += ["--port", "0", "--token", self.token]
        cmd += ["--scenario", str(scenario), "--devices", str(self.devices), "--no-drift"]
        cmd += ["--pull-timeout", str(self.pull_timeout)]
        t0 = time.monotonic()
        self.proc = spawn(
            cmd, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.proc.stdout is not None
        tail = _LineTail(self.proc.stdout, r"listening on (http://\S+)")
        end = time.monotonic() + timeout
        while not tail.found.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise BenchError(f"the emulator did not start:\n{tail.tail()}")
        assert tail.match is not None
        self.url = tail.match.group(1)
        self.started_in = time.monotonic() - t0
        self.rss_at_start_mib = status_mib(self.proc.pid, "VmRSS")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def admin(self, method: str, route: str, body: Any = None, timeout: float = 120.0) -> Any:
        r = self.session.request(method, f"{self.url}/admin/{route}", json=body, timeout=timeout)
        if r.status_code >= 400:
            raise BenchError(f"emulator admin {method} {route}: {r.status_code} {r.text[:200]}")
        return r.json() if r.content else None

    def burst(self, n: int, size: int) -> int:
        return int(self.admin("POST", "burst", {"n": n, "size": size}, timeout=600)["emitted"])

    def subscriptions(self) -> list[tuple[str, str]]:
        return [(ep, path) for ep, path in self.admin("GET", "subscriptions")]

    def counters(self) -> dict[str, int]:
        result: dict[str, int] = self.admin("GET", "counters")
        return result

    def endpoints(self) -> list[str]:
        return [str(x) for x in self.admin("GET", "endpoints")]

    def addresses(self) -> list[str]:
        """What the service calls each endpoint of :meth:`endpoints`, in that order."""
        if self.api == "legacy":
            return self.endpoints()
        if self._addresses is None:
            self._addresses = [self.device_id(name) for name in self.endpoints()]
        return list(self._addresses)

    def device_id(self, name: str) -> str:
        """What the service calls endpoint ``name``: its device ID on today's dialect, the
        name itself on the legacy one."""
        if self.api == "legacy":
            return name
        return str(self.admin("GET", f"device-id?ep={name}")["id"])

    def channel_messages(self) -> int:
        """Channel messages delivered so far: long polls answered (legacy), WebSocket
        frames sent (current)."""
        counters = self.counters()
        return int(counters.get("pulls" if self.api == "legacy" else "ws_frames", 0))

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
        self.session.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class CpuMeter:
    """CPU time that some processes (name -> pid; None: not ours to read, left out) use
    from now on, per unit of work."""

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self._pids = {name: pid for name, pid in pids.items() if pid is not None}
        self._start = {name: cpu_seconds(pid) for name, pid in self._pids.items()}

    def us_per(self, n: int) -> dict[str, float]:
        """Microseconds of CPU per unit, by process, for ``n`` units done since the start."""
        return {
            name: (cpu_seconds(pid) - self._start[name]) / max(n, 1) * 1e6
            for name, pid in self._pids.items()
        }


# ---- the bridge ------------------------------------------------------------------------------


class BridgeProcess:
    """``connector-bridge run`` between the emulator and the broker; settings by environment.

    ``settings`` are extra ``BRIDGE_*`` values (field name -> value), e.g.
    ``{"value_qos": "0"}``; they win over the defaults set here.
    """

    def __init__(
        self,
        emulator: EmulatorProcess,
        broker: Broker,
        prefix: str,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        env = python_env()
        values = {
            "connector_url": emulator.url,
            "connector_token": emulator.token,
            # the dialect and its channel said explicitly (no probe decides)
            "connector_api": emulator.api,
            "notification_channel": CHANNEL_OF[emulator.api],
            "mqtt_host": broker.host,
            "mqtt_port": str(broker.port),
            "mqtt_client_id": f"bench-bridge-{uuid.uuid4().hex[:10]}",
            "topic_prefix": prefix,
            # Discovery configs go to a namespace of the measurement's own: on a real broker
            # the bench must not announce its lamps to a Home Assistant (same work either way).
            "homeassistant_discovery_prefix": f"{prefix}-ha",
            "log_level": "INFO",
        }
        values.update(settings or {})
        env.update({"BRIDGE_" + k.upper(): v for k, v in values.items()})
        self._env = env
        self._cwd = tempfile.mkdtemp(prefix="bench-bridge-")
        self.proc: subprocess.Popen[Any] | None = None
        self._tail: _LineTail | None = None
        self.started_at = 0.0  # time.time() at spawn

    def start(self) -> BridgeProcess:
        cmd = [sys.executable, "-m", "bridge", "run", "--env-file", ""]
        self.started_at = time.time()
        self.proc = spawn(cmd, env=self._env, cwd=self._cwd, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self._tail = _LineTail(self.proc.stderr, r"bridge ready")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float = 120.0) -> None:
        assert self.proc is not None and self._tail is not None
        end = time.monotonic() + timeout
        while not self._tail.found.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise BenchError(f"the bridge did not become ready:\n{self._tail.tail()}")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss_mib(self) -> float:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(
                f"the bridge exited with code {self.proc.returncode}:\n{self.log_tail()}"
            )
        return status_mib(self.pid, "VmHWM")

    def log_tail(self, n: int = 30) -> str:
        return self._tail.tail(n) if self._tail is not None else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=15)
            if self._tail is not None:
                self._tail.ended.wait(2)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            self.proc = None
        shutil.rmtree(self._cwd, ignore_errors=True)

    def __enter__(self) -> BridgeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def new_prefix(tag: str) -> str:
    """A topic prefix of its own for one measurement: no retained message of an earlier
    measurement can match its subscriptions. Always 14 characters, so topics of the
    bridge and of the ceiling clients have the same size."""
    return f"b{tag[:4]:-<4}-{uuid.uuid4().hex[:8]}"


def run_child(kind: str, args: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """Run a load client of :mod:`bridge.bench.loadgen` in its own process; its result."""
    cmd = [sys.executable, "-m", "bridge.bench.loadgen", kind, json.dumps(dict(args))]
    try:
        done = subprocess.run(
            cmd,
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_die_with_parent,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"load client {kind} did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise BenchError(f"load client {kind} failed ({done.returncode}): {done.stderr[-1500:]}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise BenchError(f"load client {kind} printed no result: {done.stderr[-500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def start_child(kind: str, args: Mapping[str, Any]) -> subprocess.Popen[str]:
    """Start a load client in the background (its JSON result on stdout at the end)."""
    cmd = [sys.executable, "-m", "bridge.bench.loadgen", kind, json.dumps(dict(args))]
    proc: subprocess.Popen[str] = spawn(
        cmd, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc


def child_result(proc: subprocess.Popen[str], kind: str, timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise BenchError(f"load client {kind} did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0 or not out.strip():
        raise BenchError(f"load client {kind} failed ({proc.returncode}): {err[-1500:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result
