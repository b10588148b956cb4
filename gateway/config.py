"""The gateway's configuration: one TOML file (tomllib), checked whole at start-up.

Every mistake is reported with where it is (``modbus[0].points[2].type``) and what would be right, and unknown
keys are mistakes too: a misspelt ``poll_intervall_s`` silently falling back to its default is how a meter ends up
polled every second instead of every ten. Relative paths are relative to the configuration file's folder.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway import contract

ModbusTable = Literal["holding", "input", "coil", "discrete"]
ModbusType = Literal["int16", "uint16", "int32", "uint32", "float32", "bool"]
Order = Literal["big", "little"]
WhenFull = Literal["drop_oldest", "drop_newest"]

MODBUS_TABLES: tuple[ModbusTable, ...] = ("holding", "input", "coil", "discrete")
REGISTER_TYPES: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
# A health metric names the device it is about: read_errors.<device> must stay a valid metric name.
HEALTH_PER_DEVICE_PREFIXES = ("read_errors.",)


class ConfigError(ValueError):
    """The configuration file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int = 8883
    ca_file: str | None = None  # None: the system's CA store (a publicly trusted broker certificate)
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    reconnect_max_s: float = 30.0  # the pause between attempts doubles from 1 s up to this


@dataclass(frozen=True)
class Credential:
    """A device's broker credential, as the API issued it (username and client id default to tenant.device)."""

    device: str
    username: str
    client_id: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class BufferConfig:
    path: Path
    max_mb: float = 1024.0
    when_full: WhenFull = "drop_oldest"
    synchronous: Literal["full", "normal"] = "full"


@dataclass(frozen=True)
class PublishConfig:
    max_records: int = 500  # readings per message, within the drain's MAX_RECORDS and MAX_PAYLOAD_BYTES
    max_in_flight: int = 4  # messages per device awaiting their PUBACK
    resend_window_s: float = contract.RESEND_WINDOW_S
    max_age_days: float = contract.INGEST_MAX_PAST_DAYS - 1
    retry_s: float = 5.0  # after the broker refused a message, or its drain session is missing


@dataclass(frozen=True)
class HealthConfig:
    device: str | None = None
    interval_s: float = 60.0


@dataclass(frozen=True)
class ModbusPoint:
    metric: str
    table: ModbusTable
    address: int
    type: ModbusType
    word_order: Order = "big"
    byte_order: Order = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    writable: bool = False

    @property
    def count(self) -> int:
        """Registers (or bits) it spans."""
        return REGISTER_TYPES.get(self.type, 1)


@dataclass(frozen=True)
class ModbusSourceConfig:
    device: str
    host: str
    port: int = 502
    unit_id: int = 1
    poll_interval_s: float = 1.0
    timeout_s: float = 1.0
    points: tuple[ModbusPoint, ...] = ()


@dataclass(frozen=True)
class OpcUaNode:
    metric: str
    node_id: str
    unit: str | None = None
    writable: bool = False


@dataclass(frozen=True)
class OpcUaSourceConfig:
    device: str
    url: str
    mode: Literal["subscribe", "poll"] = "subscribe"
    interval_s: float = 1.0  # the subscription's publishing interval, or the poll interval
    timeout_s: float = 4.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    security: str | None = None  # asyncua's security string, e.g. "Basic256Sha256,SignAndEncrypt,cert.pem,key.pem"
    nodes: tuple[OpcUaNode, ...] = ()


@dataclass(frozen=True)
class LanTopic:
    topic: str
    device: str
    format: Literal["value", "json"] = "value"
    metric: str | None = None  # format "value": the metric the payload is a value of
    unit: str | None = None
    fields: dict[str, str] = field(default_factory=dict)  # format "json": JSON key -> metric (empty: every key)
    units: dict[str, str] = field(default_factory=dict)  # format "json": metric -> unit


@dataclass(frozen=True)
class LanMqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None
    topics: tuple[LanTopic, ...] = ()


