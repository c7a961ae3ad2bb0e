"""``connector-bridge demo``: the emulator's default devices, a broker and the bridge, together.

The emulator speaks today's Device Management API (``api="current"``: device IDs,
``/v3/devices``, device requests, the WebSocket channel), as the live service does; the
bridge finds that out itself (``BRIDGE_CONNECTOR_API=auto``, one probe) and publishes the
devices under their endpoint names.

The broker is the configured one (``BRIDGE_MQTT_HOST``/``BRIDGE_MQTT_PORT``, default
localhost:1883) when an MQTT broker answers there. Otherwise, when ``mosquitto`` is
installed, the demo starts one from the project's ``mosquitto.conf`` (loopback only,
port 1883; another free port if 1883 is taken by something that is not a broker) and
stops it again at the end. It then prints the ``mosquitto_sub`` / ``mosquitto_pub`` lines
to watch the values and switch the light, and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bridge.service.controller import Bridge
from bridge.service.run_cli import configure_logging, install_stop_signals
from bridge.service.settings import SettingsError, load_settings
from bridge.upstream.side import StartupError

PROG = "connector-bridge demo"
LIGHT = ("light-001", "/3311/0/5850")
PROJECT_CONF = Path(__file__).resolve().parents[2] / "mosquitto.conf"
FALLBACK_CONF = """# connector-bridge demo broker: loopback only, anonymous, no persistence.
listener {port} 127.0.0.1
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
"""


def broker_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when an MQTT broker answers a CONNECT on host:port (any CONNACK counts)."""
    client_id = b"cb-demo-probe"
    var_header = b"\x00\x04MQTT\x04\x02\x00\x0a"
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = var_header + payload
    packet = b"\x10" + bytes([len(body)]) + body
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(packet)
            answer = sock.recv(4)
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return len(answer) >= 2 and answer[0] == 0x20


def port_in_use(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


class OwnBroker:
    """A Mosquitto the demo started; stopped with the demo."""

    def __init__(self, binary: str, port: int) -> None:
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="connector-bridge-demo-"))
        if port == 1883 and PROJECT_CONF.exists():
            self.conf = PROJECT_CONF
        else:
            self.conf = self.dir / "mosquitto.conf"
            self.conf.write_text(FALLBACK_CONF.format(port=port))
        self.log = (self.dir / "mosquitto.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.conf)],
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )

    def wait(self, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            if broker_answers("127.0.0.1", self.port, timeout=0.5):
                return True
            time.sleep(0.05)
        return False

    def log_tail(self) -> str:
        self.log.flush()
        return (self.dir / "mosquitto.log").read_text(errors="replace")[-1500:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument("--mqtt-host", default=os.environ.get("BRIDGE_MQTT_HOST", "localhost"))
    p.add_argument("--mqtt-port", type=int, default=int(os.environ.get("BRIDGE_MQTT_PORT", "1883")))
    p.add_argument("--log-level", default=os.environ.get("BRIDGE_LOG_LEVEL", "WARNING"))
    p.add_argument(
        "--no-broker",
        action="store_true",
        help="never start a broker; fail if none answers",
    )
    return p.parse_args(list(argv))


def pick_broker(host: str, port: int, allow_start: bool) -> tuple[int, OwnBroker | None, str]:
    """(port, the broker we started or None, a sentence saying which broker is used)."""
    if broker_answers(host, port):
        return port, None, f"the MQTT broker already running on {host}:{port}"
    local = host in ("localhost", "127.0.0.1", "::1")
    binary = mosquitto_binary()
    if not (allow_start and local and binary):
        why = "mosquitto is not installed" if local and not binary else "it is not local"
        raise RuntimeError(
            f"no MQTT broker answers on {host}:{port} and the demo cannot start one ({why}).\n"
            "Install Mosquitto (sudo apt-get install mosquitto mosquitto-clients), or point the "
            "demo at a broker with BRIDGE_MQTT_HOST / BRIDGE_MQTT_PORT "
            "(or --mqtt-host / --mqtt-port)."
        )
    if port_in_use("127.0.0.1", port):
        port = free_port()  # taken by something that is not an MQTT broker
    broker = OwnBroker(binary, port)
    if not broker.wait():
        tail = broker.log_tail()
        broker.stop()
        raise RuntimeError(f"mosquitto did not start on port {port}:\n{tail}")
    source = "the project's mosquitto.conf" if broker.conf == PROJECT_CONF else "a loopback config"
    return port, broker, f"a Mosquitto started from {source} on 127.0.0.1:{port}"


def instructions(host: str, port: int, prefix: str) -> str:
    where = "" if (host, port) in (("localhost", 1883), ("127.0.0.1", 1883)) else (
        f"-h {host} -p {port} "
    )  # fmt: skip
    ep, path = LIGHT
    cmd = f"{prefix}/{ep}{path}/set"
    return "\n".join(
        [
            "Watch every value, state and reply (another terminal):",
            f"  mosquitto_sub {where}-t '{prefix}/#' -v",
            "",
            "Switch the light on, then off; the reply arrives on <topic>/reply and the",
            "new value on the value topic:",
            f"  mosquitto_pub {where}-t '{cmd}' -m 1",
            f"  mosquitto_pub {where}-t '{cmd}' -m 0",
            "",
            "Ask the bridge what it knows:",
            f"  mosquitto_pub {where}-t '{prefix}/$bridge/request/info' "
            "-m '{\"transaction\": 1}'",
            "",
            "Ctrl-C stops the demo.",
        ]
    )


def main(argv: Sequence[str]) -> int:
    args = _parse(argv)
    configure_logging(args.log_level.upper())
    from bridge.simulator import Emulator  # only the demo needs the emulator

    stop = threading.Event()
    install_stop_signals(stop)
    try:
        port, own_broker, broker_text = pick_broker(
            args.mqtt_host, args.mqtt_port, not args.no_broker
        )
    except RuntimeError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    token = secrets.token_urlsafe(16)
    emulator = Emulator(token=token, api="current").start()
    bridge: Bridge | None = None
    code = 0
    try:
        settings = load_settings(
            None,
            env_file=None,
            overrides={
                "connector_url": emulator.url,
                "connector_token": token,
                "mqtt_host": args.mqtt_host,
                "mqtt_port": port,
                "mqtt_client_id": f"connector-bridge-demo-{os.getpid()}",
                "log_level": args.log_level.upper(),
            },
        )
        bridge = Bridge(settings).start()
        if not bridge.wait_ready(30.0):
            raise StartupError("the bridge did not become ready within 30 s")
        names = ", ".join(sorted(emulator.endpoints()))
        side = bridge.connector_side
        print(
            f"{PROG}: the emulator of today's Device Management API runs at {emulator.url} "
            f"with {names};\nthe bridge found that API ({side.api}), listens on its "
            f"{side.channel} channel and is online, using {broker_text}.\n",
            flush=True,
        )
        print(instructions(args.mqtt_host, port, settings.topic_prefix), flush=True)
        while not stop.wait(0.5):
            if bridge.failed.is_set() or bridge.mqtt.auth_failure:
                raise StartupError(bridge.failure or bridge.mqtt.auth_failure or "failed")
    except (StartupError, SettingsError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        code = 1
    finally:
        print(f"\n{PROG}: stopping", file=sys.stderr, flush=True)
        if bridge is not None:
            bridge.stop()
        emulator.stop()
        if own_broker is not None:
            own_broker.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return code
