"""Settings: sources and precedence, one test per kind of bad setting, secrets kept secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.service.settings import (
    SECRET_FIELDS,
    Settings,
    SettingsError,
    env_name,
    flag_name,
    load_settings,
    parse_listen,
)
from bridge.upstream.rules import observed_paths

TOKEN = "tok-S3CRET-d41d8"
BASE = ["--connector-url", "http://127.0.0.1:8080", "--connector-token", TOKEN]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No BRIDGE_* from the outside world, and no .env in the working directory."""
    import os

    for key in list(os.environ):
        if key.startswith("BRIDGE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def bad(*args: str, env_file: Path | None = None) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings([*BASE, *args], env_file=env_file)
    text = str(info.value)
    assert TOKEN not in text
    return text


# ------------------------------------------------------------------ sources


def test_defaults() -> None:
    s = load_settings(BASE, env_file=None)
    assert s.connector_url == "http://127.0.0.1:8080"
    assert s.connector_token.get_secret_value() == TOKEN
    assert (s.mqtt_host, s.mqtt_port, s.mqtt_protocol) == ("localhost", 1883, "5")
    assert (s.topic_prefix, s.value_qos, s.value_retain) == ("connector", 1, True)
    assert s.notification_channel is None  # the dialect's default: longpoll or websocket
    assert s.connector_api == "auto" and s.topic_endpoint == "name"
    assert s.presubscriptions == [{"endpoint-name": "*"}]
    assert s.initial_read is True and s.mqtt_tls_verify is True and not s.tls_enabled
    assert s.queue_mode_timeout > s.command_timeout


def test_environment_then_env_file_then_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_file = tmp_path / "bridge.env"
    env_file.write_text(
        "BRIDGE_CONNECTOR_URL=http://from-file:1\n"
        f"BRIDGE_CONNECTOR_TOKEN={TOKEN}\n"
        "BRIDGE_MQTT_PORT=1111\nBRIDGE_MQTT_HOST=file-host\nBRIDGE_TOPIC_PREFIX=file/prefix\n"
    )
    s = load_settings([], env_file=env_file)
    assert (s.connector_url, s.mqtt_port, s.mqtt_host) == ("http://from-file:1", 1111, "file-host")
    monkeypatch.setenv("BRIDGE_MQTT_PORT", "2222")
    monkeypatch.setenv("BRIDGE_MQTT_HOST", "env-host")
    s = load_settings([], env_file=env_file)
    assert (s.mqtt_port, s.mqtt_host, s.topic_prefix) == (2222, "env-host", "file/prefix")
    s = load_settings(["--mqtt-port", "3333"], env_file=env_file)
    assert (s.mqtt_port, s.mqtt_host) == (3333, "env-host")


def test_dot_env_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"BRIDGE_CONNECTOR_URL=http://dotenv:2\nBRIDGE_CONNECTOR_TOKEN={TOKEN}\n"
    )
    assert load_settings([]).connector_url == "http://dotenv:2"


def test_every_field_has_an_env_name_and_a_flag() -> None:
    for name in Settings.model_fields:
        assert env_name(name) == "BRIDGE_" + name.upper()
        assert flag_name(name) == "--" + name.replace("_", "-")
        assert Settings.model_fields[name].description, f"{name} has no description"


def test_flags_and_aliases() -> None:
    s = load_settings(
        [*BASE, "--mqtt-protocol", "311", "--no-initial-read", "--value-qos", "0",
         "--no-value-retain", "--log-level", "debug", "--presubscriptions",
         '[{"endpoint-type": "Light", "resource-path": ["/3311/*"]}]'],
        env_file=None,
    )  # fmt: skip
    assert (s.mqtt_protocol, s.initial_read, s.value_qos, s.value_retain) == (
        "3.1.1",
        False,
        0,
        False,
    )
    assert s.log_level == "DEBUG"
    assert s.presubscriptions == [{"endpoint-type": "Light", "resource-path": ["/3311/*"]}]


