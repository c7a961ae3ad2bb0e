"""A thin client for etcd's v3 API through its JSON gateway, over several endpoints.

Only what the group needs: leases (grant, keep-alive, revoke), create-if-absent, writes
and deletes that hold only while a key is still under one's own lease, and a range over a
prefix, each one HTTP POST of JSON to ``/v3/...`` (etcd 3.4 and newer; keys and values
travel base64-encoded, 64-bit numbers as strings).

Why not a library: ``etcd3gw`` talks to one endpoint per client, blocks without a time-out
unless given one, and its watch runs in a thread of its own with no time-out on the
stream, loses the stream's errors in that thread and is stopped through private
attributes of ``requests``; the unary calls it offers are these few POSTs. So the calls
are made here with ``requests`` (already a dependency), each bounded in time.

Failing over: a call goes to the endpoint that answered last; a failure that may pass by
itself (no connection, no answer in time, a 5xx such as "no leader", an unreadable
answer: :func:`bridge.core.retry.is_transient`) moves it to the next endpoint at once,
each endpoint tried at most once per call. A definite answer (4xx) ends the call. When
every endpoint failed the call raises :class:`EtcdError`; the caller waits with its
:class:`bridge.core.retry.Backoff` before trying again (this client never sleeps). Every
call may be given ``until`` (a :func:`time.monotonic` deadline): no try outlasts it. The
first try waits ``timeout`` for its answer, each later one a fair share of the time left
(never less than ``timeout``): an endpoint that is down or paused costs one ``timeout``,
while a member whose raft leader just vanished is given long enough to carry the request
out once a new leader is elected, which it does by itself.

Each call is safe to repeat on another endpoint after no answer came: create-if-absent
answers with the key's holder when it already exists (so a create that did succeed
shows up as held under one's own lease), keep-alive and revoke do the same twice; a
grant repeated leaves at most one lease unused, which etcd drops after its TTL.

Thread safety: calls from several threads are serialized (one lock per client).
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3

from bridge.core.retry import ErrorKind, is_transient

DEFAULT_TIMEOUT = 1.0  # seconds per try of one endpoint


class EtcdError(Exception):
    """A call that failed: on every endpoint (transient) or with a definite answer.

    ``kind`` and ``status`` are those of :mod:`bridge.core.retry` (``status`` is the HTTP
    status when one came); ``endpoint`` is the last endpoint tried.
    """

    def __init__(
        self, message: str, *, kind: ErrorKind, status: int | None = None, endpoint: str = ""
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.status = status
        self.endpoint = endpoint

    @property
    def transient(self) -> bool:
        """Whether it may pass by itself (then another endpoint, or later, may answer)."""
        return is_transient(self)


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd holds it. ``lease`` is 0 for a key under no lease."""

    key: str
    value: bytes
    lease: int
    create_revision: int
    mod_revision: int

    @property
    def text(self) -> str:
        return self.value.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The keys of a range at one revision of the store."""

    revision: int
    kvs: tuple[KeyValue, ...]

    def get(self, key: str) -> KeyValue | None:
        for kv in self.kvs:
            if kv.key == key:
                return kv
        return None

    def under(self, prefix: str) -> Iterator[KeyValue]:
        return (kv for kv in self.kvs if kv.key.startswith(prefix))


@dataclass(frozen=True, slots=True)
class Granted:
    """A lease etcd granted: its id and the time-to-live it gave (never shorter than
    asked for; etcd raises a TTL below its minimum, 2 s with its default timings)."""

    id: int
    ttl: int


def _b64(text: str | bytes) -> str:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    raw = bytearray(prefix.encode("utf-8"))
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"  # etcd: from the key to the end of the key space
    raw[-1] += 1
    return bytes(raw)


def _key_value(item: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(item["key"]).decode("utf-8", errors="replace"),
        value=_unb64(item.get("value", "")),
        lease=int(item.get("lease", 0)),
        create_revision=int(item.get("create_revision", 0)),
        mod_revision=int(item.get("mod_revision", 0)),
    )


def normalize_endpoint(text: str) -> str:
    """``http(s)://host:port`` from an endpoint as written (a bare ``host:port`` is http;
    no port: 2379); ValueError naming what is wrong."""
    text = text.strip().rstrip("/")
    if not text:
        raise ValueError("an endpoint is empty")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http:// or https:// endpoint with a host")
    if parts.path or parts.query or parts.fragment:
        raise ValueError(f"{text!r}: an endpoint has no path (etcd's API is at /v3/)")
    try:
        port = parts.port or 2379
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme}://{host}:{port}"


class EtcdClient:
    """etcd's v3 JSON API on ``endpoints`` (``http://host:port``), failing over between them.

    ``timeout``: seconds for one try of one endpoint (connecting, then waiting for the
    answer); a paused member (connected, silent) costs at most that before the next.
    Proxies from the environment are not used: etcd is reached directly.
    """

    def __init__(self, endpoints: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self.endpoints = tuple(normalize_endpoint(e) for e in endpoints)
        self.timeout = timeout
        self._current = 0
        self._lock = threading.Lock()
        self._sessions: dict[str, requests.Session] = {}
        self.failovers = 0  # times a call moved on to another endpoint

    @property
    def endpoint(self) -> str:
        """The endpoint the next call goes to first (the one that answered last)."""
        return self.endpoints[self._current]

    def close(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- leases ----------------------------------------------------------------------

    def grant(self, ttl: int, *, until: float | None = None) -> Granted:
        """A new lease of ``ttl`` seconds."""
        answer = self._call("/v3/lease/grant", {"TTL": ttl, "ID": 0}, until)
        if "ID" not in answer:
            raise EtcdError(f"lease grant answered without an ID: {answer}", kind="bad_answer")
        return Granted(id=int(answer["ID"]), ttl=int(answer.get("TTL", ttl)))

    def keepalive(self, lease: int, *, until: float | None = None) -> int:
        """Renew ``lease``: its TTL again, seconds; 0 when etcd no longer has it."""
        try:
            answer = self._call("/v3/lease/keepalive", {"ID": str(lease)}, until)
        except EtcdError as exc:
            if exc.status == 404:  # some versions say "lease not found" as an error
                return 0
            raise
        result = answer.get("result", answer)
        return max(0, int(result.get("TTL", 0)))

    def revoke(self, lease: int, *, until: float | None = None) -> bool:
        """End ``lease`` now, deleting its keys; False when etcd did not have it."""
        try:
            self._call("/v3/lease/revoke", {"ID": str(lease)}, until)
        except EtcdError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # ---- keys ------------------------------------------------------------------------

    def create(
        self, key: str, value: str | bytes, *, lease: int = 0, until: float | None = None
    ) -> tuple[bool, KeyValue | None]:
        """Put ``key`` only if it does not exist, in one transaction.

        Returns ``(True, created)`` when this call created it, else ``(False, holder)``
        with the key as it is (``holder.lease`` says whose it is; after a retry it may be
        one's own lease: the first try did create it), or ``(False, None)`` if it was
        deleted again in between.
        """
        k = _b64(key)
        put: dict[str, Any] = {"key": k, "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        answer = self._txn(
            compare=[{"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
            success=[{"request_put": put}],
            failure=[{"request_range": {"key": k}}],
            until=until,
        )
        if answer.get("succeeded"):
            revision = int(answer.get("header", {}).get("revision", 0))
            raw = value.encode("utf-8") if isinstance(value, str) else value
            return True, KeyValue(key, raw, lease, revision, revision)
        for response in answer.get("responses", []):
            kvs = response.get("response_range", {}).get("kvs", [])
            if kvs:
                return False, _key_value(kvs[0])
        return False, None  # deleted between the compare and the range: try again later

    def replace_own(
        self, key: str, value: str | bytes, *, lease: int, until: float | None = None
    ) -> bool:
        """Put ``key`` (keeping it under ``lease``) only while it is under ``lease``."""
        k = _b64(key)
        answer = self._txn(
            compare=[{"key": k, "result": "EQUAL", "target": "LEASE", "lease": str(lease)}],
            success=[{"request_put": {"key": k, "value": _b64(value), "lease": str(lease)}}],
            failure=[],
            until=until,
        )
        return bool(answer.get("succeeded"))

    def delete_own(self, key: str, *, lease: int, until: float | None = None) -> bool:
        """Delete ``key`` only while it is under ``lease``; whether it was."""
        k = _b64(key)
        answer = self._txn(
            compare=[{"key": k, "result": "EQUAL", "target": "LEASE", "lease": str(lease)}],
            success=[{"request_delete_range": {"key": k}}],
            failure=[],
            until=until,
        )
        return bool(answer.get("succeeded"))

    def put(
        self, key: str, value: str | bytes, *, lease: int = 0, until: float | None = None
    ) -> None:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        self._call("/v3/kv/put", body, until)

    def get(self, key: str, *, until: float | None = None) -> KeyValue | None:
        answer = self._call("/v3/kv/range", {"key": _b64(key)}, until)
        kvs = answer.get("kvs", [])
        return _key_value(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str, *, until: float | None = None) -> Snapshot:
        """Every key under ``prefix``, at one revision (a linearizable read)."""
        return self.get_range(prefix, prefix_end(prefix), until=until)

    def get_range(
        self, key: str, range_end: str | bytes, *, until: float | None = None
    ) -> Snapshot:
        """Every key from ``key`` (included) to ``range_end`` (excluded), at one revision."""
        body = {"key": _b64(key), "range_end": _b64(range_end)}
        answer = self._call("/v3/kv/range", body, until)
        revision = int(answer.get("header", {}).get("revision", 0))
        return Snapshot(revision, tuple(_key_value(item) for item in answer.get("kvs", [])))

    def put_if_held(
        self, key: str, value: str | bytes, *, holder: str, lease: int, until: float | None = None
    ) -> bool:
        """Put ``key`` only while ``holder`` is under ``lease`` (a fence: the slot is still
        ours); whether it was put."""
        answer = self._txn(
            compare=[{"key": _b64(holder), "result": "EQUAL", "target": "LEASE",
                      "lease": str(lease)}],
            success=[{"request_put": {"key": _b64(key), "value": _b64(value)}}],
            failure=[],
            until=until,
        )  # fmt: skip
        return bool(answer.get("succeeded"))

    def move(
        self, key: str, to: str, value: str, *, lease: int = 0, until: float | None = None
    ) -> bool:
        """Delete ``key`` and put ``to`` = ``value`` in one transaction, only if ``key``
        exists: whether this call did it (also when a retry finds its own first try done:
        ``to`` holds ``value``). Who moves a key first, wins."""
        k = _b64(key)
        put: dict[str, Any] = {"key": _b64(to), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        answer = self._txn(
            compare=[{"key": k, "result": "GREATER", "target": "CREATE", "create_revision": "0"}],
            success=[{"request_delete_range": {"key": k}}, {"request_put": put}],
            failure=[{"request_range": {"key": _b64(to)}}],
            until=until,
        )
        if answer.get("succeeded"):
            return True
        for response in answer.get("responses", []):
            kvs = response.get("response_range", {}).get("kvs", [])
            if kvs:
                return _key_value(kvs[0]).value == value.encode()
        return False

    def delete(self, key: str, *, until: float | None = None) -> bool:
        """Delete ``key``; whether it existed."""
        return bool(int(self._call("/v3/kv/deleterange", {"key": _b64(key)}, until)
                        .get("deleted", 0)))  # fmt: skip

    def delete_prefix(self, prefix: str, *, until: float | None = None) -> int:
        body = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        return int(self._call("/v3/kv/deleterange", body, until).get("deleted", 0))

    # ---- the wire --------------------------------------------------------------------

    def _txn(
        self,
        *,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]],
        until: float | None,
    ) -> dict[str, Any]:
        body = {"compare": compare, "success": success, "failure": failure}
        return self._call("/v3/kv/txn", body, until)

    def _session(self, endpoint: str) -> requests.Session:
        session = self._sessions.get(endpoint)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no proxies, no .netrc: etcd is reached directly
            self._sessions[endpoint] = session
        return session

    def _call(self, path: str, body: dict[str, Any], until: float | None) -> dict[str, Any]:
        with self._lock:
            last: EtcdError | None = None
            count = len(self.endpoints)
            if until is None:
                until = time.monotonic() + self.timeout * count
            for step in range(count):
                index = (self._current + step) % count
                endpoint = self.endpoints[index]
                remaining = until - time.monotonic()
                if remaining <= 0:
                    raise last or EtcdError(
                        f"{path}: no time left", kind="timeout", endpoint=endpoint
                    )
                # The first try gets `timeout`; a later one a fair part of what is left, as
                # a member without a raft leader holds a request until a new one is elected
                # (one to two seconds), then carries it out.
                share = self.timeout if step == 0 else max(self.timeout, remaining / (count - step))
                timeout = min(remaining, share)
                try:
                    answer = self._try(endpoint, path, body, timeout)
                except EtcdError as exc:
                    if not exc.transient:
                        raise
                    last = exc
                    if step + 1 < count:
                        self.failovers += 1
                    continue
                self._current = index
                return answer
            assert last is not None
            self._current = (self._current + 1) % count  # start elsewhere next time
            raise last

    def _try(
        self, endpoint: str, path: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        url = endpoint + path
        try:
            resp = self._session(endpoint).post(url, json=body, timeout=(timeout, timeout))
        except requests.exceptions.ConnectTimeout:
            raise EtcdError(f"{url}: no connection in {timeout:.2f}s", kind="not_sent",
                            endpoint=endpoint) from None  # fmt: skip
        except requests.exceptions.Timeout:
            raise EtcdError(f"{url}: no answer in {timeout:.2f}s", kind="no_answer",
                            endpoint=endpoint) from None  # fmt: skip
        except requests.exceptions.ConnectionError as exc:
            reason = getattr(exc.args[0], "reason", None) if exc.args else None
            refused = isinstance(reason, urllib3.exceptions.NewConnectionError)
            raise EtcdError(
                f"{url}: {'no connection' if refused else 'connection lost'}",
                kind="not_sent" if refused else "no_answer",
                endpoint=endpoint,
            ) from None
        except requests.exceptions.RequestException as exc:
            raise EtcdError(f"{url}: {exc}", kind="not_sent", endpoint=endpoint) from None
        text = resp.text
        if resp.status_code != 200:
            detail = text[:200].strip()
            with contextlib.suppress(ValueError, AttributeError):
                detail = str(json.loads(text).get("message", detail))
            raise EtcdError(
                f"{url}: HTTP {resp.status_code}: {detail}",
                kind="refused",
                status=resp.status_code,
                endpoint=endpoint,
            )
        try:
            # A streamed call (keep-alive) answers with one JSON object per line.
            answer = json.loads(text.strip().splitlines()[0]) if text.strip() else {}
        except ValueError:
            raise EtcdError(
                f"{url}: not JSON: {text[:100]!r}", kind="bad_answer", endpoint=endpoint
            ) from None
        if not isinstance(answer, dict):
            raise EtcdError(f"{url}: not a JSON object", kind="bad_answer", endpoint=endpoint)
        error = answer.get("error")
        if isinstance(error, dict):  # a streamed call that failed: the gateway's error line
            status = error.get("http_code")
            raise EtcdError(
                f"{url}: {error.get('message', error)}",
                kind="refused" if isinstance(status, int) else "bad_answer",
                status=status if isinstance(status, int) else None,
                endpoint=endpoint,
            )
        return answer
