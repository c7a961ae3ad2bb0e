"""What can be checked about deploy/ without a container engine or a cluster.

No Docker daemon, compose plugin or Kubernetes runs here, so these tests check what the
files promise against the rest of the project: the YAML parses; the Kubernetes objects
are locked down (non-root, read-only root file system, no privilege escalation) and
probe the health port the image and the settings use; compose refers to files that
exist and wires the services to each other; the image's entry point is the console
script and sub-command the tests run; the systemd unit passes `systemd-analyze verify`
and its sandbox scores "OK" in `systemd-analyze security`. Secrets travel as files
everywhere, never as environment values.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from bridge.cli import COMMANDS
from bridge.service.settings import Settings, SettingsError, load_settings
from bridge.simulator import Emulator
from tests.support.broker import MosquittoBroker, env_with_pythonpath
from tests.support.mqtt_user import MqttUser
from tests.support.ports import free_port

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as vendored by pip
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "systemd" / "connector-bridge.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "bridge.env.example"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

SECRET_SETTINGS = {"BRIDGE_CONNECTOR_TOKEN", "BRIDGE_MQTT_PASSWORD"}
SECRET_FILE_SETTINGS = {"BRIDGE_CONNECTOR_TOKEN_FILE", "BRIDGE_MQTT_PASSWORD_FILE"}
# Names deploy/ may use before bridge/service/settings.py defines them. Empty: every name deploy/
# uses (the secret files, BRIDGE_HEALTH_PORT, the webhook's) is a real setting now.
ASSUMED_SETTINGS: set[str] = set()


def load_yaml(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# --- YAML -------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(
        p
        for ext in ("yaml", "yml")
        for p in DEPLOY.rglob(f"*.{ext}")
        if "node_modules" not in p.parts  # installed by npm for the Node-RED test, not ours
    )


def test_deploy_has_the_expected_yaml_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in yaml_files()}
    assert {"compose.yaml", "k8s/deployment.yaml", "k8s/kustomization.yaml"} <= names


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_yaml_file_parses_to_mappings(path: Path) -> None:
    docs = load_yaml(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(d, dict) for d in docs)


# --- Kubernetes ------------------------------------------------------------------------


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, for the kustomization's resources and the Secret example."""
    kustomization = load_yaml(K8S / "kustomization.yaml")[0]
    files = [K8S / f for f in kustomization["resources"]] + [K8S / "secret.example.yaml"]
    objects = {}
    for f in files:
        for obj in load_yaml(f):
            objects[(obj["kind"], obj["metadata"]["name"])] = obj
    return objects


def deployment() -> dict[str, Any]:
    return k8s_objects()[("Deployment", "connector-bridge")]


def bridge_container() -> dict[str, Any]:
    containers = deployment()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def test_kustomization_lists_existing_files_but_never_the_secret() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    for name in kustomization["resources"]:
        assert (K8S / name).is_file(), name
    kinds = {obj["kind"] for f in kustomization["resources"] for obj in load_yaml(K8S / f)}
    assert "Secret" not in kinds  # applying a placeholder would overwrite the real one


def test_k8s_objects_have_the_expected_kinds() -> None:
    objects = k8s_objects()
    assert set(objects) == {
        ("Namespace", "connector-bridge"),
        ("ConfigMap", "connector-bridge"),
        ("ConfigMap", "connector-bridge-broker-ca"),
        ("Secret", "connector-bridge"),
        ("Deployment", "connector-bridge"),
        ("Service", "connector-bridge"),
        ("NetworkPolicy", "connector-bridge"),
    }
    for (kind, _), obj in objects.items():
        assert obj["apiVersion"] == {"Deployment": "apps/v1"}.get(
            kind, "networking.k8s.io/v1" if kind == "NetworkPolicy" else "v1"
        )


