"""Device profiles end to end: a device created and given a profile through the API (its broker ACL
changed live), publishing its vendor's own payloads over TLS to the real broker, the registered
mqtt_ingest function, real PostgreSQL. Payloads are the vendors' documented examples (cited per
fixture); Sparkplug B comes from a third-party edge node library (pysparkplug, .venv/sparkplug)."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.broker.contract import SPARKPLUG_STATE_TOPIC
from shared.ingest.sparkplug.sparkplug_b_pb2 import Payload
from tests.support.api import call, mint_token, new_user
from tests.support.devices import Device, run_mqtt_ingest, unique_slug
from tests.support.registry import DeviceCredential, create_tenant
from tests.support.waiting import query, wait_for

REPO = Path(__file__).resolve().parents[2]
SPARKPLUG_PYTHON = REPO / ".venv" / "sparkplug" / "bin" / "python"
NOT_AUTHORIZED = 135


@pytest.fixture
def world(broker_api, app_pool, monkeypatch, mosquitto_broker):
    """A tenant, an owner's token, and the app's settings with the commander credential (rebirths)."""
    from shared.core.settings import get_settings

    monkeypatch.setenv("MQTT_COMMANDER_USERNAME", mosquitto_broker.commander.username)
    monkeypatch.setenv("MQTT_COMMANDER_PASSWORD", mosquitto_broker.commander.password)
    get_settings.cache_clear()
    settings = broker_api
    tenant = create_tenant(app_pool, unique_slug(), "Acme Test Works", "starter")
    owner = new_user(app_pool, tenant, "owner")
    return {"settings": settings, "tenant": tenant, "token": mint_token(owner)}


def new_device(world: dict[str, Any], name: str, profile: str | None = None) -> tuple[int, DeviceCredential]:
    reply = call("POST", "/api/devices", {"name": name}, token=world["token"])
    assert reply.status == 201, reply.body
    created = reply.json
    cred = created["credential"]
    credential = DeviceCredential(world["tenant"]["slug"], name, cred["username"], cred["client_id"], cred["password"])
    if profile is not None:
        assign(world, created["id"], profile)
    return created["id"], credential


def assign(world: dict[str, Any], device_id: int, profile: str) -> None:
    reply = call("PUT", f"/api/devices/{device_id}/profile", {"profile": profile}, token=world["token"])
    assert reply.status == 200, reply.body
    assert reply.json["broker_synced"] is True


def rows(database, device: str) -> dict[str, Any]:
    found = query(
        database,
        """SELECT t.metric, coalesce(t.value::text, t.value_bool::text, t.value_text)
           FROM telemetry t JOIN devices d ON d.tenant_id = t.tenant_id AND d.id = t.device_id
           WHERE d.name = %(name)s ORDER BY t.ts, t.metric""",
        {"name": device},
    )
    return dict(found)


def units(database, device: str) -> dict[str, str]:
    return dict(
        query(
            database,
            """SELECT m.metric, m.unit FROM device_metrics m JOIN devices d ON d.tenant_id = m.tenant_id AND d.id = m.device_id
               WHERE d.name = %(name)s AND m.unit IS NOT NULL""",
            {"name": device},
        )
    )


def iso_now(offset: str = "+00:00") -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", offset)


# Tasmota, https://tasmota.github.io/docs/MQTT/ and /docs/Commands/#setoption52: an energy-monitoring plug
# (Sonoff POW / Athom plug) with FullTopic t/{tenant}/d/%topic%/%prefix%/, SetOption52 1 (Time with offset).
def tasmota_sensor() -> dict[str, Any]:
    return {
        "Time": iso_now(),
        "ENERGY": {
            "TotalStartTime": "2019-12-23T17:02:03",
            "Total": 1.025,
            "Yesterday": 0.0,
            "Today": 1.025,
            "Period": 0,
            "Power": 23,
            "ApparentPower": 27,
            "ReactivePower": 14,
            "Factor": 0.85,
            "Voltage": 230,
            "Current": 0.117,
        },
    }


def test_tasmota_plug_is_refused_until_its_profile_then_stored(world, database):
    # GIVEN a device with the native profile, publishing as a Tasmota plug does
    settings = world["settings"]
    device_id, credential = new_device(world, "plug-1")
    plug = Device(settings, credential)
    refused = plug.wait_acked([plug.publish("tele/SENSOR", tasmota_sensor())])
    assert set(refused.values()) == {NOT_AUTHORIZED}

    # WHEN it is given the tasmota profile (the ACL changes live, the device stays connected)
    assign(world, device_id, "tasmota")
    state = {
        "Time": iso_now(),
        "Uptime": "0T00:10:27",
        "UptimeSec": 627,
        "POWER": "ON",
        "Wifi": {"RSSI": 100, "Signal": -46},
    }
    acks = plug.wait_acked(
        [
            plug.publish("tele/LWT", "Online"),
            plug.publish("tele/STATE", state),
            plug.publish("tele/SENSOR", tasmota_sensor()),
            plug.publish("stat/POWER", "OFF"),
            plug.publish("tele/INFO1", {"Module": "Sonoff Pow R2"}),  # not a form of the profile
        ]
    )
    plug.close()
    run_mqtt_ingest()

    # THEN the declared forms are stored as the native path would store them, the rest still refused
    assert list(acks.values()) == [0, 0, 0, 0, NOT_AUTHORIZED]
    stored = rows(database, "plug-1")
    assert stored["ENERGY.Power"] == "23" and stored["ENERGY.Voltage"] == "230" and stored["ENERGY.Factor"] == "0.85"
    assert stored["POWER"] == "false" and stored["Wifi.Signal"] == "-46"  # stat/POWER OFF came last
    assert "ENERGY.TotalStartTime" not in stored
    assert units(database, "plug-1")["ENERGY.Power"] == "W"
    assert query(database, "SELECT status FROM devices WHERE name = 'plug-1'") == [("online",)]
    assert query(database, "SELECT count(*) FROM dead_letters") == [(0,)]


# Shelly Gen2, https://shelly-api-docs.shelly.cloud/gen2/General/Notifications and
# /gen2/ComponentsAndServices/Switch (status of a Shelly Plus 1PM): topic prefix t/{tenant}/d/{device}.
def shelly_frames(device: str) -> list[dict[str, Any]]:
    ts = time.time()
    return [
        {
            "src": "shellyplus1pm-a8032ab636ec",
            "dst": f"{device}/events",
            "method": "NotifyFullStatus",
            "params": {
                "ts": ts - 2,
                "switch:0": {
                    "id": 0,
                    "source": "init",
                    "output": False,
                    "apower": 0.0,
                    "voltage": 237.5,
                    "current": 0.0,
                    "aenergy": {"total": 6.532, "by_minute": [0.0, 0.0, 0.0], "minute_ts": int(ts)},
                    "temperature": {"tC": 39.2, "tF": 102.5},
                },
                "wifi": {"sta_ip": "192.168.33.2", "status": "got ip", "ssid": "plant", "rssi": -54},
                "sys": {"mac": "A8032AB636EC", "uptime": 4212, "ram_free": 151072},
            },
        },
        {
            "src": "shellyplus1pm-a8032ab636ec",
            "dst": f"{device}/events",
            "method": "NotifyStatus",
            "params": {"ts": ts - 1, "switch:0": {"id": 0, "output": True, "source": "button", "apower": 8.9}},
        },
        {
            "src": "shellyplus1pm-a8032ab636ec",
            "dst": f"{device}/events",
            "method": "NotifyEvent",
            "params": {"ts": ts, "events": [{"component": "input:0", "id": 0, "event": "single_push", "ts": ts}]},
        },
    ]


def test_shelly_gen2_rpc_notifications_are_stored(world, database):
    device_id, credential = new_device(world, "relay-1", "shelly-gen2")
    relay = Device(world["settings"], credential)
    mids = [relay.publish("online", "true")] + [
        relay.publish("events/rpc", frame) for frame in shelly_frames("relay-1")
    ]
    assert set(relay.wait_acked(mids).values()) == {0}
    relay.close()
    run_mqtt_ingest()

    stored = rows(database, "relay-1")
    assert stored["switch_0.output"] == "true" and stored["switch_0.apower"] == "8.9"
    assert stored["switch_0.voltage"] == "237.5" and stored["switch_0.temperature.tC"] == "39.2"
    assert stored["wifi.rssi"] == "-54" and stored["event"] == "single_push" and stored["event_component"] == "input:0"
    assert "sys.mac" not in stored and "wifi.ssid" not in stored
    assert units(database, "relay-1")["switch_0.aenergy.total"] == "Wh"
    assert query(database, "SELECT count(*) FROM dead_letters") == [(0,)]


# ESPHome's MQTT discovery (https://esphome.io/components/mqtt.html, https://www.home-assistant.io/integrations/mqtt/
# #mqtt-discovery): topic_prefix t/{tenant}/d/{device}, discovery_prefix t/{tenant}/d/{device}/homeassistant;
# configs use discovery's abbreviations as ESPHome sends them.
def test_homeassistant_discovery_registers_entities_and_names_the_template_it_cannot_read(world, database):
    device_id, credential = new_device(world, "esp-1", "homeassistant-discovery")
    prefix = credential.topic_prefix
    node = Device(world["settings"], credential)
    temperature = {
        "dev_cla": "temperature",
        "unit_of_meas": "°C",
        "stat_cla": "measurement",
        "name": "Temperature",
        "stat_t": f"{prefix}/sensor/temperature/state",
        "avty_t": f"{prefix}/status",
        "uniq_id": "esp1sensortemperature",
        "dev": {
            "ids": "a4cf12b3c4d5",
            "name": "esp-1",
            "sw": "esphome v2024.6.1",
            "mdl": "esp32dev",
            "mf": "espressif",
        },
    }
    relay = {"name": "Relay", "stat_t": f"{prefix}/switch/relay/state", "cmd_t": f"{prefix}/switch/relay/command"}
    fancy = {
        "name": "Fancy",
        "stat_t": f"{prefix}/sensor/fancy/state",
        "val_tpl": "{{ value_json.a if value_json.b else 0 }}",
    }
    mids = [
        node.publish("homeassistant/sensor/esp-1/temperature/config", temperature),
        node.publish("homeassistant/switch/esp-1/relay/config", relay),
        node.publish("homeassistant/sensor/esp-1/fancy/config", fancy),
        node.publish("status", "online"),
        node.publish("sensor/temperature/state", "21.5"),
        node.publish("switch/relay/state", "ON"),
        node.publish("sensor/fancy/state", '{"a": 1, "b": true}'),
    ]
    assert set(node.wait_acked(mids).values()) == {0}
    node.close()
    run_mqtt_ingest()

    assert rows(database, "esp-1") == {"temperature": "21.5", "relay": "true"}
    assert units(database, "esp-1") == {"temperature": "°C"}
    dead = query(database, "SELECT topic, reason, detail, profile FROM dead_letters ORDER BY id")
    assert [(d[0].rsplit("/", 2)[-2], d[1], d[3]) for d in dead] == [
        ("fancy", "template_unsupported", "homeassistant-discovery"),
        ("fancy", "undiscovered_topic", "homeassistant-discovery"),
    ]
    assert "{{ value_json.a if value_json.b else 0 }}" in dead[0][2]


def sparkplug_job(
    world: dict[str, Any], credential: DeviceCredential, mosquitto_broker, **extra: Any
) -> dict[str, Any]:
    return {
        "host": mosquitto_broker.host,
        "port": mosquitto_broker.port,
        "ca_file": str(mosquitto_broker.ca_file),
        "client_id": credential.client_id,
        "username": credential.username,
        "password": credential.password,
        "group_id": world["tenant"]["slug"],
        "edge_node_id": credential.device,
        **extra,
    }


def run_edge_node(job: dict[str, Any], timeout: float = 60) -> list[str]:
    assert SPARKPLUG_PYTHON.exists(), "scripts/install-deps creates .venv/sparkplug (pysparkplug)"
    done = subprocess.run(
        [str(SPARKPLUG_PYTHON), str(REPO / "tests" / "support" / "sparkplug_edge.py")],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_sparkplug_edge_node_from_a_third_party_library(world, database, mosquitto_broker):
    # GIVEN a gateway device with the sparkplug-b profile: group id = tenant, edge node id = device
    device_id, credential = new_device(world, "gw-1", "sparkplug-b")

    # WHEN pysparkplug's edge node publishes its session over TLS (QoS 0, as Sparkplug does) and the drain runs
    steps = run_edge_node(sparkplug_job(world, credential, mosquitto_broker))
    run_mqtt_ingest()

    # THEN births define the metrics, data is stored, the deaths mark the node and sub-device offline
    assert steps == ["NBIRTH", "NDATA", "DBIRTH", "DDATA", "DDEATH", "NDEATH"]
    readings = query(
        database,
        "SELECT metric, coalesce(value::text, value_bool::text) FROM telemetry ORDER BY ts, metric, seq",
    )
    by_metric: dict[str, list[str]] = {}
    for metric, value in readings:
        by_metric.setdefault(metric, []).append(value)
    assert by_metric["Line.Speed"] == ["12.5", "13.25"]
    assert by_metric["Line.Running"] == ["true"] and by_metric["Line.Count"] == ["-3"]
    assert by_metric["press.Pressure"] == ["4.5", "4.75"]
    assert by_metric["press.online"] == ["true", "false"]
    assert "bdSeq" not in by_metric
    assert query(database, "SELECT status FROM devices WHERE name = 'gw-1'") == [("offline",)]
    kinds = [k for (k,) in query(database, "SELECT kind FROM device_decoder_events ORDER BY id")]
    assert kinds == ["node_birth", "device_birth", "device_death", "node_death"]
    assert query(database, "SELECT count(*) FROM dead_letters") == [(0,)]
    events = call("GET", f"/api/devices/{device_id}/decoder-events", token=world["token"])
    assert [e["kind"] for e in events.json["items"]] == list(reversed(kinds))


def sparkplug_payload(seq: int, metrics: list[dict[str, Any]], bd_seq: int | None = None) -> bytes:
    payload = Payload(timestamp=int(time.time() * 1000), seq=seq)
    for metric in metrics:
        payload.metrics.add(**metric)
    if bd_seq is not None:
        payload.metrics.add(name="bdSeq", datatype=4, long_value=bd_seq)
    return payload.SerializeToString()


def test_sparkplug_gap_is_recorded_and_a_rebirth_is_asked_through_ncmd(world, database, mosquitto_broker):
    # GIVEN a node whose birth was stored (aliases defined), and the node listening on its NCMD topic
    settings = world["settings"]
    _, credential = new_device(world, "gw-2", "sparkplug-b")
    group = world["tenant"]["slug"]
    topic = f"spBv1.0/{group}/{{}}/gw-2"
    node = Device(settings, credential)
    commands: list[bytes] = []
    node.client.on_message = lambda client, userdata, message: commands.append(message.payload)
    node.client.subscribe(topic.format("NCMD"), qos=1)
    birth = [{"name": "Oven/Temp", "alias": 7, "datatype": 10, "double_value": 180.0}]
    node.wait_acked([node.publish("", sparkplug_payload(0, birth, bd_seq=0), topic=topic.format("NBIRTH"))])
    run_mqtt_ingest()

    # WHEN data comes by alias, with seq 1 then 3 (2 was lost), and an alias no birth defined
    node.wait_acked(
        [
            node.publish("", sparkplug_payload(1, [{"alias": 7, "double_value": 181.5}]), topic=topic.format("NDATA")),
            node.publish("", sparkplug_payload(3, [{"alias": 7, "double_value": 183.0}]), topic=topic.format("NDATA")),
            node.publish("", sparkplug_payload(4, [{"alias": 99, "double_value": 1.0}]), topic=topic.format("NDATA")),
        ]
    )
    run_mqtt_ingest()

    # THEN the values by alias are stored, the gap and the unknown alias are visible, one rebirth was asked
    assert [v for _, v in query(database, "SELECT metric, value FROM telemetry ORDER BY ts, value")] == [
        180.0,
        181.5,
        183.0,
    ]
    gap = query(database, "SELECT detail FROM device_decoder_events WHERE kind = 'seq_gap'")
    assert gap == [({"expected": 2, "got": 3, "type": "NDATA"},)]
    assert query(database, "SELECT reason, profile FROM dead_letters") == [("sparkplug_unknown_alias", "sparkplug-b")]
    wait_for(lambda: commands, 10, "the rebirth request on NCMD")
    request = Payload.FromString(commands[0])
    assert [(m.name, m.boolean_value) for m in request.metrics] == [("Node Control/Rebirth", True)]
    assert len(commands) == 1
    node.close()


def test_the_drain_publishes_the_primary_host_state_retained(world, mosquitto_broker):
    # A gateway configured with primary host id mqtt-saas waits for this before its NBIRTH.
    _, credential = new_device(world, "gw-3", "sparkplug-b")
    run_mqtt_ingest()
    gateway = Device(world["settings"], credential)
    seen: list[bytes] = []
    gateway.client.on_message = lambda client, userdata, message: seen.append(message.payload)
    gateway.client.subscribe(SPARKPLUG_STATE_TOPIC, qos=1)
    wait_for(lambda: seen, 10, "the retained STATE")
    state = json.loads(seen[0])
    assert state["online"] is True and state["timestamp"] > time.time() * 1000 - 120_000
    gateway.close()


# Tasmota SetOption52 0 (the default): Time is local time without offset. A plant in Jakarta (UTC+7) that
# took the profile as it is gets its readings 7 hours in the future: dead letters, until the profile knows
# the time zone.
def test_dry_run_apply_and_replay_store_the_dead_letters_once(world, database):
    settings = world["settings"]
    token = world["token"]
    spec = call("GET", "/api/profiles/tasmota", token=token).json["spec"]
    created = call("POST", "/api/profiles", {"name": "plant-plugs", "spec": spec}, token=token)
    assert created.status == 201, created.body
    device_id, credential = new_device(world, "plug-jkt", "plant-plugs")
    plug = Device(settings, credential)
    jakarta_now = datetime.now(UTC).timestamp() + 7 * 3600
    payloads = []
    for i in range(3):
        local = datetime.fromtimestamp(jakarta_now - 60 * (3 - i), UTC).replace(tzinfo=None, microsecond=0)
        payloads.append({"Time": local.isoformat(), "ENERGY": {"Power": 20 + i, "Voltage": 229}})
    assert set(plug.wait_acked([plug.publish("tele/SENSOR", p) for p in payloads]).values()) == {0}
    plug.close()
    run_mqtt_ingest()
    assert query(database, "SELECT reason, profile FROM dead_letters") == [("ts_in_future", "plant-plugs")] * 3
    assert query(database, "SELECT count(*) FROM telemetry") == [(0,)]

    # WHEN the owner tries the profile with the plant's time zone against them (a dry run writes nothing)
    fixed = {**spec, "timezone": "Asia/Jakarta"}
    dry = call("POST", f"/api/devices/{device_id}/dead-letters/dry-run", {"spec": fixed}, token=token)
    assert dry.status == 200, dry.body
    assert (dry.json["would_store"], dry.json["readings"], dry.json["still_failing"]) == (3, 6, 0)
    assert {r["metric"] for r in dry.json["items"][0]["readings"]} == {"ENERGY.Power", "ENERGY.Voltage"}
    assert query(database, "SELECT count(*) FROM telemetry") == [(0,)]

    # THEN applies it and replays: stored once; a second replay and a forced one store nothing more
    assert call("PUT", "/api/profiles/plant-plugs", {"spec": fixed}, token=token).status == 200
    first = call("POST", f"/api/devices/{device_id}/dead-letters/replay", token=token)
    assert first.status == 200, first.body
    assert (first.json["replayed"], first.json["stored_readings"], first.json["duplicates"]) == (3, 6, 0)
    again = call("POST", f"/api/devices/{device_id}/dead-letters/replay", token=token).json
    assert (again["replayed"], again["stored_readings"]) == (0, 0)
    forced = call("POST", f"/api/devices/{device_id}/dead-letters/replay?include_replayed=true", token=token).json
    assert (forced["replayed"], forced["stored_readings"], forced["duplicates"]) == (3, 0, 6)
    power = query(database, "SELECT value, ts FROM telemetry WHERE metric = 'ENERGY.Power' ORDER BY ts")
    assert [v for v, _ in power] == [20.0, 21.0, 22.0]
    assert abs(power[-1][1].timestamp() - (time.time() - 60)) < 120
    assert query(database, "SELECT count(*) FROM dead_letters WHERE replayed_at IS NOT NULL") == [(3,)]
    actions = [
        a for (a,) in query(database, "SELECT action FROM audit_log WHERE starts_with(action, 'device.') ORDER BY id")
    ]
    assert actions.count("device.replay_dead_letters") == 3 and "device.set_profile" in actions


def test_a_profile_change_reaches_the_broker_acl_live(world):
    # GIVEN a device on a profile of its tenant, connected
    token = world["token"]
    spec = {"forms": [{"topic": "plc/line1", "metrics": [{"path": "speed", "name": "speed"}]}]}
    assert call("POST", "/api/profiles", {"name": "plc", "spec": spec}, token=token).status == 201
    device_id, credential = new_device(world, "plc-1", "plc")
    device = Device(world["settings"], credential)
    before = device.wait_acked([device.publish("plc/line1", {"speed": 1}), device.publish("plc/line2", {"speed": 2})])

    # WHEN the profile declares another form
    spec["forms"].append({"topic": "plc/line2", "metrics": [{"path": "speed", "name": "speed2"}]})
    updated = call("PUT", "/api/profiles/plc", {"spec": spec}, token=token)

    # THEN the same connection may publish it at once
    assert updated.status == 200 and updated.json["broker_synced"] is True
    after = device.wait_acked([device.publish("plc/line2", {"speed": 2})])
    device.close()
    assert list(before.values()) == [0, NOT_AUTHORIZED] and list(after.values()) == [0]
