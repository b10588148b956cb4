"""One run of the MQTT drain: the broker's persistent session into PostgreSQL, then leave.

A run takes the lock, connects (shared/ingest/transport.py), and publishes a marker to a topic only
it reads. The broker queues the marker behind everything already queued for the session, so
when it comes back the backlog the run started with has been read. The run then stores what it
has, acknowledges it, and ends: it is billed by duration, so it never waits for more. Messages
that arrive during the run wait on the broker for the next one. The idle exit and the time budget
remain as safety nets (a broker that refuses the marker, a backlog too large for one run).

A QoS 1 message is acknowledged only after the transaction holding it has committed: a crash at
any instant leaves it unacknowledged, the broker redelivers it, and the dedup key makes the
second copy a no-op. A QoS 0 message is stored by the run that reads it, also when that run is
ending or has lost its connection, since nobody will send it again.

Two threads share the work. This one drives paho's socket, cuts micro-batches, validates them
and acknowledges committed ones; the store thread only writes, so PostgreSQL's time overlaps all
the Python work. Receive Maximum is three batches: one being written, one queued, one filling.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import psycopg
from tenacity import RetryCallState, retry, retry_if_exception_type, stop_after_delay, wait_exponential

from shared.broker.contract import sparkplug_ncmd_topic
from shared.broker.mqtt import publish_all
from shared.core import observability
from shared.core.exceptions import BrokerUnavailable
from shared.core.settings import Settings
from shared.ingest.batch import prepare_batch, topic_keys
from shared.ingest.messages import BatchOutcome, InboundMessage, PreparedBatch, TimeWindow
from shared.ingest.sparkplug.decoder import rebirth_payload
from shared.ingest.store import DeviceDirectory, IngestStore, record_skipped_run
from shared.ingest.transport import DrainConnection, drop_session, prepare_session
from shared.ingest.validation import Limits

log = logging.getLogger(__name__)

__all__ = ["DrainReport", "drain_once", "drop_session", "prepare_session"]


# A batch on its way to the store thread: packet ids to ack once committed, retained topics to
# clear then, the messages, and what validation made of them.
Batch = tuple[list[int], list[str], list[InboundMessage], PreparedBatch]

_R = TypeVar("_R")


class LockLost(Exception):
    """Another drain took the run lock while this one was reconnecting to PostgreSQL."""


@dataclass
class DrainReport:
    status: str = "ok"  # ok | skipped | failed
    ended_by: str | None = None  # caught_up | idle | time_budget | connection_lost
    run_id: int | None = None
    batches: int = 0
    duration_s: float = 0.0
    setup_s: float = 0.0  # lock, partitions, connect, TLS, subscribe: the fixed cost of a run
    active_s: float = 0.0  # from the start to the last committed batch
    fast_path_messages: int = 0  # parsed by the lean PUBLISH handler rather than paho's
    error: str | None = None
    outcome: BatchOutcome = field(default_factory=BatchOutcome)
    # Sparkplug nodes (tenant slug, device name) whose sequence had a gap or whose data named aliases no
    # birth defined: asked for a rebirth at the end of the run.
    rebirths: set[tuple[str, str]] = field(default_factory=set)
    rebirths_requested: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "ended_by": self.ended_by,
            "run_id": self.run_id,
            "batches": self.batches,
            "duration_s": round(self.duration_s, 3),
            "setup_s": round(self.setup_s, 3),
            "active_s": round(self.active_s, 3),
            "fast_path_messages": self.fast_path_messages,
            "rebirths_requested": self.rebirths_requested,
            "error": self.error,
            # not asdict(): it rebuilds a Counter from its items, counting (key, value) pairs
            **{f.name: getattr(self.outcome, f.name) for f in fields(self.outcome)},
        }


def drain_once(settings: Settings) -> DrainReport:
    """Drains what was queued when the run started, then ends; never acks before commit."""
    started = time.monotonic()
    report = DrainReport()
    store = IngestStore(settings.ingest_database_url.get_secret_value())
    if not store.connect():
        report.status, report.error = "skipped", "another drain holds the lock"
        record_skipped_run(settings.ingest_database_url.get_secret_value(), report.error)
        _log_summary(report, started)
        return report
    connection = None
    try:
        store.ensure_partitions(settings.ingest_max_past_days + 1)
        report.run_id = store.start_run()
        with observability.bound(run_id=report.run_id):
            connection = DrainConnection(settings)
            report.setup_s = time.monotonic() - started
            _drain(settings, store, connection, report, started)
            _request_rebirths(settings, report)
    except Exception as exc:
        report.status, report.error = "failed", f"{type(exc).__name__}: {exc}"[:1000]
        raise
    finally:
        if connection is not None:
            report.fast_path_messages = connection.fast_path_messages
            if not connection.lost:
                connection.close()
        _finish(store, report)
        store.close()
        _log_summary(report, started)
    return report


def _retry_database(settings: Settings, what: str) -> Callable[[Callable[[], _R]], Callable[[], _R]]:
    """Retries transient database errors (connection lost, server restarting) with backoff for
    INGEST_DB_RETRY_S; then the error propagates and the run ends without acking."""

    def log_retry(state: RetryCallState) -> None:
        # before_sleep follows a failed attempt: its outcome is set.
        error = state.outcome.exception() if state.outcome else None
        observability.event(log, "ingest.retry", {"what": what, "error": str(error)[:300]}, logging.WARNING)

    return retry(
        retry=retry_if_exception_type(psycopg.OperationalError),
        stop=stop_after_delay(settings.ingest_db_retry_s),
        wait=wait_exponential(multiplier=0.2, max=5),
        before_sleep=log_retry,
        reraise=True,
    )


class _Validator:
    """Turns received messages into prepared batches, on the network thread.

    It runs there, not on the store thread, so that PostgreSQL's work on one batch overlaps the
    Python work of validating the next. Devices are looked up on a connection of its own; the
    cache makes that once per device and run.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._limits = Limits(
            settings.ingest_max_payload_bytes, settings.ingest_max_metrics, settings.ingest_max_records
        )
        self._window = TimeWindow(settings.ingest_max_past_days * 86400, settings.ingest_max_future_s)
        self._directory = DeviceDirectory()
        self._conn: psycopg.Connection | None = None
        self.rebirths: set[tuple[str, str]] = set()

    def prepare(self, messages: list[InboundMessage]) -> PreparedBatch:
        keys = self._directory.missing(topic_keys(messages))
        if keys:
            self._resolve(keys)
        return prepare_batch(messages, self._directory, self._limits, self._window, time.time_ns() // 1000)

    def _resolve(self, keys: set[tuple[str, str]]) -> None:
        @_retry_database(self._settings, "device lookup")
        def resolve() -> None:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = psycopg.connect(
                    self._settings.ingest_database_url.get_secret_value(),
                    autocommit=True,
                    application_name="mqtt_ingest",
                    connect_timeout=10,
                )
            self._directory.resolve(self._conn, keys)

        resolve()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class _StoreThread(threading.Thread):
    """Writes prepared batches in order on the run's locked session; hands committed ones back."""

    def __init__(self, settings: Settings, store: IngestStore, on_done: Callable[[], None]) -> None:
        super().__init__(name="mqtt_ingest-store", daemon=True)
        self._on_done = on_done  # wakes the network thread to ack what committed
        self.todo: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        self.done: queue.Queue[tuple[list[int], list[str], BatchOutcome]] = queue.Queue()
        self.error: BaseException | None = None
        self.in_flight = 0  # batches handed over and not yet acked; only the network thread counts
        self._settings = settings
        self._store = store

    def hand_over(self, batch: Batch | None) -> None:
        self.todo.put(batch, timeout=self._settings.ingest_db_retry_s * 2 + 60)
        if batch is not None:
            self.in_flight += 1

    def run(self) -> None:
        while True:
            batch = self.todo.get()
            try:
                if batch is None:
                    return
                # After a failure later batches are skipped, not stored: none of them is acked,
                # and the next run gets them all again.
                if self.error is None:
                    mids, clears, messages, prepared = batch
                    self.done.put((mids, clears, self._write(messages, prepared)))
            except BaseException as exc:  # noqa: BLE001 - reported to the network thread
                self.error = exc
            finally:
                self.todo.task_done()
                self._on_done()

    def _write(self, messages: list[InboundMessage], prepared: PreparedBatch) -> BatchOutcome:
        store = self._store

        @_retry_database(self._settings, "database write")
        def write() -> BatchOutcome:
            if (store.conn is None or store.conn.closed or store.conn.broken) and not store.connect():
                raise LockLost()
            return store.write(messages, prepared)

        return write()


def _drain(
    settings: Settings, store: IngestStore, connection: DrainConnection, report: DrainReport, started: float
) -> None:
    validator = _Validator(settings)
    writer = _StoreThread(settings, store, connection.wake)
    writer.start()
    deadline = started + settings.ingest_time_budget_s
    last_activity = time.monotonic()
    connection.publish_marker()
    connection.publish_host_state()
    try:
        while not connection.lost and writer.error is None:
            connection.pump(0.05)
            connection.ack_control()
            now = time.monotonic()
            if _ack_committed(connection, writer, report, started):
                last_activity = now  # the broker sends more once it has the acks
            if connection.caught_up:
                # The backlog is read; the ending below stores it. Waiting here for the traffic
                # to pause would keep a run going as long as devices publish.
                report.ended_by = "caught_up"
                break
            if connection.received:
                last_activity = now
                due = (
                    len(connection.received) >= settings.ingest_batch_size
                    or now - connection.first_received_at >= settings.ingest_flush_interval_s
                )
                if due and not writer.todo.full():
                    _hand_over(connection, writer, validator, settings.ingest_batch_size)
            if now >= deadline:
                report.ended_by = "time_budget"
                break
            if not connection.received and not writer.in_flight and now - last_activity >= settings.ingest_idle_exit_s:
                report.ended_by = "idle"
                break
        if connection.lost:
            report.ended_by = "connection_lost"
            connection.forget_unackable()
        if writer.error is None:
            # What this run read is stored (the QoS 1 part acked) before it disconnects; then what
            # the broker sent before it saw the DISCONNECT is read, and its QoS 0 part stored too.
            _store_everything_received(connection, writer, validator, report, started, settings.ingest_batch_size)
            if report.ended_by != "connection_lost":
                connection.disconnect_and_read_rest()
                _store_everything_received(connection, writer, validator, report, started, settings.ingest_batch_size)
    finally:
        _stop_writer(connection, writer)
        _ack_committed(connection, writer, report, started)
        validator.close()
        report.rebirths = validator.rebirths
    if writer.error is not None:
        raise writer.error
    if report.ended_by == "connection_lost":
        # Nothing is lost: what this run did not ack is redelivered to the next one.
        report.status, report.error = "failed", "broker connection lost during the run"


def _hand_over(connection: DrainConnection, writer: _StoreThread, validator: _Validator, limit: int) -> None:
    messages, mids = connection.take(limit)
    clears = [m.topic for m in messages if m.retained and m.payload]
    prepared = validator.prepare(messages)
    validator.rebirths |= prepared.rebirths
    writer.hand_over((mids, clears, messages, prepared))


def _request_rebirths(settings: Settings, report: DrainReport) -> None:
    """Node Control/Rebirth on each node's NCMD topic, through the commander credential (the contract
    lets it publish there). Best effort: a node not asked now is asked again by its next gap."""
    if not report.rebirths:
        return
    if not settings.mqtt_commander_password.get_secret_value():
        observability.event(log, "ingest.rebirth_not_configured", {"nodes": len(report.rebirths)}, logging.WARNING)
        return
    payload = rebirth_payload(time.time_ns() // 1_000_000)
    messages = [(sparkplug_ncmd_topic(tenant, device), payload) for tenant, device in sorted(report.rebirths)]
    try:
        codes = publish_all(
            settings.mqtt_host,
            settings.mqtt_port,
            settings.mqtt_ca_file,
            settings.mqtt_commander_username,
            settings.mqtt_commander_password,
            f"{settings.mqtt_ingest_client_id}-rebirth",
            messages,
        )
    except BrokerUnavailable as exc:
        observability.event(log, "ingest.rebirth_failed", {"error": str(exc)[:200]}, logging.WARNING)
        return
    report.rebirths_requested = sum(1 for code in codes if not code.is_failure)


def _store_everything_received(
    connection: DrainConnection,
    writer: _StoreThread,
    validator: _Validator,
    report: DrainReport,
    started: float,
    limit: int,
) -> None:
    """Hands over what has been received so far and waits for it to commit, acking as batches
    commit; the connection stays serviced all the while (keepalive, acks), however long the store
    thread retries. What arrives meanwhile is left in ``received``: steady traffic would otherwise
    keep a run from ever ending. Its QoS 1 part is redelivered to the next run; its QoS 0 part is
    stored after the DISCONNECT, when nothing more can arrive."""
    left = len(connection.received)
    while writer.error is None and (left or writer.in_flight):
        if left and not writer.todo.full():
            taken = min(left, limit)
            _hand_over(connection, writer, validator, taken)
            left -= taken
        _service(connection, 0.02)
        _ack_committed(connection, writer, report, started)


def _stop_writer(connection: DrainConnection, writer: _StoreThread) -> None:
    while writer.todo.full():
        _service(connection, 0.02)
    writer.hand_over(None)
    while writer.is_alive():
        writer.join(0.02)
        _service(connection, 0)


def _service(connection: DrainConnection, timeout: float) -> None:
    if connection.lost:
        time.sleep(timeout)
    else:
        connection.pump(timeout)


def _ack_committed(connection: DrainConnection, writer: _StoreThread, report: DrainReport, started: float) -> bool:
    """Acks the batches the store thread has committed; True if there were any."""
    acked = False
    while True:
        try:
            mids, clears, outcome = writer.done.get_nowait()
        except queue.Empty:
            return acked
        acked = True
        # After a reconnect the broker resends unacked messages under the same packet ids: an ack
        # could then hit another message, so a lost connection acks nothing more (ack() checks).
        connection.ack(mids)
        connection.clear_retained(clears)
        writer.in_flight -= 1
        report.outcome.add(outcome)
        report.batches += 1
        report.active_s = time.monotonic() - started


def _finish(store: IngestStore, report: DrainReport) -> None:
    if report.run_id is None:
        return
    try:
        if store.conn is None or store.conn.broken:
            store.connect()
        if store.conn is not None:
            store.conn.rollback()
            store.finish_run(report.run_id, report.status, report.outcome, report.batches, report.error)
    except psycopg.Error as exc:
        observability.event(
            log, "ingest.run_not_recorded", {"run_id": report.run_id, "error": type(exc).__name__}, logging.WARNING
        )


def record_drain_metrics(report: DrainReport) -> None:
    """The run's figures as metrics (shared/core/observability.py); the summary line keeps the detail."""
    outcome = report.outcome
    observability.BACKLOG_SIZE.record(outcome.messages)
    if outcome.max_lag_ms is not None:
        observability.INGEST_LAG.record(outcome.max_lag_ms)
    observability.record_counts(observability.INGEST_MESSAGES, outcome.messages_by_tenant, "tenant")
    observability.record_counts(observability.PARSE_ERRORS, outcome.dead_letters_by_reason, "reason")


def _log_summary(report: DrainReport, started: float) -> None:
    report.duration_s = time.monotonic() - started
    log.info("ingest.summary %s", json.dumps(report.summary(), sort_keys=True))
    record_drain_metrics(report)