def test_the_namespace_enforces_the_restricted_pod_security_standard() -> None:
    ns = k8s_objects()[("Namespace", "connector-bridge")]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_deployment_runs_exactly_one_bridge_and_replaces_it_stop_first() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_deployment_security_context_is_locked_down() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    c = bridge_container()["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_user()[0] != 0
    assert pod["securityContext"]["runAsGroup"] == dockerfile_user()[1] != 0
    assert c["allowPrivilegeEscalation"] is False
    assert c["readOnlyRootFilesystem"] is True
    assert c.get("privileged", False) is False
    assert c["capabilities"]["drop"] == ["ALL"] and "add" not in c["capabilities"]
    for ctx in (pod["securityContext"], c):
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    assert not any(k in pod for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert all("hostPath" not in v for v in pod["volumes"])


def test_deployment_probes_ask_the_health_port_that_the_settings_and_the_image_use() -> None:
    container = bridge_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    settings = k8s_objects()[("ConfigMap", "connector-bridge")]["data"]
    assert ports["health"] == int(settings["BRIDGE_HEALTH_PORT"])
    assert ports["health"] == int(dockerfile_env()["BRIDGE_HEALTH_PORT"])
    expected = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, "health"), probe


def test_deployment_runs_the_image_sub_command_the_tests_run() -> None:
    container = bridge_container()
    assert "command" not in container  # keeps the image's ENTRYPOINT
    assert container["args"] == dockerfile_json("CMD") == ["run"]
    assert container["image"].rpartition(":")[2] == PYPROJECT["project"]["version"]


def test_k8s_secrets_reach_the_bridge_as_files_only() -> None:
    objects = k8s_objects()
    pod = deployment()["spec"]["template"]["spec"]
    container = bridge_container()
    secret = objects[("Secret", "connector-bridge")]
    env = {e["name"]: e for e in container["env"]}
    assert SECRET_SETTINGS.isdisjoint(env), "secrets must not be environment values"
    assert all("valueFrom" not in e for e in env.values()), "no secretKeyRef/configMapKeyRef"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    secret_mount = next(m for m in mounts.values() if "secret" in volumes[m["name"]])
    assert secret_mount["readOnly"] is True
    secret_volume = volumes[secret_mount["name"]]["secret"]
    assert secret_volume["secretName"] == secret["metadata"]["name"]
    # Mode 0440 with fsGroup: root owns the files, the bridge's group may read them.
    assert secret_volume["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    for name in SECRET_FILE_SETTINGS:
        path = Path(env[name]["value"])
        assert path.parent == Path(secret_mount["mountPath"]), name
        assert path.name in secret["stringData"], name
    config = objects[("ConfigMap", "connector-bridge")]["data"]
    assert not any(re.search("TOKEN|PASSWORD|SECRET|_KEY$", k) for k in config)


def test_k8s_references_resolve() -> None:
    objects = k8s_objects()
    pod = deployment()["spec"]["template"]["spec"]
    container = bridge_container()
    for source in container["envFrom"]:
        assert ("ConfigMap", source["configMapRef"]["name"]) in objects
    for volume in pod["volumes"]:
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in objects
    mounted = {m["name"] for m in container["volumeMounts"]}
    assert mounted == {v["name"] for v in pod["volumes"]}
    ca = next(e["value"] for e in container["env"] if e["name"] == "BRIDGE_MQTT_TLS_CA")
    ca_mount = next(m for m in container["volumeMounts"] if ca.startswith(m["mountPath"] + "/"))
    ca_volume = next(v for v in pod["volumes"] if v["name"] == ca_mount["name"])
    ca_map = objects[("ConfigMap", ca_volume["configMap"]["name"])]
    assert Path(ca).name in ca_map["data"]


def test_service_and_network_policy_select_the_bridge_and_its_health_port() -> None:
    objects = k8s_objects()
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    service = objects[("Service", "connector-bridge")]["spec"]
    assert service["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["ports"]} == {"health"}
    policy = objects[("NetworkPolicy", "connector-bridge")]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert ingress_ports == {"health"}
    mqtt_port = int(objects[("ConfigMap", "connector-bridge")]["data"]["BRIDGE_MQTT_PORT"])
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert {53, mqtt_port, 443} <= egress_ports


# --- Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, args = (pending + line).partition(" ")
        out.append((instruction.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def dockerfile_json(instruction: str) -> list[str]:
    """The last ENTRYPOINT/CMD, which must use the exec (JSON) form."""
    args = [a for i, a in dockerfile_instructions() if i == instruction][-1]
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def dockerfile_stages() -> list[str]:
    """The base image of each stage, with ARG defaults substituted."""
    args: dict[str, str] = {}
    images: list[str] = []
    for instruction, rest in dockerfile_instructions():
        if instruction == "ARG" and not images:
            name, _, default = rest.partition("=")
            args[name] = default
        elif instruction == "FROM":
            image = rest.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return images


def dockerfile_final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, rest in dockerfile_final_stage():
        if instruction == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(rest)))
    return env


def dockerfile_user() -> tuple[int, int]:
    users = [rest for ins, rest in dockerfile_final_stage() if ins == "USER"]
    assert users, "the final stage must switch to an unprivileged user"
    uid, _, gid = users[-1].partition(":")
    return int(uid), int(gid)


def test_dockerfile_entrypoint_is_the_console_script_and_cmd_the_run_sub_command() -> None:
    entrypoint = dockerfile_json("ENTRYPOINT")
    cmd = dockerfile_json("CMD")
    assert entrypoint == ["connector-bridge"]
    assert PYPROJECT["project"]["scripts"][entrypoint[0]] == "bridge.cli:main"
    assert cmd == ["run"] and cmd[0] in COMMANDS
    # The same console script the tests run, installed from this checkout.
    script = Path(sys.executable).parent / entrypoint[0]
    shown = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    assert re.search(rf"^\s+{cmd[0]}\s", shown.stdout, re.M), shown.stdout


def test_dockerfile_is_a_two_stage_slim_build_running_as_non_root() -> None:
    assert dockerfile_stages() == ["python:3.11-slim", "python:3.11-slim"]
    final = dockerfile_final_stage()
    assert not any(ins in ("COPY", "ADD") and "/wheels" in rest for ins, rest in final)
    uid, gid = dockerfile_user()
    assert uid >= 1000 and gid >= 1000
    creates = " ".join(rest for ins, rest in final if ins == "RUN")
    assert f"--uid {uid}" in creates and f"--gid {gid}" in creates
    # The user is set before the entry point and never switched back.
    order = [ins for ins, _ in final]
    assert order.index("USER") < order.index("ENTRYPOINT")


def test_dockerfile_build_context_holds_what_the_wheel_build_needs() -> None:
    """Every COPY source exists, survives the .dockerignore, and covers what pyproject
    needs to build the wheel (the readme, the packages)."""
    copied = []
    for ins, rest in dockerfile_instructions():
        if ins == "COPY" and not rest.startswith("--from"):
            *sources, _dest = rest.split()
            copied += sources
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore
    for source in copied:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in allowed, f"{source} is excluded by Dockerfile.dockerignore"
    assert PYPROJECT["project"]["readme"] in copied
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= set(copied)


@pytest.fixture
def health_server() -> Iterator[tuple[int, list[int]]]:
    """A stand-in /healthz: answers with the status at the head of the list."""
    statuses = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses[0] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], statuses
    server.shutdown()
    server.server_close()


def test_dockerfile_healthcheck_command_passes_on_200_and_fails_otherwise(
    health_server: tuple[int, list[int]],
) -> None:
    port, statuses = health_server
    (check,) = [rest for ins, rest in dockerfile_final_stage() if ins == "HEALTHCHECK"]
    options, _, command = check.partition(" CMD ")
    assert "--interval" in options and "--timeout" in options
    # Docker runs the shell form with /bin/sh -c; "python" is the image's interpreter.
    command = command.replace("python ", f"{shlex.quote(sys.executable)} ", 1)
    env = {**os.environ, "BRIDGE_HEALTH_PORT": str(port)}

    def run() -> int:
        return subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True).returncode

    assert run() == 0
    statuses[0] = 503
    assert run() != 0


# --- compose --------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(COMPOSE)[0]
    return doc


def test_compose_starts_the_broker_the_emulator_and_the_bridge() -> None:
    services = compose()["services"]
    assert set(services) == {"mosquitto", "emulator", "bridge"}
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    bridge = services["bridge"]
    assert bridge["command"] == dockerfile_json("CMD")
    for dependency in ("mosquitto", "emulator"):
        assert bridge["depends_on"][dependency]["condition"] == "service_healthy"
        assert "healthcheck" in services[dependency]


def test_compose_refers_to_files_that_exist() -> None:
    doc = compose()
    base = COMPOSE.parent
    for name, service in doc["services"].items():
        if "build" in service:
            context = (base / service["build"]["context"]).resolve()
            assert context == ROOT, name
            assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (base / source).is_file(), f"{name}: {source}"
    for secret in doc["secrets"].values():
        assert (base / secret["file"]).is_file(), secret["file"]


def test_compose_emulator_runs_the_simulate_sub_command_on_all_interfaces() -> None:
    from bridge.simulator.cli import build_parser

    command = compose()["services"]["emulator"]["command"]
    assert command[0] == "simulate" and command[0] in COMMANDS
    args = build_parser().parse_args(command[1:])  # the emulator's own parser accepts it
    assert args.host == "0.0.0.0"
    assert args.port == 8080
    token_file = COMPOSE.parent / compose()["secrets"]["connector_token"]["file"]
    assert args.token == token_file.read_text().strip()


def test_compose_bridge_points_at_the_other_services_and_gets_its_token_as_a_file() -> None:
    services = compose()["services"]
    env = services["bridge"]["environment"]
    assert SECRET_SETTINGS.isdisjoint(env)
    url = urlsplit(env["BRIDGE_CONNECTOR_URL"])
    emulator = services["emulator"]["command"]
    assert (url.hostname, url.port) == ("emulator", int(emulator[emulator.index("--port") + 1]))
    assert env["BRIDGE_MQTT_HOST"] == "mosquitto"
    demo_conf = (DEPLOY / "mosquitto" / "demo.conf").read_text()
    assert f"listener {env['BRIDGE_MQTT_PORT']}\n" in demo_conf
    assert env["BRIDGE_CONNECTOR_TOKEN_FILE"] == "/run/secrets/connector_token"
    assert services["bridge"]["secrets"] == ["connector_token"]


def test_compose_publishes_ports_on_loopback_only_and_hardens_our_containers() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port}"
        if name != "mosquitto":
            assert service["read_only"] is True
            assert service["cap_drop"] == ["ALL"]
            assert "no-new-privileges:true" in service["security_opt"]


