"""One run of the MQTT drain: the broker's persistent session into PostgreSQL.

The drain connects with a fixed client id and a persistent MQTT v5 session (Clean Start off,
a session expiry longer than any gap between runs), so messages published while no run is
active wait on the broker. It acknowledges a message only after the transaction holding it has
committed (manual acks): a crash at any instant leaves the message unacknowledged, and the
broker redelivers it to the next run, where the dedup key makes the second copy a no-op.

paho's network thread only appends to a deque; this thread cuts micro-batches (full, or a
second old), stores them and then acks. Receive Maximum is twice the batch size, so the broker
keeps sending the next batch while this one is being written.
"""
from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from shared.exceptions import BrokerUnavailable
from shared.ingest import (
    BatchOutcome,
    DeviceDirectory,
    InboundMessage,
    IngestStore,
    PreparedBatch,
    TimeWindow,
    prepare_batch,
    record_skipped_run,
    topic_keys,
)
from shared.payloads import SUBSCRIPTIONS, Limits
from shared.settings import Settings

log = logging.getLogger(__name__)

DB_RETRY_SECONDS = 30.0


class LockLost(Exception):
    """Another drain took the run lock while this one was reconnecting to PostgreSQL."""


@dataclass
class DrainReport:
    status: str = "ok"  # ok | skipped | failed
    run_id: int | None = None
    batches: int = 0
    duration_s: float = 0.0
    active_s: float = 0.0  # from the start to the last committed batch: excludes the idle wait
    error: str | None = None
    outcome: BatchOutcome = field(default_factory=BatchOutcome)

    def summary(self) -> dict:
        return {"status": self.status, "run_id": self.run_id, "batches": self.batches,
                "duration_s": round(self.duration_s, 3),
                "active_s": round(self.active_s, 3), "error": self.error, **asdict(self.outcome)}


class _Inbox:
    """What paho's network thread has received and this run has not yet taken."""

    def __init__(self, batch_size: int) -> None:
        self.messages: deque[mqtt.MQTTMessage] = deque()
        self.batch_size = batch_size
        self.full = threading.Event()
        self.connected = threading.Event()
        self.lost = threading.Event()
        self.connect_error: str | None = None

    def on_message(self, client, userdata, message) -> None:
        self.messages.append(message)
        if len(self.messages) >= self.batch_size:
            self.full.set()

    def on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.connect_error = str(reason_code)
            self.lost.set()
        self.connected.set()

    def on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.lost.set()
        self.connected.set()

    def take(self, limit: int) -> list[mqtt.MQTTMessage]:
        taken = []
        popleft = self.messages.popleft
        for _ in range(min(limit, len(self.messages))):
            taken.append(popleft())
        if len(self.messages) < self.batch_size:
            self.full.clear()
        return taken


def drain_once(settings: Settings) -> DrainReport:
    """Drains until the broker is idle or the time budget is spent; never acks before commit."""
    started = time.monotonic()
    report = DrainReport()
    store = IngestStore(settings.ingest_database_url)
    if not store.connect():
        report.status, report.error = "skipped", "another drain holds the lock"
        record_skipped_run(settings.ingest_database_url, report.error)
        _log_summary(report, started)
        return report
    client = None
    try:
        store.ensure_partitions(settings.ingest_max_past_days + 1)
        report.run_id = store.start_run()
        inbox = _Inbox(settings.ingest_batch_size)
        client = _connect(settings, inbox)
        _drain(settings, store, client, inbox, report, started)
    except Exception as exc:
        report.status, report.error = "failed", f"{type(exc).__name__}: {exc}"[:1000]
        raise
    finally:
        if client is not None:
            client.disconnect()
            client.loop_stop()
        _finish(store, report)
        store.close()
        _log_summary(report, started)
    return report


