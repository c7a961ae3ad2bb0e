"""Home Assistant discovery configs, checked field by field against the documentation.

The tables below encode what the Home Assistant documentation allows, page by page, so a
config the bridge publishes is rejected here for the same reasons Home Assistant would
reject or misread it. They were written from:

- MQTT integration, discovery: https://www.home-assistant.io/integrations/mqtt/
  (topic format and its character class, the payload, `origin`, the device registry
  keys, availability lists and modes, "unknown configuration keys are allowed but
  ignored", birth message `online` on `homeassistant/status`);
- https://www.home-assistant.io/integrations/sensor.mqtt/,
  .../binary_sensor.mqtt/, .../switch.mqtt/, .../light.mqtt/ (default schema),
  .../number.mqtt/, .../button.mqtt/: the configuration variables of each platform;
- sensor device classes with their units, and state classes:
  https://developers.home-assistant.io/docs/core/entity/sensor/ (the table "Available
  device classes"), with Home Assistant Core's `DEVICE_CLASS_STATE_CLASSES`
  (homeassistant/components/sensor/const.py) for which state classes each allows;
- binary sensor device classes: https://www.home-assistant.io/integrations/binary_sensor/;
  switch: https://www.home-assistant.io/integrations/switch/; button:
  https://www.home-assistant.io/integrations/button/ (device classes), entity
  categories: https://developers.home-assistant.io/docs/core/entity/ ;
- `default_entity_id` replacing the deprecated `object_id` (Home Assistant 2025.10,
  home-assistant/core#151775): entity ids are `<domain>.<slug>`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.events import Resource
from bridge.downstream.topics import Topics, encode_resources, unescape_level
from bridge.extensions.homeassistant.discovery import (
    AVAILABILITY_TEMPLATE,
    BOOLEAN_TEMPLATE,
    DiscoverySettings,
    EndpointView,
    bridge_discovery_messages,
    bridge_node_id,
    bridge_removal_messages,
    discovery_messages,
    encode_config,
    endpoint_from_resources_document,
    endpoint_view,
    ha_status_topic,
    id_token,
    is_ha_online,
    node_id,
    path_token,
    removal_messages,
    slug,
    unique_id,
)
from tests.support.mqtt_user import MqttUser

pytestmark = pytest.mark.both_dialects

# ----------------------------------------------------------------- the documented rules

# Discovery topic: <discovery_prefix>/<component>/[<node_id>/]<object_id>/config, where
# node_id and object_id "must only consist of characters from the character class
# [a-zA-Z0-9_-]" (integrations/mqtt, "Discovery topic").
ID_CLASS = re.compile(r"^[a-zA-Z0-9_-]+$")


def words(text: str) -> set[str]:
    return set(text.split())


# Options every MQTT entity platform takes (integrations/mqtt and each platform page;
# `object_id` is the deprecated spelling of `default_entity_id`: older releases read it,
# releases from 2026.4 ignore it as an unknown key).
COMMON_KEYS = words("""
    availability availability_mode availability_template availability_topic
    default_entity_id device enabled_by_default encoding entity_category entity_picture
    icon json_attributes_template json_attributes_topic name object_id origin
    payload_available payload_not_available qos unique_id
""")

# Platform options (each platform's "Configuration Variables"), and the required ones.
PLATFORM_KEYS: dict[str, set[str]] = {
    # integrations/sensor.mqtt
    "sensor": words("""
        device_class expire_after force_update last_reset_value_template options
        state_class state_topic suggested_display_precision unit_of_measurement
        value_template
    """),
    # integrations/binary_sensor.mqtt
    "binary_sensor": words("""
        device_class expire_after force_update off_delay payload_off payload_on
        state_topic value_template
    """),
    # integrations/switch.mqtt
    "switch": words("""
        command_template command_topic device_class optimistic payload_off payload_on
        retain state_off state_on state_topic value_template
    """),
    # integrations/light.mqtt, default (basic) schema; colour options left out on purpose
    "light": words("""
        brightness_command_template brightness_command_topic brightness_scale
        brightness_state_topic brightness_value_template command_topic on_command_type
        optimistic payload_off payload_on retain schema state_topic state_value_template
    """),
    # integrations/number.mqtt
    "number": words("""
        command_template command_topic device_class max min mode optimistic payload_reset
        retain state_topic step unit_of_measurement value_template
    """),
    # integrations/button.mqtt
    "button": words("command_template command_topic device_class payload_press retain"),
}
REQUIRED_KEYS: dict[str, set[str]] = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "switch": {"command_topic"},
    "light": {"command_topic"},
    "number": {"command_topic"},
    "button": {"command_topic"},
}
PUBLISH_TOPIC_KEYS = {"command_topic", "brightness_command_topic"}
SUBSCRIBE_TOPIC_KEYS = {"state_topic", "brightness_state_topic", "availability_topic"}
TEMPLATE_KEYS = {"value_template", "state_value_template", "brightness_value_template"}

# integrations/mqtt: "Supported abbreviations for device registry configuration".
DEVICE_KEYS = words("""
    configuration_url connections hw_version identifiers manufacturer model model_id name
    serial_number suggested_area sw_version via_device
