"""The drain's MQTT connection: a persistent session, a lean PUBLISH parser, batched acks.

The drain connects with a fixed client id and a persistent MQTT v5 session (Clean Start off, a
session expiry longer than any gap between runs), so messages published while no run is active
wait on the broker. It acknowledges a QoS 1 message only after the transaction holding it has
committed; QoS 0 messages have no acknowledgement and are stored by the run that reads them.

The fast path. For every v5 PUBLISH paho builds a Properties object (dozens of hasattr/replace
calls), an MQTTMessage and an MQTTMessageInfo with its own threading.Condition: about 80% of a
drain's CPU per message, measured. The drain needs only QoS, retain, packet id, topic and payload,
so parse_publish reads them straight from the packet paho has read, and a committed batch's
PUBACKs go out as one write. This leans on three paho internals (_handle_publish, _in_packet,
_packet_queue). requirements.txt pins paho exactly, and at import FAST_PATH checks that they
exist with the shape used here; if not, the drain logs a warning and uses paho's own path:
slower, never wrong.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import select
import socket
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from shared.broker.contract import (
    DRAIN_SUBSCRIPTIONS,
    RETIRED_DRAIN_SUBSCRIPTIONS,
    SPARKPLUG_STATE_TOPIC,
    drain_marker_topic,
)
from shared.broker.mqtt import tls_client
from shared.core.exceptions import BrokerUnavailable
from shared.core.settings import Settings
from shared.ingest.messages import InboundMessage

log = logging.getLogger(__name__)

_PUBACK = 0x40
_DISCONNECT_NORMAL = b"\xe0\x00"  # MQTT 5 DISCONNECT, reason 0 (normal), no properties


@dataclass(frozen=True, slots=True)
class Publish:
    """What the drain needs of an incoming PUBLISH. mid is 0 for QoS 0 (no packet id)."""

    qos: int
    retain: bool
    mid: int
    topic: str
    payload: bytes


def parse_publish(command: int, packet: bytes | bytearray) -> Publish | None:
    """Parses an MQTT 5 PUBLISH (fixed-header byte and the rest of the packet), or returns None
    for anything the lean path does not take: QoS 2, a topic alias instead of a topic name, a
    length that runs past the packet, invalid UTF-8. paho's own handler then deals with it (and
    reports a malformed packet as malformed)."""
    qos = (command & 0x06) >> 1
    if qos > 1 or len(packet) < 2:
        return None
    topic_end = 2 + ((packet[0] << 8) | packet[1])
    position = topic_end
    if topic_end == 2 or len(packet) < topic_end + (2 if qos else 0) + 1:
        return None
    mid = 0
    if qos:
        mid = (packet[position] << 8) | packet[position + 1]
        if mid == 0:
            return None  # packet id 0 is invalid for QoS 1
        position += 2
    # Property length is a variable byte integer of at most four bytes; no property is needed.
    shift, length = 0, 0
    while True:
        if position >= len(packet) or shift > 21:
            return None
        byte = packet[position]
        position += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    if position + length > len(packet):
        return None
    try:
        topic = bytes(packet[2:topic_end]).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return Publish(qos, bool(command & 0x01), mid, topic, bytes(packet[position + length :]))


def _paho_internals_as_expected() -> bool:
    """The fast path's assumptions about paho, checked once at import."""
    try:
        handle = inspect.signature(mqtt.Client._handle_publish)
        queue_packet = inspect.signature(mqtt.Client._packet_queue)
        probe = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        in_packet = probe._in_packet
    except (AttributeError, TypeError, ValueError):
        return False
    return (
        list(handle.parameters) == ["self"]
        and list(queue_packet.parameters)[:5] == ["self", "command", "packet", "mid", "qos"]
        and isinstance(in_packet, dict)
        and {"command", "packet"} <= in_packet.keys()
    )


