"""Device profiles' decoders: a device's own payloads into the readings the native format would give.

A profile is declarative: which topic forms below the device prefix carry data and, per form, where
the timestamp is (or receipt time), which paths become which metrics with their unit, scale, offset
and value map, which objects are flattened into one metric per leaf, which array holds one reading
per element, which values mean online or offline. Paths are JMESPath, compiled once per profile (a
plain chain of keys and indexes is read directly, the rest by jmespath's interpreter). No tenant code
runs: the spec is data, validated when it is saved.

Two built-in kinds decode what a spec cannot say: Home Assistant discovery (its `config` messages
announce each entity's state topic, unit and value template, remembered per device) and Sparkplug B
(shared/ingest/sparkplug/decoder.py). Every decoder answers the same Decoded record, or raises
Rejected with a reason and a detail that names what did not match, so the message becomes a dead
letter carrying the profile's name. Nothing here does I/O.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import from_json

from shared.broker.contract import (
    MAX_PROFILE_FORMS,
    METRIC_NAME_PATTERN,
    validate_profile_form,
)
from shared.ingest.validation import MAX_TEXT_VALUE, Rejected

_METRIC_RE = re.compile(METRIC_NAME_PATTERN)
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
UNIT_MAX = 32

Value = bool | int | float | str


# -- what a decoder answers ------------------------------------------------------------------------


@dataclass(slots=True)
class Decoded:
    """What one message says: readings as (ts_us or None for receipt time, seq, metrics), units per
    metric, the device's presence if it said so, and for stateful decoders what changed."""

    records: list[tuple[int | None, int, dict[str, Value]]] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)
    status: Literal["online", "offline"] | None = None
    state_changed: bool = False
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    rebirth: bool = False  # a Sparkplug node should be asked to send its births again

    @property
    def empty(self) -> bool:
        return not self.records and self.status is None and not self.state_changed


class Decoder(Protocol):
    """A compiled profile. prefix is the device's t/{tenant}/d/{device}; topic is below it (for
    Sparkplug: the message type and sub-device); state is the device's decoder state, which a stateful
    decoder updates in place; received_us is when the drain read the message."""

    name: str
    stateful: bool  # whether decode() reads and updates the device's decoder state

    def decode(self, prefix: str, topic: str, payload: bytes, state: dict[str, Any], received_us: int) -> Decoded: ...


def metric_name(raw: str) -> str:
    """A generated name (a flattened key, a Sparkplug metric, a discovery object id) as a metric name:
    characters a name may not hold become '_'; one that is still not a name is rejected."""
    name = _UNSAFE_NAME_CHARS.sub("_", raw)
    if name[:1] in ("-", "."):
        name = "_" + name[1:]
    if not _METRIC_RE.match(name):
        raise Rejected("bad_metric_name", f"{raw[:80]!r} cannot be a metric name (at most 64 characters)")
    return name


def check_value(name: str, value: object) -> Value:
    """A decoded value as the native path would accept it."""
    kind = type(value)
    if kind is bool or kind is int:
        return value  # type: ignore[return-value]
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise Rejected("non_finite_value", f"{name}: NaN and Infinity cannot be stored")
        return value  # type: ignore[return-value]
    if kind is str:
        if len(value) > MAX_TEXT_VALUE:  # type: ignore[arg-type]
            raise Rejected("wrong_type", f"{name}: a text value is at most {MAX_TEXT_VALUE} characters")
        return value  # type: ignore[return-value]
    raise Rejected("wrong_type", f"{name}: {type(value).__name__} is not a number, true/false or text")


def parse_json(payload: bytes) -> Any:
    try:
        return from_json(payload, allow_inf_nan=False)
    except ValueError as exc:
        raise Rejected("invalid_json", str(exc)[:300]) from None


# -- paths -----------------------------------------------------------------------------------------

Getter = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


def _key_chain(node: Mapping[str, Any]) -> list[str | int] | None:
    """The keys and indexes of a path that is only fields, sub-expressions and indexes; else None."""
    kind = node.get("type")
    if kind == "field":
        return [node["value"]]
    if kind == "subexpression":
        left, right = (_key_chain(child) for child in node["children"])
        return None if left is None or right is None else left + right
    if kind == "index_expression":
        left_node, index = node["children"]
        left = _key_chain(left_node) if left_node.get("type") != "identity" else []
        if left is None or index.get("type") != "index":
            return None
        return [*left, int(index["value"])]
    return None