def test_the_compose_demo_broker_config_runs() -> None:
    """deploy/mosquitto/demo.conf starts (port moved to a free loopback one) and takes
    an anonymous client, as the demo's mosquitto_sub line needs."""
    text = (DEPLOY / "mosquitto" / "demo.conf").read_text()
    assert text.startswith("# DEMO ONLY")
    broker = MosquittoBroker(listener=False)
    broker.extra_config = text.replace("listener 1883\n", f"listener {broker.port} 127.0.0.1\n")
    with broker.start():
        client = MqttUser(broker.port)  # anonymous
        try:
            assert client.publish("connector/node-001/3303/0/5700", b"21", qos=1).is_published()
        finally:
            client.close()


# --- systemd ---------------------------------------------------------------------------


def unit_directives() -> list[tuple[str, str]]:
    """(key, value) for every directive of the unit, in order (keys may repeat)."""
    pairs = []
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart is this checkout's console script: verify
    checks that the binary exists and is executable."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (package systemd): cannot verify the unit")
    script = Path(sys.executable).parent / "connector-bridge"
    text = UNIT.read_text()
    assert "ExecStart=/opt/connector-bridge/bin/connector-bridge run" in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace("/opt/connector-bridge/bin/connector-bridge", str(script)))
    return copy


def test_systemd_unit_passes_systemd_analyze_verify(verifiable_unit: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(verifiable_unit)], capture_output=True, text=True
    )
    # verify exits 0 even for unknown keys or bad values; it says so on stderr.
    about_unit = [line for line in done.stderr.splitlines() if verifiable_unit.name in line]
    assert done.returncode == 0 and not about_unit, done.stderr