""")
# integrations/mqtt: origin info, `name` required.
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
# integrations/mqtt: "Using Availability topics": list items and modes.
AVAILABILITY_ITEM_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}
AVAILABILITY_MODES = {"all", "any", "latest"}
# developers docs, core/entity: entity_category
ENTITY_CATEGORIES = {"config", "diagnostic"}

# developers docs, core/entity/sensor, "Available device classes" (the classes the
# bridge can produce, with every unit the table lists for them).
SENSOR_DEVICE_CLASS_UNITS: dict[str, set[str]] = {
    "temperature": words("°C °F K"),
    "humidity": words("%"),
    "illuminance": words("lx"),
    "atmospheric_pressure": words("cbar bar hPa mmHg inHg inH₂O kPa mbar Pa psi"),
    "pressure": words("cbar bar hPa mmHg inHg kPa mbar Pa psi mPa"),
    "voltage": words("V mV µV kV MV"),
    "current": words("A mA"),
    "power": words("mW W kW MW GW TW"),
    "energy": words("J kJ MJ GJ mWh Wh kWh MWh GWh TWh cal kcal Mcal Gcal"),
}
# Home Assistant Core sensor/const.py DEVICE_CLASS_STATE_CLASSES (same classes).
SENSOR_DEVICE_CLASS_STATE_CLASSES: dict[str, set[str]] = {
    **{cls: {"measurement"} for cls in SENSOR_DEVICE_CLASS_UNITS},
    "energy": {"total", "total_increasing"},
}
SENSOR_STATE_CLASSES = words("measurement measurement_angle total total_increasing")
# integrations/binary_sensor, "Device class".
BINARY_SENSOR_DEVICE_CLASSES = words("""
    battery battery_charging carbon_monoxide cold connectivity door garage_door gas heat
    light lock moisture motion moving occupancy opening plug power presence problem
    running safety smoke sound tamper update vibration window
