"""The MQTT contract as pure functions: topics, escaping, command payloads and replies.

Nothing here does I/O, so every rule of the topic table can be tested exhaustively and
the hot path (a notification becoming a topic) stays a dictionary look-up and a string
concatenation.

Topic grammar (``P`` is the prefix, ``connector`` by default)::

    P/<ep>/<res>                  value            (bridge -> clients, retained)
    P/<ep>/<res>/set|post|get     command          (clients -> bridge)
    P/<ep>/<res>/<verb>/reply     command reply    (bridge -> clients)
    P/<ep>/$state                 availability     (bridge -> clients, retained)
    P/<ep>/$resources             resource list    (bridge -> clients, retained)
    P/$bridge/state               bridge online/offline (will message)
    P/$bridge/request/<action>    bridge request   (clients -> bridge)
    P/$bridge/response/<action>   bridge response  (bridge -> clients)

Escaping makes the grammar unambiguous and reversible. Every endpoint name is exactly one
topic level and every resource path segment is one level; in each level the characters
``%``, ``/``, ``+``, ``#``, a leading ``$`` and every code point an MQTT broker refuses
(NUL and other control characters, surrogates, non-characters) are written as ``%XX``
(upper-case hex of their UTF-8 bytes). In addition, when the *last* segment of a resource
path is exactly ``set``, ``get``, ``post`` or ``reply``, its first letter is escaped
(``/dev/set`` becomes ``dev/%73et``), so a value topic never ends in a verb and the
bridge's command subscriptions can never match its own value traffic. Decoding accepts
any ``%XX`` sequence (``%41`` is ``A``), so clients may escape more than needed.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Verb = Literal["set", "post", "get"]
VERBS: tuple[Verb, ...] = ("set", "post", "get")
METHOD_OF_VERB: dict[str, str] = {"set": "PUT", "post": "POST", "get": "GET"}
REPLY_LEVEL = "reply"
STATE_LEVEL = "$state"
RESOURCES_LEVEL = "$resources"
BRIDGE_LEVEL = "$bridge"
REPLY_AREA = "$reply"  # <prefix>/$reply/...: where MQTT 5 requesters may ask for answers
MAX_TOPIC_BYTES = 65535
"""An MQTT topic is a length-prefixed UTF-8 string: at most 65,535 bytes."""

# Whole last path segments that would make a value topic look like a command or a reply.
_RESERVED_LAST = frozenset((*VERBS, REPLY_LEVEL))


class TopicError(ValueError):
    """A command topic that cannot be carried out.

    ``reply_topic`` is where the error reply goes, or None when no reply topic can be
    formed (the topic is not a command topic at all); then the bridge only logs.
    """

    def __init__(self, reason: str, reply_topic: str | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply_topic = reply_topic


class PayloadError(ValueError):
    """A command payload that cannot be carried out; ``transaction`` is echoed if known."""

    def __init__(self, reason: str, transaction: Any = None, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transaction = transaction
        self.status = status


# ---------------------------------------------------------------------------- escaping


def _must_escape(ch: str) -> bool:
    """True for characters that cannot stand as themselves inside a topic level."""
    cp = ord(ch)
    return (
        ch in "%/+#"
        or cp <= 0x1F
        or 0x7F <= cp <= 0x9F
        or 0xD800 <= cp <= 0xDFFF
        or 0xFDD0 <= cp <= 0xFDEF
        or (cp & 0xFFFF) in (0xFFFE, 0xFFFF)
    )


def _no_special(name: str) -> bool:
    """No character that is special in a topic or in the escaping itself."""
    return "%" not in name and "/" not in name and "+" not in name and "#" not in name


def _percent(ch: str) -> str:
    # surrogatepass: a lone surrogate (possible in JSON text) still round-trips.
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))


def escape_level(name: str) -> str:
    """One topic level for ``name``: the endpoint-name escaping rule (see module doc)."""
    if name.isascii() and name.isprintable() and _no_special(name) and name[:1] != "$":
        return name  # the common case, on every publish: nothing to escape
    out = [_percent(ch) if _must_escape(ch) else ch for ch in name]
    if out and name[0] == "$":
        out[0] = "%24"
    return "".join(out)


_HEXDIGITS = frozenset("0123456789abcdefABCDEF")


def unescape_level(level: str) -> str:
    """The name a topic level stands for; raises ValueError on a malformed escape."""
    if "%" not in level:
        return level
    head, *rest = level.split("%")
    raw = bytearray(head.encode("utf-8", "surrogatepass"))
    for part in rest:
        code = part[:2]
        if len(code) < 2 or not _HEXDIGITS.issuperset(code):
            raise ValueError(
                f"malformed escape {'%' + code!r}: '%' must be followed by two hex digits"
            )
        raw.append(int(code, 16))
        raw += part[2:].encode("utf-8", "surrogatepass")
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise ValueError("the %XX escapes do not form UTF-8") from None


@functools.lru_cache(maxsize=4096)  # a fleet has few distinct resource paths
def escape_path(path: str) -> str:
    """The topic levels of a resource path (``/3303/0/5700`` -> ``3303/0/5700``).

    The leading ``/`` is dropped; each segment is escaped as a level; a last segment
    that is a verb or ``reply`` gets its first letter escaped.
    """
    segments = (path[1:] if path.startswith("/") else path).split("/")
    levels = [escape_level(s) for s in segments]
    last = segments[-1]
    if last in _RESERVED_LAST:
        levels[-1] = _percent(last[0]) + last[1:]
    return "/".join(levels)


def unescape_path(levels: Sequence[str]) -> str:
    """The resource path for topic levels (inverse of :func:`escape_path`)."""
    return "/" + "/".join(unescape_level(level) for level in levels)


# ---------------------------------------------------------------------------- topics


@functools.lru_cache(maxsize=64)  # checked at every Topics(); a process has few prefixes
def validate_prefix(prefix: str) -> str:
    """Check a topic prefix; return it or raise ValueError saying what is wrong."""
    if not prefix:
        raise ValueError("must not be empty")
    if prefix.startswith("/") or prefix.endswith("/"):
        raise ValueError("must not start or end with '/'")
    if prefix.startswith("$"):
        raise ValueError("must not start with '$' (reserved for the broker)")
    if any(ch in "+#" for ch in prefix):
        raise ValueError("must not contain the wildcards '+' or '#'")
    bad = [ch for ch in prefix if _must_escape(ch) and ch not in "%/"]
    if bad:
        raise ValueError(f"contains a character MQTT does not allow: {bad[0]!r}")
    if len(prefix.encode("utf-8")) > 1000:
        raise ValueError("is longer than 1000 bytes")
    return prefix


def fits(topic: str) -> bool:
    """True when ``topic`` is short enough to be an MQTT topic (65,535 UTF-8 bytes)."""
    if len(topic) <= MAX_TOPIC_BYTES // 4:  # fast path: even 4-byte characters fit
        return True
    return len(topic.encode("utf-8", "surrogatepass")) <= MAX_TOPIC_BYTES


@dataclass(frozen=True, slots=True)
class Command:
    """A well-formed command topic, decoded."""

    endpoint: str
    path: str
    verb: Verb
    topic: str

    @property
    def method(self) -> str:
        return METHOD_OF_VERB[self.verb]

    @property
    def reply_topic(self) -> str:
        return f"{self.topic}/{REPLY_LEVEL}"


class Topics:
    """All topics under one prefix, with the escaping cached for the hot path.

    The caches hold escaped endpoint names and escaped paths separately (a fleet has many
    endpoints but few distinct paths), and are cleared when they grow past a bound, so
    memory stays proportional to the fleet, never to the traffic.
    """

    CACHE_LIMIT = 500_000

    def __init__(self, prefix: str) -> None:
        self.prefix = validate_prefix(prefix)
        self._base = prefix + "/"
        self._ep_cache: dict[str, str] = {}
        self._path_cache: dict[str, str] = {}
        self.bridge_state = f"{prefix}/{BRIDGE_LEVEL}/state"
        self.bridge_health = f"{prefix}/{BRIDGE_LEVEL}/health"
        self.bridge_request_filter = f"{prefix}/{BRIDGE_LEVEL}/request/+"
        self._bridge_request_base = f"{prefix}/{BRIDGE_LEVEL}/request/"

    # -- bridge -> clients
    def endpoint_base(self, endpoint: str) -> str:
        """``<prefix>/<escaped ep>/``: cached, the start of every topic of an endpoint."""
        base = self._ep_cache.get(endpoint)
        if base is None:
            if len(self._ep_cache) >= self.CACHE_LIMIT:
                self._ep_cache.clear()
            base = self._ep_cache[endpoint] = self._base + escape_level(endpoint) + "/"
        return base

    def path_levels(self, path: str) -> str:
        levels = self._path_cache.get(path)
        if levels is None:
            if len(self._path_cache) >= self.CACHE_LIMIT:
                self._path_cache.clear()
            levels = self._path_cache[path] = escape_path(path)
        return levels

    def value(self, endpoint: str, path: str) -> str:
        """The value topic of a resource."""
        return self.endpoint_base(endpoint) + self.path_levels(path)

    def replica_state(self, member: str) -> str:
        """One replica's own retained online/offline (several bridges for one account)."""
        return f"{self.prefix}/{BRIDGE_LEVEL}/replicas/{member}/state"

    def replica_health(self, member: str) -> str:
        return f"{self.prefix}/{BRIDGE_LEVEL}/replicas/{member}/health"

    def state(self, endpoint: str) -> str:
        return self.endpoint_base(endpoint) + STATE_LEVEL

    def resources(self, endpoint: str) -> str:
        return self.endpoint_base(endpoint) + RESOURCES_LEVEL

    def command(self, endpoint: str, path: str, verb: Verb) -> str:
        return f"{self.value(endpoint, path)}/{verb}"

    def bridge_response(self, action: str) -> str:
        """Where the response to ``action`` goes. The action is escaped like a path
        segment, so even a request for an action called ``set`` cannot produce a
        topic that matches the bridge's own command subscriptions."""
        return f"{self.prefix}/{BRIDGE_LEVEL}/response/{escape_path(action)}"

    def bridge_request(self, action: str) -> str:
        return self._bridge_request_base + action

    # -- clients -> bridge
    def command_filters(self, max_depth: int) -> list[str]:
        """Subscriptions for commands on paths of 1..max_depth segments (and 0, to
        answer a missing path). Each ends in a verb, which no value, state, resources or
        reply topic does, so none of them can match the bridge's own traffic."""
        return [
            self._base + "+/" + "+/" * depth + verb
            for depth in range(max_depth + 1)
            for verb in VERBS
        ]

    def response_topic_problem(self, topic: str) -> str | None:
        """Why an MQTT 5 Response Topic may not be used, or None when it may.

        The bridge publishes with its own rights, so a requester must not be able to make
        it write on the bridge's own topics (values, ``$state``, ``$resources``,
        ``$bridge``...): under the prefix, only ``<prefix>/$reply/...`` and topics whose
        last level is ``reply`` are accepted. Elsewhere the broker's ACL decides.
        """
        if not topic:
            return "empty"
        if any(ch in topic for ch in "+#") or "\x00" in topic:
            return "contains a wildcard or NUL"
        if topic.startswith("$"):
            return "starts with '$' (reserved for the broker)"
        if not fits(topic):
            return "too long"
        if topic == self.prefix or topic.startswith(self._base):
            rest = topic[len(self._base) :]
            if rest.startswith(REPLY_AREA + "/") or topic.rsplit("/", 1)[-1] == REPLY_LEVEL:
                return None
            return (
                f"under {self.prefix!r} only {self._base}{REPLY_AREA}/... or a topic ending "
                f"in /{REPLY_LEVEL} may be a response topic"
            )
        return None

    def bridge_action(self, topic: str) -> str | None:
        """The action of a bridge request topic, or None if it is not one."""
        if topic.startswith(self._bridge_request_base):
            action = topic[len(self._bridge_request_base) :]
            if action and "/" not in action:
                return action
        return None

    def parse_command(self, topic: str) -> Command:
        """Decode a command topic or raise :class:`TopicError` with the reason."""
        if not topic.startswith(self._base):
            raise TopicError(f"topic is not under the prefix {self.prefix!r}", None)
        levels = topic[len(self._base) :].split("/")
        verb = levels[-1]
        if verb not in VERBS or len(levels) < 2:
            raise TopicError("topic does not end in set, post or get", None)
        reply_topic = f"{topic}/{REPLY_LEVEL}"
        if not fits(reply_topic):
            raise TopicError("topic too long to answer", None)
        ep_level, path_levels = levels[0], levels[1:-1]
        if ep_level.startswith("$"):
            raise TopicError(
                f"{ep_level!r} is reserved; an endpoint whose name starts with '$' "
                "is written with %24 instead",
                reply_topic,
            )
        if not path_levels:
            raise TopicError("missing resource path between the endpoint and the verb", reply_topic)
        try:
            endpoint = unescape_level(ep_level)
        except ValueError as exc:
            raise TopicError(f"endpoint level {ep_level!r}: {exc}", reply_topic) from None
        try:
            path = unescape_path(path_levels)
        except ValueError as exc:
            raise TopicError(f"resource path: {exc}", reply_topic) from None
        return Command(endpoint, path, verb, topic)


