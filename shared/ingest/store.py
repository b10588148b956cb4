"""The drain's database side: the run lock, device lookups, and writing a prepared batch exactly once.

A batch commits in one transaction: its readings through a staging table (COPY, then INSERT ... ON
CONFLICT DO NOTHING on the dedup key, so a redelivered message stores nothing twice), its dead letters,
units, per-minute counts, device presence and quota usage. A batch the database refuses for its data
(not for being down) is written again message by message, so the one refused message becomes a
dead letter and cannot stall the queue.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from shared.core.observability import event
from shared.core.sql import QUERIES, one_row
from shared.ingest.builtin_profiles import builtin_decoder
from shared.ingest.decoding import Decoder, compile_spec
from shared.ingest.messages import BatchOutcome, DeadLetter, DeviceRef, InboundMessage, PreparedBatch, Presence
from shared.ingest.metering import MessageMeter, current_hour
from shared.ingest.validation import Rejected

log = logging.getLogger(__name__)

DEAD_LETTER_PAYLOAD_CAP = 8192


class _Unreadable:
    """A stored profile that no longer compiles (a spec saved by an older release): every message of
    its forms is a dead letter saying so, until the profile is saved again."""

    stateful = False

    def __init__(self, name: str, error: str) -> None:
        self.name, self.error = name, error

    def decode(self, prefix: str, topic: str, payload: bytes, state: dict[str, Any], received_us: int) -> Any:
        raise Rejected("profile_invalid", f"profile {self.name!r} cannot be compiled: {self.error[:300]}")


_compiled: dict[tuple[str, int, datetime], Decoder] = {}


def tenant_decoder(tenant_id: str, profile_id: int, name: str, spec: dict[str, Any], updated: datetime) -> Decoder:
    """A tenant profile compiled once per version (many devices share one)."""
    key = (tenant_id, profile_id, updated)
    decoder = _compiled.get(key)
    if decoder is None:
        try:
            decoder = compile_spec(name, spec)
        except ValueError as exc:
            decoder = _Unreadable(name, str(exc))
        if len(_compiled) > 1000:
            _compiled.clear()
        _compiled[key] = decoder
    return decoder


class DeviceDirectory:
    """Topic names to device ids and profiles, looked up once per device and cached for one drain run,
    with what stateful decoders remember of each device (read with it, kept up to date by the batches).

    An unknown name is re-checked after a few seconds, so a device provisioned during a run is
    not dead-lettered for the rest of it.
    """

    def __init__(self, negative_ttl_s: float = 2.0) -> None:
        self._known: dict[tuple[str, str], DeviceRef] = {}
        self._unknown: dict[tuple[str, str], float] = {}
        self._states: dict[tuple[str, int], dict[str, Any]] = {}
        self._negative_ttl_s = negative_ttl_s

    def get(self, tenant: str, device: str) -> DeviceRef | None:
        return self._known.get((tenant, device))

    def state(self, key: tuple[str, int]) -> dict[str, Any]:
        return self._states.setdefault(key, {})

    def missing(self, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
        now = time.monotonic()
        return {k for k in keys if k not in self._known and self._unknown.get(k, 0.0) <= now}

    def resolve(self, conn: psycopg.Connection[TupleRow], keys: set[tuple[str, str]]) -> None:
        """Looks up keys (what missing() returned) in one query."""
        if not keys:
            return
        slugs, names = zip(*sorted(keys), strict=True)
        rows = conn.execute(QUERIES["resolve_devices"], {"slugs": list(slugs), "names": list(names)}).fetchall()
        for slug, name, tenant_id, device_id, enabled, builtin, profile_id, profile, spec, updated, state in rows:
            if builtin is not None:
                decoder = builtin_decoder(builtin)
            else:
                decoder = tenant_decoder(str(tenant_id), profile_id, profile, spec, updated)
            self._known[(slug, name)] = DeviceRef(str(tenant_id), device_id, enabled, builtin or profile, decoder)
            if state is not None:
                self._states[(str(tenant_id), device_id)] = state
        retry_at = time.monotonic() + self._negative_ttl_s
        for key in keys - self._known.keys():
            self._unknown[key] = retry_at


class IngestStore:
    """The drain's database session: the run lock, the staging table and batch writes."""

    LOCK_KEY = 0x6D717474_696E6773  # 'mqttings'

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self.conn: psycopg.Connection[TupleRow] | None = None
        # The plans' messages per hour (shared/ingest/metering.py), counted for this run.
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
                # Released explicitly: closing only asks the server to end the session, and the next run's
                # try_drain_lock could otherwise still find the lock held for a moment and skip.
                if not self.conn.broken:
                    self.conn.rollback()
                    self.conn.execute(QUERIES["release_drain_lock"], {"key": self.LOCK_KEY})
                    self.conn.commit()
            except psycopg.Error:
                pass  # the session is going anyway, and the lock with it
            finally:
                self.conn.close()
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
            event(
                log, "ingest.batch_refused", {"error": type(exc).__name__, "messages": len(messages)}, logging.WARNING
            )
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

    def _write(
        self,
        lines: list[str],
        dead_letters: list[DeadLetter],
        presence: dict[tuple[str, int], Presence],
        metadata: PreparedBatch | None = None,
    ) -> int:
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
                if metadata.decoder_states:
                    keys = sorted(metadata.decoder_states)
                    cur.execute(
                        QUERIES["upsert_decoder_states"],
                        {
                            "tenant_ids": [k[0] for k in keys],
                            "device_ids": [k[1] for k in keys],
                            "states": [Jsonb(metadata.decoder_states[k]) for k in keys],
                        },
                    )
                if metadata.decoder_events:
                    events = metadata.decoder_events
                    cur.execute(
                        QUERIES["insert_decoder_events"],
                        {
                            "tenant_ids": [e[0] for e in events],
                            "device_ids": [e[1] for e in events],
                            "kinds": [e[2] for e in events],
                            "details": [Jsonb(e[3]) for e in events],
                        },
                    )
            if dead_letters:
                cur.executemany(QUERIES["insert_dead_letter"], [_dead_letter_params(d) for d in dead_letters])
            if presence:
                keys = sorted(presence)  # a fixed row order: no deadlock with other writers
                cur.execute(
                    QUERIES["update_presence"],
                    {
                        "tenant_ids": [k[0] for k in keys],
                        "device_ids": [k[1] for k in keys],
                        "last_seen": [_from_us(presence[k].last_seen_us) for k in keys],
                        "statuses": [presence[k].status for k in keys],
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
        self._write(
            [],
            [],
            batch.presence,
            PreparedBatch(
                tenant_counts=batch.tenant_counts,
                decoder_states=batch.decoder_states,
                decoder_events=batch.decoder_events,
            ),
        )
        return total

    def write_replay(
        self, batch: PreparedBatch, dead_letter_ids: list[int], decoder_states: dict[tuple[str, int], dict[str, Any]]
    ) -> int:
        """A replay's readings (through the same staging and dedup key as a drain batch) and the dead
        letters they came from marked replayed, in one transaction; returns the readings that were new."""
        self._session.execute(QUERIES["mark_replayed"], {"ids": dead_letter_ids})
        return self._write(batch.copy_lines, [], {}, PreparedBatch(units=batch.units, decoder_states=decoder_states))

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
        "profile": dead.profile,
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
        "messages": [c.messages for _, c in counts],
        "readings": [c.readings for _, c in counts],
        "dead_lettered": [c.dead_lettered for _, c in counts],
    }


def _from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)