def _chain_getter(keys: list[str | int]) -> Getter:
    def get(value: Any) -> Any:
        for key in keys:
            if isinstance(key, str):
                if type(value) is not dict:
                    return None
                value = value.get(key)
            else:
                if type(value) is not list or not -len(value) <= key < len(value):
                    return None
                value = value[key]
        return value

    return get


def _condition(node: Mapping[str, Any]) -> Getter | None:
    """A condition of comparisons of a key chain with a literal (==, !=) joined by || and &&, read
    directly; None for anything else (jmespath's interpreter then evaluates it)."""
    kind = node.get("type")
    if kind in ("or_expression", "and_expression"):
        left, right = (_condition(child) for child in node["children"])
        if left is None or right is None:
            return None
        if kind == "or_expression":
            return lambda value: left(value) or right(value)
        return lambda value: left(value) and right(value)
    if kind == "comparator" and node.get("value") in ("eq", "ne"):
        chain_node, literal = node["children"]
        keys = _key_chain(chain_node)
        if keys is None or literal.get("type") != "literal":
            return None
        get, wanted, equal = _chain_getter(keys), literal["value"], node["value"] == "eq"
        return lambda value: (get(value) == wanted) is equal
    return None


@lru_cache(maxsize=4096)
def compile_path(expression: str) -> Getter:
    """A JMESPath expression as a function of the payload; '@' is the payload itself."""
    if expression.strip() == "@":
        return _identity
    try:
        parsed = jmespath.compile(expression)
    except JMESPathError as exc:
        raise ValueError(f"path {expression!r} is not valid JMESPath: {exc}") from None
    keys = _key_chain(parsed.parsed)
    if keys is not None:
        return _chain_getter(keys)
    return _condition(parsed.parsed) or parsed.search


# -- the spec --------------------------------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Path = Annotated[str, Field(min_length=1, max_length=300)]
MappedValue = bool | float | Annotated[str, Field(max_length=MAX_TEXT_VALUE)]


class TimestampSpec(_Spec):
    path: Path = Field(description="Where the time is; a message without it gets its receipt time.")
    format: Literal["iso8601", "epoch_s", "epoch_ms"] = Field(
        "iso8601", description="iso8601: RFC 3339 or ISO 8601 (a time without offset is in the profile's timezone)."
    )


class UnitFromPayload(_Spec):
    path: Path
    map: dict[str, Annotated[str, Field(max_length=UNIT_MAX)]] = Field(default_factory=dict)


Unit = Annotated[str, Field(max_length=UNIT_MAX)] | UnitFromPayload


class ValueRules(_Spec):
    type: Literal["auto", "number", "bool", "text"] = Field(
        "auto", description="auto keeps JSON's type (and reads a number from a text payload)."
    )
    scale: float = Field(1.0, description="A number is stored as value * scale + offset (4-20 mA to bar).")
    offset: float = 0.0
    map: dict[str, MappedValue] | None = Field(
        None, description='Values to what is stored: {"ON": true, "OFF": false}, state words to states.'
    )
    unmapped: Literal["reject", "keep"] = Field("reject", description="A value the map does not name.")

    @model_validator(mode="after")
    def _finite(self) -> ValueRules:
        if not (math.isfinite(self.scale) and math.isfinite(self.offset)):
            raise ValueError("scale and offset must be finite numbers")
        return self


class MetricSpec(ValueRules):
    path: Path
    name: str = Field(max_length=64, description="The metric; {1}, {2} stand for the values of the form's '+' levels.")
    unit: Unit | None = None
    required: bool = Field(False, description="A message without this value is rejected (else the metric is skipped).")


class FlattenSpec(ValueRules):
    path: Path = Field(description="An object: every leaf below it becomes a metric named by its keys joined by '.'.")
    prefix: str = Field("", max_length=40, description="Put before each name; may use {1}, {2}.")
    include: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=lambda: ["*"], max_length=50)
    exclude: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=list, max_length=50)
    units: dict[Annotated[str, Field(max_length=100)], Unit] = Field(
        default_factory=dict, description="Glob of a leaf's key path to its unit."
    )


class StatusSpec(_Spec):
    path: Path = "@"
    online: list[str | bool] = Field(min_length=1, max_length=8)
    offline: list[str | bool] = Field(min_length=1, max_length=8)