""")
SWITCH_DEVICE_CLASSES = {"outlet", "switch"}  # integrations/switch
BUTTON_DEVICE_CLASSES = {"identify", "restart", "update"}  # integrations/button
LIGHT_ON_COMMAND_TYPES = {"first", "last", "brightness"}  # integrations/light.mqtt
NUMBER_MODES = {"auto", "box", "slider"}  # integrations/number.mqtt
# Entity ids (core helpers/config_validation valid_entity_id): domain.object, lower-case
# a-z0-9 and single underscores, not starting or ending with one.
ENTITY_ID = re.compile(r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$")


def valid_subscribe_topic(topic: Any) -> bool:
    return isinstance(topic, str) and 0 < len(topic.encode()) <= 65535 and "\0" not in topic


def valid_publish_topic(topic: Any) -> bool:
    return valid_subscribe_topic(topic) and "+" not in topic and "#" not in topic


def check_config(topic: str, config: dict[str, Any], discovery_prefix: str = "homeassistant"):
    """Assert that one discovery message follows every documented rule above."""
    levels = topic.split("/")
    assert levels[0] == discovery_prefix and levels[-1] == "config", topic
    assert len(levels) == 5, f"expected <prefix>/<component>/<node_id>/<object_id>/config: {topic}"
    component, node, obj = levels[1], levels[2], levels[3]
    assert component in PLATFORM_KEYS, component
    assert ID_CLASS.match(node) and ID_CLASS.match(obj), topic

    allowed = COMMON_KEYS | PLATFORM_KEYS[component]
    unknown = set(config) - allowed
    assert not unknown, f"{topic}: keys not in the {component} docs: {sorted(unknown)}"
    missing = REQUIRED_KEYS[component] - set(config)
    assert not missing, f"{topic}: required keys missing: {sorted(missing)}"

    for key in PUBLISH_TOPIC_KEYS & set(config):
        assert valid_publish_topic(config[key]), (topic, key, config[key])
    for key in SUBSCRIBE_TOPIC_KEYS & set(config):
        assert valid_subscribe_topic(config[key]), (topic, key, config[key])
    for key in TEMPLATE_KEYS & set(config):
        assert isinstance(config[key], str) and "{{" in config[key]

    assert isinstance(config["unique_id"], str) and config["unique_id"]
    assert isinstance(config["name"], str) and config["name"]
    assert ENTITY_ID.match(config["default_entity_id"]), config["default_entity_id"]
    assert config["default_entity_id"].split(".")[0] == component
    assert config["object_id"] == config["default_entity_id"].split(".", 1)[1]
    if "entity_category" in config:
        assert config["entity_category"] in ENTITY_CATEGORIES
    if "enabled_by_default" in config:
        assert isinstance(config["enabled_by_default"], bool)

    device = config["device"]
    assert set(device) <= DEVICE_KEYS, sorted(set(device) - DEVICE_KEYS)
    assert device.get("identifiers") or device.get("connections"), "device needs an identifier"
    assert all(isinstance(i, str) and i for i in device["identifiers"])
    assert all(isinstance(v, str) for k, v in device.items() if k != "identifiers")

    origin = config["origin"]
    assert set(origin) <= ORIGIN_KEYS and isinstance(origin.get("name"), str)

    if "availability" in config:
        assert "availability_topic" not in config, "availability and availability_topic exclude"
        assert config.get("availability_mode", "latest") in AVAILABILITY_MODES
        for item in config["availability"]:
            assert set(item) <= AVAILABILITY_ITEM_KEYS and "topic" in item
            assert valid_subscribe_topic(item["topic"])
            assert all(isinstance(v, str) for v in item.values())

    if component == "sensor":
        state_class = config.get("state_class")
        assert state_class is None or state_class in SENSOR_STATE_CLASSES
        device_class = config.get("device_class")
        if device_class is not None:
            assert device_class in SENSOR_DEVICE_CLASS_UNITS, device_class
            assert config.get("unit_of_measurement") in SENSOR_DEVICE_CLASS_UNITS[device_class]
            assert state_class in SENSOR_DEVICE_CLASS_STATE_CLASSES[device_class]
        assert "options" not in config  # only for enum sensors
    if component == "binary_sensor" and "device_class" in config:
        assert config["device_class"] in BINARY_SENSOR_DEVICE_CLASSES
    if component == "switch" and "device_class" in config:
        assert config["device_class"] in SWITCH_DEVICE_CLASSES
    if component == "button" and "device_class" in config:
        assert config["device_class"] in BUTTON_DEVICE_CLASSES
    if component == "light":
        assert config.get("on_command_type", "last") in LIGHT_ON_COMMAND_TYPES
        scale = config.get("brightness_scale", 255)
        assert isinstance(scale, int) and scale >= 1
        if "brightness_state_topic" in config or "brightness_scale" in config:
            assert "brightness_command_topic" in config
    if component == "number":
        assert config.get("mode", "auto") in NUMBER_MODES
        assert config.get("min", 1) < config.get("max", 100)
        assert config.get("step", 1) > 0
    json.loads(encode_config(config))  # serialisable as JSON


# ----------------------------------------------------------------------- test data


def _device_object(model: str) -> list[Resource]:
    return [
        Resource("/3/0/0", "Manufacturer"),
        Resource("/3/0/1", "Model Number"),
        Resource("/3/0/3", "Firmware Version"),
        Resource("/3/0/4", "Reboot", executable=True),
    ]


DEVICE_VALUES = {"/3/0/0": "ACME", "/3/0/1": "TH-1", "/3/0/3": "2.4.1"}

# Every IPSO object the issue names, with its value resource, in one endpoint.
KITCHEN_SINK = endpoint_view(
    name="sink-001",
    ept="Everything",
    resources=(
        *_device_object("Everything"),
        Resource("/3/0/5", "Factory Reset"),
        Resource("/3301/0/5700", "Illuminance", obs=True),
        Resource("/3303/0/5700", "Temperature", obs=True),
        Resource("/3303/0/5701", "Units"),
        Resource("/3304/0/5700", "Humidity", obs=True),
        Resource("/3315/0/5700", "Barometer", obs=True),
        Resource("/3316/0/5700", "Voltage", obs=True),
        Resource("/3317/0/5700", "Current", obs=True),
        Resource("/3320/0/5700", "Percentage", obs=True),
        Resource("/3323/0/5700", "Pressure", obs=True),
        Resource("/3328/0/5700", "Power", obs=True),
        Resource("/3331/0/5805", "Cumulative active power", obs=True),
        Resource("/3331/0/5822", "Reset Cumulative energy"),
        Resource("/3200/0/5500", "Digital Input State", obs=True),
        Resource("/3302/0/5500", "Presence", obs=True),
        Resource("/3342/0/5500", "On/Off switch", obs=True),
        Resource("/3201/0/5550", "Digital Output State", obs=True),
        Resource("/3306/0/5850", "On/Off", obs=True),
        Resource("/3312/0/5850", "On/Off", obs=True),
        Resource("/3311/0/5850", "On/Off", obs=True),
        Resource("/3311/0/5851", "Dimmer", obs=True),
        Resource("/3343/0/5548", "Level", obs=True),
        Resource("/9999/0/1", "Something unknown"),
    ),
    values={**DEVICE_VALUES, "/3303/0/5701": "Cel"},
)

# path -> (component, device_class or None, unit or None)
KITCHEN_SINK_EXPECTED: dict[str, tuple[str, str | None, str | None]] = {
    "/3/0/4": ("button", "restart", None),
    "/3/0/5": ("button", None, None),
    "/3301/0/5700": ("sensor", "illuminance", "lx"),
    "/3303/0/5700": ("sensor", "temperature", "°C"),
    "/3304/0/5700": ("sensor", "humidity", "%"),
    "/3315/0/5700": ("sensor", "atmospheric_pressure", "hPa"),
    "/3316/0/5700": ("sensor", "voltage", "V"),
    "/3317/0/5700": ("sensor", "current", "A"),
    "/3320/0/5700": ("sensor", None, "%"),
    "/3323/0/5700": ("sensor", "pressure", "Pa"),
    "/3328/0/5700": ("sensor", "power", "W"),
    "/3331/0/5805": ("sensor", "energy", "Wh"),
    "/3331/0/5822": ("button", None, None),
    "/3200/0/5500": ("binary_sensor", None, None),
    "/3302/0/5500": ("binary_sensor", "occupancy", None),
    "/3342/0/5500": ("binary_sensor", None, None),
    "/3201/0/5550": ("switch", "switch", None),
    "/3306/0/5850": ("switch", "switch", None),
    "/3312/0/5850": ("switch", "outlet", None),
    "/3311/0": ("light", None, None),
    "/3343/0/5548": ("number", None, "%"),
}


def default_scenario_endpoints() -> list[EndpointView]:
    """The emulator's default scenario as the bridge would describe it."""
    from bridge.simulator import default_scenario

    endpoints = []
    for name, template in default_scenario().endpoints():
        resources = tuple(
            Resource(r.path, r.rt, r.ct, r.obs, writable=r.writable, executable=r.executable)
            for r in template.resources
        )
        values = {r.path: r.value for r in template.resources if r.value}
        endpoints.append(endpoint_view(name, template.ept, resources, values))
    return endpoints


