"""Topics and payloads devices publish, and their validation.

Topics (tenant slug, device name):
    t/{tenant}/d/{device}/telemetry      {"ts": ..., "seq": ..., "metrics": {...}} or a list of them
    t/{tenant}/d/{device}/status         online | offline  (plain text, or {"status": "online"})
    t/{tenant}/d/{device}/{entity}/state {"value": 85.5, "unit": "C", "timestamp": ...}

Validation runs in pydantic-core (Rust): one validate_json call parses and checks a whole
payload, which is several times cheaper per message than json.loads plus Python checks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Literal, NotRequired

from pydantic import Field, StrictBool, StrictInt, StringConstraints, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from shared.broker.contract import (
    DEVICE_NAME_PATTERN,
    DEVICE_PUBLISH_FORMS,
    METRIC_NAME_PATTERN,
    TENANT_SLUG_PATTERN,
)

MAX_TEXT_VALUE = 256
_NATIVE_TOPICS = ", ".join(f"t/{{tenant}}/d/{{device}}/{form}" for form in DEVICE_PUBLISH_FORMS)

MetricName = Annotated[str, StringConstraints(pattern=METRIC_NAME_PATTERN)]
NumberValue = Annotated[float, Field(allow_inf_nan=False)]
TextValue = Annotated[str, StringConstraints(max_length=MAX_TEXT_VALUE)]
# StrictBool first: JSON true stays a boolean instead of becoming 1.0.
MetricValue = StrictBool | StrictInt | NumberValue | TextValue
Timestamp = StrictInt | NumberValue | str | None


class Reading(TypedDict):
    ts: NotRequired[Timestamp]
    seq: NotRequired[Annotated[int, Field(strict=True, ge=0, lt=2**63)] | None]
    device: NotRequired[str]
    metrics: dict[MetricName, MetricValue]


class StateMessage(TypedDict):
    value: MetricValue
    unit: NotRequired[str | None]
    timestamp: NotRequired[Timestamp]
    ts: NotRequired[Timestamp]


class StatusObject(TypedDict):
    status: Literal["online", "offline"]


@dataclass(frozen=True, slots=True)
class Topic:
    kind: Literal["telemetry", "status", "state"]
    tenant: str
    device: str
    entity: str | None = None


class Rejected(Exception):
    """A message that cannot be stored; reason is a stable code, detail says what to fix."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@lru_cache(maxsize=65536)
def parse_topic(topic: str) -> Topic:
    parts = topic.split("/")
    if len(parts) in (5, 6) and parts[0] == "t" and parts[2] == "d":
        kind = parts[4] if len(parts) == 5 else parts[5]
        entity = parts[4] if len(parts) == 6 else None
        if (len(parts) == 5 and kind in ("telemetry", "status")) or (len(parts) == 6 and kind == "state"):
            _check_name(parts[1], TENANT_SLUG_PATTERN, "tenant")
            _check_name(parts[3], DEVICE_NAME_PATTERN, "device")
            if entity is not None:
                _check_name(entity, METRIC_NAME_PATTERN, "entity")
            return Topic(kind, parts[1], parts[3], entity)  # type: ignore[arg-type]
    raise Rejected("bad_topic", f"topic {topic[:200]!r} is not one of {_NATIVE_TOPICS} nor a form of its profile")


def _check_name(value: str, pattern: str, what: str) -> None:
    if not re.match(pattern, value):
        raise Rejected("bad_topic", f"{what} {value[:100]!r} in the topic does not match {pattern}")


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int = 65536
    max_metrics: int = 100
    max_records: int = 1000


@lru_cache(maxsize=8)
def _telemetry_adapter(max_metrics: int, max_records: int) -> TypeAdapter[Reading | list[Reading]]:
    """Validates one reading or a list of them, with the limits as constraints. The functional
    TypedDict form evaluates the field types here, where max_metrics is in scope (class syntax
    would leave them as strings for pydantic to resolve); pydantic names the type BoundedReading
    in error locations, which _rejection drops. Its values have Reading's shape."""
    BoundedReading = TypedDict(  # noqa: UP013 - see the docstring
        "BoundedReading",
        {
            "ts": NotRequired[Timestamp],
            "seq": NotRequired[Annotated[int, Field(strict=True, ge=0, lt=2**63)] | None],
            "device": NotRequired[str],
            "metrics": Annotated[dict[MetricName, MetricValue], Field(min_length=1, max_length=max_metrics)],
        },
    )
    return TypeAdapter(BoundedReading | Annotated[list[BoundedReading], Field(min_length=1, max_length=max_records)])