def _drain(settings: Settings, store: IngestStore, client: mqtt.Client, inbox: _Inbox,
           report: DrainReport, started: float) -> None:
    limits = Limits(settings.ingest_max_payload_bytes, settings.ingest_max_metrics, settings.ingest_max_records)
    window = TimeWindow(settings.ingest_max_past_days * 86400, settings.ingest_max_future_s)
    directory = DeviceDirectory()
    deadline = started + settings.ingest_time_budget_s
    # paho stamps each message with time.monotonic(); this turns that into wall-clock time.
    wall_offset_us = time.time_ns() // 1000 - int(time.monotonic() * 1_000_000)
    last_activity = time.monotonic()
    while not inbox.lost.is_set():
        now = time.monotonic()
        past_deadline = now >= deadline
        waiting = len(inbox.messages)
        if waiting:
            last_activity = max(last_activity, inbox.messages[-1].timestamp)
            if waiting >= settings.ingest_batch_size or past_deadline or now - inbox.messages[0].timestamp >= settings.ingest_flush_interval_s:
                batch = inbox.take(settings.ingest_batch_size)
                outcome = _store(store, settings, batch, directory, limits, window, wall_offset_us)
                # After a reconnect the broker resends unacked messages under the same packet
                # ids: an ack now could hit another message, so these wait for the next run.
                if inbox.lost.is_set():
                    break
                for message in batch:
                    client.ack(message.mid, message.qos)
                report.outcome.add(outcome)
                report.batches += 1
                report.active_s = time.monotonic() - started
                if past_deadline:
                    break
                continue
        if past_deadline or now - last_activity >= settings.ingest_idle_exit_s:
            break
        wait = settings.ingest_flush_interval_s - (now - inbox.messages[0].timestamp) if waiting else 0.05
        inbox.full.wait(max(0.001, min(wait, 0.05)))
    if inbox.lost.is_set():
        # Nothing is lost: what this run did not ack is redelivered to the next one.
        report.status, report.error = "failed", "broker connection lost during the run"


def _store(store: IngestStore, settings: Settings, batch: list, directory: DeviceDirectory,
           limits: Limits, window: TimeWindow, wall_offset_us: int) -> BatchOutcome:
    messages = [InboundMessage(m.topic, m.payload, wall_offset_us + int(m.timestamp * 1_000_000)) for m in batch]

    @retry(
        retry=retry_if_exception_type(psycopg.OperationalError),
        stop=stop_after_delay(DB_RETRY_SECONDS),
        wait=wait_exponential(multiplier=0.2, max=5),
        before_sleep=lambda state: log.warning("database write failed (%s); retrying", state.outcome.exception()),
        reraise=True,
    )
    def write() -> BatchOutcome:
        if store.conn is None or store.conn.closed or store.conn.broken:
            if not store.connect():
                raise LockLost()
        directory.resolve(store.conn, topic_keys(messages))
        store.conn.commit()
        prepared: PreparedBatch = prepare_batch(messages, directory, limits, window, time.time_ns() // 1000)
        return store.write(messages, prepared)

    try:
        return write()
    except psycopg.OperationalError:
        store.close()
        raise


def _connect(settings: Settings, inbox: _Inbox) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=settings.mqtt_ingest_client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )
    client.username_pw_set(settings.mqtt_ingest_username, settings.mqtt_ingest_password)
    client.tls_set(ca_certs=settings.mqtt_ca_file, cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.on_message = inbox.on_message
    client.on_connect = inbox.on_connect
    client.on_disconnect = inbox.on_disconnect
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = settings.ingest_session_expiry_s
    properties.ReceiveMaximum = min(65535, 2 * settings.ingest_batch_size)
    _connect_with_retry(client, settings, properties)
    client.loop_start()
    if not inbox.connected.wait(15) or inbox.connect_error or inbox.lost.is_set():
        client.loop_stop()
        raise BrokerUnavailable(f"broker refused the drain: {inbox.connect_error or 'no CONNACK'}")
    # Retain Handling 1: retained status messages come once, when the subscription is new,
    # not again on every run.
    options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
    client.subscribe([(topic, options) for topic in SUBSCRIPTIONS])
    return client


@retry(
    retry=retry_if_exception_type(OSError),
    stop=stop_after_delay(20),
    wait=wait_exponential(multiplier=0.5, max=5),
    reraise=True,
)
def _connect_with_retry(client: mqtt.Client, settings: Settings, properties: Properties) -> None:
    client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=30, clean_start=False, properties=properties)


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
        log.warning("could not record the end of ingest run %s: %s", report.run_id, exc)


def _log_summary(report: DrainReport, started: float) -> None:
    report.duration_s = time.monotonic() - started
    log.info("ingest.summary %s", json.dumps(report.summary(), sort_keys=True))
