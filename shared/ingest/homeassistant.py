"""Home Assistant MQTT discovery (what ESPHome, Tasmota, Zigbee2MQTT and many others publish): a device
announces each entity with a retained `config` message (component, state_topic, unit_of_measurement,
device_class, value_template), and then publishes the entity's state there. The decoder remembers each
announced entity in the device's decoder state, so the first state that follows is stored under the
entity's object id with its unit, and no profile needs editing.

A value_template is understood in its simple forms only (no Jinja runs here): `{{ value }}`,
`{{ value_json.key }}` with `.key`, `['key']` and `[0]` steps, the filters `float`, `int`, `round(n)`,
and a final `* n` or `/ n`. A config with any other template is a dead letter whose detail quotes it.
Discovery's abbreviations (stat_t, unit_of_meas, val_tpl, ~ ...) are expanded first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shared.broker.contract import BUILTIN_PROFILE_TOPICS
from shared.ingest.decoding import Decoded, check_value, metric_name, parse_json
from shared.ingest.validation import Rejected

NAME = "homeassistant-discovery"
DISCOVERY_ROOT = "homeassistant"
# The abbreviations a config may use for the keys read here (the discovery docs' full table is longer).
ABBREVIATIONS = {
    "stat_t": "state_topic",
    "unit_of_meas": "unit_of_measurement",
    "dev_cla": "device_class",
    "stat_cla": "state_class",
    "val_tpl": "value_template",
    "avty_t": "availability_topic",
    "pl_on": "payload_on",
    "pl_off": "payload_off",
    "stat_on": "state_on",
    "stat_off": "state_off",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "obj_id": "object_id",
    "uniq_id": "unique_id",
}
STORED_COMPONENTS = ("sensor", "binary_sensor", "switch", "number", "select", "text")
# Entities with no state to store: their config is accepted and nothing is remembered.
STATELESS_COMPONENTS = ("button", "scene", "device_automation", "event", "tag", "notify")

_TEMPLATE = re.compile(
    r"^\{\{\s*(value_json|value)((?:\s*(?:\.[A-Za-z_]\w*|\[\s*(?:-?\d+|'[^']*'|\"[^\"]*\")\s*\]))*)"
    r"((?:\s*\|\s*(?:float|int|round)(?:\s*\(\s*-?\d+(?:\.\d+)?\s*\))?)*)"
    r"(?:\s*([*/])\s*(-?\d+(?:\.\d+)?))?\s*\}\}$"
)
_STEP = re.compile(r"\.([A-Za-z_]\w*)|\[\s*(-?\d+)\s*\]|\[\s*'([^']*)'\s*\]|\[\s*\"([^\"]*)\"\s*\]")
_FILTER = re.compile(r"(float|int|round)(?:\s*\(\s*(-?\d+(?:\.\d+)?)\s*\))?")


@dataclass(frozen=True)
class Template:
    json: bool
    keys: tuple[str | int, ...]
    filters: tuple[tuple[str, float | None], ...]
    op: str | None
    operand: float

    def apply(self, text: str, parsed: Any) -> Any:
        value: Any = parsed if self.json else text
        for key in self.keys:
            if isinstance(key, str):
                value = value.get(key) if type(value) is dict else None
            else:
                value = value[key] if type(value) is list and -len(value) <= key < len(value) else None
            if value is None:
                return None
        for name, argument in self.filters:
            try:
                number = float(value)
            except (TypeError, ValueError):
                if argument is not None and name != "round":
                    number = argument  # float(default), int(default)
                else:
                    raise Rejected("wrong_type", f"{value!r:.40} is not a number for | {name}") from None
            value = int(number) if name == "int" else round(number, int(argument or 0)) if name == "round" else number
        if self.op is not None:
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise Rejected("wrong_type", f"{value!r:.40} is not a number for {self.op} {self.operand}") from None
            value = number * self.operand if self.op == "*" else number / self.operand
        return value


def parse_template(template: str) -> Template:
    """A simple value_template, or Rejected template_unsupported quoting it."""
    match = _TEMPLATE.match(template.strip())
    if match is None or (match.group(4) == "/" and float(match.group(5)) == 0):
        raise Rejected(
            "template_unsupported",
            f"value_template {template[:120]!r} is not a simple form (value, value_json.key['k'][0], "
            "| float, | int, | round(n), * n, / n)",
        )
    source, steps, filters, op, operand = match.groups()
    keys: list[str | int] = []
    for attr, index, single, double in _STEP.findall(steps):
        keys.append(attr or single or double if not index else int(index))
    parsed_filters = tuple(
        (name, float(argument) if argument else None) for name, argument in _FILTER.findall(filters or "")
    )
    return Template(source == "value_json", tuple(keys), parsed_filters, op, float(operand or 1))


def _expanded(config: dict[str, Any]) -> dict[str, Any]:
    out = {ABBREVIATIONS.get(key, key): value for key, value in config.items()}
    base = out.get("~")
    if isinstance(base, str):
        for key, value in list(out.items()):
            if key.endswith("_topic") and isinstance(value, str):
                out[key] = value.replace("~", base, 1) if value.startswith("~") else value.replace("~", base)
    return out


class DiscoveryDecoder:
    """The homeassistant-discovery built-in. Its state: {"topics": {state topic below the prefix:
    {config topic: entity}}}."""

    stateful = True

    name = NAME

    def __init__(self) -> None:
        self.state_forms = [f.split("/") for f in BUILTIN_PROFILE_TOPICS[NAME].publish if not f.endswith("/config")]

    def decode(self, prefix: str, topic: str, payload: bytes, state: dict[str, Any], received_us: int) -> Decoded:
        levels = topic.split("/")
        if levels[0] == DISCOVERY_ROOT and levels[-1] == "config" and len(levels) in (4, 5):
            return self._config(prefix, topic, levels, payload, state)
        topics = state.get("topics", {})
        entities = topics.get(topic)
        if not entities:
            raise Rejected("undiscovered_topic", f"no discovery config names {topic[:100]!r} as its state_topic yet")
        text = payload.decode("utf-8", errors="replace").strip()
        parsed: Any = None
        out = Decoded()
        metrics: dict[str, Any] = {}
        for entity in entities.values():
            template = parse_template(entity["template"]) if entity.get("template") else None
            if template is not None and template.json and parsed is None:
                parsed = parse_json(payload)
            raw = template.apply(text, parsed) if template is not None else text
            if raw is None:
                continue
            name = entity["metric"]
            metrics[name] = self._value(entity, name, raw)
            if entity.get("unit"):
                out.units[name] = entity["unit"]
        if not metrics:
            raise Rejected("no_readings", f"no discovered entity of {topic[:100]!r} found its value in the payload")
        out.records.append((None, 0, metrics))
        return out

    def _value(self, entity: dict[str, Any], name: str, raw: Any) -> Any:
        component = entity["component"]
        if component in ("binary_sensor", "switch"):
            word = raw if isinstance(raw, str) else str(raw)
            if word == entity["on"]:
                return True
            if word == entity["off"]:
                return False
            raise Rejected("unmapped_value", f"{name}: {word[:40]!r} is neither {entity['on']!r} nor {entity['off']!r}")
        if isinstance(raw, str) and component in ("sensor", "number"):
            try:
                number = float(raw)
            except ValueError:
                if component == "number" or entity.get("unit"):
                    raise Rejected("wrong_type", f"{name}: {raw[:40]!r} is not a number") from None
                return check_value(name, raw)
            return check_value(name, number)
        return check_value(name, raw if isinstance(raw, (bool, int, float, str)) else str(raw))

    def _config(self, prefix: str, topic: str, levels: list[str], payload: bytes, state: dict[str, Any]) -> Decoded:
        component, object_id = levels[1], levels[-2]
        topics: dict[str, dict[str, Any]] = state.setdefault("topics", {})
        out = Decoded(state_changed=True)
        for entities in topics.values():  # a config replaces what the same config topic said before
            entities.pop(topic, None)
        for empty in [key for key, entities in topics.items() if not entities]:
            del topics[empty]
        if not payload.strip():
            return out  # an empty config removes the entity
        config = parse_json(payload)
        if type(config) is not dict:
            raise Rejected("invalid_payload", "a discovery config is a JSON object")
        config = _expanded(config)
        if component in STATELESS_COMPONENTS:
            return out
        if component not in STORED_COMPONENTS:
            raise Rejected(
                "component_unsupported",
                f"component {component[:40]!r} is not stored (stored: {', '.join(STORED_COMPONENTS)})",
            )
        state_topic = config.get("state_topic")
        if not isinstance(state_topic, str) or not state_topic.startswith(prefix + "/"):
            raise Rejected("undeclared_state_topic", f"state_topic {str(state_topic)[:120]!r} is not below {prefix}/")
        suffix = state_topic[len(prefix) + 1 :]
        if not any(_matches(form, suffix.split("/")) for form in self.state_forms):
            allowed = ", ".join("/".join(form) for form in self.state_forms)
            raise Rejected(
                "undeclared_state_topic",
                f"state_topic {state_topic[:120]!r} is not one of this profile's forms ({allowed}): the broker "
                "refuses it",
            )
        template = config.get("value_template")
        if template is not None:
            if not isinstance(template, str):
                raise Rejected("template_unsupported", "value_template must be a text")
            parse_template(template)
        unit = config.get("unit_of_measurement")
        payload_on = config.get("state_on", config.get("payload_on", "ON"))
        payload_off = config.get("state_off", config.get("payload_off", "OFF"))
        entity = {
            "component": component,
            "metric": metric_name(str(config.get("object_id") or object_id)),
            "unit": unit[:32] if isinstance(unit, str) and unit else None,
            "device_class": config.get("device_class") if isinstance(config.get("device_class"), str) else None,
            "template": template,
            "on": str(payload_on),
            "off": str(payload_off),
        }
        topics.setdefault(suffix, {})[topic] = entity
        return out


def _matches(form: list[str], levels: list[str]) -> bool:
    return len(form) == len(levels) and all(want in ("+", got) for want, got in zip(form, levels, strict=True))
