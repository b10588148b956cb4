"""One MQTT v5/TLS connection per device to the cloud broker, with the credential the API issued for it.

Why one connection per device rather than one gateway credential: the broker contract stays as it is (each
device's ACL allows its own topics and nothing else, so a leaked gateway password exposes only the devices whose
passwords are on it, each revocable alone), each device keeps its own last will and command topic, and the
dashboard's status, credentials and rotation work for gateway devices exactly as for direct ones. The cost is a TLS
handshake per device on reconnect (about 1 ms of broker CPU each, docs/capacity.md) and an idle connection per
device (nothing measurable).

Each connection is a fresh paho client (Clean Start, no session): a reconnect never replays paho's own queue, only
what the buffer says is pending. On every connect the device's readings acknowledged within the resend window are
sent again (the broker may have been SIGKILLed and restarted from a snapshot that predates them). Session Present
cannot tell: a broker restarted from its snapshot reports the session as present although it forgot the messages
it acknowledged after that snapshot (measured on Mosquitto 2.0.11), so the gateway re-sends on every reconnect
and the drain's dedup key makes the copies free.

A PUBACK < 128 marks a message's rows acknowledged, except 16 (no matching subscribers): the broker accepted it but
nobody was subscribed, i.e. the drain's persistent session is missing and the message is gone, so the rows stay
pending and are sent again after ``retry_s``. A PUBACK >= 128 (135: the credential's ACL refuses it) is retried the
same way and logged as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import contract
from gateway.config import BrokerConfig, Credential, PublishConfig
from gateway.hub import Hub, event
from gateway.payloads import build_messages

log = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS = 16
CLOSE_WAIT_S = 3.0  # on shutdown: for the acks of what is in flight, and the "offline" status


def tls_context(broker: BrokerConfig) -> ssl.SSLContext:
    """One verifying TLS context for every connection: loading the system's CA store takes about 70 ms, which a
    context per connection would spend on the event loop at every reconnect of every device."""
    context = ssl.create_default_context(cafile=broker.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _Connection:
    """One paho client's life; its callbacks come on paho's thread and are handed to the event loop."""

    def __init__(self, uplink: Uplink, loop: asyncio.AbstractEventLoop) -> None:
        self.uplink, self.loop = uplink, loop
        self.connack: asyncio.Future[Any] = loop.create_future()
        self.lost = asyncio.Event()
        self.inflight: dict[int, tuple[tuple[int, ...], float]] = {}
        self.status_mids: set[int] = set()
        cred, broker = uplink.credential, uplink.broker
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cred.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.username_pw_set(cred.username, cred.password)
        client.tls_set_context(uplink.tls)
        client.will_set(uplink.status_topic, "offline", qos=1, retain=True)
        client.connect_timeout = broker.connect_timeout_s
        client.max_inflight_messages_set(uplink.publish.max_in_flight + 4)  # our own limit decides; status fits too
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self.client = client

    def _hand(self, function: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the gateway is exiting
            self.loop.call_soon_threadsafe(function, *args)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._hand(self._connack, reason)

    def _connack(self, reason: Any) -> None:
        if not self.connack.done():
            self.connack.set_result(reason)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        def lost() -> None:
            self._connack(reason)
            self.lost.set()
            self.uplink.wake_always()

        self._hand(lost)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._hand(self.uplink.on_puback, self, mid, reason.value)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        self._hand(lambda: self.uplink.spawn(self.uplink.hub.handle_command(self.uplink.device, payload)))


class Uplink:
    def __init__(
        self,
        hub: Hub,
        tenant: str,
        credential: Credential,
        broker: BrokerConfig,
        publish: PublishConfig,
        tls: ssl.SSLContext,
    ) -> None:
        self.hub, self.tenant, self.credential = hub, tenant, credential
        self.tls = tls
        self.device = credential.device
        self.broker, self.publish = broker, publish
        prefix = contract.device_prefix(tenant, self.device)
        self.status_topic = f"{prefix}/{contract.STATUS_FORM}"
        self.command_topic = f"{prefix}/{contract.COMMAND_FORM}"
        self._changed = asyncio.Event()
        self._connection: _Connection | None = None
        self._retry_at: float | None = None
        self._status_sent: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_refusal_log = 0.0
        self._await_ack = False
        self.connected = False

    # -- called from the hub and the connection -----------------------------------------------------------------

    def wake(self) -> None:
        """New rows for the device: publish them, unless a partial message is already on its way (then they go
        with the next one, when its PUBACK comes: under load messages grow instead of multiplying)."""
        if not self._await_ack:
            self._changed.set()

    def wake_always(self) -> None:
        self._changed.set()

    def source_state_changed(self) -> None:
        self._changed.set()

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_puback(self, connection: _Connection, mid: int, reason: int) -> None:
        if connection is not self._connection:
            return  # an old connection's: its rows are pending again anyway
        if mid in connection.status_mids:
            connection.status_mids.discard(mid)
            return
        entry = connection.inflight.pop(mid, None)
        if entry is None:
            return
        seqs, sent_at = entry
        self._await_ack = False
        self._changed.set()
        if reason < 128 and reason != NO_MATCHING_SUBSCRIBERS:
            self.hub.latencies_ms.append((time.monotonic() - sent_at) * 1000)
            self.hub.published += len(seqs)
            self.hub.acknowledged(self.device, seqs, time.time())
            return
        self.hub.refused += len(seqs)
        if self._retry_at is None:
            self._retry_at = time.monotonic() + self.publish.retry_s
        if time.monotonic() - self._last_refusal_log > 60:
            self._last_refusal_log = time.monotonic()
            why = (
                "no matching subscribers: the drain's session is missing on the broker, so the broker dropped it"
                if reason == NO_MATCHING_SUBSCRIBERS
                else "refused by the broker (check the device's credential)"
            )
            event(
                "publish.not_stored",
                {"device": self.device, "reason_code": reason, "why": why, "retry_s": self.publish.retry_s},
                logging.WARNING if reason == NO_MATCHING_SUBSCRIBERS else logging.ERROR,
            )

    # -- the connection loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        delay = min(1.0, self.broker.reconnect_max_s)
        while not self.hub.stopping.is_set():
            connection = _Connection(self, asyncio.get_running_loop())
            try:
                if await self._connect(connection):
                    delay = min(1.0, self.broker.reconnect_max_s)
                    await self._serve(connection)
            except Exception as exc:  # noqa: BLE001 - logged, then reconnect
                event(
                    "uplink.error",
                    {"device": self.device, "error": f"{type(exc).__name__}: {exc}"[:300]},
                    logging.ERROR,
                )
            finally:
                self.connected = False
                self._connection = None
                await asyncio.to_thread(self._stop_client, connection.client)
            if self.hub.stopping.is_set():
                return
            # Jittered, so fifty devices do not all hand the restarted broker their handshakes in one instant.
            pause = delay * random.uniform(0.5, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hub.stopping.wait(), pause)
            delay = min(delay * 2, self.broker.reconnect_max_s)

    @staticmethod
    def _stop_client(client: mqtt.Client) -> None:
        with contextlib.suppress(Exception):
            client.disconnect()
        client.loop_stop()

    async def _connect(self, connection: _Connection) -> bool:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0
        client = connection.client
        try:
            await asyncio.to_thread(
                client.connect,
                self.broker.host,
                self.broker.port,
                keepalive=self.broker.keepalive_s,
                clean_start=True,
                properties=properties,
            )
        except (OSError, ssl.SSLError) as exc:
            event(
                "uplink.unreachable",
                {"device": self.device, "broker": f"{self.broker.host}:{self.broker.port}", "error": str(exc)[:200]},
                logging.WARNING,
            )
            return False
        client.loop_start()
        try:
            reason = await asyncio.wait_for(connection.connack, self.broker.connect_timeout_s)
        except TimeoutError:
            event("uplink.no_connack", {"device": self.device}, logging.WARNING)
            return False
        if reason.is_failure:
            event(
                "uplink.refused",
                {"device": self.device, "reason": reason.getName(), "username": self.credential.username},
                logging.ERROR,
            )
            return False
        self._connection = connection
        self.connected = True
        client.subscribe(self.command_topic, qos=1)
        self._status_sent = None
        resent = await self.hub.requeue_acknowledged(self.device)
        self.hub.resent += resent
        event("uplink.connected", {"device": self.device, "resent": resent})
        return True

    async def _serve(self, connection: _Connection) -> None:
        """Publishes the device's pending rows, at most max_in_flight messages awaiting their PUBACK at a time,
        until the connection is lost or the gateway stops."""
        cursor = 0  # rows up to here were handed to this connection
        stop_by: float | None = None
        self._await_ack = False
        while not connection.lost.is_set():
            self._changed.clear()
            if self.hub.stopping.is_set() and self.hub.flushed.is_set():
                # Stopping: what the sources read last is in the buffer now; publish it too, for a while.
                stop_by = stop_by or time.monotonic() + CLOSE_WAIT_S
                more = bool(connection.inflight) or bool(
                    await self.hub.db(self.hub.buffer.pending, self.device, cursor, 1)
                )
                if time.monotonic() > stop_by or not more:
                    await self._close(connection)
                    return
            self._send_status(connection)
            if self._retry_at is not None:
                if time.monotonic() < self._retry_at or connection.inflight:
                    await self._wait(max(0.05, self._retry_at - time.monotonic()))
                    continue
                self._retry_at, cursor = None, 0  # everything not acknowledged goes again
            if len(connection.inflight) < self.publish.max_in_flight:
                rows = await self.hub.db(self.hub.buffer.pending, self.device, cursor, self.publish.max_records)
                if rows and connection.inflight and len(rows) < self.publish.max_records and not stop_by:
                    self._await_ack = True  # a partial message waits for the one in flight: it will be fuller
                    await self._wait(None)
                    continue
                if rows and not connection.lost.is_set():
                    for message in build_messages(self.tenant, self.device, rows, self.publish.max_records):
                        info = connection.client.publish(message.topic, message.payload, qos=1)
                        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                            connection.lost.set()
                            break
                        connection.inflight[info.mid] = (message.seqs, time.monotonic())
                    cursor = rows[-1].seq
                    continue
            await self._wait(0.1 if stop_by else None)

    async def _wait(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _send_status(self, connection: _Connection) -> None:
        """Retained online/offline as the device's source answers (the dashboard's 'which machines run'); the will
        says offline when the gateway itself is gone."""
        status = "offline" if self.hub.source_ok.get(self.device) is False else "online"
        if status != self._status_sent:
            info = connection.client.publish(self.status_topic, status, qos=1, retain=True)
            connection.status_mids.add(info.mid)
            self._status_sent = status

    async def _close(self, connection: _Connection) -> None:
        """On shutdown: wait briefly for the acks in flight, say offline (a clean DISCONNECT suppresses the will)."""
        deadline = time.monotonic() + CLOSE_WAIT_S
        while connection.inflight and not connection.lost.is_set() and time.monotonic() < deadline:
            self._changed.clear()
            await self._wait(deadline - time.monotonic())
        info = connection.client.publish(self.status_topic, "offline", qos=1, retain=True)
        connection.status_mids.add(info.mid)
        while info.mid in connection.status_mids and not connection.lost.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
