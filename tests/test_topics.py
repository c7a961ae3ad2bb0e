"""The topic contract as pure functions: escaping, command parsing, payloads, replies."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from bridge.downstream.topics import (
    VERBS,
    PayloadError,
    TopicError,
    Topics,
    check_size,
    encode_bridge_response,
    encode_reply,
    encode_resources,
    escape_level,
    escape_path,
    fits,
    parse_bridge_request,
    parse_command_payload,
    unescape_level,
    unescape_path,
    validate_prefix,
)

T = Topics("connector")

# Any Python string, including lone surrogates, NUL and the other code points brokers refuse.
any_text = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF))
paths = st.lists(any_text, min_size=1, max_size=8).map(lambda segs: "/" + "/".join(segs))


def broker_accepts(level: str) -> bool:
    """Mirror of Mosquitto's mosquitto_validate_utf8 plus the topic-name rules."""
    for ch in level:
        cp = ord(ch)
        if (
            cp <= 0x1F
            or 0x7F <= cp <= 0x9F
            or 0xD800 <= cp <= 0xDFFF
            or 0xFDD0 <= cp <= 0xFDEF
            or (cp & 0xFFFF) in (0xFFFE, 0xFFFF)
            or ch in "+#"
        ):
            return False
    return True


# ------------------------------------------------------------------ escaping


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("node-001", "node-001"),
        ("a/b", "a%2Fb"),
        ("a+b#c", "a%2Bb%23c"),
        ("100%", "100%25"),
        ("$sys", "%24sys"),
        ("a$b", "a$b"),  # only a leading $ is special
        ("nul\x00", "nul%00"),
        ("tab\there", "tab%09here"),
        ("del\x7f", "del%7F"),
        ("c1\x85", "c1%C2%85"),
        ("nonchar\ufffe", "nonchar%EF%BF%BE"),
        ("\ufdd0", "%EF%B7%90"),
        ("lone\ud800", "lone%ED%A0%80"),
        ("", ""),
        ("ünïcödé ok", "ünïcödé ok"),
        ("set", "set"),  # endpoint names may be verbs: the verb is always the last level
    ],
)
def test_escape_level_examples(name: str, level: str) -> None:
    assert escape_level(name) == level
    assert unescape_level(level) == name


@given(any_text)
@example("$")
@example("%24")
@example("/+#%$\x00")
def test_escape_level_round_trips_and_is_one_clean_level(name: str) -> None:
    level = escape_level(name)
    assert unescape_level(level) == name
    assert "/" not in level
    assert not level.startswith("$")
    assert broker_accepts(level)
    level.encode("utf-8")  # strict: no surrogates left


@given(any_text, any_text)
def test_escape_level_is_injective(a: str, b: str) -> None:
    if a != b:
        assert escape_level(a) != escape_level(b)


def test_unescape_accepts_extra_escapes_and_lower_case() -> None:
    assert unescape_level("%41%62c") == "Abc"
    assert unescape_level("a%2fb") == "a/b"


@pytest.mark.parametrize("bad", ["%", "%2", "%G0", "a%zzb", "%C3", "%FF", "%C3%28"])
def test_unescape_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        unescape_level(bad)


@pytest.mark.parametrize(
    ("path", "levels"),
    [
        ("/3303/0/5700", "3303/0/5700"),
        ("/3", "3"),
        ("/3/0/4/1/2/3/4/5/6/7", "3/0/4/1/2/3/4/5/6/7"),
        ("/dev/temp", "dev/temp"),
        ("/dev/set", "dev/%73et"),
        ("/dev/get", "dev/%67et"),
        ("/dev/post", "dev/%70ost"),
        ("/dev/reply", "dev/%72eply"),
        ("/set/x", "set/x"),  # only the last segment can be confused with a verb
        ("/$state", "%24state"),
        ("/a+b/#", "a%2Bb/%23"),
        ("/", ""),
        ("/a//b", "a//b"),
    ],
)
def test_escape_path_examples(path: str, levels: str) -> None:
    assert escape_path(path) == levels
    assert unescape_path(levels.split("/")) == path


@given(paths)
def test_escape_path_round_trips(path: str) -> None:
    levels = escape_path(path)
    assert unescape_path(levels.split("/")) == path
    assert levels.split("/")[-1] not in (*VERBS, "reply")
    assert all(broker_accepts(level) and not level.startswith("$") for level in levels.split("/"))


# ------------------------------------------------------------------ topics


def test_topic_table() -> None:
    assert T.value("node-001", "/3303/0/5700") == "connector/node-001/3303/0/5700"
    assert T.command("light-001", "/3311/0/5850", "set") == "connector/light-001/3311/0/5850/set"
    assert T.state("node-001") == "connector/node-001/$state"
    assert T.resources("node-001") == "connector/node-001/$resources"
    assert T.bridge_state == "connector/$bridge/state"
    assert T.bridge_request("info") == "connector/$bridge/request/info"
    assert T.bridge_response("info") == "connector/$bridge/response/info"
    assert T.bridge_request_filter == "connector/$bridge/request/+"
    assert T.value("a/b", "/1") == "connector/a%2Fb/1"