class FormSpec(_Spec):
    topic: str = Field(description="Below the device prefix, '+' for one level: tele/SENSOR, status/+.")
    payload: Literal["json", "text"] = "json"
    when: Path | None = Field(
        None, description="A JMESPath condition: a topic's first form whose condition holds decodes it."
    )
    records: Path | None = Field(None, description="An array: each element is one reading, paths relative to it.")
    timestamp: TimestampSpec | None = None
    seq: Path | None = None
    metrics: list[MetricSpec] = Field(default_factory=list, max_length=100)
    flatten: list[FlattenSpec] = Field(default_factory=list, max_length=10)
    status: StatusSpec | None = None

    @field_validator("topic")
    @classmethod
    def _form(cls, topic: str) -> str:
        return validate_profile_form(topic)

    @model_validator(mode="after")
    def _says_something(self) -> FormSpec:
        if not (self.metrics or self.flatten or self.status):
            raise ValueError(f"form {self.topic!r} maps nothing: give metrics, flatten or status")
        if self.payload == "text" and (self.records or self.flatten or self.when):
            raise ValueError(f"form {self.topic!r}: a text payload has no records, flatten or when")
        captures = self.topic.split("/").count("+")
        for template in [m.name for m in self.metrics] + [f.prefix for f in self.flatten]:
            for index in re.findall(r"\{(\d+)\}", template):
                if not 1 <= int(index) <= captures:
                    raise ValueError(f"form {self.topic!r}: {{{index}}} names no '+' level of the topic")
        return self


class ProfileSpec(_Spec):
    """A tenant's profile (kind json), also the built-in tasmota and shelly-gen2."""

    kind: Literal["json"] = "json"
    timezone: str = Field("UTC", max_length=64, description="For timestamps without an offset.")
    forms: list[FormSpec] = Field(min_length=1, max_length=MAX_PROFILE_FORMS)
    subscribe: list[str] = Field(
        default_factory=list, max_length=MAX_PROFILE_FORMS, description="Forms the device subscribes to."
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r} (an IANA name such as Asia/Jakarta)") from None
        return zone

    @field_validator("subscribe")
    @classmethod
    def _listens(cls, forms: list[str]) -> list[str]:
        return [validate_profile_form(form, subscribe=True) for form in forms]

    @property
    def publish_forms(self) -> list[str]:
        return list(dict.fromkeys(form.topic for form in self.forms))


# -- the json decoder ------------------------------------------------------------------------------


def _canonical(value: object) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value if isinstance(value, str) else repr(value)


class _Value:
    """A compiled ValueRules: a raw JSON value to what is stored."""

    def __init__(self, rules: ValueRules) -> None:
        self.type = rules.type
        self.scale, self.offset = rules.scale, rules.offset
        self.linear = rules.scale != 1.0 or rules.offset != 0.0
        self.map = None if rules.map is None else dict(rules.map)
        self.keep_unmapped = rules.unmapped == "keep"

    def convert(self, name: str, raw: Any, text_payload: bool) -> Value:
        if self.map is not None:
            key = _canonical(raw)
            if key in self.map:
                return check_value(name, self.map[key])
            if not self.keep_unmapped:
                known = ", ".join(list(self.map)[:8])
                raise Rejected("unmapped_value", f"{name}: value {key[:40]!r} is not in the profile's map ({known})")
        kind = type(raw)
        if self.type == "text":
            return check_value(name, raw if kind is str else _canonical(raw))
        if self.type == "bool":
            if kind is not bool:
                raise Rejected("wrong_type", f"{name}: expected true or false, got {_canonical(raw)[:40]!r}")
            return raw  # type: ignore[no-any-return]
        if kind is str and (self.type == "number" or text_payload):
            try:
                raw = float(raw)
                kind = float
            except ValueError:
                if self.type == "number":
                    raise Rejected("wrong_type", f"{name}: {raw[:40]!r} is not a number") from None
        if kind is int or kind is float:
            if self.linear:
                raw = raw * self.scale + self.offset
            return check_value(name, raw)
        if self.type == "number":
            raise Rejected("wrong_type", f"{name}: expected a number, got {_canonical(raw)[:40]!r}")
        return check_value(name, raw)


