"""``connector-bridge status``: what a running bridge says about itself, as a table.

It needs only the broker: it connects with the same MQTT settings as the bridge (flags,
``BRIDGE_*`` environment, ``.env``; the Connector settings are not needed), asks the
bridge (bridge requests ``info`` and ``endpoints``) and reads the retained
``$bridge/state``, ``$bridge/health``, ``<ep>/$state`` and ``<ep>/$resources``. So it
works from any machine that may read ``<prefix>/#`` and write
``<prefix>/$bridge/request/+``.

Several bridges for one account (a group of replicas): it also lists the replicas, the
leader and who owns which command slot. With ``BRIDGE_CLUSTER_ETCD`` set where status
runs, that comes from etcd (:func:`bridge.cluster.cluster_view`: one read at one
revision, the leader and slot keys themselves, so it is exact). Without it, or when etcd
does not answer from there (it is often reachable only from inside the cluster), it comes
from the replicas' retained ``$bridge/replicas/<member>/health`` and ``.../state``, each
as old as that replica's last health message (``BRIDGE_HEALTH_INTERVAL``); the output
says which source it used, and why. The figures and endpoints come from the leader's
answer when the leader answers (every replica answers bridge requests).

Exit codes: 0 the bridge answered; 1 it did not (or the broker could not be reached),
with a message saying what was seen; 2 wrong settings.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from bridge.cluster import ClusterView, cluster_view, slot_names
from bridge.downstream.link import apply_credentials_and_tls
from bridge.downstream.topics import BRIDGE_LEVEL, RESOURCES_LEVEL, STATE_LEVEL, unescape_level
from bridge.service.run_cli import split_env_file
from bridge.service.settings import Settings, SettingsError, env_name, load_settings

PROG = "connector-bridge status"
DEFAULT_TIMEOUT = 5.0

USAGE = f"""usage: {PROG} [--timeout SECONDS] [--json] [--env-file PATH] [settings flags]

Asks the running bridge, through the MQTT broker, for its endpoints and key figures.
Takes the bridge's MQTT settings (--mqtt-host, --mqtt-port, --mqtt-username, TLS,
--topic-prefix ...; or BRIDGE_* variables, or .env); the Connector settings are not needed.

  --timeout SECONDS   how long to wait for the bridge's answers (default {DEFAULT_TIMEOUT:g})
  --json              print everything as one JSON document instead of tables
"""


class StatusSettings(Settings):
    """The bridge's settings with the Connector ones optional: status needs the broker only."""

    model_config = SettingsConfigDict(**{**Settings.model_config, "cli_prog_name": PROG})

    connector_url: str | None = Field(None, description="not needed")  # type: ignore[assignment]
    connector_token: SecretStr | None = Field(None, description="not needed")  # type: ignore[assignment]

    @field_validator("connector_token")
    @classmethod
    def _token_not_empty(  # type: ignore[override]  # None is fine here
        cls, value: SecretStr | None
    ) -> SecretStr | None:
        return value


@dataclass
class Snapshot:
    """Everything the bridge said, and what the broker holds for it."""

    broker: str
    prefix: str
    bridge_state: str | None = None
    health: dict[str, Any] | None = None
    info: dict[str, Any] | None = None
    info_error: str | None = None
    endpoints: list[dict[str, Any]] | None = None
    endpoints_error: str | None = None
    states: dict[str, str] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A group of replicas: their retained state and health, and etcd's view of the group.
    replica_states: dict[str, str] = field(default_factory=dict)
    replica_health: dict[str, dict[str, Any]] = field(default_factory=dict)
    cluster: ClusterView | None = None
    cluster_etcd: str | None = None  # the endpoints asked (None: BRIDGE_CLUSTER_ETCD unset)
    cluster_error: str | None = None  # why etcd gave no view

    @property
    def clustered(self) -> bool:
        return bool(self.cluster or self.cluster_etcd or self.replica_states
                    or self.replica_health)  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "prefix": self.prefix,
            "bridge_state": self.bridge_state,
            "info": self.info,
            "health": self.health,
            "endpoints": endpoint_rows(self),
            **({"group": group_summary(self)} if self.clustered else {}),
            "errors": {
                k: v
                for k, v in (
                    ("info", self.info_error),
                    ("endpoints", self.endpoints_error),
                    ("etcd", self.cluster_error),
                )
                if v
            },
        }


# ---------------------------------------------------------------------- asking the bridge


def _client(settings: Settings) -> mqtt.Client:
    v5 = settings.mqtt_protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"connector-bridge-status-{uuid.uuid4().hex[:10]}",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else True,
    )
    apply_credentials_and_tls(client, settings)
    return client


