"""The ingest pipeline: validate a batch of device messages and store it exactly once.

It knows nothing of MQTT or Azure Functions. A transport (shared/mqtt_drain.py today, an Event
Hubs trigger tomorrow) hands it InboundMessages and acknowledges them only after store_batch
has returned, i.e. after COMMIT. Three properties carry the guarantees:
  - every message ends as stored readings or as a dead letter with its reason, in the same
    transaction, so acknowledging after commit loses nothing;
  - readings carry a dedup key, so a redelivered message stores nothing twice;
  - a batch the database refuses for its data (not for being down) is split until the one
    refused message is found and dead-lettered, so one bad row can never stall the queue.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from shared.core.observability import event
from shared.core.sql import QUERIES, one_row
from shared.ingest.metering import MessageMeter, current_hour
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

log = logging.getLogger(__name__)

DEAD_LETTER_PAYLOAD_CAP = 8192
UNIT_MAX_CHARS = 32  # device_metrics.unit's CHECK; a longer unit is cut, not a reason to lose the reading
_MAX_DOUBLE = 1.7976931348623157e308
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@dataclass(slots=True)
class InboundMessage:
    topic: str
    payload: bytes
    received_at_us: int  # wall clock when the transport received it: the ts of a reading without one
    # The broker also kept it as its retained message for the topic. An empty retained message is
    # not data: it is MQTT's way to delete the retained copy, and is skipped.
    retained: bool = False


@dataclass(frozen=True, slots=True)
class DeviceRef:
    tenant_id: str
    device_id: int
    enabled: bool


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    reason: str
    detail: str
    payload: bytes
    device: DeviceRef | None = None


# (tenant_id, device_id) -> [last_seen_us, status]
Presence = dict[tuple[str, int], list[Any]]


@dataclass(frozen=True)
class TimeWindow:
    """Readings outside [now - max_past, now + max_future] are rejected as absurd."""

    max_past_s: int
    max_future_s: int


@dataclass
class PreparedBatch:
    """A batch turned into COPY text, dead letters and device presence; no I/O done yet."""

    copy_lines: list[str] = field(default_factory=list)
    # For each message that produced readings: (message index, first line, end line).
    spans: list[tuple[int, int, int]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    presence: Presence = field(default_factory=dict)
    oldest_ts_us: int | None = None
    # Written with the batch (record_batch_metadata): the unit a /state payload gave per
    # (tenant_id, device_id, metric), and per tenant_id [messages stored, readings, dead letters].
    units: dict[tuple[str, int, str], str] = field(default_factory=dict)
    tenant_counts: dict[str, list[int]] = field(default_factory=dict)

    @property
    def readings(self) -> int:
        return len(self.copy_lines)


@dataclass
class BatchOutcome:
    messages: int = 0
    readings: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    max_lag_ms: int | None = None
    # For the metrics (shared/observability.py): messages that gave readings, per tenant slug
    # (redelivered duplicates included), and dead letters per reason.
    messages_by_tenant: Counter[str] = field(default_factory=Counter)
    dead_letters_by_reason: Counter[str] = field(default_factory=Counter)

    def add(self, other: BatchOutcome) -> None:
        self.messages += other.messages
        self.readings += other.readings
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        self.messages_by_tenant.update(other.messages_by_tenant)
        self.dead_letters_by_reason.update(other.dead_letters_by_reason)
        if other.max_lag_ms is not None:
            self.max_lag_ms = max(self.max_lag_ms or 0, other.max_lag_ms)


class DeviceDirectory:
    """Topic names to device ids, looked up once per device and cached for one drain run.

    An unknown name is re-checked after a few seconds, so a device provisioned during a run is
    not dead-lettered for the rest of it.
    """

    def __init__(self, negative_ttl_s: float = 2.0) -> None:
        self._known: dict[tuple[str, str], DeviceRef] = {}
        self._unknown: dict[tuple[str, str], float] = {}
        self._negative_ttl_s = negative_ttl_s

    def get(self, tenant: str, device: str) -> DeviceRef | None:
        return self._known.get((tenant, device))

    def missing(self, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
        now = time.monotonic()
        return {k for k in keys if k not in self._known and self._unknown.get(k, 0.0) <= now}

    def resolve(self, conn: psycopg.Connection[TupleRow], keys: set[tuple[str, str]]) -> None:
        """Looks up keys (what missing() returned) in one query."""
        if not keys:
            return
        slugs, names = zip(*sorted(keys), strict=True)
        rows = conn.execute(QUERIES["resolve_devices"], {"slugs": list(slugs), "names": list(names)}).fetchall()
        for slug, name, tenant_id, device_id, enabled in rows:
            self._known[(slug, name)] = DeviceRef(str(tenant_id), device_id, enabled)
        retry_at = time.monotonic() + self._negative_ttl_s
        for key in keys - self._known.keys():
            self._unknown[key] = retry_at


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
    directory: DeviceDirectory,
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
            batch.spans.append((index, start, len(lines)))
            counts = batch.tenant_counts.setdefault(device.tenant_id, [0, 0, 0])
            counts[0] += 1
            counts[1] += len(message_lines)
            if topic.kind == "state" and (unit := _unit(state.get("unit"))):
                batch.units[(device.tenant_id, device.device_id, topic.entity)] = unit  # type: ignore[index]
            # Validation lets no message through without a reading, so newest is set.
            _note_presence(batch.presence, key, min(newest, now_us), "online")  # type: ignore[type-var, arg-type]
        except Rejected as rejection:
            batch.dead_letters.append(
                DeadLetter(message.topic, rejection.reason, rejection.detail, message.payload, device)
            )
            if device is not None:
                batch.tenant_counts.setdefault(device.tenant_id, [0, 0, 0])[2] += 1
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


def _note_presence(presence: Presence, key: tuple[str, int], seen_us: int, status: str) -> None:
    entry = presence.get(key)
    if entry is None:
        presence[key] = [seen_us, status]
    else:
        entry[0] = max(entry[0], seen_us)
        entry[1] = status  # messages arrive in order: the last one says what the device is now


def _too_old_detail(raw: object, window: TimeWindow) -> str:
    detail = f"ts is more than {window.max_past_s // 86400} days in the past"
    if isinstance(raw, (int, float)) and 0 < raw < 100_000_000_000:
        detail += "; it looks like epoch seconds, but ts must be epoch milliseconds or RFC 3339"
    return detail


class IngestStore:
    """The drain's database session: the run lock, the staging table and batch writes."""

    LOCK_KEY = 0x6D717474_696E6773  # 'mqttings'

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self.conn: psycopg.Connection[TupleRow] | None = None
        # The plans' messages per hour (shared/metering.py), counted for this run.
        self.meter = MessageMeter()
        self._hour = current_hour()

    @property
    def _session(self) -> psycopg.Connection[TupleRow]:
        """The open session; an error that says so when connect() has not succeeded."""
        conn = self.conn
        if conn is None:
            raise RuntimeError("IngestStore is not connected: connect() first")
        return conn

    def connect(self) -> bool:
        """Opens the session and takes the drain lock; False when another drain holds it."""
        self.close()
        conn = psycopg.connect(self._conninfo, autocommit=True, application_name="mqtt_ingest", connect_timeout=10)
        if not one_row(conn.execute(QUERIES["try_drain_lock"], {"key": self.LOCK_KEY}), "try_drain_lock")[0]:
            conn.close()
            return False
        conn.execute(QUERIES["create_staging"])
        conn.autocommit = False
        self.conn = conn
        return True

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def write(self, messages: Sequence[InboundMessage], batch: PreparedBatch) -> BatchOutcome:
        """Stores a prepared batch in one transaction and commits; returns what it stored.
        Messages over their tenant's hourly quota become `quota` dead letters first, and the usage
        is counted in the same transaction."""
        self._hour = current_hour()
        batch = self.meter.meter(self._session, messages, batch, self._hour)
        try:
            accepted = self._write(batch.copy_lines, batch.dead_letters, batch.presence, batch)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError, psycopg.errors.ProgrammingError) as exc:
            if isinstance(exc, psycopg.errors.InsufficientPrivilege):
                raise
            self._session.rollback()
            event(log, "ingest.batch_refused", {"error": type(exc).__name__, "messages": len(messages)},
                  logging.WARNING)
            self.meter.count(self._session, batch, self._hour)  # the rollback undid it
            outcome = self._write_isolating(messages, batch)
            self.meter.committed(batch, self._hour)
            return outcome
        self.meter.committed(batch, self._hour)
        return self._outcome(messages, batch, accepted)

    def _outcome(self, messages: Sequence[InboundMessage], batch: PreparedBatch, accepted: int) -> BatchOutcome:
        lag = None
        if batch.oldest_ts_us is not None:
            lag = max(0, (time.time_ns() // 1000 - batch.oldest_ts_us) // 1000)
        return BatchOutcome(
            messages=len(messages),
            readings=batch.readings,
            accepted=accepted,
            duplicates=batch.readings - accepted,
            dead_lettered=len(batch.dead_letters),
            max_lag_ms=lag,
            # topics of spans were validated: t/{tenant}/d/{device}/...
            messages_by_tenant=Counter(messages[index].topic.split("/", 2)[1] for index, _, _ in batch.spans),
            dead_letters_by_reason=Counter(dead.reason for dead in batch.dead_letters),
        )

    def _write(self, lines: list[str], dead_letters: list[DeadLetter], presence: Presence,
               metadata: PreparedBatch | None = None) -> int:
        conn = self._session
        accepted = 0
        with conn.cursor() as cur:
            if lines:
                with cur.copy(QUERIES["copy_staging"]) as copy:
                    copy.write("".join(lines))
                cur.execute(QUERIES["insert_from_staging"])
                accepted = cur.rowcount
            if metadata is not None:
                if lines:
                    cur.execute(QUERIES["merge_device_metrics"], _unit_params(metadata))
                if metadata.tenant_counts:
                    cur.execute(QUERIES["count_ingest_minute"], _count_params(metadata))
            if dead_letters:
                cur.executemany(QUERIES["insert_dead_letter"], [_dead_letter_params(d) for d in dead_letters])
            if presence:
                keys = sorted(presence)  # a fixed row order: no deadlock with other writers
                cur.execute(
                    QUERIES["update_presence"],
                    {
                        "tenant_ids": [k[0] for k in keys],
                        "device_ids": [k[1] for k in keys],
                        "last_seen": [_from_us(presence[k][0]) for k in keys],
                        "statuses": [presence[k][1] for k in keys],
                    },
                )
        conn.commit()
        return accepted

    def _write_isolating(self, messages: Sequence[InboundMessage], batch: PreparedBatch) -> BatchOutcome:
        """Writes message by message: the ones the database refuses become dead letters."""
        total = self._outcome(messages, PreparedBatch(dead_letters=batch.dead_letters), 0)
        self._write([], batch.dead_letters, {})
        for index, start, end in batch.spans:
            lines = batch.copy_lines[start:end]
            try:
                total.accepted += self._write(lines, [], {}, PreparedBatch(units=batch.units))
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
                self._session.rollback()
                message = messages[index]
                refused = DeadLetter(message.topic, "storage_rejected", str(exc).splitlines()[0][:500], message.payload)
                self._write([], [refused], {})
                total.dead_lettered += 1
                total.dead_letters_by_reason[refused.reason] += 1
                continue
            total.readings += len(lines)
            total.messages_by_tenant[messages[index].topic.split("/", 2)[1]] += 1
        total.duplicates = total.readings - total.accepted
        # The counts count a refused message as stored too: close enough for a per-minute chart.
        self._write([], [], batch.presence, PreparedBatch(tenant_counts=batch.tenant_counts))
        return total

    def ensure_partitions(self, past_days: int, future_days: int = 3) -> int:
        conn = self._session
        params = {"past_days": past_days, "future_days": future_days}
        created: int = one_row(conn.execute(QUERIES["ensure_partitions"], params), "ensure_partitions")[0]
        conn.commit()
        return created

    def start_run(self) -> int:
        conn = self._session
        run_id: int = one_row(conn.execute(QUERIES["start_run"]), "start_run")[0]
        conn.commit()
        return run_id

    def finish_run(self, run_id: int, status: str, outcome: BatchOutcome, batches: int, error: str | None) -> None:
        conn = self._session
        conn.execute(
            QUERIES["finish_run"],
            {
                "run_id": run_id,
                "status": status,
                "messages": outcome.messages,
                "readings": outcome.readings,
                "accepted": outcome.accepted,
                "duplicates": outcome.duplicates,
                "dead_lettered": outcome.dead_lettered,
                "batches": batches,
                "max_lag_ms": outcome.max_lag_ms,
                "error": error,
            },
        )
        conn.commit()


def record_skipped_run(conninfo: str, reason: str) -> None:
    with psycopg.connect(conninfo, autocommit=True, application_name="mqtt_ingest", connect_timeout=10) as conn:
        conn.execute(QUERIES["record_skipped_run"], {"error": reason})


def _dead_letter_params(dead: DeadLetter) -> dict[str, Any]:
    return {
        "tenant_id": dead.device.tenant_id if dead.device else None,
        "device_id": dead.device.device_id if dead.device else None,
        "topic": dead.topic[:1024],
        "reason": dead.reason,
        "detail": dead.detail[:1000],
        "payload": dead.payload[:DEAD_LETTER_PAYLOAD_CAP],
        "payload_bytes": len(dead.payload),
    }


def _unit_params(metadata: PreparedBatch) -> dict[str, Any]:
    units = list(metadata.units.items())
    return {
        "unit_tenant_ids": [key[0] for key, _ in units],
        "unit_device_ids": [key[1] for key, _ in units],
        "unit_metrics": [key[2] for key, _ in units],
        "units": [unit for _, unit in units],
    }


def _count_params(metadata: PreparedBatch) -> dict[str, Any]:
    counts = list(metadata.tenant_counts.items())
    return {
        "tenant_ids": [tenant for tenant, _ in counts],
        "messages": [c[0] for _, c in counts],
        "readings": [c[1] for _, c in counts],
        "dead_lettered": [c[2] for _, c in counts],
    }


def _from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


__all__ = [
    "BatchOutcome",
    "DeadLetter",
    "DeviceDirectory",
    "DeviceRef",
    "InboundMessage",
    "IngestStore",
    "PreparedBatch",
    "TimeWindow",
    "prepare_batch",
    "record_skipped_run",
    "topic_keys",
]
