"""scripts/deploy's own steps against the test PostgreSQL and Mosquitto, with az, ssh and scp standing in for Azure:
the migrations, the roles' passwords and the drain's persistent session are in place after one run, and a second
run, over the broker VM the first one created, changes nothing and succeeds (the script is safe to run again): it
leaves the VM out of the template (brokerVmExists) and says that its cloud-init is not reapplied."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.core.settings import settings_from
from shared.ingest.drain import drop_session

REPO = Path(__file__).resolve().parents[2]


def stub_tools(folder: Path, outputs: dict[str, object], ca_file: Path) -> Path:
    """az prints the deployment's outputs, and the group's VMs from vms.json (none at first); ssh succeeds (cloud-init
    done); scp copies the test broker's CA to its last argument; func must not be called (--skip-publish). Every
    call is logged."""
    folder.mkdir()
    log = folder / "calls.log"
    (folder / "vms.json").write_text("[]")
    tools = {
        "az": f'echo "az $*" >>{log}\ncase "$*" in *"deployment group create"*) cat {folder}/outputs.json;;\n'
        f'  "vm list "*) cat {folder}/vms.json;; esac',
        "ssh": f'echo "ssh $*" >>{log}',
        "scp": f'echo "scp $*" >>{log}\nfor last; do :; done\ncp {ca_file} "$last"',
        "func": f'echo "func $*" >>{log}\nexit 1',
    }
    (folder / "outputs.json").write_text(json.dumps({k: {"type": "String", "value": v} for k, v in outputs.items()}))
    for name, body in tools.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def session_present(broker, username: str, password: str) -> bool:
    """Connects with Clean Start off and reads the CONNACK's session-present flag, then leaves the session as it
    was (same expiry)."""
    result: dict[str, bool] = {}
    done = threading.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.tls_set(ca_certs=str(broker.ca_file))

    def on_connect(c, u, flags, reason, props):  # noqa: ANN001
        result["present"] = bool(flags.session_present)
        done.set()

    client.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 604800
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    client.loop_start()
    assert done.wait(15)
    client.disconnect()
    client.loop_stop()
    return result["present"]


@pytest.fixture
def fresh_database(postgres_server):
    name = f"deploy_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield name
    with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_deploy_steps_run_twice_against_real_services(
    tmp_path: Path, postgres_server, mosquitto_broker, role_passwords, fresh_database
) -> None:
    # GIVEN an empty database, the test broker, and Azure's tools standing in (the template "deployed")
    where = f"127.0.0.1:{postgres_server.port}/{fresh_database}"
    ingest = mosquitto_broker.ingest
    env = {
        # The roles are cluster-wide and other tests log in with these passwords: deploy sets the same ones.
        "DATABASE_URL": f"postgresql://mqtt_saas_app:{role_passwords['mqtt_saas_app']}@{where}",
        "INGEST_DATABASE_URL": f"postgresql://mqtt_saas_ingest:{role_passwords['mqtt_saas_ingest']}@{where}",
        "MAINTENANCE_DATABASE_URL": f"postgresql://mqtt_saas_maintenance:{role_passwords['mqtt_saas_maintenance']}@{where}",
        "ADMIN_DATABASE_URL": postgres_server.superuser_dsn(fresh_database),
        "MQTT_INGEST_PASSWORD": ingest.password,
        "MQTT_PROVISIONER_PASSWORD": mosquitto_broker.provisioner.password,
        "MQTT_COMMANDER_PASSWORD": "commander-" + uuid.uuid4().hex,
        "AUTH_JWT_SECRET": "e" * 64,
        "ADMIN_SSH_PUBLIC_KEY": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDeployStepsTest ops@test",
    }
    outputs = {
        "brokerHost": mosquitto_broker.host,
        "brokerPort": mosquitto_broker.port,
        "functionAppName": "func-test",
        "functionAppUrl": "https://func-test.example.net",
        "keyVaultName": "kv-test",
        "brokerVmName": "vm-mqtt-saas-abcdefgh23456",
        "brokerCloudInitHash": "newcloudinit1",
    }
    tools = stub_tools(tmp_path / "bin", outputs, mosquitto_broker.ca_file)
    params = json.loads((REPO / "infra" / "main.parameters.json").read_text())
    params["parameters"]["adminSourceCidr"] = {"value": "198.51.100.23/32"}
    params["parameters"]["alertEmail"] = {"value": "oncall@acme.test"}
    (tmp_path / "params.json").write_text(json.dumps(params))
    ca_copy = tmp_path / "certs" / "broker-ca.crt"
    command = [
        sys.executable,
        str(REPO / "scripts" / "deploy"),
        "-g",
        "rg-test",
        "-p",
        str(tmp_path / "params.json"),
        "--ca-file",
        str(ca_copy),
        "--skip-publish",
        "--skip-smoke",
    ]
    full_env = {"PATH": f"{tools}:/usr/bin:/bin", "HOME": str(tmp_path), **env}
    settings = settings_from(
        {
            **env,
            "MQTT_HOST": mosquitto_broker.host,
            "MQTT_PORT": str(mosquitto_broker.port),
            "MQTT_CA_FILE": str(mosquitto_broker.ca_file),
        }
    )
    try:
        # WHEN deploy runs
        first = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=300)
        # THEN every step ran: the CA is where the app package takes it from, the migrations are applied, the app
        # roles log in with the URLs' passwords, and the drain's persistent session exists on the broker
        assert first.returncode == 0, first.stdout + first.stderr
        assert ca_copy.read_bytes() == mosquitto_broker.ca_file.read_bytes()
        with psycopg.connect(env["ADMIN_DATABASE_URL"]) as conn:
            applied = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        assert applied and applied[0].startswith("0001")
        for url in (env["DATABASE_URL"], env["INGEST_DATABASE_URL"], env["MAINTENANCE_DATABASE_URL"]):
            psycopg.connect(url).close()
        assert session_present(mosquitto_broker, ingest.username, ingest.password)
        calls = (tools / "calls.log").read_text()
        assert "az deployment group create --resource-group rg-test" in calls
        # a new group: the template creates the broker VM
        assert "broker VM: none yet" in first.stdout
        assert "--parameters brokerVmExists=false" in calls
        assert "cloud-init is not reapplied" not in first.stdout
        assert "cloud-init status --wait" in calls
        assert "func " not in calls
        # AND no secret reached the output or the tools' command lines
        for name in ("MQTT_INGEST_PASSWORD", "MQTT_PROVISIONER_PASSWORD", "MQTT_COMMANDER_PASSWORD", "AUTH_JWT_SECRET"):
            assert env[name] not in first.stdout + first.stderr + calls, name
        assert role_passwords["mqtt_saas_app"] not in first.stdout + calls

        # WHEN it runs again, after the drain has run once, over the VM the first run created (since then the
        # repository's cloud-init changed: the VM's tag holds another hash than the template's output)
        with psycopg.connect(env["ADMIN_DATABASE_URL"], autocommit=True) as conn:
            conn.execute("INSERT INTO ingest_runs (status, finished_at) VALUES ('ok', now())")
        (tools / "vms.json").write_text(
            json.dumps(
                [
                    {
                        "name": "vm-mqtt-saas-abcdefgh23456",
                        "vmSize": "Standard_B1s",
                        "tags": {
                            "mqtt-saas-cloud-init": "oldcloudinit1",
                            "mqtt-saas-broker-certificate": "generated-ca",
                        },
                    }
                ]
            )
        )
        (tools / "calls.log").write_text("")
        second = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=300)
        # THEN it succeeds, applying nothing new and leaving the drain's session alone (connecting with the drain's
        # client id would kick a run in progress)
        assert second.returncode == 0, second.stdout + second.stderr
        # AND the template leaves the VM out, and deploy says so, that the VM's cloud-init differs, and how to roll it
        calls = (tools / "calls.log").read_text()
        assert "--parameters brokerVmExists=true" in calls
        assert "broker VM: vm-mqtt-saas-abcdefgh23456 exists (brokerVmExists=true)" in second.stdout
        assert (
            "broker VM exists: its cloud-init is not reapplied; to roll broker changes use docs/runbook.md 6.8"
            in second.stdout
        )
        assert "its cloud-init (oldcloudinit1) differs from the repository's (newcloudinit1)" in second.stdout
        assert (
            "az vm update -g rg-test -n vm-mqtt-saas-abcdefgh23456 --set tags.mqtt-saas-cloud-init=newcloudinit1"
            in second.stdout
        )
        assert "applied: nothing pending" in second.stdout
        assert "the drain has run" in second.stdout
        assert "deployed" in second.stdout.splitlines()[-1]
    finally:
        # The real drain client id would otherwise queue every later test's messages on the shared broker.
        drop_session(settings)
