"""A real Home Assistant for a test: its MQTT integration against the test's broker.

Home Assistant runs in its own interpreter (the venv scripts/home_assistant_env.py
installs, named by its ``ready.json`` or by ``HOME_ASSISTANT_PYTHON``) with
tests/support/ha_driver.py, which boots it without the default integrations and answers
one JSON request per line. Usage::

    env = find_environment()          # None: pytest.skip(skip_reason())
    with HomeAssistant(broker.port, config_dir=tmp_path / "ha") as ha:
        entity = ha.wait_for(lambda snap: find(snap), timeout=30, what="the sensor")
        ha.call("button", "press", entity_id="button.x")
        ha.update_entity("sensor.x", new_entity_id="sensor.y", name="Y")
        area = ha.create_area("Kitchen"); ha.update_device(device_id, area_id=area)
        ha.events()["states"]; ha.warnings()

``snapshot()`` gives ``{"entities": [...], "devices": [...], "areas": {id: name}}``
(the field names are listed in ha_driver.py). ``restart()`` stops Home Assistant and
starts it again on the same config dir (its registries kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

DRIVER = Path(__file__).resolve().with_name("ha_driver.py")
INSTALLER = "scripts/home_assistant_env.py"
BOOT_TIMEOUT = 90.0  # interpreter start, imports, boot, MQTT connection (about 2 s idle)
REQUEST_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
T = TypeVar("T")


def cache_dir() -> Path:
    """Same computation as scripts/home_assistant_env.py: where ready.json lives."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "connector-bridge" / "home-assistant"


@dataclass(frozen=True)
class Environment:
    """A python that has homeassistant; the versions are known from ready.json only."""

    python: str
    homeassistant: str | None = None
    python_version: str | None = None
    source: str = ""


def _locate() -> tuple[Environment | None, str]:
    setup = f"run ./dev setup ({INSTALLER})"
    override = os.environ.get("HOME_ASSISTANT_PYTHON")
    if override:
        if not os.access(override, os.X_OK):
            return None, f"HOME_ASSISTANT_PYTHON={override} is not an executable"
        return Environment(override, source="HOME_ASSISTANT_PYTHON"), ""
    ready_path = cache_dir() / "ready.json"
    try:
        ready = json.loads(ready_path.read_text())
        python = str(ready["python"])
    except FileNotFoundError:
        return None, f"no Home Assistant environment ({ready_path} is missing): {setup}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"no Home Assistant environment ({ready_path} unreadable: {exc}): {setup}"
    if not os.access(python, os.X_OK):
        return None, f"no Home Assistant environment ({python} from {ready_path} is gone): {setup}"
    return (
        Environment(
            python,
            homeassistant=ready.get("homeassistant"),
            python_version=ready.get("python_version"),
            source=str(ready_path),
        ),
        "",
    )


def find_environment() -> Environment | None:
    """The Home Assistant interpreter to use, or None (then ``skip_reason()`` says why)."""
    return _locate()[0]


def skip_reason() -> str:
    """Why there is no Home Assistant environment ("" when there is one)."""
    return _locate()[1]


class HomeAssistantError(RuntimeError):
    """The driver failed, answered an error, or did not answer in time (with the log's tail)."""


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL when the test process dies (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:])


_EOF = object()


