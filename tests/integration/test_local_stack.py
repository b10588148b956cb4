"""The private local stack behaves like the production setup it stands in for: TLS only, dynamic security with
least-privilege service clients and the broker contract's settings and rights, persistent sessions that survive a
restart and are not capped at 1000 messages, plus a working Azurite and a restartable PostgreSQL. Real servers, no
mocks; every wait has a deadline."""

from __future__ import annotations

import gc
import json
import os
import socket
import ssl
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import psycopg
import pytest
from azure.storage.blob import BlobServiceClient
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from scripts.localstack import AzuriteServer, Credentials, MosquittoBroker, PostgresServer
from shared.broker.contract import (
    BROKER_SETTINGS,
    DEFAULT_ACL_ACCESS,
    INGEST_ROLE,
    PROVISIONER_ROLE,
    Acl,
    provisioner_acls,
)
from shared.broker.dynsec import DynsecClient, device_username, generate_password
from shared.core.exceptions import BrokerUnavailable, DynsecError

TIMEOUT = 15.0
NOT_AUTHORIZED = 135
TELEMETRY = "t/+/d/+/telemetry"


# -- a small MQTT v5 test client ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    dup: bool
    mid: int


class MqttV5:
    """A paho client over TLS that records CONNACK, SUBACK, PUBACK and messages for deadline-based waits."""

    def __init__(
        self,
        broker: MosquittoBroker,
        credentials: Credentials | None,
        client_id: str,
        *,
        ca_file: str | None = "broker",
        tls: bool = True,
        manual_ack: bool = False,
    ) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        if tls:
            self.client.tls_set(
                ca_certs=str(broker.ca_file) if ca_file == "broker" else ca_file, cert_reqs=ssl.CERT_REQUIRED
            )
        if credentials is not None:
            self.client.username_pw_set(credentials.username, credentials.password)
        self.client.max_inflight_messages_set(100)
        self.broker = broker
        self.cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.session_present: bool | None = None
        self.disconnected = False
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.pubacks: dict[int, ReasonCode] = {}
        self.messages: list[Received] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        with self.cond:
            self.connack = reason
            self.session_present = flags.session_present
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason, props) -> None:
        with self.cond:
            self.disconnected = True
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reasons, props) -> None:
        with self.cond:
            self.subacks[mid] = reasons
            self.cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason, props) -> None:
        with self.cond:
            self.pubacks[mid] = reason
            self.cond.notify_all()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(Received(msg.topic, msg.payload, bool(msg.dup), msg.mid))
            self.cond.notify_all()

    def wait(self, ready: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not ready():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self.cond.wait(remaining)

    def connect(self, *, clean_start: bool = True, session_expiry: int = 0) -> ReasonCode | None:
        """Return the CONNACK reason, or None when the broker closed the connection without one."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry
        self.client.connect(self.broker.host, self.broker.port, keepalive=30, clean_start=clean_start, properties=props)
        self.client.loop_start()
        self.wait(lambda: self.connack is not None or self.disconnected, "CONNACK")
        return self.connack

    def connect_ok(self, **kwargs: object) -> MqttV5:
        reason = self.connect(**kwargs)  # type: ignore[arg-type]
        assert reason is not None and not reason.is_failure, f"connect refused: {reason}"
        return self

    def subscribe(self, topic: str, qos: int = 1) -> ReasonCode:
        result, mid = self.client.subscribe(topic, qos=qos)
        assert result == MQTTErrorCode.MQTT_ERR_SUCCESS
        self.wait(lambda: mid in self.subacks, f"SUBACK for {topic}")
        return self.subacks[mid][0]

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> int:
        info = self.client.publish(topic, payload, qos=qos)
        assert info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
        return info.mid

    def puback(self, mid: int) -> ReasonCode:
        self.wait(lambda: mid in self.pubacks, f"PUBACK {mid}")
        return self.pubacks[mid]

    def wait_for_messages(self, count: int, timeout: float = TIMEOUT) -> list[Received]:
        self.wait(lambda: len(self.messages) >= count, f"{count} messages (have {len(self.messages)})", timeout)
        return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def device_client(broker: MosquittoBroker, tenant: str, device: str, password: str) -> MqttV5:
    username = device_username(tenant, device)
    return MqttV5(broker, Credentials(username, password, username), username)


def ingest_client(broker: MosquittoBroker, **kwargs: bool) -> MqttV5:
    ingest = broker.ingest
    assert ingest.client_id is not None
    return MqttV5(broker, ingest, ingest.client_id, **kwargs)


def admin_dynsec(broker: MosquittoBroker) -> DynsecClient:
    return DynsecClient(broker.host, broker.port, str(broker.ca_file), broker.admin.username, broker.admin.password)


def provisioner_dynsec(broker: MosquittoBroker) -> DynsecClient:
    creds = broker.provisioner
    return DynsecClient(broker.host, broker.port, str(broker.ca_file), creds.username, creds.password)


@dataclass(frozen=True)
class Device:
    tenant: str
    name: str
    password: str

    @property
    def telemetry_topic(self) -> str:
        return f"t/{self.tenant}/d/{self.name}/telemetry"


@pytest.fixture
def new_device(mosquitto_broker: MosquittoBroker) -> Callable[[], Device]:
    """Factory: a device provisioned through the provisioner credential, in a tenant of its own."""

    def make(name: str = "sensor-1") -> Device:
        tenant = f"acme-{uuid.uuid4().hex[:8]}"
        password = generate_password()
        with provisioner_dynsec(mosquitto_broker) as dynsec:
            dynsec.provision_device(tenant, name, password)
        return Device(tenant, name, password)

    return make


@pytest.fixture
def offline_ingest_session(mosquitto_broker: MosquittoBroker) -> Iterator[None]:
    """The real ingest credential's persistent session, emptied, subscribed to telemetry and left offline.

    Afterwards the session is dropped so no other test inherits its queue.
    """
    client = ingest_client(mosquitto_broker).connect_ok(clean_start=True, session_expiry=3600)
    assert client.subscribe(TELEMETRY).value == 1
    client.close()
    # Mosquitto writes a session to its persistence file only if its last CONNECT had Clean Start false (see
    # test_session_last_opened_with_clean_start_is_lost_on_restart), as the drain's connects always have.
    ingest_client(mosquitto_broker).connect_ok(clean_start=False, session_expiry=3600).close()
    yield
    ingest_client(mosquitto_broker).connect_ok(clean_start=True, session_expiry=0).close()


def tenant_messages(client: MqttV5, tenant: str) -> list[Received]:
    with client.cond:
        return [m for m in client.messages if m.topic.startswith(f"t/{tenant}/")]


# -- TLS and authentication ------------------------------------------------------------------------------------------


def test_plain_tcp_connect_gets_no_connack(mosquitto_broker: MosquittoBroker) -> None:
    # GIVEN a client that does not speak TLS
    client = MqttV5(mosquitto_broker, mosquitto_broker.ingest, "plain-tcp-probe", tls=False)
    # WHEN it connects THEN the broker closes the connection without a CONNACK
    try:
        assert client.connect() is None
    finally:
        client.close()


def test_connect_with_an_untrusted_ca_fails_verification(mosquitto_broker: MosquittoBroker) -> None:
    # GIVEN a client that trusts only the system CAs, not the local CA
    client = MqttV5(mosquitto_broker, mosquitto_broker.ingest, "wrong-ca-probe", ca_file=None)
    # WHEN it connects THEN certificate verification fails
    # (paho 2.2 leaves the socket of a failed handshake unclosed; let it be collected quietly here.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        with pytest.raises(ssl.SSLCertVerificationError):
            client.connect()
        del client
        gc.collect()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_12_and_13_are_offered_with_a_verifiable_certificate(
    mosquitto_broker: MosquittoBroker, version: ssl.TLSVersion
) -> None:
    context = ssl.create_default_context(cafile=str(mosquitto_broker.ca_file))
    context.minimum_version = context.maximum_version = version
    for name in ("localhost", "127.0.0.1"):  # both names in the certificate's subjectAltName
        with (
            socket.create_connection((mosquitto_broker.host, mosquitto_broker.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
            tls.unwrap()


def test_anonymous_connect_is_refused(mosquitto_broker: MosquittoBroker) -> None:
    client = MqttV5(mosquitto_broker, None, f"anon-{uuid.uuid4().hex[:6]}")
    try:
        reason = client.connect()
        assert reason is not None and reason.is_failure
    finally:
        client.close()


def test_wrong_password_is_refused(mosquitto_broker: MosquittoBroker) -> None:
    creds = Credentials(mosquitto_broker.provisioner.username, "not-the-password")
    client = MqttV5(mosquitto_broker, creds, f"bad-pw-{uuid.uuid4().hex[:6]}")
    try:
        reason = client.connect()
        assert reason is not None and reason.is_failure
    finally:
        client.close()


# -- dynamic security -------------------------------------------------------------------------------------------------


def test_provisioned_device_publishes_telemetry_that_ingest_receives(
    mosquitto_broker: MosquittoBroker, new_device: Callable[[], Device], offline_ingest_session: None
) -> None:
    # GIVEN a device provisioned by the provisioner and an online ingest session
    device = new_device()
    ingest = ingest_client(mosquitto_broker).connect_ok(clean_start=False, session_expiry=3600)
    publisher = device_client(mosquitto_broker, device.tenant, device.name, device.password).connect_ok()
    try:
        # WHEN the device publishes QoS 1 to its telemetry topic
        mid = publisher.publish(device.telemetry_topic, json.dumps({"t": 21.5}))
        # THEN the broker acknowledges it and ingest receives it
        assert not publisher.puback(mid).is_failure
        ingest.wait(lambda: len(tenant_messages(ingest, device.tenant)) == 1, "telemetry at ingest")
        (message,) = tenant_messages(ingest, device.tenant)
        assert message.topic == device.telemetry_topic
        assert json.loads(message.payload) == {"t": 21.5}
    finally:
        publisher.close()
        ingest.close()


def test_device_cannot_publish_to_another_devices_topic(
    mosquitto_broker: MosquittoBroker, new_device: Callable[[], Device], offline_ingest_session: None
) -> None:
    # GIVEN a device and ingest listening
    device = new_device()
    ingest = ingest_client(mosquitto_broker).connect_ok(clean_start=False, session_expiry=3600)
    publisher = device_client(mosquitto_broker, device.tenant, device.name, device.password).connect_ok()
    try:
        # WHEN it publishes as another device of its tenant, then a marker to its own topic
        forged = publisher.publish(f"t/{device.tenant}/d/someone-else/telemetry", b"forged")
        marker = publisher.publish(device.telemetry_topic, b"marker")
        # THEN the forged one is refused with v5 PUBACK 135 and never reaches ingest
        assert publisher.puback(forged).value == NOT_AUTHORIZED
        assert not publisher.puback(marker).is_failure
        ingest.wait(lambda: any(m.payload == b"marker" for m in tenant_messages(ingest, device.tenant)), "marker")
        assert [m.payload for m in tenant_messages(ingest, device.tenant)] == [b"marker"]
    finally:
        publisher.close()
        ingest.close()


def test_device_cannot_use_a_client_id_other_than_its_own(
    mosquitto_broker: MosquittoBroker, new_device: Callable[[], Device]
) -> None:
    device = new_device()
    username = device_username(device.tenant, device.name)
    for client_id in (mosquitto_broker.ingest.client_id, f"{username}-2"):
        assert client_id is not None
        client = MqttV5(mosquitto_broker, Credentials(username, device.password), client_id)
        try:
            reason = client.connect()
            assert reason is not None and reason.is_failure, client_id
        finally:
            client.close()


def test_device_credential_is_not_a_dynsec_admin(
    mosquitto_broker: MosquittoBroker, new_device: Callable[[], Device]
) -> None:
    device = new_device()
    username = device_username(device.tenant, device.name)
    client = DynsecClient(
        mosquitto_broker.host,
        mosquitto_broker.port,
        str(mosquitto_broker.ca_file),
        username,
        device.password,
        client_id=username,
    )
    with pytest.raises(DynsecError):  # not even allowed to subscribe to the response topic
        client.connect()


def test_provisioner_cannot_read_telemetry(mosquitto_broker: MosquittoBroker, new_device: Callable[[], Device]) -> None:
    device = new_device()
    client = MqttV5(mosquitto_broker, mosquitto_broker.provisioner, f"prov-{uuid.uuid4().hex[:6]}").connect_ok()
    try:
        for topic in ("t/#", "#", TELEMETRY, device.telemetry_topic):
            assert client.subscribe(topic).value == NOT_AUTHORIZED, topic
    finally:
        client.close()


def test_dynsec_create_is_strict_and_ensure_tolerates_existing(mosquitto_broker: MosquittoBroker) -> None:
    name = f"probe-{uuid.uuid4().hex[:8]}"
    with admin_dynsec(mosquitto_broker) as dynsec:
        assert dynsec.ensure_role(name) is True
        assert dynsec.ensure_role(name) is False
        dynsec.create_client(name, generate_password(), client_id=name, roles=[name])
        with pytest.raises(DynsecError, match="Client already exists"):
            dynsec.create_client(name, generate_password())
        assert dynsec.ensure_client(name, generate_password()) is False
        assert dynsec.get_client(name)["clientid"] == name
        dynsec.disable_client(name)
        dynsec.enable_client(name)
        dynsec.set_client_password(name, generate_password())
        dynsec.delete_client(name)
        dynsec.delete_client(name, missing_ok=True)
        with pytest.raises(DynsecError, match="Client not found"):
            dynsec.delete_client(name)
        dynsec.delete_role(name)


def test_provision_device_validates_names(mosquitto_broker: MosquittoBroker) -> None:
    with provisioner_dynsec(mosquitto_broker) as dynsec:
        for tenant, device in [("Acme", "d1"), ("acme", "d.1"), ("-acme", "d1"), ("acme", "d1/#"), ("acme", "")]:
            with pytest.raises(ValueError):
                dynsec.provision_device(tenant, device, generate_password())


def test_dynsec_client_reports_an_unreachable_broker(mosquitto_broker: MosquittoBroker) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    creds = mosquitto_broker.provisioner
    with pytest.raises(BrokerUnavailable):
        DynsecClient("127.0.0.1", port, str(mosquitto_broker.ca_file), creds.username, creds.password).connect()


def acl_rows(acls: list[Acl] | list[dict]) -> list[tuple]:
    """ACLs as comparable rows, in no particular order (the plugin keeps them sorted by priority)."""
    commands = [acl.as_command() if isinstance(acl, Acl) else acl for acl in acls]
    return sorted((c["acltype"], c["topic"], c["allow"], c["priority"]) for c in commands)


from shared.broker.contract import SERVICE_ROLES  # noqa: E402


def test_rendered_mosquitto_conf_holds_every_broker_setting(mosquitto_broker: MosquittoBroker) -> None:
    lines = mosquitto_broker.conf_file.read_text().splitlines()
    for name, value in BROKER_SETTINGS.items():
        assert f"{name} {value}" in lines, name
    assert f"log_dest file {mosquitto_broker.log_file}" in lines


def test_broker_has_the_contracts_default_access_and_service_roles(mosquitto_broker: MosquittoBroker) -> None:
    with admin_dynsec(mosquitto_broker) as dynsec:
        assert dynsec.get_default_acl_access() == DEFAULT_ACL_ACCESS
        for role, acls in SERVICE_ROLES.items():
            assert acl_rows(dynsec.get_role_acls(role)) == acl_rows(acls), role


def test_set_role_acls_replaces_the_whole_list(mosquitto_broker: MosquittoBroker) -> None:
    name = f"probe-{uuid.uuid4().hex[:8]}"
    before = [Acl("subscribePattern", "probe/a/#"), Acl("publishClientSend", "probe/a/x", allow=False, priority=3)]
    after = [Acl("publishClientReceive", "probe/b/#", priority=1)]
    with admin_dynsec(mosquitto_broker) as dynsec:
        try:
            dynsec.set_role_acls(name, before)
            assert acl_rows(dynsec.get_role_acls(name)) == acl_rows(before)
            dynsec.set_role_acls(name, after)
            assert acl_rows(dynsec.get_role_acls(name)) == acl_rows(after)
        finally:
            dynsec.delete_role(name, missing_ok=True)


def test_every_start_puts_the_contract_back(mosquitto_broker: MosquittoBroker) -> None:
    # GIVEN a broker whose default access and service roles were changed by hand, and a service client deleted
    with admin_dynsec(mosquitto_broker) as dynsec:
        dynsec.set_default_acl_access({kind: True for kind in DEFAULT_ACL_ACCESS})
        dynsec.execute(
            [
                {
                    "command": "addRoleACL",
                    "rolename": INGEST_ROLE,
                    "acltype": "publishClientSend",
                    "topic": "#",
                    "allow": True,
                    "priority": 9,
                },
                {
                    "command": "removeRoleACL",
                    "rolename": PROVISIONER_ROLE,
                    "acltype": "publishClientReceive",
                    "topic": provisioner_acls()[0].topic,
                },
            ]
        )
        dynsec.delete_client(mosquitto_broker.provisioner.username)
    # WHEN it restarts
    mosquitto_broker.restart()
    # THEN the contract holds again and the provisioner can work
    with admin_dynsec(mosquitto_broker) as dynsec:
        assert dynsec.get_default_acl_access() == DEFAULT_ACL_ACCESS
        for role, acls in SERVICE_ROLES.items():
            assert acl_rows(dynsec.get_role_acls(role)) == acl_rows(acls), role
    with provisioner_dynsec(mosquitto_broker) as dynsec:
        assert dynsec.get_client(mosquitto_broker.ingest.username)["clientid"] == mosquitto_broker.ingest.client_id


# -- persistence and queueing ----------------------------------------------------------------------------------------


def test_graceful_restart_keeps_credentials_and_queued_messages(
    mosquitto_broker: MosquittoBroker, new_device: Callable[[], Device], offline_ingest_session: None
) -> None:
    # GIVEN a device created at runtime and a message queued for the offline ingest session
    device = new_device()
    port = mosquitto_broker.port
    publisher = device_client(mosquitto_broker, device.tenant, device.name, device.password).connect_ok()
    assert not publisher.puback(publisher.publish(device.telemetry_topic, b"before-restart")).is_failure
    publisher.close()
    # WHEN the broker restarts gracefully
    mosquitto_broker.restart()
    # THEN port, certificate and the device credential still work, and ingest gets the queued message
    assert mosquitto_broker.port == port
    publisher = device_client(mosquitto_broker, device.tenant, device.name, device.password).connect_ok()
    publisher.close()
    ingest = ingest_client(mosquitto_broker).connect_ok(clean_start=False, session_expiry=3600)
    try:
        ingest.wait(lambda: len(tenant_messages(ingest, device.tenant)) == 1, "queued message after restart")
        assert tenant_messages(ingest, device.tenant)[0].payload == b"before-restart"
    finally:
        ingest.close()


def test_session_last_opened_with_clean_start_is_lost_on_restart(
    mosquitto_broker: MosquittoBroker, new_device: Callable[[], Device], offline_ingest_session: None
) -> None:
    """Pins a Mosquitto trap for the drain: persist__client_save() skips clients whose last CONNECT had Clean Start
    true, even with a session expiry, so such a session survives disconnects but not a broker restart."""
    # GIVEN the ingest session re-created with Clean Start true (and an expiry), then offline with a queued message
    device = new_device()
    client = ingest_client(mosquitto_broker).connect_ok(clean_start=True, session_expiry=3600)
    assert client.subscribe(TELEMETRY).value == 1
    client.close()
    publisher = device_client(mosquitto_broker, device.tenant, device.name, device.password).connect_ok()
    assert not publisher.puback(publisher.publish(device.telemetry_topic, b"queued")).is_failure
    publisher.close()
    # WHEN the broker restarts gracefully
    mosquitto_broker.restart()
    # THEN the session is gone: no session present, no subscription, and a new message does not arrive either
    ingest = ingest_client(mosquitto_broker).connect_ok(clean_start=False, session_expiry=3600)
    try:
        assert ingest.session_present is False
        publisher = device_client(mosquitto_broker, device.tenant, device.name, device.password).connect_ok()
        assert not publisher.puback(publisher.publish(device.telemetry_topic, b"after")).is_failure
        publisher.close()
        assert ingest.subscribe(f"t/{device.tenant}/d/+/status").value == 1  # a round trip after the publish
        assert tenant_messages(ingest, device.tenant) == []
    finally:
        ingest.close()


def test_payloads_between_app_and_broker_limits_pass_and_larger_ones_are_dropped(
    mosquitto_broker: MosquittoBroker, new_device: Callable[[], Device], offline_ingest_session: None
) -> None:
    """Mosquitto 2.0.11 refuses a payload over message_size_limit with v5 PUBACK 149 ("packet too large"), which is
    not a valid PUBACK code: paho-mqtt 2.2 calls the packet malformed and drops the connection itself."""
    # GIVEN a device and ingest online
    device = new_device()
    ingest = ingest_client(mosquitto_broker).connect_ok(clean_start=False, session_expiry=3600)
    publisher = device_client(mosquitto_broker, device.tenant, device.name, device.password).connect_ok()
    try:
        # WHEN it publishes 100 KiB (over the app's 64 KiB limit), then 1 MiB + 1 byte (over the broker's)
        big = publisher.publish(device.telemetry_topic, b"x" * 100 * 1024)
        assert not publisher.puback(big).is_failure
        too_big = publisher.publish(device.telemetry_topic, b"y" * (1024 * 1024 + 1))
        publisher.wait(lambda: too_big in publisher.pubacks or publisher.disconnected, "refusal of 1 MiB + 1")
        assert publisher.disconnected or publisher.pubacks[too_big].is_failure
    finally:
        publisher.close()
    publisher = device_client(mosquitto_broker, device.tenant, device.name, device.password).connect_ok()
    try:
        assert not publisher.puback(publisher.publish(device.telemetry_topic, b"after")).is_failure
        # THEN ingest gets the 100 KiB payload (so the app can dead-letter it) and never the 1 MiB one
        ingest.wait(lambda: any(m.payload == b"after" for m in tenant_messages(ingest, device.tenant)), "marker")
        assert [len(m.payload) for m in tenant_messages(ingest, device.tenant)] == [100 * 1024, 5]
    finally:
        publisher.close()
        ingest.close()


def test_more_than_1000_queued_messages_all_arrive(
    mosquitto_broker: MosquittoBroker, new_device: Callable[[], Device], offline_ingest_session: None
) -> None:
    # GIVEN 3000 QoS 1 messages published while the ingest session is offline (the broker default keeps 1000)
    device = new_device()
    count = 3000
    publisher = device_client(mosquitto_broker, device.tenant, device.name, device.password).connect_ok()
    try:
        mids = [publisher.publish(device.telemetry_topic, str(i)) for i in range(count)]
        publisher.wait(lambda: len(publisher.pubacks) >= count, "all PUBACKs", timeout=60)
        assert not any(publisher.pubacks[mid].is_failure for mid in mids)
    finally:
        publisher.close()
    # WHEN ingest reconnects to its session
    ingest = ingest_client(mosquitto_broker).connect_ok(clean_start=False, session_expiry=3600)
    try:
        # THEN every message arrives, in order
        ingest.wait(lambda: len(tenant_messages(ingest, device.tenant)) >= count, f"{count} messages", timeout=60)
        assert [int(m.payload) for m in tenant_messages(ingest, device.tenant)] == list(range(count))
    finally:
        ingest.close()


def test_unacknowledged_message_is_redelivered_with_dup_flag(
    mosquitto_broker: MosquittoBroker, new_device: Callable[[], Device], offline_ingest_session: None
) -> None:
    # GIVEN ingest receives a QoS 1 message and does not acknowledge it
    device = new_device()
    ingest = ingest_client(mosquitto_broker, manual_ack=True).connect_ok(clean_start=False, session_expiry=3600)
    publisher = device_client(mosquitto_broker, device.tenant, device.name, device.password).connect_ok()
    try:
        assert not publisher.puback(publisher.publish(device.telemetry_topic, b"unacked")).is_failure
        ingest.wait(lambda: len(tenant_messages(ingest, device.tenant)) == 1, "first delivery")
        (first,) = tenant_messages(ingest, device.tenant)
        assert first.dup is False
    finally:
        publisher.close()
        ingest.close()
    # WHEN it reconnects to the same session
    ingest = ingest_client(mosquitto_broker).connect_ok(clean_start=False, session_expiry=3600)
    try:
        # THEN the broker sends the message again, marked as a duplicate, and only once
        ingest.wait(lambda: len(tenant_messages(ingest, device.tenant)) == 1, "redelivery")
        (again,) = tenant_messages(ingest, device.tenant)
        assert again.payload == b"unacked"
        assert again.dup is True
    finally:
        ingest.close()


def test_acknowledged_message_comes_back_without_dup_flag_after_a_broker_crash(
    mosquitto_broker: MosquittoBroker, new_device: Callable[[], Device], offline_ingest_session: None
) -> None:
    """Persistence is a snapshot: what was acknowledged after the last save is sent again after a crash, as a fresh
    delivery (DUP 0). Deduplication must therefore rest on a natural key, never on the DUP flag."""
    # GIVEN a message queued for the offline ingest session and in the broker's snapshot (graceful restart saves)
    device = new_device()
    publisher = device_client(mosquitto_broker, device.tenant, device.name, device.password).connect_ok()
    assert not publisher.puback(publisher.publish(device.telemetry_topic, b"once")).is_failure
    publisher.close()
    mosquitto_broker.restart()
    saves_before = mosquitto_broker.log_file.read_text().count("Saving in-memory database")
    # WHEN ingest receives and acknowledges it, and the broker is then killed before its next autosave
    ingest = ingest_client(mosquitto_broker).connect_ok(clean_start=False, session_expiry=3600)
    try:
        (first,) = ingest.wait_for_messages(1)
        assert first.dup is False
    finally:
        ingest.close()
    mosquitto_broker.kill()
    if mosquitto_broker.log_file.read_text().count("Saving in-memory database") != saves_before:
        pytest.skip("an autosave ran between the acknowledgement and the kill")
    mosquitto_broker.start()
    # THEN the message arrives again, not marked as a duplicate
    ingest = ingest_client(mosquitto_broker).connect_ok(clean_start=False, session_expiry=3600)
    try:
        (again,) = ingest.wait_for_messages(1)
        assert (again.payload, again.dup) == (b"once", False)
    finally:
        ingest.close()


# -- Azurite and PostgreSQL ------------------------------------------------------------------------------------------


def test_azurite_stores_and_returns_a_blob(azurite_server: AzuriteServer) -> None:
    service = BlobServiceClient.from_connection_string(azurite_server.connection_string)
    container = service.create_container(f"archive-{uuid.uuid4().hex[:8]}")
    try:
        container.upload_blob("2026/11/23/acme.jsonl", b'{"t": 1}\n')
        assert container.download_blob("2026/11/23/acme.jsonl").readall() == b'{"t": 1}\n'
    finally:
        container.delete_container()
        service.close()


def test_postgres_keeps_data_across_stop_start_and_crash(postgres_server: PostgresServer) -> None:
    # GIVEN a committed row
    with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS stack_probe (id text PRIMARY KEY)")
        conn.execute("INSERT INTO stack_probe VALUES ('committed')")
    # WHEN the server stops and starts, and later is killed and starts (crash recovery)
    postgres_server.stop()
    assert postgres_server.pid is None
    postgres_server.start()
    with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO stack_probe VALUES ('before-kill')")
    postgres_server.kill()
    postgres_server.start()
    # THEN both rows are there
    with psycopg.connect(postgres_server.superuser_dsn()) as conn:
        rows = {r[0] for r in conn.execute("SELECT id FROM stack_probe")}
        conn.execute("DROP TABLE stack_probe")
    assert rows == {"committed", "before-kill"}


def connect_error(server: PostgresServer, user: str, password: str | None) -> str:
    """Why a TCP login as ``user`` with ``password`` (None: none at all) fails; pytest fails the test if it works."""
    # No password file (and the callers drop PGPASSWORD), so "none at all" means none.
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(
            host=server.host,
            port=server.port,
            user=user,
            password=password,
            passfile=os.devnull,
            dbname="postgres",
            connect_timeout=5,
        ).close()
    return str(refused.value)


@pytest.mark.parametrize("role", ["postgres", "mqtt_saas_app"])
def test_postgres_refuses_a_tcp_login_without_the_right_password(
    postgres_server: PostgresServer, role_passwords: dict[str, str], role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    right = postgres_server.superuser_password if role == "postgres" else role_passwords[role]
    # A wrong password and none at all are refused
    assert "password authentication failed" in connect_error(postgres_server, role, right + "x")
    assert "no password supplied" in connect_error(postgres_server, role, None)
    # The right one is let in
    with psycopg.connect(
        host=postgres_server.host,
        port=postgres_server.port,
        user=role,
        password=right,
        dbname="postgres",
        connect_timeout=5,
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)


@pytest.mark.server
def test_postgres_cluster_from_before_passwords_requires_them_after_a_start(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a cluster as earlier versions left it: TCP trusted, a superuser without password, no password file
    server = PostgresServer(tmp_path_factory.mktemp("pg-old"))
    server.start()
    try:
        with psycopg.connect(
            host=str(server.socket_dir), port=server.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("ALTER ROLE postgres PASSWORD NULL")
        server.stop()
        (server.data_dir / "pg_hba.conf").write_text("local all all trust\nhost all all all trust\n")
        server.password_file.unlink()
        # WHEN it starts
        server.start()
        # THEN the superuser needs the password it now has
        monkeypatch.delenv("PGPASSWORD", raising=False)
        assert "no password supplied" in connect_error(server, "postgres", None)
        with psycopg.connect(server.superuser_dsn(), connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert server.password_file.stat().st_mode & 0o077 == 0
    finally:
        server.stop()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    return len(text.encode()).to_bytes(2, "big") + text.encode()


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


class RawMqttV5:
    """MQTT v5 at the byte level, over the broker's TLS: to see exactly what the broker sends, where a
    client library would interpret it (paho-mqtt 2.2 drops a connection on a PUBACK code it thinks invalid)."""

    def __init__(self, broker: MosquittoBroker, username: str, password: str) -> None:
        raw = socket.create_connection((broker.host, broker.port), timeout=TIMEOUT)
        self.sock = broker.ssl_context().wrap_socket(raw, server_hostname="localhost")
        flags = 0xC2  # user name, password, clean start
        body = (
            _utf8("MQTT")
            + bytes([5, flags])
            + (30).to_bytes(2, "big")
            + b"\x00"
            + _utf8(username)
            + _utf8(username)
            + _utf8(password)
        )
        self.sock.sendall(_packet(0x10, body))

    def read(self) -> tuple[int, bytes] | None:
        """(packet type, body) of the next packet, None when the broker closed the connection."""
        head = self.sock.recv(1)
        if not head:
            return None
        length, shift = 0, 0
        while True:
            byte = self.sock.recv(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = b""
        while len(body) < length:
            chunk = self.sock.recv(length - len(body))
            if not chunk:
                return None
            body += chunk
        return head[0] >> 4, body

    def publish(self, topic: str, payload: bytes, packet_id: int) -> None:
        self.sock.sendall(_packet(0x32, _utf8(topic) + packet_id.to_bytes(2, "big") + b"\x00" + payload))

    def close(self) -> None:
        self.sock.close()


def test_a_payload_over_message_size_limit_gets_puback_149_and_over_max_packet_size_a_disconnect(
    mosquitto_broker: MosquittoBroker, new_device: Callable[[], Device], offline_ingest_session: None
) -> None:
    """What the broker itself sends (paho-mqtt would hide it: it drops the connection on PUBACK 149,
    a code MQTT 5 does not list for PUBACK; test_payloads_between_app_and_broker_limits_... shows that)."""
    # GIVEN a device connected at the byte level
    device = new_device()
    client = RawMqttV5(mosquitto_broker, device_username(device.tenant, device.name), device.password)
    try:
        connack = client.read()
        assert connack is not None and connack[0] == 2 and connack[1][1] == 0
        # WHEN it publishes (QoS 1) a payload one byte over message_size_limit
        limit = int(BROKER_SETTINGS["message_size_limit"])
        client.publish(device.telemetry_topic, b"y" * (limit + 1), 1)
        # THEN the broker answers PUBACK 149 (0x95, packet too large) and keeps the connection: the
        # next message is accepted
        assert client.read() == (4, b"\x00\x01\x95")
        client.publish(device.telemetry_topic, b"after", 2)
        assert client.read() in {(4, b"\x00\x02"), (4, b"\x00\x02\x00")}  # success (its reason may be left out)
        # AND a packet over max_packet_size (advertised in CONNACK) ends the connection with DISCONNECT 149
        client.publish(device.telemetry_topic, b"z" * int(BROKER_SETTINGS["max_packet_size"]), 3)
        assert client.read() == (14, b"\x95")
        assert client.read() is None
    finally:
        client.close()
