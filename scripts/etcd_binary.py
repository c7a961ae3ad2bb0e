#!/usr/bin/env python3
"""Find an etcd server binary for the tests, or fetch Debian's without installing it.

Installing Debian's ``etcd-server`` package would also start a system etcd on port 2379,
so this never installs it: ``apt-get download etcd-server`` fetches the package file and
``dpkg-deb -x`` unpacks it into ``${XDG_CACHE_HOME:-~/.cache}/connector-bridge/etcd/``,
where later runs find it again. Nothing is started.

Where etcd is looked for, in order: ``$ETCD_BINARY``, ``etcd`` on ``PATH``, the cache.
Run by ``./dev setup`` (so by CI); ``tests/support/etcd.py`` calls :func:`find` and
:func:`fetch`. Standard library only. Prints the binary's path; exit 1 with a reason if
there is none and it cannot be fetched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "etcd-server"
MIN_VERSION = (3, 4)  # the v3 JSON gateway at /v3/ (3.3 had it at /v3beta/)


def log(message: str) -> None:
    print(f"[etcd] {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "connector-bridge" / "etcd"


def cached_binary() -> Path:
    return cache_dir() / "usr" / "bin" / "etcd"


def version_of(binary: str | Path) -> tuple[int, int] | None:
    """(major, minor) of an etcd binary, or None if it does not run or is not etcd."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            parts = line.split(":", 1)[1].strip().split(".")
            try:
                return int(parts[0]), int(parts[1])
            except (ValueError, IndexError):
                return None
    return None


def find() -> Path | None:
    """An etcd binary (3.4 or newer) already here, or None."""
    candidates = [os.environ.get("ETCD_BINARY"), shutil.which("etcd"), str(cached_binary())]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            version = version_of(candidate)
            if version is not None and version >= MIN_VERSION:
                return Path(candidate)
    return None


def _download(into: Path) -> Path | None:
    """The package file fetched into ``into`` (an ``apt-get update`` first if need be)."""

    def attempt() -> Path | None:
        run = subprocess.run(
            ["apt-get", "download", "-q", PACKAGE],
            cwd=into,
            capture_output=True,
            text=True,
            timeout=600,
        )
        debs = sorted(into.glob(f"{PACKAGE}_*.deb"))
        if run.returncode == 0 and debs:
            return debs[-1]
        log(f"apt-get download {PACKAGE} failed: {(run.stderr or run.stdout).strip()[-300:]}")
        return None

    deb = attempt()
    if deb is None and os.geteuid() == 0:
        log("updating the package lists (apt-get update) and trying again")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
        deb = attempt()
    return deb


def fetch() -> Path:
    """Fetch and unpack Debian's etcd into the cache; its path. RuntimeError with a reason."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError(
            "no etcd binary and no apt-get/dpkg-deb to fetch Debian's: install etcd 3.4 or "
            "newer, or set ETCD_BINARY to its path"
        )
    target = cache_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="etcd-fetch-", dir=target.parent) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # apt's sandbox user may write the file here
        deb = _download(work)
        if deb is None:
            raise RuntimeError(f"could not download Debian's {PACKAGE} package (see above)")
        unpacked = work / "root"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, timeout=300)
        if version_of(unpacked / "usr" / "bin" / "etcd") is None:
            raise RuntimeError(f"{deb.name} holds no working usr/bin/etcd")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(unpacked, target)  # another run may have raced us: the last one wins whole
    log(f"etcd unpacked from {deb.name} into {target} (no service started)")
    return cached_binary()


def main() -> int:
    found = find()
    if found is None:
        try:
            found = fetch()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            log(str(exc))
            return 1
    print(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