def by_path(messages: list[tuple[str, dict[str, Any]]]) -> dict[str, tuple[str, dict]]:
    """Messages keyed by the resource path their unique_id ends in."""
    out = {}
    for topic, config in messages:
        token = config["unique_id"].split("__", 2)[2]
        path = "/" + token.replace("_", "/")
        out[path] = (topic.split("/")[1], config)
    return out


# -------------------------------------------------------------- field-by-field checks


def test_every_kind_of_the_issue_maps_to_the_documented_platform_and_class():
    messages = discovery_messages(KITCHEN_SINK)
    for topic, config in messages:
        check_config(topic, config)
    got = by_path(messages)
    assert set(got) == set(KITCHEN_SINK_EXPECTED), sorted(set(got) ^ set(KITCHEN_SINK_EXPECTED))
    for path, (component, device_class, unit) in KITCHEN_SINK_EXPECTED.items():
        got_component, config = got[path]
        assert got_component == component, path
        assert config.get("device_class") == device_class, path
        assert config.get("unit_of_measurement") == unit, path
    assert got["/3331/0/5805"][1]["state_class"] == "total_increasing"
    assert got["/3303/0/5700"][1]["state_class"] == "measurement"
    assert "/9999/0/1" not in got and "/3303/0/5701" not in got


def test_default_scenario_of_the_emulator_gives_valid_configs_for_every_resource_kind():
    endpoints = default_scenario_endpoints()
    assert {e.name for e in endpoints} >= {"node-001", "light-001"}
    components: set[str] = set()
    unique_ids: list[str] = []
    for endpoint in endpoints:
        messages = discovery_messages(endpoint)
        assert messages, endpoint.name
        for topic, config in messages:
            check_config(topic, config)
            components.add(topic.split("/")[1])
            unique_ids.append(config["unique_id"])
    # the default scenario has sensors, a digital input, a switch, a light and reboots
    assert components >= {"sensor", "binary_sensor", "switch", "light", "button"}
    assert len(unique_ids) == len(set(unique_ids))
    node = {e.name: e for e in endpoints}["node-001"]
    temperature = by_path(discovery_messages(node))["/3303/0/5700"][1]
    assert temperature["unit_of_measurement"] == "°C"  # the emulator's 5701 says "Cel"
    humidity = by_path(discovery_messages(node))["/3304/0/5700"][1]
    assert humidity["unit_of_measurement"] == "%"  # "%RH" from the device


