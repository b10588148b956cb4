"""The broker contract (shared/broker/contract.py) on the real broker: every message a device can
get accepted is stored or dead-lettered, everything else is refused; a device subscribes to its
command topic only; QoS 0 waits for the drain; retained copies stay bounded; a run ends when it
has caught up; and the name patterns agree with the SQL CHECKs."""

from __future__ import annotations

import re
import ssl
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from shared.broker.contract import (
    DEVICE_NAME_PATTERN,
    DEVICE_PUBLISH_FORMS,
    TENANT_SLUG_PATTERN,
    command_topic,
    drain_marker_topic,
)
from shared.ingest.drain import drain_once
from tests.support.devices import Device, new_tenant_with_devices, run_mqtt_ingest
from tests.support.waiting import query, wait_for

NOW_MS = lambda: int(time.time() * 1000)  # noqa: E731


class Client:
    """A bare paho client for what Device does not do: MQTT 3.1.1, subscriptions, retained reads."""

    def __init__(self, settings, username: str, password: str, client_id: str, protocol: int = mqtt.MQTTv5) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        self.client.username_pw_set(username, password)
        self.client.tls_set(ca_certs=settings.mqtt_ca_file, cert_reqs=ssl.CERT_REQUIRED)
        self.subacks: dict[int, list[int]] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self.connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set()
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda c, u, message: self.messages.append(message)
        self.client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK"

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.subacks[mid] = [code.value for code in reason_codes]

    def suback(self, topic: str) -> int:
        _, mid = self.client.subscribe(topic, qos=1)
        wait_for(lambda: mid in self.subacks, 10, f"SUBACK for {topic}")
        return self.subacks[mid][0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def as_device(settings, credential, protocol: int = mqtt.MQTTv5) -> Client:
    return Client(settings, credential.username, credential.password, credential.client_id, protocol)


def test_every_accepted_form_is_stored_or_dead_lettered_and_every_other_topic_is_refused(settings, app_pool, database):
    # GIVEN a device, a neighbour device, and the drain's own marker topic
    tenant, creds = new_tenant_with_devices(app_pool, settings, ["m1", "m2"])
    device = Device(settings, creds["m1"])
    prefix = creds["m1"].topic_prefix
    ts = NOW_MS()
    accepted_forms = {
        "telemetry": {"ts": ts, "metrics": {"temp": 1}},
        "status": "online",
        "spindle/state": {"value": 2, "timestamp": ts},
        "bad entity!/state": {"value": 3, "timestamp": ts},  # "+" takes it; the drain dead-letters it
    }
    outside = [
        f"{prefix}/telemtry",  # the misspelling that used to vanish with PUBACK 16
        f"{prefix}/telemetry/extra",
        f"{prefix}/a/b/state",
        f"{prefix}/cmd",  # a device publishes no commands, not even to itself
        prefix,
        f"t/{tenant['slug']}/d/m2/telemetry",
        f"t/{tenant['slug']}/telemetry",
        drain_marker_topic(settings.mqtt_ingest_client_id),
        "$SYS/broker/clients",
        "anything",
    ]

    # WHEN it publishes to each form it may use and to topics outside them
    accepted = device.wait_acked([device.publish(form, payload) for form, payload in accepted_forms.items()])
    refused = device.wait_acked([device.publish("", {"metrics": {"x": 9}}, topic=topic) for topic in outside])
    run_mqtt_ingest()

    # THEN the broker accepts exactly the contract's forms, and each accepted message is a row or a dead letter
    assert set(accepted.values()) == {0}
    assert set(refused.values()) == {135}, dict(zip(outside, refused.values(), strict=False))
    assert len(DEVICE_PUBLISH_FORMS) == 3  # telemetry, status, {entity}/state: each one is exercised above
    assert query(database, "SELECT metric, value FROM telemetry ORDER BY metric") == [("spindle", 2.0), ("temp", 1.0)]
    assert query(database, "SELECT status FROM devices WHERE name = 'm1'") == [("online",)]
    assert query(database, "SELECT topic, reason FROM dead_letters") == [(f"{prefix}/bad entity!/state", "bad_topic")]
    assert query(database, "SELECT messages FROM ingest_runs") == [(4,)]
    device.close()


def test_an_mqtt311_device_outside_its_forms_gets_nothing_stored(settings, app_pool, database):
    # MQTT 3.1.1 has no negative PUBACK: the broker drops the publish and the device sees success.
    _, creds = new_tenant_with_devices(app_pool, settings, ["old"])
    client = as_device(settings, creds["old"], mqtt.MQTTv311)
    prefix = creds["old"].topic_prefix
    client.client.publish(f"{prefix}/telemtry", '{"metrics": {"x": 1}}', qos=1).wait_for_publish(10)
    client.client.publish(f"{prefix}/telemetry", '{"metrics": {"y": 2}}', qos=1).wait_for_publish(10)
    client.close()
    run_mqtt_ingest()
    assert query(database, "SELECT metric FROM telemetry") == [("y",)]
    assert query(database, "SELECT count(*) FROM dead_letters") == [(0,)]


def test_a_device_may_subscribe_to_its_own_command_topic_only(settings, app_pool):
    tenant, creds = new_tenant_with_devices(app_pool, settings, ["s1", "s2"])
    client = as_device(settings, creds["s1"])
    slug = tenant["slug"]
    refused = [
        "#",
        "t/#",
        "$SYS/#",
        f"t/{slug}/d/s2/cmd",
        f"t/{slug}/d/s2/#",
        f"t/{slug}/d/+/cmd",
        f"t/{slug}/d/s1/telemetry",
        f"t/{slug}/d/s1/#",
        f"t/{slug}/d/s1/cmd/#",
        drain_marker_topic(settings.mqtt_ingest_client_id),
        "$CONTROL/dynamic-security/#",
    ]
    codes = {topic: client.suback(topic) for topic in refused}
    own = client.suback(command_topic(slug, "s1"))
    client.close()
    assert codes == {topic: 135 for topic in refused}
    assert own == 1  # granted, QoS 1


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["mqtt311", "mqtt5"])
def test_qos0_readings_published_between_runs_are_stored(settings, app_pool, database, protocol):
    # GIVEN a device that publishes with QoS 0 only, while no drain run is active
    _, creds = new_tenant_with_devices(app_pool, settings, ["tiny"])
    client = as_device(settings, creds["tiny"], protocol)
    ts = NOW_MS() - 1000
    for i in range(50):
        client.client.publish(
            f"{creds['tiny'].topic_prefix}/telemetry", '{"ts": %d, "seq": %d, "metrics": {"v": %d}}' % (ts, i, i), qos=0
        )
    # A QoS 0 publish has no acknowledgement: a QoS 1 one behind it on the same connection tells
    # that the broker has handled everything before it.
    client.client.publish(f"{creds['tiny'].topic_prefix}/status", "online", qos=1).wait_for_publish(10)
    client.close()

    # WHEN the next run comes
    report = drain_once(settings)

    # THEN every one of them is stored
    assert query(database, "SELECT count(*), count(DISTINCT seq) FROM telemetry") == [(50, 50)]
    assert report.ended_by == "caught_up"


