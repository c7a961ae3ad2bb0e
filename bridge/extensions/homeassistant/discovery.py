"""Home Assistant MQTT discovery for the bridge's endpoints, as pure functions.

Home Assistant finds MQTT devices by reading retained JSON configs under
``<discovery prefix>/<component>/<node id>/<object id>/config``. This module turns what
the bridge knows about one endpoint (its name, its type, its resources and whatever
values it has seen) into those configs, and into the
empty messages that remove them again. It does no I/O: the bridge's discovery extension
publishes what these functions return, retained, and publishes everything again when
Home Assistant announces itself (:func:`is_ha_online` on :func:`ha_status_topic`).

IPSO objects become entities (see ``SENSORS``, ``BINARY_SENSORS``, ``SWITCHES``,
``NUMBERS``, the light 3311 and executable resources); every other resource is left
out. Each entity

- reads the bridge's value topic ``<prefix>/<ep>/<path without leading />`` (escaped by
  :mod:`bridge.downstream.topics`, like every topic of the contract) and writes
  ``<value topic>/set`` (values) or ``<value topic>/post`` (buttons, executes);
- belongs to one device per endpoint, reached ``via_device`` the bridge's own device;
- is available only while both ``<prefix>/$bridge/state`` and ``<prefix>/<ep>/$state``
  say ``online`` (``offline``, ``expired`` or anything else means unavailable);
- has a ``unique_id`` built from the topic prefix, the device ID (the endpoint name on the
  legacy Connector, which has no IDs; so a device shown under another name keeps its
  entities) and the resource
  path alone, so it is the same after every restart and differs between endpoints.

Identifiers use only ``[A-Za-z0-9_-]`` (what Home Assistant allows in a discovery topic)
through :func:`id_token`, an injective escaping: letters, digits and ``-`` stay, every
other byte of the UTF-8 name becomes ``_`` and two upper-case hex digits. ``__`` never
appears inside a token, so it separates the parts of an identifier unambiguously.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge import __version__
from bridge.core.events import Resource
from bridge.core.registry import Endpoint
from bridge.downstream.topics import Topics, validate_prefix

DEFAULT_TOPIC_PREFIX = "connector"
DEFAULT_DISCOVERY_PREFIX = "homeassistant"
ORIGIN_NAME = "connector-bridge"

# What the bridge publishes on the availability topics; anything else is "not available".
ONLINE = "online"
OFFLINE = "offline"

# Templates are rendered by Home Assistant (Jinja) on every state message.
# LwM2M booleans arrive as "1"/"0", some devices say "true"/"false": both become "1"/"0",
# and anything else "None", which Home Assistant shows as unknown.
BOOLEAN_TEMPLATE = (
    "{% set v = value | trim | lower %}"
    "{{ '1' if v in ['1', 'true', 'on'] else ('0' if v in ['0', 'false', 'off'] else 'None') }}"
)
# `expired` (and any surprise) on an availability topic must mean unavailable, not
# "ignore this message", which is what Home Assistant does with an unknown payload.
AVAILABILITY_TEMPLATE = "{{ 'online' if value | trim == 'online' else 'offline' }}"

Config = dict[str, Any]
DiscoveryMessage = tuple[str, Config]
RemovalMessage = tuple[str, bytes]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class EndpointView:
    """What discovery reads about one endpoint: the registry's entry and the values seen.

    ``endpoint`` is the bridge's one endpoint model (:class:`bridge.core.registry.Endpoint`,
    whose :class:`bridge.core.events.Resource` entries may say ``writable`` and
    ``executable``; ``None`` there leaves the IPSO defaults to decide). Its ``name`` is
    the raw endpoint name (topics escape it themselves). ``values`` holds the values seen
    so far by path (``/3/0/0`` manufacturer, ``/3/0/1`` model, ``/3/0/2`` serial,
    ``/3/0/3`` firmware, ``/<obj>/<inst>/5701`` a sensor's units...). Missing values
    just leave fields out.
    """

    endpoint: Endpoint
    values: Mapping[str, str | bytes] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def id(self) -> str:
        """What identifies the device for Home Assistant: the service's device ID (the
        name on the legacy Connector), so a device keeps its entities when it is shown
        under another name."""
        return self.endpoint.id

    @property
    def ept(self) -> str:
        """The endpoint type, ``""`` when unknown."""
        return self.endpoint.type or ""

    @property
    def resources(self) -> tuple[Resource, ...]:
        """The resources, ``()`` when unknown."""
        return self.endpoint.resources or ()


def endpoint_view(
    name: str,
    ept: str = "",
    resources: Iterable[Resource] = (),
    values: Mapping[str, str | bytes] | None = None,
) -> EndpointView:
    """An :class:`EndpointView` of an online endpoint described by its parts (not in queue
    mode: discovery does not depend on it)."""
    endpoint = Endpoint(name, ept or None, False, tuple(resources), "online")
    return EndpointView(endpoint, dict(values or {}))


def endpoint_from_resources_document(
    name: str,
    document: Mapping[str, Any] | bytes | str,
    values: Mapping[str, str | bytes] | None = None,
) -> EndpointView:
    """An :class:`EndpointView` from the bridge's retained ``<prefix>/<ep>/$resources`` document.

    The document is ``{"type": ..., "q": ..., "resources": [{"path", "rt", "ct", "obs"}]}``
    (:func:`bridge.downstream.topics.encode_resources`), as JSON text or already decoded.
    """
    if isinstance(document, (bytes, str)):
        document = json.loads(document)
    if not isinstance(document, Mapping):
        raise ValueError("a $resources document is a JSON object")
    entries = document.get("resources") or []
    if not isinstance(entries, list):
        raise ValueError("$resources: 'resources' must be a list")
    view = endpoint_view(
        name,
        str(document.get("type") or ""),
        (Resource.from_dict(e) for e in entries if isinstance(e, Mapping)),
        values,
    )
    device_id = document.get("device_id")
    if isinstance(device_id, str) and device_id and device_id != name:
        view = EndpointView(dataclasses.replace(view.endpoint, device_id=device_id), view.values)
    return view


@dataclass(frozen=True)
class DiscoverySettings:
    """The settings discovery depends on."""

    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX
    sw_version: str = __version__
    support_url: str | None = None

    def __post_init__(self) -> None:
        for name in ("topic_prefix", "discovery_prefix"):
            value: str = getattr(self, name)
            try:
                validate_prefix(value)
            except ValueError as exc:
                raise ValueError(f"{name} {value!r}: {exc}") from None
        if self.support_url is not None and not re.match(r"https?://\S+$", self.support_url):
            raise ValueError(f"support_url must be an http(s) URL: {self.support_url!r}")


# --------------------------------------------------------------------------- tables

# UCUM / SenML unit names devices put in resource 5701 -> Home Assistant's unit strings.
UNITS: dict[str, str] = {
    "Cel": "°C",
    "°C": "°C",
    "degC": "°C",
    "Far": "°F",
    "[degF]": "°F",
    "°F": "°F",
    "K": "K",
    "%": "%",
    "%RH": "%",
    "/100": "%",
    "lx": "lx",
    "lux": "lx",
    "Pa": "Pa",
    "hPa": "hPa",
    "kPa": "kPa",
    "bar": "bar",
    "cbar": "cbar",
    "mbar": "mbar",
    "mm[Hg]": "mmHg",
    "mmHg": "mmHg",
    "[in_i'Hg]": "inHg",
    "inHg": "inHg",
    "[psi]": "psi",
    "psi": "psi",
    "V": "V",
    "mV": "mV",
    "kV": "kV",
    "A": "A",
    "mA": "mA",
    "W": "W",
    "mW": "mW",
    "kW": "kW",
    "MW": "MW",
    "Wh": "Wh",
    "W.h": "Wh",
    "kWh": "kWh",
    "kW.h": "kWh",
    "MWh": "MWh",
    "MW.h": "MWh",
    "J": "J",
    "kJ": "kJ",
    "MJ": "MJ",
}

_PRESSURE_UNITS = frozenset({"cbar", "bar", "hPa", "mmHg", "inHg", "kPa", "mbar", "Pa", "psi"})


@dataclass(frozen=True)
class SensorKind:
    """How one IPSO sensor object becomes a Home Assistant sensor."""

    name: str
    device_class: str | None
    state_class: str
    default_unit: str  # the IPSO unit of the object, used when the device gives none
    units: frozenset[str]  # units Home Assistant accepts with device_class
    resources: tuple[int, ...] = (5700,)


SENSORS: dict[int, SensorKind] = {
    3301: SensorKind("Illuminance", "illuminance", "measurement", "lx", frozenset({"lx"})),
    3303: SensorKind(
        "Temperature", "temperature", "measurement", "°C", frozenset({"°C", "°F", "K"})
    ),
    3304: SensorKind("Humidity", "humidity", "measurement", "%", frozenset({"%"})),
    3315: SensorKind("Barometer", "atmospheric_pressure", "measurement", "hPa", _PRESSURE_UNITS),
    3316: SensorKind("Voltage", "voltage", "measurement", "V", frozenset({"mV", "V", "kV"})),
    3317: SensorKind("Current", "current", "measurement", "A", frozenset({"mA", "A"})),
    3320: SensorKind("Percentage", None, "measurement", "%", frozenset()),
    3323: SensorKind("Pressure", "pressure", "measurement", "Pa", _PRESSURE_UNITS),
    3328: SensorKind("Power", "power", "measurement", "W", frozenset({"mW", "W", "kW", "MW"})),
    3331: SensorKind(
        "Energy",
        "energy",
        "total_increasing",
        "Wh",
        frozenset({"J", "kJ", "MJ", "Wh", "kWh", "MWh"}),
        resources=(5805, 5700),  # 5805 Cumulative active power (Wh)
    ),
}

# object id -> (name, binary_sensor device_class); the state is resource 5500.
BINARY_SENSORS: dict[int, tuple[str, str | None]] = {
    3200: ("Digital input", None),
    3302: ("Presence", "occupancy"),
    3342: ("On/off switch", None),
}

# (object id, resource id) -> (name, switch device_class)
SWITCHES: dict[tuple[int, int], tuple[str, str]] = {
    (3201, 5550): ("Digital output", "switch"),
    (3306, 5850): ("Actuation", "switch"),
    (3312, 5850): ("Power control", "outlet"),
}

# (object id, resource id) -> name; a 0-100 level
NUMBERS: dict[tuple[int, int], str] = {
    (3343, 5548): "Level",
}

LIGHT_OBJECT, LIGHT_ON_OFF, LIGHT_DIMMER = 3311, 5850, 5851

# Executable resources known without being told: path or resource id -> (name, class, enabled).
EXECUTABLE_PATHS: dict[str, tuple[str, str | None, bool]] = {
    "/3/0/4": ("Reboot", "restart", True),
    "/3/0/5": ("Factory reset", None, False),  # destructive: disabled until a user enables it
    "/3/0/12": ("Reset error code", None, True),
}
EXECUTABLE_RESOURCES: dict[int, str] = {
    5605: "Reset min and max",
    5822: "Reset cumulative energy",
}

# /3/0/x device object resources -> device registry fields
DEVICE_FIELDS: dict[str, str] = {
    "/3/0/0": "manufacturer",
    "/3/0/1": "model",
    "/3/0/2": "serial_number",
    "/3/0/3": "sw_version",
    "/3/0/18": "hw_version",
}


# --------------------------------------------------------------------------- identifiers

_KEEP = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")


def id_token(text: str) -> str:
    """``text`` as ``[A-Za-z0-9_-]`` only, injectively: other bytes become ``_XX`` (hex).

    ``node-001`` stays ``node-001``; ``my_dev`` becomes ``my_5Fdev``; ``a/b`` becomes
    ``a_2Fb``. An underscore is always followed by two hex digits, so ``__`` never occurs.
    """
    if text.isascii() and text.replace("-", "").isalnum():
        return text  # the common case: nothing to encode
    return "".join(
        chr(b) if b in _KEEP else f"_{b:02X}" for b in text.encode("utf-8", "surrogatepass")
    )


def path_token(path: str) -> str:
    """A resource path as one discovery-topic level: ``/3303/0/5700`` -> ``3303_0_5700``.

    Numeric LwM2M paths join with ``_``; any other path (the emulator allows them) is
    marked ``x-`` and joins escaped segments with ``__``, so the two never collide.
    """
    segments = _normalise_path(path).strip("/").split("/")
    if all(s.isdigit() and s.isascii() for s in segments):
        return "_".join(segments)
    return "x-" + "__".join(id_token(s) for s in segments)


def bridge_node_id(topic_prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """The node id and device identifier of the bridge itself (one per topic prefix)."""
    return f"{id_token(topic_prefix)}--bridge"


def node_id(endpoint_name: str, topic_prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """The node id and device identifier of an endpoint: ``connector__node-001``.

    The topic prefix is part of it so that two bridges with different prefixes (two
    Connector accounts, say) never share a device or overwrite each other's configs.
    """
    if not endpoint_name:
        raise ValueError("endpoint name must not be empty")
    return f"{id_token(topic_prefix)}__{id_token(endpoint_name)}"


def unique_id(endpoint_name: str, path: str, topic_prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """The entity's ``unique_id``: ``connector__node-001__3303_0_5700``.

    Depends only on the prefix, the endpoint name and the path, so it survives restarts;
    splitting on ``__`` gives the parts back, so two entities never share one.
    """
    return f"{node_id(endpoint_name, topic_prefix)}__{path_token(path)}"


def slug(text: str) -> str:
    """A Home Assistant entity-id slug: lower-case ``a-z0-9`` words joined by single ``_``."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


