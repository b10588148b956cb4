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
own client id). Measured with scripts/bench/commands.py on the local stack: a QoS 1 publish on the kept connection
takes 0.3 ms to its PUBACK, a connection per command 3.3 ms (TLS handshake and CONNACK), and across the network to
the broker VM the handshake's round trips only widen the gap; through the API that is 8.3 ms against 13.3 ms.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import uuid
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from shared.accounts.access import acting_user, audit
from shared.accounts.tokens import Principal
from shared.broker.contract import command_topic, device_prefix
from shared.broker.mqtt import BlockingConnection
from shared.core import observability
from shared.core.db import DictConnection, DictPool, tenant_transaction
from shared.core.exceptions import (
    BrokerConnectionLost,
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


class CommanderConnection(BlockingConnection):
    """The API's connection with the commander credential; publish() is QoS 1 and waits for the PUBACK."""

    def __init__(
        self, host: str, port: int, ca_file: str | None, username: str, password: SecretStr, timeout: float
    ) -> None:
        super().__init__(host, port, ca_file, username, password, timeout)
        self.key = (host, port, ca_file, username, password.get_secret_value())

    def connect(self) -> None:
        # Not bound to a client id: each process has its own, so instances never kick each other off.
        connack = self._open(f"mqtt-saas-commander-{secrets.token_hex(6)}", keepalive=60)
        if connack.is_failure:
            self.close()
            raise PublishRefused(connack, "connection")

    def publish(self, topic: str, payload: bytes, properties: Properties) -> None:
        """Returns once the broker acknowledged it. BrokerUnavailable if it cannot tell in time (the connection
        is then dropped, the next publish opens another); BrokerConnectionLost when the connection was found
        dead; PublishRefused on PUBACK >= 128."""
        try:
            reason = self._publish_and_wait(topic, payload, time.monotonic() + self.timeout, properties)
        except BrokerUnavailable:
            self.close()
            raise
        if reason.is_failure:
            raise PublishRefused(reason)


_connection: CommanderConnection | None = None
_connection_lock = threading.Lock()


def commander_connection(settings: Settings) -> CommanderConnection:
    """The process's connection, (re)connected if needed; a new one if the settings changed."""
    global _connection
    wanted = CommanderConnection(
        settings.mqtt_host,
        settings.mqtt_port,
        settings.mqtt_ca_file,
        settings.mqtt_commander_username,
        settings.mqtt_commander_password,
        settings.mqtt_command_timeout_s,
    )
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


def command_message(command: dict[str, Any], tenant: str, device: str, expiry_s: int) -> tuple[bytes, Properties]:
    """The payload a device receives, and its MQTT v5 properties (correlation data = the command id; the
    response topic names where the ack goes: the device's telemetry, as a cmd_ack reading)."""
    sent_at = command["created_at"]
    payload = json.dumps(
        {
            "id": str(command["id"]),
            "name": command["name"],
            "args": command["args"],
            "sent_at": int(sent_at.timestamp() * 1000),
            "ack": {"topic": f"{device_prefix(tenant, device)}/telemetry", "metric": ACK_METRIC},
        },
        separators=(",", ":"),
    ).encode()
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ContentType = "application/json"
    properties.CorrelationData = str(command["id"]).encode()
    properties.ResponseTopic = f"{device_prefix(tenant, device)}/telemetry"
    properties.MessageExpiryInterval = expiry_s
    return payload, properties


def send_command(
    pool: DictPool,
    settings: Settings,
    principal: Principal,
    device_id: int,
    name: str,
    args: dict[str, Any],
    source: str,
) -> dict[str, Any]:
    """Records, audits and publishes one command (staff, owners); the command as recorded after the publish.
    Raises CommandNotDelivered/CommandRefused (after recording the failure) when the broker did not take it."""
    encoded = json.dumps(args, separators=(",", ":"))
    if len(encoded.encode()) > MAX_ARGS_BYTES:
        raise CommandTooLarge()
    if _holds_nul(args):  # jsonb cannot hold NUL: PostgreSQL would refuse the record
        raise CommandArgsInvalid()
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, "owner", "staff")
        target = conn.execute(
            QUERIES["command_target"], {"tenant_id": principal.tenant_id, "device_id": device_id}
        ).fetchone()
        if target is None:
            raise DeviceNotFound()
        # 409, not 422: the request is well-formed, the device's state is what stands in the way (and a
        # disabled device cannot connect to read it).
        if not target["enabled"]:
            raise DeviceDisabled()
        command = one_row(
            conn.execute(
                QUERIES["insert_command"],
                {
                    "tenant_id": principal.tenant_id,
                    "device_id": device_id,
                    "name": name,
                    "args": Jsonb(args),
                    "sent_by": principal.user_id,
                },
            ),
            "insert_command",
        )
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "device.command",
            "device",
            str(device_id),
            source,
            {"command_id": str(command["id"]), "name": name},
        )
    payload, properties = command_message(
        command, target["tenant_slug"], target["name"], settings.mqtt_command_expiry_s
    )
    topic = command_topic(target["tenant_slug"], target["name"])
    failure: str | None = None
    try:
        _publish(settings, topic, payload, properties)
    except BrokerUnavailable as exc:
        failure = "broker_unreachable"
        observability.event(
            log,
            "command.not_delivered",
            {"tenant_id": principal.tenant_id, "device_id": device_id, "error": str(exc)[:300]},
            logging.WARNING,
        )
    except PublishRefused as exc:
        failure = "broker_refused"
        observability.event(
            log,
            "command.refused_by_broker",
            {"tenant_id": principal.tenant_id, "device_id": device_id, "error": str(exc)[:300]},
            logging.ERROR,
        )
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
    except BrokerConnectionLost:
        # A kept connection that died since the last command (a broker restart) may be found dead only now:
        # one try on a fresh connection (not after a timeout: a broker that is slow now would be twice as slow).
        # Should the first copy have reached the broker after all, the device sees the command twice, with the
        # same id to ignore it by.
        commander_connection(settings).publish(topic, payload, properties)


def _set_outcome(
    conn: DictConnection, tenant_id: uuid.UUID, command_id: uuid.UUID, failure: str | None
) -> dict[str, Any]:
    return one_row(
        conn.execute(
            QUERIES["set_command_outcome"],
            {
                "tenant_id": tenant_id,
                "id": command_id,
                "status": "failed" if failure else "sent",
                "failure": failure,
            },
        ),
        "set_command_outcome",
    )


def list_commands(
    pool: DictPool, principal: Principal, device_id: int, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the device's commands, newest first (every role may read)."""
    after_created_at, after_id = decode_cursor(cursor)
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal)
        params = {"tenant_id": principal.tenant_id, "device_id": device_id}
        if conn.execute(QUERIES["command_target"], params).fetchone() is None:
            raise DeviceNotFound()
        conn.execute(QUERIES["acknowledge_commands"], params)
        rows = conn.execute(
            QUERIES["list_commands"],
            {
                **params,
                "after_created_at": after_created_at,
                "after_id": after_id,
                "limit": limit + 1,
            },
        ).fetchall()
    return page_of(rows, limit)
