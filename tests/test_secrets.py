"""Secrets: read from files the way containers and systemd hand them over, refused with a
message that names the setting but never shows the content, and absent from everything the
bridge writes, even at DEBUG with paho's, urllib3's and asyncio's own debug output on.

The three secrets are the Connector token, the MQTT password and the webhook secret.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.service.settings import SECRET_FIELDS, SettingsError, load_settings
from bridge.simulator import Emulator
from tests.support.bridge_harness import command, user
from tests.support.broker import MosquittoBroker, env_with_pythonpath
from tests.support.ports import free_port

TOKEN = "tok-" + uuid.uuid4().hex  # random: a hit in the output can only be a leak
BASE = {"connector_url": "http://127.0.0.1:1"}


def settings_error(**values: Any) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(None, env_file=None, overrides={**BASE, **values})
    return str(info.value)


def write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def leaked(secret: str, text: str, window: int = 12) -> bool:
    """Whether ``text`` holds ``secret`` or any ``window``-character piece of it (a
    truncated log line leaks too)."""
    window = min(window, len(secret))
    return any(secret[i : i + window] in text for i in range(len(secret) - window + 1))


# --- files: each setting, each way a file can be wrong -------------------------------------

FILE_SETTINGS = [
    pytest.param("connector_token_file", {}, id="connector-token"),
    pytest.param("mqtt_password_file", {"connector_token": TOKEN, "mqtt_username": "u"},
                 id="mqtt-password"),
    pytest.param("callback_secret_file", {"connector_token": TOKEN}, id="callback-secret"),
]  # fmt: skip


@pytest.mark.parametrize(("file_setting", "others"), FILE_SETTINGS)
def test_a_secret_file_is_read_without_its_line_break(
    tmp_path: Path, file_setting: str, others: dict[str, Any]
) -> None:
    field = file_setting.removesuffix("_file")
    secret = "Secret-" + uuid.uuid4().hex
    for ending in ("", "\n", "\r\n"):
        path = write(tmp_path / "s", secret + ending)
        s = load_settings(None, env_file=None, overrides={**BASE, **others, file_setting: path})
        assert getattr(s, field).get_secret_value() == secret
        assert secret not in repr(s) and secret not in json.dumps(s.public_summary())


@pytest.mark.parametrize(("file_setting", "others"), FILE_SETTINGS)
def test_a_bad_secret_file_names_the_setting_and_never_the_content(
    tmp_path: Path, file_setting: str, others: dict[str, Any]
) -> None:
    env = "BRIDGE_" + file_setting.upper()
    content = "Hidden-" + uuid.uuid4().hex
    cases = {
        "missing": (tmp_path / "nope", "cannot read"),
        "a directory": (tmp_path, "cannot read"),
        "empty": (write(tmp_path / "empty", ""), "is empty"),
        "only a line break": (write(tmp_path / "nl", "\n"), "is empty"),
        "not UTF-8": (write(tmp_path / "bin", b"\xff\xfe" + content.encode()), "not UTF-8"),
    }
    for case, (path, says) in cases.items():
        text = settings_error(**others, **{file_setting: str(path)})
        assert env in text and says in text, (case, text)
        assert not leaked(content, text), case


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_secret_file(tmp_path: Path) -> None:
    content = "Hidden-" + uuid.uuid4().hex
    path = write(tmp_path / "token", content)
    path.chmod(0)
    text = settings_error(connector_token_file=str(path))
    assert "BRIDGE_CONNECTOR_TOKEN_FILE: cannot read" in text and "ermission" in text
    assert not leaked(content, text)


def test_a_token_file_with_more_than_the_token(tmp_path: Path) -> None:
    """Two lines, a blank line after it, spaces: the token would break the HTTP header
    (and the HTTP stack's own error would quote it). Refused at start, named, not shown."""
    for content in (f"{TOKEN}\n\n", f"{TOKEN}\nsecond line\n", f" {TOKEN}\n", f"{TOKEN}\t\n"):
        text = settings_error(connector_token_file=str(write(tmp_path / "t", content)))
        assert "BRIDGE_CONNECTOR_TOKEN" in text and "line break" in text
        assert not leaked(TOKEN, text)


def test_an_mqtt_password_keeps_what_is_inside_it(tmp_path: Path) -> None:
    """Only one trailing line break is removed: spaces and inner characters are the
    password's own (MQTT passwords are binary-safe)."""
    password = " pass word\twith spaces "
    path = write(tmp_path / "pw", password + "\n")
    s = load_settings(
        None, env_file=None,
        overrides={**BASE, "connector_token": TOKEN, "mqtt_username": "u",
                   "mqtt_password_file": str(path)},
    )  # fmt: skip
    assert s.mqtt_password is not None and s.mqtt_password.get_secret_value() == password


def test_a_secret_and_its_file_together_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "s", "x" * 20)
    for field, extra in (
        ("connector_token", {}),
        ("mqtt_password", {"connector_token": TOKEN, "mqtt_username": "u"}),
        ("callback_secret", {"connector_token": TOKEN}),
    ):
        value = "Value-" + uuid.uuid4().hex
        text = settings_error(**extra, **{field: value, f"{field}_file": str(path)})
        env = "BRIDGE_" + field.upper()
        assert f"{env} and {env}_FILE are both set" in text
        assert not leaked(value, text)


