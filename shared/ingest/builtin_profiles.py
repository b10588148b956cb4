"""The built-in profiles a tenant picks as they are: native (the JSON of docs/devices-and-topics.md,
decoded by shared/ingest/validation.py), tasmota and shelly-gen2 (declarative specs, as a tenant's own
profile would be written: GET /api/profiles/tasmota shows one to start from), homeassistant-discovery
and sparkplug-b (decoders of their own). Their topic forms are the broker contract's
(BUILTIN_PROFILE_TOPICS); tests/unit/test_profiles.py proves each spec declares exactly those.
What to type into each device's settings page: docs/profiles.md.
"""

from __future__ import annotations

from typing import Any

from shared.ingest.decoding import Decoder, ProfileSpec, compile_spec
from shared.ingest.homeassistant import DiscoveryDecoder
from shared.ingest.sparkplug.decoder import SparkplugDecoder

ON_OFF = {"ON": True, "OFF": False}
_RELAYS = ["POWER", *(f"POWER{n}" for n in range(1, 9))]
_TEMPERATURE = {"path": "TempUnit", "map": {"C": "°C", "F": "°F"}}
_TASMOTA_UNITS: dict[str, Any] = {
    "*.Temperature": _TEMPERATURE,
    "*.DewPoint": _TEMPERATURE,
    "*.Humidity": "%",
    "*.Pressure": {"path": "PressureUnit"},
    "*.Illuminance": "lx",
    "*.CarbonDioxide": "ppm",
    "*.Distance": "cm",
}
for _key, _unit in {
    "Total": "kWh",
    "Yesterday": "kWh",
    "Today": "kWh",
    "Period": "Wh",
    "Power": "W",
    "ApparentPower": "VA",
    "ReactivePower": "var",
    "Voltage": "V",
    "Current": "A",
    "Frequency": "Hz",
}.items():
    _TASMOTA_UNITS[f"ENERGY.{_key}"] = _unit
    _TASMOTA_UNITS[f"ENERGY.{_key}.*"] = _unit  # multi-channel meters report arrays

# Tasmota (https://tasmota.github.io/docs/MQTT/): tele/LWT is Online/Offline (retained will), tele/STATE
# and tele/SENSOR every TelePeriod with a "Time" (local time; with SetOption52 1 it carries its UTC
# offset), stat/POWER<n> ON/OFF when a relay changes.
TASMOTA: dict[str, Any] = {
    "timezone": "UTC",
    "forms": [
        {"topic": "tele/LWT", "payload": "text", "status": {"online": ["Online"], "offline": ["Offline"]}},
        {
            "topic": "tele/STATE",
            "timestamp": {"path": "Time"},
            "metrics": [
                *({"path": relay, "name": relay, "map": ON_OFF} for relay in _RELAYS),
                {"path": "Dimmer", "name": "Dimmer", "unit": "%"},
                {"path": "UptimeSec", "name": "UptimeSec", "unit": "s"},
                {"path": "Wifi.RSSI", "name": "Wifi.RSSI", "unit": "%"},
                {"path": "Wifi.Signal", "name": "Wifi.Signal", "unit": "dBm"},
            ],
        },
        {
            "topic": "tele/SENSOR",
            "timestamp": {"path": "Time"},
            "flatten": [
                {
                    "path": "@",
                    "exclude": ["Time", "*Unit", "*.TotalStartTime", "*.Id"],
                    "units": _TASMOTA_UNITS,
                }
            ],
        },
        *(
            {"topic": f"stat/{relay}", "payload": "text", "metrics": [{"path": "@", "name": relay, "map": ON_OFF}]}
            for relay in _RELAYS
        ),
    ],
    "subscribe": ["cmnd/#"],
}

_SHELLY_UNITS = {
    "*apower": "W",
    "*act_power": "W",
    "*aprt_power": "VA",
    "*voltage": "V",
    "*current": "A",
    "*freq": "Hz",
    "*aenergy.total": "Wh",
    "*ret_aenergy.total": "Wh",
    "*.tC": "°C",
    "*.tF": "°F",
    "*.rh": "%",
    "*.percent": "%",
    "*battery.V": "V",
    "wifi.rssi": "dBm",
    "sys.uptime": "s",
}
# Shelly Gen2 (https://shelly-api-docs.shelly.cloud/gen2/General/Notifications): with RPC status
# notifications on, the device publishes JSON-RPC frames on <prefix>/events/rpc: NotifyFullStatus when
# it connects, NotifyStatus with what changed, NotifyEvent for inputs; <prefix>/online is true/false.
SHELLY_GEN2: dict[str, Any] = {
    "forms": [
        {"topic": "online", "payload": "text", "status": {"online": ["true"], "offline": ["false"]}},
        {
            "topic": "events/rpc",
            "when": "method == 'NotifyStatus' || method == 'NotifyFullStatus'",
            "timestamp": {"path": "params.ts", "format": "epoch_s"},
            "flatten": [
                {
                    "path": "params",
                    "include": [
                        *(
                            f"{component}:*"
                            for component in (
                                "switch",
                                "cover",
                                "light",
                                "input",
                                "pm1",
                                "em",
                                "em1",
                                "temperature",
                                "humidity",
                                "devicepower",
                                "voltmeter",
                            )
                        ),
                        "wifi.rssi",
                        "sys.uptime",
                    ],
                    "exclude": ["*.id", "*.source", "*by_minute*", "*minute_ts", "*timer_*", "*errors*", "*flags*"],
                    "units": _SHELLY_UNITS,
                }
            ],
        },
        {
            "topic": "events/rpc",
            "when": "method == 'NotifyEvent'",
            "records": "params.events",
            "timestamp": {"path": "ts", "format": "epoch_s"},
            "metrics": [
                {"path": "component", "name": "event_component", "type": "text"},
                {"path": "event", "name": "event", "type": "text"},
            ],
        },
    ],
    "subscribe": ["rpc", "command", "command/+"],
}

DESCRIPTIONS = {
    "native": "Our JSON on t/{tenant}/d/{device}/telemetry, status and {entity}/state (docs/devices-and-topics.md).",
    "tasmota": "Tasmota plugs, relays and sensors: tele/STATE, tele/SENSOR, tele/LWT, stat/POWER.",
    "shelly-gen2": "Shelly Plus/Pro (Gen2+) devices: NotifyStatus, NotifyFullStatus and NotifyEvent on events/rpc.",
    "homeassistant-discovery": "ESPHome and other Home Assistant MQTT discovery devices: entities from their config.",
    "sparkplug-b": "Sparkplug B 3.0 edge nodes (PLC gateways): births, data by alias, deaths, sequence numbers.",
}
SPECS: dict[str, dict[str, Any]] = {"tasmota": TASMOTA, "shelly-gen2": SHELLY_GEN2}
_DECODERS: dict[str, Decoder] = {
    "tasmota": compile_spec("tasmota", ProfileSpec.model_validate(TASMOTA)),
    "shelly-gen2": compile_spec("shelly-gen2", ProfileSpec.model_validate(SHELLY_GEN2)),
    "homeassistant-discovery": DiscoveryDecoder(),
    "sparkplug-b": SparkplugDecoder(),
}


def builtin_decoder(name: str) -> Decoder | None:
    """None for native (the drain's own validation)."""
    return _DECODERS.get(name)