def test_bridge_device_config_follows_the_docs_and_is_every_via_device():
    [(topic, config)] = bridge_discovery_messages()
    check_config(topic, config)
    assert config["device_class"] == "connectivity"
    assert config["state_topic"] == "connector/$bridge/state"
    assert (config["payload_on"], config["payload_off"]) == ("online", "offline")
    bridge_id = config["device"]["identifiers"][0]
    for _, endpoint_config in discovery_messages(KITCHEN_SINK):
        assert endpoint_config["device"]["via_device"] == bridge_id
    assert bridge_removal_messages() == [(topic, b"")]


# ------------------------------------------------------------------ what each field says


def test_one_device_per_endpoint_with_registry_info_from_the_device_object():
    messages = discovery_messages(KITCHEN_SINK)
    devices = {json.dumps(c["device"], sort_keys=True) for _, c in messages}
    assert len(devices) == 1
    device = messages[0][1]["device"]
    assert device == {
        "identifiers": [node_id("sink-001")],
        "name": "sink-001",
        "manufacturer": "ACME",
        "model": "TH-1",
        "sw_version": "2.4.1",
        "via_device": bridge_node_id(),
    }
    bare = endpoint_view("bare", "Kind", (Resource("/3303/0/5700"),))
    assert discovery_messages(bare)[0][1]["device"]["model"] == "Kind"  # the type, lacking 3/0/1


def test_availability_needs_both_the_bridge_and_the_endpoint_online():
    odd = endpoint_view("hall/way #1", resources=(Resource("/3303/0/5700"),))
    [(_, config)] = discovery_messages(odd, DiscoverySettings(topic_prefix="home/lwm2m"))
    topics = Topics("home/lwm2m")
    assert config["availability_mode"] == "all"
    assert [a["topic"] for a in config["availability"]] == [
        topics.bridge_state,
        topics.state("hall/way #1"),
    ]
    assert topics.state("hall/way #1") == "home/lwm2m/hall%2Fway %231/$state"
    for item in config["availability"]:
        assert item["payload_available"] == "online"
        assert item["payload_not_available"] == "offline"
        assert item["value_template"] == AVAILABILITY_TEMPLATE
    assert config["state_topic"] == topics.value("hall/way #1", "/3303/0/5700")


def test_commands_go_to_the_bridge_command_topics_and_parse_back():
    topics = Topics("connector")
    got = by_path(discovery_messages(KITCHEN_SINK))
    expected_verbs = {
        "switch": ("command_topic", "set"),
        "number": ("command_topic", "set"),
        "button": ("command_topic", "post"),
        "light": ("command_topic", "set"),
    }
    seen = set()
    for path, (component, config) in got.items():
        if component not in expected_verbs:
            assert "command_topic" not in config
            continue
        key, verb = expected_verbs[component]
        command = topics.parse_command(config[key])
        resource = path + "/5850" if component == "light" else path
        assert (command.endpoint, command.path, command.verb) == ("sink-001", resource, verb)
        if "state_topic" in config:
            assert config["state_topic"] == topics.value("sink-001", resource)
        seen.add(component)
    assert seen == set(expected_verbs)
    light = got["/3311/0"][1]
    brightness = topics.parse_command(light["brightness_command_topic"])
    assert (brightness.path, brightness.verb) == ("/3311/0/5851", "set")
    assert light["brightness_state_topic"] == topics.value("sink-001", "/3311/0/5851")
    assert light["brightness_scale"] == 100
    assert (light["payload_on"], light["payload_off"]) == ("1", "0")
    assert got["/3/0/4"][1]["payload_press"] == ""
    assert got["/3/0/5"][1]["enabled_by_default"] is False  # factory reset: opt in
    number = got["/3343/0/5548"][1]
    assert (number["min"], number["max"]) == (0, 100)


def test_light_brightness_comes_from_the_dimmer_only_when_there_is_one():
    plain = endpoint_view("lamp", resources=(Resource("/3311/0/5850"),))
    [(topic, config)] = discovery_messages(plain)
    check_config(topic, config)
    assert "brightness_command_topic" not in config and "brightness_scale" not in config


