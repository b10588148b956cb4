"""The gateway reads a real Modbus TCP meter (pymodbus), a real OPC UA PLC (asyncua) and an ESP on the LAN broker,
and their readings land in PostgreSQL through the real broker (TLS, dynamic security, each device's own credential)
and the real drain, with the right names, units and times; commands from the API write a register and a node."""

from __future__ import annotations

import struct
import time

import pytest
from asyncua import ua

from shared.devices.commands import close_commander_connection
from tests.gateway.harness import HEALTH_DEVICE
from tests.support.api import call, close_api_pool, export_api_settings, mint_token, new_user
from tests.support.waiting import query, wait_for


def float_words_little(value: float) -> list[int]:
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [low, high]  # word order little: the low word first


@pytest.fixture
def commands_api(monkeypatch, database, settings, mosquitto_broker):
    export_api_settings(
        monkeypatch,
        database,
        MQTT_HOST=settings.mqtt_host,
        MQTT_PORT=str(settings.mqtt_port),
        MQTT_CA_FILE=settings.mqtt_ca_file,
        MQTT_COMMANDER_USERNAME=mosquitto_broker.commander.username,
        MQTT_COMMANDER_PASSWORD=mosquitto_broker.commander.password,
    )
    yield
    close_commander_connection()
    close_api_pool()


