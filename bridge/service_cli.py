"""``connector-bridge run``: the bridge as a long-running service.

Settings come from flags, the environment (``BRIDGE_*``) and a ``.env`` file
(``--env-file PATH`` names another one; ``--env-file ''`` reads none). Exit codes: 0 after
a clean stop (SIGTERM or SIGINT), 2 for wrong settings, 1 when start-up fails (token
refused, broker credentials refused, callback URL unreachable...). Every error names the
setting to look at and never shows a secret.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from bridge.connector_side import StartupError
from bridge.controller import Bridge
from bridge.settings import Settings, SettingsError, load_settings

PROG = "connector-bridge run"
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def split_env_file(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """Take ``--env-file PATH`` / ``--env-file=PATH`` out of ``argv`` (default ``.env``)."""
    rest: list[str] = []
    env_file: str | None = ".env"
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--env-file" and i + 1 < len(args):
            env_file = args[i + 1] or None
            i += 2
            continue
        if arg.startswith("--env-file="):
            env_file = arg.partition("=")[2] or None
            i += 1
            continue
        rest.append(arg)
        i += 1
    return rest, env_file


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)
    if level != "DEBUG":
        # Per-request lines of the HTTP stack are noise below DEBUG.
        logging.getLogger("urllib3").setLevel(logging.WARNING)


def read_settings(argv: Sequence[str]) -> Settings | int:
    """The settings, or an exit code after printing why there are none."""
    args, env_file = split_env_file(argv)
    try:
        return load_settings(args, env_file=env_file)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)


def install_stop_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("bridge").info("%s received", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: Sequence[str]) -> int:
    settings = read_settings(argv)
    if isinstance(settings, int):
        return settings
    configure_logging(settings.log_level)
    stop = threading.Event()
    install_stop_signals(stop)
    bridge = Bridge(settings).start()
    code = 0
    try:
        while not stop.wait(0.2):
            if bridge.failed.is_set() or bridge.mqtt.auth_failure:
                raise StartupError(bridge.failure or bridge.mqtt.auth_failure or "start-up failed")
    except StartupError as exc:
        print(f"{PROG}: cannot start: {exc}", file=sys.stderr)
        code = 1
    finally:
        bridge.stop()
    return code