def test_multi_level_prefix() -> None:
    t = Topics("home/lwm2m")
    cmd = t.parse_command("home/lwm2m/ep/1/0/2/set")
    assert (cmd.endpoint, cmd.path, cmd.verb) == ("ep", "/1/0/2", "set")
    assert t.value("ep", "/1") == "home/lwm2m/ep/1"


@given(any_text, paths, st.sampled_from(VERBS))
def test_command_topics_round_trip(endpoint: str, path: str, verb: str) -> None:
    topic = T.command(endpoint, path, verb)  # type: ignore[arg-type]
    cmd = T.parse_command(topic)
    assert (cmd.endpoint, cmd.path, cmd.verb) == (endpoint, path, verb)
    assert cmd.reply_topic == topic + "/reply"
    assert cmd.method == {"set": "PUT", "post": "POST", "get": "GET"}[verb]


@given(any_text, paths)
def test_no_bridge_publication_matches_a_command_filter(endpoint: str, path: str) -> None:
    """The bridge must never receive its own traffic: no topic it publishes (value,
    $state, $resources, replies, bridge state and responses) matches a command filter."""
    depth = len(path.split("/")) - 1
    filters = T.command_filters(max(depth, 8))
    published = [
        T.value(endpoint, path),
        T.state(endpoint),
        T.resources(endpoint),
        T.command(endpoint, path, "set") + "/reply",
        T.bridge_state,
        T.bridge_response("set"),
        T.bridge_response(endpoint),
    ]
    for topic in published:
        for f in filters:
            assert not topic_matches_sub(f, topic), (f, topic)
    # ...while every command topic of that depth does match one filter per verb
    for verb in VERBS:
        cmd = T.command(endpoint, path, verb)
        assert sum(topic_matches_sub(f, cmd) for f in filters) == 1


def test_command_filters_shape() -> None:
    filters = T.command_filters(2)
    assert "connector/+/+/set" in filters
    assert "connector/+/+/+/get" in filters
    assert "connector/+/+/+/+/get" not in filters
    assert "connector/+/set" in filters  # depth 0: answered with "missing resource path"
    assert len(filters) == 3 * 3


@pytest.mark.parametrize(
    ("topic", "reason", "reply"),
    [
        ("other/ep/1/set", "not under the prefix", None),
        ("connector/ep/1/frob", "does not end in", None),
        ("connector/ep/set", "missing resource path", "connector/ep/set/reply"),
        ("connector/$x/1/set", "reserved", "connector/$x/1/set/reply"),
        ("connector/a%zz/1/set", "endpoint level", "connector/a%zz/1/set/reply"),
        ("connector/ep/1/%C3/set", "resource path", "connector/ep/1/%C3/set/reply"),
    ],
)
def test_parse_command_errors(topic: str, reason: str, reply: str | None) -> None:
    with pytest.raises(TopicError) as info:
        T.parse_command(topic)
    assert reason in info.value.reason
    assert info.value.reply_topic == reply


def test_parse_command_too_long_to_answer() -> None:
    topic = "connector/ep/" + "x" * 65530 + "/set"
    with pytest.raises(TopicError) as info:
        T.parse_command(topic)
    assert info.value.reply_topic is None


def test_parse_command_lenient_forms() -> None:
    assert T.parse_command("connector/ep/dev/set/set").path == "/dev/set"
    assert T.parse_command("connector/ep/dev/%73et/set").path == "/dev/set"


def test_bridge_action() -> None:
    assert T.bridge_action("connector/$bridge/request/info") == "info"
    assert T.bridge_action("connector/$bridge/request/") is None
    assert T.bridge_action("connector/$bridge/state") is None


def test_fits() -> None:
    assert fits("a" * 65535)
    assert not fits("a" * 65536)
    assert fits("é" * 32767)
    assert not fits("é" * 32768)


@pytest.mark.parametrize("bad", ["", "/a", "a/", "$SYS", "a/+", "a#", "a\x00b", "a\x7fb"])
def test_validate_prefix_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_prefix(bad)


def test_validate_prefix_accepts() -> None:
    assert validate_prefix("a/b c/ü") == "a/b c/ü"


def test_endpoint_cache_is_bounded() -> None:
    t = Topics("p")
    t.CACHE_LIMIT = 10
    for i in range(25):
        assert t.value(f"ep{i}", "/1") == f"p/ep{i}/1"
    assert len(t._ep_cache) <= 10


# ------------------------------------------------------------------ payloads


