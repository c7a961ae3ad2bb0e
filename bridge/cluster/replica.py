"""One replica of a group: its lease, the leadership, its slots and its member entry.

A :class:`Replica` runs one thread of its own. That thread takes a lease of ``ttl``
seconds, renews it, and polls the group (one range over ``/<group>/`` every poll,
:class:`~bridge.cluster.lease.LeaseTiming` says how often): it registers the member
entry, campaigns for ``/<group>/leader`` when no one holds it (create-if-absent with its
lease), claims and lets go of slots towards its fair share, and checks that what it
believes it holds is still under its lease. Every etcd call is bounded in time (never
past the lease's validity) and fails over between the endpoints; after a call that
failed everywhere the thread waits with the project's :class:`~bridge.core.retry.Backoff`,
never past the moment the lease runs out. It never spins: it sleeps until the next
renewal, poll or deadline.

What other threads read (:attr:`Replica.leading`, :meth:`Replica.owned_slots`) checks
the clock against the lease's validity (see :mod:`bridge.cluster.lease`), so it is right
at once, even in a process that was paused past its TTL and has just resumed, before
the replica's thread has run.

The callbacks ``on_leadership(leading)`` and ``on_slot(slot, owned)`` run on the
replica's thread, in order, once per change: a loss is reported before anything is
given back to etcd (a slot let go is deleted only after its callback returned), a gain
only after etcd confirmed it. They must be quick and must not block (hand the news to
the bridge's loop, e.g. with ``loop.call_soon_threadsafe``); while one runs no renewal
is made, though the clock checks above stay right.

Once a lease's validity ran out, it is given up for good: the replica reports every
loss, revokes it when etcd answers again (so its keys go at once, not at etcd's expiry),
takes a new lease and starts over as a new member incarnation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bridge.cluster.etcd import EtcdClient, EtcdError, KeyValue, Snapshot
from bridge.cluster.keys import GroupKeys, check_name
from bridge.cluster.lease import HeldLease, LeaseTiming
from bridge.cluster.members import ClusterView, MemberInfo, Role, default_member_id, view_from
from bridge.cluster.slots import plan
from bridge.core.retry import Backoff

log = logging.getLogger("bridge.cluster")

LeadershipCallback = Callable[[bool], None]
SlotCallback = Callable[[str, bool], None]

_MIN_WAIT = 0.01  # seconds: the shortest sleep of the replica's thread


@dataclass(slots=True)
class ReplicaCounters:
    """What a replica did, for tests and metrics."""

    leases: int = 0  # leases granted
    renewals: int = 0  # renewals etcd confirmed
    lost_leases: int = 0  # leases given up: validity ran out, or etcd no longer had it
    etcd_failures: int = 0  # calls that failed on every endpoint
    polls: int = 0
    leaderships: int = 0  # times it became leader
    slot_gains: int = 0
    slot_losses: int = 0
    callback_errors: int = 0
    # Seconds of validity that were left, at the least, when a renewal was confirmed: how
    # close the replica came to giving its lease up (None: no renewal yet).
    tightest_renewal: float | None = None


class Replica:
    """A member of ``group`` on etcd through ``client`` (see the module).

    ``slots``: the names this group shares out (e.g. ``slot_names(8)``); every replica of
    a group must be given the same. ``member_id``: unique in the group (default
    ``<host>-<pid>``); a second replica started with an id in use waits until the first
    one's entry is gone.
    """

    def __init__(
        self,
        client: EtcdClient,
        group: str,
        *,
        ttl: int = 5,
        member_id: str | None = None,
        slots: Sequence[str] = (),
        on_leadership: LeadershipCallback | None = None,
        on_slot: SlotCallback | None = None,
    ) -> None:
        self.client = client
        self.keys = GroupKeys(group)
        self.group = group
        self.timing = LeaseTiming.for_ttl(ttl)
        self.member_id = check_name(member_id or default_member_id(), "the member id")
        self.slots = tuple(check_name(s, "a slot name") for s in slots)
        if len(set(self.slots)) != len(self.slots):
            raise ValueError("slot names must be unique")
        self._on_leadership = on_leadership
        self._on_slot = on_slot
        self.info = MemberInfo.here(self.member_id)
        self.counters = ReplicaCounters()
        self._backoff = Backoff(base=self.timing.renew_every / 4, cap=self.timing.renew_every)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()  # a step-down to report: the thread runs now
        self._thread: threading.Thread | None = None
        # Owned by the replica's thread; read under _lock by others.
        self._lease: HeldLease | None = None
        self._leading = False
        self._term: int | None = None
        self._owned: set[str] = set()
        # The replica's thread only.
        self._abandoned: list[HeldLease] = []  # leases given up, to revoke when etcd answers
        self._registered = False
        self._releasing: set[str] = set()  # slots let go whose key is not deleted yet
        self._published: MemberInfo | None = None
        self._next_renewal = 0.0
        self._next_poll = 0.0
        self._id_taken_logged = False
        # A step-down (see step_down): report it; let the leader key go at _resign_at; no
        # campaign before _campaign_after.
        self._stepped_down = False
        self._resign_at: float | None = None
        self._campaign_after = 0.0
        self.step_downs = 0

    # ---- what the rest of the bridge reads --------------------------------------------

    @property
    def leading(self) -> bool:
        """Whether this replica leads now: it holds the leader key under a lease that is
        still valid by the clock (a paused process sees False at its first check)."""
        with self._lock:
            return self._leading and self._lease is not None and self._lease.valid()

    @property
    def term(self) -> int | None:
        """While leading: the leader key's create revision, which grows with every new
        leadership in the group (a fencing token); None otherwise."""
        with self._lock:
            valid = self._leading and self._lease is not None and self._lease.valid()
            return self._term if valid else None

    def owned_slots(self) -> frozenset[str]:
        """The slots this replica owns now (empty once its lease's validity ran out)."""
        with self._lock:
            if self._lease is None or not self._lease.valid():
                return frozenset()
            return frozenset(self._owned)

    def owns(self, slot: str) -> bool:
        return slot in self.owned_slots()

    @property
    def lease_id(self) -> int | None:
        with self._lock:
            return self._lease.id if self._lease is not None else None

    def lease_remaining(self) -> float:
        """Seconds this replica may still count on its lease (0: it holds none); for
        ``/readyz`` and metrics."""
        with self._lock:
            return max(0.0, self._lease.remaining()) if self._lease is not None else 0.0

    def step_down(self, hold_off: float) -> bool:
        """Stop leading now, without giving the leadership to anyone at once: the leader
        key stays under this replica's lease for one more TTL (so that no other member
        takes the channel before every replica that may still believe it leads has seen
        its own lease run out), then it is deleted and the others campaign. This replica
        does not campaign again for ``hold_off`` seconds. Its lease and slots stay.
        For the service's 1001 (another consumer took the channel). False if it did not
        lead. The loss is reported on the replica's thread, like every other."""
        with self._lock:
            if not self._leading:
                return False
            self._leading, self._term = False, None
            now = time.monotonic()
            self._resign_at = now + self.timing.ttl
            self._campaign_after = max(self._campaign_after, now + hold_off)
            self._stepped_down = True
            self.step_downs += 1
        log.warning("cluster %s: steps down; the leader key goes in %d s, no campaign for "
                    "%.0f s", self.member_id, self.timing.ttl, hold_off)  # fmt: skip
        self._wake.set()
        return True

    def view(self) -> ClusterView:
        """The whole group as etcd holds it now (one range through this replica's client)."""
        until = time.monotonic() + self.timing.request_timeout * len(self.client.endpoints)
        snapshot = self.client.get_range(*self.keys.coordination, until=until)
        return view_from(snapshot, self.group, self.slots)

    # ---- life cycle -------------------------------------------------------------------

    def start(self) -> Replica:
        if self._thread is not None:
            raise RuntimeError("the replica was started already")
        self._thread = threading.Thread(
            target=self._run, name=f"cluster-{self.member_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Leave the group: report every loss, then revoke the lease (its keys go at once,
        so the others take over at their next poll)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> Replica:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the replica's thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.wait(self._step())
                self._wake.clear()
        finally:
            self._leave()

    def _step(self) -> float:
        """One round: what is due now; returns the seconds until something is due."""
        if self._stepped_down:
            self._stepped_down = False
            self._tell_leadership(False)
        try:
            lease = self._lease
            if lease is not None and not lease.valid():
                self._give_up(lease, "no renewal confirmed in time")
            self._revoke_abandoned()
            if self._lease is None:
                self._take_lease()
            elif time.monotonic() >= self._next_renewal:
                self._renew()
            if self._lease is not None and time.monotonic() >= self._next_poll:
                self._poll()
        except EtcdError as exc:
            self.counters.etcd_failures += 1
            delay = self._backoff.failed()
            level = logging.WARNING if self._backoff.failures == 1 else logging.DEBUG
            log.log(level, "cluster %s: etcd: %s (again in %.2fs)", self.member_id, exc, delay)
            if self._lease is not None:
                delay = min(delay, self._lease.remaining())
            return max(_MIN_WAIT, delay)
        self._backoff.succeeded()
        now = time.monotonic()
        due = min(self._next_renewal, self._next_poll)
        if self._lease is not None:
            due = min(due, self._lease.valid_until)
        return max(_MIN_WAIT, due - now)

    def _call_budget(self) -> float:
        """Until when a call made without a lease may try (every endpoint once)."""
        return time.monotonic() + self.timing.request_timeout * len(self.client.endpoints)

    # ---- the lease

    def _take_lease(self) -> None:
        sent = time.monotonic()
        granted = self.client.grant(self.timing.ttl, until=self._call_budget())
        lease = HeldLease(
            id=granted.id,
            ttl=granted.ttl,
            valid_until=self.timing.valid_until(sent, granted.ttl),
            renewed_sent=sent,
        )
        if not lease.valid():
            self._abandoned.append(lease)
            raise EtcdError("a lease grant took longer than the lease is good for", kind="timeout")
        with self._lock:
            self._lease = lease
        self.counters.leases += 1
        self._registered = False
        self._releasing.clear()
        self._published = None
        self._resign_at = None  # the old lease's leader key went with it
        self._next_renewal = sent + self.timing.renew_every
        self._next_poll = 0.0
        log.info(
            "cluster %s: lease %x (%d s) via %s",
            self.member_id,
            lease.id,
            lease.ttl,
            self.client.endpoint,
        )

    def _renew(self) -> None:
        lease = self._lease
        assert lease is not None
        sent = time.monotonic()
        ttl = self.client.keepalive(lease.id, until=lease.valid_until)
        if ttl <= 0:
            self._give_up(lease, "etcd no longer has it (expired or revoked)")
            return
        with self._lock:
            late = not lease.valid()  # ran out while the answer was on its way
            if not late:
                left = lease.remaining()
                tightest = self.counters.tightest_renewal
                self.counters.tightest_renewal = left if tightest is None else min(tightest, left)
                renewed = self.timing.valid_until(sent, ttl)
                lease.valid_until = max(lease.valid_until, renewed)
                lease.renewed_sent = sent
        if late:
            self._give_up(lease, "the renewal came back too late")
            return
        self.counters.renewals += 1
        self._next_renewal = sent + self.timing.renew_every

    def _give_up(self, lease: HeldLease, reason: str) -> None:
        """The lease no longer counts: report every loss, keep its id to revoke it."""
        with self._lock:
            if self._lease is not lease:
                return
            self._lease = None
            was_leading, self._leading, self._term = self._leading, False, None
            lost, self._owned = sorted(self._owned), set()
        self.counters.lost_leases += 1
        self._abandoned.append(lease)
        log.warning(
            "cluster %s: lease %x given up: %s%s",
            self.member_id,
            lease.id,
            reason,
            " (was leader)" if was_leading else "",
        )
        if was_leading:
            self._tell_leadership(False)
        for slot in lost:
            self._tell_slot(slot, False)
        self._registered = False

    def _revoke_abandoned(self) -> None:
        """Revoke the leases given up (so their keys go now, not at etcd's expiry); one
        that etcd has surely dropped by itself is forgotten without a call."""
        while self._abandoned:
            lease = self._abandoned[0]
            if time.monotonic() < lease.renewed_sent + lease.ttl + 1.0:
                try:
                    self.client.revoke(lease.id, until=self._call_budget())
                except EtcdError as exc:
                    if exc.transient:
                        raise
                    log.warning("cluster %s: lease %x not revoked: %s", self.member_id,
                                lease.id, exc)  # fmt: skip
            self._abandoned.pop(0)

    # ---- the poll

    def _poll(self) -> None:
        lease = self._lease
        assert lease is not None
        until = lease.valid_until
        snapshot = self.client.get_range(*self.keys.coordination, until=until)
        self.counters.polls += 1
        if self._register(snapshot, lease, until):
            self._check_leadership(snapshot, lease, until)
            self._check_slots(snapshot, lease, until)
            self._publish(lease, until)
        self._next_poll = time.monotonic() + self.timing.poll_every

    def _register(self, snapshot: Snapshot, lease: HeldLease, until: float) -> bool:
        key = self.keys.member(self.member_id)
        entry = snapshot.get(key)
        if entry is not None and entry.lease == lease.id:
            self._registered = True
            return True
        if entry is None:
            created, holder = self.client.create(key, self.info.to_json(), lease=lease.id,
                                                 until=until)  # fmt: skip
            if created or (holder is not None and holder.lease == lease.id):
                self._registered = True
                self._published = self.info
                self._id_taken_logged = False
                return True
        if not self._id_taken_logged:
            log.error(
                "cluster %s: another replica is registered with this member id; waiting "
                "until its entry is gone (at most its lease's TTL if it is dead)",
                self.member_id,
            )
            self._id_taken_logged = True
        return False

    def _mine(self, kv: KeyValue | None, lease: HeldLease) -> bool:
        return kv is not None and kv.lease == lease.id

    def _check_leadership(self, snapshot: Snapshot, lease: HeldLease, until: float) -> None:
        holder = snapshot.get(self.keys.leader)
        if self._resign_at is not None:  # stepped down: the key goes after one TTL
            if not self._mine(holder, lease):
                self._resign_at = None
            elif time.monotonic() >= self._resign_at:
                self.client.delete_own(self.keys.leader, lease=lease.id, until=until)
                self._resign_at = None
                log.info("cluster %s: leader key let go after stepping down", self.member_id)
            return
        if self._leading and not self._mine(holder, lease):
            with self._lock:
                self._leading, self._term = False, None
            log.warning("cluster %s: the leader key is no longer ours", self.member_id)
            self._tell_leadership(False)
        if holder is None and time.monotonic() < self._campaign_after:
            return
        if holder is None:
            _, holder = self.client.create(
                self.keys.leader, self.member_id, lease=lease.id, until=until
            )
        if not self._leading and self._mine(holder, lease):
            assert holder is not None
            with self._lock:
                if not lease.valid() or self._lease is not lease:
                    return
                self._leading, self._term = True, holder.create_revision
            self.counters.leaderships += 1
            log.info("cluster %s: leader of %s (term %d)", self.member_id, self.group,
                     holder.create_revision)  # fmt: skip
            self._tell_leadership(True)

    def _check_slots(self, snapshot: Snapshot, lease: HeldLease, until: float) -> None:
        names = set(self.slots)
        held = {kv.key[len(self.keys.slots) :]: kv for kv in snapshot.under(self.keys.slots)}
        mine = {s for s, kv in held.items() if kv.lease == lease.id and s in names}
        self._releasing &= mine
        deleted = set()
        for slot in sorted(self._releasing):  # let go before, its delete not yet confirmed
            self.client.delete_own(self.keys.slot(slot), lease=lease.id, until=until)
            self._releasing.discard(slot)
            deleted.add(slot)
        mine -= deleted
        for slot in sorted(self._owned - mine):  # deleted or overwritten by someone else
            self._lose_slot(slot, "its key is no longer ours")
        for slot in sorted(mine - self._owned):  # a claim whose answer was lost
            self._gain_slot(slot, lease)
        taken = {s for s, kv in held.items() if kv.lease != lease.id} | deleted  # not ours
        members = sum(1 for _ in snapshot.under(self.keys.members))
        todo = plan(self.member_id, self.slots, self._owned, taken, members)
        for slot in todo.release:
            self._lose_slot(slot, "handed over to even out the load")
            self._releasing.add(slot)  # not ours any more, even if the delete fails
            self.client.delete_own(self.keys.slot(slot), lease=lease.id, until=until)
            self._releasing.discard(slot)
        gained = 0
        for slot in todo.candidates:  # best first; another member may be quicker for some
            if gained >= todo.wanted:
                break
            _, holder = self.client.create(
                self.keys.slot(slot), self.member_id, lease=lease.id, until=until
            )
            if self._mine(holder, lease):
                self._gain_slot(slot, lease)
                gained += 1

    def _gain_slot(self, slot: str, lease: HeldLease) -> None:
        with self._lock:
            if not lease.valid() or self._lease is not lease:
                return
            self._owned.add(slot)
        self.counters.slot_gains += 1
        log.info("cluster %s: owns slot %s", self.member_id, slot)
        self._tell_slot(slot, True)

    def _lose_slot(self, slot: str, why: str) -> None:
        with self._lock:
            self._owned.discard(slot)
        log.info("cluster %s: lets slot %s go: %s", self.member_id, slot, why)
        self._tell_slot(slot, False)

    def _publish(self, lease: HeldLease, until: float) -> None:
        """Keep the member entry's role and slots up to date."""
        with self._lock:
            role: Role = "leader" if self._leading else "follower"
            owned = tuple(sorted(self._owned))
        info = MemberInfo(self.info.id, self.info.host, self.info.pid, self.info.started,
                          role, owned)  # fmt: skip
        if info != self._published:
            key = self.keys.member(self.member_id)
            if self.client.replace_own(key, info.to_json(), lease=lease.id, until=until):
                self._published = info

    # ---- leaving

    def _leave(self) -> None:
        lease = self._lease
        with self._lock:
            self._lease = None
            was_leading, self._leading, self._term = self._leading, False, None
            lost, self._owned = sorted(self._owned), set()
        if was_leading:
            self._tell_leadership(False)
        for slot in lost:
            self._tell_slot(slot, False)
        if lease is not None:
            self._abandoned.append(lease)
        try:
            self._revoke_abandoned()
        except EtcdError as exc:
            log.warning("cluster %s: lease not revoked on leaving: %s (etcd drops it after "
                        "its TTL)", self.member_id, exc)  # fmt: skip
        log.info("cluster %s: left %s", self.member_id, self.group)

    # ---- callbacks

    def _tell_leadership(self, leading: bool) -> None:
        if self._on_leadership is None:
            return
        try:
            self._on_leadership(leading)
        except Exception:
            self.counters.callback_errors += 1
            log.exception("cluster %s: on_leadership(%s) failed", self.member_id, leading)

    def _tell_slot(self, slot: str, owned: bool) -> None:
        if not owned:
            self.counters.slot_losses += 1
        if self._on_slot is None:
            return
        try:
            self._on_slot(slot, owned)
        except Exception:
            self.counters.callback_errors += 1
            log.exception("cluster %s: on_slot(%s, %s) failed", self.member_id, slot, owned)
