"""The load clients of the bench, each run as a child process so that it has an
interpreter (and a GIL) of its own::

    python -m bridge.bench.loadgen <kind> '<json arguments>'

It prints one JSON line with its result. Kinds:

``paho-publish``
    The paho ceiling: N messages published by a bare paho-mqtt client, plain
    ``publish`` calls, in-flight limit 1,000, nothing else in the process.
``mqtt-commands``
    M ``.../set`` commands to the bridge over MQTT 5 with ``inflight`` outstanding,
    each matched to its reply by Correlation Data; throughput and latency. It shares
    the machine's cores with the bridge, so it uses the bridge's cheaper paho client
    (:mod:`bridge.downstream.paho_client`); its CPU per command is reported.
``connector-commands``
    The floor: the same PUTs straight to the Connector with the project's client
    (``bridge.connector``), ``inflight`` outstanding, each waited for until its async
    response arrives on the channel (``api``: ``legacy``, the long poll; ``current``,
    device requests answered on the WebSocket channel); throughput and latency.
``latency-driver``
    A steady rate of value changes through the emulator's admin route, each value the
    time it was sent (``time.time()``), so that a subscriber can compute the latency.
``listing``
    Today's dialect: a full ``GET /v3/devices`` listing in pages of ``page`` (following
    ``after``), ``runs`` times, by a plain ``requests`` client that decodes every page,
    then as many times by the project's client (``getEndpoints()``, what the bridge does
    at start-up), alternating.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from bridge.bench.stats import percentile
from bridge.downstream import paho_client


def _client(args: dict[str, Any], name: str, lean: bool = False) -> mqtt.Client:
    """A paho client; ``lean``: the bridge's subclass (:mod:`bridge.downstream.paho_client`), for a
    load client that should leave the shared cores to what it measures."""
    v5 = str(args.get("protocol", "5")) == "5"
    cls = paho_client.Client if lean else mqtt.Client
    client = cls(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-{name}-{os.getpid()}",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )
    return client


def _connect(client: mqtt.Client, args: dict[str, Any], timeout: float = 15.0) -> None:
    connected = threading.Event()

    def on_connect(c: mqtt.Client, *rest: Any) -> None:
        # As mosquitto_sub --nodelay: a load client must not add Nagle's delays.
        sock = c.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connected.set()

    client.on_connect = on_connect
    client.connect(args["host"], int(args["port"]), keepalive=60)
    client.loop_start()
    if not connected.wait(timeout):
        raise SystemExit("could not connect to the broker")


def paho_publish(args: dict[str, Any]) -> dict[str, Any]:
    topics: list[str] = args["topics"]
    n, size, qos, retain = int(args["n"]), int(args["size"]), int(args["qos"]), bool(args["retain"])
    client = _client(args, "paho")
    client.max_inflight_messages_set(int(args.get("inflight", 1000)))
    _connect(client, args)
    nt = len(topics)
    payloads = [f"{k:0{size}d}".encode() for k in range(n)]
    publish = client.publish
    t0 = time.time()
    info = None
    full = 0
    for k in range(n):
        info = publish(topics[k % nt], payloads[k], qos, retain)
        # paho keys its queue by message id: with 65,535 QoS 1 messages queued a new one
        # is refused (MQTT_ERR_QUEUE_SIZE) until some are acknowledged.
        while info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            full += 1
            time.sleep(0.001)
            info = publish(topics[k % nt], payloads[k], qos, retain)
    t_calls = time.time()
    if info is not None:
        info.wait_for_publish(600)
    t_done = time.time()
    client.disconnect()
    client.loop_stop()
    return {"published": n, "queue_full": full, "t_start": t0, "t_calls": t_calls, "t_done": t_done}


def _summary(
    latencies: list[float], started: float, ended: float, ok: int, failed: int
) -> dict[str, Any]:
    lat = sorted(latencies)
    n = len(lat)
    return {
        "done": n,
        "ok": ok,
        "failed": failed,
        "seconds": ended - started,
        "rate": n / (ended - started) if ended > started else 0.0,
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": (lat[-1] if lat else 0.0) * 1000,
    }


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def command_value(i: int, endpoints: int) -> str:
    """The dimmer value of command ``i``: differs from the endpoint's previous command."""
    return str((i // endpoints) % 100)


def mqtt_commands(args: dict[str, Any]) -> dict[str, Any]:
    prefix, path = args["prefix"], args["path"].lstrip("/")
    endpoints: list[str] = args["endpoints"]
    m, inflight = int(args["m"]), int(args["inflight"])
    first = int(args.get("first", 0))  # number of the first command (sets its value)
    nep = len(endpoints)
    client = _client({**args, "protocol": "5"}, "commands", lean=True)
    client.max_inflight_messages_set(max(inflight * 2, 20))
    sent = [0.0] * m
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0}
    room = threading.Semaphore(inflight)
    all_done = threading.Event()
    subscribed = threading.Event()
    lock = threading.Lock()

    # An MQTT 5 bridge echoes Correlation Data; a 3.1.1 one (no properties) the
    # envelope's "transaction", which then carries the command's number.
    envelope = bool(args.get("envelope", False))

    def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        try:
            reply = json.loads(msg.payload)
        except ValueError:
            reply = {}
        if envelope:
            number = reply.get("transaction")
            if not isinstance(number, int) or not 0 <= number < m:
                return
            i = number
        else:
            corr = getattr(msg.properties, "CorrelationData", None)
            if corr is None:
                return
            i = int.from_bytes(corr, "big")
        ok = bool(reply.get("ok"))
        with lock:
            latencies.append(now - sent[i])
            counts["ok" if ok else "failed"] += 1
            if len(latencies) >= m:
                all_done.set()
        room.release()

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    _connect(client, args)
    client.subscribe(f"{prefix}/+/{path}/set/reply", qos=1)
    if not subscribed.wait(15):
        raise SystemExit("no SUBACK")
    topics = [f"{prefix}/{ep}/{path}/set" for ep in endpoints]
    cpu0 = _cpu()
    started = time.perf_counter()
    for i in range(m):
        room.acquire()
        n = first + i
        value = command_value(n, nep)
        props: Properties | None = None
        if envelope:
            payload = json.dumps({"transaction": i, "value": value})
        else:
            payload = value
            props = paho_client.publish_properties(i.to_bytes(4, "big"))
        sent[i] = time.perf_counter()
        client.publish(topics[n % nep], payload, qos=1, properties=props)
    finished = all_done.wait(float(args.get("timeout", 300)))
    ended = time.perf_counter()
    cpu = _cpu() - cpu0
    client.disconnect()
    client.loop_stop()
    result = _summary(latencies, started, ended, counts["ok"], counts["failed"])
    result["client_cpu_us_per_command"] = cpu / max(len(latencies), 1) * 1e6  # its own
    result["complete"] = finished
    result["m"] = m
    return result


def connector_commands(args: dict[str, Any]) -> dict[str, Any]:
    from bridge.connector import asyncResult, connector
    from bridge.connector.dialects import Api

    # What the service calls each endpoint: the names on the legacy Connector, the device
    # IDs on today's service (``addresses``, in the order of ``endpoints``).
    endpoints: list[str] = args.get("addresses") or args["endpoints"]
    path = args["path"]
    m, inflight, threads = int(args["m"]), int(args["inflight"]), int(args["threads"])
    first = int(args.get("first", 0))
    nep = len(endpoints)
    api: Api = "current" if args.get("api") == "current" else "legacy"
    # The HTTP stack of the bridge (BRIDGE_CONNECTOR_HTTP=fast): the ratio compares like with like.
    c = connector(
        args["token"], args["url"], api=api, timeout=30.0, asyncTimeout=60.0, fastHttp=True
    )
    if api == "current":
        state = c.startWebsocket()
        if state != "connected":
            raise SystemExit(f"the WebSocket channel did not connect: {state}")
    else:
        c.startLongPolling()
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0}
    room = threading.Semaphore(inflight)
    all_done = threading.Event()
    lock = threading.Lock()
    issued: queue.SimpleQueue[tuple[int, float] | None] = queue.SimpleQueue()

    def finished(t0: float) -> Callable[[asyncResult], None]:
        def cb(r: asyncResult) -> None:
            now = time.perf_counter()
            with lock:
                latencies.append(now - t0)
                counts["failed" if r.error else "ok"] += 1
                if len(latencies) >= m:
                    all_done.set()
            room.release()

        return cb

    def sender() -> None:
        while True:
            item = issued.get()
            if item is None:
                return
            i, t0 = item
            n = first + i
            c.putResourceValue(endpoints[n % nep], path, command_value(n, nep), cbfn=finished(t0))

    # As the bridge: commands are issued with `inflight` outstanding and wait in a queue
    # for one of `threads` workers; latency counts from the issue, queueing included.
    workers = [threading.Thread(target=sender, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    cpu0 = _cpu()
    started = time.perf_counter()
    for i in range(m):
        room.acquire()
        issued.put((i, time.perf_counter()))
    done = all_done.wait(float(args.get("timeout", 300)))
    ended = time.perf_counter()
    for _ in workers:
        issued.put(None)
    cpu = _cpu() - cpu0
    if api == "current":
        c.stopWebsocket()
    else:
        c.stopLongPolling()
    c.close()
    result = _summary(latencies, started, ended, counts["ok"], counts["failed"])
    result["cpu_us_per_command"] = cpu / max(len(latencies), 1) * 1e6
    result["complete"] = done
    result["m"] = m
    return result


def latency_driver(args: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    url, token = args["url"], args["token"]
    targets: list[list[str]] = args["targets"]
    rate, seconds = float(args["rate"]), float(args["seconds"])

    async def run() -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        connector = aiohttp.TCPConnector(limit=32)
        errors = 0
        late = 0
        async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

            async def put(ep: str, path: str) -> None:
                nonlocal errors
                body = {"ep": ep, "path": path, "value": f"{time.time():.6f}"}
                try:
                    async with session.put(f"{url}/admin/value", json=body) as r:
                        if r.status != 204:
                            errors += 1
                        await r.read()
                except aiohttp.ClientError:
                    errors += 1

            loop = asyncio.get_running_loop()
            total = int(rate * seconds)
            tasks: set[asyncio.Task[None]] = set()
            t0 = loop.time()
            wall0 = time.time()
            for i in range(total):
                due = t0 + i / rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.005:
                    late += 1
                ep, path = targets[i % len(targets)]
                task = asyncio.create_task(put(ep, path))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            wall1 = time.time()
            if tasks:
                await asyncio.wait(tasks)
        return {
            "sent": total,
            "errors": errors,
            "late": late,
            "t_start": wall0,
            "t_end": wall1,
            "rate": total / (wall1 - wall0) if wall1 > wall0 else 0.0,
        }

    return asyncio.run(run())


def listing(args: dict[str, Any]) -> dict[str, Any]:
    import requests

    from bridge.connector import connector

    url, token, page = args["url"], args["token"], int(args["page"])
    runs = int(args.get("runs", 1))
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    client = connector(token, url, api="current", timeout=60.0, fastHttp=True)

    def plain() -> tuple[float, int, int]:
        seen: set[str] = set()
        pages = 0
        after: str | None = None
        t0 = time.perf_counter()
        while True:
            params: dict[str, str | int] = {"limit": page}
            if after is not None:
                params["after"] = after
            answer = session.get(f"{url}/v3/devices", params=params, timeout=60)
            answer.raise_for_status()
            body = answer.json()
            pages += 1
            seen.update(d["id"] for d in body["data"])
            if not body["has_more"]:
                break
            after = body["data"][-1]["id"]
        return time.perf_counter() - t0, len(seen), pages

    def through_client() -> tuple[float, int]:
        t0 = time.perf_counter()
        r = client.getEndpoints()
        took = time.perf_counter() - t0
        if r.error or not isinstance(r.result, list):
            raise SystemExit(f"getEndpoints failed: {r.error}")
        return took, len(r.result)

    session.get(f"{url}/v3/devices", params={"limit": 2}, timeout=60).raise_for_status()
    out: dict[str, Any] = {"page": page, "plain_s": [], "client_s": []}
    try:
        for _ in range(runs):
            took, devices, pages = plain()
            out["plain_s"].append(took)
            out.update(devices=devices, pages=pages)
            took, listed = through_client()
            out["client_s"].append(took)
            out["client_devices"] = listed
    finally:
        session.close()
        client.close()
    return out


KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "paho-publish": paho_publish,
    "mqtt-commands": mqtt_commands,
    "connector-commands": connector_commands,
    "latency-driver": latency_driver,
    "listing": listing,
}


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] not in KINDS:
        print(
            f"usage: python -m bridge.bench.loadgen {{{','.join(KINDS)}}} '<json>'", file=sys.stderr
        )
        return 2
    result = KINDS[argv[0]](json.loads(argv[1]))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