def test_a_weak_or_header_breaking_callback_secret_is_refused(tmp_path: Path) -> None:
    for secret, says in (("short", "at least 16"), ("with space " * 3, "without spaces")):
        path = write(tmp_path / "cb", secret + "\n")
        text = settings_error(connector_token=TOKEN, callback_secret_file=str(path))
        assert "BRIDGE_CALLBACK_SECRET" in text and says in text
        assert secret not in text


def test_every_secret_setting_is_masked() -> None:
    s = load_settings(
        None, env_file=None,
        overrides={**BASE, "connector_token": TOKEN, "mqtt_username": "u",
                   "mqtt_password": "pw-" + TOKEN[4:], "callback_secret": "cb-" + TOKEN[4:]},
    )  # fmt: skip
    assert {"connector_token", "mqtt_password", "callback_secret"} <= SECRET_FIELDS
    summary = s.public_summary()
    for text in (repr(s), str(s), json.dumps(summary), s.model_dump_json()):
        assert not leaked(TOKEN[4:], text)
    assert all(summary[f] == "***" for f in SECRET_FIELDS)


# --- the command: a bad secret file stops it with a clear message ------------------------------


def run_bridge(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--env-file", ""],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in env_with_pythonpath().items() if not k.startswith("BRIDGE_")}
    env.update(extra)
    return env


def test_run_with_a_bad_token_file_exits_2_naming_the_setting(tmp_path: Path) -> None:
    for content in (f"{TOKEN}\n\n", b"\xff" + TOKEN.encode()):
        token_file = write(tmp_path / "token", content)
        done = run_bridge(
            clean_env(BRIDGE_CONNECTOR_URL="http://127.0.0.1:1",
                      BRIDGE_CONNECTOR_TOKEN_FILE=str(token_file)),
            tmp_path,
        )  # fmt: skip
        output = done.stdout + done.stderr
        assert done.returncode == 2, output
        assert "BRIDGE_CONNECTOR_TOKEN" in output and "Traceback" not in output
        assert not leaked(TOKEN, output)


def test_run_with_a_missing_password_file_exits_2_naming_the_setting(tmp_path: Path) -> None:
    done = run_bridge(
        clean_env(BRIDGE_CONNECTOR_URL="http://127.0.0.1:1", BRIDGE_CONNECTOR_TOKEN=TOKEN,
                  BRIDGE_MQTT_USERNAME="bridge",
                  BRIDGE_MQTT_PASSWORD_FILE=str(tmp_path / "no-such-file")),
        tmp_path,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "BRIDGE_MQTT_PASSWORD_FILE: cannot read" in output
    assert not leaked(TOKEN, output)


# --- a whole session at DEBUG: none of the three secrets in the output -------------------------


MQTT_PASSWORD = "pw-" + uuid.uuid4().hex
CALLBACK_SECRET = "cb-" + uuid.uuid4().hex
DIMMER = "connector/light-001/3311/0/5851"


@pytest.fixture
def password_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """The bridge's user needs its password (a wrong one is refused); anonymous clients
    (the test's users) may connect as well."""
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto_passwd is not installed")
    pwfile = tmp_path_factory.mktemp("pw") / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(pwfile), "bridge", MQTT_PASSWORD],
        check=True, capture_output=True,
    )  # fmt: skip
    with MosquittoBroker(extra_config=f"user root\npassword_file {pwfile}\n") as b:
        yield b


