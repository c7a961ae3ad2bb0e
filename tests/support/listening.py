"""A barrier for tests: wait until the running bridge really receives what users publish."""

from __future__ import annotations

import json
import time

from tests.support.mqtt_user import MqttUser

WAIT = 20.0


def wait_listening(u: MqttUser, prefix: str = "connector", timeout: float = WAIT) -> None:
    """Return once the bridge answers a bridge request (``u`` must be subscribed to the
    response topic). ``running_bridge`` returns when the bridge's CONNECT is acknowledged,
    and its SUBSCRIBE may still be on its way: a command sent at once can reach the broker
    before the bridge subscribed, and be lost. So: ask ``info`` until an answer comes
    (each try waits a second)."""
    end = time.monotonic() + timeout
    response = f"{prefix}/$bridge/response/info"
    tries = 0
    while True:
        tries += 1
        transaction = f"listening-{tries}"
        u.publish(f"{prefix}/$bridge/request/info", json.dumps({"transaction": transaction}))
        try:
            u.wait_for(
                lambda m, t=transaction: m.topic == response and m.json().get("transaction") == t,
                timeout=1.0,
            )
            return
        except AssertionError:
            if time.monotonic() > end:
                raise
