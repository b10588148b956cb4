"""Validation of a batch, pure: each message becomes COPY lines for the readings it carries, or a dead
letter with its reason; nothing is written here (shared/ingest/store.py writes)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol

from shared.broker.contract import COMMAND_FORM, SPARKPLUG_NAMESPACE
from shared.ingest.decoding import Decoded
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
from shared.ingest.sparkplug.decoder import SparkplugRejected
from shared.ingest.validation import (
    Limits,
    Reading,
    Rejected,
    _check_size,
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
    """Topic names to devices (shared/ingest/store.py's DeviceDirectory, looked up before the batch),
    and what stateful decoders remember of each."""

    def get(self, tenant: str, device: str) -> DeviceRef | None: ...

    def state(self, key: tuple[str, int]) -> dict[str, Any]: ...


@lru_cache(maxsize=65536)
def locate(topic: str) -> tuple[str, str, str, str] | None:
    """(kind, tenant, device, rest) of a topic below a device prefix ("device", or "command" for its
    command topic, which the drain's subscription also covers and skips) or in the Sparkplug namespace
    ("sparkplug", rest = the message type and any sub-device); None for anything else."""
    parts = topic.split("/")
    if len(parts) >= 5 and parts[0] == "t" and parts[2] == "d":
        kind = "command" if len(parts) == 5 and parts[4] == COMMAND_FORM else "device"
        return kind, parts[1], parts[3], "/".join(parts[4:])
    if len(parts) in (4, 5) and parts[0] == SPARKPLUG_NAMESPACE:
        return "sparkplug", parts[1], parts[3], parts[2] + ("/" + parts[4] if len(parts) == 5 else "")
    return None


_NOT_NATIVE = Rejected("bad_topic", "not a native form")


@lru_cache(maxsize=65536)
def _native_shape(rest: str) -> bool:
    """Whether a topic below a device prefix has a native form's shape (parse_topic then judges it)."""
    levels = rest.split("/")
    return (len(levels) == 1 and levels[0] in ("telemetry", "status")) or (len(levels) == 2 and levels[1] == "state")


def topic_keys(messages: Sequence[InboundMessage]) -> set[tuple[str, str]]:
    keys: set[tuple[str, str]] = set()
    for message in messages:
        where = locate(message.topic)
        if where is not None and where[0] != "command":
            keys.add((where[1], where[2]))
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
    touched: set[tuple[str, int]] = set()
    for index, message in enumerate(messages):
        if message.retained and not message.payload:
            continue  # a retained copy being deleted (by its device, or by a drain): no data
        device: DeviceRef | None = None
        profile: str | None = None
        try:
            where = locate(message.topic)
            if where is not None and where[0] == "command":
                continue  # a command to the device, not from it
            try:
                if where is not None and where[0] == "device" and not _native_shape(where[3]):
                    raise _NOT_NATIVE
                topic = parse_topic(message.topic)
            except Rejected:
                if where is None:
                    raise
                device = directory.get(where[1], where[2])
                if device is None:
                    raise Rejected("unknown_device", f"no device {where[2]!r} in tenant {where[1]!r}") from None
                if not device.enabled:
                    raise Rejected("device_disabled", f"device {where[2]!r} is disabled") from None
                if device.decoder is None:
                    parse_topic(message.topic)  # the native rejection, saying what the topic should be
                profile = device.profile
                context = (directory, touched, limits, window, now_us)
                oldest = _decoded(batch, index, message, device, where, context, oldest)
                continue
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
                DeadLetter(message.topic, rejection.reason, rejection.detail, message.payload, device, profile)
            )
            if device is not None:
                batch.tenant_counts.setdefault(device.tenant_id, TenantCounts()).dead_lettered += 1
    batch.oldest_ts_us = oldest
    # A snapshot: the directory's copy changes with the next batch, which may commit after this one.
    for key in touched:
        batch.decoder_states[key] = copy.deepcopy(directory.state(key))
    return batch


def _decoded(
    batch: PreparedBatch,
    index: int,
    message: InboundMessage,
    device: DeviceRef,
    where: tuple[str, str, str, str],
    context: tuple[Devices, set[tuple[str, int]], Limits, TimeWindow, int],
    oldest: int | None,
) -> int | None:
    """A message of a non-native form through its device's profile: COPY lines, units, presence,
    decoder state and events into the batch (as prepare_batch does for a native one); the batch's
    oldest ts so far is returned. Rejected (after noting what a stateful decoder learnt) if it cannot
    be stored."""
    kind, tenant, name, rest = where
    directory, touched, limits, window, now_us = context
    decoder = device.decoder
    assert decoder is not None
    if (kind == "sparkplug") != (device.profile == "sparkplug-b"):
        expected = "the Sparkplug namespace" if kind == "sparkplug" else "its own prefix"
        raise Rejected("bad_topic", f"{message.topic[:120]!r}: profile {device.profile!r} does not read {expected}")
    _check_size(message.payload, limits)
    key = (device.tenant_id, device.device_id)
    state = directory.state(key) if decoder.stateful else {}
    try:
        decoded = decoder.decode(f"t/{tenant}/d/{name}", rest, message.payload, state, message.received_at_us)
    except SparkplugRejected as rejection:
        _note_decoder(batch, key, tenant, name, rejection.decoded)
        raise
    finally:
        if decoder.stateful:
            touched.add(key)
    _note_decoder(batch, key, tenant, name, decoded)
    earliest_us = now_us - window.max_past_s * 1_000_000
    latest_us = now_us + window.max_future_s * 1_000_000
    prefix = f"{device.tenant_id}\t{device.device_id}\t"
    message_lines: list[str] = []
    newest: int | None = None
    if len(decoded.records) > limits.max_records:
        raise Rejected("too_many_records", f"at most {limits.max_records} readings per message")
    for ts, seq, metrics in decoded.records:
        if len(metrics) > limits.max_metrics:
            raise Rejected("too_many_metrics", f"at most {limits.max_metrics} metrics per reading")
        if ts is None:
            ts = message.received_at_us
        elif ts < earliest_us:
            raise Rejected("ts_too_old", f"ts is more than {window.max_past_s // 86400} days in the past")
        elif ts > latest_us:
            raise Rejected("ts_in_future", f"ts is more than {window.max_future_s} s ahead of the server clock")
        newest = ts if newest is None or ts > newest else newest
        oldest = ts if oldest is None or ts < oldest else oldest
        tail = f"\t{ts}\t{seq}\t"
        for metric, value in metrics.items():
            message_lines.append(prefix + metric + tail + _copy_value(metric, value))
    if message_lines:
        start = len(batch.copy_lines)
        batch.copy_lines.extend(message_lines)
        batch.spans.append(MessageSpan(index, start, len(batch.copy_lines)))
        counts = batch.tenant_counts.setdefault(device.tenant_id, TenantCounts())
        counts.messages += 1
        counts.readings += len(message_lines)
        for metric, raw_unit in decoded.units.items():
            if unit := _unit(raw_unit):
                batch.units[(device.tenant_id, device.device_id, metric)] = unit
        _note_presence(batch.presence, key, min(newest, now_us), "online")  # type: ignore[type-var, arg-type]
    if decoded.status is not None:
        _note_presence(batch.presence, key, now_us, decoded.status)
    return oldest


def _note_decoder(batch: PreparedBatch, key: tuple[str, int], tenant: str, name: str, decoded: Decoded) -> None:
    batch.decoder_events.extend((key[0], key[1], kind, detail) for kind, detail in decoded.events)
    if decoded.rebirth:
        batch.rebirths.add((tenant, name))


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
