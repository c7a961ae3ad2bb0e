"""How long a replica counts on its lease, and how often it renews it: the margins.

A replica holds everything it owns in the group (the leadership, its slots, its member
entry) under one etcd lease of ``ttl`` seconds. etcd deletes the lease's keys once no
renewal reached it for ``ttl`` seconds, and only then can another replica take them. So
the holder must stop counting on them *before* that, whatever happened meanwhile: etcd
unreachable, the process paused (SIGSTOP, a VM frozen), its threads starved.

The rule: a lease is valid for the holder until ``sent + ttl - margin``, where ``sent``
is when it *sent* the last grant or renewal that etcd confirmed (etcd restarted its
clock when it processed that request, which was later, and its leader changes only
extend a lease), measured on :func:`time.monotonic` (which runs on while the process is
stopped). Every check of validity reads the clock: a replica that was paused past its
deadline sees its lease gone at its very first check after resuming, before the thread
that renews it has even run. The holder therefore stops at least ``margin`` seconds
before etcd can hand what it held to another replica: two replicas never both count on
one key, provided each action begun on a check ends within ``margin`` (a channel write,
a publish: milliseconds; what can stall longer needs a fence of its own, such as the
service's closing of a replaced WebSocket).

The numbers, for ``ttl`` T (seconds; the default 5 in brackets):

============================ ============================== ==========
margin                       max(0.5, T/5)                  (1.0 s)
renewal every                (T - margin) / 4               (1.0 s)
first try of a request       clamp((T - margin) / 5, 0.2, 1) (0.8 s)
poll of the group            min(0.5, T/5)                  (0.5 s)
============================ ============================== ==========

So a lease survives about three missed renewals in a row (an etcd leader election
takes one to two seconds with etcd's default timings), a silent endpoint costs one first
try before the next endpoint is given a fair share of the time left (see
:mod:`bridge.cluster.etcd`), and a replica that dies is replaced within
T + 0.5 s (etcd checks for expired leases every 500 ms) + one poll: 6 s at the default.
A poll is one linearizable range over the group's few keys: two a second from each
replica is nothing to etcd.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

MIN_TTL = 2  # etcd's shortest lease with its default raft timings (shorter ones are raised)
MAX_TTL = 3600


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """The intervals a replica keeps for a lease of ``ttl`` seconds (see the module)."""

    ttl: int
    margin: float
    renew_every: float
    request_timeout: float
    poll_every: float

    @classmethod
    def for_ttl(cls, ttl: int) -> LeaseTiming:
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise ValueError(f"a lease TTL must be {MIN_TTL} to {MAX_TTL} seconds, not {ttl}")
        margin = max(0.5, ttl / 5)
        window = ttl - margin
        return cls(
            ttl=ttl,
            margin=margin,
            renew_every=window / 4,
            request_timeout=min(1.0, max(0.2, window / 5)),
            poll_every=min(0.5, ttl / 5),
        )

    def valid_until(self, sent: float, granted_ttl: int) -> float:
        """Until when a lease that etcd granted or renewed for ``granted_ttl`` seconds (what
        etcd said, which may be more than asked for: never count on more than that), by a
        request sent at ``sent``, may be counted on."""
        return sent + granted_ttl - self.margin


@dataclass(slots=True)
class HeldLease:
    """A lease this replica holds: its id and until when it may count on it."""

    id: int
    ttl: int
    valid_until: float
    renewed_sent: float  # when the last confirmed grant or renewal was sent

    def valid(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.valid_until

    def remaining(self, now: float | None = None) -> float:
        return self.valid_until - (time.monotonic() if now is None else now)
