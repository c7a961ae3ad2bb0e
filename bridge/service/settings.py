"""The bridge's settings: environment (``BRIDGE_*``), a ``.env`` file and command-line flags.

Precedence, highest first: command-line flags, environment variables, the ``.env`` file,
the defaults below. Every setting is named after what it controls; the environment name
is ``BRIDGE_`` + the field name in upper case and the flag is ``--`` + the field name
with ``-`` for ``_`` (``mqtt_port``: ``BRIDGE_MQTT_PORT``, ``--mqtt-port``).

A wrong or missing setting stops start-up with :class:`SettingsError`, whose message
names each offending setting by its environment name and flag. Secrets
(``connector_token``, ``mqtt_password``) are :class:`~pydantic.SecretStr`: they never
appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from bridge.cluster.config import (
    DEFAULT_GROUP,
    DEFAULT_SLOTS,
    DEFAULT_TTL,
    check_ttl,
    parse_endpoints,
)
from bridge.cluster.keys import check_name
from bridge.downstream.topics import validate_prefix
from bridge.upstream.rules import check_rules

ENV_PREFIX = "BRIDGE_"
SECRET_FIELDS = frozenset(("connector_token", "mqtt_password", "callback_secret"))
SECRET_FILE_FIELDS = {
    "connector_token": "connector_token_file",
    "mqtt_password": "mqtt_password_file",
    "callback_secret": "callback_secret_file",
}
CALLBACK_SECRET_MIN = 16  # characters
GENERATED_SECRET = 43  # characters of secrets.token_urlsafe(32), the default callback secret
CALLBACK_REGISTRATION_MAX = 400  # URL plus header values, as the Connector limits them
DEFAULT_PRESUBSCRIPTIONS: list[dict[str, Any]] = [{"endpoint-name": "*"}]

Channel = Literal["websocket", "callback", "longpoll"]
#: The notification channels each dialect offers, and its default one.
CHANNELS: dict[str, tuple[Channel, ...]] = {
    "current": ("websocket", "callback"),
    "legacy": ("longpoll", "callback"),
}
DEFAULT_CHANNEL: dict[str, Channel] = {"current": "websocket", "legacy": "longpoll"}


class SettingsError(Exception):
    """Start-up cannot go on: the message names every wrong or missing setting."""


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


class Settings(BaseSettings):
    """Settings of the bridge: flags here, else BRIDGE_<NAME> environment variables, else a
    .env file (--env-file PATH reads another one). See the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_exit_on_error=False,
        cli_prog_name="connector-bridge run",
        validate_default=True,
    )

    # ---- the Connector
    connector_url: str = Field(
        description="base URL of the Connector REST API (no /v2), e.g. http://127.0.0.1:8080"
    )
    connector_token: SecretStr = Field(description="the Connector access key (secret)")
    connector_api: Literal["auto", "current", "legacy"] = Field(
        "auto",
        description="the service's API: current (today's Device Management: /v3/devices, "
        "device requests, WebSocket), legacy (the 2016 Connector, on-premise Device Server) or "
        "auto (one probe at start-up tells them apart; the log says which it found)",
    )
    connector_token_file: Path | None = Field(
        None, description="file holding the access key, instead of connector_token"
    )
    connector_timeout: float = Field(10.0, gt=0, description="seconds per HTTP request")
    connector_http: Literal["fast", "requests"] = Field(
        "fast",
        description="HTTP stack for Connector calls: fast (lean keep-alive session, "
        "about five times less CPU per call) or requests (requests.Session); "
        "a proxy from the environment always uses requests",
    )
    connector_retry_max: float = Field(
        30.0,
        ge=1,
        description="longest wait, seconds, between tries of a Connector that fails (the waits "
        "grow from 0.5 s, with jitter)",
    )
    pull_linger: float = Field(
        0.006,
        ge=0,
        le=1,
        description="seconds between the start of a long poll that brought notifications and "
        "the next (never while a command's answer is awaited): a few ms let each poll carry "
        "several at a steady trickle, for less CPU and at most that much latency; 0: at once",
    )

    # ---- the MQTT broker
    mqtt_host: str = Field("localhost", min_length=1, description="broker host name or address")
    mqtt_port: int = Field(1883, ge=1, le=65535, description="broker port")
    mqtt_username: str | None = Field(None, description="broker user name")
    mqtt_password: SecretStr | None = Field(None, description="broker password (secret)")
    mqtt_password_file: Path | None = Field(
        None, description="file holding the broker password, instead of mqtt_password"
    )
    mqtt_client_id: str = Field(
        "connector-bridge", min_length=1, max_length=256, description="MQTT client id"
    )
    mqtt_protocol: Literal["5", "3.1.1"] = Field(
        "5", description="MQTT protocol version: 5 or 3.1.1"
    )
    mqtt_keepalive: int = Field(60, ge=5, le=65535, description="MQTT keep-alive, seconds")
    mqtt_tls: bool = Field(
        False, description="use TLS with the system's CA certificates (implied by mqtt_tls_ca)"
    )
    mqtt_tls_ca: Path | None = Field(None, description="CA certificate file (PEM) for TLS")
    mqtt_tls_cert: Path | None = Field(None, description="client certificate file (PEM)")
    mqtt_tls_key: Path | None = Field(None, description="client private key file (PEM)")
    mqtt_tls_verify: bool = Field(
        True, description="verify the broker's certificate and host name (off: insecure)"
    )
    mqtt_max_inflight: int = Field(
        100,
        ge=1,
        le=65535,
        description="QoS 1/2 messages in flight before paho queues (fewer if the broker's "
        "Receive Maximum is lower)",
    )
    mqtt_max_queued: int = Field(
        1000, ge=1, description="messages queued in paho before publishers wait (back-pressure)"
    )
    mqtt_buffer: int = Field(
        100_000, ge=0, description="messages kept while the broker is unreachable (oldest dropped)"
    )
    mqtt_session_expiry: int = Field(
        3600,
        ge=0,
        le=4_294_967_295,
        description="seconds the broker keeps the bridge's session (subscriptions, commands sent "
        "meanwhile) after a disconnect; 0: a clean session at every connect",
    )

    # ---- topics and values
    topic_prefix: str = Field("connector", description="first level(s) of every topic")
    topic_endpoint: Literal["name", "id"] = Field(
        "name",
        description="today's service: devices appear in topics by their endpoint name (name) or "
        "device ID (id); a second device with a name already taken gets its ID",
    )
    value_qos: Literal[0, 1, 2] = Field(1, description="QoS of value, $state and $resources")
    value_retain: bool = Field(True, description="retain value topics")

    # ---- the notification channel
    notification_channel: Literal["websocket", "callback", "longpoll"] | None = Field(
        None,
        description="how the service delivers: websocket (today's service; the default there), "
        "callback (both; needs callback_url) or longpoll (the legacy Connector; its default)",
    )
    channel_takeover: Literal["replace", "fail"] = Field(
        "replace",
        description="a channel of another kind already registered for the access key: replace "
        "it (delete it, then open ours; the log says so) or fail (stop start-up, naming it)",
    )
    callback_url: str | None = Field(
        None, description="URL the Connector calls (callback channel), e.g. http://host:8081/n"
    )
    callback_listen: str | None = Field(
        None, description="host:port the callback receiver listens on (default 0.0.0.0:<url port>)"
    )
    callback_path: str | None = Field(
        None,
        description="path the callback receiver accepts (default: the path of callback_url; "
        "set it when a reverse proxy rewrites the path)",
    )
    callback_secret: SecretStr | None = Field(
        None,
        description="secret the Connector must send back with each callback, as "
        "`Authorization: Bearer <secret>` (secret; default: a new random one at each start)",
    )
    callback_secret_file: Path | None = Field(
        None, description="file holding the callback secret, instead of callback_secret"
    )
    callback_max_body: int = Field(
        16 * 1024 * 1024, ge=1024, description="largest callback body accepted (larger: 413), bytes"
    )
    callback_tls_cert: Path | None = Field(
        None, description="certificate chain (PEM): the callback receiver speaks HTTPS"
    )
    callback_tls_key: Path | None = Field(
        None, description="private key (PEM) of callback_tls_cert (unset: in that same file)"
    )

    # ---- what to observe
    presubscriptions: list[dict[str, Any]] = Field(
        default_factory=lambda: [dict(r) for r in DEFAULT_PRESUBSCRIPTIONS],
        description="pre-subscription rules, JSON in the Connector's form "
        '(default [{"endpoint-name":"*"}]: every observable resource)',
    )
    initial_read: bool = Field(
        True, description="read each observed resource once when its endpoint appears"
    )
    initial_read_concurrency: int = Field(
        32, ge=1, le=10_000, description="initial reads under way at once"
    )
    endpoint_remove_after: float = Field(
        0.0,
        ge=0,
        description="seconds an endpoint may stay de-registered or expired before the bridge "
        "forgets it (clears its retained $state, $resources, values and Home Assistant "
        "configs); 0: only a remove request does",
    )

    # ---- commands
    command_timeout: float = Field(30.0, gt=0, description="seconds to wait for a device answer")
    queue_mode_timeout: float = Field(
        300.0, gt=0, description="the same for queue-mode (sleeping) endpoints"
    )
    max_payload: int = Field(
        65536, ge=0, le=268_435_455, description="largest command payload, bytes"
    )
    max_path_depth: int = Field(
        8, ge=1, le=64, description="deepest resource path (segments) commands are accepted for"
    )
    command_workers: int = Field(8, ge=1, le=256, description="threads making command REST calls")
    command_queue: int = Field(1000, ge=1, description="commands waiting for a worker, at most")
    device_queue: int = Field(
        10_000,
        ge=1,
        le=100_000,
        description="requests (commands, the bridge's own reads) that wait in the bridge for "
        "one device, at most, while 20 of its requests are at the service (it takes no "
        "more); past it a command is refused at once",
    )
    stop_timeout: float = Field(
        5.0,
        ge=0,
        description="seconds a stop (SIGTERM, SIGINT) waits for the answers of commands under way; "
        "those still unanswered then get a 503 reply",
    )

    cpu_pin: str = Field(
        "auto",
        description="`connector-bridge run` keeps its threads on one CPU (the GIL hands over "
        "far more cheaply there): auto (the CPU it starts on, with 2 or more), off, or a CPU "
        "number",
    )

    # ---- Home Assistant
    homeassistant: bool = Field(
        True, description="publish Home Assistant MQTT discovery configs for every endpoint"
    )
    homeassistant_discovery_prefix: str = Field(
        "homeassistant", description="Home Assistant's discovery prefix (its MQTT integration's)"
    )

    # ---- watching the bridge
    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="HTTP port for /healthz, /readyz and Prometheus /metrics (unset: off)",
    )
    health_host: str = Field(
        "0.0.0.0", min_length=1, description="address the health and metrics server listens on"
    )
    health_interval: float = Field(
        60.0,
        ge=0,
        description="seconds between retained `<prefix>/$bridge/health` messages (0: off)",
    )

    # ---- logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="log level"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as plain text or as JSON objects, one a line"
    )

    # ---- several bridges for one account
    cluster_etcd: str | None = Field(
        None,
        description="etcd endpoints, comma-separated (e.g. http://etcd-0:2379,http://etcd-1:2379): "
        "this bridge is one replica of a group coordinated there; unset: a single bridge, "
        "no etcd",
    )
    cluster_group: str = Field(
        DEFAULT_GROUP,
        description="name of the group of replicas (its keys in etcd are under `/<group>/`); "
        "replicas with the same etcd and group share the work of one account",
    )
    cluster_ttl: int = Field(
        DEFAULT_TTL,
        description="seconds of each replica's etcd lease, 2 to 3600: a replica that dies is "
        "replaced within about this plus 1 s; one cut off from etcd stops using what it "
        "holds after about 4/5 of it",
    )
    cluster_slots: int = Field(
        DEFAULT_SLOTS,
        ge=1,
        le=256,
        description="number of command slots the group shares out (each an MQTT client id "
        "owned by one replica at a time); every replica of a group must have the same",
    )
    cluster_member: str | None = Field(
        None,
        description="this replica's name in the group (e.g. the pod name); unset: "
        "`<host>-<pid>`; unique in the group",
    )

    # ---- validation --------------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """``*_file`` settings: read the secret from a file (container secrets)."""
        if not isinstance(data, dict):
            return data
        for field, file_field in SECRET_FILE_FIELDS.items():
            path = data.get(file_field)
            if path in (None, ""):
                continue
            if data.get(field) not in (None, ""):
                raise ValueError(
                    f"{env_name(field)} and {env_name(file_field)} are both set; set one"
                )
            data = {**data, field: read_secret_file(Path(str(path)), file_field)}
        return data

    @field_validator("connector_url", "callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value

    @field_validator("connector_token")
    @classmethod
    def _token_not_empty(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if not text.strip():
            raise ValueError("must not be empty")
        if text != text.strip() or not text.isprintable() or not text.isascii():
            # The HTTP stack would refuse it later, quoting the header (the key) in its error.
            raise ValueError(
                "holds a line break, leading or trailing white space, or characters not "
                "allowed in an HTTP header (a token file must hold the token and at most "
                "one line break)"
            )
        return value

    @field_validator("callback_secret")
    @classmethod
    def _callback_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value()
        if not all("!" <= c <= "~" for c in text):
            raise ValueError("must be printable ASCII without spaces (it travels in a header)")
        if len(text) < CALLBACK_SECRET_MIN:
            raise ValueError(f"must be at least {CALLBACK_SECRET_MIN} characters long")
        return value

    @field_validator("callback_path")
    @classmethod
    def _callback_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("/") or any(c in value for c in "?# ") or not value.isprintable():
            raise ValueError("must be a URL path starting with / (no query, no spaces)")
        return value

    @field_validator("mqtt_protocol", mode="before")
    @classmethod
    def _protocol_aliases(cls, value: Any) -> Any:
        aliases = {"5": "5", "5.0": "5", "v5": "5", "mqttv5": "5",
                   "3.1.1": "3.1.1", "311": "3.1.1", "v311": "3.1.1", "mqttv311": "3.1.1",
                   "4": "3.1.1"}  # fmt: skip
        if isinstance(value, int | float):
            value = str(value)
        if isinstance(value, str):
            return aliases.get(value.strip().lower(), value)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("value_qos", mode="before")
    @classmethod
    def _qos_int(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return value

    @field_validator("cpu_pin", mode="before")
    @classmethod
    def _cpu_pin(cls, value: Any) -> Any:
        text = str(value).strip().lower() if isinstance(value, str | int) else value
        if isinstance(text, str) and text in ("auto", "off"):
            return text
        if isinstance(text, str) and text.isascii() and text.isdigit():
            return str(int(text))
        raise ValueError("must be auto, off or a CPU number (0, 1, ...)")

    @field_validator("topic_prefix", "homeassistant_discovery_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return validate_prefix(value)

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "mqtt_tls_ca", "mqtt_tls_cert", "mqtt_tls_key", "callback_tls_cert", "callback_tls_key"
    )
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_file():
            raise ValueError(f"file not found: {value}")
        if not os.access(value, os.R_OK):
            raise ValueError(f"file not readable: {value}")
        return value

    @field_validator("callback_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parse_listen(value)
        return value

    @field_validator("presubscriptions", mode="before")
    @classmethod
    def _rules_json(cls, value: Any) -> Any:
        if isinstance(value, str | bytes):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not valid JSON: {exc}") from None
        if isinstance(value, dict):
            value = [value]
        return check_rules(value)

    @field_validator("cluster_etcd")
    @classmethod
    def _cluster_endpoints(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return ",".join(parse_endpoints(value))

    @field_validator("cluster_group")
    @classmethod
    def _cluster_group(cls, value: str) -> str:
        return check_name(value.strip(), "the group name")

    @field_validator("cluster_member")
    @classmethod
    def _cluster_member(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return check_name(value.strip(), "the member name")

    @field_validator("cluster_ttl", mode="before")
    @classmethod
    def _cluster_ttl(cls, value: Any) -> int:
        return check_ttl(value)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.connector_api != "auto":
            self.channel_for(self.connector_api)
        if self.notification_channel == "callback" and not self.callback_url:
            raise ValueError(
                f"{env_name('callback_url')} ({flag_name('callback_url')}) is required when "
                f"{env_name('notification_channel')}=callback"
            )
        if self.mqtt_tls_key is not None and self.mqtt_tls_cert is None:
            raise ValueError(
                f"{env_name('mqtt_tls_key')} is set but {env_name('mqtt_tls_cert')} is not: "
                "a client key needs its certificate"
            )
        if self.callback_tls_key is not None and self.callback_tls_cert is None:
            raise ValueError(
                f"{env_name('callback_tls_key')} is set but {env_name('callback_tls_cert')} "
                "is not: a key needs its certificate"
            )
        if self.callback_tls_cert is not None and (self.callback_url or "").startswith("http:"):
            raise ValueError(
                f"{env_name('callback_tls_cert')} makes the receiver speak HTTPS, so "
                f"{env_name('callback_url')} must be an https:// URL"
            )
        if self.notification_channel == "callback" and self.callback_url:
            secret = self.callback_secret.get_secret_value() if self.callback_secret else ""
            size = len(self.callback_url) + len("Bearer ") + max(len(secret), GENERATED_SECRET)
            if size > CALLBACK_REGISTRATION_MAX:
                raise ValueError(
                    f"{env_name('callback_url')} and the header with "
                    f"{env_name('callback_secret')} are {size} characters together; the "
                    f"Connector takes at most {CALLBACK_REGISTRATION_MAX}"
                )
        if (
            self.cluster_etcd
            and self.notification_channel == "callback"
            and not self.callback_secret
        ):
            raise ValueError(
                f"{env_name('cluster_etcd')} with {env_name('notification_channel')}=callback "
                f"needs {env_name('callback_secret')}: every replica receives deliveries and "
                "must know the secret the leader registers"
            )
        if self.mqtt_password is not None and not self.mqtt_username:
            raise ValueError(
                f"{env_name('mqtt_password')} is set but {env_name('mqtt_username')} is not"
            )
        if self.queue_mode_timeout < self.command_timeout:
            raise ValueError(
                f"{env_name('queue_mode_timeout')} must not be shorter than "
                f"{env_name('command_timeout')}"
            )
        return self

    # ---- derived values ----------------------------------------------------------------

    def channel_for(self, api: Literal["current", "legacy"]) -> Channel:
        """The notification channel on a service speaking ``api``: the setting, else the
        dialect's default; ValueError, naming both settings, for one it does not offer."""
        channel = self.notification_channel or DEFAULT_CHANNEL[api]
        if channel not in CHANNELS[api]:
            offered = " or ".join(CHANNELS[api])
            raise ValueError(
                f"{env_name('notification_channel')}={channel} is not offered by the "
                f"{'legacy Connector' if api == 'legacy' else 'current Device Management'} "
                f"API ({env_name('connector_api')}={self.connector_api}"
                f"{'' if self.connector_api == api else f', found {api}'}): use {offered}"
            )
        return channel

    @property
    def tls_enabled(self) -> bool:
        return self.mqtt_tls or self.mqtt_tls_ca is not None or self.mqtt_tls_cert is not None

    def listen_address(self) -> tuple[str, int]:
        """Where the callback receiver listens (only meaningful for the callback channel)."""
        if self.callback_listen:
            return parse_listen(self.callback_listen)
        assert self.callback_url is not None
        parts = urlsplit(self.callback_url)
        return "0.0.0.0", parts.port or (443 if parts.scheme == "https" else 80)

    def callback_receiver_path(self) -> str:
        """The one path the callback receiver accepts (``callback_path``, else the URL's)."""
        if self.callback_path:
            return self.callback_path
        return urlsplit(self.callback_url or "").path or "/"

    @classmethod
    def markdown_table(cls) -> str:
        """The README's settings table, made from the fields themselves."""
        rows = ["| environment | flag | default | what it does |", "|---|---|---|---|"]
        for name, f in cls.model_fields.items():
            rows.append(
                f"| `{env_name(name)}` | `{flag_name(name)}` | {_default_text(f)} | "
                f"{f.description} |"
            )
        return "\n".join(rows)

    def public_summary(self) -> dict[str, Any]:
        """Every setting with the secrets masked: safe to log and to publish."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in SECRET_FIELDS:
                # A callback secret always exists: the one given, or one made at start.
                value = None if value is None and name != "callback_secret" else "***"
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out


def _default_text(f: FieldInfo) -> str:
    if f.default_factory is not None:
        value: Any = f.default_factory()  # type: ignore[call-arg]
        return f"`{json.dumps(value, separators=(',', ':'))}`"
    if f.default is PydanticUndefined:
        return "**required**"
    if f.default is None:
        return "—"
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    return f"`{f.default}`"


def read_secret_file(path: Path, field: str) -> str:
    """A secret from a file, without one trailing newline; errors name the setting only."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{env_name(field)}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{env_name(field)}: {path} is not UTF-8 text") from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        raise ValueError(f"{env_name(field)}: {path} is empty")
    return text


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``, or a bare port) as a tuple; ValueError if bad."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host, port_text = "0.0.0.0", text.strip()
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r} is not host:port") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return host, port


def describe_error(exc: ValidationError) -> str:
    """A start-up message naming each bad setting; never shows a secret's value."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = err.get("loc") or ()
        field = str(loc[0]) if loc else ""
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        if err.get("type") == "missing":
            msg = "is required"
        if not field or field not in Settings.model_fields:
            lines.append(msg)
            continue
        shown = ""
        if field not in SECRET_FIELDS and err.get("type") != "missing" and "input" in err:
            value = err["input"]
            if isinstance(value, str | int | float | bool | Path) or value is None:
                text = repr(str(value) if isinstance(value, Path) else value)
                shown = f" (got {text[:80]})"
        where = f"{env_name(field)} ({flag_name(field)})"
        if len(loc) > 1:
            where += " at " + "/".join(str(x) for x in loc[1:])
        lines.append(f"{where}: {msg}{shown}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(
    argv: Sequence[str] | None = None,
    *,
    env_file: str | Path | None = ".env",
    overrides: Mapping[str, Any] | None = None,
    settings_class: type[Settings] | None = None,
) -> Settings:
    """Read the settings (flags over environment over ``env_file``) or raise SettingsError.

    ``argv`` are the command-line flags (``None``: no flags). ``overrides`` win over
    everything (the demo uses them for the emulator it starts). ``settings_class``: a
    subclass of :class:`Settings` for a command that needs fewer of them (``status``).
    """
    kwargs: dict[str, Any] = dict(overrides or {})
    cls = settings_class or Settings
    try:
        return cls(
            _env_file=env_file,
            _cli_parse_args=list(argv) if argv is not None else None,
            **kwargs,
        )
    except ValidationError as exc:
        raise SettingsError(describe_error(exc)) from None
    except PydanticSettingsError as exc:
        raise SettingsError(_redact_cli(str(exc), argv)) from None


def _redact_cli(text: str, argv: Sequence[str] | None) -> str:
    """A command-line parsing error with every value from the command line masked.

    Only flags (``--name``) are shown: a value might be a secret given to a misspelt
    flag, and a parser's message has no way to know it.
    """
    values = {arg for arg in argv or () if not arg.startswith("-")}
    values |= {arg.partition("=")[2] for arg in argv or () if arg.startswith("--") and "=" in arg}
    words = [("***" if w in values else w) for w in text.split(" ")]
    masked = " ".join(w if "=" not in w else w.partition("=")[0] + "=***" for w in words)
    named = [f for f in Settings.model_fields if f"for {f}:" in text or f"for {f} " in text]
    where = f"{env_name(named[0])} ({flag_name(named[0])}): " if named else ""
    return f"invalid command line: {where}{masked}"
