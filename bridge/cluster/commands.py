"""Commands spread over a group of bridges, each carried out once and answered once.

**Command slots.** A group shares out a fixed set of slots (``cmd-0`` ... ``cmd-<n-1>``,
:func:`~bridge.cluster.slots.slot_names`) through :class:`~bridge.cluster.replica.Replica`.
Slot ``s`` is an MQTT client with the fixed id ``<BRIDGE_MQTT_CLIENT_ID>-<s>`` and a
persistent session (MQTT 5 Clean Start off, ``BRIDGE_MQTT_SESSION_EXPIRY``), subscribed
to the command filters as the MQTT 5 shared subscription ``$share/<group>/<filter>``:
the broker gives each command to one slot. The replica that owns a slot runs its
client: on gaining it, it connects with that id, so Mosquitto hands it the session's
unacknowledged and queued commands (Mosquitto 2.0 keeps a dead member's commands in its
session until the id connects again); on losing it, it disconnects at once and takes
no more of its commands (nothing is acknowledged that is not taken). The broker itself
fences a slot: one client id is connected once, a second connection closes the first.
MQTT 3.1.1 has no shared subscriptions: :class:`ClusterCommands` refuses to start,
naming ``BRIDGE_MQTT_PROTOCOL``.

**Async responses reach the slot.** A command's device request carries the async id
``s<slot index>-<uuid>`` (the client makes ids for device requests,
:data:`~bridge.connector.dialects.NEXT_ASYNC_ID`). Only the leader holds the channel;
its client answers its own callers and hands every other response (``asyncRelay``) to
``<prefix>/$bridge/cluster/async/<slot>`` (QoS 1, not retained), which each slot's
client subscribes to without sharing. Whoever owns the slot then, the caller or a
survivor that took the slot over after the caller died, gets it; the broker keeps it
in the slot's session while no one does.

**Exactly once.** Before the device request goes out, its record (the command's reply
target and identity) is written to etcd at ``/<group>/inflight/<slot>/<async id>/cmd``,
fenced: only while the slot's key is under this replica's lease. A replica gaining a
slot reads the slot's records before it connects (so a fenced write either came before
and is read, or fails): a command the broker delivers again (DUP, the same packet id and
bytes) that has a record is not sent again; its answer comes on the slot's topic, or
its time-out, and the record answers it. The one reply is published by whoever turns
the record into ``.../<async id>/answered`` first (one etcd transaction: delete the
record if it exists, put the mark), so a caller and a survivor never both answer; then
the command is acknowledged. Marks live under a short lease (a minute or two): a copy
the broker resends of an answered command is acknowledged, not carried out again. Two
etcd writes per command.

What remains (counted by the tests as exceptions): a replica killed after its record
was written and before the service took the request: the survivor waits for an answer
that never comes and replies 504 (answered once, not carried out); killed after the
``answered`` mark and before its reply reached the broker: no reply (carried out
once); killed after a bridge error reply and before its ack: the command is answered
twice (the bridge's own refusal; nothing was carried out).
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
from typing import Any

from bridge.cluster.etcd import EtcdClient, EtcdError
from bridge.cluster.keys import GroupKeys
from bridge.connector.api import connector
from bridge.connector.dialects import NEXT_ASYNC_ID
from bridge.connector.result import asyncResult
from bridge.downstream.link import Inbound, MqttLink
from bridge.downstream.topics import (
    BRIDGE_LEVEL,
    PayloadError,
    TopicError,
    Topics,
    encode_reply,
    parse_command_payload,
)
from bridge.service.settings import Settings, env_name
from bridge.upstream.port import Outcome, outcome_of

log = logging.getLogger("bridge.cluster.commands")

_ASYNC_ID = re.compile(r"s(\d{1,5})-[0-9a-f]{32}")
ANSWERED_KEPT = 60.0  # seconds an answered record is kept for a late redelivery


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
    verb: str
    endpoint: str
    path: str
    reply_topic: str
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


class InflightStore:
    """The in-flight records of a group's command slots in etcd."""

    def __init__(self, client: EtcdClient, group: str) -> None:
        self.client = client
        self.keys = GroupKeys(group)
        self.root = f"/{group}/inflight/"
        self._lease_lock = threading.Lock()
        self._lease: tuple[int, float] | None = None  # id, monotonic time to grant anew

    def _base(self, slot: str, aid: str) -> str:
        return f"{self.root}{slot}/{aid}/"

    def put(self, slot: str, aid: str, record: Record, *, lease: int) -> bool:
        """Write the record while ``slot`` is ours (under ``lease``); whether it was."""
        return self.client.put_if_held(self._base(slot, aid) + "cmd", record.to_json(),
                                       holder=self.keys.slot(slot), lease=lease)  # fmt: skip

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
        mark = json.dumps({"by": me, "mid": record.mid, "digest": record.digest})
        return self.client.move(base + "cmd", base + "answered", mark, lease=self._mark_lease())

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
class _Call:
    slot: str
    aid: str
    record: Record
    msg: Inbound | None  # None: a record of another replica (its command was acked)
    deadline: float  # monotonic
    relay: Inbound | None = None  # the relayed answer, acknowledged once the reply is out


