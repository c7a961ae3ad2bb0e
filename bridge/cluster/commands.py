"""Commands spread over a group of bridges, each carried out once and answered once.

This is the gate of the bridge's one command path (:class:`CommandSlots`, the
:class:`~bridge.extensions.commands.CommandGate` of
:class:`~bridge.extensions.commands.Commands`): the extension does everything it does
for a single bridge (envelopes, expiry and retry options, device lines, retries, the
endpoint checks, the republish of read values); the gate adds where commands come
from, the async id, the in-flight record and the claim of the one reply.

**Command slots.** A group shares out a fixed set of slots (``cmd-0`` ... ``cmd-<n-1>``,
:func:`~bridge.cluster.slots.slot_names`) through :class:`~bridge.cluster.replica.Replica`.
Slot ``s`` is an MQTT client with the fixed id ``<BRIDGE_MQTT_CLIENT_ID>-<s>`` and a
persistent session (MQTT 5 Clean Start off, ``BRIDGE_MQTT_SESSION_EXPIRY``), subscribed
to the command filters as the MQTT 5 shared subscription ``$share/<group>/<filter>``:
the broker gives each command to one slot. The replica that owns a slot runs its
client (``SlotChanged``): on gaining it, it connects with that id, so Mosquitto hands it
the session's unacknowledged and queued commands (Mosquitto 2.0 keeps a dead member's
commands in its session until the id connects again); on losing it, it disconnects at
once and takes no more of its commands. The broker itself fences a slot: one client id
is connected once. The slot's client hands its commands to :meth:`Commands.take`, which
acknowledges them through that client as the main link's today. MQTT 3.1.1 has no
shared subscriptions: a replica refuses to start, naming ``BRIDGE_MQTT_PROTOCOL``.

**Async responses reach the slot.** A command's device request carries the async id
``s<slot index>-<uuid>`` (the port's ``async_id``, every try the same). Only the leader
holds the channel; its client answers its own callers and hands every other response
(``asyncRelay``) to ``<prefix>/$bridge/cluster/async/<slot>`` (QoS 1, not retained),
which each slot's client subscribes to without sharing. Whoever owns the slot then, the
caller or a survivor that took the slot over after the caller died, gets it; the broker
keeps it in the slot's session while no one does.

**Exactly once.** Just before the device request goes out (in the command's turn), its
record (the reply target and identity) is written to etcd at
``/<group>/inflight/<slot>/<async id>/cmd``, fenced: only while the slot's key is under
this replica's lease. A replica gaining a slot reads the slot's records before it
connects (so a fenced write either came before and is read, or fails): a command the
broker delivers again (DUP, the same packet id and bytes) that has a record is not sent
again; its answer comes on the slot's topic, or its time-out, and the record answers it.
The one reply is published by whoever turns the record into ``.../<async id>/answered``
first (one etcd transaction: delete the record if it exists, put the mark), so a caller
and a survivor never both answer; then the command is acknowledged. Marks live under a
short lease (a minute or two): a copy the broker resends of an answered command is
acknowledged, not carried out again. Two etcd writes per command.

What remains (counted by the tests as exceptions): a replica killed after its record
was written and before the service took the request: the survivor waits for an answer
that never comes and replies 504 (answered once, not carried out); killed after the
``answered`` mark and before its reply reached the broker: no reply (carried out
once); killed after a bridge error reply and before its ack: the command is answered
twice (the bridge's own refusal; nothing was carried out); the leader killed with an
async response the service had sent it on the WebSocket (which has no acknowledgement)
and that it had not yet handed on: the device carried the command out, the reply is a
504 (the caller's time-out, or the survivor's for the record). A command that waits in
the bridge for a sleeping device is acknowledged early (as for a single bridge): a
replica killed meanwhile loses it; the survivor replies 504 for its record. etcd
without a leader for longer than :data:`STORE_PATIENCE`: a record not written is
refused (503), a claim not made leaves the command unanswered.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import heapq
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

from bridge.cluster.etcd import EtcdClient, EtcdError
from bridge.cluster.keys import GroupKeys
from bridge.connector.api import connector
from bridge.downstream.link import Inbound, MqttLink
from bridge.downstream.topics import (
    BRIDGE_LEVEL,
    Topics,
)
from bridge.service.settings import Settings, env_name
from bridge.upstream.port import Outcome, outcome_of

log = logging.getLogger("bridge.cluster.commands")
T = TypeVar("T")

_ASYNC_ID = re.compile(r"s(\d{1,5})-[0-9a-f]{32}")
ANSWERED_KEPT = 60.0  # seconds an answered record is kept for a late redelivery
RECORD_MARGIN = 1.0  # seconds a survivor waits beyond a record's own time-out
LEGACY_REFUSAL = (
    "a group of bridges carries out commands on today's Device Management only (device "
    "requests): the legacy Connector names the async ids itself; run one bridge for it"
)
STORE_PATIENCE = 6.0  # seconds a record or a claim is tried again while etcd has no leader


def make_async_id(index: int) -> str:
    """An async id naming its slot: ``s<index>-<32 hex>`` (the service allows 40 of
    ``[\\w-]``)."""
    return f"s{index}-{uuid.uuid4().hex}"


def slot_index_of(async_id: str) -> int | None:
    m = _ASYNC_ID.fullmatch(async_id)
    return int(m.group(1)) if m else None


def async_topic(prefix: str, slot: str) -> str:
    return f"{prefix}/{BRIDGE_LEVEL}/cluster/async/{slot}"


def slot_client_id(base: str, slot: str) -> str:
    return f"{base}-{slot}"


def digest(msg: Inbound) -> str:
    h = hashlib.sha256(msg.topic.encode())
    h.update(b"\0" + msg.payload + b"\0" + (msg.correlation_data or b""))
    return h.hexdigest()[:32]


@dataclass(slots=True)
class Record:
    """What a survivor needs to answer a command taken by another replica."""

    mid: int
    digest: str
    topic: str
    response_topic: str | None
    correlation: str | None  # base64
    transaction: Any
    dup: bool
    deadline: float  # wall clock (the replicas may be on different machines)
    owner: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes) -> Record:
        return cls(**json.loads(raw))

    @property
    def correlation_data(self) -> bytes | None:
        return base64.b64decode(self.correlation) if self.correlation else None


def _patiently(call: Callable[[], T]) -> T:
    """``call`` tried again on a transient etcd failure for :data:`STORE_PATIENCE` s
    (a member lost: the others elect a new raft leader within a second or two)."""
    end = time.monotonic() + STORE_PATIENCE
    while True:
        try:
            return call()
        except EtcdError as exc:
            if not exc.transient or time.monotonic() + 0.2 > end:
                raise
            time.sleep(0.2)


class InflightStore:
    """The in-flight records of a group's command slots in etcd.

    Each thread has a client of its own, like ``client`` (an :class:`EtcdClient` makes
    one call at a time: the command workers and the claims would wait for each other).
    """

    def __init__(self, client: EtcdClient, group: str) -> None:
        self._template = client
        self._local = threading.local()
        self.keys = GroupKeys(group)
        self.root = f"/{group}/inflight/"
        self._lease_lock = threading.Lock()
        self._lease: tuple[int, float] | None = None  # id, monotonic time to grant anew

    @property
    def client(self) -> EtcdClient:
        c: EtcdClient | None = getattr(self._local, "client", None)
        if c is None:
            t = self._template
            c = self._local.client = EtcdClient(t.endpoints, timeout=t.timeout)
        return c

    def _base(self, slot: str, aid: str) -> str:
        return f"{self.root}{slot}/{aid}/"

    def put(self, slot: str, aid: str, record: Record, *, lease: int) -> bool:
        """Write the record while ``slot`` is ours (under ``lease``); whether it was."""
        return _patiently(lambda: self.client.put_if_held(
            self._base(slot, aid) + "cmd", record.to_json(), holder=self.keys.slot(slot),
            lease=lease))  # fmt: skip

    def load(self, slot: str) -> tuple[dict[str, Record], set[tuple[int, str]]]:
        """The slot's records by async id, and the (packet id, digest) of the commands
        marked answered lately."""
        found: dict[str, Record] = {}
        answered: set[tuple[int, str]] = set()
        for kv in self.client.get_prefix(f"{self.root}{slot}/").kvs:
            aid, _, part = kv.key[len(self.root) + len(slot) + 1 :].partition("/")
            with contextlib.suppress(ValueError, TypeError, KeyError):
                if part == "cmd":
                    found[aid] = Record.from_json(kv.value)
                elif part == "answered":
                    mark = json.loads(kv.value)
                    answered.add((int(mark["mid"]), str(mark["digest"])))
        return found, answered

    def claim(self, slot: str, aid: str, me: str, record: Record) -> bool:
        """Whether ``me`` is the one to publish the reply: the first to turn the record
        into its ``answered`` mark (one transaction), kept under a short-lived lease of
        this store (:data:`ANSWERED_KEPT` to twice that) for a late redelivery."""
        base = self._base(slot, aid)
        # One claim, one mark: a retry of this claim that finds its own first try done
        # counts as won (EtcdClient.move), a second claim of the same replica (its own
        # call, and the record it read back on regaining the slot) does not.
        mark = json.dumps({"by": me, "mid": record.mid, "digest": record.digest,
                           "claim": uuid.uuid4().hex[:16]})  # fmt: skip
        lease = _patiently(self._mark_lease)
        return _patiently(lambda: self.client.move(base + "cmd", base + "answered", mark,
                                                   lease=lease))  # fmt: skip

    def _mark_lease(self) -> int:
        """A lease for ``answered`` marks, granted anew every :data:`ANSWERED_KEPT`
        seconds (no renewals: each mark vanishes within twice that)."""
        now = time.monotonic()
        with self._lease_lock:
            if self._lease is None or now >= self._lease[1]:
                granted = self.client.grant(int(2 * ANSWERED_KEPT))
                self._lease = (granted.id, now + ANSWERED_KEPT)
            return self._lease[0]


@dataclass(slots=True)
class _Taken:
    """A record of a slot taken over: a command another replica (or an earlier life of
    this one) sent, which this replica answers when its answer or its time-out comes."""

    slot: str
    aid: str
    record: Record
    deadline: float  # monotonic
    msgs: list[Inbound] = field(default_factory=list)  # acknowledged once answered


@dataclass(slots=True)
class _Own:
    """A command this replica sent through one of its slots, until it is answered."""

    slot: str
    record: Record
    relay: Inbound | None = None  # the relayed answer, acknowledged once the reply is out
    copies: list[Inbound] = field(default_factory=list)  # resent while it was under way


@dataclass(slots=True)
class _Slot:
    name: str
    index: int
    link: MqttLink | None = None
    live: bool = True
    answered: dict[tuple[int, str], float] = field(default_factory=dict)  # -> kept until


class ReplyForRecord(Protocol):
    def __call__(
        self,
        topic: str,
        outcome: Outcome,
        *,
        response_topic: str | None,
        correlation_data: bytes | None,
        transaction: Any,
        dup: bool,
        ack: Callable[[], object] | None = None,
    ) -> None: ...


class CommandSlots:
    """A replica's command slots, the gate of the bridge's command path
    (:class:`bridge.extensions.commands.CommandGate`; see the module doc).

    The seam: :meth:`slot_gained` and :meth:`slot_lost` (the ``SlotChanged`` events);
    :meth:`attach` gives the command extension's ``take`` (where the slots' commands go)
    and ``reply_for`` (the reply to a taken-over record); the connector ``client`` (its
    ``asyncRelay`` is set here: only the leader's has a channel); the main ``mqtt`` link
    (relayed async responses go out on it). ``lease`` gives the replica's lease id (the
    fence of the records).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: InflightStore,
        slots: Sequence[str],
        member_id: str,
        client: connector,
        mqtt: MqttLink,
        lease: Callable[[], int | None],
        claim_workers: int = 8,
    ) -> None:
        if settings.mqtt_protocol != "5":
            raise ValueError(
                "a group of bridges shares commands with MQTT 5 shared subscriptions, which "
                f"MQTT 3.1.1 lacks: set {env_name('mqtt_protocol')}=5 (or run one bridge, "
                f"without {env_name('cluster_etcd')})"
            )
        if settings.mqtt_session_expiry <= 0:
            raise ValueError(
                f"command slots need persistent sessions: {env_name('mqtt_session_expiry')} > 0"
            )
        self.settings = settings
        self.store = store
        self.group = store.keys.group
        self.member_id = member_id
        self.client = client
        self.mqtt = mqtt
        self.topics = Topics(settings.topic_prefix)
        self.lease = lease
        self._index = {name: i for i, name in enumerate(slots)}
        self._names = list(slots)
        self._take: Callable[[Inbound, str], None] | None = None
        self._reply_for: ReplyForRecord | None = None
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._own: dict[str, _Own] = {}  # async id -> a command sent here
        self._taken: dict[str, _Taken] = {}  # async id -> a record taken over
        self._heap: list[tuple[float, str]] = []
        self._claims = ThreadPoolExecutor(claim_workers, thread_name_prefix="slot-claim")
        self._events = ThreadPoolExecutor(1, thread_name_prefix="slot-events")
        self._stopping = threading.Event()
        self._timer = threading.Thread(target=self._expire_loop, name="slot-timer", daemon=True)
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "recorded", "replies", "redelivered_recorded", "redelivered_answered",
                "taken_over", "relayed_out", "relayed_in", "claims_lost", "fenced",
                "taken_over_timeouts", "store_errors", "unknown_async", "answered_before_gain",
            ),
            0,
        )  # fmt: skip

    def attach(self, take: Callable[[Inbound, str], None], reply_for: ReplyForRecord) -> None:
        self._take, self._reply_for = take, reply_for

    def start(self) -> None:
        self.client.asyncRelay = self._relay
        self._timer.start()

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    # ---- slots (SlotChanged, any thread; handled in order on one thread) ---------------

    def slot_gained(self, slot: str) -> None:
        if not self._stopping.is_set():
            self._events.submit(self._gain, slot)

    def slot_lost(self, slot: str) -> None:
        with self._lock:
            state = self._slots.get(slot)
            if state is not None:
                state.live = False  # at once: no new command of it is taken from now on
        if not self._stopping.is_set():
            self._events.submit(self._lose, slot)

    def owned(self) -> list[str]:
        with self._lock:
            return sorted(s for s, st in self._slots.items() if st.live)

    def _gain(self, slot: str) -> None:
        if self._stopping.is_set() or slot in self._slots:
            return
        state = _Slot(slot, self._index[slot])
        # The records first: a fenced write of the slot's previous owner came before our
        # claim and is read now, or it fails.
        try:
            records, answered = self.store.load(slot)
        except EtcdError as exc:
            log.error("slot %s: in-flight records not read (%s); taking it anyway", slot, exc)
            records, answered = {}, set()
        now, wall = time.monotonic(), time.time()
        with self._lock:
            self._slots[slot] = state
            for key in answered:  # its reply went out, or its replica died on the way
                state.answered[key] = now + ANSWERED_KEPT
            self.counters["answered_before_gain"] += len(answered)
            for aid, rec in records.items():
                if aid not in self._own and aid not in self._taken:
                    due = now + max(0.0, rec.deadline - wall)
                    self._taken[aid] = _Taken(slot, aid, rec, due)
                    heapq.heappush(self._heap, (due, aid))
                    self.counters["taken_over"] += 1
        s = self.settings
        client_id = slot_client_id(s.mqtt_client_id, slot)
        link = MqttLink(
            s.model_copy(update={"mqtt_client_id": client_id}),
            state_topic=f"{s.topic_prefix}/{BRIDGE_LEVEL}/cluster/slot/{slot}",
            manual_ack=True,
        )
        arrive = functools.partial(self._arrive, state)
        for topic_filter in self.topics.command_filters(s.max_path_depth):
            link.subscribe(topic_filter, arrive, qos=1, manual_ack=True, share=self.group)
        relayed = functools.partial(self._relayed, state)
        link.subscribe(async_topic(s.topic_prefix, slot), relayed, qos=1, manual_ack=True)
        state.link = link
        link.start()
        log.info("slot %s: client %s connecting", slot, client_id)

    def _lose(self, slot: str) -> None:
        with self._lock:
            state = self._slots.pop(slot, None)
        if state is None or state.link is None:
            return
        state.live = False
        state.link.stop(timeout=0.5)
        log.info("slot %s: client disconnected", slot)

    def stop(self) -> None:
        """After the command extension stopped: the claims under way end, then the slots'
        clients disconnect (their sessions keep what is not acknowledged)."""
        self._stopping.set()
        self._events.shutdown(wait=True)
        self._claims.shutdown(wait=True)
        for slot in list(self._slots):
            self._lose(slot)
        self.client.asyncRelay = None
        log.info("cluster commands of %s: %s", self.member_id,
                 json.dumps(self.counters, separators=(",", ":")))  # fmt: skip

    def _arrive(self, state: _Slot, msg: Inbound) -> None:
        """A command of a slot (paho's network thread): the extension takes it."""
        if not state.live:
            return  # not ours any more: left unacknowledged for the slot's next owner
        assert self._take is not None
        self._take(msg, state.name)

    # ---- the gate's hooks -----------------------------------------------------------

    def known(self, slot: str, msg: Inbound) -> bool:
        key = (msg.mid, digest(msg))
        with self._lock:
            state = self._slots.get(slot)
            if state is not None and key in state.answered:
                self.counters["redelivered_answered"] += 1
                answered = True
            else:
                answered = False
                for t in self._taken.values():
                    if t.slot == slot and (t.record.mid, t.record.digest) == key:
                        t.msgs.append(msg)  # acknowledged when it is answered
                        self.counters["redelivered_recorded"] += 1
                        return True
                # Its own, still under way (the slot went and came back meanwhile).
                for own in self._own.values():
                    if own.slot == slot and (own.record.mid, own.record.digest) == key:
                        own.copies.append(msg)
                        self.counters["redelivered_recorded"] += 1
                        return True
        if answered:
            msg.ack()
        return answered

    def before(
        self, slot: str, msg: Inbound, cmd: Any, transaction: Any, timeout: float
    ) -> str | Outcome | None:
        with self._lock:
            state = self._slots.get(slot)
        if state is None or not state.live:
            self._count("fenced")
            return None
        if self.client.api != "current":
            # The legacy Connector makes its async ids itself: none could name the slot.
            return Outcome(False, 501, None, LEGACY_REFUSAL)
        lease = self.lease()
        aid = make_async_id(state.index)
        rec = Record(msg.mid, digest(msg), msg.topic, msg.response_topic,
                     base64.b64encode(msg.correlation_data).decode() if msg.correlation_data
                     else None, transaction, msg.dup, time.time() + timeout + RECORD_MARGIN,
                     self.member_id)  # fmt: skip
        with self._lock:
            self._own[aid] = _Own(slot, rec)
        try:
            put = lease is not None and self.store.put(slot, aid, rec, lease=lease)
        except EtcdError as exc:
            self._drop_own(aid)
            self._count("store_errors")
            return Outcome(False, 503, None, f"the group's store (etcd) is unreachable: {exc}")
        if not put:
            self._drop_own(aid)
            self._count("fenced")  # the slot is no longer ours: its next owner takes it
            return None
        self._count("recorded")
        return aid

    def _drop_own(self, aid: str) -> None:
        with self._lock:
            self._own.pop(aid, None)

    def finish(self, slot: str, async_id: str, reply: Callable[[bool], None]) -> None:
        self._submit(self._finish, async_id, reply)

    def _submit(self, fn: Callable[..., object], *args: Any) -> None:
        """On a claim worker (an etcd transaction: not on the channel's thread)."""
        try:
            self._claims.submit(fn, *args)
        except RuntimeError:  # stopping: here
            fn(*args)

    def _finish(self, aid: str, reply: Callable[[bool], None]) -> None:
        with self._lock:
            own = self._own.pop(aid, None)
        if own is None:
            reply(False)
            return
        won = self._claim(own.slot, aid, own.record)
        try:
            reply(won)
        finally:
            for msg in (own.relay, *own.copies):
                if msg is not None:
                    msg.ack()
        if won:
            self._answered(own.slot, own.record)

    def _claim(self, slot: str, aid: str, record: Record) -> bool:
        try:
            won = self.store.claim(slot, aid, self.member_id, record)
        except EtcdError as exc:
            log.error("command %s: not answered, the store is unreachable: %s", aid, exc)
            self._count("store_errors")
            return False
        self._count("replies" if won else "claims_lost")
        return won

    def _answered(self, slot: str, rec: Record) -> None:
        with self._lock:
            state = self._slots.get(slot)
            if state is not None:
                state.answered[(rec.mid, rec.digest)] = time.monotonic() + ANSWERED_KEPT

    # ---- async responses: the leader relays, the slot's owner answers -----------------

    def _relay(self, entry: dict[str, Any]) -> bool:
        """The channel's answer no caller here waits for (the leader's channel thread)."""
        aid = str(entry.get("id"))
        index = slot_index_of(aid)
        if index is None or index >= len(self._names):
            return False
        with self._lock:
            taken = self._taken.pop(aid, None)
        if taken is not None:  # a record taken over here
            self._submit(self._answer_taken, taken, self._outcome(entry), None)
            return True
        payload = json.dumps(entry, separators=(",", ":"))
        self.mqtt.publish(async_topic(self.settings.topic_prefix, self._names[index]), payload,
                          qos=1, retain=False)  # fmt: skip
        self._count("relayed_out")
        return True

    @staticmethod
    def _outcome(entry: dict[str, Any]) -> Outcome:
        return outcome_of(connector.resultOfAsyncResponse(entry))

    def _relayed(self, state: _Slot, msg: Inbound) -> None:
        """An answer the leader relayed to this slot (network thread)."""
        try:
            entry = json.loads(msg.payload)
            aid = str(entry["id"])
        except (ValueError, KeyError, TypeError):
            msg.ack()
            return
        self._count("relayed_in")
        with self._lock:
            own = self._own.get(aid)
            if own is not None:
                own.relay = msg  # acknowledged once answered: a crash before gets it again
            taken = self._taken.pop(aid, None) if own is None else None
        if own is not None and self.client.awaitsAsync(aid):
            self.client.deliverAsyncResponses([entry])  # the caller's own handling
        elif taken is not None:
            self._submit(self._answer_taken, taken, self._outcome(entry), msg)
        else:  # answered already (a time-out, another replica), or not a command's
            self._count("unknown_async")
            msg.ack()

    def _answer_taken(self, taken: _Taken, outcome: Outcome, relay: Inbound | None) -> None:
        rec = taken.record
        won = self._claim(taken.slot, taken.aid, rec)
        if won and self._reply_for is not None:
            self._reply_for(
                rec.topic, outcome, response_topic=rec.response_topic,
                correlation_data=rec.correlation_data, transaction=rec.transaction, dup=rec.dup,
            )  # fmt: skip
            self._answered(taken.slot, rec)
        for msg in [*taken.msgs, relay]:
            if msg is not None:
                msg.ack()

    def _expire_loop(self) -> None:
        while not self._stopping.wait(0.2):
            now = time.monotonic()
            due: list[_Taken] = []
            with self._lock:
                while self._heap and self._heap[0][0] <= now:
                    _, aid = heapq.heappop(self._heap)
                    t = self._taken.pop(aid, None)
                    if t is not None:
                        due.append(t)
                for state in self._slots.values():
                    for key in [k for k, t in state.answered.items() if t <= now]:
                        del state.answered[key]
            for t in due:
                self._count("taken_over_timeouts")
                text = "no answer from the device (the command's replica is gone)"
                self._submit(self._answer_taken, t, Outcome(False, 504, None, text), None)
