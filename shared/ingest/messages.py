"""The records the ingest pipeline passes along: what a transport received, the devices it names, what
a batch turns into before it is written, and what writing it stored. No I/O here."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from shared.ingest.decoding import Decoder


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
    profile: str = "native"
    # The compiled profile (shared/ingest/decoding.py); None decodes only the native forms.
    decoder: Decoder | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    reason: str
    detail: str
    payload: bytes
    device: DeviceRef | None = None
    profile: str | None = None  # the profile that could not decode it (None: native)


@dataclass(slots=True)
class Presence:
    """What a batch says of one device: when it was last heard from and what it is now."""

    last_seen_us: int
    status: str


@dataclass(slots=True)
class TenantCounts:
    """One tenant's share of a batch, for the per-minute ingest counts and the message quota."""

    messages: int = 0  # messages stored (that gave readings)
    readings: int = 0
    dead_lettered: int = 0


class MessageSpan(NamedTuple):
    """The COPY lines one message produced: copy_lines[start:end] came from messages[message_index]."""

    message_index: int
    start: int
    end: int


@dataclass(frozen=True)
class TimeWindow:
    """Readings outside [now - max_past, now + max_future] are rejected as absurd."""

    max_past_s: int
    max_future_s: int


@dataclass
class PreparedBatch:
    """A batch turned into COPY text, dead letters and device presence; no I/O done yet."""

    copy_lines: list[str] = field(default_factory=list)
    spans: list[MessageSpan] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # (tenant_id, device_id) -> what the batch says of that device
    presence: dict[tuple[str, int], Presence] = field(default_factory=dict)
    oldest_ts_us: int | None = None
    # Written with the batch (record_batch_metadata): the unit a /state payload gave per
    # (tenant_id, device_id, metric), and each tenant's counts.
    units: dict[tuple[str, int, str], str] = field(default_factory=dict)
    tenant_counts: dict[str, TenantCounts] = field(default_factory=dict)
    # What stateful decoders (Home Assistant discovery, Sparkplug) remember per device after this batch,
    # what they saw that a person should see (kind, detail), and the Sparkplug nodes (tenant slug,
    # device name) to ask for a rebirth.
    decoder_states: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    decoder_events: list[tuple[str, int, str, dict[str, Any]]] = field(default_factory=list)
    rebirths: set[tuple[str, str]] = field(default_factory=set)

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
    # For the metrics (shared/core/observability.py): messages that gave readings, per tenant slug
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
