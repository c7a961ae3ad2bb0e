"""Fuzzing a running bridge with random commands (issue 5, section 6).

12,000 random commands (2,000 to warm up, then 10,000 measured) go to a real
``connector-bridge run`` process: random topics under the prefix (real and unknown
endpoints, escapes good and bad, depths beyond the limit, verbs and non-verbs), random
payloads up to the size limit and beyond, envelopes good and bad, MQTT 5 Response Topics
good and refused. Every command carries unique Correlation Data, so each reply is matched
to its command. Afterwards:

- every command whose topic the bridge answers (worked out with the pure functions of
  :mod:`bridge.downstream.topics`) got exactly one reply, on the expected topic; the others none;
- the bridge still answers normally (a command, a bridge request);
- its memory (RSS of the process) did not keep growing over the measured rounds.

``FUZZ_SEED`` picks another seed (the one used is printed).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.client import topic_matches_sub

from bridge.downstream.topics import TopicError, Topics
from bridge.simulator import Emulator
from tests.reliability_support import Publisher, bridge_process, report
from tests.support.broker import MosquittoBroker

pytestmark = pytest.mark.both_dialects

T = Topics("connector")
MAX_PAYLOAD = 1024
MAX_DEPTH = 8
FILTERS = T.command_filters(MAX_DEPTH)
WARM_UP, ROUNDS, PER_ROUND = 2000, 4, 2500
WINDOW = 300  # commands awaiting their reply at most

REAL = {
    "node-001": ["3303/0/5700", "3303/0/5701", "3/0/0", "3304/0/5700"],
    "light-001": ["3311/0/5850", "3311/0/5851", "3311/0/5706", "3201/0/5550", "3/0/1"],
    "multi-001": ["3301/0/5700", "3200/0/5500", "3/0/3"],
    "sleeper-001": ["3301/0/5700"],
}
ODD_LEVELS = ["$x", "%24x", "%zz", "%C3", "%2F", "a%2Fb", "", " ", "set", "get", "reply",
              "é", "日本", "\u200b", "%", "%4", "$bridge2", "x" * 300]  # fmt: skip
VERBS = ["set", "set", "post", "get", "get"]
TEXT = "abcxyz0123456789-_.~ $%éü日€"


class Gen:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def level(self) -> str:
        r = self.r
        k = r.random()
        if k < 0.5:
            return str(r.randint(0, 65535))
        if k < 0.8:
            return "".join(r.choice(TEXT) for _ in range(r.randint(0, 12)))
        return r.choice(ODD_LEVELS)

    def topic(self) -> str:
        r = self.r
        if r.random() < 0.45:
            ep = r.choice(list(REAL))
            levels = [ep, *r.choice(REAL[ep]).split("/")]
            if r.random() < 0.2:
                levels[-1] = self.level()
        else:
            levels = [self.level() for _ in range(r.randint(1, MAX_DEPTH + 2))]
            if levels[0] == "$bridge":
                levels[0] = "%24bridge"
        k = r.random()
        last = r.choice(VERBS) if k < 0.9 else r.choice(["reply", "frob", "SET", "$state"])
        topic = "connector/" + "/".join([*levels, last])
        if r.random() < 0.002:
            topic = "connector/ep/" + "y" * 65516 + "/set"  # fits, but its reply would not
        return topic

    def payload(self) -> bytes:
        r = self.r
        k = r.random()
        if k < 0.1:
            return b""
        if k < 0.5:
            return r.randbytes(r.randint(1, 64))
        if k < 0.7:
            return self.envelope()
        if k < 0.85:
            return r.randbytes(r.randint(65, MAX_PAYLOAD))
        return r.randbytes(r.randint(MAX_PAYLOAD + 1, 2 * MAX_PAYLOAD))

    def envelope(self) -> bytes:
        r = self.r
        doc: dict[str, object] = {"transaction": r.choice([1, "t", None, [1], {"a": 1}])}
        if r.random() < 0.7:
            doc["value"] = r.choice(["1", "0", 21.5, "on", True, [1], "zz" * 10])
        if r.random() < 0.2:
            doc["encoding"] = r.choice(["base64", "utf-8", "latin1"])
        if r.random() < 0.1:
            doc["cacheOnly"] = r.choice([True, False, "yes"])
        if r.random() < 0.1:
            doc["extra"] = 1
        text = json.dumps(doc)
        return text.encode() if r.random() < 0.9 else text[: r.randint(1, len(text))].encode()

    def response_topic(self, i: int) -> str | None:
        r = self.r
        k = r.random()
        if k < 0.6:
            return None
        return r.choice(
            [
                f"fuzz/r/{i}",
                f"connector/$reply/{i}",
                f"connector/x/{i}/reply",
                "connector/light-001/3311/0/5850",  # would overwrite a value: refused
                "connector/$bridge/state",  # refused
                "$SYS/x",  # refused
            ]
        )


def expected_reply_topic(topic: str, response_topic: str | None) -> str | None:
    """Where the one reply must come, or None when the bridge cannot answer."""
    if not any(topic_matches_sub(f, topic) for f in FILTERS):
        return None  # no subscription of the bridge matches: it never sees it
    rt_ok = response_topic is not None and T.response_topic_problem(response_topic) is None
    try:
        default: str | None = T.parse_command(topic).reply_topic
    except TopicError as exc:
        default = exc.reply_topic
    if rt_ok:
        return response_topic
    return default


def wait_ready(pub: Publisher, timeout: float = 30) -> None:
    """Until the bridge answers (a command sent before it subscribed is not delivered)."""
    end = time.monotonic() + timeout
    for i in range(1000):
        key = f"ready-{i}"
        pub.command("connector/light-001/3311/0/5850/set", "0", key)
        try:
            pub.wait_replies({key.encode()}, 1.0)
            return
        except AssertionError:
            assert time.monotonic() < end, "the bridge never answered"


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as b:
        yield b


def run_round(
    pub: Publisher, gen: Gen, first: int, n: int, expect: dict[bytes, str | None]
) -> None:
    """Send ``n`` commands, keeping at most WINDOW of them waiting for their reply."""
    waiting: set[bytes] = set()
    for i in range(first, first + n):
        topic, payload, rt = gen.topic(), gen.payload(), gen.response_topic(i)
        corr = f"c{i}".encode()
        expect[corr] = expected_reply_topic(topic, rt)
        if expect[corr] is not None:
            waiting.add(corr)
        pub.send(topic, payload, corr, rt, wait=False)
        if len(waiting) >= WINDOW:
            deadline = time.monotonic() + 30
            while len(waiting) >= WINDOW // 2:
                assert time.monotonic() < deadline, "replies stopped coming"
                waiting = {c for c in waiting if not pub.count(c)}
                time.sleep(0.005)
    pub.wait_replies({c for c in waiting}, 30)


def devices_idle(emu: Emulator, timeout: float = 30.0) -> None:
    """Wait until no device of ``emu`` holds a request (in flight or queued while asleep);
    sleeping devices are woken meanwhile so that they answer what waits for them."""
    devices = list(emu.core.devices.values())
    end = time.monotonic() + timeout
    while busy := [d.name for d in devices if d.inflight or d.queue]:
        assert time.monotonic() < end, f"devices still busy: {busy}"
        for name in busy:
            if emu.core.devices[name].q:
                emu.wake(name)
        time.sleep(0.05)


def test_ten_thousand_random_commands_each_answered_once_memory_bounded(
    broker: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = int(os.environ.get("FUZZ_SEED", "20261125"))
    gen = Gen(seed)
    expect: dict[bytes, str | None] = {}
    env = {
        "BRIDGE_MAX_PAYLOAD": str(MAX_PAYLOAD),
        "BRIDGE_MAX_PATH_DEPTH": str(MAX_DEPTH),
        "BRIDGE_COMMAND_TIMEOUT": "2",
        "BRIDGE_QUEUE_MODE_TIMEOUT": "2",
        "BRIDGE_LOG_LEVEL": "WARNING",
    }
    with (
        Emulator(token="fuzz-token", pull_timeout=1.0, drift=False, seed=seed) as emu,
        bridge_process(emu, broker, tmp_path, **env) as bp,
    ):
        pub = Publisher(broker.port, ("connector/#", "fuzz/#"))
        try:
            bp.start()
            wait_ready(pub)
            started = time.monotonic()
            run_round(pub, gen, 0, WARM_UP, expect)
            rss = [bp.rss_kb()]
            for k in range(ROUNDS):
                run_round(pub, gen, WARM_UP + k * PER_ROUND, PER_ROUND, expect)
                rss.append(bp.rss_kb())
            took = time.monotonic() - started
            # A reply sent twice would be the bridge answering a late device answer: once no
            # device has a request left, every late answer is on the channel before the
            # answer to the next command, whose reply is then the marker that comes after
            # any second reply (one channel, one MQTT connection: both keep their order).
            devices_idle(emu)
            # still answers normally
            pub.command("connector/light-001/3311/0/5850/set", "1", "after")
            pub.wait_replies({b"after"}, 15)
            after = pub.reply_json(b"after")
            pub.send("connector/$bridge/request/info", b"", b"info")
            pub.wait_replies({b"info"}, 15)
            info = json.loads(pub.replies[b"info"][0][1])
            alive = bp.proc is not None and bp.proc.poll() is None
        finally:
            pub.close()
        log = bp.log()
    answered = {c for c, t in expect.items() if t is not None}
    wrong_count = {c: pub.count(c) for c in answered if pub.count(c) != 1}
    wrong_topic = {
        c: (expect[c], pub.replies[c][0][0])
        for c in answered
        if c not in wrong_count and pub.replies[c][0][0] != expect[c]
    }
    unexpected = {c for c, t in expect.items() if t is None and pub.count(c)}
    statuses: dict[int, int] = {}
    for c in answered - set(wrong_count):
        doc = json.loads(pub.replies[c][0][1])
        statuses[doc["status"]] = statuses.get(doc["status"], 0) + 1
    report(
        capsys,
        "fuzz",
        seed=seed,
        commands=len(expect),
        answerable=len(answered),
        not_answerable=len(expect) - len(answered),
        replies_not_one=len(wrong_count),
        wrong_topic=len(wrong_topic),
        unexpected_replies=len(unexpected),
        commands_per_s=len(expect) / took,
        rss_mb=" ".join(f"{x / 1024:.1f}" for x in rss),
        statuses=json.dumps(dict(sorted(statuses.items())), separators=(",", ":")),
    )
    assert alive, log[-3000:]
    assert not wrong_count, list(wrong_count.items())[:10]
    assert not wrong_topic, list(wrong_topic.items())[:10]
    assert not unexpected, sorted(unexpected)[:10]
    assert after["ok"] and info["ok"]
    assert "Traceback" not in log, log[-3000:]
    # Memory: after the warm-up, 10,000 more commands may not keep growing the process.
    growth_mb = (rss[-1] - rss[0]) / 1024
    assert growth_mb < 16, f"RSS grew {growth_mb:.1f} MB over 10,000 commands: {rss}"
    assert rss[-1] - rss[2] < (rss[2] - rss[0]) + 4096, f"still growing: {rss}"