@dataclass(frozen=True)
class GatewayConfig:
    tenant: str
    broker: BrokerConfig
    buffer: BufferConfig
    publish: PublishConfig
    health: HealthConfig
    credentials: dict[str, Credential]
    modbus: tuple[ModbusSourceConfig, ...] = ()
    opcua: tuple[OpcUaSourceConfig, ...] = ()
    lan_mqtt: tuple[LanMqttConfig, ...] = ()

    @property
    def devices(self) -> list[str]:
        """Every device the gateway publishes for, the health device last."""
        names = [s.device for s in self.modbus] + [s.device for s in self.opcua]
        names += [t.device for lan in self.lan_mqtt for t in lan.topics if t.device not in names]
        names = list(dict.fromkeys(names))
        if self.health.device and self.health.device not in names:
            names.append(self.health.device)
        return names

    def units(self, device: str) -> dict[str, str]:
        """Metric -> unit of a device, from every source that feeds it."""
        found: dict[str, str] = {}
        for modbus in self.modbus:
            if modbus.device == device:
                found |= {p.metric: p.unit for p in modbus.points if p.unit}
        for opcua in self.opcua:
            if opcua.device == device:
                found |= {n.metric: n.unit for n in opcua.nodes if n.unit}
        for lan in self.lan_mqtt:
            for topic in lan.topics:
                if topic.device == device:
                    found |= dict(topic.units)
                    if topic.metric and topic.unit:
                        found[topic.metric] = topic.unit
        return found


_REQUIRED: Any = object()


