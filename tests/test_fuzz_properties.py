"""Property-based tests (hypothesis) of bad input, beyond tests/test_topics.py (issue 5, 6):
command topics and payloads of any shape, channel messages of any shape, notification
entries of any shape, replies with any content; plus the pure parts of the reliability
work (retry policy, reachability, redelivered replies)."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from bridge.connector import response_codes
from bridge.connector.channel import parse_message
from bridge.connector.result import asyncResult, decode_payload
from bridge.core.counters import Counters
from bridge.core.events import (
    ConnectorStateChanged,
    EventBus,
    Notification,
    NotificationsReceived,
)
from bridge.core.registry import Registry
from bridge.downstream.topics import (
    MAX_TOPIC_BYTES,
    PayloadError,
    TopicError,
    Topics,
    check_size,
    encode_reply,
    escape_level,
    fits,
    parse_bridge_request,
    parse_command_payload,
    unescape_level,
)
from bridge.extensions.commands import RETRY_CAP, RETRY_TRIES, mark_redelivered, retry_delay
from bridge.extensions.values import Values
from bridge.service.controller import Bridge
from bridge.service.settings import load_settings
from bridge.upstream.port import outcome_of
from bridge.upstream.reachability import DOWN_AFTER, Reachability
from bridge.upstream.side import ConnectorSide, parse_resources

T = Topics("connector")
FILTERS = T.command_filters(8)
any_text = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF))
levels = st.lists(
    st.one_of(
        any_text,
        st.sampled_from(["set", "get", "post", "reply", "$x", "%24", "%zz", "%C3", "%2F", ""]),
    ),
    min_size=0,
    max_size=12,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
LOOSE = settings(max_examples=300, deadline=None)


# ------------------------------------------------------------------ command topics


@LOOSE
@given(st.one_of(levels.map(lambda ls: "connector/" + "/".join(ls)), any_text))
@example("connector/$bridge/request/set")
@example("connector//set")
@example("connector/a/%/set")
def test_any_topic_parses_or_says_why_with_a_well_formed_reply_topic(topic: str) -> None:
    try:
        cmd = T.parse_command(topic)
    except TopicError as exc:
        assert exc.reason
        if exc.reply_topic is not None:
            assert exc.reply_topic == topic + "/reply"
            assert fits(exc.reply_topic)
        return
    # A parsed command has a canonical topic that parses to the same command, and
    # one reply topic, which no command subscription of the bridge matches.
    again = T.parse_command(T.command(cmd.endpoint, cmd.path, cmd.verb))
    assert (again.endpoint, again.path, again.verb) == (cmd.endpoint, cmd.path, cmd.verb)
    assert fits(cmd.reply_topic)
    if fits(cmd.reply_topic) and "\x00" not in cmd.reply_topic:
        assert not any(topic_matches_sub(f, cmd.reply_topic) for f in FILTERS)


@LOOSE
@given(any_text)
@example("%")
@example("%e9")
@example("%ED%A0%80")
def test_unescaping_anything_fails_cleanly_or_round_trips(level: str) -> None:
    try:
        name = unescape_level(level)
    except ValueError:
        return
    assert unescape_level(escape_level(name)) == name


@LOOSE
@given(any_text)
def test_response_topics_are_accepted_only_where_the_bridge_may_write(topic: str) -> None:
    problem = T.response_topic_problem(topic)
    if problem is not None:
        return
    assert topic and fits(topic) and not topic.startswith("$")
    assert not any(ch in topic for ch in "+#\x00")
    if topic == "connector" or topic.startswith("connector/"):
        assert topic.startswith("connector/$reply/") or topic.endswith("/reply")


# ------------------------------------------------------------------ command payloads


@LOOSE
@given(st.sampled_from(["set", "post", "get"]), st.binary(max_size=300))
def test_any_payload_is_a_value_or_a_400_that_echoes_the_transaction(
    verb: str, payload: bytes
) -> None:
    try:
        body = parse_command_payload(verb, payload)
    except PayloadError as exc:
        assert exc.status == 400 and exc.reason
        doc = json.loads(payload)  # only envelopes are refused
        assert exc.transaction == doc["transaction"]
        return
    assert isinstance(body.value, bytes)
    if not body.has_transaction and verb != "get":
        assert body.value == payload  # a raw value goes out byte for byte


@LOOSE
@given(json_values, json_values, st.sampled_from(["set", "post", "get"]))
def test_any_json_envelope_is_understood_or_refused_with_its_transaction(
    transaction: Any, value: Any, verb: str
) -> None:
    payload = json.dumps({"transaction": transaction, "value": value}).encode()
    try:
        body = parse_command_payload(verb, payload)
    except PayloadError as exc:
        assert exc.transaction == transaction
        return
    assert verb != "get" and body.transaction == transaction
    assert isinstance(value, str | int | float) and not isinstance(value, bool)


@LOOSE
@given(st.binary(max_size=200), st.text(max_size=20))
def test_base64_envelopes_carry_any_bytes(raw: bytes, transaction: str) -> None:
    doc = {"transaction": transaction, "value": base64.b64encode(raw).decode(),
           "encoding": "base64"}  # fmt: skip
    assert parse_command_payload("set", json.dumps(doc).encode()).value == raw


@given(st.integers(min_value=0, max_value=5000), st.integers(min_value=0, max_value=5000))
def test_size_limit_is_exact(size: int, limit: int) -> None:
    if size > limit:
        with pytest.raises(PayloadError) as info:
            check_size(b"x" * size, limit)
        assert info.value.status == 413
    else:
        check_size(b"x" * size, limit)


@LOOSE
@given(st.binary(max_size=200))
def test_any_bridge_request_body_is_an_object_or_refused(body: bytes) -> None:
    try:
        assert isinstance(parse_bridge_request(body), dict)
    except PayloadError as exc:
        assert exc.reason


# ------------------------------------------------------------------ replies


@LOOSE
@given(
    st.binary(max_size=100) | st.none(),
    json_values,
    any_text | st.none(),
    any_text,
    st.booleans(),
)
def test_every_reply_is_json_and_a_redelivered_mark_keeps_it_so(
    payload: bytes | None, transaction: Any, error: str | None, endpoint: str, ok: bool
) -> None:
    body = encode_reply(
        endpoint=endpoint, path="/1", verb="set", status=200 if ok else 503, ok=ok,
        payload=payload, error=error, transaction=transaction,
    )  # fmt: skip
    doc = json.loads(body)
    marked = json.loads(mark_redelivered(body))
    assert marked.pop("redelivered") is True
    assert marked == doc and doc["transaction"] == transaction


# ------------------------------------------------------------------ channel messages


@LOOSE
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_channel_body_is_a_message_or_a_clear_error(body: bytes) -> None:
    try:
        assert isinstance(parse_message(body), dict)
    except ValueError as exc:
        assert str(exc)


@LOOSE
@given(json_values)
def test_any_resource_listing_gives_resources_or_nothing(items: Any) -> None:
    for r in parse_resources(items):
        assert isinstance(r.path, str) and r.path


entry_values = st.one_of(
    st.text(max_size=10), st.integers(), st.none(), st.lists(st.text(), max_size=2)
)


@st.composite
def notification_entries(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if draw(st.booleans()):
        entry["ep"] = draw(st.one_of(any_text, entry_values))
    if draw(st.booleans()):
        entry["path"] = draw(st.one_of(any_text.map(lambda t: "/" + t), entry_values))
    kind = draw(st.integers(0, 3))
    if kind == 1:
        entry["payload"] = base64.b64encode(draw(st.binary(max_size=50))).decode()
    elif kind == 2:
        entry["payload"] = draw(st.one_of(any_text, entry_values))
    return entry


Deliver = Callable[[list[Any]], None]


@pytest.fixture(scope="module")
def values_ext() -> Iterator[tuple[Values, list[tuple[str, bytes]], Deliver]]:
    """The real Connector side and Values extension of a bridge that is not started; only
    its publish sink records instead of sending (a unit test of the notification hot path:
    wire entries -> decoded events -> publications). ``deliver(entries)`` hands the
    entries to the Connector side as one channel message."""
    settings_ = load_settings(
        None,
        env_file=None,
        overrides={"connector_url": "http://127.0.0.1:9", "connector_token": "t-fuzz"},
    )
    bridge = Bridge(settings_)
    published: list[tuple[str, bytes]] = []
    bridge.mqtt.publish = lambda topic, payload, *a, **kw: published.append(  # type: ignore[method-assign]
        (topic, payload if isinstance(payload, bytes) else payload.encode())
    )
    ext = next(e for e in bridge.extensions if isinstance(e, Values))
    ext.start()  # its bus subscriptions only (the bridge itself is not started)

    def deliver(entries: list[Any]) -> None:
        bridge.connector_side._on_notifications({"notifications": entries})

    yield ext, published, deliver
    bridge.connector_side.close()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(notification_entries(), max_size=20))
# Found by Hypothesis: the lenient C decoder skipped ":" and took it for an empty value.
@example([{"ep": "0", "path": "/", "payload": ":"}])
def test_any_notification_entries_publish_exactly_the_well_formed_ones(
    values_ext: tuple[Values, list[tuple[str, bytes]], Deliver], entries: list[dict[str, Any]]
) -> None:
    ext, published, deliver = values_ext
    published.clear()
    before = ext.ctx.counters.snapshot()
    deliver(entries)
    after = ext.ctx.counters.snapshot()
    sent = after.get("notifications_published", 0) - before.get("notifications_published", 0)
    bad = after.get("notifications_bad", 0) - before.get("notifications_bad", 0)
    assert sent == len(published) and sent + bad == len(entries)
    good = iter(published)
    for e in entries:
        if not (isinstance(e.get("ep"), str) and isinstance(e.get("path"), str)):
            continue
        raw = e.get("payload")
        try:
            expected = decode_payload(e) if raw not in (None, "") else b""
        except ValueError:
            continue  # garbage: dropped or decoded leniently, never a crash
        if not fits(T.value(e["ep"], e["path"])):
            continue
        topic, payload = next(good)
        assert topic == T.value(e["ep"], e["path"])
        assert payload == expected


names = st.sampled_from(["a", "b", "$c", "d/e"]) | any_text
reg_entries = st.lists(
    st.fixed_dictionaries(
        {"ep": names | json_values},
        optional={"ept": json_values, "q": json_values, "resources": json_values},
    )
    | json_values,
    max_size=4,
)
lifecycle_messages = st.fixed_dictionaries(
    {},
    optional={
        "registrations": reg_entries | json_values,
        "reg-updates": reg_entries | json_values,
        "de-registrations": st.lists(names | json_values, max_size=4) | json_values,
        "registrations-expired": st.lists(names | json_values, max_size=4) | json_values,
        "notifications": json_values,
    },
)


@pytest.fixture(scope="module")
def side() -> Iterator[ConnectorSide]:
    settings_ = load_settings(
        None,
        env_file=None,
        overrides={"connector_url": "http://127.0.0.1:9", "connector_token": "t-fuzz"},
    )
    s = ConnectorSide(settings_, EventBus(), Registry(), Counters())
    yield s
    s.close()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(lifecycle_messages, max_size=5))
def test_any_lifecycle_message_keeps_the_registry_consistent(
    side: ConnectorSide, messages: list[dict[str, Any]]
) -> None:
    side.registry = registry = Registry()
    named: set[str] = set()
    for m in messages:
        for key in ("registrations", "reg-updates"):
            if isinstance(m.get(key), list):
                named |= {
                    e["ep"] for e in m[key] if isinstance(e, dict) and isinstance(e.get("ep"), str)
                }
        for key in ("de-registrations", "registrations-expired"):
            if isinstance(m.get(key), list):
                named |= {n for n in m[key] if isinstance(n, str)}
        side._on_registrations(m)
        side._on_reg_updates(m)
        side._on_notifications(m)
        side._on_deregistrations(m)
        side._on_expirations(m)
    for ep in registry.all():
        assert ep.name in named, "only names the messages gave"
        assert ep.state in ("online", "offline", "expired")


# ------------------------------------------------------------------ retry policy, reachability


def failure(status: int, err_type: str | None, text: str, kind: str | None = None) -> asyncResult:
    r = asyncResult()
    r.error = response_codes("resource", status, error=text or None, errType=err_type)
    if kind is not None:
        setattr(r.error, "failure", kind)  # noqa: B010 (the HTTP stacks' type of failure)
    return r


@given(
    st.sampled_from(["set", "post", "get"]),
    st.integers(min_value=0, max_value=599),
    st.sampled_from([None, "connection_error", "request_timeout", "invalid_response"]),
    st.sampled_from(["", "NewConnectionError refused", "ConnectionResetError", "ReadTimeout"]),
    st.sampled_from([None, "not_sent", "no_answer"]),
    st.integers(min_value=1, max_value=20),
)
def test_retry_policy_never_repeats_an_execute_that_may_have_run(
    verb: str, status: int, err_type: str | None, text: str, kind: str | None, attempt: int
) -> None:
    if err_type in ("connection_error", "request_timeout"):
        status = 0  # the client's own failures: no HTTP status
    else:
        kind = None  # answered with a status
    r = failure(status, err_type, text, kind)
    delay = retry_delay(verb, outcome_of(r), attempt)
    if delay is None:
        return
    assert 0 < delay <= RETRY_CAP and attempt < RETRY_TRIES
    # Decided on types alone: the error text never makes a POST retried.
    not_taken = status in (412, 429, 503) or kind == "not_sent"
    if verb == "post":
        assert not_taken, "a POST is retried only when the Connector surely did not take it"
    assert status == 0 or status >= 500 or status in (412, 429) or err_type == "invalid_response"


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ok", "fail", "refused"]),
            st.floats(min_value=0, max_value=3, allow_nan=False),
        ),
        max_size=30,
    )
)
def test_reachability_changes_state_only_when_it_should(steps: list[tuple[str, float]]) -> None:
    now = [0.0]
    bus = EventBus()
    events: list[ConnectorStateChanged] = []
    bus.subscribe(ConnectorStateChanged, events.append)
    reach = Reachability(bus, Counters(), clock=lambda: now[0])
    failing_since: float | None = None
    for what, dt in steps:
        now[0] += dt
        before = reach.state
        if what == "ok":
            reach.success()
            failing_since = None
            assert reach.state == "up"
        elif what == "refused":
            reach.failure("HTTP 401", 401)
            failing_since = now[0] if failing_since is None else failing_since
            assert reach.state == "refused"
        else:
            reach.failure("connection refused", 0)
            failing_since = now[0] if failing_since is None else failing_since
            if before in (None, "up") and now[0] - failing_since < DOWN_AFTER:
                assert reach.state == before, "one short failure is not an outage"
            if now[0] - failing_since >= DOWN_AFTER and before != "refused":
                assert reach.state == "down"
    # one event per change, never two alike in a row
    assert all(a.state != b.state for a, b in itertools.pairwise(events))
    assert (events[-1].state if events else None) == reach.state


def test_max_topic_bytes_is_mqtts() -> None:
    assert MAX_TOPIC_BYTES == 65535


@pytest.mark.parametrize("payload", [0, [], False, 7])
def test_a_notification_whose_payload_is_not_a_string_is_bad_not_empty(
    values_ext: tuple[Values, list[tuple[str, bytes]], Deliver], payload: object
) -> None:
    # Found by the test above: a falsy non-string payload (0, [], false) was published as
    # an empty value; the client's decode_payload refuses it, and so does the bridge.
    ext, published, deliver = values_ext
    published.clear()
    before = ext.ctx.counters.snapshot().get("notifications_bad", 0)
    deliver([{"ep": "n1", "path": "/3/0/1", "payload": payload}])
    assert published == []
    assert ext.ctx.counters.snapshot().get("notifications_bad", 0) == before + 1
    deliver([{"ep": "n1", "path": "/3/0/1", "payload": ""}])
    assert published == [(T.value("n1", "/3/0/1"), b"")]  # an empty string is an empty value


def test_the_connector_side_hands_on_values_not_wire_entries(
    values_ext: tuple[Values, list[tuple[str, bytes]], Deliver],
) -> None:
    ext, _, deliver = values_ext
    seen: list[NotificationsReceived] = []
    ext.ctx.bus.subscribe(NotificationsReceived, seen.append)
    try:
        deliver(
            [
                {"ep": "n1", "path": "/3/0/1", "payload": base64.b64encode(b"21.5").decode()},
                {"ep": "n1", "payload": "MQ=="},  # no path: bad
                {"ep": "n2", "path": "/1/0/1", "payload": "MQ"},  # padding missing: fine
            ]
        )
    finally:
        ext.ctx.bus.unsubscribe(NotificationsReceived, seen.append)
    assert seen == [
        NotificationsReceived(
            [Notification("n1", "/3/0/1", b"21.5"), Notification("n2", "/1/0/1", b"1")], 3
        )
    ]
