"""Commands to devices through the registered `api` function, against the real database and
broker: a command reaches the device on its own command topic and is recorded with who sent it; roles,
tenants, disabled devices, the broker down; the device's ack; and the commander credential's least privilege."""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from scripts.localstack.process import free_port
from shared.broker.contract import COMMANDER_USERNAME, command_topic
from shared.devices.commands import close_commander_connection
from tests.support.api import call, close_api_pool, export_api_settings, mint_token, new_user
from tests.support.devices import Device, new_tenant_with_devices, run_mqtt_ingest
from tests.support.waiting import query, wait_for

PROBLEM = "application/problem+json"


class Subscriber:
    """An MQTT v5 client over verified TLS that records SUBACKs, PUBACKs and the messages it receives."""

    def __init__(self, settings, username: str, password: str, client_id: str) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(username, password)
        self.client.tls_set(ca_certs=settings.mqtt_ca_file, cert_reqs=ssl.CERT_REQUIRED)
        self.subacks: dict[int, int] = {}
        self.pubacks: dict[int, int] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self.connack: int | None = None
        connected = threading.Event()

        def on_connect(client, userdata, flags, reason, properties):
            self.connack = reason.value
            connected.set()

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.__setitem__(mid, codes[0].value)
        self.client.on_publish = lambda c, u, mid, code, p: self.pubacks.__setitem__(mid, code.value)
        self.client.on_message = lambda c, u, message: self.messages.append(message)
        self.client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=30)
        self.client.loop_start()
        assert connected.wait(10), "no CONNACK"

    def suback(self, topic: str) -> int:
        _, mid = self.client.subscribe(topic, qos=1)
        wait_for(lambda: mid in self.subacks, 10, f"SUBACK for {topic}")
        return self.subacks[mid]

    def puback(self, topic: str, payload: bytes) -> int:
        info = self.client.publish(topic, payload, qos=1)
        wait_for(lambda: info.mid in self.pubacks, 10, f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def commands_api(monkeypatch, database, settings, mosquitto_broker):
    """The API's settings with the broker and the stack's commander credential (a short timeout)."""
    overrides = {
        "MQTT_HOST": settings.mqtt_host,
        "MQTT_PORT": str(settings.mqtt_port),
        "MQTT_CA_FILE": settings.mqtt_ca_file,
        "MQTT_COMMANDER_USERNAME": mosquitto_broker.commander.username,
        "MQTT_COMMANDER_PASSWORD": mosquitto_broker.commander.password,
        "MQTT_COMMAND_TIMEOUT_S": "2",
    }
    export_api_settings(monkeypatch, database, **overrides)
    yield overrides
    close_commander_connection()
    close_api_pool()


@pytest.fixture
def fleet(app_pool, settings, commands_api):
    """A tenant with device m1 (and its credential) and a user of each role with a token."""
    tenant, credentials = new_tenant_with_devices(app_pool, settings, ["m1"])
    users = {role: new_user(app_pool, tenant, role) for role in ("owner", "staff", "viewer")}
    tokens = {role: mint_token(user) for role, user in users.items()}
    device_id = query_device_id(app_pool, tenant, "m1")
    return {"tenant": tenant, "credential": credentials["m1"], "users": users, "tokens": tokens, "device_id": device_id}


def query_device_id(pool, tenant, name: str) -> int:
    from shared.core.db import tenant_transaction

    with tenant_transaction(pool, str(tenant["id"])) as conn:
        row = conn.execute("SELECT id FROM devices WHERE tenant_id = %s AND name = %s", (tenant["id"], name)).fetchone()
    assert row is not None
    return int(row["id"])


def as_device(settings, credential) -> Subscriber:
    return Subscriber(settings, credential.username, credential.password, credential.client_id)


def send(fleet, body, role: str = "staff", device_id: int | None = None):
    return call("POST", f"/api/devices/{device_id or fleet['device_id']}/commands", body, token=fleet["tokens"][role])


def test_command_reaches_the_device_on_its_own_topic_and_is_recorded_with_its_sender(settings, database, fleet):
    # GIVEN the device connected with its own credential and subscribed to its command topic
    tenant, credential = fleet["tenant"], fleet["credential"]
    device = as_device(settings, credential)
    try:
        assert device.suback(command_topic(tenant["slug"], "m1")) == 1
        # WHEN staff sends a set_point command
        reply = send(fleet, {"name": "set_point", "args": {"value": 72.5}})
        # THEN 202 with the command as recorded: sent by that user, the broker took it
        assert reply.status == 202, reply.body
        command = reply.json
        assert command["status"] == "sent" and command["sent_at"] is not None and command["failure"] is None
        assert command["sent_by"] == str(fleet["users"]["staff"]["id"])
        assert (command["name"], command["args"], command["device_id"]) == (
            "set_point",
            {"value": 72.5},
            fleet["device_id"],
        )
        # AND the device received it once, at QoS 1, with the id in the payload and as correlation data
        wait_for(lambda: device.messages, 10, "the command at the device")
        (message,) = device.messages
        assert message.topic == f"t/{tenant['slug']}/d/m1/cmd" and message.qos == 1
        payload = json.loads(message.payload)
        assert payload["id"] == command["id"] and payload["name"] == "set_point"
        assert payload["args"] == {"value": 72.5}
        assert message.properties.CorrelationData == command["id"].encode()
        assert message.properties.ContentType == "application/json"
        assert message.properties.ResponseTopic == f"t/{tenant['slug']}/d/m1/telemetry"
    finally:
        device.close()
    # AND the database holds it with its sender, and the audit log says who did it
    ((status, sent_by, args),) = query(
        database, "SELECT status, sent_by::text, args FROM commands WHERE id = %(id)s", {"id": command["id"]}
    )
    assert (status, sent_by, args) == ("sent", str(fleet["users"]["staff"]["id"]), {"value": 72.5})
    audits = query(
        database,
        "SELECT actor_user_id::text, target_id, detail->>'command_id' FROM audit_log WHERE action = 'device.command'",
    )
    assert audits == [(str(fleet["users"]["staff"]["id"]), str(fleet["device_id"]), command["id"])]


def test_owner_may_send_and_viewer_is_refused_with_nothing_recorded(database, fleet):
    # WHEN the owner and a viewer send a command
    owner = send(fleet, {"name": "set_point", "args": {"value": 1}}, role="owner")
    viewer = send(fleet, {"name": "set_point", "args": {"value": 2}}, role="viewer")
    # THEN the owner's is accepted, the viewer gets a 403 problem and nothing of theirs is recorded
    assert owner.status == 202, owner.body
    assert viewer.status == 403 and viewer.headers["content-type"].startswith(PROBLEM)
    assert query(database, "SELECT args FROM commands") == [({"value": 1},)]
    # AND every role may read the list
    for role in ("owner", "staff", "viewer"):
        reply = call("GET", f"/api/devices/{fleet['device_id']}/commands", token=fleet["tokens"][role])
        assert reply.status == 200 and len(reply.json["items"]) == 1


def test_another_tenants_device_is_not_found(app_pool, settings, database, fleet):
    # GIVEN a device of another tenant
    other, _ = new_tenant_with_devices(app_pool, settings, ["m1"])
    other_id = query_device_id(app_pool, other, "m1")
    # WHEN staff of the first tenant sends it a command or lists its commands
    post = send(fleet, {"name": "set_point", "args": {"value": 1}}, device_id=other_id)
    listed = call("GET", f"/api/devices/{other_id}/commands", token=fleet["tokens"]["staff"])
    # THEN both are 404 problems and nothing is recorded
    assert post.status == 404 and post.headers["content-type"].startswith(PROBLEM)
    assert listed.status == 404
    assert send(fleet, {"name": "set_point"}, device_id=2**62).status == 404
    assert query(database, "SELECT count(*) FROM commands") == [(0,)]


def test_disabled_device_is_a_conflict(database, fleet):
    # GIVEN the device disabled
    query_exec(database, "UPDATE devices SET enabled = false WHERE id = %(id)s", {"id": fleet["device_id"]})
    # WHEN staff sends it a command
    reply = send(fleet, {"name": "set_point", "args": {"value": 1}})
    # THEN 409 (its state, not the request, is the problem) and nothing is recorded
    assert reply.status == 409 and reply.json["type"] == "urn:mqtt-saas:problem:device-disabled"
    assert query(database, "SELECT count(*) FROM commands") == [(0,)]


def test_invalid_commands_are_refused_before_anything_is_recorded(database, fleet):
    too_large = {"name": "set_point", "args": {"blob": "x" * 5000}}
    nul_key = {"name": "xg", "args": {"\u0000\u0018": [], "": {}}}  # found by schemathesis: was a 500
    nul_value = {"name": "xg", "args": {"v": ["ok", {"deep": "a\u0000b"}]}}
    for body, kind in [
        (too_large, "command-too-large"),
        (nul_key, "command-args-invalid"),
        (nul_value, "command-args-invalid"),
        ({"name": "Set Point!"}, None),
        ({"name": "set_point", "args": [1, 2]}, None),
        ({"name": "x", "extra": 1}, None),
    ]:
        reply = send(fleet, body)
        assert reply.status == 422, (body, reply.body)
        assert reply.headers["content-type"].startswith(PROBLEM)
        if kind:
            assert reply.json["type"] == f"urn:mqtt-saas:problem:{kind}"
    assert query(database, "SELECT count(*) FROM commands") == [(0,)]


def test_broker_down_records_the_command_failed_and_answers_503(monkeypatch, database, fleet):
    # GIVEN the API pointed at a broker address where nothing listens
    monkeypatch.setenv("MQTT_PORT", str(free_port()))
    from shared.core.settings import get_settings

    get_settings.cache_clear()
    close_commander_connection()
    # WHEN staff sends a command
    started = time.monotonic()
    reply = send(fleet, {"name": "set_point", "args": {"value": 9}})
    # THEN a 503 problem with a fixed message (no stack trace, no driver text), promptly
    assert reply.status == 503 and reply.headers["content-type"].startswith(PROBLEM)
    body = reply.json
    assert body["type"] == "urn:mqtt-saas:problem:command-not-delivered" and reply.headers["retry-after"] == "5"
    assert "Traceback" not in reply.body.decode() and "Errno" not in reply.body.decode()
    assert time.monotonic() - started < 10
    # AND the command is recorded as failed, broker unreachable, and listed so
    assert query(database, "SELECT status, failure, sent_at FROM commands") == [("failed", "broker_unreachable", None)]
    listed = call("GET", f"/api/devices/{fleet['device_id']}/commands", token=fleet["tokens"]["viewer"]).json
    assert [(c["status"], c["failure"]) for c in listed["items"]] == [("failed", "broker_unreachable")]


def test_a_wrong_commander_password_is_a_refusal_not_an_outage(monkeypatch, database, fleet):
    # GIVEN the API configured with a commander password the broker does not know
    monkeypatch.setenv("MQTT_COMMANDER_PASSWORD", "not-the-password")
    from shared.core.settings import get_settings

    get_settings.cache_clear()
    close_commander_connection()
    # WHEN staff sends a command
    reply = send(fleet, {"name": "set_point", "args": {"value": 9}})
    # THEN a 503 problem that points an operator at the credential, and the command is recorded as refused
    assert reply.status == 503 and reply.json["type"] == "urn:mqtt-saas:problem:command-refused"
    assert query(database, "SELECT status, failure FROM commands") == [("failed", "broker_refused")]


def test_list_is_newest_first_paged_and_shows_the_devices_ack(settings, database, fleet):
    # GIVEN three commands sent
    ids = []
    for value in (1, 2, 3):
        reply = send(fleet, {"name": "set_point", "args": {"value": value}})
        assert reply.status == 202, reply.body
        ids.append(reply.json["id"])
    # WHEN the device acknowledges the second in its telemetry and the drain stores it
    device = Device(settings, fleet["credential"])
    try:
        mid = device.publish(
            "telemetry",
            {"ts": int(time.time() * 1000), "metrics": {"set_point": 2, "cmd_ack": ids[1], "cmd_result": "applied"}},
        )
        assert device.wait_acked([mid]) == {mid: 0}
    finally:
        device.close()
    run_mqtt_ingest()
    # THEN the list pages newest first
    token = fleet["tokens"]["viewer"]
    first = call("GET", f"/api/devices/{fleet['device_id']}/commands?limit=2", token=token).json
    assert [c["id"] for c in first["items"]] == [ids[2], ids[1]] and first["next_cursor"]
    rest = call(
        "GET", f"/api/devices/{fleet['device_id']}/commands?limit=2&cursor={first['next_cursor']}", token=token
    ).json
    assert [c["id"] for c in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    # AND the acknowledged one says so, with the device's result and time
    acked = first["items"][1]
    assert (acked["status"], acked["result"]) == ("acknowledged", "applied") and acked["acked_at"]
    assert [c["status"] for c in (first["items"][0], rest["items"][0])] == ["sent", "sent"]


def test_kept_connection_survives_a_broker_restart(mosquitto_broker, database, fleet):
    # GIVEN a command sent (the process's connection is open)
    assert send(fleet, {"name": "set_point", "args": {"value": 1}}).status == 202
    # WHEN the broker restarts under it
    mosquitto_broker.restart()
    # THEN the next command goes out on a new connection
    reply = send(fleet, {"name": "set_point", "args": {"value": 2}})
    assert reply.status == 202, reply.body
    assert query(database, "SELECT status FROM commands ORDER BY created_at") == [("sent",), ("sent",)]


def test_commander_credential_may_publish_commands_only(settings, mosquitto_broker, fleet):
    # GIVEN the commander credential on its own connection
    commander = mosquitto_broker.commander
    assert commander.username == COMMANDER_USERNAME
    client = Subscriber(settings, commander.username, commander.password, f"commander-test-{uuid.uuid4().hex[:6]}")
    prefix = f"t/{fleet['tenant']['slug']}/d/m1"
    try:
        # THEN it may publish to a command topic
        assert client.puback(f"{prefix}/cmd", b"{}") in (0, 16)
        # AND it may not publish telemetry, status or to the control API (PUBACK 135)
        for topic in (f"{prefix}/telemetry", f"{prefix}/status", "$CONTROL/dynamic-security/v1"):
            assert client.puback(topic, b'{"ts": 1, "metrics": {"x": 1}}') == 135, topic
        # AND it may not subscribe to telemetry, commands or anything else (SUBACK 135)
        for topic in ("t/+/d/+/telemetry", f"{prefix}/telemetry", f"{prefix}/cmd", "#", "$CONTROL/dynamic-security/#"):
            assert client.suback(topic) == 135, topic
    finally:
        client.close()


def query_exec(database, sql: str, params: dict) -> None:
    import psycopg

    with psycopg.connect(database.owner_dsn) as conn:
        conn.execute(sql, params)