def test_secret_from_a_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    pw_file = tmp_path / "pw"
    pw_file.write_text("pw-from-file\r\n")
    s = load_settings(
        ["--connector-url", "http://x:1", "--connector-token-file", str(token_file),
         "--mqtt-username", "u", "--mqtt-password-file", str(pw_file)],
        env_file=None,
    )  # fmt: skip
    assert s.connector_token.get_secret_value() == TOKEN
    assert s.mqtt_password is not None and s.mqtt_password.get_secret_value() == "pw-from-file"


def test_callback_listen_defaults_to_the_url_port() -> None:
    s = load_settings(
        [*BASE, "--notification-channel", "callback", "--callback-url", "http://me:8181/n"],
        env_file=None,
    )
    assert s.listen_address() == ("0.0.0.0", 8181)
    assert parse_listen("127.0.0.1:9") == ("127.0.0.1", 9)
    assert parse_listen("[::1]:9") == ("::1", 9)
    assert parse_listen("9") == ("0.0.0.0", 9)


# ------------------------------------------------------------------ each kind of bad setting


def test_missing_required_settings() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings([], env_file=None)
    text = str(info.value)
    assert "BRIDGE_CONNECTOR_URL (--connector-url): is required" in text
    assert "BRIDGE_CONNECTOR_TOKEN (--connector-token): is required" in text