def test_raw_payload_is_sent_byte_for_byte() -> None:
    for raw in (b"1", b"", b"\xff\x00", b'{"value": 1}', b"[1,2]", b" {broken"):
        p = parse_command_payload("set", raw)
        assert p.value == raw and not p.has_transaction and p.transaction is None


def test_envelope() -> None:
    p = parse_command_payload("set", b'{"transaction": 7, "value": "on"}')
    assert (p.value, p.transaction, p.has_transaction) == (b"on", 7, True)
    p = parse_command_payload("set", b'{"transaction": "a", "value": 21.5}')
    assert p.value == b"21.5"
    p = parse_command_payload("post", b'{"transaction": null}')
    assert (p.value, p.transaction, p.has_transaction) == (b"", None, True)
    b64 = base64.b64encode(b"\x00\xff").decode()
    p = parse_command_payload(
        "set", json.dumps({"transaction": 1, "value": b64, "encoding": "base64"}).encode()
    )
    assert p.value == b"\x00\xff"
    p = parse_command_payload("get", b'{"transaction": 2, "cacheOnly": true}')
    assert p.cache_only and p.transaction == 2


def test_get_ignores_a_raw_payload() -> None:
    assert parse_command_payload("get", b"1700000000").value == b""


@pytest.mark.parametrize(
    ("verb", "body", "reason"),
    [
        ("set", {"transaction": 1, "value": "x", "extra": 1}, "unknown envelope member"),
        ("set", {"transaction": 1, "value": True}, "string or a number"),
        ("set", {"transaction": 1, "value": [1]}, "string or a number"),
        ("set", {"transaction": 1, "value": "!!", "encoding": "base64"}, "not valid base64"),
        ("set", {"transaction": 1, "value": 1, "encoding": "base64"}, "must be a string"),
        ("set", {"transaction": 1, "value": "x", "encoding": "latin1"}, "encoding must be"),
        ("set", {"transaction": 1, "cacheOnly": True}, "get only"),
        ("get", {"transaction": 1, "cacheOnly": "yes"}, "true or false"),
        ("get", {"transaction": 1, "value": "x"}, "get takes no value"),
    ],
)
def test_bad_envelopes_echo_the_transaction(verb: str, body: dict, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_command_payload(verb, json.dumps(body).encode())
    assert reason in info.value.reason
    assert info.value.transaction == 1
    assert info.value.status == 400


def test_check_size() -> None:
    check_size(b"x" * 10, 10)
    with pytest.raises(PayloadError) as info:
        check_size(b"x" * 11, 10)
    assert info.value.status == 413


def test_reply_shape_text_and_binary() -> None:
    reply = json.loads(
        encode_reply(endpoint="e", path="/1", verb="get", status=200, ok=True, payload=b"21.5")
    )
    assert reply == {
        "endpoint": "e",
        "path": "/1",
        "verb": "get",
        "method": "GET",
        "status": 200,
        "ok": True,
        "payload": "21.5",
        "encoding": "utf-8",
        "error": None,
        "code": None,
        "transaction": None,
    }
    reply = json.loads(
        encode_reply(
            endpoint="e",
            path="/1",
            verb="set",
            status=504,
            ok=False,
            payload=b"\xff",
            error="timeout",
            transaction={"id": 3},
        )
    )
    assert reply["payload"] == base64.b64encode(b"\xff").decode()
    assert reply["encoding"] == "base64"
    assert reply["transaction"] == {"id": 3}
    assert reply["method"] == "PUT"


@given(st.binary(max_size=64))
def test_reply_payload_round_trips(raw: bytes) -> None:
    reply = json.loads(
        encode_reply(endpoint="e", path="/1", verb="get", status=200, ok=True, payload=raw)
    )
    back = (
        reply["payload"].encode()
        if reply["encoding"] == "utf-8"
        else base64.b64decode(reply["payload"])
    )
    assert back == raw


def test_bridge_request_bodies() -> None:
    assert parse_bridge_request(b"") == {}
    assert parse_bridge_request(b'{"transaction": 1}') == {"transaction": 1}
    for bad in (b"nope", b"[1]", b"\xff"):
        with pytest.raises(PayloadError):
            parse_bridge_request(bad)
    doc = json.loads(encode_bridge_response("info", ok=True, data={"a": 1}, transaction="t"))
    assert doc == {
        "action": "info",
        "ok": True,
        "status": None,
        "data": {"a": 1},
        "error": None,
        "transaction": "t",
    }


def test_resources_document() -> None:
    doc = json.loads(
        encode_resources(
            "Light",
            False,
            [{"path": "/3311/0/5850", "rt": "On/Off", "ct": "text/plain", "obs": True, "if": ""}],
        )
    )
    assert doc == {
        "type": "Light",
        "q": False,
        "resources": [{"path": "/3311/0/5850", "rt": "On/Off", "ct": "text/plain", "obs": True}],
    }