@pytest.mark.parametrize(
    ("device_unit", "device_class", "unit"),
    [
        (None, "temperature", "°C"),  # IPSO default
        ("Cel", "temperature", "°C"),
        ("Far", "temperature", "°F"),
        ("[degF]", "temperature", "°F"),
        ("K", "temperature", "K"),
        (" Cel ", "temperature", "°C"),
        ("furlongs", None, "furlongs"),  # unknown: shown as given, without a class
    ],
)
def test_temperature_units_from_the_device(device_unit, device_class, unit):
    values = {} if device_unit is None else {"/3303/0/5701": device_unit}
    endpoint = endpoint_view("t", resources=(Resource("/3303/0/5700"),), values=values)
    [(topic, config)] = discovery_messages(endpoint)
    check_config(topic, config)
    assert config.get("device_class") == device_class
    assert config["unit_of_measurement"] == unit
    assert config["state_class"] == "measurement"


@pytest.mark.parametrize(
    ("obj", "res", "device_unit", "device_class", "unit"),
    [
        (3331, 5805, "kWh", "energy", "kWh"),
        (3331, 5805, "kW.h", "energy", "kWh"),
        (3331, 5700, "Wh", "energy", "Wh"),
        (3328, 5700, "kW", "power", "kW"),
        (3315, 5700, "kPa", "atmospheric_pressure", "kPa"),
        (3323, 5700, "bar", "pressure", "bar"),
        (3316, 5700, "mV", "voltage", "mV"),
        (3317, 5700, "mA", "current", "mA"),
        (3304, 5700, "%RH", "humidity", "%"),
        (3301, 5700, "lx", "illuminance", "lx"),
        (3320, 5700, "%", None, "%"),
        (3328, 5700, "Wh", None, "Wh"),  # an energy unit on a power object: no class
    ],
)
def test_units_map_to_what_home_assistant_accepts(obj, res, device_unit, device_class, unit):
    endpoint = endpoint_view(
        "u", resources=(Resource(f"/{obj}/0/{res}"),), values={f"/{obj}/0/5701": device_unit}
    )
    [(topic, config)] = discovery_messages(endpoint)
    check_config(topic, config)
    assert config.get("device_class") == device_class
    assert config["unit_of_measurement"] == unit
    if obj == 3331:
        assert config["state_class"] == "total_increasing"


def test_writability_and_executability_when_the_device_says_so():
    endpoint = endpoint_view(
        "flags",
        resources=(
            Resource("/3201/0/5550", writable=False),  # read-only output: a binary sensor
            Resource("/3343/0/5548", writable=False),  # read-only level: a sensor in %
            Resource("/3/0/4", executable=False),  # not executable after all: no button
            Resource("/3/0/99", "Blink", executable=True),  # unknown executable: a button
            Resource("/3303/0/5700", "Odd", executable=True),  # executable: button only
        ),
    )
    messages = discovery_messages(endpoint)
    for topic, config in messages:
        check_config(topic, config)
    got = {path: component for path, (component, _) in by_path(messages).items()}
    assert got == {
        "/3201/0/5550": "binary_sensor",
        "/3343/0/5548": "sensor",
        "/3/0/99": "button",
        "/3303/0/5700": "button",
    }
    names = {config["name"] for _, config in messages}
    assert "Blink" in names


def test_several_instances_are_numbered_in_names_not_in_ids():
    endpoint = endpoint_view(
        "multi", resources=(Resource("/3303/0/5700"), Resource("/3303/1/5700"))
    )
    messages = discovery_messages(endpoint)
    assert sorted(c["name"] for _, c in messages) == ["Temperature 0", "Temperature 1"]
    assert len({c["unique_id"] for _, c in messages}) == 2
    assert len({c["default_entity_id"] for _, c in messages}) == 2


# ------------------------------------------------------- identifiers: stable and unique


def test_unique_id_is_stable_and_readable():
    # Changing this breaks every existing Home Assistant installation's entities.
    assert unique_id("node-001", "/3303/0/5700") == "connector__node-001__3303_0_5700"
    assert node_id("node-001") == "connector__node-001"
    assert bridge_node_id() == "connector--bridge"
    first = discovery_messages(KITCHEN_SINK)
    shuffled = endpoint_view(
        KITCHEN_SINK.name,
        KITCHEN_SINK.ept,
        tuple(reversed(KITCHEN_SINK.resources)),
        dict(reversed(list(KITCHEN_SINK.values.items()))),
    )
    assert discovery_messages(shuffled) == first  # same input, any order: same output
    assert [encode_config(c) for _, c in discovery_messages(KITCHEN_SINK)] == [
        encode_config(c) for _, c in first
    ]