def test_retained_messages_are_cleared_once_stored(settings, app_pool, database, mosquitto_broker):
    # GIVEN a device that leaves retained messages (a birth message, and telemetry it should not retain)
    _, creds = new_tenant_with_devices(app_pool, settings, ["ret"])
    device = Device(settings, creds["ret"])
    prefix = creds["ret"].topic_prefix
    infos = [
        device.client.publish(f"{prefix}/status", "online", qos=1, retain=True),
        device.client.publish(f"{prefix}/telemetry", '{"metrics": {"r": 1}}', qos=1, retain=True),
    ]
    device.wait_acked([info.mid for info in infos])
    device.close()

    # WHEN the drain stores them
    run_mqtt_ingest()

    # THEN they are stored, and the broker keeps no retained copy: a new subscriber to the
    # device's topics (the admin may read everything) is sent none
    assert query(database, "SELECT metric FROM telemetry") == [("r",)]
    assert query(database, "SELECT status FROM devices") == [("online",)]
    admin = mosquitto_broker.admin
    reader = Client(settings, admin.username, admin.password, f"reader-{uuid.uuid4().hex[:8]}")
    assert reader.suback(f"{prefix}/#") in (0, 1)
    probe = Device(settings, creds["ret"])  # a message behind any retained ones, to know they would have come
    probe.wait_acked([probe.publish("telemetry", {"metrics": {"after": 1}})])
    wait_for(lambda: any(m.topic == f"{prefix}/telemetry" and not m.retain for m in reader.messages), 10, "the probe")
    assert [m.topic for m in reader.messages if m.retain] == []
    reader.close()
    probe.close()


def test_a_run_ends_when_it_has_caught_up_although_devices_keep_publishing(settings, app_pool, database):
    # GIVEN a backlog and a device that keeps publishing every millisecond or so, never leaving an idle gap
    _, creds = new_tenant_with_devices(app_pool, settings, ["busy"])
    device = Device(settings, creds["busy"])
    ts = NOW_MS() - 60_000
    device.wait_acked([device.publish("telemetry", {"ts": ts + i, "seq": i, "metrics": {"v": i}}) for i in range(500)])
    stop = threading.Event()

    def publish_steadily() -> None:
        i = 1000
        while not stop.is_set():
            device.publish("telemetry", {"ts": NOW_MS(), "seq": i, "metrics": {"v": i}})
            i += 1
            stop.wait(0.001)

    publisher = threading.Thread(target=publish_steadily)
    publisher.start()
    try:
        # WHEN a run starts with a budget far longer than the backlog needs
        report = drain_once(settings.model_copy(update={"ingest_time_budget_s": 30.0, "ingest_idle_exit_s": 20.0}))
    finally:
        stop.set()
        publisher.join()

    # THEN it stored the backlog, ended because its marker came back (not by idle exit or budget),
    # and the lean PUBLISH handler did the parsing
    assert report.ended_by == "caught_up" and report.status == "ok"
    assert report.duration_s < 20
    assert query(database, "SELECT count(*) FROM telemetry WHERE seq < 500") == [(500,)]
    assert report.fast_path_messages >= 500
    device.close()


def test_name_patterns_are_the_ones_the_sql_checks_enforce(database):
    # The contract defines them once; the migrations repeat them in CHECKs (SQL cannot import Python).
    definitions = dict(
        query(
            database,
            """
        SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE contype = 'c' AND conrelid IN ('tenants'::regclass, 'devices'::regclass)
          AND pg_get_constraintdef(oid) LIKE '%%~%%'""",
        )
    )
    assert re.search(re.escape(f"'{TENANT_SLUG_PATTERN}'"), definitions["tenants"])
    assert re.search(re.escape(f"'{DEVICE_NAME_PATTERN}'"), definitions["devices"])
    # And both engines read the patterns alike on the edge cases.
    samples = ["a", "a-", "-a", "A", "a.b", "a/b", "a_b", "a" * 63, "a" * 64, "a" * 65, "0", "é", "a b", ""]
    for pattern in (TENANT_SLUG_PATTERN, DEVICE_NAME_PATTERN):
        in_sql = dict(
            query(database, "SELECT s, s ~ %(p)s FROM unnest(%(s)s::text[]) AS s", {"p": pattern, "s": samples})
        )
        assert in_sql == {s: bool(re.match(pattern, s)) for s in samples}, pattern