# --------------------------------------------------------------------------- entry points


def discovery_messages(
    endpoint: EndpointView, settings: DiscoverySettings | None = None
) -> list[DiscoveryMessage]:
    """The (topic, config) pairs that make ``endpoint`` a device in Home Assistant.

    Publish each config retained, as :func:`encode_config` makes it. Resources that
    match no entity kind produce nothing; an endpoint with none gives an empty list.
    """
    settings = settings or DiscoverySettings()
    if not endpoint.name:
        raise ValueError("endpoint name must not be empty")
    topics = Topics(settings.topic_prefix)
    entities = _entities(endpoint, topics)
    device = _device(endpoint, settings)
    origin = _origin(settings)
    availability = _availability(endpoint, topics)
    node = node_id(endpoint.id, settings.topic_prefix)
    messages: list[DiscoveryMessage] = []
    for entity in entities:
        object_slug = slug(f"{endpoint.name} {entity.name}") or slug(
            f"endpoint {path_token(entity.path)}"
        )
        config: Config = {
            "name": entity.name,
            "unique_id": unique_id(endpoint.id, entity.path, settings.topic_prefix),
            "default_entity_id": f"{entity.component}.{object_slug}",
            # `object_id` is what Home Assistant before 2025.10 reads; newer releases
            # take `default_entity_id` and ignore the unknown key.
            "object_id": object_slug,
            "device": dict(device),
            "origin": dict(origin),
            "availability": [dict(a) for a in availability],
            "availability_mode": "all",
            **entity.config,
        }
        topic = (
            f"{settings.discovery_prefix}/{entity.component}/{node}/"
            f"{path_token(entity.path)}/config"
        )
        messages.append((topic, config))
    return messages