def test_unique_ids_and_topics_differ_between_entities_endpoints_and_bridges():
    seen_ids: set[str] = set()
    seen_topics: set[str] = set()
    for prefix in ("connector", "other/bridge"):
        settings = DiscoverySettings(topic_prefix=prefix)
        for name in ("sink-001", "sink_001", "sink/001", "$sink-001"):
            endpoint = endpoint_view(name, KITCHEN_SINK.ept, KITCHEN_SINK.resources)
            for topic, config in discovery_messages(endpoint, settings):
                assert config["unique_id"] not in seen_ids
                assert topic not in seen_topics
                seen_ids.add(config["unique_id"])
                seen_topics.add(topic)
        for topic, config in bridge_discovery_messages(settings):
            assert config["unique_id"] not in seen_ids and topic not in seen_topics
            seen_ids.add(config["unique_id"])
            seen_topics.add(topic)


def unescape_token(token: str) -> str:
    """Inverse of id_token, written from its documented rule."""
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "_":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out += token[i].encode()
            i += 1
    return out.decode("utf-8", "surrogatepass")


any_text = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF))
names = any_text.filter(bool)
paths = st.lists(any_text, min_size=1, max_size=5).map(lambda segs: "/" + "/".join(segs))
numeric_paths = st.lists(st.integers(0, 65535), min_size=1, max_size=4).map(
    lambda ids: "/" + "/".join(map(str, ids))
)


@given(names)
def test_id_token_is_injective_and_in_the_topic_character_class(name):
    token = id_token(name)
    assert ID_CLASS.match(token)
    assert "__" not in token
    assert unescape_token(token) == name


@given(st.one_of(paths, numeric_paths), st.one_of(paths, numeric_paths))
def test_path_token_is_injective_and_in_the_topic_character_class(a, b):
    norm = lambda p: "/" + p.strip().strip("/")  # noqa: E731  (what the module normalises)
    ta, tb = path_token(a), path_token(b)
    assert ID_CLASS.match(ta) and ID_CLASS.match(tb)
    assert (ta == tb) == (norm(a) == norm(b))


@given(names, names, st.one_of(paths, numeric_paths), st.one_of(paths, numeric_paths))
def test_unique_ids_never_collide(ep_a, ep_b, path_a, path_b):
    same = (ep_a, "/" + path_a.strip().strip("/")) == (ep_b, "/" + path_b.strip().strip("/"))
    assert (unique_id(ep_a, path_a) == unique_id(ep_b, path_b)) == same


@given(names)
def test_any_endpoint_name_gives_valid_discovery_topics_and_entity_ids(name):
    endpoint = endpoint_view(name, resources=(Resource("/3303/0/5700"), Resource("/3/0/4")))
    messages = discovery_messages(endpoint)
    assert len(messages) == 2
    for topic, config in messages:
        check_config(topic, config)
    button = next(c for t, c in messages if t.split("/")[1] == "button")
    assert Topics("connector").parse_command(button["command_topic"]).endpoint == name


@given(any_text)
def test_slug_is_an_entity_id_part_or_empty(text):
    value = slug(text)
    assert value == "" or ENTITY_ID.match(f"sensor.{value}")


# ---------------------------------------------------------------------- removal


def test_removal_empties_exactly_the_published_topics():
    published = discovery_messages(KITCHEN_SINK)
    removal = removal_messages(KITCHEN_SINK)
    assert [t for t, _ in removal] == [t for t, _ in published]
    assert all(payload == b"" for _, payload in removal)
    other = removal_messages(endpoint_view("other", resources=KITCHEN_SINK.resources))
    assert not {t for t, _ in other} & {t for t, _ in published}  # removes only its own


def test_endpoint_from_the_resources_document_the_bridge_publishes():
    document = encode_resources(
        "Light",
        False,
        [
            {"path": "/3311/0/5850", "rt": "On/Off", "ct": "text/plain", "obs": True},
            {"path": "/3/0/4", "rt": "Reboot", "ct": "", "obs": False},
        ],
    )
    endpoint = endpoint_from_resources_document("light-001", document, {"/3/0/1": b"L-2"})
    assert endpoint.ept == "Light"
    assert [r.path for r in endpoint.resources] == ["/3311/0/5850", "/3/0/4"]
    messages = discovery_messages(endpoint)
    assert {t.split("/")[1] for t, _ in messages} == {"light", "button"}
    assert messages[0][1]["device"]["model"] == "L-2"
    with pytest.raises(ValueError):
        endpoint_from_resources_document("x", b"[]")
    with pytest.raises(ValueError):
        Resource.from_dict({"rt": "no path"})
    # The bridge's one resource model: unknown abilities stay out of listings.
    assert Resource("/1/0/1").as_dict() == {"path": "/1/0/1", "rt": None, "ct": None, "obs": False}
    known = Resource("/3/0/4", "Reboot", writable=False, executable=True)
    assert Resource.from_dict(known.as_dict()) == known


