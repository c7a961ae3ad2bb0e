"""The ``connector-bridge`` command: one entry point, one sub-command per part.

Each sub-command lives in the module of the part it runs and is imported only when it
is asked for, so ``connector-bridge simulate`` does not pay for the MQTT side and the
parts stay independent of each other.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from bridge import __version__

# sub-command -> ("module:function", one-line help). The function takes argv (the
# arguments after the sub-command) and returns the process exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("bridge.service.run_cli:main", "run the bridge between a Connector and an MQTT broker"),
    "simulate": ("bridge.simulator.cli:main", "run the local Connector emulator"),
    "demo": ("bridge.service.demo:main", "run the emulator, a broker and the bridge together"),
    "status": (
        "bridge.service.status_cli:main",
        "show a running bridge's endpoints and key figures",
    ),
    "bench": ("bridge.bench.cli:main", "measure the bridge against the ceiling of its parts"),
}


def _usage() -> str:
    lines = [f"usage: connector-bridge <command> [options]   (version {__version__})", ""]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "connector-bridge <command> --help shows the options of a command."]
    return "\n".join(lines)


def _load(target: str) -> Callable[[Sequence[str]], int]:
    module_name, _, func_name = target.partition(":")
    func: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module_name), func_name)
    return func


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(__version__)
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"connector-bridge: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return _load(COMMANDS[name][0])(rest)
