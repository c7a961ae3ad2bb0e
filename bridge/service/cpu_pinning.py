"""Keep the bridge's threads on one CPU: the GIL hands over far more cheaply there.

CPython runs one thread at a time (the GIL). The bridge's threads (paho's network
thread, the long poll, the command workers, the deadline thread) hand the GIL and their
work to each other several times per message. When the kernel spreads them over cores,
every hand-over wakes a thread on another core: a futex wake-up across cores, the
waiting core spinning or sleeping, caches warmed again. Pinned, the bridge spends far
less CPU per command (the README's Performance section has the A/B). The bridge cannot
use a second core for Python code anyway; only what runs outside the GIL (system calls)
could.

``cpu_pin`` (``BRIDGE_CPU_PIN``): ``auto`` pins the process to the CPU it starts on, when
it may run on two or more (the scheduler put it where there was room; bridges started
side by side land on different CPUs as they would anyway); ``off`` leaves placement to
the kernel; a number pins to that CPU (for a machine laid out by hand, e.g. next to a
broker pinned elsewhere). Only ``connector-bridge run`` pins: a program that embeds
:class:`~bridge.service.controller.Bridge` owns its process and decides for itself.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("bridge")


class PinError(Exception):
    """The CPU asked for is not one this process may run on."""


def allowed_cpus() -> set[int]:
    """CPUs this process may run on (empty where the OS cannot say)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set()


def current_cpu() -> int | None:
    """The CPU this process last ran on (field 39 of /proc/self/stat), None off Linux."""
    try:
        text = Path("/proc/self/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[36])  # field 39 counted from 1; the first two are before the ")"


def choose_cpu(choice: str, allowed: set[int], current: int | None) -> int | None:
    """The CPU ``choice`` (``auto``, ``off`` or a number) means here, or None for no pin.

    Raises :class:`PinError` for a number outside ``allowed``.
    """
    if choice == "off" or not allowed:
        return None
    if choice == "auto":
        if len(allowed) < 2:
            return None  # one CPU already: nothing to gain
        return current if current in allowed else min(allowed)
    cpu = int(choice)
    if cpu not in allowed:
        raise PinError(f"CPU {cpu} is not one this process may run on {sorted(allowed)}")
    return cpu


def pin_process(choice: str) -> int | None:
    """Pin every thread of this process (and those it starts later) to the CPU ``choice``
    means; the CPU, or None when nothing was pinned."""
    cpu = choose_cpu(choice, allowed_cpus(), current_cpu())
    if cpu is None:
        return None
    # Threads inherit the affinity of the thread that starts them; pin those already
    # running too (the caller normally has none yet).
    tasks = Path("/proc/self/task")
    tids = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, {cpu})
        except (ProcessLookupError, PermissionError):
            continue  # a thread that just ended
    log.info("bridge process pinned to CPU %d (BRIDGE_CPU_PIN=off leaves it to the kernel)", cpu)
    return cpu