# ------------------------------------------------------- Home Assistant's own messages


@pytest.mark.parametrize(
    ("payload", "online"),
    [
        ("online", True),
        (b"online", True),
        (" Online\n", True),
        ("offline", False),
        (b"", False),
        (None, False),
        (b"\xff\xfe", False),
        ("online now", False),
    ],
)
def test_home_assistant_status_online_means_republish(payload, online):
    assert is_ha_online(payload) is online


def test_status_topic_and_settings_validation():
    assert ha_status_topic() == "homeassistant/status"
    assert ha_status_topic("ha") == "ha/status"
    settings = DiscoverySettings(discovery_prefix="ha")
    topic, _ = discovery_messages(KITCHEN_SINK, settings)[0]
    check_config(topic, discovery_messages(KITCHEN_SINK, settings)[0][1], "ha")
    for bad in ({"topic_prefix": "a/+"}, {"discovery_prefix": ""}, {"support_url": "ftp://x"}):
        with pytest.raises(ValueError):
            DiscoverySettings(**bad)
    with_url = DiscoverySettings(support_url="https://example.org/help")
    assert discovery_messages(KITCHEN_SINK, with_url)[0][1]["origin"]["support_url"] == (
        "https://example.org/help"
    )
    with pytest.raises(ValueError):
        discovery_messages(endpoint_view(""))


def test_encoded_payload_is_compact_utf8_json():
    [(_, config)] = discovery_messages(
        endpoint_view("t", resources=(Resource("/3303/0/5700"),), values={"/3303/0/5701": "Cel"})
    )
    payload = encode_config(config)
    assert "°C".encode() in payload and b": " not in payload
    assert json.loads(payload) == config


# ------------------------------------------------- the templates, rendered like HA does


def render(template: str, value: str) -> str:
    # Home Assistant renders MQTT templates (Jinja) with the payload bound to `value`.
    jinja2 = pytest.importorskip("jinja2", reason="jinja2 renders the templates as HA does")
    return str(jinja2.Environment().from_string(template).render(value=value))


@pytest.mark.parametrize(
    ("payload", "state"),
    [
        ("1", "1"),
        ("true", "1"),
        ("True", "1"),
        (" on\n", "1"),
        ("0", "0"),
        ("false", "0"),
        ("OFF", "0"),
        ("", "None"),
        ("2", "None"),
        ("garbage", "None"),
    ],
)
def test_boolean_template_normalises_lwm2m_booleans(payload, state):
    assert render(BOOLEAN_TEMPLATE, payload) == state


@pytest.mark.parametrize(
    ("payload", "available"),
    [
        ("online", "online"),
        ("online\n", "online"),
        ("offline", "offline"),
        ("expired", "offline"),
        ("", "offline"),
        ("ONLINE?", "offline"),
    ],
)
def test_availability_template_makes_anything_but_online_unavailable(payload, available):
    assert render(AVAILABILITY_TEMPLATE, payload) == available


# ------------------------------------------- what the running bridge publishes, as input


def test_configs_from_the_resources_documents_of_the_running_bridge(broker, emulator):
    """The bridge's retained ``$resources`` documents (demo scenario) give valid configs."""
    controller = pytest.importorskip("bridge.service.controller", reason="needs the bridge service")
    from bridge.service.settings import load_settings

    settings = load_settings(
        env_file=None,
        overrides={
            "connector_url": emulator.url,
            "connector_token": emulator.token,
            "mqtt_host": "127.0.0.1",
            "mqtt_port": broker.port,
        },
    )
    expected = set(emulator.endpoints())
    watch = MqttUser(broker.port).subscribe(f"{settings.topic_prefix}/+/$resources")

    def documents() -> dict[str, bytes]:  # the latest document of each endpoint
        return {unescape_level(m.topic.split("/")[1]): m.payload for m in list(watch.messages)}

    bridge = controller.Bridge(settings).start()
    try:
        assert bridge.wait_ready(30), bridge.failure
        watch.wait_nothing_missing(
            lambda: (
                None
                if set(documents()) >= expected
                else f"$resources seen for {sorted(documents())} of {sorted(expected)}"
            ),
            timeout=30,
        )
    finally:
        bridge.stop()
        watch.close()

    components: set[str] = set()
    for name in expected:
        endpoint = endpoint_from_resources_document(name, documents()[name])
        messages = discovery_messages(endpoint)
        assert messages, name
        for topic, config in messages:
            check_config(topic, config)
            components.add(topic.split("/")[1])
    assert components >= {"sensor", "binary_sensor", "switch", "light", "button"}
