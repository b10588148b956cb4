"""Commands to devices: record a command, publish it to the device's command topic, list them.

A command is recorded ('pending') and audited in one transaction before it is published, so a device never
gets a command the database does not know of; the publish outcome is then recorded: 'sent' once the broker
acknowledged it (QoS 1, PUBACK < 128), 'failed' when the broker was unreachable or refused it. The API
publishes with its own broker credential (the contract's commander role: publish to command topics, nothing
else), never the provisioner's, which owns the broker.

The message (JSON) carries the command id, also as MQTT v5 correlation data; a device acknowledges by sending
a reading of metric ``cmd_ack`` = the id (and optionally ``cmd_result``) in its telemetry, since its ACL lets
it publish readings only. Listing a device's commands marks those the drain has stored an ack for.

One broker connection is kept per process (created on first use, replaced when it drops; every instance has its
own client id). Measured with scripts/bench_commands.py on the local stack: a QoS 1 publish on the kept connection
takes 0.3 ms to its PUBACK, a connection per command 3.3 ms (TLS handshake and CONNACK), and across the network to
the broker VM the handshake's round trips only widen the gap; through the API that is 8.3 ms against 13.3 ms.
"""
from __future__ import annotations

import json
import logging
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from shared.accounts.access import acting_user, audit
from shared.accounts.tokens import Principal
from shared.broker.contract import command_topic, device_prefix
from shared.core import observability
from shared.core.db import DictConnection, DictPool, tenant_transaction
from shared.core.exceptions import (
    BrokerUnavailable,
    CommandArgsInvalid,
    CommandNotDelivered,
    CommandRefused,
    CommandTooLarge,
    DeviceDisabled,
    DeviceNotFound,
)
from shared.core.paging import decode_cursor, page_of
from shared.core.settings import Settings
from shared.core.sql import QUERIES, one_row

log = logging.getLogger(__name__)

# A command is a small instruction, not a file transfer: well under a constrained device's buffer.
MAX_ARGS_BYTES = 4096


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


ACK_METRIC, RESULT_METRIC = "cmd_ack", "cmd_result"


class PublishRefused(Exception):
    """The broker refused the connection (CONNACK) or the publish (PUBACK) with a failure reason code, e.g.
    135 not authorized: a configuration fault (the commander's password or role), not an outage."""

    def __init__(self, reason: ReasonCode, what: str = "publish") -> None:
        self.reason = reason
        super().__init__(f"broker refused the {what}: {reason.getName()} ({reason.value})")


class ConnectionLost(BrokerUnavailable):
    """The kept connection was found dead when publishing (e.g. after a broker restart)."""


