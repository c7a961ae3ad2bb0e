"""``connector-bridge run``: the bridge as a long-running service.

Settings come from flags, the environment (``BRIDGE_*``) and a ``.env`` file
(``--env-file PATH`` names another one; ``--env-file ''`` reads none). Exit codes: 0 after
a clean stop (SIGTERM or SIGINT), 2 for wrong settings, 1 when start-up fails (token
refused, broker credentials refused, callback URL unreachable...). Every error names the
setting to look at and never shows a secret.

A stop (SIGTERM or SIGINT; a second one changes nothing) takes no new commands, gives
the commands under way ``stop_timeout`` seconds to be answered (then answers them 503),
publishes ``offline``, disconnects and exits 0. Should it hang all the same, a watchdog
ends the process (exit 1) :data:`STOP_MARGIN` seconds after that.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from types import FrameType

from bridge.service import logging_setup
from bridge.service.controller import Bridge
from bridge.service.cpu_pinning import PinError, pin_process
from bridge.service.settings import Settings, SettingsError, env_name, load_settings
from bridge.upstream.side import StartupError

PROG = "connector-bridge run"
STOP_MARGIN = 20.0  # seconds beyond stop_timeout before the watchdog ends a hanging stop
LOG_FORMAT = logging_setup.TEXT_FORMAT


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


def configure_logging(level: str, fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    """Text or JSON lines on stderr, secrets masked (see :mod:`bridge.service.logging_setup`)."""
    logging_setup.configure_logging(level, fmt, secrets)


def settings_secrets(settings: Settings) -> list[str]:
    """The secret values of ``settings``, for the logs to mask."""
    values = [settings.connector_token.get_secret_value()]
    if settings.mqtt_password is not None:
        values.append(settings.mqtt_password.get_secret_value())
    return values


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
        name = signal.Signals(signum).name
        if stop.is_set():
            logging.getLogger("bridge").info("%s received: already stopping", name)
            return
        logging.getLogger("bridge").info("%s received", name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a process that allocates a lot and keeps little.

    Every message makes short-lived containers (JSON, events, paho's packets), so with
    the default threshold (700) a young collection runs every few messages; the objects
    made at import and set-up live as long as the process, so they are frozen out of
    every later full collection. Reference counting still frees almost everything at
    once; the collector only finds cycles, later and in bigger batches.
    """
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


def main(argv: Sequence[str]) -> int:
    settings = read_settings(argv)
    if isinstance(settings, int):
        return settings
    configure_logging(settings.log_level, settings.log_format, settings_secrets(settings))
    try:
        pin_process(settings.cpu_pin)  # before any thread starts: they all inherit it
    except PinError as exc:
        print(f"{PROG}: {env_name('cpu_pin')}: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    install_stop_signals(stop)
    bridge = Bridge(settings)
    tune_gc()
    code = 0
    try:
        bridge.start()
        while not stop.wait(0.2):
            if bridge.failed.is_set() or bridge.mqtt.auth_failure:
                raise StartupError(bridge.failure or bridge.mqtt.auth_failure or "start-up failed")
    except StartupError as exc:
        print(f"{PROG}: cannot start: {exc}", file=sys.stderr)
        code = 1
    finally:
        watchdog = threading.Timer(settings.stop_timeout + STOP_MARGIN, _stop_hangs)
        watchdog.daemon = True
        watchdog.start()
        bridge.stop()
        watchdog.cancel()
    return code


def _stop_hangs() -> None:
    logging.getLogger("bridge").error("the stop did not finish in time; exiting now")
    logging.shutdown()
    os._exit(1)
