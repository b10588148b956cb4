"""Validation of a batch, pure: each message becomes COPY lines for the readings it carries, or a dead
letter with its reason; nothing is written here (shared/ingest/store.py writes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shared.ingest.messages import (
    DeadLetter,
    DeviceRef,
    InboundMessage,
    MessageSpan,
    PreparedBatch,
    Presence,
    TenantCounts,
    TimeWindow,
)
from shared.ingest.validation import (
    Limits,
    Reading,
    Rejected,
    parse_topic,
    timestamp_us,
    validate_state,
    validate_status,
    validate_telemetry,
)

UNIT_MAX_CHARS = 32  # device_metrics.unit's CHECK; a longer unit is cut, not a reason to lose the reading
_MAX_DOUBLE = 1.7976931348623157e308
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


class Devices(Protocol):
    """Topic names to devices (shared/ingest/store.py's DeviceDirectory, looked up before the batch)."""

    def get(self, tenant: str, device: str) -> DeviceRef | None: ...


def topic_keys(messages: Sequence[InboundMessage]) -> set[tuple[str, str]]:
    keys: set[tuple[str, str]] = set()
    for message in messages:
        try:
            topic = parse_topic(message.topic)
        except Rejected:
            continue  # prepare_batch dead-letters it
        keys.add((topic.tenant, topic.device))
    return keys


def prepare_batch(
    messages: Sequence[InboundMessage],
    directory: Devices,
    limits: Limits,
    window: TimeWindow,
    now_us: int,
) -> PreparedBatch:
    """Validates every message; the valid ones become COPY lines, the others dead letters."""
    batch = PreparedBatch()
    lines = batch.copy_lines
    oldest: int | None = None
    earliest_us = now_us - window.max_past_s * 1_000_000
    latest_us = now_us + window.max_future_s * 1_000_000
    for index, message in enumerate(messages):
        if message.retained and not message.payload:
            continue  # a retained copy being deleted (by its device, or by a drain): no data
        device: DeviceRef | None = None
        try:
            topic = parse_topic(message.topic)
            device = directory.get(topic.tenant, topic.device)
            if device is None:
                raise Rejected("unknown_device", f"no device {topic.device!r} in tenant {topic.tenant!r}")
            if not device.enabled:
                raise Rejected("device_disabled", f"device {topic.device!r} is disabled")
            key = (device.tenant_id, device.device_id)
            if topic.kind == "status":
                status = validate_status(message.payload, limits)
                _note_presence(batch.presence, key, now_us, status)
                continue
            readings: list[Reading]
            if topic.kind == "state":
                state = validate_state(message.payload, limits)
                stamp = state.get("timestamp", state.get("ts"))
                # parse_topic sets entity on every state topic.
                readings = [{"ts": stamp, "metrics": {topic.entity: state["value"]}}]  # type: ignore[dict-item]
            else:
                readings = validate_telemetry(message.payload, limits)
            prefix = f"{device.tenant_id}\t{device.device_id}\t"
            message_lines: list[str] = []
            newest: int | None = None
            for reading in readings:
                named = reading.get("device")
                if named is not None and named != topic.device:
                    raise Rejected(
                        "topic_payload_mismatch",
                        f"payload names device {named[:64]!r} but the topic is {topic.device!r}",
                    )
                ts = timestamp_us(reading.get("ts"))
                if ts is None:
                    ts = message.received_at_us
                elif ts < earliest_us:
                    raise Rejected("ts_too_old", _too_old_detail(reading.get("ts"), window))
                elif ts > latest_us:
                    raise Rejected("ts_in_future", f"ts is more than {window.max_future_s} s ahead of the server clock")
                if newest is None or ts > newest:
                    newest = ts
                if oldest is None or ts < oldest:
                    oldest = ts
                tail = f"\t{ts}\t{reading.get('seq') or 0}\t"
                for name, value in reading["metrics"].items():
                    message_lines.append(prefix + name + tail + _copy_value(name, value))
            start = len(lines)
            lines.extend(message_lines)
            batch.spans.append(MessageSpan(index, start, len(lines)))
            counts = batch.tenant_counts.setdefault(device.tenant_id, TenantCounts())
            counts.messages += 1
            counts.readings += len(message_lines)
            if topic.kind == "state" and (unit := _unit(state.get("unit"))):
                batch.units[(device.tenant_id, device.device_id, topic.entity)] = unit  # type: ignore[index]
            # Validation lets no message through without a reading, so newest is set.
            _note_presence(batch.presence, key, min(newest, now_us), "online")  # type: ignore[type-var, arg-type]
        except Rejected as rejection:
            batch.dead_letters.append(
                DeadLetter(message.topic, rejection.reason, rejection.detail, message.payload, device)
            )
            if device is not None:
                batch.tenant_counts.setdefault(device.tenant_id, TenantCounts()).dead_lettered += 1
    batch.oldest_ts_us = oldest
    return batch


def _copy_value(name: str, value: object) -> str:
    """One value as the last three COPY columns: value, value_bool, value_text."""
    kind = type(value)
    if kind is float:
        return f"{value!r}\t\\N\t\\N\n"
    if kind is bool:
        return "\\N\tt\t\\N\n" if value else "\\N\tf\t\\N\n"
    if kind is int:
        if not -_MAX_DOUBLE < value < _MAX_DOUBLE:  # type: ignore[operator]
            raise Rejected("non_finite_value", f"metrics.{name}: the number is out of range")
        return f"{value}\t\\N\t\\N\n"
    text = str(value)
    if "\x00" in text:
        raise Rejected("wrong_type", f"metrics.{name}: strings cannot contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected("wrong_type", f"metrics.{name}: the string is not valid Unicode") from None
    return f"\\N\t\\N\t{text.translate(_COPY_ESCAPES)}\n"


def _unit(raw: str | None) -> str | None:
    """A unit as device_metrics can hold it: at most UNIT_MAX_CHARS, no NUL, valid Unicode. One the
    database would refuse must not fail the batch's other messages (they share the statement), so a
    bad unit is dropped and the reading kept."""
    if not raw:
        return None
    unit = raw.replace("\x00", "")[:UNIT_MAX_CHARS]
    try:
        unit.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return unit or None


def _note_presence(presence: dict[tuple[str, int], Presence], key: tuple[str, int], seen_us: int, status: str) -> None:
    entry = presence.get(key)
    if entry is None:
        presence[key] = Presence(seen_us, status)
    else:
        entry.last_seen_us = max(entry.last_seen_us, seen_us)
        entry.status = status  # messages arrive in order: the last one says what the device is now


def _too_old_detail(raw: object, window: TimeWindow) -> str:
    detail = f"ts is more than {window.max_past_s // 86400} days in the past"
    if isinstance(raw, (int, float)) and 0 < raw < 100_000_000_000:
        detail += "; it looks like epoch seconds, but ts must be epoch milliseconds or RFC 3339"
    return detail