FAST_PATH = _paho_internals_as_expected()
if not FAST_PATH:
    log.warning(
        "paho-mqtt internals differ from what the drain's fast path expects; using paho's own "
        "PUBLISH handling and per-message acks (correct, several times slower)"
    )


class _DrainClient(mqtt.Client):
    """paho's client with a lean handler for incoming PUBLISH packets (see the module docstring)."""

    connection: DrainConnection

    def _handle_publish(self) -> MQTTErrorCode:
        if FAST_PATH:
            publish = parse_publish(self._in_packet["command"], self._in_packet["packet"])
            if publish is not None:
                self.connection.fast_path_messages += 1
                self.connection.receive(publish)
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._handle_publish()


class DrainConnection:
    """The drain's MQTT connection, with paho's socket driven from the caller's thread.

    Received messages pile up in ``received`` until the run takes them. The caller must keep
    calling pump() (even while waiting on the database) so keepalives and acks flow.
    """

    def __init__(self, settings: Settings, keep: bool = True) -> None:
        """keep=False connects with Clean Start and no session expiry: the broker then forgets the
        session and what is queued for it, and nothing is subscribed."""
        self.received: list[InboundMessage] = []
        self.received_mids: list[int] = []  # parallel to received; 0 for QoS 0 (nothing to ack)
        self.first_received_at = 0.0  # monotonic time of the oldest message in `received`
        self.lost = False
        self.fast_path_messages = 0
        self._last_received_us = 0
        self.caught_up = False  # this run's marker came back: the backlog it started with is read
        self.marker_topic = drain_marker_topic(settings.mqtt_ingest_client_id)
        self._marker = ""
        self._control_mids: list[int] = []  # markers to ack; they are not data
        self._connack: ReasonCode | None = None
        self._suback: list[ReasonCode] | None = None
        client = tls_client(
            settings.mqtt_ingest_client_id,
            settings.mqtt_ingest_username,
            settings.mqtt_ingest_password,
            settings.mqtt_ca_file,
            client_class=_DrainClient,
            manual_ack=True,
        )
        assert isinstance(client, _DrainClient)
        client.connection = self
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        self.client = client
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
        properties.SessionExpiryInterval = settings.ingest_session_expiry_s if keep else 0
        properties.ReceiveMaximum = min(65535, 3 * settings.ingest_batch_size)
        # The store thread wakes pump() through this pair when a batch has committed, so its acks go
        # out at once rather than after pump's wait for network data runs out.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        _connect_with_retry(client, settings, properties, clean_start=not keep)
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # Acks go out as one write per batch already; without Nagle the last small write of a
            # run (its DISCONNECT) does not wait ~40 ms for the broker's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._wait(lambda: self._connack is not None or self.lost, 15, "CONNACK")
        if self._connack is None or self._connack.is_failure:
            raise BrokerUnavailable(f"broker refused the drain: {self._connack or 'connection closed'}")
        if not keep:
            return
        # No Local: the drain's own retained-message clears (empty publishes) do not come back.
        # Retain As Published: the drain sees which messages the broker also kept as retained.
        # Retain Handling 1: retained messages come once, when the subscription is new.
        device_forms = SubscribeOptions(
            qos=1, noLocal=True, retainAsPublished=True, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
        )
        marker = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        client.subscribe([*((topic, device_forms) for topic in DRAIN_SUBSCRIPTIONS), (self.marker_topic, marker)])
        self._wait(lambda: self._suback is not None or self.lost, 15, "SUBACK")
        if self.lost or self._suback is None:
            raise BrokerUnavailable("broker closed the connection after CONNACK")
        # One reason code per subscription; strict=False keeps a short SUBACK from raising here.
        refused = [
            topic
            for topic, code in zip([*DRAIN_SUBSCRIPTIONS, self.marker_topic], self._suback, strict=False)
            if code.is_failure
        ]
        if refused:
            # An ACL that does not let the drain read what devices may publish would lose data.
            raise BrokerUnavailable(f"broker refused the drain's subscriptions {refused}")
        # After the subscriptions that cover them: a message matching a retired filter as well would come
        # twice. Unsubscribing a filter the session does not have is a no-op.
        client.unsubscribe(list(RETIRED_DRAIN_SUBSCRIPTIONS))

    # -- receiving ------------------------------------------------------------------------------

    def receive(self, publish: Publish) -> None:
        if publish.topic == self.marker_topic:
            if publish.mid:
                self._control_mids.append(publish.mid)
            # A marker of an earlier run that died before reading it is just acked.
            if self._marker and publish.payload == self._marker.encode():
                self.caught_up = True
            return
        if not self.received:
            self.first_received_at = time.monotonic()
        # Strictly increasing: the receipt time is the ts of a reading without one, and two such readings
        # of a metric read in the same microsecond would otherwise be one dedup key.
        received_us = max(time.time_ns() // 1000, self._last_received_us + 1)
        self._last_received_us = received_us
        self.received.append(InboundMessage(publish.topic, publish.payload, received_us, publish.retain))
        self.received_mids.append(publish.mid)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """paho's path, for what the lean handler passes on (or everything, without FAST_PATH)."""
        mid = message.mid if message.qos == 1 else 0
        # paho annotates payload as bytes | bytearray; a received one is bytes (struct-unpacked).
        self.receive(Publish(message.qos, bool(message.retain), mid, message.topic, message.payload))  # type: ignore[arg-type]

    def take(self, limit: int) -> tuple[list[InboundMessage], list[int]]:
        """Up to limit of the oldest messages received, and the packet ids to acknowledge once
        they are stored."""
        taken = (self.received[:limit], self.received_mids[:limit])
        # What stays keeps its first_received_at: older than its truth, so it flushes sooner.
        del self.received[:limit], self.received_mids[:limit]
        return taken

    def forget_unackable(self) -> None:
        """Drops received QoS 1 messages once they can no longer be acked (the connection is
        gone): the broker redelivers them to the next run, and storing them now as well would
        store a reading without ts twice. QoS 0 messages stay: nobody will send them again."""
        kept = [(m, mid) for m, mid in zip(self.received, self.received_mids, strict=True) if mid == 0]
        self.received = [m for m, _ in kept]
        self.received_mids = [0] * len(kept)

    def publish_marker(self) -> None:
        """Queues this run's marker behind whatever the broker holds for the session."""
        self._marker = uuid.uuid4().hex
        self.client.publish(self.marker_topic, self._marker, qos=1)

    def publish_host_state(self) -> None:
        """Sparkplug 3.0's STATE of the primary host, retained: online. The host is the drain's session,
        which the broker keeps (and queues for) between runs, so it says online with no will."""
        state = json.dumps({"online": True, "timestamp": time.time_ns() // 1_000_000})
        self.client.publish(SPARKPLUG_STATE_TOPIC, state, qos=1, retain=True)

    # -- sending --------------------------------------------------------------------------------

    def ack(self, mids: list[int]) -> None:
        """Acknowledges QoS 1 messages (mid 0, QoS 0, is skipped). paho would queue, wake and write
        one PUBACK at a time; a v5 PUBACK with reason Success is 4 bytes, so the fast path sends
        them all as one write through paho's own queue (which keeps partial writes in order with
        everything else it sends)."""
        mids = [mid for mid in mids if mid]
        if not mids or self.lost:
            return
        if not FAST_PATH:
            for mid in mids:
                self.client.ack(mid, 1)
            return
        self.client._packet_queue(_PUBACK, b"".join(struct.pack("!BBH", _PUBACK, 2, mid) for mid in mids), 0, 0)

    def ack_control(self) -> None:
        mids, self._control_mids = self._control_mids, []
        self.ack(mids)

    def clear_retained(self, topics: list[str]) -> None:
        """Deletes the broker's retained copy of these topics (an empty retained publish), so what
        devices retain stays bounded by what they send between two runs."""
        for topic in topics:
            if not self.lost:
                self.client.publish(topic, b"", qos=0, retain=True)

    # -- the socket -----------------------------------------------------------------------------

    def pump(self, timeout: float, max_packets: int = 1000) -> None:
        """Reads up to max_packets packets that are available (waiting up to timeout for the
        first), then writes what is queued and keeps the connection alive."""
        client, sock = self.client, self.client.socket()
        if sock is None:
            self.lost = True
            return
        pending = getattr(sock, "pending", lambda: 0)
        ready = [sock] if pending() else select.select([sock, self._wake_r], [], [], timeout)[0]
        if self._wake_r in ready:
            self._drain_wakeups()
        if sock in ready:
            for _ in range(max_packets):
                if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                    self.lost = True
                    return
                # Decrypted bytes left in the TLS record: more packets without a syscall.
                if not pending() and not select.select([sock], [], [], 0)[0]:
                    break
        if client.want_write():
            client.loop_write()
        if client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
            self.lost = True

    def wake(self) -> None:
        """Ends a pump() that is waiting for network data; callable from any thread."""
        # BlockingIOError: already woken (the buffer is full); OSError: closed at the end of the run.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError (a subclass): nothing left to read
            while self._wake_r.recv(4096):
                pass

    def flush_writes(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.lost and self.client.want_write() and time.monotonic() < deadline:
            self.pump(0.02)

    def disconnect_and_read_rest(self, timeout: float = 5.0) -> None:
        """Flushes queued acks, sends DISCONNECT, then reads until the broker closes the socket.

        QoS 0 messages have no acknowledgement: once the broker has written one to this socket it
        is the drain's. paho closes the socket the moment it has written a DISCONNECT, dropping
        whatever the broker sent in the meantime; writing the DISCONNECT through paho's queue as
        raw bytes keeps the socket open, so everything the broker sent before it handled the
        DISCONNECT lands in ``received``; QoS 1 messages read now cannot be acked any more, so
        they are dropped (forget_unackable) and the broker redelivers them to the next run. The
        session stays on the broker.
        """
        self.flush_writes(timeout)
        if self.lost or not FAST_PATH:
            self.close()
            self.lost = True
            self.forget_unackable()
            return
        self.client._packet_queue(_PUBACK, _DISCONNECT_NORMAL, 0, 0)
        deadline = time.monotonic() + timeout
        while not self.lost and time.monotonic() < deadline:
            self.pump(0.05)
        self._close_socket()
        self.lost = True
        self.forget_unackable()

    def close(self) -> None:
        """Flushes queued writes (bounded wait), then disconnects, keeping the session."""
        self.flush_writes(5)
        if not self.lost:
            self.client.disconnect()
            deadline = time.monotonic() + 5
            while self.client.want_write() and time.monotonic() < deadline:
                self.client.loop_write()
        self._close_socket()

    def _close_socket(self) -> None:
        sock = self.client.socket()
        if sock is not None:  # paho closes it once DISCONNECT is written; not if that timed out
            sock.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- paho callbacks -------------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Properties | None
    ) -> None:
        self._connack = reason_code

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Properties | None
    ) -> None:
        self.lost = True

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._suback = reason_codes

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties | None
    ) -> None:
        if reason_code.is_failure:
            # The marker refused (an ACL from before the contract): the run then ends by its
            # idle exit or time budget instead.
            log.warning("broker refused a drain publish: %s", reason_code)

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
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


def prepare_session(settings: Settings) -> None:
    """Creates the drain's persistent session and subscriptions without draining anything, so
    what devices publish before the first run waits on the broker instead of being dropped. Run it
    once when deploying, never while a run is active (the same client id would kick the run)."""
    DrainConnection(settings).close()


def drop_session(settings: Settings) -> None:
    """Removes the drain's session and what is queued for it: for a retired client id."""
    DrainConnection(settings, keep=False).close()