URL, TOK = "BRIDGE_CONNECTOR_URL (--connector-url)", "BRIDGE_CONNECTOR_TOKEN (--connector-token)"
PORT, PREFIX = "BRIDGE_MQTT_PORT (--mqtt-port)", "BRIDGE_TOPIC_PREFIX (--topic-prefix)"
RULES = "BRIDGE_PRESUBSCRIPTIONS (--presubscriptions)"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--connector-url", "ftp://x"], f"{URL}: must be an http"),
        (["--connector-url", "http://x:99999"], f"{URL}: has an invalid port"),
        (["--connector-token", "  "], f"{TOK}: must not be empty"),
        (["--connector-timeout", "0"], "BRIDGE_CONNECTOR_TIMEOUT"),
        (["--mqtt-port", "0"], PORT),
        (["--mqtt-port", "65536"], PORT),
        (["--mqtt-port", "many"], f"{PORT}: Input should be a valid integer"),
        (["--mqtt-protocol", "4.0"], "BRIDGE_MQTT_PROTOCOL (--mqtt-protocol)"),
        (["--mqtt-keepalive", "1"], "BRIDGE_MQTT_KEEPALIVE"),
        (["--value-qos", "3"], "BRIDGE_VALUE_QOS (--value-qos)"),
        (["--topic-prefix", "a/+"], f"{PREFIX}: must not contain the wildcards"),
        (["--topic-prefix", "$SYS"], PREFIX),
        (["--topic-prefix", "a/"], PREFIX),
        (["--notification-channel", "carrier-pigeon"], "BRIDGE_NOTIFICATION_CHANNEL"),
        (
            ["--notification-channel", "callback"],
            "BRIDGE_CALLBACK_URL (--callback-url) is required",
        ),
        (["--callback-url", "nope"], "BRIDGE_CALLBACK_URL"),
        (["--callback-listen", "host:port"], "BRIDGE_CALLBACK_LISTEN"),
        (["--presubscriptions", "{not json"], RULES),
        (
            ["--presubscriptions", '[{"endpoint": "x"}]'],
            f"{RULES}: rule 0: unknown key(s) endpoint",
        ),
        (["--presubscriptions", '[{"endpoint-name": "a*b"}]'], "only allowed at the end"),
        (["--presubscriptions", '[{"resource-path": []}]'], "must be a non-empty list"),
        (["--presubscriptions", '"*"'], RULES),
        (
            ["--mqtt-tls-ca", "/no/such/ca.pem"],
            "BRIDGE_MQTT_TLS_CA (--mqtt-tls-ca): file not found",
        ),
        (
            ["--mqtt-tls-key", "/etc/hostname"],
            "BRIDGE_MQTT_TLS_KEY is set but BRIDGE_MQTT_TLS_CERT",
        ),
        (["--mqtt-password", "x"], "BRIDGE_MQTT_PASSWORD is set but BRIDGE_MQTT_USERNAME is not"),
        (["--command-timeout", "-1"], "BRIDGE_COMMAND_TIMEOUT"),
        (["--command-timeout", "400"], "BRIDGE_QUEUE_MODE_TIMEOUT must not be shorter"),
        (["--max-payload", "-1"], "BRIDGE_MAX_PAYLOAD"),
        (["--max-path-depth", "0"], "BRIDGE_MAX_PATH_DEPTH"),
        (["--command-workers", "0"], "BRIDGE_COMMAND_WORKERS"),
        (["--initial-read-concurrency", "0"], "BRIDGE_INITIAL_READ_CONCURRENCY"),
        (["--endpoint-remove-after", "-1"], "BRIDGE_ENDPOINT_REMOVE_AFTER"),
        (["--log-level", "chatty"], "BRIDGE_LOG_LEVEL (--log-level)"),
        (["--no-such-flag", "1"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_each_bad_setting_is_named(args: list[str], expected: str) -> None:
    assert expected in bad(*args)


def test_a_bad_value_is_shown_but_never_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "(got 'many')" in bad("--mqtt-port", "many")
    # A secret that fails validation is not echoed, nor one given to a misspelt flag.
    with pytest.raises(SettingsError) as info:
        load_settings(["--connector-url", "x", "--connector-token", TOKEN], env_file=None)
    assert TOKEN not in str(info.value)
    assert TOKEN not in bad("--connector-tokn", TOKEN)
    assert TOKEN not in bad(f"--connector-tokn={TOKEN}")
    monkeypatch.setenv("BRIDGE_MQTT_PASSWORD", TOKEN)
    assert TOKEN not in bad()  # password without user name: the error names, not shows


def test_secrets_are_masked_everywhere() -> None:
    s = load_settings(
        [*BASE, "--mqtt-username", "u", "--mqtt-password", "pw-XYZ-123"], env_file=None
    )
    for text in (repr(s), str(s), json.dumps(s.public_summary()), s.model_dump_json()):
        assert TOKEN not in text and "pw-XYZ-123" not in text
    summary = s.public_summary()
    assert all(summary[f] == "***" for f in SECRET_FIELDS)
    assert summary["mqtt_username"] == "u"


def test_both_a_secret_and_its_file() -> None:
    text = bad("--connector-token-file", "/etc/hostname")
    assert "BRIDGE_CONNECTOR_TOKEN and BRIDGE_CONNECTOR_TOKEN_FILE are both set" in text


def test_unreadable_secret_file() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(
            ["--connector-url", "http://x:1", "--connector-token-file", "/no/such/file"],
            env_file=None,
        )
    assert "BRIDGE_CONNECTOR_TOKEN_FILE: cannot read /no/such/file" in str(info.value)


# ------------------------------------------------------------------ rules (pure)


def test_rule_matching() -> None:
    res = [("/3303/0/5700", True), ("/3303/0/5701", False), ("/3311/0/5850", True)]
    assert observed_paths([{"endpoint-name": "*"}], "x", "T", res) == [
        "/3303/0/5700",
        "/3311/0/5850",
    ]
    assert observed_paths([{"endpoint-name": "node*"}], "light-1", "T", res) == []
    assert observed_paths(
        [{"endpoint-type": "T", "resource-path": ["/3311/*"]}], "x", "T", res
    ) == ["/3311/0/5850"]
    assert observed_paths([{"resource-path": ["/3303/0/5700"]}], "x", None, res) == ["/3303/0/5700"]
    assert observed_paths([], "x", "T", res) == []
