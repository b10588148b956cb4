"""infra/generated/dynsec-bootstrap.sh, the VM's first-boot setup of dynamic security, run against a real Mosquitto
that starts as the VM's does: the contract's mosquitto.conf and a dynsec file holding only the admin client."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from infra.render_broker_conf import GENERATED_DYNSEC
from scripts.localstack import MosquittoBroker
from scripts.localstack.mosquitto import dynsec_plugin_path
from scripts.localstack.process import LOCALHOST, free_port
from shared.broker.contract import (
    COMMANDER_ROLE,
    COMMANDER_USERNAME,
    DEFAULT_ACL_ACCESS,
    INGEST_CLIENT_ID,
    INGEST_ROLE,
    INGEST_USERNAME,
    PROVISIONER_ROLE,
    PROVISIONER_USERNAME,
    commander_acls,
    ingest_acls,
    provisioner_acls,
    render_mosquitto_conf,
)
from shared.broker.dynsec import DynsecClient
from shared.core.exceptions import DynsecError


class FreshBroker:
    def __init__(self, base: Path, certificates_from: MosquittoBroker) -> None:
        self.base = base
        for name in ("ca.crt", "server.crt", "server.key"):
            shutil.copyfile(certificates_from.base_dir / name, base / name)
        self.ca_file = base / "ca.crt"
        self.admin_password = secrets.token_hex(16)
        subprocess.run(
            ["mosquitto_ctrl", "dynsec", "init", str(base / "dynsec.json"), "admin", self.admin_password],
            check=True,
            capture_output=True,
        )
        self.port = free_port()
        conf = render_mosquitto_conf(
            listener_host=LOCALHOST,
            listener_port=self.port,
            certfile=str(base / "server.crt"),
            keyfile=str(base / "server.key"),
            plugin=str(dynsec_plugin_path()),
            dynsec_file=str(base / "dynsec.json"),
            persistence_dir=str(base),
            log_dest=f"file {base / 'mosquitto.log'}",
        )
        # Only as root: stay root rather than drop to `mosquitto`, which cannot read this temporary folder.
        (base / "mosquitto.conf").write_text(conf + "user root\n")
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(base / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((LOCALHOST, self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    log = (base / "mosquitto.log").read_text() if (base / "mosquitto.log").exists() else ""
                    raise RuntimeError(f"fresh mosquitto did not start: {log}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def bootstrap(
        self, ingest_password: str, provisioner_password: str, commander_password: str | None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "MQTT_CTRL_HOST": LOCALHOST,
            "MQTT_CTRL_PORT": str(self.port),
            "MQTT_CTRL_CAFILE": str(self.ca_file),
            "MQTT_ADMIN_PASSWORD": self.admin_password,
            "MQTT_INGEST_PASSWORD": ingest_password,
            "MQTT_PROVISIONER_PASSWORD": provisioner_password,
        }
        env.pop("MQTT_COMMANDER_PASSWORD", None)
        if commander_password is not None:
            env["MQTT_COMMANDER_PASSWORD"] = commander_password
        return subprocess.run(["bash", str(GENERATED_DYNSEC)], env=env, capture_output=True, text=True, timeout=120)

    def dynsec(self) -> DynsecClient:
        return DynsecClient(LOCALHOST, self.port, str(self.ca_file), "admin", self.admin_password)


@pytest.fixture
def fresh_broker(mosquitto_broker: MosquittoBroker, tmp_path: Path) -> Iterator[FreshBroker]:
    broker = FreshBroker(tmp_path, mosquitto_broker)
    try:
        yield broker
    finally:
        broker.stop()


def connects(broker: FreshBroker, username: str, password: str, client_id: str) -> bool:
    """True when the broker accepts the login (CONNACK reason code 0)."""
    answered = threading.Event()
    accepted: list[bool] = []

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason: object, properties: object) -> None:
        accepted.append(not getattr(reason, "is_failure", True))
        answered.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.tls_set(ca_certs=str(broker.ca_file))
    client.username_pw_set(username, password)
    client.connect(LOCALHOST, broker.port)
    client.loop_start()
    try:
        assert answered.wait(10), "no CONNACK"
        return accepted == [True]
    finally:
        client.disconnect()
        client.loop_stop()


def canonical(acls: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return sorted((a["acltype"], a["topic"], a["allow"], a.get("priority", 0)) for a in acls)


def test_bootstrap_gives_a_fresh_broker_the_contracts_roles_clients_and_default_access(
    fresh_broker: FreshBroker,
) -> None:
    ingest_password, provisioner_password, commander_password = (secrets.token_hex(16) for _ in range(3))
    # WHEN the VM's bootstrap runs, twice (cloud-init may run it again on a re-provisioned VM), and between the
    # two runs the ingest role gained a right the contract does not give (an older contract, or a hand edit)
    for run in range(2):
        result = fresh_broker.bootstrap(ingest_password, provisioner_password, commander_password)
        assert result.returncode == 0, result.stdout + result.stderr
        if run == 0:
            with fresh_broker.dynsec() as dynsec:
                dynsec.execute(
                    [
                        {
                            "command": "addRoleACL",
                            "rolename": INGEST_ROLE,
                            "acltype": "subscribePattern",
                            "topic": "#",
                            "allow": True,
                            "priority": 0,
                        }
                    ]
                )
    # THEN dynamic security is exactly what the contract (and the local stack) says
    with fresh_broker.dynsec() as dynsec:
        assert dynsec.get_default_acl_access() == DEFAULT_ACL_ACCESS
        assert canonical(dynsec.get_role_acls(INGEST_ROLE)) == canonical([a.as_command() for a in ingest_acls()])
        assert canonical(dynsec.get_role_acls(PROVISIONER_ROLE)) == canonical(
            [a.as_command() for a in provisioner_acls()]
        )
        ingest = dynsec.get_client(INGEST_USERNAME)
        assert ingest["clientid"] == INGEST_CLIENT_ID
        assert [r["rolename"] for r in ingest["roles"]] == [INGEST_ROLE]
        assert [r["rolename"] for r in dynsec.get_client(PROVISIONER_USERNAME)["roles"]] == [PROVISIONER_ROLE]
        assert canonical(dynsec.get_role_acls(COMMANDER_ROLE)) == canonical([a.as_command() for a in commander_acls()])
        commander = dynsec.get_client(COMMANDER_USERNAME)
        assert [r["rolename"] for r in commander["roles"]] == [COMMANDER_ROLE]
        assert not commander.get("clientid")  # every app instance connects with a client id of its own
    # AND the service clients log in with the passwords from Key Vault; the drain only with its client id
    assert connects(fresh_broker, INGEST_USERNAME, ingest_password, INGEST_CLIENT_ID)
    assert not connects(fresh_broker, INGEST_USERNAME, ingest_password, "someone-else")
    assert connects(fresh_broker, PROVISIONER_USERNAME, provisioner_password, "provisioner-1")
    assert connects(fresh_broker, COMMANDER_USERNAME, commander_password, "mqtt-saas-commander-a1")
    assert connects(fresh_broker, COMMANDER_USERNAME, commander_password, "mqtt-saas-commander-b2")


def test_bootstrap_without_a_commander_password_still_sets_up_the_rest(fresh_broker: FreshBroker) -> None:
    # GIVEN a VM whose cloud-init passes no commander password (it predates the commander client)
    ingest_password, provisioner_password = secrets.token_hex(16), secrets.token_hex(16)
    # WHEN the bootstrap runs
    result = fresh_broker.bootstrap(ingest_password, provisioner_password, None)
    # THEN it succeeds, the commander's role has its ACLs, and there is no commander client to log in as
    assert result.returncode == 0, result.stdout + result.stderr
    with fresh_broker.dynsec() as dynsec:
        assert canonical(dynsec.get_role_acls(COMMANDER_ROLE)) == canonical([a.as_command() for a in commander_acls()])
        with pytest.raises(DynsecError, match="Client not found"):
            dynsec.get_client(COMMANDER_USERNAME)
    assert connects(fresh_broker, INGEST_USERNAME, ingest_password, INGEST_CLIENT_ID)