class StatusError(Exception):
    """No status: the message says what was seen and what to check."""


def gather(settings: Settings, timeout: float) -> Snapshot:
    """Connect, subscribe, ask ``info`` and ``endpoints``, wait up to ``timeout``."""
    prefix = settings.topic_prefix
    where = f"{settings.mqtt_host}:{settings.mqtt_port}"
    snap = Snapshot(broker=where, prefix=prefix)
    bridge = f"{prefix}/{BRIDGE_LEVEL}"
    transactions = {"info": f"status-{uuid.uuid4().hex}", "endpoints": f"status-{uuid.uuid4().hex}"}
    lock = threading.Condition()
    connected: list[str | None] = []  # [None] ok, [reason] refused
    subscribed = threading.Event()

    def on_connect(
        c: mqtt.Client, u: Any, flags: Any, rc: ReasonCode, p: Properties | None
    ) -> None:
        with lock:
            connected.append(str(rc) if rc.is_failure else None)
            lock.notify_all()
        if not rc.is_failure:
            c.subscribe(
                [
                    (f"{bridge}/state", 1),
                    (f"{bridge}/health", 1),
                    (f"{bridge}/response/info", 1),
                    (f"{bridge}/response/endpoints", 1),
                    (f"{bridge}/replicas/+/state", 1),
                    (f"{bridge}/replicas/+/health", 1),
                    (f"{prefix}/+/{STATE_LEVEL}", 1),
                    (f"{prefix}/+/{RESOURCES_LEVEL}", 1),
                ]
            )

    def on_subscribe(*args: Any) -> None:
        subscribed.set()

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            _take(snap, msg.topic, bytes(msg.payload), prefix, transactions)
            lock.notify_all()

    client = _client(settings)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    end = time.monotonic() + timeout
    try:
        client.connect_async(settings.mqtt_host, settings.mqtt_port, keepalive=30)
        client.loop_start()
        with lock:
            lock.wait_for(lambda: bool(connected), timeout)
        if not connected:
            raise StatusError(f"cannot connect to the MQTT broker at {where} within {timeout:g} s")
        if connected[0] is not None:
            raise StatusError(
                f"the MQTT broker at {where} refused the connection: {connected[0]} (check "
                f"{env_name('mqtt_username')} / {env_name('mqtt_password')})"
            )
        if not subscribed.wait(max(end - time.monotonic(), 0.1)):
            raise StatusError(f"the MQTT broker at {where} did not confirm the subscriptions")
        # Retained messages come with the subscription, before these requests' answers.
        for action, transaction in transactions.items():
            body = json.dumps({"transaction": transaction})
            client.publish(f"{bridge}/request/{action}", body, qos=1)
        with lock:
            lock.wait_for(
                lambda: (
                    (snap.info or snap.info_error)
                    and (snap.endpoints or snap.endpoints_error)
                    # A group: every replica answers; wait for the leader's (until the time-out).
                    and (not snap.clustered or _from_leader(snap.info) or not _leader_serves(snap))
                ),
                max(end - time.monotonic(), 0.0),
            )
    finally:
        client.disconnect()
        client.loop_stop()
    if settings.cluster_etcd:
        read_group(snap, settings, min(timeout, 2.0))
    if snap.info is None and snap.info_error is None:
        seen = (
            f"its retained state is {snap.bridge_state!r}"
            if snap.bridge_state
            else f"nothing is retained on {bridge}/state"
        )
        raise StatusError(
            f"no bridge answered on {bridge}/request/info within {timeout:g} s at {where} "
            f"({seen}; is it running, with topic prefix {prefix!r}?)"
        )
    return snap


def read_group(snap: Snapshot, settings: Settings, timeout: float) -> None:
    """etcd's view of the group into ``snap`` (or why there is none: ``cluster_error``)."""
    assert settings.cluster_etcd
    snap.cluster_etcd = settings.cluster_etcd
    try:
        snap.cluster = cluster_view(
            settings.cluster_etcd.split(","),
            settings.cluster_group,
            slot_names(settings.cluster_slots),
            timeout=timeout,
        )
    except Exception as exc:  # EtcdError, or anything a broken gateway may answer
        snap.cluster_error = str(exc) or type(exc).__name__


def _from_leader(info: dict[str, Any] | None) -> bool:
    return bool(info) and (info or {}).get("cluster", {}).get("role") == "leader"


def _leader_serves(snap: Snapshot) -> bool:
    """Some replica's retained state and health say it is online and leads."""
    return any(
        snap.replica_states.get(m) == "online" and (h.get("role") == "leader")
        for m, h in snap.replica_health.items()
    )


