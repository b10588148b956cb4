"""One run of the MQTT drain: the broker's persistent session into PostgreSQL.

The drain connects with a fixed client id and a persistent MQTT v5 session (Clean Start off,
a session expiry longer than any gap between runs), so messages published while no run is
active wait on the broker. It acknowledges a message only after the transaction holding it has
committed (manual acks): a crash at any instant leaves the message unacknowledged, and the
broker redelivers it to the next run, where the dedup key makes the second copy a no-op.

Two threads share the work. This one drives paho's socket itself: it reads every packet a TLS
record holds per wake-up (paho's own loop pays a select() per packet), cuts micro-batches,
validates them and sends the acknowledgements of each committed batch as one write. The store
thread only writes, so PostgreSQL's time overlaps all the Python work. Receive Maximum is three
batches: one being written, one queued, one filling.
"""
from __future__ import annotations

import json
import logging
import queue
import select
import ssl
import struct
import threading
import time
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
from shared.broker_contract import DRAIN_SUBSCRIPTIONS
from shared.payloads import Limits
from shared.settings import Settings

log = logging.getLogger(__name__)

_PUBACK = 0x40


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
                "duration_s": round(self.duration_s, 3), "active_s": round(self.active_s, 3),
                "error": self.error, **asdict(self.outcome)}


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
    session = None
    try:
        store.ensure_partitions(settings.ingest_max_past_days + 1)
        report.run_id = store.start_run()
        session = _BrokerSession(settings)
        _drain(settings, store, session, report, started)
    except Exception as exc:
        report.status, report.error = "failed", f"{type(exc).__name__}: {exc}"[:1000]
        raise
    finally:
        if session is not None:
            session.close()
        _finish(store, report)
        store.close()
        _log_summary(report, started)
    return report


def prepare_session(settings: Settings) -> None:
    """Creates the drain's persistent session and subscriptions without draining anything, so
    what devices publish before the first run waits on the broker instead of being dropped. Run it
    once when deploying, never while a run is active (the same client id would kick the run)."""
    _BrokerSession(settings).close()


def drop_session(settings: Settings) -> None:
    """Removes the drain's session and what is queued for it: for a retired client id."""
    _BrokerSession(settings, keep=False).close()


class _DrainClient(mqtt.Client):
    """paho's client with a lean handler for incoming PUBLISH packets.

    For every v5 PUBLISH paho builds a Properties object (dozens of hasattr/replace calls), an
    MQTTMessage and an MQTTMessageInfo with its own threading.Condition: about 80% of a drain's
    CPU per message, measured. The drain needs only the packet id, topic and payload, so this
    parses them straight from the packet paho has read. Anything it does not expect (QoS 2, a
    topic alias, a malformed packet) goes to paho's own handler. It relies on paho's internal
    _in_packet and _handle_publish, so requirements.txt bounds the paho version; the tests run it.
    """

    sink: "_BrokerSession"

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        packet = self._in_packet["packet"]
        qos = (self._in_packet["command"] & 0x06) >> 1
        topic_end = 2 + ((packet[0] << 8) | packet[1])
        if qos != 1 or topic_end == 2 or len(packet) < topic_end + 3:
            return super()._handle_publish()
        mid = (packet[topic_end] << 8) | packet[topic_end + 1]
        # Property length is a variable byte integer; the drain needs none of the properties.
        position, shift, length = topic_end + 2, 0, 0
        while True:
            if position >= len(packet) or shift > 21:
                return super()._handle_publish()  # malformed: paho reports it as such
            byte = packet[position]
            position += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        if position + length > len(packet):
            return super()._handle_publish()
        try:
            topic = packet[2:topic_end].decode("utf-8")
        except UnicodeDecodeError:
            return super()._handle_publish()
        self.sink.receive(mid, topic, bytes(packet[position + length:]))
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


