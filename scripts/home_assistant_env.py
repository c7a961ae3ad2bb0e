#!/usr/bin/env python3
"""Install a real Home Assistant for the test suite, in a venv of its own.

Home Assistant needs a newer Python than the project may run on, so it gets its own
interpreter: the newest one found (pyenv, /usr/bin, /usr/local/bin, PATH) that can
``pip install homeassistant`` (newest release for that Python) plus the requirements of
the MQTT integration and of the integrations it depends on. The venv lives in
``${XDG_CACHE_HOME:-~/.cache}/connector-bridge/home-assistant/py<version>/`` and
``ready.json`` next to it names the python that works; ``tests/support/home_assistant.py``
reads it. ``HOME_ASSISTANT_PYTHON`` (a python that has homeassistant) overrides all this.

Run by ``./dev setup``; standard library only. Exit 0 when ready, 1 with a reason if not.
Once ready (and neither this script nor tests/support/ha_driver.py changed), a run only
checks that the python still imports homeassistant: no pip. ``--force`` installs again;
to get a newer Home Assistant, delete the cache directory.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "support" / "ha_driver.py"
MIN_PYTHON = (3, 10)
PIP_TIMEOUT = 3600.0  # a cold install builds a few wheels; a hung index should still end

Version = tuple[int, int, int]

# Run in the HA venv: prints the homeassistant version; fails if it or a requirement is missing.
QUICK_CHECK = (
    "import sys, importlib.metadata as m, homeassistant.const as c\n"
    "for name in sys.argv[1:]: m.version(name)\n"
    "print(c.__version__)"
)
FULL_CHECK = "import homeassistant.components.mqtt\n" + QUICK_CHECK


def log(message: str) -> None:
    print(f"[ha-env] {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Where the venvs and ready.json live (tests/support/home_assistant.py computes the same)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "connector-bridge" / "home-assistant"


def installer_hash() -> str:
    """Changes when this script or the driver changes, so that a change installs again."""
    digest = hashlib.sha256()
    for path in (Path(__file__).resolve(), DRIVER):
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    return digest.hexdigest()[:16]


def _version_of(python: str) -> tuple[Version, str] | None:
    """(version, real executable) of an interpreter, or None if it does not run."""
    code = "import os, sys; print(os.path.realpath(sys.executable)); print(*sys.version_info[:3])"
    try:
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=20, check=True
        ).stdout.split("\n")
        major, minor, micro = (int(part) for part in out[1].split())
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return (major, minor, micro), out[0]


def candidate_interpreters() -> list[tuple[Version, str]]:
    """Interpreters of MIN_PYTHON or newer, newest first, each real executable once."""
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.join(os.path.expanduser("~"), ".pyenv")
    paths = sorted(glob.glob(os.path.join(pyenv_root, "versions", "*", "bin", "python3")))
    for directory in ("/usr/bin", "/usr/local/bin"):
        paths += sorted(
            p
            for p in glob.glob(os.path.join(directory, "python3.*"))
            if re.fullmatch(r"python3\.\d+", os.path.basename(p))
        )
    for minor in range(10, 16):
        found = shutil.which(f"python3.{minor}")
        if found:
            paths.append(found)
    seen_paths: set[str] = set()
    seen_executables: set[str] = set()
    found_versions: list[tuple[Version, str]] = []
    for path in paths:
        real = os.path.realpath(path)
        if real in seen_paths or not os.access(real, os.X_OK):
            continue
        seen_paths.add(real)
        probed = _version_of(real)  # a pyenv shim reports the interpreter it runs
        if probed is None:
            continue
        version, executable = probed
        if executable in seen_executables or version < MIN_PYTHON:
            continue
        seen_executables.add(executable)
        found_versions.append((version, executable))
    found_versions.sort(key=lambda item: item[0], reverse=True)  # stable: first found wins ties
    return found_versions


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0]


def check(python: str, requirements: list[str], full: bool) -> str | None:
    """The homeassistant version if ``python`` imports it (and has the requirements)."""
    names = [requirement_name(r) for r in requirements]
    try:
        result = subprocess.run(
            [python, "-c", FULL_CHECK if full else QUICK_CHECK, *names],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def mqtt_requirements(package_dir: Path) -> list[str]:
    """The "requirements" of the mqtt integration and of its "dependencies", recursively."""
    requirements: list[str] = []
    pending, done = ["mqtt"], set()
    while pending:
        domain = pending.pop(0)
        if domain in done:
            continue
        done.add(domain)
        manifest_path = package_dir / "components" / domain / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        for requirement in manifest.get("requirements", []):
            if requirement not in requirements:
                requirements.append(requirement)
        pending.extend(manifest.get("dependencies", []))
    return requirements


class StepFailed(Exception):
    pass


def run_step(what: str, command: list[str], log_path: Path) -> None:
    """Run one install step with its output appended to log_path; raise StepFailed if it fails."""
    log(what)
    with log_path.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        try:
            result = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, timeout=PIP_TIMEOUT, cwd="/"
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise StepFailed(f"{what}: {exc}") from exc
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        for line in tail:
            log(f"  | {line}")
        raise StepFailed(f"{what}: exit status {result.returncode} (log: {log_path})")


def install(interpreter: str, version: Version) -> dict[str, object]:
    """Create (or complete) the venv for one interpreter; the ready.json content on success."""
    dotted = ".".join(map(str, version))
    venv = cache_dir() / f"py{dotted}"
    python = venv / "bin" / "python"
    log_path = venv.with_name(venv.name + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(f"install with {interpreter} at {time.ctime()}\n")
    if not python.exists():
        shutil.rmtree(venv, ignore_errors=True)
        run_step(
            f"creating {venv} with Python {dotted}",
            [interpreter, "-m", "venv", str(venv)],
            log_path,
        )
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    started = time.monotonic()
    run_step(
        f"pip install homeassistant for Python {dotted} (minutes the first time; log: {log_path})",
        [*pip, "homeassistant"],
        log_path,
    )
    try:
        located = subprocess.run(
            [
                str(python),
                "-c",
                "import homeassistant, os; print(os.path.dirname(homeassistant.__file__))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            cwd="/",
        ).stdout.strip()
        requirements = mqtt_requirements(Path(located))
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        raise StepFailed(f"reading the mqtt integration's manifests: {exc}") from exc
    if requirements:
        run_step(f"pip install {' '.join(requirements)}", [*pip, *requirements], log_path)
    ha_version = check(str(python), requirements, full=True)
    if ha_version is None:
        raise StepFailed(f"{python} does not import homeassistant.components.mqtt")
    log(f"installed Home Assistant {ha_version} in {time.monotonic() - started:.0f} s")
    return {
        "python": str(python),
        "homeassistant": ha_version,
        "python_version": dotted,
        "requirements": requirements,
        "installer": installer_hash(),
    }


def read_ready(path: Path) -> dict[str, object] | None:
    try:
        ready = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return ready if isinstance(ready, dict) else None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One installer at a time (two ./dev setup in parallel must not share a half venv)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--force", action="store_true", help="install even if ready.json is fine")
    args = parser.parse_args(argv)

    override = os.environ.get("HOME_ASSISTANT_PYTHON")
    if override:
        ha_version = check(override, [], full=True)
        if ha_version is None:
            log(f"HOME_ASSISTANT_PYTHON={override} does not import homeassistant.components.mqtt")
            return 1
        log(f"using HOME_ASSISTANT_PYTHON={override} (Home Assistant {ha_version})")
        return 0

    ready_path = cache_dir() / "ready.json"
    with locked(cache_dir() / ".lock"):
        ready = read_ready(ready_path)
        if ready and not args.force and ready.get("installer") == installer_hash():
            requirements = ready.get("requirements")
            reqs = [str(r) for r in requirements] if isinstance(requirements, list) else []
            if check(str(ready.get("python")), reqs, full=False):
                log(f"ready: Home Assistant {ready.get('homeassistant')} in {ready.get('python')}")
                return 0
        candidates = candidate_interpreters()
        if not candidates:
            log(f"no Python {'.'.join(map(str, MIN_PYTHON))} or newer found")
            return 1
        log("candidates: " + ", ".join(f"{'.'.join(map(str, v))} ({p})" for v, p in candidates))
        failures = []
        for version, interpreter in candidates:
            try:
                ready = install(interpreter, version)
            except StepFailed as exc:
                log(f"Python {'.'.join(map(str, version))} failed: {exc}")
                failures.append(f"{'.'.join(map(str, version))}: {exc}")
                continue
            tmp = ready_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(ready, indent=2) + "\n")
            os.replace(tmp, ready_path)
            log(f"ready: Home Assistant {ready['homeassistant']} in {ready['python']}")
            return 0
        ready_path.unlink(missing_ok=True)
        log("no interpreter could install Home Assistant: " + "; ".join(failures))
        return 1


if __name__ == "__main__":
    sys.exit(main())
