"""A replica of a group carrying out commands through its slots, in a process of its own
(for tests that SIGKILL it): a :class:`~bridge.cluster.replica.Replica`, the connector
client (the WebSocket channel while it leads), the main MQTT link and
:class:`~bridge.cluster.commands.ClusterCommands`.

``python -m tests.support.slot_node --endpoints ... --group ... --id ... --mqtt-port ...
--connector-url ... --token ... --devices name=id,... --status FILE``: it writes its
counters, slots and leadership to ``--status`` (JSON, replaced) every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from tests.support.etcd import die_with_parent


def main(argv: list[str] | None = None) -> int:
    from bridge.cluster.commands import ClusterCommands
    from bridge.cluster.etcd import EtcdClient
    from bridge.cluster.lease import LeaseTiming
    from bridge.cluster.replica import Replica
    from bridge.cluster.slots import slot_names
    from bridge.connector.api import connector
    from bridge.downstream.link import MqttLink
    from bridge.service.settings import load_settings

    p = argparse.ArgumentParser()
    for name in ("endpoints", "group", "id", "connector-url", "token", "devices", "status"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--mqtt-port", type=int, required=True)
    p.add_argument("--ttl", type=int, default=2)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--client-id", default="slots")
    args = p.parse_args(argv)
    die_with_parent()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(relativeCreated)6d %(name)s %(message)s")  # fmt: skip
    settings = load_settings(None, env_file=None, overrides={
        "connector_url": args.connector_url, "connector_token": args.token,
        "connector_api": "current", "mqtt_host": "127.0.0.1", "mqtt_port": args.mqtt_port,
        "mqtt_client_id": args.client_id, "command_timeout": 10.0,
    })  # fmt: skip
    devices = dict(pair.split("=", 1) for pair in args.devices.split(","))
    client = connector(args.token, args.connector_url, api="current", asyncTimeout=None)
    main_settings = settings.model_copy(
        update={"mqtt_client_id": f"{args.client_id}-{args.id}", "mqtt_session_expiry": 0}
    )
    mqtt = MqttLink(main_settings, state_topic=f"connector/$bridge/cluster/member/{args.id}")
    mqtt.start()
    etcd = EtcdClient(
        args.endpoints.split(","), timeout=LeaseTiming.for_ttl(args.ttl).request_timeout
    )
    leading = threading.Event()
    replica: Replica | None = None

    def on_leadership(lead: bool) -> None:
        if lead:
            leading.set()
            threading.Thread(target=lambda: client.startWebsocket(), daemon=True).start()
        else:
            leading.clear()
            threading.Thread(target=client.stopWebsocket, daemon=True).start()

    commands = ClusterCommands(
        settings,
        etcd=EtcdClient(args.endpoints.split(","), timeout=2.0),
        group=args.group,
        slots=slot_names(args.slots),
        member_id=args.id,
        client=client,
        mqtt=mqtt,
        resolve=devices.get,
        lease=lambda: replica.lease_id if replica is not None else None,
    )

    def on_slot(slot: str, owned: bool) -> None:
        (commands.slot_gained if owned else commands.slot_lost)(slot)

    replica = Replica(etcd, args.group, ttl=args.ttl, member_id=args.id,
                      slots=slot_names(args.slots), on_leadership=on_leadership,
                      on_slot=on_slot)  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    replica.start()
    status = Path(args.status)
    while True:
        doc = {"pid": os.getpid(), "t": time.monotonic(), "leading": leading.is_set(),
               "slots": commands.owned(), "counters": dict(commands.counters)}  # fmt: skip
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(status)
        if stop.wait(0.2):
            break
    commands.stop()
    replica.stop()
    mqtt.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