@dataclass(slots=True)
class _Slot:
    name: str
    index: int
    link: MqttLink | None = None
    live: bool = True
    answered: dict[tuple[int, str], tuple[str, float]] = field(default_factory=dict)


class ClusterCommands:
    """A replica's command slots: the seam to the bridge is :meth:`slot_gained`,
    :meth:`slot_lost` (the ``SlotChanged`` events), the connector ``client`` (its
    ``asyncRelay`` is set here; only the leader's has a channel) and the main ``mqtt``
    link (replies and relayed async responses go out on it).

    ``resolve`` gives the service's device id for a topic's endpoint name (None:
    unknown); ``lease`` the replica's lease id (the fence of the in-flight records).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        etcd: EtcdClient,
        group: str,
        slots: Sequence[str],
        member_id: str,
        client: connector,
        mqtt: MqttLink,
        resolve: Callable[[str], str | None],
        lease: Callable[[], int | None],
        workers: int = 16,
        command_timeout: float | None = None,
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
        self.group = group
        self.member_id = member_id
        self.store = InflightStore(etcd, group)
        self.client = client
        self.mqtt = mqtt
        self.topics = Topics(settings.topic_prefix)
        self.resolve = resolve
        self.lease = lease
        self.timeout = command_timeout or settings.command_timeout
        self._index = {name: i for i, name in enumerate(slots)}
        self._names = list(slots)
        self._bridge_space = f"{settings.topic_prefix}/{BRIDGE_LEVEL}/"
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._calls: dict[str, _Call] = {}  # async id -> call (own and taken over)
        self._heap: list[tuple[float, str]] = []
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="slot-cmd")
        self._events = ThreadPoolExecutor(1, thread_name_prefix="slot-events")
        self._stopping = threading.Event()
        self._timer = threading.Thread(target=self._expire_loop, name="slot-timer", daemon=True)
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "received", "sent", "replies", "redelivered_recorded", "redelivered_answered",
                "taken_over", "relayed_out", "relayed_in", "claims_lost", "fenced",
                "timeouts", "store_errors", "unknown_async", "answered_before_gain",
            ),
            0,
        )  # fmt: skip
        client.asyncRelay = self._relay
        self._timer.start()

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    # ---- the seam: slot events (any thread; handled in order on one thread) -----------

    def slot_gained(self, slot: str) -> None:
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
        if self._stopping.is_set():
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
                state.answered[key] = ("", now + ANSWERED_KEPT)
            self.counters["answered_before_gain"] += len(answered)
            for aid, rec in records.items():
                if aid not in self._calls:
                    due = now + max(0.0, rec.deadline - wall)
                    self._calls[aid] = _Call(slot, aid, rec, None, due)
                    heapq.heappush(self._heap, (due, aid))
                    self.counters["taken_over"] += 1
        s = self.settings
        link_settings = s.model_copy(update={"mqtt_client_id": slot_client_id(s.mqtt_client_id,
                                                                              slot)})  # fmt: skip
        link = MqttLink(
            link_settings,
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
        log.info("slot %s: client %s connecting", slot, link_settings.mqtt_client_id)

    def _lose(self, slot: str) -> None:
        with self._lock:
            state = self._slots.pop(slot, None)
        if state is None or state.link is None:
            return
        state.live = False
        state.link.stop(timeout=0.5)
        log.info("slot %s: client disconnected", slot)

    def stop(self) -> None:
        self._stopping.set()
        self._events.shutdown(wait=True)
        for slot in list(self._slots):
            self._lose(slot)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.asyncRelay = None

    # ---- commands (paho's network thread, then a worker) ------------------------------

    def _arrive(self, state: _Slot, msg: Inbound) -> None:
        if msg.topic.startswith(self._bridge_space):
            msg.ack()
            return
        if not state.live:
            return  # not ours any more: left unacknowledged for the slot's next owner
        self._pool.submit(self._take, state, msg)

    def _take(self, state: _Slot, msg: Inbound) -> None:
        try:
            self._take_unsafe(state, msg)
        except Exception:
            log.exception("command on %r failed", msg.topic)

    def _take_unsafe(self, state: _Slot, msg: Inbound) -> None:
        if not state.live:
            return
        self._count("received")
        if msg.retain:
            msg.ack()
            return
        try:
            cmd = self.topics.parse_command(msg.topic)
            body = parse_command_payload(cmd.verb, msg.payload)
        except TopicError as exc:
            self._own_reply(msg, exc.reply_topic or f"{msg.topic}/reply", None, exc.reason, 400)
            return
        except PayloadError as exc:
            self._own_reply(msg, f"{msg.topic}/reply", exc.transaction, exc.reason, exc.status)
            return
        dig = digest(msg)
        if msg.dup and self._redelivered(state, msg, dig):
            return
        device = self.resolve(cmd.endpoint)
        if device is None:
            text = f"unknown endpoint {cmd.endpoint!r}"
            self._own_reply(msg, cmd.reply_topic, body.transaction, text, 404, cmd=cmd)
            return
        lease = self.lease()
        aid = make_async_id(state.index)
        rec = Record(msg.mid, dig, msg.topic, cmd.verb, cmd.endpoint, cmd.path,
                     self._reply_topic(msg, cmd.reply_topic),
                     base64.b64encode(msg.correlation_data).decode() if msg.correlation_data
                     else None, body.transaction, msg.dup, time.time() + self.timeout,
                     self.member_id)  # fmt: skip
        try:
            put = lease is not None and self.store.put(state.name, aid, rec, lease=lease)
        except EtcdError as exc:
            self._count("store_errors")
            text = f"the group's store (etcd) is unreachable: {exc}"
            self._own_reply(msg, cmd.reply_topic, body.transaction, text, 503, cmd=cmd)
            return
        if not put:
            self._count("fenced")  # the slot is no longer ours: its next owner takes it
            return
        call = _Call(state.name, aid, rec, msg, time.monotonic() + self.timeout)
        with self._lock:
            self._calls[aid] = call
            heapq.heappush(self._heap, (call.deadline, aid))
        done = functools.partial(self._on_result, aid)
        token = NEXT_ASYNC_ID.set(aid)
        try:
            if cmd.verb == "set":
                r = self.client.putResourceValue(device, cmd.path, body.value, done)
            elif cmd.verb == "post":
                r = self.client.postResource(device, cmd.path, body.value, done)
            else:
                r = self.client.getResourceValue(device, cmd.path, done)
        finally:
            NEXT_ASYNC_ID.reset(token)
        self._count("sent")
        if r.async_id is not None:
            msg.ack()  # the service took it: from now on the record owes the reply

    def _redelivered(self, state: _Slot, msg: Inbound, dig: str) -> bool:
        """A copy the broker sent again: True if it is known (it is not sent again)."""
        key = (msg.mid, dig)
        with self._lock:
            if key in state.answered:
                self.counters["redelivered_answered"] += 1
                answered = True
            else:
                answered = False
                for call in self._calls.values():
                    if call.slot == state.name and (call.record.mid, call.record.digest) == key:
                        if call.msg is None:
                            call.msg = msg  # acknowledged when it is answered
                        self.counters["redelivered_recorded"] += 1
                        return True
        if answered:
            msg.ack()
        return answered

    def _reply_topic(self, msg: Inbound, default: str) -> str:
        rt = msg.response_topic
        if rt is None or self.topics.response_topic_problem(rt) is not None:
            return default
        return rt

    # ---- answers ----------------------------------------------------------------------

    def _on_result(self, aid: str, r: asyncResult) -> None:
        self._pool.submit(self._answer, aid, outcome_of(r))

    def _relay(self, entry: dict[str, Any]) -> bool:
        """The channel's answer no caller here waits for (the leader's channel thread)."""
        aid = str(entry.get("id"))
        index = slot_index_of(aid)
        if index is None or index >= len(self._names):
            return False
        with self._lock:
            mine = aid in self._calls
        if mine:  # a record taken over here
            self._pool.submit(self._answer, aid, outcome_of(connector.resultOfAsyncResponse(entry)))
            return True
        payload = json.dumps(entry, separators=(",", ":"))
        self.mqtt.publish(async_topic(self.settings.topic_prefix, self._names[index]), payload,
                          qos=1, retain=False)  # fmt: skip
        self._count("relayed_out")
        return True

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
            call = self._calls.get(aid)
            if call is not None:
                call.relay = msg  # acknowledged once answered: a crash before gets it again
        if call is None:
            self._count("unknown_async")
            msg.ack()
        elif self.client.awaitsAsync(aid):
            self.client.deliverAsyncResponses([entry])  # the caller's own handling
        else:
            outcome = outcome_of(connector.resultOfAsyncResponse(entry))
            self._pool.submit(self._answer, aid, outcome)

    def _answer(self, aid: str, outcome: Outcome) -> None:
        with self._lock:
            call = self._calls.pop(aid, None)
        if call is None:
            return
        self.client.forgetAsync(aid)
        try:
            won = self.store.claim(call.slot, aid, self.member_id, call.record)
        except EtcdError as exc:
            log.error("command %s: not answered, the store is unreachable: %s", aid, exc)
            self._count("store_errors")
            return
        if not won:
            self._count("claims_lost")
            for msg in (call.msg, call.relay):
                if msg is not None:
                    msg.ack()
            return
        rec = call.record
        self._publish_reply(rec, outcome)
        for msg in (call.msg, call.relay):
            if msg is not None:
                msg.ack()
        with self._lock:
            state = self._slots.get(call.slot)
            if state is not None:
                state.answered[(rec.mid, rec.digest)] = (aid, time.monotonic() + ANSWERED_KEPT)

    def _publish_reply(self, rec: Record, outcome: Outcome) -> None:
        code = None if outcome.ok else outcome.code
        error = outcome.error
        if code is not None and not (error or "").startswith(code):
            error = f"{code}: {error}" if error else code
        body = encode_reply(
            endpoint=rec.endpoint, path=rec.path, verb=rec.verb, status=outcome.status,
            ok=outcome.ok, payload=outcome.payload if outcome.ok else None, error=error,
            transaction=rec.transaction, code=code,
        )  # fmt: skip
        if rec.dup:
            body = body[:-1] + b',"redelivered":true}'
        corr = base64.b64decode(rec.correlation) if rec.correlation else None
        props = self.mqtt.properties(corr, "application/json")
        self.mqtt.publish(rec.reply_topic, body, qos=1, retain=False, properties=props)
        self._count("replies")

    def _own_reply(
        self,
        msg: Inbound,
        topic: str,
        transaction: Any,
        error: str,
        status: int,
        cmd: Any = None,
    ) -> None:
        """A refusal of the bridge's own (nothing was sent to the service)."""
        body = encode_reply(
            endpoint=cmd.endpoint if cmd else None, path=cmd.path if cmd else None,
            verb=cmd.verb if cmd else msg.topic.rsplit("/", 1)[-1], status=status, ok=False,
            error=error, transaction=transaction,
        )  # fmt: skip
        props = self.mqtt.properties(msg.correlation_data, "application/json")
        self.mqtt.publish(self._reply_topic(msg, topic), body, qos=1, retain=False,
                          properties=props)  # fmt: skip
        self._count("replies")
        msg.ack()

    # ---- time-outs --------------------------------------------------------------------

    def _expire_loop(self) -> None:
        while not self._stopping.wait(0.2):
            now = time.monotonic()
            due: list[str] = []
            with self._lock:
                while self._heap and self._heap[0][0] <= now:
                    _, aid = heapq.heappop(self._heap)
                    if aid in self._calls:
                        due.append(aid)
                for state in self._slots.values():
                    for key in [k for k, (_, t) in state.answered.items() if t <= now]:
                        del state.answered[key]
            for aid in due:
                self._count("timeouts")
                text = f"no answer from the device within {self.timeout:g} s"
                self._pool.submit(self._answer, aid, Outcome(False, 504, None, text))