class _Section:
    """One TOML table being read: typed getters that name the key on error, and done() refusing leftovers."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
        self.data, self.where, self.seen = data, where, set[str]()

    def _get(self, key: str, default: Any) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise ConfigError(f"{self.where}.{key}: required")
            return default
        return self.data[key]

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where}.{key}: {message}")

    def text(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self._get(key, default)
        if value is not default and not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {value!r}")
        return value

    def name(self, key: str, pattern: Any, what: str, default: Any = _REQUIRED) -> Any:
        value = self.text(key, default)
        if value is not default and not pattern.match(value):
            raise self.fail(key, f"{value!r} is not a valid {what} (expected {pattern.pattern})")
        return value

    def integer(self, key: str, default: Any = _REQUIRED, low: int | None = None, high: int | None = None) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(key, f"{value} is outside {low}..{high}")
        return value

    def number(self, key: str, default: Any = _REQUIRED, positive: bool = True) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(key, f"expected a number, got {value!r}")
        if positive and value <= 0:
            raise self.fail(key, f"must be positive, got {value}")
        return float(value)

    def flag(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self._get(key, default)
        if value is not default and not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value

    def choice(self, key: str, options: tuple[str, ...], default: Any = _REQUIRED) -> Any:
        value = self.text(key, default)
        if value is not default and value not in options:
            raise self.fail(key, f"{value!r} is not one of {', '.join(options)}")
        return value

    def table(self, key: str) -> _Section:
        return _Section(self._get(key, {}), f"{self.where}.{key}")

    def tables(self, key: str) -> Iterator[_Section]:
        value = self._get(key, [])
        if not isinstance(value, list):
            raise self.fail(key, "expected an array of tables ([[...]])")
        for index, item in enumerate(value):
            yield _Section(item, f"{self.where}.{key}[{index}]")

    def mapping(self, key: str) -> dict[str, str]:
        value = self._get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self.fail(key, "expected a table of strings")
        return dict(value)

    def secret(self, base_dir: Path, key: str = "password") -> str | None:
        """A password given inline or, better, as <key>_file (a file of its own, readable by the service only)."""
        inline, path = self.text(key, None), self.text(f"{key}_file", None)
        if inline is not None and path is not None:
            raise self.fail(key, f"give {key} or {key}_file, not both")
        if path is None:
            return None if inline is None else str(inline)
        try:
            return (base_dir / str(path)).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise self.fail(f"{key}_file", f"cannot read {path}: {exc.strerror}") from None

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(f"{self.where}: unknown key(s) {', '.join(unknown)}")


def load(path: str | Path) -> GatewayConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, path.resolve().parent)


def parse(data: dict[str, Any], base_dir: Path) -> GatewayConfig:
    root = _Section(data, "config")
    top = root.table("gateway")
    tenant = top.name("tenant", contract.TENANT_RE, "tenant slug")
    top.done()

    section = root.table("broker")
    broker = BrokerConfig(
        host=section.text("host"),
        port=section.integer("port", 8883, 1, 65535),
        ca_file=_path(base_dir, section.text("ca_file", None)),
        keepalive_s=section.integer("keepalive_s", 30, 5, 3600),
        connect_timeout_s=section.number("connect_timeout_s", 10.0),
        reconnect_max_s=section.number("reconnect_max_s", 30.0),
    )
    section.done()

    section = root.table("buffer")
    buffer = BufferConfig(
        path=Path(_path(base_dir, section.text("path", "buffer.sqlite3")) or "buffer.sqlite3"),
        max_mb=section.number("max_mb", 1024.0),
        when_full=section.choice("when_full", ("drop_oldest", "drop_newest"), "drop_oldest"),
        synchronous=section.choice("synchronous", ("full", "normal"), "full"),
    )
    section.done()

    section = root.table("publish")
    publish = PublishConfig(
        max_records=section.integer("max_records", 500, 1, contract.MAX_RECORDS),
        max_in_flight=section.integer("max_in_flight", 4, 1, 64),
        resend_window_s=section.number("resend_window_s", float(contract.RESEND_WINDOW_S)),
        max_age_days=section.number("max_age_days", float(contract.INGEST_MAX_PAST_DAYS - 1)),
        retry_s=section.number("retry_s", 5.0),
    )
    if publish.resend_window_s < contract.BROKER_AUTOSAVE_INTERVAL_S:
        raise section.fail(
            "resend_window_s",
            f"must cover the broker's autosave_interval "
            f"({contract.BROKER_AUTOSAVE_INTERVAL_S} s), or a broker crash loses "
            "what it had acknowledged",
        )
    if publish.max_age_days >= contract.INGEST_MAX_PAST_DAYS:
        raise section.fail(
            "max_age_days",
            f"must stay below the drain's {contract.INGEST_MAX_PAST_DAYS} days, or an "
            "old reading gets its whole message dead-lettered",
        )
    section.done()

    section = root.table("health")
    health = HealthConfig(
        device=section.name("device", contract.DEVICE_RE, "device name", None),
        interval_s=section.number("interval_s", 60.0),
    )
    section.done()

    modbus = tuple(_modbus(s) for s in root.tables("modbus"))
    opcua = tuple(_opcua(s, base_dir) for s in root.tables("opcua"))
    lan = tuple(_lan(s, base_dir) for s in root.tables("mqtt_lan"))

    devices_section = root.table("devices")
    credentials: dict[str, Credential] = {}
    for name in list(devices_section.data):
        if not contract.DEVICE_RE.match(name):
            raise devices_section.fail(name, f"{name!r} is not a valid device name ({contract.DEVICE_NAME_PATTERN})")
        entry = devices_section.table(name)
        username = entry.text("username", contract.device_username(tenant, name))
        password = entry.secret(base_dir)
        if not password:
            raise entry.fail("password", "required (or password_file): the password the API issued for the device")
        credentials[name] = Credential(name, username, entry.text("client_id", username), password)
        entry.done()
    root.done()

    config = GatewayConfig(tenant, broker, buffer, publish, health, credentials, modbus, opcua, lan)
    _check_devices(config)
    return config


def _path(base_dir: Path, value: str | None) -> str | None:
    return None if value is None else str((base_dir / value).resolve())


def _modbus(section: _Section) -> ModbusSourceConfig:
    device = section.name("device", contract.DEVICE_RE, "device name")
    source = ModbusSourceConfig(
        device=device,
        host=section.text("host"),
        port=section.integer("port", 502, 1, 65535),
        unit_id=section.integer("unit_id", 1, 0, 255),
        poll_interval_s=section.number("poll_interval_s", 1.0),
        timeout_s=section.number("timeout_s", 1.0),
        points=tuple(_modbus_point(p) for p in section.tables("points")),
    )
    if not source.points:
        raise section.fail("points", "at least one [[modbus.points]]")
    section.done()
    return source


def _modbus_point(section: _Section) -> ModbusPoint:
    table = section.choice("table", MODBUS_TABLES, "holding")
    bits = table in ("coil", "discrete")
    kind = section.choice("type", ("bool",) if bits else tuple(REGISTER_TYPES), "bool" if bits else "uint16")
    point = ModbusPoint(
        metric=section.name("metric", contract.METRIC_RE, "metric name"),
        table=table,
        address=section.integer("address", _REQUIRED, 0, 65535),
        type=kind,
        word_order=section.choice("word_order", ("big", "little"), "big"),
        byte_order=section.choice("byte_order", ("big", "little"), "big"),
        scale=section.number("scale", 1.0, positive=False),
        offset=section.number("offset", 0.0, positive=False),
        unit=_unit(section),
        writable=section.flag("writable", False),
    )
    if point.scale == 0:
        raise section.fail("scale", "cannot be 0")
    if bits and (point.scale != 1 or point.offset != 0):
        raise section.fail("scale", f"a {table} is true or false: no scale or offset")
    if point.writable and table in ("input", "discrete"):
        raise section.fail(
            "writable",
            f"{table} {'registers' if table == 'input' else 'inputs'} are read-only in "
            "Modbus; only holding registers and coils can be written",
        )
    if point.address + point.count > 65536:
        raise section.fail("address", f"{point.type} at {point.address} runs past register 65535")
    section.done()
    return point


def _opcua(section: _Section, base_dir: Path) -> OpcUaSourceConfig:
    source = OpcUaSourceConfig(
        device=section.name("device", contract.DEVICE_RE, "device name"),
        url=section.text("url"),
        mode=section.choice("mode", ("subscribe", "poll"), "subscribe"),
        interval_s=section.number("interval_s", 1.0),
        timeout_s=section.number("timeout_s", 4.0),
        username=section.text("username", None),
        password=section.secret(base_dir),
        security=section.text("security", None),
        nodes=tuple(_opcua_node(n) for n in section.tables("nodes")),
    )
    if not source.url.startswith("opc.tcp://"):
        raise section.fail("url", f"{source.url!r} is not an opc.tcp:// endpoint")
    if not source.nodes:
        raise section.fail("nodes", "at least one [[opcua.nodes]]")
    section.done()
    return source


def _opcua_node(section: _Section) -> OpcUaNode:
    node = OpcUaNode(
        metric=section.name("metric", contract.METRIC_RE, "metric name"),
        node_id=section.text("node_id"),
        unit=_unit(section),
        writable=section.flag("writable", False),
    )
    section.done()
    return node


def _lan(section: _Section, base_dir: Path) -> LanMqttConfig:
    lan = LanMqttConfig(
        host=section.text("host", "127.0.0.1"),
        port=section.integer("port", 1883, 1, 65535),
        username=section.text("username", None),
        password=section.secret(base_dir),
        client_id=section.text("client_id", None),
        topics=tuple(_lan_topic(t) for t in section.tables("topics")),
    )
    if not lan.topics:
        raise section.fail("topics", "at least one [[mqtt_lan.topics]]")
    section.done()
    return lan


def _lan_topic(section: _Section) -> LanTopic:
    kind = section.choice("format", ("value", "json"), "value")
    topic = LanTopic(
        topic=section.text("topic"),
        device=section.name("device", contract.DEVICE_RE, "device name"),
        format=kind,
        metric=section.name("metric", contract.METRIC_RE, "metric name", None),
        unit=_unit(section),
        fields=section.mapping("fields"),
        units=section.mapping("units"),
    )
    if kind == "value" and topic.metric is None:
        raise section.fail("metric", 'required with format = "value" (the metric the payload is a value of)')
    if kind == "json" and topic.metric is not None:
        raise section.fail("metric", 'format = "json" names its metrics in fields (JSON key = metric)')
    for metric in (*topic.fields.values(), *topic.units):
        if not contract.METRIC_RE.match(metric):
            raise section.fail("fields", f"{metric!r} is not a valid metric name ({contract.METRIC_NAME_PATTERN})")
    section.done()
    return topic


def _unit(section: _Section) -> str | None:
    unit = section.text("unit", None)
    if unit is not None and not 0 < len(unit) <= contract.UNIT_MAX_CHARS:
        raise section.fail("unit", f"1 to {contract.UNIT_MAX_CHARS} characters")
    return None if unit is None else str(unit)


def _check_devices(config: GatewayConfig) -> None:
    """Each device has a credential; a metric is read from one place only; health names stay valid."""
    if not config.devices:
        raise ConfigError("config: no sources ([[modbus]], [[opcua]] or [[mqtt_lan]]) and no [health] device")
    for device in config.devices:
        if device not in config.credentials:
            raise ConfigError(
                f"config.devices.{device}: missing: every device needs the credential the API issued "
                f"([devices.{device}] with password_file)"
            )
    owner: dict[tuple[str, str], str] = {}
    sources: list[tuple[str, str, list[str]]] = [
        *((f"modbus[{i}]", s.device, [p.metric for p in s.points]) for i, s in enumerate(config.modbus)),
        *((f"opcua[{i}]", s.device, [n.metric for n in s.nodes]) for i, s in enumerate(config.opcua)),
    ]
    for where, device, metrics in sources:
        if device == config.health.device:
            raise ConfigError(
                f"config.{where}.device: {device!r} is the [health] device, whose metrics are the gateway's own"
            )
        if len(metrics) > contract.MAX_METRICS * 10:
            raise ConfigError(f"config.{where}: at most {contract.MAX_METRICS * 10} points per source")
        for metric in metrics:
            if metric in (contract.ACK_METRIC, contract.RESULT_METRIC):
                raise ConfigError(f"config.{where}: metric {metric!r} is reserved for command acknowledgements")
            if (device, metric) in owner:
                raise ConfigError(
                    f"config.{where}: metric {metric!r} of device {device!r} is already read by "
                    f"{owner[(device, metric)]}"
                )
            owner[(device, metric)] = where
    for prefix in HEALTH_PER_DEVICE_PREFIXES:
        for device in config.devices:
            if len(prefix + device) > 64 and config.health.device:
                raise ConfigError(
                    f"config.devices.{device}: the health metric {prefix}{device} would be longer than 64 characters"
                )