# ---------------------------------------------------------------------------- payloads

ENVELOPE_KEYS = frozenset(("transaction", "value", "encoding", "cacheOnly", "expiry", "retry"))
EXPIRY_RANGE = (60, 2_592_000)
"""``expiry``: seconds, the range of today's ``expiry-seconds`` (a minute to 30 days)."""
RETRY_RANGE = (0, 10)
"""``retry``: delivery attempts after the first, the range of today's ``retry``."""


@dataclass(frozen=True, slots=True)
class CommandPayload:
    """What a command carries once its payload is understood."""

    value: bytes
    transaction: Any = None
    has_transaction: bool = False
    cache_only: bool = False
    expiry: int | None = None  # seconds the service keeps trying to deliver it
    retry: int | None = None  # delivery attempts after the first


def check_size(payload: bytes, limit: int) -> None:
    """Raise PayloadError (status 413) when ``payload`` is over ``limit`` bytes."""
    if len(payload) > limit:
        raise PayloadError(
            f"payload of {len(payload)} bytes is over the limit of {limit}", None, 413
        )


def parse_command_payload(verb: str, payload: bytes) -> CommandPayload:
    """Split a command payload into the value to send and the envelope fields.

    A payload is an *envelope* when it is a JSON object with a ``transaction`` member.
    Envelope members: ``transaction`` (any JSON value, echoed in the reply), ``value``
    (a string or a number: the value to send; set and post), ``encoding`` (``utf-8``, the
    default, or ``base64``: how ``value`` is written), ``cacheOnly`` (get only: a boolean),
    and today's device-request options ``expiry`` (whole seconds, 60-2,592,000: how long
    the service keeps trying to deliver it) and ``retry`` (0-10: delivery attempts after
    the first). Any other payload is the raw value, byte for byte (for get it is ignored).
    """
    doc = _as_envelope(payload)
    if doc is None:
        return CommandPayload(b"" if verb == "get" else payload)
    transaction = doc["transaction"]
    unknown = sorted(set(doc) - ENVELOPE_KEYS)
    if unknown:
        raise PayloadError(
            f"unknown envelope member(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(ENVELOPE_KEYS))}",
            transaction,
        )
    encoding = doc.get("encoding", "utf-8")
    if encoding not in ("utf-8", "base64"):
        raise PayloadError("encoding must be 'utf-8' or 'base64'", transaction)
    cache_only = doc.get("cacheOnly", False)
    if not isinstance(cache_only, bool):
        raise PayloadError("cacheOnly must be true or false", transaction)
    if cache_only and verb != "get":
        raise PayloadError("cacheOnly applies to get only", transaction)
    value = b""
    if "value" in doc:
        if verb == "get":
            raise PayloadError("get takes no value", transaction)
        value = _envelope_value(doc["value"], encoding, transaction)
    expiry = _bounded(doc, "expiry", EXPIRY_RANGE, "whole seconds", transaction)
    retry = _bounded(doc, "retry", RETRY_RANGE, "an integer", transaction)
    return CommandPayload(value, transaction, True, cache_only, expiry, retry)