def test_systemd_unit_sandbox_exposure_is_ok(verifiable_unit: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(verifiable_unit)],
        capture_output=True,
        text=True,
    )
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert level, done.stdout[-500:] + done.stderr
    print(f"systemd-analyze security: exposure {level.group(1)} (0 = best, 10 = worst)")
    assert done.returncode == 0, f"exposure {level.group(1)} is above 2.0"


def test_systemd_unit_sandboxes_the_service() -> None:
    directives = dict(unit_directives())
    expected = {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "MemoryDenyWriteExecute": "yes",
    }
    assert {k: directives.get(k) for k in expected} == expected
    filters = [v for k, v in unit_directives() if k == "SystemCallFilter"]
    assert "@system-service" in filters
    assert directives["ExecStart"].split()[-1] == dockerfile_json("CMD")[0]


def test_systemd_secrets_are_credentials_read_through_the_file_settings() -> None:
    directives = unit_directives()
    credentials = {v.split(":", 1)[0] for k, v in directives if k == "LoadCredential"}
    environment = dict(
        item.split("=", 1) for k, v in directives if k == "Environment" for item in v.split()
    )
    for name in SECRET_FILE_SETTINGS:
        value = environment[name]
        assert value.startswith("%d/") and value[3:] in credentials, name
    assert SECRET_SETTINGS.isdisjoint(environment)
    example = [line for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line]
    settings = {line.lstrip("#").split("=", 1)[0] for line in example}
    assert settings and SECRET_SETTINGS.isdisjoint(settings)
    env_file = next(v for k, v in directives if k == "EnvironmentFile")
    assert env_file.startswith("/etc/connector-bridge/")


# --- the settings deploy/ uses exist ------------------------------------------------------