def _unit_getter(unit: Unit | None) -> Callable[[Any], str | None]:
    if unit is None or isinstance(unit, str):
        return lambda _: unit
    get, mapping = compile_path(unit.path), unit.map

    def read(payload: Any) -> str | None:
        raw = get(payload)
        if not isinstance(raw, str):
            return None
        return mapping.get(raw, raw)[:UNIT_MAX]

    return read


class _Metric:
    def __init__(self, spec: MetricSpec) -> None:
        self.get = compile_path(spec.path)
        self.template = spec.name
        self.static_name = None if "{" in spec.name else spec.name
        if self.static_name is not None and not _METRIC_RE.match(self.static_name):
            raise ValueError(f"metric name {spec.name!r} must match {METRIC_NAME_PATTERN}")
        self.value = _Value(spec)
        self.unit = _unit_getter(spec.unit)
        self.required = spec.required
        self.path = spec.path


class _Flatten:
    def __init__(self, spec: FlattenSpec) -> None:
        self.get = compile_path(spec.path)
        self.prefix = spec.prefix
        self.value = _Value(spec)
        self.include = re.compile("|".join(fnmatch.translate(p) for p in spec.include) or "(?!)")
        self.exclude = re.compile("|".join(fnmatch.translate(p) for p in spec.exclude) or "(?!)")
        self.units = [(re.compile(fnmatch.translate(glob)), _unit_getter(unit)) for glob, unit in spec.units.items()]
        # key path -> (metric name without prefix, unit reader) or None when excluded; keys repeat
        # from message to message, so each is judged once.
        self._keys: dict[str, tuple[str, Callable[[Any], str | None] | None] | None] = {}

    def leaves(self, node: Any, path: str = "") -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        items = node.items() if type(node) is dict else enumerate(node) if type(node) is list else ()
        for key, child in items:
            where = f"{path}.{key}" if path else str(key)
            if type(child) is dict or type(child) is list:
                out.extend(self.leaves(child, where))
            elif child is not None:
                out.append((where, child))
        return out

    def judged(self, key: str) -> tuple[str, Callable[[Any], str | None] | None] | None:
        if key not in self._keys:
            if len(self._keys) > 10_000:
                self._keys.clear()
            wanted = self.include.match(key) is not None and self.exclude.match(key) is None
            unit = next((reader for glob, reader in self.units if glob.match(key)), None)
            # The name as it is stored without a prefix (a prefix, from the topic, is added per message).
            self._keys[key] = (metric_name(key), unit) if wanted else None
        return self._keys[key]


class _Form:
    def __init__(self, spec: FormSpec, zone: ZoneInfo) -> None:
        self.levels = spec.topic.split("/")
        self.text = spec.payload == "text"
        self.when = None if spec.when is None else compile_path(spec.when)
        self.records = None if spec.records is None else compile_path(spec.records)
        self.ts = None if spec.timestamp is None else compile_path(spec.timestamp.path)
        self.ts_format = "iso8601" if spec.timestamp is None else spec.timestamp.format
        self.seq = None if spec.seq is None else compile_path(spec.seq)
        self.metrics = [_Metric(m) for m in spec.metrics]
        self.flatten = [_Flatten(f) for f in spec.flatten]
        self.status = spec.status
        self.status_get = compile_path(spec.status.path) if spec.status else None
        self.zone = zone
        self.topic = spec.topic

    def captures(self, levels: list[str]) -> list[str] | None:
        if len(levels) != len(self.levels):
            return None
        captured = []
        for want, got in zip(self.levels, levels, strict=True):
            if want == "+":
                captured.append(got)
            elif want != got:
                return None
        return captured

    def timestamp(self, record: Any) -> int | None:
        if self.ts is None:
            return None
        raw = self.ts(record)
        if raw is None:
            return None
        return _timestamp_us(raw, self.ts_format, self.zone)

    def decode(self, payload: Any, captures: list[str], out: Decoded) -> None:
        if self.status is not None and self.status_get is not None:
            said = self.status_get(payload)
            if said in self.status.online:
                out.status = "online"
            elif said in self.status.offline:
                out.status = "offline"
            else:
                raise Rejected("bad_status", f"status {_canonical(said)[:40]!r} is neither online nor offline here")
        if not (self.metrics or self.flatten):
            return
        records = [payload] if self.records is None else self.records(payload)
        if type(records) is not list:
            raise Rejected("invalid_payload", f"records: no array at {self.topic!r}'s records path")
        for record in records:
            metrics: dict[str, Value] = {}
            for metric in self.metrics:
                raw = metric.get(record)
                if raw is None:
                    if metric.required:
                        raise Rejected("invalid_payload", f"{metric.template}: nothing at path {metric.path!r}")
                    continue
                name = metric.static_name or metric_name(metric.template.format("", *captures))
                if type(raw) is dict or type(raw) is list:
                    raise Rejected("wrong_type", f"{name}: path {metric.path!r} holds an object or array")
                metrics[name] = metric.value.convert(name, raw, self.text)
                unit = metric.unit(payload)
                if unit:
                    out.units[name] = unit
            for flat in self.flatten:
                node = flat.get(record)
                if node is None:
                    continue
                prefix = flat.prefix.format("", *captures) if flat.prefix else ""
                for key, raw in flat.leaves(node):
                    judged = flat.judged(key)
                    if judged is None:
                        continue
                    name = judged[0] if not prefix else metric_name(prefix + key)
                    metrics[name] = flat.value.convert(name, raw, self.text)
                    if judged[1] is not None and (unit := judged[1](payload)):
                        out.units[name] = unit
            if metrics:
                seq = 0
                if self.seq is not None:
                    raw_seq = self.seq(record)
                    if raw_seq is not None:
                        if type(raw_seq) is not int or not 0 <= raw_seq < 2**63:
                            raise Rejected("wrong_type", "seq: must be an integer >= 0")
                        seq = raw_seq
                out.records.append((self.timestamp(record), seq, metrics))