def removal_messages(
    endpoint: EndpointView, settings: DiscoverySettings | None = None
) -> list[RemovalMessage]:
    """Empty retained messages that remove every config :func:`discovery_messages` made.

    For an endpoint gone for good (forgotten by the bridge; a de-registration alone is not
    that). The bridge may instead remove the topics it remembers publishing: same topics.
    """
    return [(topic, b"") for topic, _ in discovery_messages(endpoint, settings)]


def bridge_discovery_messages(settings: DiscoverySettings | None = None) -> list[DiscoveryMessage]:
    """The bridge's own device with one connectivity sensor on ``<prefix>/$bridge/state``.

    Every endpoint device names this device as ``via_device``.
    """
    settings = settings or DiscoverySettings()
    node = bridge_node_id(settings.topic_prefix)
    config: Config = {
        "name": "Connection",
        "unique_id": f"{node}__state",
        "default_entity_id": f"binary_sensor.{slug(settings.topic_prefix + ' bridge connection')}",
        "object_id": slug(f"{settings.topic_prefix} bridge connection"),
        "device": {
            "identifiers": [node],
            "name": f"connector-bridge ({settings.topic_prefix})",
            "manufacturer": "connector-bridge",
            "model": "Device Connector to MQTT bridge",
            "sw_version": settings.sw_version,
        },
        "origin": _origin(settings),
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "state_topic": Topics(settings.topic_prefix).bridge_state,
        "payload_on": ONLINE,
        "payload_off": OFFLINE,
    }
    return [(f"{settings.discovery_prefix}/binary_sensor/{node}/state/config", config)]


