"""The command round trip: a set_point sent through the API reaches scripts/simulator.py (run as
`scripts/dev up` runs it, a process with its own credential file), which applies it; its next telemetry carries the
new set point and the ack, the drain stores both, and the API lists the command as acknowledged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from shared.devices.commands import close_commander_connection
from tests.support.api import call, close_api_pool, export_api_settings, mint_token, new_user
from tests.support.devices import new_tenant_with_devices, run_mqtt_ingest
from tests.support.waiting import query, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def simulator(tmp_path, app_pool, settings):
    """A tenant with device press-01 and the simulator running as that device, a reading every 0.2 s."""
    tenant, credentials = new_tenant_with_devices(app_pool, settings, ["press-01"])
    credential_file = tmp_path / "device.json"
    credential_file.write_text(json.dumps(asdict(credentials["press-01"])))
    log_file = (tmp_path / "simulator.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "simulator.py"),
            "--credential",
            str(credential_file),
            "--host",
            settings.mqtt_host,
            "--port",
            str(settings.mqtt_port),
            "--cafile",
            settings.mqtt_ca_file,
            "--interval",
            "0.2",
            "--seed",
            "7",
        ],
        cwd=ROOT,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield tenant, tmp_path / "simulator.log"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()


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


def test_simulator_applies_a_set_point_and_its_telemetry_and_ack_show_it(app_pool, database, simulator, commands_api):
    # GIVEN the simulator connected and reporting (its readings reach the database)
    tenant, log_file = simulator
    staff = new_user(app_pool, tenant, "staff")
    token = mint_token(staff)
    ((device_id,),) = query(database, "SELECT id FROM devices WHERE tenant_id = %(t)s", {"t": tenant["id"]})

    def stored(metric: str) -> list[tuple]:
        run_mqtt_ingest()
        return query(
            database,
            "SELECT value, value_text, ts FROM telemetry WHERE tenant_id = %(t)s AND metric = %(m)s ORDER BY ts, seq",
            {"t": tenant["id"], "m": metric},
        )

    wait_for(lambda: stored("spindle_rpm"), 30, "the simulator's readings in telemetry", interval=0.2)
    # (the simulator subscribes right after connecting; its first stored reading proves it is connected)
    assert "connected to" in log_file.read_text()

    # WHEN staff sends it set_point 7300 through the API
    reply = call(
        "POST", f"/api/devices/{device_id}/commands", {"name": "set_point", "args": {"value": 7300}}, token=token
    )
    assert reply.status == 202, reply.body
    command = reply.json
    assert command["status"] == "sent"

    # THEN its telemetry, as the drain stores it, carries the new set point and the ack naming the command
    readings = wait_for(lambda: stored("set_point"), 30, "set_point in telemetry", interval=0.2)
    assert {value for value, _, _ in readings} == {7300.0}
    acks = wait_for(lambda: stored("cmd_ack"), 30, "the ack in telemetry", interval=0.2)
    assert [text for _, text, _ in acks] == [command["id"]]
    assert [text for _, text, _ in stored("cmd_result")] == ["applied"]
    # AND the API lists the command as acknowledged by the device, with its result
    listed = call("GET", f"/api/devices/{device_id}/commands", token=token).json["items"]
    assert [(c["id"], c["status"], c["result"]) for c in listed] == [(command["id"], "acknowledged", "applied")]
    assert listed[0]["acked_at"] is not None and listed[0]["sent_by"] == str(staff["id"])

    # AND a command it cannot carry out is acknowledged with the reason, the set point unchanged
    reply = call(
        "POST", f"/api/devices/{device_id}/commands", {"name": "set_point", "args": {"value": "fast"}}, token=token
    )
    assert reply.status == 202, reply.body

    def rejected() -> list[dict]:
        stored("cmd_ack")
        items = call("GET", f"/api/devices/{device_id}/commands", token=token).json["items"]
        return [c for c in items if c["id"] == reply.json["id"] and c["status"] == "acknowledged"]

    (done,) = wait_for(rejected, 30, "the rejected command's ack", interval=0.2)
    assert done["result"].startswith("rejected: value must be a number")
    assert {value for value, _, _ in stored("set_point")} == {7300.0}