def _timestamp_us(raw: Any, fmt: str, zone: ZoneInfo) -> int:
    if fmt == "iso8601":
        if not isinstance(raw, str):
            raise Rejected("bad_timestamp", f"timestamp {_canonical(raw)[:40]!r} is not an ISO 8601 text")
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise Rejected("bad_timestamp", f"timestamp {raw[:40]!r} is not ISO 8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=zone)
        delta = parsed.astimezone(UTC) - _EPOCH
        return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    if type(raw) not in (int, float) or not math.isfinite(raw):
        raise Rejected("bad_timestamp", f"timestamp {_canonical(raw)[:40]!r} is not a number")
    return int(raw * (1_000_000 if fmt == "epoch_s" else 1000))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class JsonDecoder:
    """A ProfileSpec compiled: forms by their topic, tried in order."""

    stateful = False

    def __init__(self, name: str, spec: ProfileSpec) -> None:
        self.name = name
        self.spec = spec
        zone = ZoneInfo(spec.timezone)
        self.forms = [_Form(form, zone) for form in spec.forms]
        self._by_topic: dict[str, list[tuple[_Form, list[str]]]] = {}

    def _candidates(self, topic: str) -> list[tuple[_Form, list[str]]]:
        found = self._by_topic.get(topic)
        if found is None:
            levels = topic.split("/")
            found = [(form, c) for form in self.forms if (c := form.captures(levels)) is not None]
            if len(self._by_topic) < 10_000:
                self._by_topic[topic] = found
        return found

    def decode(self, prefix: str, topic: str, payload: bytes, state: dict[str, Any], received_us: int) -> Decoded:
        candidates = self._candidates(topic)
        if not candidates:
            raise Rejected("bad_topic", f"{topic[:100]!r} is not a form of profile {self.name!r}")
        parsed: Any = payload.decode("utf-8", errors="replace").strip() if candidates[0][0].text else None
        for form, captures in candidates:
            if not form.text and parsed is None:
                parsed = parse_json(payload)
            if form.when is not None and not form.when(parsed):
                continue
            out = Decoded()
            form.decode(parsed, captures, out)
            if out.empty:
                raise Rejected("no_readings", f"none of form {form.topic!r}'s paths found a value in the payload")
            return out
        raise Rejected("no_matching_form", f"no form of profile {self.name!r} for {topic[:100]!r} matches the payload")


def compile_spec(name: str, spec: Mapping[str, Any] | ProfileSpec) -> JsonDecoder:
    """A profile spec (as stored) compiled; ValueError (pydantic's ValidationError) when invalid."""
    model = spec if isinstance(spec, ProfileSpec) else ProfileSpec.model_validate(spec)
    return JsonDecoder(name, model)