def bridge_removal_messages(settings: DiscoverySettings | None = None) -> list[RemovalMessage]:
    """Empty retained messages that remove the bridge's own device."""
    return [(topic, b"") for topic, _ in bridge_discovery_messages(settings)]


def encode_config(config: Mapping[str, Any]) -> bytes:
    """The payload for a config: compact UTF-8 JSON with sorted keys.

    Sorted keys make the bytes depend only on the content, so republishing an unchanged
    config is byte-for-byte the same (a bridge can skip it) and tests can compare.
    """
    text = json.dumps(config, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    # A name may hold a lone surrogate (JSON text allows one, UTF-8 does not): it becomes
    # "?" in the display name; identifiers and topics are already ASCII-safe.
    return text.encode("utf-8", "replace")


def ha_status_topic(discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX) -> str:
    """Where Home Assistant announces itself (its birth and last-will messages).

    Home Assistant's default is ``homeassistant/status``; its birth topic is a setting of
    its own, which users normally keep under the discovery prefix.
    """
    return f"{discovery_prefix}/status"


def is_ha_online(payload: bytes | str | None) -> bool:
    """True when a ``homeassistant/status`` payload means "came online, republish all".

    Home Assistant sends ``online`` (birth) and ``offline`` (will); case and surrounding
    white space are forgiven, everything else is not a reason to republish.
    """
    if payload is None:
        return False
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    return text.strip().lower() == ONLINE


# --------------------------------------------------------------------------- internals


@dataclass(frozen=True)
class _Entity:
    component: str
    path: str  # the resource path, or the object-instance path for a light
    name: str
    config: Config


def _entities(endpoint: EndpointView, topics: Topics) -> list[_Entity]:
    """The entities of an endpoint, in resource-path order."""
    by_path: dict[str, Resource] = {}
    for resource in endpoint.resources:
        by_path.setdefault(_normalise_path(resource.path), resource)
    values = {_normalise_path(p): _text(v) for p, v in endpoint.values.items()}
    instances = _instance_counts(by_path)
    entities: list[_Entity] = []
    for path in sorted(by_path, key=_path_sort_key):
        resource = by_path[path]
        value_topic = topics.value(endpoint.name, path)
        ids = _numeric_ids(path)
        # An executable resource cannot be read: it is a button and nothing else.
        if ids is not None and len(ids) == 3 and resource.executable is not True:
            entity = _ipso_entity(ids, path, resource, value_topic, by_path, values, instances)
            if entity is not None:
                entities.append(entity)
        button = _button(path, resource, value_topic)
        if button is not None:
            entities.append(button)
    return entities


def _ipso_entity(
    ids: tuple[int, ...],
    path: str,
    resource: Resource,
    value_topic: str,
    by_path: Mapping[str, Resource],
    values: Mapping[str, str],
    instances: Mapping[int, int],
) -> _Entity | None:
    obj, inst, res = ids
    suffix = f" {inst}" if instances.get(obj, 1) > 1 or inst else ""
    if obj == LIGHT_OBJECT and res in (LIGHT_ON_OFF, LIGHT_DIMMER):
        on_off = by_path.get(f"/{obj}/{inst}/{LIGHT_ON_OFF}")
        dimmer = by_path.get(f"/{obj}/{inst}/{LIGHT_DIMMER}")
        is_light = on_off is not None and on_off.writable is not False
        dims = dimmer is not None and dimmer.writable is not False
        if res == LIGHT_ON_OFF:
            if is_light:
                return _light(f"/{obj}/{inst}", "Light" + suffix, value_topic, dims)
            return _binary_sensor(path, "Light" + suffix, value_topic, None)
        if is_light and dims:
            return None  # the light's brightness
        return _level(path, "Dimmer" + suffix, value_topic, resource)
    kind = SENSORS.get(obj)
    if kind is not None and res in kind.resources:
        unit = values.get(f"/{obj}/{inst}/5701")
        return _sensor(path, kind.name + suffix, value_topic, kind, unit)
    if obj in BINARY_SENSORS and res == 5500:
        name, device_class = BINARY_SENSORS[obj]
        return _binary_sensor(path, name + suffix, value_topic, device_class)
    if (obj, res) in SWITCHES:
        name, device_class = SWITCHES[(obj, res)]
        if resource.writable is False:
            return _binary_sensor(path, name + suffix, value_topic, None)
        return _entity(
            "switch",
            path,
            name + suffix,
            command_topic=f"{value_topic}/set",
            state_topic=value_topic,
            payload_on="1",
            payload_off="0",
            value_template=BOOLEAN_TEMPLATE,
            device_class=device_class,
        )
    if (obj, res) in NUMBERS:
        return _level(path, NUMBERS[(obj, res)] + suffix, value_topic, resource)
    return None


def _sensor(
    path: str, name: str, value_topic: str, kind: SensorKind, device_unit: str | None
) -> _Entity:
    device_class, unit = _sensor_unit(kind, device_unit)
    config: Config = {"state_topic": value_topic, "state_class": kind.state_class}
    if device_class is not None:
        config["device_class"] = device_class
    config["unit_of_measurement"] = unit
    return _Entity("sensor", path, name, config)


def _sensor_unit(kind: SensorKind, device_unit: str | None) -> tuple[str | None, str]:
    """The device class and unit for a sensor whose device reports ``device_unit``.

    No unit from the device: the IPSO default. A unit Home Assistant accepts for the
    object's device class: that unit. Any other unit: shown as the device says, without
    the device class (Home Assistant rejects a class with a unit it does not know, and
    a wrong unit would be worse than none).
    """
    given = (device_unit or "").strip()
    if not given:
        return kind.device_class, kind.default_unit
    unit = UNITS.get(given, given)
    if kind.device_class is None or unit in kind.units:
        return kind.device_class, unit
    return None, unit


def _binary_sensor(path: str, name: str, value_topic: str, device_class: str | None) -> _Entity:
    return _entity(
        "binary_sensor",
        path,
        name,
        state_topic=value_topic,
        payload_on="1",
        payload_off="0",
        value_template=BOOLEAN_TEMPLATE,
        device_class=device_class,
    )


def _level(path: str, name: str, value_topic: str, resource: Resource) -> _Entity:
    """A 0-100 % level: a number when it can be written, else a sensor."""
    if resource.writable is False:
        return _entity(
            "sensor",
            path,
            name,
            state_topic=value_topic,
            state_class="measurement",
            unit_of_measurement="%",
        )
    return _entity(
        "number",
        path,
        name,
        command_topic=f"{value_topic}/set",
        state_topic=value_topic,
        min=0,
        max=100,
        step=1,
        mode="slider",
        unit_of_measurement="%",
    )


def _light(path: str, name: str, value_topic: str, dims: bool) -> _Entity:
    config: Config = {
        "command_topic": f"{value_topic}/set",
        "state_topic": value_topic,
        "payload_on": "1",
        "payload_off": "0",
        "state_value_template": BOOLEAN_TEMPLATE,
    }
    if dims:
        # 3311 paths are numeric, which topic escaping leaves as they are.
        brightness_topic = value_topic.rsplit("/", 1)[0] + f"/{LIGHT_DIMMER}"
        config.update(
            brightness_command_topic=f"{brightness_topic}/set",
            brightness_state_topic=brightness_topic,
            brightness_scale=100,
            on_command_type="first",
        )
    return _Entity("light", path, name, config)


def _button(path: str, resource: Resource, value_topic: str) -> _Entity | None:
    if resource.executable is False:
        return None
    known = EXECUTABLE_PATHS.get(path)
    ids = _numeric_ids(path)
    if known is None and ids is not None and len(ids) == 3 and ids[2] in EXECUTABLE_RESOURCES:
        known = (EXECUTABLE_RESOURCES[ids[2]], None, True)
    if known is None and resource.executable is not True:
        return None
    name, device_class, enabled = known or (resource.rt or f"Execute {path}", None, True)
    config: Config = {
        "command_topic": f"{value_topic}/post",
        "payload_press": "",  # an execute without argument; the bridge POSTs no body
        "entity_category": "config",
    }
    if device_class is not None:
        config["device_class"] = device_class
    if not enabled:
        config["enabled_by_default"] = False
    return _Entity("button", path, name, config)


def _entity(component: str, path: str, name: str, **config: Any) -> _Entity:
    return _Entity(component, path, name, {k: v for k, v in config.items() if v is not None})


def _device(endpoint: EndpointView, settings: DiscoverySettings) -> Config:
    device: Config = {
        "identifiers": [node_id(endpoint.id, settings.topic_prefix)],
        "name": endpoint.name,
        "via_device": bridge_node_id(settings.topic_prefix),
    }
    values = {_normalise_path(p): _text(v) for p, v in endpoint.values.items()}
    for path, key in DEVICE_FIELDS.items():
        value = values.get(path, "").strip()
        if value:
            device[key] = value
    if "model" not in device and endpoint.ept:
        device["model"] = endpoint.ept
    return device


def _origin(settings: DiscoverySettings) -> Config:
    origin: Config = {"name": ORIGIN_NAME, "sw_version": settings.sw_version}
    if settings.support_url:
        origin["support_url"] = settings.support_url
    return origin


def _availability(endpoint: EndpointView, topics: Topics) -> list[Config]:
    return [
        {
            "topic": topic,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "value_template": AVAILABILITY_TEMPLATE,
        }
        for topic in (topics.bridge_state, topics.state(endpoint.name))
    ]


def _normalise_path(path: str) -> str:
    return "/" + path.strip().strip("/")


@functools.lru_cache(maxsize=4096)  # asked many times per endpoint, for few distinct paths
def _numeric_ids(path: str) -> tuple[int, ...] | None:
    segments = path.strip("/").split("/")
    if not all(s.isdigit() and s.isascii() for s in segments):
        return None
    return tuple(int(s) for s in segments)


def _path_sort_key(path: str) -> tuple[int, tuple[int, ...], str]:
    ids = _numeric_ids(path)
    return (0, ids, "") if ids is not None else (1, (), path)


def _instance_counts(by_path: Iterable[str]) -> dict[int, int]:
    """How many instances each object has: names get an instance number when > 1."""
    seen: dict[int, set[int]] = {}
    for path in by_path:
        ids = _numeric_ids(path)
        if ids is not None and len(ids) >= 2:
            seen.setdefault(ids[0], set()).add(ids[1])
    return {obj: len(insts) for obj, insts in seen.items()}


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