def test_every_bridge_setting_named_in_deploy_exists_or_is_a_listed_assumption() -> None:
    from bridge.service.settings import Settings, env_name

    known = {env_name(field) for field in Settings.model_fields}
    used = set()
    for path in DEPLOY.rglob("*"):
        if path.is_file() and "node_modules" not in path.parts:
            used |= set(re.findall(r"\bBRIDGE_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    unknown = used - known - ASSUMED_SETTINGS
    assert not unknown, f"deploy/ uses settings the bridge does not define: {sorted(unknown)}"


# --- the example settings in deploy/ are valid settings -------------------------------------

SETTING_LINE = re.compile(r"^\s*(#?)\s*(BRIDGE_[A-Z0-9_]+)\s*[:=]\s*(.*?)\s*$")


def setting_blocks(path: Path) -> list[dict[str, str]]:
    """The settings a file sets, then each block of commented-out example settings
    (consecutive ``# BRIDGE_X: value`` / ``#BRIDGE_X=value`` lines), in file order."""
    active: dict[str, str] = {}
    blocks: list[dict[str, str]] = []
    in_block = False
    for line in path.read_text().splitlines():
        m = SETTING_LINE.match(line)
        if not m:
            in_block = False
            continue
        commented, name, value = m.groups()
        value = value.strip("\"'")
        if not commented:
            active[name] = value
            continue
        if not in_block:
            blocks.append({})
            in_block = True
        blocks[-1][name] = value
    return [active, *blocks]


def as_valid_settings(values: dict[str, str], scratch: Path) -> None:
    """load_settings on ``values``: paths replaced by a readable file holding a
    placeholder secret (the files themselves exist only where deployed)."""
    placeholder = scratch / "placeholder"
    placeholder.write_text("placeholder-secret-value-0123456789\n")
    overrides: dict[str, Any] = {"connector_token": "placeholder-token"}
    for name, value in values.items():
        field = name.removeprefix("BRIDGE_").lower()
        overrides[field] = str(placeholder) if value.startswith(("/", "%d/")) else value
    if "connector_token_file" in overrides:
        del overrides["connector_token"]
    try:
        load_settings(None, env_file=None, overrides=overrides)
    except SettingsError as exc:
        raise AssertionError(f"{sorted(values)}: {exc}") from None


@pytest.mark.parametrize(
    "path",
    [COMPOSE, K8S / "configmap.yaml", ENV_EXAMPLE],
    ids=lambda p: p.relative_to(DEPLOY).as_posix(),
)
def test_settings_and_commented_examples_are_valid_settings(path: Path, tmp_path: Path) -> None:
    """Each block of commented examples, applied on top of the file's settings and the
    blocks before it (as a reader uncommenting them in order would), gives valid settings."""
    active, *examples = setting_blocks(path)
    assert active, path
    values = dict(active)
    as_valid_settings(values, tmp_path)
    for block in examples:
        values.update(block)
        as_valid_settings(values, tmp_path)
    assert any("BRIDGE_CALLBACK_URL" in b for b in examples), "the webhook example is missing"


# --- the health check and the probes against the real bridge ---------------------------------


def test_the_image_healthcheck_and_the_probes_pass_against_the_real_bridge(
    broker: MosquittoBroker, emulator: Emulator, tmp_path: Path
) -> None:
    """`connector-bridge run` with BRIDGE_HEALTH_PORT: the image's HEALTHCHECK command and
    the Deployment's probe paths answer as they must; after the stop the check fails."""
    port = free_port()
    env = {k: v for k, v in env_with_pythonpath().items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_CONNECTOR_URL=emulator.url,
        BRIDGE_CONNECTOR_TOKEN=emulator.token,
        BRIDGE_MQTT_HOST="127.0.0.1",
        BRIDGE_MQTT_PORT=str(broker.port),
        BRIDGE_MQTT_CLIENT_ID=f"deploy-health-{os.getpid()}",
        BRIDGE_HEALTH_PORT=str(port),
        BRIDGE_HEALTH_HOST="127.0.0.1",
    )
    (check,) = [rest for ins, rest in dockerfile_final_stage() if ins == "HEALTHCHECK"]
    command = check.partition(" CMD ")[2].replace("python ", f"{shlex.quote(sys.executable)} ", 1)

    def healthcheck() -> int:
        return subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True).returncode

    def get(path: str) -> int | None:
        try:
            return requests.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code
        except requests.ConnectionError:
            return None

    container = bridge_container()
    probes = {name: container[name]["httpGet"]["path"] for name in
              ("startupProbe", "livenessProbe", "readinessProbe")}  # fmt: skip
    err_path = tmp_path / "bridge.err"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--env-file", ""],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while get("/readyz") != 200:  # ready: connected to the broker and the Connector
            assert proc.poll() is None, err_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the bridge never became ready"
            time.sleep(0.1)
        assert healthcheck() == 0
        for name, path in probes.items():
            assert get(path) == 200, (name, path)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, err_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert healthcheck() != 0  # nothing answers any more


# --- several bridges for one account ----------------------------------------------------


def test_compose_replicas_runs_three_bridges_on_a_three_member_etcd() -> None:
    (doc,) = load_yaml(DEPLOY / "compose.replicas.yaml")
    services = doc["services"]
    etcds = sorted(n for n in services if n.startswith("etcd-"))
    assert etcds == ["etcd-0", "etcd-1", "etcd-2"]
    cluster = {f"{n}=http://{n}:2380" for n in etcds}
    for name in etcds:
        args = dict(a.split("=", 1) for a in services[name]["command"][1:])
        assert set(args["--initial-cluster"].split(",")) == cluster
        assert args["--advertise-client-urls"] == f"http://{name}:2379"
    bridge = services["bridge"]
    assert bridge["deploy"]["replicas"] == 3
    env = bridge["environment"]
    assert env["BRIDGE_CLUSTER_ETCD"].split(",") == [f"http://{n}:2379" for n in etcds]
    assert set(bridge["depends_on"]) == set(etcds)
    base = load_yaml(DEPLOY / "compose.yaml")[0]
    assert "bridge" in base["services"], "an override of compose.yaml's bridge"
    for key in env:
        assert key.removeprefix("BRIDGE_").lower() in Settings.model_fields, key


# --- Kubernetes: three replicas on a three-member etcd (deploy/k8s-replicas) -----------

K8S_REPLICAS = DEPLOY / "k8s-replicas"
ETCD_LABELS = {"app.kubernetes.io/name": "etcd", "app.kubernetes.io/part-of": "connector-bridge"}
# A pod name as a Deployment makes them (<deployment>-<template hash>-<5 characters>):
# what the downward API hands the bridge as BRIDGE_CLUSTER_MEMBER.
SAMPLE_POD = "connector-bridge-7c9d8f6b5d-x2k4q"


def strategic_merge(base: Any, patch: Any) -> Any:
    """The part of a strategic merge patch that the overlay uses: maps merge key by key,
    lists of named maps (containers, env, ports) merge by ``name``, anything else is
    replaced. (``test_the_overlay_builds_with_kustomize`` checks it against kustomize.)"""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = strategic_merge(base[key], value) if key in base else value
        return out
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(i, dict) and "name" in i for i in [*base, *patch]):
        merged = {i["name"]: i for i in base}
        for item in patch:
            name = item["name"]
            merged[name] = strategic_merge(merged[name], item) if name in merged else item
        return list(merged.values())
    return patch