def _take(
    snap: Snapshot, topic: str, payload: bytes, prefix: str, transactions: Mapping[str, str]
) -> None:
    """File one message into the snapshot (bad JSON from elsewhere is ignored)."""
    bridge = f"{prefix}/{BRIDGE_LEVEL}/"
    if topic.startswith(bridge):
        rest = topic[len(bridge) :]
        if rest == "state":
            snap.bridge_state = payload.decode("utf-8", "replace")
            return
        if rest.startswith("replicas/"):
            _take_replica(snap, rest.split("/"), payload)
            return
        doc = _json(payload)
        if rest == "health" and isinstance(doc, dict):
            snap.health = doc
        elif rest.startswith("response/") and isinstance(doc, dict):
            action = rest.partition("/")[2]
            if doc.get("transaction") != transactions.get(action):
                return  # somebody else's answer
            error = None if doc.get("ok") else f"{doc.get('status')} {doc.get('error')}"
            if action == "info":
                data = doc.get("data") or {}
                if _from_leader(snap.info) and not _from_leader(data):
                    return  # a group: the leader's answer stays
                snap.info, snap.info_error = data, error
            elif action == "endpoints":
                snap.endpoints = doc.get("data") if isinstance(doc.get("data"), list) else []
                snap.endpoints_error = error
        return
    levels = topic[len(prefix) + 1 :].split("/")
    if len(levels) != 2:
        return
    name = unescape_level(levels[0])
    if levels[1] == STATE_LEVEL:
        if payload:
            snap.states[name] = payload.decode("utf-8", "replace")
        else:
            snap.states.pop(name, None)
    elif levels[1] == RESOURCES_LEVEL:
        doc = _json(payload)
        if isinstance(doc, dict):
            snap.resources[name] = doc


def _take_replica(snap: Snapshot, levels: list[str], payload: bytes) -> None:
    """``replicas/<member>/state`` or ``.../health`` (an empty payload clears it)."""
    if len(levels) != 3:
        return
    member, kind = levels[1], levels[2]
    if kind == "state":
        if payload:
            snap.replica_states[member] = payload.decode("utf-8", "replace")
        else:
            snap.replica_states.pop(member, None)
    elif kind == "health":
        doc = _json(payload)
        if isinstance(doc, dict):
            snap.replica_health[member] = doc
        elif not payload:
            snap.replica_health.pop(member, None)


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return None


# ----------------------------------------------------------------------------- printing


def endpoint_rows(snap: Snapshot) -> list[dict[str, Any]]:
    """One row per endpoint: those the Connector lists now, and those the broker still
    holds a ``$state`` for (departed ones: offline, expired)."""
    listed = {e["name"]: e for e in snap.endpoints or () if isinstance(e.get("name"), str)}
    rows = []
    for name in sorted(set(listed) | set(snap.states)):
        entry = listed.get(name, {})
        doc = snap.resources.get(name, {})
        resources = doc.get("resources")
        device_id = entry.get("device_id") or doc.get("device_id") or name
        rows.append(
            {
                "name": name,
                "device_id": device_id,
                "endpoint_name": entry.get("endpoint_name") or doc.get("endpoint_name") or name,
                "type": entry.get("type") or doc.get("type"),
                "state": entry.get("state") or snap.states.get(name) or "unknown",
                "queue_mode": bool(entry.get("q", doc.get("q", False))),
                "resources": len(resources) if isinstance(resources, list) else None,
            }
        )
    return rows


def replica_rows(snap: Snapshot) -> list[dict[str, Any]]:
    """One row per replica. From etcd when it answered (its members; the leader and slot
    owners from their own keys), plus replicas that are no longer members but whose
    retained state is still there (a dead one: ``offline``, by its will); otherwise from
    the replicas' retained health and state alone."""
    view = snap.cluster
    rows = []
    if view is not None:
        members = {m.id: m for m in view.members}
        for name in sorted(set(members) | set(snap.replica_states)):
            m = members.get(name)
            health = snap.replica_health.get(name, {})
            rows.append(
                {
                    "member": name,
                    "role": ("leader" if name == view.leader else "follower") if m else "gone",
                    "state": snap.replica_states.get(name, "unknown"),
                    "ready": health.get("ready") if m else None,
                    "host": m.host if m else None,
                    "pid": m.pid if m else health.get("process", {}).get("pid"),
                    "slots": list(view.owned_by(name)),
                }
            )
        return rows
    for name in sorted(set(snap.replica_health) | set(snap.replica_states)):
        health = snap.replica_health.get(name, {})
        state = snap.replica_states.get(name, "unknown")
        live = state == "online" and health.get("state") != "offline"
        figures = health.get("cluster") or {}
        rows.append(
            {
                "member": name,
                "role": str(health.get("role") or "?") if live else "gone",
                "state": state,
                "ready": health.get("ready") if live else None,
                "host": None,
                "pid": health.get("process", {}).get("pid"),
                "slots": [str(x) for x in figures.get("slots") or ()] if live else [],
            }
        )
    return rows


