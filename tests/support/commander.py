"""An MQTT 5 client sending commands with Correlation Data and counting their replies,
and the tally of what the emulated devices carried out (tests of a group of bridges)."""

from __future__ import annotations

import collections
import itertools
import json
import os
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.simulator import Emulator

REPLIES = "test/replies"
PATH = "/3311/0/5706"  # a light's colour: written with the command's number
_ids = itertools.count(1)


class Requester:
    """``set`` commands (QoS 1, MQTT 5) numbered by their Correlation Data."""

    def __init__(self, port: int) -> None:
        self.replies: collections.Counter[int] = collections.Counter()
        self.bodies: dict[int, dict[str, Any]] = {}  # the last reply of each
        self.all_bodies: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
        self.answered_at: dict[int, float] = {}
        self.sent_at: dict[int, float] = {}
        self.slot_states: dict[str, str] = {}
        self.lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2,
                        client_id=f"req-{os.getpid()}-{next(_ids)}",
                        protocol=mqtt.MQTTv5)  # fmt: skip
        c.on_message = self._on_message
        c.max_inflight_messages_set(200)
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", port)
        c.subscribe([(REPLIES + "/#", 1), ("connector/$bridge/cluster/slot/+", 1)])
        c.loop_start()
        self.client = c

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith("connector/$bridge/cluster/slot/"):
            self.slot_states[msg.topic.rsplit("/", 1)[-1]] = msg.payload.decode()
            return
        n = int(msg.properties.CorrelationData)
        with self.lock:
            self.replies[n] += 1
            self.bodies[n] = json.loads(msg.payload)
            self.all_bodies[n].append(self.bodies[n])
            self.answered_at.setdefault(n, time.monotonic())

    def send(self, n: int, device: str) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = REPLIES
        props.CorrelationData = str(n).encode()
        self.sent_at[n] = time.monotonic()
        self.client.publish(f"connector/{device}{PATH}/set", f"c{n}", qos=1, properties=props)

    def answered(self, numbers: range) -> int:
        with self.lock:
            return sum(1 for n in numbers if self.replies[n])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def tally(emu: Emulator, req: Requester, numbers: range) -> dict[str, Any]:
    """What became of each command: replies (by correlation data) and what the devices
    carried out (the emulator's record)."""
    done = collections.Counter(body.decode() for verb, _, path, body in emu.actions()
                               if verb == "PUT" and path == PATH)  # fmt: skip
    with req.lock:
        statuses = collections.Counter(req.bodies[n]["status"] for n in numbers if n in req.bodies)
        return {
            "replies_missing": [n for n in numbers if req.replies[n] == 0],
            "replies_twice": [n for n in numbers if req.replies[n] > 1],
            "not_carried_out": [n for n in numbers if done[f"c{n}"] == 0],
            "carried_out_twice": [n for n in numbers if done[f"c{n}"] > 1],
            "statuses": dict(statuses),
        }