def test_a_whole_debug_session_never_shows_a_secret(
    password_broker: MosquittoBroker, tmp_path: Path
) -> None:
    broker = password_broker
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o700)
    hook_port = free_port()
    hook = f"http://127.0.0.1:{hook_port}/connector/notify"
    with Emulator(token=TOKEN, pull_timeout=1.0) as emu:
        env = clean_env(
            BRIDGE_LOG_LEVEL="DEBUG",
            PYTHONASYNCIODEBUG="1",  # asyncio's debug mode (the webhook receiver's loop)
            BRIDGE_CONNECTOR_URL=emu.url,
            BRIDGE_CONNECTOR_TOKEN_FILE=str(write(secrets_dir / "token", TOKEN + "\n")),
            BRIDGE_MQTT_HOST="127.0.0.1",
            BRIDGE_MQTT_PORT=str(broker.port),
            BRIDGE_MQTT_USERNAME="bridge",
            BRIDGE_MQTT_PASSWORD_FILE=str(write(secrets_dir / "pw", MQTT_PASSWORD + "\n")),
            BRIDGE_MQTT_CLIENT_ID=f"secrets-{uuid.uuid4().hex[:8]}",
            BRIDGE_NOTIFICATION_CHANNEL="callback",
            BRIDGE_CALLBACK_URL=hook,
            BRIDGE_CALLBACK_LISTEN=f"127.0.0.1:{hook_port}",
            BRIDGE_CALLBACK_SECRET_FILE=str(write(secrets_dir / "cb", CALLBACK_SECRET + "\n")),
            BRIDGE_COMMAND_TIMEOUT="5",
        )
        out_path, err_path = tmp_path / "out", tmp_path / "err"
        with out_path.open("w") as out, err_path.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run", "--env-file", ""],
                env=env, cwd=tmp_path, stdout=out, stderr=err,
            )  # fmt: skip
        try:
            with user(broker, "5", "connector/#") as u:
                u.wait_topic("connector/$bridge/state", payload=b"online", timeout=30)
                # Endpoints are announced after the notification channel was set up.
                u.wait_topic("connector/node-001/$state", payload=b"online")
                registered = emu.core.callback
                assert registered is not None
                assert registered["headers"] == {"Authorization": f"Bearer {CALLBACK_SECRET}"}
                u.wait_for(lambda m: m.topic == "connector/node-001/3303/0/5700" and not m.retain)
                assert command(u, f"{DIMMER}/set", b"33", transaction="s1")["ok"]
                assert not command(u, "connector/nobody/1/0/1/set", b"1", transaction="s2")["ok"]
                u.publish("connector/$bridge/request/info", json.dumps({"transaction": "s3"}))
                u.wait_for(
                    lambda m: (
                        m.topic == "connector/$bridge/response/info"
                        and m.json().get("transaction") == "s3"
                    )
                )
                # The webhook: the Connector's own deliveries above, plus ours.
                body = {"notifications": [{"ep": "light-001", "path": "/3311/0/5851",
                                           "payload": "NDQ="}]}  # fmt: skip
                good = {"Authorization": f"Bearer {CALLBACK_SECRET}"}
                assert requests.put(hook, json=body, headers=good, timeout=10).status_code == 204
                u.wait_topic(DIMMER, payload=b"44")
                near = {"Authorization": f"Bearer {CALLBACK_SECRET[:-1]}x"}
                assert requests.put(hook, json=body, headers=near, timeout=10).status_code == 401
                bad = requests.put(hook, data=b"{not json", headers=good, timeout=10)
                assert bad.status_code == 400
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=30)
                u.wait_topic("connector/$bridge/state", payload=b"offline")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = out_path.read_text(errors="replace") + err_path.read_text(errors="replace")
    assert code == 0, output[-3000:]
    # The debug output was really on, from every layer that could leak. (The HTTP stack's
    # own loggers, urllib3's or aiohttp's, are at DEBUG too: the root logger is.)
    for marker in (
        " DEBUG ",  # the bridge's own
        "bridge.mqtt.paho",  # paho's protocol log ("Sending CONNECT ...")
        "Sending CONNECT",
        "/v2/notification/callback",  # the request that carries the webhook secret
        "/v2/endpoints/light-001/3311/0/5851",  # the command's REST call
        "bridge.callback",  # the receiver's refusals
        "asyncio",  # asyncio's debug mode
    ):
        assert marker in output, f"{marker!r} not in the output"
    for name, secret in (
        ("Connector token", TOKEN),
        ("MQTT password", MQTT_PASSWORD),
        ("webhook secret", CALLBACK_SECRET),
    ):
        assert not leaked(secret, output), f"the {name} appears in the output"
    print(f"\ndebug session output: {len(output.splitlines())} lines, {len(output)} characters")