def group_summary(snap: Snapshot) -> dict[str, Any]:
    """The group as status shows it: where it came from, the leader, the replicas."""
    rows = replica_rows(snap)
    view = snap.cluster
    if view is not None:
        leaders = [view.leader] if view.leader else []
        unowned = [s for s, owner in view.slots.items() if owner is None]
        group: str | None = view.group
        source = "etcd"
    else:
        leaders = [r["member"] for r in rows if r["role"] == "leader"]
        live = [r for r in rows if r["role"] != "gone"]
        groups = {
            str(snap.replica_health[r["member"]].get("cluster", {}).get("group"))
            for r in live
            if snap.replica_health.get(r["member"], {}).get("cluster", {}).get("group")
        }
        group = ",".join(sorted(groups)) or None
        unowned = None  # not known: a free slot has no retained message
        source = "retained health"
    return {
        "group": group,
        "source": source,
        "etcd": snap.cluster_etcd,
        "etcd_error": snap.cluster_error,
        "revision": view.revision if view is not None else None,
        "leader": leaders[0] if len(leaders) == 1 else (leaders or None),
        "replicas": rows,
        "unowned_slots": unowned,
    }


def render_group(snap: Snapshot) -> list[str]:
    """The ``GROUP`` part of the output: source, leader, one row per replica."""
    doc = group_summary(snap)
    rows = doc["replicas"]
    live = [r for r in rows if r["role"] != "gone"]
    leader = doc["leader"]
    if isinstance(leader, list):
        leader_text = f"{', '.join(leader)} (each says it leads: retained health may lag)"
    else:
        leader_text = leader or "none"
    if doc["source"] == "etcd":
        source = f"from etcd {doc['etcd']}, revision {doc['revision']}"
    elif doc["etcd"]:
        source = (
            f"etcd {doc['etcd']} did not answer ({doc['etcd_error']}): from the replicas' "
            "retained health, each as old as its last health message"
        )
    else:
        source = (
            f"from the replicas' retained health ({env_name('cluster_etcd')} unset here: "
            "set it to read the group from etcd)"
        )
    lines = [
        f"group {doc['group'] or '?'}: {len(live)} replica(s), leader {leader_text}",
        f"  ({source})",
    ]
    lines += table(
        ["REPLICA", "ROLE", "STATE", "READY", "HOST", "PID", "SLOTS"],
        [
            (
                r["member"],
                r["role"],
                r["state"],
                {True: "yes", False: "no", None: "-"}[r["ready"]],
                r["host"] or "-",
                r["pid"] or "-",
                ",".join(r["slots"]) or "-",
            )
            for r in rows
        ],
    )
    if doc["unowned_slots"]:
        lines.append(f"unowned slots: {','.join(doc['unowned_slots'])}")
    return lines