_STATE = TypeAdapter(StateMessage)
StatusPayload = Literal["online", "offline"] | StatusObject
_STATUS: TypeAdapter[StatusPayload] = TypeAdapter(StatusPayload)


def validate_telemetry(payload: bytes, limits: Limits) -> list[Reading]:
    _check_size(payload, limits)
    if b'"metrics"' not in payload and b'"value"' in payload:
        raise Rejected("topic_payload_mismatch", 'a state payload ({"value": ...}) was sent to a telemetry topic')
    try:
        result = _telemetry_adapter(limits.max_metrics, limits.max_records).validate_json(payload)
    except ValidationError as exc:
        raise _rejection(exc, limits, payload) from None
    return result if isinstance(result, list) else [result]


def validate_state(payload: bytes, limits: Limits) -> StateMessage:
    _check_size(payload, limits)
    if b'"metrics"' in payload:
        raise Rejected("topic_payload_mismatch", 'a telemetry payload ({"metrics": ...}) was sent to a state topic')
    try:
        return _STATE.validate_json(payload)
    except ValidationError as exc:
        raise _rejection(exc, limits, payload) from None


def validate_status(payload: bytes, limits: Limits) -> Literal["online", "offline"]:
    _check_size(payload, limits)
    text = payload.strip()
    if text in (b"online", b"offline"):
        return text.decode()  # type: ignore[return-value]
    try:
        parsed = _STATUS.validate_json(payload)
    except ValidationError:
        raise Rejected(
            "bad_status", "status must be 'online' or 'offline' (plain, JSON string or {\"status\": ...})"
        ) from None
    return parsed if isinstance(parsed, str) else parsed["status"]


def _check_size(payload: bytes, limits: Limits) -> None:
    if len(payload) > limits.max_payload_bytes:
        raise Rejected("oversized", f"payload is {len(payload)} bytes; the limit is {limits.max_payload_bytes}")


_VALUE_BRANCHES = {"bool", "int", "float", "str"}


def _rejection(exc: ValidationError, limits: Limits, payload: bytes = b"") -> Rejected:
    """Turns pydantic's errors into one stable reason code and a short, useful detail."""
    errors = exc.errors(include_url=False, include_input=False)
    # A union reports one error per branch: keep the branch that matches the payload's shape
    # (a list or one reading), and drop the names pydantic gives the branches.
    is_list = payload.lstrip()[:1] == b"["
    kept = [e for e in errors if not e["loc"] or str(e["loc"][0]).startswith("list[") == is_list] or errors
    types = {e["type"] for e in kept}
    error = max(kept, key=lambda e: len(e["loc"]))
    loc = [str(p) for p in error["loc"] if not str(p).startswith(("BoundedReading", "list["))]
    if loc and loc[-1] in _VALUE_BRANCHES:
        loc.pop()
    where = ".".join(loc)
    if types & {"json_invalid", "json_type"}:
        return Rejected("invalid_json", error["msg"])
    if "finite_number" in types:
        return Rejected("non_finite_value", f"{where}: NaN and Infinity cannot be stored")
    if "string_pattern_mismatch" in types and "metrics" in loc:
        return Rejected("bad_metric_name", f"metric names must match {METRIC_NAME_PATTERN}")
    if error["type"] == "too_long" and loc[-1:] == ["metrics"]:
        return Rejected("too_many_metrics", f"at most {limits.max_metrics} metrics per reading")
    if error["type"] == "too_long" and not loc:
        return Rejected("too_many_records", f"at most {limits.max_records} readings per message")
    if error["type"] in ("too_short", "missing"):
        return Rejected("invalid_payload", f"{where}: {error['msg']}" if where else error["msg"])
    if len(loc) >= 2 and loc[-2] == "metrics" or loc[:1] == ["value"]:
        return Rejected(
            "wrong_type",
            f"{where}: a value must be a number, true/false or a string of at most {MAX_TEXT_VALUE} characters",
        )
    return Rejected("wrong_type", f"{where}: {error['msg']}" if where else error["msg"])


def timestamp_us(value: Timestamp, what: str = "ts") -> int | None:
    """Epoch microseconds from epoch milliseconds (int or float) or an RFC 3339 string."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise Rejected("bad_timestamp", f"{what} {value[:64]!r} is not RFC 3339 or epoch milliseconds") from None
        if parsed.tzinfo is None:
            raise Rejected("bad_timestamp", f"{what} {value[:64]!r} has no time zone offset")
        return int(parsed.timestamp()) * 1_000_000 + parsed.microsecond
    if isinstance(value, float) and not math.isfinite(value):
        raise Rejected("non_finite_value", f"{what} is not finite")
    return int(value * 1000)