def replicas_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object of the overlay: deploy/k8s's objects, the overlay's own, and
    its patches applied."""
    kustomization = load_yaml(K8S_REPLICAS / "kustomization.yaml")[0]
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in kustomization["resources"]:
        path = (K8S_REPLICAS / entry).resolve()
        if path == K8S.resolve():
            objects.update({key: obj for key, obj in k8s_objects().items() if key[0] != "Secret"})
            continue
        for obj in load_yaml(path):
            key = (obj["kind"], obj["metadata"]["name"])
            assert key not in objects, f"{key} defined twice"
            objects[key] = obj
    for patch in kustomization["patches"]:
        for obj in load_yaml(K8S_REPLICAS / patch["path"]):
            key = (obj["kind"], obj["metadata"]["name"])
            assert key in objects, f"the patch {patch['path']} targets no object: {key}"
            objects[key] = strategic_merge(objects[key], obj)
    return objects


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return bool(selector["matchLabels"]) and selector["matchLabels"].items() <= labels.items()


def pod_labels(objects: dict[tuple[str, str], dict[str, Any]], kind: str, name: str) -> Any:
    return objects[(kind, name)]["spec"]["template"]["metadata"]["labels"]


def etcd_args(container: dict[str, Any]) -> dict[str, str]:
    (binary, *flags) = container["command"]
    assert binary == "etcd" and "args" not in container
    return dict(f.removeprefix("--").split("=", 1) for f in flags)


def test_the_replicas_overlay_lists_its_files_and_builds_on_deploy_k8s() -> None:
    kustomization = load_yaml(K8S_REPLICAS / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == load_yaml(K8S / "kustomization.yaml")[0]["namespace"]
    assert "../k8s" in kustomization["resources"]
    listed = {K8S_REPLICAS / e for e in kustomization["resources"][1:]}
    listed |= {K8S_REPLICAS / p["path"] for p in kustomization["patches"]}
    assert listed == set(K8S_REPLICAS.glob("*.yaml")) - {K8S_REPLICAS / "kustomization.yaml"}
    objects = replicas_objects()
    assert set(objects) == {key for key in k8s_objects() if key[0] != "Secret"} | {
        ("Service", "etcd"),
        ("StatefulSet", "etcd"),
        ("PodDisruptionBudget", "connector-bridge"),
        ("PodDisruptionBudget", "etcd"),
        ("NetworkPolicy", "connector-bridge-to-etcd"),
        ("NetworkPolicy", "etcd"),
    }
    for (kind, _), obj in objects.items():
        expected = {"StatefulSet": "apps/v1", "Deployment": "apps/v1",
                    "PodDisruptionBudget": "policy/v1",
                    "NetworkPolicy": "networking.k8s.io/v1"}.get(kind, "v1")  # fmt: skip
        assert obj["apiVersion"] == expected, kind


def test_etcd_is_a_statefulset_of_three_behind_a_headless_service() -> None:
    objects = replicas_objects()
    sts = objects[("StatefulSet", "etcd")]
    spec = sts["spec"]
    labels = pod_labels(objects, "StatefulSet", "etcd")
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"  # a member is ready only in a quorum
    assert selects(spec["selector"], labels) and labels == ETCD_LABELS
    service = objects[("Service", spec["serviceName"])]["spec"]
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True
    assert selects({"matchLabels": service["selector"]}, labels)
    (container,) = spec["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"client": 2379, "peer": 2380}
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["ports"]} == {
        ("client", 2379, "client"), ("peer", 2380, "peer")
    }  # fmt: skip
    # Every member's name, peer and client URL is its stable DNS name under the Service.
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    args = etcd_args(container)
    svc = spec["serviceName"]
    assert args["name"] == "$(POD_NAME)"
    assert args["advertise-client-urls"] == f"http://$(POD_NAME).{svc}:{ports['client']}"
    assert args["initial-advertise-peer-urls"] == f"http://$(POD_NAME).{svc}:{ports['peer']}"
    assert args["listen-client-urls"] == f"http://0.0.0.0:{ports['client']}"
    assert args["listen-peer-urls"] == f"http://0.0.0.0:{ports['peer']}"
    members = [f"{sts['metadata']['name']}-{i}" for i in range(spec["replicas"])]
    assert args["initial-cluster"].split(",") == [
        f"{m}=http://{m}.{svc}:{ports['peer']}" for m in members
    ]
    assert args["initial-cluster-state"] == "new"
    (claim,) = spec["volumeClaimTemplates"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]
    assert args["data-dir"].startswith(mount["mountPath"] + "/")
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "client"}
    assert "httpGet" not in container["livenessProbe"]  # a lost quorum restarts nobody


def test_etcd_pods_meet_the_restricted_pod_security_standard_of_the_namespace() -> None:
    pod = replicas_objects()[("StatefulSet", "etcd")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    c = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and c["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["allowPrivilegeEscalation"] is False and c["readOnlyRootFilesystem"] is True
    assert c["capabilities"]["drop"] == ["ALL"] and "add" not in c["capabilities"]
    for ctx in (pod["securityContext"], c):
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    assert not any(k in pod for k in ("hostNetwork", "hostPID", "hostIPC", "volumes"))


def test_three_bridges_join_the_etcd_members_each_named_after_its_pod() -> None:
    objects = replicas_objects()
    spec = objects[("Deployment", "connector-bridge")]["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}  # fmt: skip
    (container,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    sts = objects[("StatefulSet", "etcd")]
    (etcd,) = sts["spec"]["template"]["spec"]["containers"]
    advertised = etcd_args(etcd)["advertise-client-urls"]
    expected = [
        advertised.replace("$(POD_NAME)", f"{sts['metadata']['name']}-{i}")
        for i in range(sts["spec"]["replicas"])
    ]
    assert env["BRIDGE_CLUSTER_ETCD"]["value"].split(",") == expected
    assert env["BRIDGE_CLUSTER_MEMBER"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # The downward API is the only value from elsewhere: secrets stay files.
    assert [n for n, e in env.items() if "valueFrom" in e] == ["BRIDGE_CLUSTER_MEMBER"]
    assert SECRET_SETTINGS.isdisjoint(env)
    # Everything of the single bridge stays (probes, mounts, security, the base's env).
    base = bridge_container()
    for key in ("image", "args", "ports", "volumeMounts", "securityContext", "readinessProbe",
                "livenessProbe", "startupProbe", "envFrom"):  # fmt: skip
        assert container[key] == base[key], key
    assert {e["name"] for e in base["env"]} <= set(env)
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert selects(term["podAffinityTerm"]["labelSelector"], spec["template"]["metadata"]["labels"])


def test_the_replicas_settings_are_valid_settings_of_the_bridge(tmp_path: Path) -> None:
    """The ConfigMap's settings with the overlay's (the pod name as the member name) pass
    the bridge's own settings loader; so does the webhook example with the fixed secret
    a group needs, and without it the loader refuses, as the comment says."""
    objects = replicas_objects()
    config = dict(objects[("ConfigMap", "connector-bridge")]["data"])
    (container,) = objects[("Deployment", "connector-bridge")]["spec"]["template"]["spec"][
        "containers"
    ]
    values = {**config, **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
    values["BRIDGE_CLUSTER_MEMBER"] = SAMPLE_POD
    as_valid_settings(values, tmp_path)
    settings = load_settings(None, env_file=None, overrides={
        "connector_url": config["BRIDGE_CONNECTOR_URL"], "connector_token": "t",
        "cluster_etcd": values["BRIDGE_CLUSTER_ETCD"], "cluster_member": SAMPLE_POD,
        "cluster_ttl": values["BRIDGE_CLUSTER_TTL"]})  # fmt: skip
    assert settings.cluster_member == SAMPLE_POD
    assert settings.cluster_etcd is not None and len(settings.cluster_etcd.split(",")) == 3
    _, *examples = setting_blocks(K8S / "configmap.yaml")
    webhook = next(b for b in examples if "BRIDGE_CALLBACK_URL" in b)
    with pytest.raises(AssertionError, match="BRIDGE_CALLBACK_SECRET"):
        as_valid_settings({**values, **webhook}, tmp_path)
    commented = re.search(
        r"#\s*- name: (BRIDGE_CALLBACK_SECRET_FILE)\n\s*#\s*value: (\S+)",
        (K8S_REPLICAS / "deployment-patch.yaml").read_text(),
    )
    assert commented, "the patch shows the webhook secret a group needs"
    as_valid_settings({**values, **webhook, commented[1]: commented[2]}, tmp_path)


def test_disruption_budgets_keep_two_bridges_and_the_etcd_quorum() -> None:
    objects = replicas_objects()
    for name, workload in (("connector-bridge", "Deployment"), ("etcd", "StatefulSet")):
        pdb = objects[("PodDisruptionBudget", name)]["spec"]
        replicas = objects[(workload, name)]["spec"]["replicas"]
        assert selects(pdb["selector"], pod_labels(objects, workload, name)), name
        kept = replicas - pdb["maxUnavailable"]
        assert kept >= 2 and kept > replicas // 2, name  # serving; etcd: a quorum


def test_network_policies_let_the_bridge_reach_etcd_and_the_members_each_other() -> None:
    objects = replicas_objects()
    bridge = pod_labels(objects, "Deployment", "connector-bridge")
    etcd = pod_labels(objects, "StatefulSet", "etcd")
    (container,) = objects[("StatefulSet", "etcd")]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    policies = [o["spec"] for (kind, _), o in objects.items() if kind == "NetworkPolicy"]

    def allowed(direction: str, source: dict[str, str], peer: dict[str, str], port: int) -> bool:
        """Some policy selecting ``source`` lets it talk to ``peer`` on ``port``."""
        for p in policies:
            if not selects(p["podSelector"], source):
                continue
            for rule in p.get(direction, ()):
                peers = rule.get("to" if direction == "egress" else "from")
                if peers is not None and not any(
                    selects(x["podSelector"], peer) for x in peers if "podSelector" in x
                ):
                    continue
                if any(r["port"] == port for r in rule["ports"]):
                    return True
        return False

    # The base's policy and Service do not take the etcd pods for bridges.
    base_policy = objects[("NetworkPolicy", "connector-bridge")]["spec"]
    base_service = objects[("Service", "connector-bridge")]["spec"]
    assert not selects(base_policy["podSelector"], etcd)
    assert not selects({"matchLabels": base_service["selector"]}, etcd)
    assert allowed("egress", bridge, etcd, ports["client"])
    assert allowed("ingress", etcd, bridge, ports["client"])
    assert allowed("egress", etcd, etcd, ports["peer"]) and allowed(
        "ingress", etcd, etcd, ports["peer"]
    )
    assert not allowed("ingress", etcd, bridge, ports["peer"])  # the bridge is no peer
    assert allowed("egress", etcd, {}, 53)  # DNS: the members find each other by name
    for p in policies:
        if selects(p["podSelector"], etcd):
            assert set(p["policyTypes"]) == {"Ingress", "Egress"}


def test_the_overlay_builds_with_kustomize_to_the_objects_checked_here() -> None:
    """With kubectl here (its built-in kustomize; no cluster needed): the real build has
    the objects the checks above read, the patch applied as they assume."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlay was checked without kustomize")
    done = subprocess.run([kubectl, "kustomize", str(K8S_REPLICAS)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    built = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(done.stdout) if o}
    objects = replicas_objects()

    def by_name(value: Any) -> Any:
        """Lists of named maps in name order (kustomize puts patched entries first)."""
        if isinstance(value, dict):
            return {k: by_name(v) for k, v in value.items()}
        if isinstance(value, list):
            items = [by_name(v) for v in value]
            if all(isinstance(i, dict) and "name" in i for i in items):
                return sorted(items, key=lambda i: i["name"])
            return items
        return value

    assert set(built) == set(objects)
    for key, obj in built.items():
        assert obj["metadata"].get("namespace", "connector-bridge") == "connector-bridge", key
        mine = objects[key]
        assert by_name({k: v for k, v in obj.items() if k != "metadata"}) == by_name(
            {k: v for k, v in mine.items() if k != "metadata"}
        ), key
        assert obj["metadata"].get("labels") == mine["metadata"].get("labels"), key
