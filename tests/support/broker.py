"""A real Mosquitto broker owned by a test: own port, own config, own persistence.

Tests stop, kill and restart it to prove what the bridge does when the broker goes
away; the port and the persistence file survive a restart, as they would in production.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.support.ports import free_port

_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Last line of defence: no broker outlives the test run, even if a test forgot one."""
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()


def _die_with_parent() -> None:
    """Runs in the child before exec: the broker gets SIGKILL when the test process dies,
    so a test run that is itself killed leaves no broker behind (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself has a listening TCP socket on ``port`` (Linux /proc)."""
    try:
        inodes = _socket_inodes(pid)
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:
                return True
    return False


def _wait_until_listening(proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _listens(proc.pid, port):
            return True
        time.sleep(0.02)
    return False


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if not found:
        raise RuntimeError("mosquitto is not installed (the ./dev script installs it)")
    return found


class MosquittoBroker:
    """One Mosquitto process on 127.0.0.1:<port>.

    ``extra_config`` is appended to the generated configuration (ACLs, TLS listeners...).
    With ``persistence`` the broker saves its state on a clean stop, so persistent
    sessions and queued QoS 1 messages outlive a restart.
    """

    def __init__(
        self,
        port: int | None = None,
        extra_config: str = "",
        persistence: bool = True,
        listener: bool = True,
    ) -> None:
        self._own_port = port is None  # a port we picked may be replaced on collision
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mosq-"))
        self.extra_config = extra_config
        self.persistence = persistence
        self.listener = listener
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "mosquitto.log"

    @property
    def config_path(self) -> Path:
        return self.dir / "mosquitto.conf"

    def _write_config(self) -> None:
        lines = [
            "per_listener_settings false",
            "allow_anonymous true" if "allow_anonymous" not in self.extra_config else "",
            # As root, mosquitto drops to user `mosquitto`, which cannot write the private
            # temp dir: persistence would fail silently ("Permission denied" at SIGTERM).
            "user root" if os.geteuid() == 0 and "\nuser " not in f"\n{self.extra_config}" else "",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "autosave_interval 0",
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if self.listener:
            lines.insert(0, f"listener {self.port} 127.0.0.1")
        self.config_path.write_text("\n".join(lines) + "\n" + self.extra_config + "\n")

    def start(self) -> MosquittoBroker:
        """Start and return once *this* mosquitto process listens on ``self.port``.

        Another process (a parallel test run) may take a port between ``free_port()`` and
        the broker's bind; then mosquitto exits with "Address already in use" while a plain
        connect would succeed against the stranger. So the broker's own socket is checked,
        and a port this object picked itself is replaced and tried again.
        """
        if self.running:
            raise RuntimeError(f"broker on port {self.port} is already running")
        for _attempt in range(5):
            self._write_config()
            with self.log_path.open("ab") as log:  # the child keeps its own descriptor
                proc = subprocess.Popen(
                    [mosquitto_binary(), "-c", str(self.config_path)],
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            self.proc = proc
            _LIVE.add(proc)
            if _wait_until_listening(proc, self.port, timeout=10):
                return self
            self.kill()
            if not self._own_port:
                break
            self.port = free_port()  # collision with another process: take a new port
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"mosquitto did not start on port {self.port}: {tail}")

    def _signal(self, sig: int, timeout: float = 10) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            _LIVE.discard(self.proc)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM: a clean stop; the broker saves its persistence file."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the broker dies and keeps only what it had saved before."""
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> MosquittoBroker:
        # `with broker.start():` and `with broker:` both work; a second start would leak a process.
        return self if self.running else self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def env_with_pythonpath() -> dict[str, str]:
    """The environment for a child Python process that must import this checkout."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env