def _bounded(
    doc: dict[str, Any], key: str, bounds: tuple[int, int], what: str, transaction: Any
) -> int | None:
    """An optional integer member within ``bounds`` (the service's range), or None."""
    if key not in doc:
        return None
    value, (lo, hi) = doc[key], bounds
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise PayloadError(
            f"{key} must be {what}, {lo}-{hi} (the service's range), not {json.dumps(value)[:40]}",
            transaction,
        )
    return value


def _as_envelope(payload: bytes) -> dict[str, Any] | None:
    stripped = payload.lstrip()
    if not stripped.startswith(b"{"):
        return None
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(doc, dict) and "transaction" in doc:
        return doc
    return None


def _envelope_value(value: Any, encoding: str, transaction: Any) -> bytes:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PayloadError("value must be a string or a number", transaction)
    if encoding == "base64":
        if not isinstance(value, str):
            raise PayloadError("a base64 value must be a string", transaction)
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise PayloadError("value is not valid base64", transaction) from None
    text = value if isinstance(value, str) else json.dumps(value)
    return text.encode("utf-8")


def payload_fields(payload: bytes | None) -> tuple[str | None, str | None]:
    """(text, encoding) for a value in JSON: UTF-8 text as is, anything else base64."""
    if payload is None:
        return None, None
    try:
        return payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii"), "base64"