class HomeAssistant:
    """One Home Assistant process connected to the broker on 127.0.0.1:<mqtt_port>.

    Without ``config_dir`` a temporary one is made and removed by ``close()`` (a failed
    ``start()`` keeps it: the error names its log); a given one is always kept, so a failed
    test leaves home-assistant.log and driver.stderr behind.
    """

    def __init__(
        self,
        mqtt_port: int,
        config_dir: Path | None = None,
        environment: Environment | None = None,
        boot_timeout: float = BOOT_TIMEOUT,
    ) -> None:
        env = environment or find_environment()
        if env is None:
            raise HomeAssistantError(skip_reason())
        self.environment = env
        self.mqtt_port = mqtt_port
        self._own_dir = config_dir is None
        self.config_dir = Path(config_dir or tempfile.mkdtemp(prefix="ha-"))
        self.boot_timeout = boot_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}
        self.start_seconds: float | None = None  # wall time of the last start(), client side
        self._answers: queue.Queue[Any] = queue.Queue()
        self._events: queue.Queue[Any] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._next_id = 0

    @property
    def log_path(self) -> Path:
        return self.config_dir / "home-assistant.log"

    @property
    def stderr_path(self) -> Path:
        return self.config_dir / "driver.stderr"

    @property
    def version(self) -> str:
        """The running Home Assistant's version."""
        return str(self.info["homeassistant"])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return (
            f"--- {self.log_path} (tail) ---\n{_tail(self.log_path, lines)}\n"
            f"--- {self.stderr_path} (tail) ---\n{_tail(self.stderr_path, lines // 2)}"
        )

    def _fail(self, message: str) -> HomeAssistantError:
        return HomeAssistantError(f"{message}\n{self.log_tail()}")

    # -- process ------------------------------------------------------------------------

    def start(self) -> HomeAssistant:
        """Start the driver and return once Home Assistant's MQTT client is connected."""
        if self.running:
            raise HomeAssistantError("Home Assistant is already running")
        started = time.monotonic()
        self.config_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        self._answers, self._events = queue.Queue(), queue.Queue()
        with self.stderr_path.open("ab") as stderr:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [self.environment.python, str(DRIVER), str(self.config_dir), str(self.mqtt_port)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                encoding="utf-8",
                bufsize=1,
                cwd=self.config_dir,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        assert self.proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self.proc.stdout,), name="ha-driver-reader", daemon=True
        )
        self._reader.start()
        try:
            event = self._events.get(timeout=self.boot_timeout)
        except queue.Empty:
            self.kill()
            raise self._fail(
                f"Home Assistant did not boot within {self.boot_timeout:.0f} s"
            ) from None
        if event is _EOF or event.get("event") != "ready":
            self.kill()
            error = "the driver exited" if event is _EOF else event.get("error", event)
            raise self._fail(f"Home Assistant did not boot: {error}")
        self.info = {k: v for k, v in event.items() if k != "event"}
        self.start_seconds = time.monotonic() - started
        return self

    def _read(self, stdout: IO[str]) -> None:
        """Reader thread: answers to one queue, unsolicited events to the other."""
        try:
            for line in stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue  # nothing but the driver writes here; be lenient all the same
                if isinstance(message, dict) and "event" in message:
                    self._events.put(message)
                else:
                    self._answers.put(message)
        except (OSError, ValueError):
            pass
        finally:
            self._answers.put(_EOF)
            self._events.put(_EOF)

    def stop(self) -> None:
        """A clean stop (registries saved); SIGKILL if it takes more than STOP_TIMEOUT."""
        if self.running:
            with contextlib.suppress(HomeAssistantError):
                self.request("stop", timeout=STOP_TIMEOUT)
            assert self.proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=3)
        self.kill()

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def restart(self) -> HomeAssistant:
        """Stop and start again on the same config dir (entity and device registries kept)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.config_dir, ignore_errors=True)

    def __enter__(self) -> HomeAssistant:
        return self if self.running else self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------

    def request(self, op: str, timeout: float = REQUEST_TIMEOUT, **arguments: Any) -> Any:
        """Send one request and return its result; HomeAssistantError on error or time-out."""
        with self._lock:
            proc = self.proc
            if proc is None or proc.stdin is None:
                raise HomeAssistantError(f"{op}: Home Assistant is not running")
            self._next_id += 1
            request_id = self._next_id
            line = json.dumps({"id": request_id, "op": op, **arguments})
            try:
                proc.stdin.write(line + "\n")
                proc.stdin.flush()
            except (OSError, ValueError) as exc:
                raise self._fail(f"{op}: cannot write to the driver ({exc})") from None
            deadline = time.monotonic() + timeout
            while True:
                try:
                    answer = self._answers.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    raise self._fail(f"{op}: no answer within {timeout} s") from None
                if answer is _EOF:
                    self._answers.put(_EOF)  # later requests see it too
                    raise self._fail(f"{op}: the driver exited (status {proc.poll()})")
                if answer.get("id") != request_id:
                    continue  # the late answer to a request that timed out
                if not answer.get("ok"):
                    raise self._fail(f"{op} {arguments}: {answer.get('error')}")
                return answer.get("result")

    def ready(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("ready")
        return result

    def snapshot(self) -> dict[str, Any]:
        """{"entities": [mqtt entities with state and attributes], "devices": [...],
        "areas": {area_id: name}}."""
        result: dict[str, Any] = self.request("snapshot")
        return result

    def call(self, domain: str, service: str, **data: Any) -> None:
        """A blocking service call, e.g. ``call("switch", "turn_on", entity_id="switch.x")``."""
        self.request("call", domain=domain, service=service, data=data)

    def update_entity(self, entity_id: str, **fields: Any) -> dict[str, Any]:
        """Entity registry update (new_entity_id, name, disabled_by...): the updated entity."""
        result: dict[str, Any] = self.request("update_entity", entity_id=entity_id, fields=fields)
        return result

    def update_device(self, device_id: str, **fields: Any) -> dict[str, Any]:
        """Device registry update (area_id, name_by_user...): the updated device."""
        result: dict[str, Any] = self.request("update_device", device_id=device_id, fields=fields)
        return result

    def create_area(self, name: str) -> str:
        """The id of the area ``name`` (created if new)."""
        return str(self.request("create_area", name=name))

    def events(self) -> dict[str, list[list[Any]]]:
        """Since start: {"states": [[entity_id, state or None, monotonic]], "registry":
        [[action, entity_id, details, monotonic]]}."""
        result: dict[str, list[list[Any]]] = self.request("events")
        return result

    def warnings(self) -> list[dict[str, Any]]:
        """Every log record at WARNING or above: {"logger", "level", "message", "time"}."""
        result: list[dict[str, Any]] = self.request("warnings")
        return result

    def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], T | None],
        timeout: float = 30.0,
        what: str = "a condition on Home Assistant's snapshot",
    ) -> T:
        """Snapshots every 0.1 s until ``predicate(snapshot)`` is truthy; returns that value."""
        deadline = time.monotonic() + timeout
        while True:
            snapshot = self.snapshot()
            value = predicate(snapshot)
            if value:
                return value
            if time.monotonic() >= deadline:
                shown = json.dumps(snapshot, ensure_ascii=False)
                if len(shown) > 3000:
                    shown = shown[:3000] + "..."
                raise AssertionError(
                    f"waited {timeout} s for {what}; last snapshot: {shown}\n{self.log_tail()}"
                )
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