def duration(seconds: float) -> str:
    """``95`` -> ``1m 35s``; ``7300`` -> ``2h 01m``; ``200000`` -> ``2d 7h``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [[str(c) for c in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]


def render(snap: Snapshot) -> str:
    info = snap.info or {}
    health = snap.health or {}
    connector = info.get("connector", {})
    hconn = health.get("connector", {})
    mqtt_info = info.get("mqtt", {})
    counters: dict[str, int] = info.get("counters", {})
    counts = info.get("endpoints", {})
    ready = info.get("extensions", {}).get("health", {}).get("ready", health.get("ready"))

    state = snap.bridge_state or "unknown"
    bridge_line = f"{state}, up {duration(float(info.get('uptime', 0)))}"
    if ready is not None:
        reasons = "; ".join(health.get("reasons") or []) if not ready else ""
        bridge_line += ", ready" if ready else f", NOT ready{': ' + reasons if reasons else ''}"
    conn = [str(connector.get("url", "?"))]
    if connector.get("version"):
        conn.append(str(connector["version"]).splitlines()[0])
    if connector.get("api"):
        conn.append(f"{connector['api']} API")
    conn.append(f"channel {connector.get('channel', '?')}")
    if hconn.get("state"):
        conn.append(str(hconn["state"]))
    conn.append(f"async pending {connector.get('async_pending', 0)}")
    latency = hconn.get("latency_ms") or {}
    if latency.get("p95") is not None:
        conn.append(f"latency p50 {latency['p50']:.1f} ms, p95 {latency['p95']:.1f} ms")
    dropped = mqtt_info.get("dropped_buffer_full", 0) + mqtt_info.get("dropped_errors", 0)
    figures = [
        ("bridge", bridge_line),
        ("connector", ", ".join(conn)),
        (
            "mqtt",
            f"{'connected' if mqtt_info.get('connected') else 'DISCONNECTED'} "
            f"(MQTT {mqtt_info.get('protocol', '?')}), "
            f"reconnects {max(int(mqtt_info.get('connects', 0)) - 1, 0)}, "
            f"buffer {mqtt_info.get('outbox', 0)}, dropped {dropped}",
        ),
        (
            "endpoints",
            f"{counts.get('online', 0)} online, {counts.get('offline', 0)} offline, "
            f"{counts.get('expired', 0)} expired",
        ),
        (
            "notifications",
            f"{counters.get('notifications_received', 0)} received, "
            f"{counters.get('notifications_published', 0)} published, "
            f"{counters.get('notifications_bad', 0)} bad",
        ),
        (
            "commands",
            f"{counters.get('commands_received', 0)} received, "
            f"{counters.get('commands_ok', 0)} ok, {counters.get('commands_failed', 0)} failed, "
            f"{counters.get('commands_busy', 0)} busy",
        ),
    ]
    lines = [
        f"connector-bridge {info.get('version', '?')} at {snap.broker} "
        f"(topic prefix {snap.prefix})",
        "",
    ]
    answered = info.get("cluster") or {}
    if answered.get("member"):  # a group: every replica answers; whose figures these are
        lines[1:1] = [f"figures and endpoints from replica {answered['member']} "
                      f"({answered.get('role', '?')})"]  # fmt: skip
    width = max(len(k) for k, _ in figures)
    lines += [f"{k.ljust(width)}  {v}" for k, v in figures]
    lines.append("")
    if snap.clustered:
        lines += render_group(snap)
        lines.append("")
    rows = endpoint_rows(snap)
    # Today's service has device IDs: a column of its own (the legacy one has names only).
    ids = any(r["device_id"] != r["name"] for r in rows)
    lines += table(
        ["ENDPOINT", *(["DEVICE ID"] if ids else []), "TYPE", "STATE", "QUEUE", "RESOURCES"],
        [
            (
                r["name"],
                *([r["device_id"]] if ids else []),
                r["type"] or "-",
                r["state"],
                "yes" if r["queue_mode"] else "no",
                "-" if r["resources"] is None else r["resources"],
            )
            for r in rows
        ],
    )
    if not rows:
        lines.append("(no endpoints)")
    if snap.endpoints_error:
        lines.append(
            f"note: the endpoints request failed ({snap.endpoints_error}); "
            "rows come from the retained $state topics"
        )
    return "\n".join(lines)


# -------------------------------------------------------------------------------- main


def split_options(argv: Sequence[str]) -> tuple[list[str], float, bool, bool]:
    """Take ``--timeout``, ``--json`` and ``--help`` out of ``argv``."""
    rest: list[str] = []
    timeout, as_json, want_help = DEFAULT_TIMEOUT, False, False
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help"):
            want_help = True
        elif arg == "--json":
            as_json = True
        elif arg == "--timeout" or arg.startswith("--timeout="):
            if "=" in arg:
                text = arg.partition("=")[2]
            else:
                i += 1
                text = args[i] if i < len(args) else ""
            try:
                timeout = float(text)
            except ValueError:
                raise SettingsError(f"--timeout takes seconds, not {text!r}") from None
            if not 0 < timeout <= 3600:
                raise SettingsError("--timeout must be between 0 and 3600 seconds")
        else:
            rest.append(arg)
        i += 1
    return rest, timeout, as_json, want_help


def main(argv: Sequence[str]) -> int:
    try:
        args, timeout, as_json, want_help = split_options(argv)
        if want_help:
            print(USAGE)
            return 0
        args, env_file = split_env_file(args)
        settings = load_settings(args, env_file=env_file, settings_class=StatusSettings)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        snap = gather(settings, timeout)
    except StatusError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # name resolution, TLS files...
        where = f"{settings.mqtt_host}:{settings.mqtt_port}"
        print(f"{PROG}: cannot connect to the MQTT broker at {where}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(snap.as_dict(), indent=2, default=str))
    else:
        print(render(snap))
    sys.stdout.flush()
    return 0