class _BrokerSession:
    """The drain's MQTT connection, with paho's socket driven from this thread."""

    def __init__(self, settings: Settings, keep: bool = True) -> None:
        """keep=False connects with Clean Start and no session expiry: the broker then forgets
        the session, and nothing is subscribed."""
        self.received: list[InboundMessage] = []
        self.received_mids: list[int] = []
        self.first_received_at = 0.0  # monotonic time of the oldest message in `received`
        self.lost = False
        self._connack: mqtt.ReasonCode | None = None
        self._suback = False
        client = _DrainClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=settings.mqtt_ingest_client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.username_pw_set(settings.mqtt_ingest_username, settings.mqtt_ingest_password)
        client.tls_set(ca_certs=settings.mqtt_ca_file, cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.sink = self
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        self.client = client
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = settings.ingest_session_expiry_s if keep else 0
        properties.ReceiveMaximum = min(65535, 3 * settings.ingest_batch_size)
        _connect_with_retry(client, settings, properties, clean_start=not keep)
        self._wait(lambda: self._connack is not None or self.lost, 15, "CONNACK")
        if self._connack is None or self._connack.is_failure:
            raise BrokerUnavailable(f"broker refused the drain: {self._connack or 'connection closed'}")
        if not keep:
            return
        # Retain Handling 1: retained status messages come once, when the subscription is
        # new, not again on every run.
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe([(topic, options) for topic in DRAIN_SUBSCRIPTIONS])
        self._wait(lambda: self._suback or self.lost, 15, "SUBACK")
        if self.lost:
            raise BrokerUnavailable("broker closed the connection after CONNACK")

    def receive(self, mid: int, topic: str, payload: bytes) -> None:
        if not self.received:
            self.first_received_at = time.monotonic()
        self.received.append(InboundMessage(topic, payload, time.time_ns() // 1000))
        self.received_mids.append(mid)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        """paho's path, for what the lean handler passes on. A QoS 0 message gets packet id 0,
        which no QoS 1 message has, and is not acknowledged."""
        self.receive(message.mid if message.qos == 1 else 0, message.topic, message.payload)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connack = reason_code

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.lost = True

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._suback = True

    def pump(self, timeout: float, max_packets: int = 1000) -> None:
        """Reads up to max_packets packets that are available (waiting up to timeout for the
        first), then writes what is queued and keeps the connection alive."""
        client, sock = self.client, self.client.socket()
        if sock is None:
            self.lost = True
            return
        if sock.pending() or select.select([sock], [], [], timeout)[0]:
            for _ in range(max_packets):
                if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                    self.lost = True
                    return
                # Decrypted bytes left in the TLS record: more packets without a syscall.
                if not sock.pending() and not select.select([sock], [], [], 0)[0]:
                    break
        if client.want_write():
            client.loop_write()
        if client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
            self.lost = True

    def take(self, limit: int) -> tuple[list[InboundMessage], list[int]]:
        """Up to limit of the oldest messages received, and the packet ids to acknowledge once
        they are stored."""
        taken = (self.received[:limit], self.received_mids[:limit])
        # What stays keeps its first_received_at: older than its truth, so it flushes sooner.
        del self.received[:limit], self.received_mids[:limit]
        return taken

    def ack(self, mids: list[int]) -> None:
        """Acknowledges a committed batch. paho would queue, wake and write one PUBACK at a time;
        a v5 PUBACK with reason Success is 4 bytes, so the whole batch goes as one write through
        paho's own queue (which keeps partial writes in order with everything else it sends)."""
        mids = [mid for mid in mids if mid]
        if not mids:
            return
        queue_packet = getattr(self.client, "_packet_queue", None)
        if queue_packet is None:  # a paho without the internal queue: correct, just slower
            for mid in mids:
                self.client.ack(mid, 1)
            return
        blob = b"".join(struct.pack("!BBH", _PUBACK, 2, mid) for mid in mids)
        queue_packet(_PUBACK, blob, 0, 0)

    def close(self) -> None:
        """Flushes queued acks (bounded wait), then disconnects, keeping the session."""
        client = self.client
        deadline = time.monotonic() + 5
        while not self.lost and client.want_write() and time.monotonic() < deadline:
            self.pump(0.05)
        if not self.lost:
            client.disconnect()
            while client.want_write() and time.monotonic() < deadline:
                client.loop_write()
        sock = client.socket()
        if sock is not None:  # paho closes it once DISCONNECT is written; not if that timed out
            sock.close()

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"no {what} from the broker within {timeout:.0f} s")
            self.pump(0.1)


@retry(
    retry=retry_if_exception_type(OSError),
    stop=stop_after_delay(20),
    wait=wait_exponential(multiplier=0.5, max=5),
    reraise=True,
)
def _connect_with_retry(client: mqtt.Client, settings: Settings, properties: Properties, clean_start: bool) -> None:
    # Clean Start stays off for the drain even on its first connect: Mosquitto 2.0 does not
    # persist a session whose last CONNECT had it on, so that session would not survive a restart.
    client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=30, clean_start=clean_start, properties=properties)


def _retry_database(settings: Settings, what: str):
    """Retries transient database errors (connection lost, server restarting) with backoff for
    INGEST_DB_RETRY_S; then the error propagates and the run ends without acking."""
    return retry(
        retry=retry_if_exception_type(psycopg.OperationalError),
        stop=stop_after_delay(settings.ingest_db_retry_s),
        wait=wait_exponential(multiplier=0.2, max=5),
        before_sleep=lambda state: log.warning("%s failed (%s); retrying", what, state.outcome.exception()),
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
        self._limits = Limits(settings.ingest_max_payload_bytes, settings.ingest_max_metrics, settings.ingest_max_records)
        self._window = TimeWindow(settings.ingest_max_past_days * 86400, settings.ingest_max_future_s)
        self._directory = DeviceDirectory()
        self._conn: psycopg.Connection | None = None

    def prepare(self, messages: list[InboundMessage]) -> PreparedBatch:
        keys = self._directory.missing(topic_keys(messages))
        if keys:
            self._resolve(keys)
        return prepare_batch(messages, self._directory, self._limits, self._window, time.time_ns() // 1000)

    def _resolve(self, keys: set[tuple[str, str]]) -> None:
        @_retry_database(self._settings, "device lookup")
        def resolve() -> None:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = psycopg.connect(self._settings.ingest_database_url, autocommit=True,
                                             application_name="mqtt_ingest", connect_timeout=10)
            self._directory.resolve(self._conn, keys)

        resolve()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class _StoreThread(threading.Thread):
    """Writes prepared batches in order on the run's locked session; hands committed ones back."""

    def __init__(self, settings: Settings, store: IngestStore) -> None:
        super().__init__(name="mqtt_ingest-store", daemon=True)
        self.todo: queue.Queue[tuple[list[int], list[InboundMessage], PreparedBatch] | None] = queue.Queue(maxsize=1)
        self.done: queue.Queue[tuple[list[int], BatchOutcome]] = queue.Queue()
        self.error: BaseException | None = None
        self.in_flight = 0  # batches handed over and not yet acked; only the network thread counts
        self._settings = settings
        self._store = store

    def hand_over(self, batch: tuple[list[int], list[InboundMessage], PreparedBatch] | None) -> None:
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
                    mids, messages, prepared = batch
                    self.done.put((mids, self._write(messages, prepared)))
            except BaseException as exc:  # noqa: BLE001 - reported to the network thread
                self.error = exc
            finally:
                self.todo.task_done()

    def _write(self, messages: list[InboundMessage], prepared: PreparedBatch) -> BatchOutcome:
        store = self._store

        @_retry_database(self._settings, "database write")
        def write() -> BatchOutcome:
            if store.conn is None or store.conn.closed or store.conn.broken:
                if not store.connect():
                    raise LockLost()
            return store.write(messages, prepared)

        return write()


def _drain(settings: Settings, store: IngestStore, session: _BrokerSession,
           report: DrainReport, started: float) -> None:
    validator = _Validator(settings)
    writer = _StoreThread(settings, store)
    writer.start()
    deadline = started + settings.ingest_time_budget_s
    flush_after = settings.ingest_flush_interval_s
    last_activity = time.monotonic()
    try:
        while not session.lost and writer.error is None:
            session.pump(0.05)
            now = time.monotonic()
            if _ack_committed(session, writer, report, started):
                last_activity = now  # the broker sends more once it has the acks
            received = session.received
            if received:
                last_activity = now
                due = len(received) >= settings.ingest_batch_size or now - session.first_received_at >= flush_after
                if (due or now >= deadline) and not writer.todo.full():
                    messages, mids = session.take(settings.ingest_batch_size)
                    writer.hand_over((mids, messages, validator.prepare(messages)))
            if now >= deadline or (not received and not writer.in_flight and now - last_activity >= settings.ingest_idle_exit_s):
                break
    finally:
        # What was received but not handed over is not acked: the next run gets it again.
        writer.hand_over(None)
        while writer.is_alive():
            writer.join(0.05)
            if not session.lost:
                session.pump(0)
        _ack_committed(session, writer, report, started)
        validator.close()
    if writer.error is not None:
        raise writer.error
    if session.lost:
        # Nothing is lost: what this run did not ack is redelivered to the next one.
        report.status, report.error = "failed", "broker connection lost during the run"


def _ack_committed(session: _BrokerSession, writer: _StoreThread, report: DrainReport, started: float) -> bool:
    """Acks the batches the store thread has committed; True if there were any."""
    acked = False
    while True:
        try:
            mids, outcome = writer.done.get_nowait()
        except queue.Empty:
            return acked
        acked = True
        # After a reconnect the broker resends unacked messages under the same packet ids: an ack
        # could then hit another message, so a lost connection acks nothing more.
        if not session.lost:
            session.ack(mids)
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
        log.warning("could not record the end of ingest run %s: %s", report.run_id, exc)


def _log_summary(report: DrainReport, started: float) -> None:
    report.duration_s = time.monotonic() - started
    log.info("ingest.summary %s", json.dumps(report.summary(), sort_keys=True))