def test_meter_plc_and_lan_device_land_in_postgres_with_names_units_and_times(
    site, gateway, modbus_meter, opcua_plc, lan_broker, app_pool, database, commands_api
):
    # GIVEN a Modbus meter, an OPC UA PLC and an ESP on the LAN broker, each a device of the tenant
    shop = site("meter-01", "plc-01", "esp-07")
    meter = modbus_meter()
    meter.set(3, 0, [0x0001, 0x86A0])  # uint32 100000 -> 1000.00 kWh at scale 0.01
    meter.set(4, 10, float_words_little(2301.5))
    meter.set(3, 20, [(-123) & 0xFFFF])  # int16 -12.3 V at scale 0.1 (a negative value)
    meter.set(1, 0, [True])
    plc = opcua_plc.add_machine(
        {
            "SpindleSpeed": (1180.5, ua.VariantType.Double),
            "PartCount": (42, ua.VariantType.UInt32),
            "Mode": ("auto", ua.VariantType.String),
            "TargetSpeed": (1200.0, ua.VariantType.Double),
        }
    )
    started_ms = int(time.time() * 1000)
    gw = gateway(
        shop.config(
            modbus=[
                {
                    "device": "meter-01",
                    "host": "127.0.0.1",
                    "port": meter.port,
                    "poll_interval_s": 0.2,
                    # the meter answers from this test's own process, which the drain's runs keep busy at times
                    "timeout_s": 3.0,
                    "points": [
                        {"metric": "energy", "address": 0, "type": "uint32", "scale": 0.01, "unit": "kWh"},
                        {
                            "metric": "power",
                            "table": "input",
                            "address": 10,
                            "type": "float32",
                            "word_order": "little",
                            "unit": "W",
                        },
                        {"metric": "voltage", "address": 20, "type": "int16", "scale": 0.1, "unit": "V"},
                        {"metric": "running", "table": "coil", "address": 0},
                        {"metric": "set_point", "address": 30, "type": "uint16", "unit": "rpm", "writable": True},
                    ],
                }
            ],
            opcua=[
                {
                    "device": "plc-01",
                    "url": opcua_plc.url,
                    "interval_s": 0.1,
                    "nodes": [
                        {"metric": "spindle_rpm", "node_id": opcua_plc.node_id(plc["SpindleSpeed"]), "unit": "rpm"},
                        {"metric": "part_count", "node_id": opcua_plc.node_id(plc["PartCount"])},
                        {"metric": "mode", "node_id": opcua_plc.node_id(plc["Mode"])},
                        {"metric": "target_rpm", "node_id": opcua_plc.node_id(plc["TargetSpeed"]), "writable": True},
                    ],
                }
            ],
            mqtt_lan=[
                {
                    "host": "127.0.0.1",
                    "port": lan_broker.port,
                    "topics": [
                        {
                            "topic": f"{shop.slug}/esp-07/temperature",
                            "device": "esp-07",
                            "metric": "temperature",
                            "unit": "C",
                        },
                        {
                            "topic": f"{shop.slug}/esp-07/env",
                            "device": "esp-07",
                            "format": "json",
                            "fields": {"h": "humidity"},
                            "units": {"humidity": "%"},
                        },
                    ],
                }
            ],
        )
    ).start()
    wait_for(lambda: gw.events("source.connected"), 20, "the gateway connected to its sources")

    # WHEN the ESP publishes on the LAN, and the gateway runs a while
    esp = _lan_client(lan_broker.port)
    wait_for(lambda: len(gw.events("source.connected")) >= 2, 10, "the LAN subscription")
    esp.publish(f"{shop.slug}/esp-07/temperature", "21.5", qos=1).wait_for_publish(5)
    esp.publish(f"{shop.slug}/esp-07/env", '{"h": 48.5, "ignored": 1}', qos=1).wait_for_publish(5)

    # THEN every metric is stored under its device with its value and a time from this run
    def stored() -> bool:
        return len(shop.rows("meter-01", "energy")) >= 3 and all(
            shop.rows(device, metric)
            for device, metric in (
                ("meter-01", "energy"),
                ("meter-01", "power"),
                ("meter-01", "voltage"),
                ("meter-01", "running"),
                ("plc-01", "spindle_rpm"),
                ("plc-01", "part_count"),
                ("plc-01", "mode"),
                ("esp-07", "temperature"),
                ("esp-07", "humidity"),
            )
        )

    shop.drain_until(stored, 30, "readings of every metric in telemetry")
    now_ms = int(time.time() * 1000)
    assert {r[0] for r in shop.rows("meter-01", "energy")} == {1000.0}
    assert {r[0] for r in shop.rows("meter-01", "power")} == {2301.5}
    assert {r[0] for r in shop.rows("meter-01", "voltage")} == {-12.3}
    assert {r[1] for r in shop.rows("meter-01", "running")} == {True}
    assert shop.rows("plc-01", "spindle_rpm")[0][0] == 1180.5
    assert shop.rows("plc-01", "part_count")[0][0] == 42.0
    assert shop.rows("plc-01", "mode")[0][2] == "auto"
    assert [r[0] for r in shop.rows("esp-07", "temperature")] == [21.5]
    assert [r[0] for r in shop.rows("esp-07", "humidity")] == [48.5]
    assert not shop.rows("esp-07", "ignored")  # fields names what the JSON carries that matters
    for device, metric in (("meter-01", "energy"), ("plc-01", "part_count"), ("esp-07", "temperature")):
        assert all(started_ms - 2000 <= ts <= now_ms for _, _, _, ts, _ in shop.rows(device, metric))
    # one reading per poll: a Modbus poll's metrics share its time and seq
    energy = {(ts, seq) for *_, ts, seq in shop.rows("meter-01", "energy")[1:]}
    assert energy and energy <= {(ts, seq) for *_, ts, seq in shop.rows("meter-01", "voltage")}
    # the OPC UA reading carries the PLC's own source timestamp
    source_ms = int(opcua_plc.background.run(plc["PartCount"].read_data_value()).SourceTimestamp.timestamp() * 1000)
    assert [ts for *_, ts, _ in shop.rows("plc-01", "part_count")] == [source_ms]
    # and the units, kept per device and metric
    units = dict(
        query(
            database,
            """
        SELECT d.name || '/' || m.metric, m.unit FROM device_metrics m JOIN devices d
          ON d.tenant_id = m.tenant_id AND d.id = m.device_id WHERE m.tenant_id = %(t)s AND m.unit IS NOT NULL""",
            {"t": shop.tenant["id"]},
        )
    )
    assert {k: v for k, v in units.items() if not k.startswith(HEALTH_DEVICE)} == {
        "meter-01/energy": "kWh",
        "meter-01/power": "W",
        "meter-01/voltage": "V",
        "meter-01/set_point": "rpm",
        "plc-01/spindle_rpm": "rpm",
        "esp-07/temperature": "C",
        "esp-07/humidity": "%",
    }

    # AND a change on the PLC arrives as the next reading
    opcua_plc.write(plc["PartCount"], 43, ua.VariantType.UInt32)
    shop.drain_until(lambda: [r for r in shop.rows("plc-01", "part_count") if r[0] == 43.0], 20, "part_count 43")

    # AND the gateway reports its health as telemetry of its own device
    health = shop.drain_until(lambda: shop.rows(HEALTH_DEVICE, "read_errors.meter-01"), 20, "health telemetry")
    assert health[-1][0] == 0.0
    assert shop.rows(HEALTH_DEVICE, "buffer_readings") and shop.rows(HEALTH_DEVICE, "publish_latency_ms_p50")
    assert query(
        database,
        "SELECT unit FROM device_metrics WHERE tenant_id = %(t)s AND metric = 'buffer_oldest_s'",
        {"t": shop.tenant["id"]},
    ) == [("s",)]
    # every device is online on the dashboard
    assert dict(
        query(database, "SELECT name, status FROM devices WHERE tenant_id = %(t)s", {"t": shop.tenant["id"]})
    ) == {n: "online" for n in ("meter-01", "plc-01", "esp-07", HEALTH_DEVICE)}

    # WHEN staff sends commands through the API: a register, a node, and a point the config leaves read-only
    token = mint_token(new_user(app_pool, shop.tenant, "staff"))
    meter_id, plc_id = shop.device_id("meter-01"), shop.device_id("plc-01")
    sent = [
        call("POST", f"/api/devices/{meter_id}/commands", {"name": "set_point", "args": {"value": 7300}}, token=token),
        call("POST", f"/api/devices/{plc_id}/commands", {"name": "target_rpm", "args": {"value": 9000}}, token=token),
        call("POST", f"/api/devices/{meter_id}/commands", {"name": "energy", "args": {"value": 0}}, token=token),
    ]
    assert [r.status for r in sent] == [202, 202, 202], [r.body for r in sent]

    # THEN the register and the node hold the new values, the read-only point is untouched
    wait_for(lambda: meter.get(3, 30, 1) == [7300], 20, "set_point written to holding register 30")
    wait_for(lambda: opcua_plc.read(plc["TargetSpeed"]) == 9000.0, 20, "TargetSpeed written on the PLC")
    assert meter.get(3, 0, 2) == [0x0001, 0x86A0]

    # AND each command is acknowledged as every device acknowledges, listed by the API with its result
    def results() -> dict[str, str] | None:
        shop.drain()
        listed = [
            c
            for device_id in (meter_id, plc_id)
            for c in call("GET", f"/api/devices/{device_id}/commands", token=token).json["items"]
        ]
        if all(c["status"] == "acknowledged" for c in listed):
            return {c["name"]: c["result"] for c in listed}
        return None

    outcome = wait_for(results, 30, "the commands acknowledged", interval=0.1)
    assert outcome["set_point"] == "applied" and outcome["target_rpm"] == "applied"
    assert outcome["energy"].startswith("rejected: 'energy' is not a writable point")
    shop.drain_until(
        lambda: [r for r in shop.rows("meter-01", "set_point") if r[0] == 7300.0], 20, "the new set point read back"
    )

    # AND the gateway stops cleanly on SIGTERM: the devices go offline, nothing is left unpublished
    esp.disconnect()
    assert gw.stop() == 0
    shop.drain_until(
        lambda: (
            dict(query(database, "SELECT name, status FROM devices WHERE tenant_id = %(t)s", {"t": shop.tenant["id"]}))[
                "meter-01"
            ]
            == "offline"
        ),
        20,
        "meter offline",
    )
    assert gw.pending() == 0


def _lan_client(port: int):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="esp-07")
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client
