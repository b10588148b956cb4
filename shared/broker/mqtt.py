"""How the app's own MQTT clients reach the broker: MQTT v5 over TLS that verifies the broker's
certificate (there is no insecure mode), logged in with one of the contract's service credentials.

tls_client() builds such a paho client for every caller, the drain's included (which drives paho's
socket from its own thread). BlockingConnection is the shape the dynsec admin and the API's commander
share: paho's network loop in its thread, and each call waiting for its answer (CONNACK, SUBACK,
PUBACK) with a deadline, so a broker that is down or silent becomes BrokerUnavailable in bounded time.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from shared.core.exceptions import BrokerConnectionLost, BrokerUnavailable


def tls_client(
    client_id: str,
    username: str,
    password: str | SecretStr,
    ca_file: str | None,
    *,
    client_class: type[Client] = Client,
    **options: Any,
) -> Client:
    """A paho MQTT v5 client that will verify the broker (ca_file None: the system's trust store) and log in
    as username; it does not connect. options go to the client class (manual_ack, reconnect_on_failure, ...)."""
    client = client_class(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        **options,
    )
    client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    secret = password.get_secret_value() if isinstance(password, SecretStr) else password
    client.username_pw_set(username, secret)
    return client


class BlockingConnection:
    """One connection with paho's loop in its thread; callers wait for each answer with a deadline.
    Subclasses add callbacks for what they receive. Safe to share between threads: paho serialises
    writes, and each caller waits for its own packet id."""

    def __init__(
        self, host: str, port: int, ca_file: str | None, username: str, password: str | SecretStr, timeout: float
    ) -> None:
        self.host, self.port, self.username, self.timeout = host, port, username, timeout
        # None: the system's trust store (a broker with a publicly trusted certificate).
        self.ca_file = None if ca_file is None else str(ca_file)
        # Kept as SecretStr so no repr or traceback local shows it.
        self._password = password if isinstance(password, SecretStr) else SecretStr(password)
        self._cond = threading.Condition()
        self._client: Client | None = None
        self._connack: ReasonCode | None = None
        self._disconnected: ReasonCode | None = None
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._pubacks: dict[int, ReasonCode] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.host}:{self.port}, username={self.username!r})"

    @property
    def connected(self) -> bool:
        return (
            self._client is not None
            and self._disconnected is None
            and self._connack is not None
            and not self._connack.is_failure
        )

    def _open(self, client_id: str, keepalive: int) -> ReasonCode:
        """Connects with Clean Start and waits for the CONNACK, whose reason code it returns (a refusal is
        the caller's to name). BrokerUnavailable when the broker cannot be reached or does not answer."""
        # A dropped connection must fail what is waiting, not come back silently without its subscriptions.
        client = tls_client(client_id, self.username, self._password, self.ca_file, reconnect_on_failure=False)
        client.connect_timeout = self.timeout
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        self._bind(client)
        deadline = time.monotonic() + self.timeout
        with self._cond:
            self._connack, self._disconnected = None, None
        try:
            client.connect(self.host, self.port, keepalive=keepalive, clean_start=True)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerUnavailable(f"cannot connect to MQTT broker {self.host}:{self.port}: {exc}") from exc
        self._client = client
        client.loop_start()
        try:
            self._wait(lambda: self._connack is not None, deadline, "CONNACK")
        except BaseException:
            self.close()
            raise
        assert self._connack is not None
        return self._connack

    def _bind(self, client: Client) -> None:
        """Where a subclass sets the callbacks of what it receives."""

    def close(self) -> None:
        client, self._client = self._client, None
        with self._cond:  # whoever waits on this connection gives up now, not at its deadline
            self._disconnected = self._disconnected or ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection")
            self._cond.notify_all()
        if client is None:
            return
        client.disconnect()
        client.loop_stop()

    def _publish_and_wait(
        self, topic: str, payload: bytes | str, deadline: float, properties: Properties | None = None
    ) -> ReasonCode:
        """QoS 1; the PUBACK's reason code. BrokerConnectionLost when the connection is gone before it."""
        client = self._client
        if client is None or not self.connected:
            raise BrokerConnectionLost("not connected")
        info = client.publish(topic, payload, qos=1, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerConnectionLost(f"MQTT publish not queued: {info.rc.name}")
        self._wait(lambda: info.mid in self._pubacks, deadline, "PUBACK")
        with self._cond:
            return self._pubacks.pop(info.mid)

    def _subscribe_and_wait(self, topic: str, deadline: float) -> ReasonCode:
        """QoS 1; the SUBACK's reason code for the one filter."""
        client = self._client
        if client is None or not self.connected:
            raise BrokerConnectionLost("not connected")
        result, mid = client.subscribe(topic, qos=1)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerConnectionLost(f"MQTT subscribe not queued: {result.name}")
        self._wait(lambda: mid in self._subacks, deadline, "SUBACK")
        with self._cond:
            return self._subacks.pop(mid)[0]

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        with self._cond:
            while not ready():
                if self._disconnected is not None:
                    raise BrokerConnectionLost(
                        f"MQTT broker closed the connection while waiting for {what}: {self._disconnected.getName()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BrokerUnavailable(f"no {what} from the MQTT broker within {self.timeout:g} s")
                self._cond.wait(remaining)

    # -- paho callbacks (network thread) ---------------------------------------------------------------------------

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode, properties: Properties | None
    ) -> None:
        with self._cond:
            self._connack = reason
            self._cond.notify_all()

    def _on_disconnect(
        self, client: Client, userdata: Any, flags: DisconnectFlags, reason: ReasonCode, properties: Properties | None
    ) -> None:
        with self._cond:
            self._disconnected = reason
            self._cond.notify_all()

    def _on_subscribe(
        self, client: Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Properties | None
    ) -> None:
        with self._cond:
            self._subacks[mid] = reasons
            self._cond.notify_all()

    def _on_publish(
        self, client: Client, userdata: Any, mid: int, reason: ReasonCode, properties: Properties | None
    ) -> None:
        with self._cond:
            self._pubacks[mid] = reason
            self._cond.notify_all()


def publish_all(
    host: str,
    port: int,
    ca_file: str | None,
    username: str,
    password: SecretStr,
    client_id: str,
    messages: list[tuple[str, bytes]],
    timeout: float = 10.0,
) -> list[ReasonCode]:
    """Connects once, publishes each (topic, payload) at QoS 1 waiting for its PUBACK, disconnects; the
    PUBACKs' reason codes in order. BrokerUnavailable when the broker cannot be reached or refuses the
    connection."""
    connection = BlockingConnection(host, port, ca_file, username, password, timeout)
    connack = connection._open(client_id, keepalive=30)
    try:
        if connack.is_failure:
            raise BrokerUnavailable(f"broker refused {username}: {connack.getName()}")
        return [connection._publish_and_wait(topic, payload, time.monotonic() + timeout) for topic, payload in messages]
    finally:
        connection.close()