def encode_reply(
    *,
    endpoint: str | None,
    path: str | None,
    verb: str,
    status: int | None,
    ok: bool,
    payload: bytes | None = None,
    error: str | None = None,
    transaction: Any = None,
    code: str | None = None,
) -> bytes:
    """The JSON reply to one command. Every key is always present (null when unknown),
    so flows and templates can rely on the shape. ``code`` is the service's name for a
    failure (``DEVICE_NOT_CONNECTED``, ``REQUEST_EXPIRED``...), which ``error`` then
    starts with; null for a success and for failures the bridge decided itself."""
    text, encoding = payload_fields(payload)
    return json.dumps(
        {
            "endpoint": endpoint,
            "path": path,
            "verb": verb,
            "method": METHOD_OF_VERB.get(verb),
            "status": status,
            "ok": ok,
            "payload": text,
            "encoding": encoding,
            "error": error,
            "code": code,
            "transaction": transaction,
        },
        separators=(",", ":"),
    ).encode("utf-8")


def parse_bridge_request(payload: bytes) -> dict[str, Any]:
    """A bridge request body: empty, or a JSON object. Raises PayloadError otherwise."""
    if not payload.strip():
        return {}
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise PayloadError("request body is not JSON") from None
    if not isinstance(doc, dict):
        raise PayloadError("request body must be a JSON object", None)
    return doc


def encode_bridge_response(
    action: str,
    *,
    ok: bool,
    data: Any = None,
    error: str | None = None,
    status: int | None = None,
    transaction: Any = None,
) -> bytes:
    return json.dumps(
        {
            "action": action,
            "ok": ok,
            "status": status,
            "data": data,
            "error": error,
            "transaction": transaction,
        },
        separators=(",", ":"),
        default=str,
    ).encode("utf-8")


def encode_resources(
    endpoint_type: str | None, queue_mode: bool, resources: Iterable[Mapping[str, Any]]
) -> bytes:
    """The retained ``$resources`` document of one endpoint."""
    return json.dumps(
        {
            "type": endpoint_type,
            "q": queue_mode,
            "resources": [
                {"path": r.get("path"), "rt": r.get("rt"), "ct": r.get("ct"), "obs": r.get("obs")}
                for r in resources
            ],
        },
        separators=(",", ":"),
    ).encode("utf-8")