class CommanderConnection:
    """One MQTT v5 connection over verified TLS with the commander credential; publish() is QoS 1 and waits for
    the PUBACK. Safe to share between threads (paho serialises writes; each publish waits for its own mid)."""

    def __init__(self, host: str, port: int, ca_file: str | None, username: str, password: SecretStr,
                 timeout: float) -> None:
        self.key = (host, port, ca_file, username, password.get_secret_value())
        self.host, self.port, self.ca_file, self.username = host, port, ca_file, username
        self._password = password
        self.timeout = timeout
        self._cond = threading.Condition()
        self._client: Client | None = None
        self._connack: ReasonCode | None = None
        self._connected = False
        self._pubacks: dict[int, ReasonCode] = {}

    def __repr__(self) -> str:
        return f"CommanderConnection({self.host}:{self.port}, username={self.username!r})"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._connected

    def connect(self) -> None:
        # Not bound to a client id: each process has its own, so instances never kick each other off.
        client = Client(callback_api_version=CallbackAPIVersion.VERSION2,
                        client_id=f"mqtt-saas-commander-{secrets.token_hex(6)}",
                        protocol=MQTTProtocolVersion.MQTTv5, reconnect_on_failure=False)
        client.tls_set(ca_certs=self.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        client.username_pw_set(self.username, self._password.get_secret_value())
        client.connect_timeout = self.timeout
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        deadline = time.monotonic() + self.timeout
        self._connack, self._connected = None, False
        try:
            client.connect(self.host, self.port, keepalive=60, clean_start=True)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerUnavailable(f"cannot connect to MQTT broker {self.host}:{self.port}: {exc}") from exc
        self._client = client
        client.loop_start()
        try:
            self._wait(lambda: self._connack is not None, deadline, "CONNACK")
            assert self._connack is not None
            if self._connack.is_failure:
                raise PublishRefused(self._connack, "connection")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        client, self._client = self._client, None
        with self._cond:  # a publish waiting on this connection gives up now, not at its deadline
            self._connected = False
            self._cond.notify_all()
        if client is None:
            return
        client.disconnect()
        client.loop_stop()

    def publish(self, topic: str, payload: bytes, properties: Properties) -> None:
        """QoS 1; returns once the broker acknowledged it. BrokerUnavailable if it cannot tell in time
        (the connection is then dropped, the next publish opens another); PublishRefused on PUBACK >= 128."""
        client = self._client
        if client is None or not self._connected:
            raise ConnectionLost("not connected")
        deadline = time.monotonic() + self.timeout
        info = client.publish(topic, payload, qos=1, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.close()
            raise ConnectionLost(f"publish not queued: {info.rc}")
        try:
            self._wait(lambda: info.mid in self._pubacks or not self._connected, deadline, "PUBACK")
        except BrokerUnavailable:
            self.close()
            raise
        with self._cond:
            reason = self._pubacks.pop(info.mid, None)
        if reason is None:
            self.close()
            raise ConnectionLost("connection lost before the PUBACK")
        if reason.is_failure:
            raise PublishRefused(reason)

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        with self._cond:
            while not ready():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BrokerUnavailable(f"no {what} from the MQTT broker within {self.timeout:g}s")
                self._cond.wait(remaining)

    def _on_connect(self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode,
                    properties: Properties | None) -> None:
        with self._cond:
            self._connack, self._connected = reason, not reason.is_failure
            self._cond.notify_all()

    def _on_disconnect(self, client: Client, userdata: Any, flags: DisconnectFlags, reason: ReasonCode,
                       properties: Properties | None) -> None:
        with self._cond:
            self._connected = False
            self._connack = self._connack or reason
            self._cond.notify_all()

    def _on_publish(self, client: Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Properties | None) -> None:
        with self._cond:
            self._pubacks[mid] = reason
            self._cond.notify_all()


_connection: CommanderConnection | None = None
_connection_lock = threading.Lock()


def commander_connection(settings: Settings) -> CommanderConnection:
    """The process's connection, (re)connected if needed; a new one if the settings changed."""
    global _connection
    wanted = CommanderConnection(settings.mqtt_host, settings.mqtt_port, settings.mqtt_ca_file,
                                 settings.mqtt_commander_username, settings.mqtt_commander_password,
                                 settings.mqtt_command_timeout_s)
    with _connection_lock:
        if _connection is not None and (_connection.key != wanted.key or not _connection.connected):
            _connection.close()
            _connection = None
        if _connection is None:
            wanted.connect()
            _connection = wanted
        return _connection


def close_commander_connection() -> None:
    global _connection
    with _connection_lock:
        if _connection is not None:
            _connection.close()
            _connection = None


def command_message(command: dict[str, Any], tenant: str, device: str,
                    expiry_s: int) -> tuple[bytes, Properties]:
    """The payload a device receives, and its MQTT v5 properties (correlation data = the command id; the
    response topic names where the ack goes: the device's telemetry, as a cmd_ack reading)."""
    sent_at = command["created_at"]
    payload = json.dumps({
        "id": str(command["id"]), "name": command["name"], "args": command["args"],
        "sent_at": int(sent_at.timestamp() * 1000),
        "ack": {"topic": f"{device_prefix(tenant, device)}/telemetry", "metric": ACK_METRIC},
    }, separators=(",", ":")).encode()
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ContentType = "application/json"
    properties.CorrelationData = str(command["id"]).encode()
    properties.ResponseTopic = f"{device_prefix(tenant, device)}/telemetry"
    properties.MessageExpiryInterval = expiry_s
    return payload, properties


def send_command(pool: DictPool, settings: Settings, principal: Principal, device_id: int, name: str,
                 args: dict[str, Any], source: str) -> dict[str, Any]:
    """Records, audits and publishes one command (staff, owners); the command as recorded after the publish.
    Raises CommandNotDelivered/CommandRefused (after recording the failure) when the broker did not take it."""
    encoded = json.dumps(args, separators=(",", ":"))
    if len(encoded.encode()) > MAX_ARGS_BYTES:
        raise CommandTooLarge()
    if _holds_nul(args):  # jsonb cannot hold NUL: PostgreSQL would refuse the record
        raise CommandArgsInvalid()
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, "owner", "staff")
        target = conn.execute(QUERIES["command_target"], {"tenant_id": principal.tenant_id,
                                                          "device_id": device_id}).fetchone()
        if target is None:
            raise DeviceNotFound()
        # 409, not 422: the request is well-formed, the device's state is what stands in the way (and a
        # disabled device cannot connect to read it).
        if not target["enabled"]:
            raise DeviceDisabled()
        command = one_row(conn.execute(QUERIES["insert_command"], {
            "tenant_id": principal.tenant_id, "device_id": device_id, "name": name, "args": Jsonb(args),
            "sent_by": principal.user_id}), "insert_command")
        audit(conn, principal.tenant_id, principal.user_id, "device.command", "device", str(device_id), source,
              {"command_id": str(command["id"]), "name": name})
    payload, properties = command_message(command, target["tenant_slug"], target["name"],
                                          settings.mqtt_command_expiry_s)
    topic = command_topic(target["tenant_slug"], target["name"])
    failure: str | None = None
    try:
        _publish(settings, topic, payload, properties)
    except BrokerUnavailable as exc:
        failure = "broker_unreachable"
        observability.event(log, "command.not_delivered", {"tenant_id": principal.tenant_id, "device_id": device_id,
                                                           "error": str(exc)[:300]}, logging.WARNING)
    except PublishRefused as exc:
        failure = "broker_refused"
        observability.event(log, "command.refused_by_broker", {"tenant_id": principal.tenant_id,
                                                               "device_id": device_id, "error": str(exc)[:300]},
                            logging.ERROR)
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        recorded = _set_outcome(conn, principal.tenant_id, command["id"], failure)
    if failure == "broker_unreachable":
        raise CommandNotDelivered()
    if failure == "broker_refused":
        raise CommandRefused()
    return recorded


def _publish(settings: Settings, topic: str, payload: bytes, properties: Properties) -> None:
    connection = commander_connection(settings)
    try:
        connection.publish(topic, payload, properties)
    except ConnectionLost:
        # A kept connection that died since the last command (a broker restart) may be found dead only now:
        # one try on a fresh connection (not after a timeout: a broker that is slow now would be twice as slow).
        # Should the first copy have reached the broker after all, the device sees the command twice, with the
        # same id to ignore it by.
        commander_connection(settings).publish(topic, payload, properties)


def _set_outcome(conn: DictConnection, tenant_id: uuid.UUID, command_id: uuid.UUID,
                 failure: str | None) -> dict[str, Any]:
    return one_row(conn.execute(QUERIES["set_command_outcome"], {
        "tenant_id": tenant_id, "id": command_id, "status": "failed" if failure else "sent", "failure": failure,
    }), "set_command_outcome")


def list_commands(pool: DictPool, principal: Principal, device_id: int, cursor: str | None,
                  limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the device's commands, newest first (every role may read)."""
    after_created_at, after_id = decode_cursor(cursor)
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal)
        params = {"tenant_id": principal.tenant_id, "device_id": device_id}
        if conn.execute(QUERIES["command_target"], params).fetchone() is None:
            raise DeviceNotFound()
        conn.execute(QUERIES["acknowledge_commands"], params)
        rows = conn.execute(QUERIES["list_commands"], {
            **params, "after_created_at": after_created_at, "after_id": after_id, "limit": limit + 1,
        }).fetchall()
    return page_of(rows, limit)
