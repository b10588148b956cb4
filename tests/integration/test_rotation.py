"""Rotation, against the real services: the broker's server certificate (scripts/rotate_broker_cert, generated-CA path)
on a Mosquitto of its own; a broker service password over dynsec and a database role password
(scripts/rotate_secrets.py) on the test broker and PostgreSQL; and the order of the Azure steps."""

from __future__ import annotations

import grp
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from scripts.localstack import MosquittoBroker
from scripts.rotate_secrets import set_broker_password, set_role_password, url_password, with_password
from tests.support.waiting import wait_for

# Each test starts its own server(s), not the harness's.
pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]


def served_certificate(broker: MosquittoBroker) -> x509.Certificate:
    """The certificate a new TLS handshake gets, verified against the broker's CA."""
    assert broker.port is not None
    with (
        socket.create_connection((broker.host, broker.port), timeout=5) as raw,
        broker.ssl_context().wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def connected_client(
    broker: MosquittoBroker, username: str, password: str, client_id: str | None = None
) -> tuple[mqtt.Client, dict[str, object]]:
    state: dict[str, object] = {"connected": threading.Event(), "disconnected": threading.Event(), "rc": None}
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id or username, protocol=mqtt.MQTTv5
    )
    client.username_pw_set(username, password)
    client.tls_set(ca_certs=str(broker.ca_file))

    def on_connect(c, u, flags, rc, props):  # noqa: ANN001
        state["rc"] = rc
        state["connected"].set()  # type: ignore[attr-defined]

    def on_disconnect(c, u, flags, rc, props):  # noqa: ANN001
        state["disconnected"].set()  # type: ignore[attr-defined]

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert state["connected"].wait(15)  # type: ignore[attr-defined]
    return client, state


def connack(broker: MosquittoBroker, username: str, password: str, client_id: str) -> int:
    client, state = connected_client(broker, username, password, client_id)
    client.disconnect()
    client.loop_stop()
    return int(state["rc"].value)  # type: ignore[union-attr]


@pytest.fixture
def own_broker(tmp_path: Path):
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(params=["p256-local", "rsa2048-vm"])
def broker_of_each_key_type(request, tmp_path: Path):
    """The local stack's certificates (P-256), and the VM's (RSA 3072 CA, RSA 2048 server key, as cloud-init)."""
    folder = tmp_path / "mosquitto"
    if request.param == "rsa2048-vm":
        from scripts.bench.broker import vm_like_certificates

        vm_like_certificates(folder)
    broker = MosquittoBroker(folder)
    broker.start()
    yield broker
    broker.stop()


def test_rotating_the_server_certificate_keeps_the_ca_and_connected_clients(
    broker_of_each_key_type: MosquittoBroker,
) -> None:
    own_broker = broker_of_each_key_type
    # GIVEN a broker serving a certificate of its local CA, and a client connected over TLS
    before = served_certificate(own_broker)
    client, state = connected_client(own_broker, own_broker.admin.username, own_broker.admin.password)
    folder = own_broker.base_dir
    env = {
        **os.environ,
        "CA_DIR": str(folder),
        "CERT_DIR": str(folder),
        "CERT_GROUP": "mosquitto" if os.geteuid() == 0 else grp.getgrgid(os.getgid()).gr_name,
        "RELOAD": f"kill -HUP {own_broker.pid}",
    }
    # WHEN the generated-CA rotation runs
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "rotate_broker_cert"), "generated"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # THEN new handshakes get a new certificate (new serial, new key) that the same CA verifies, with the same names
    after = wait_for(
        lambda: (c := served_certificate(own_broker)).serial_number != before.serial_number and c,
        timeout=15,
        what="the broker to serve the new certificate",
    )
    assert after.public_key().public_bytes(*_spki()) != before.public_key().public_bytes(*_spki())
    san = after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san == before.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert after.subject == before.subject
    assert type(after.public_key()) is type(before.public_key())
    # AND the client connected before the rotation is still connected and can still publish
    assert not state["disconnected"].is_set()  # type: ignore[attr-defined]
    info = client.publish("$CONTROL/dynamic-security/v1", '{"commands":[{"command":"listClients"}]}', qos=1)
    info.wait_for_publish(10)
    assert info.is_published()
    client.disconnect()
    client.loop_stop()
    # AND the previous pair is kept for a rollback
    assert (folder / "server.crt.prev").exists() and (folder / "server.key.prev").exists()


def test_rotate_broker_cert_refuses_a_key_that_does_not_match(tmp_path: Path, own_broker: MosquittoBroker) -> None:
    # GIVEN a "renewed" Let's Encrypt lineage whose private key belongs to another certificate
    lineage = tmp_path / "lineage"
    lineage.mkdir()
    (lineage / "fullchain.pem").write_bytes((own_broker.base_dir / "server.crt").read_bytes())
    subprocess.run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-out",
            str(lineage / "privkey.pem"),
        ],
        check=True,
        capture_output=True,
    )
    before = (own_broker.base_dir / "server.crt").read_bytes()
    env = {
        **os.environ,
        "CERT_DIR": str(own_broker.base_dir),
        "RENEWED_LINEAGE": str(lineage),
        "RELOAD": f"kill -HUP {own_broker.pid}",
    }
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "rotate_broker_cert"), "certbot-hook"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # THEN nothing is installed and the broker keeps serving
    assert done.returncode == 2
    assert "does not match" in done.stderr
    assert (own_broker.base_dir / "server.crt").read_bytes() == before
    served_certificate(own_broker)


def test_a_certificate_of_another_key_type_restarts_the_broker_instead_of_reloading(
    tmp_path: Path, own_broker: MosquittoBroker
) -> None:
    # GIVEN a broker serving an EC certificate and a renewed lineage holding an RSA pair (e.g. the move from the
    # generated CA to Let's Encrypt, or back)
    lineage = tmp_path / "lineage"
    lineage.mkdir()
    folder = own_broker.base_dir
    (tmp_path / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    subprocess.run(
        [
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(lineage / "privkey.pem"),
            "-out",
            str(tmp_path / "csr"),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(tmp_path / "csr"),
            "-CA",
            str(folder / "ca.crt"),
            "-CAkey",
            str(folder / "ca.key"),
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            str(tmp_path / "ext"),
            "-out",
            str(lineage / "fullchain.pem"),
        ],
        check=True,
        capture_output=True,
    )
    marker = tmp_path / "restarted"
    env = {
        **os.environ,
        "CERT_DIR": str(folder),
        "RENEWED_LINEAGE": str(lineage),
        "CERT_GROUP": "mosquitto" if os.geteuid() == 0 else grp.getgrgid(os.getgid()).gr_name,
        "RELOAD": "false",
        "RESTART": f"touch {marker}",
    }
    # WHEN certbot's deploy hook runs
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "rotate_broker_cert"), "certbot-hook"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # THEN it installs the pair and restarts (a reload would keep serving the old EC certificate beside it)
    assert done.returncode == 0, done.stderr
    assert "restarting Mosquitto instead of reloading it" in done.stderr
    assert marker.exists()
    assert (folder / "server.crt").read_bytes() == (lineage / "fullchain.pem").read_bytes()


def _spki():
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo


def test_rotating_a_broker_service_password_refuses_the_old_one(mosquitto_broker, ingest_identity) -> None:
    # GIVEN a client of the drain's role, connected with its current password
    username, old = ingest_identity
    client, state = connected_client(mosquitto_broker, username, old)
    new = "rotated-" + uuid.uuid4().hex
    # WHEN the provisioner sets a new password over dynsec, as rotate_secrets.py does
    set_broker_password(
        mosquitto_broker.host,
        mosquitto_broker.port,
        str(mosquitto_broker.ca_file),
        mosquitto_broker.provisioner.username,
        mosquitto_broker.provisioner.password,
        username,
        new,
    )
    # THEN the broker disconnects the live session (a drain run then ends as connection_lost and the next run,
    # with the app's new password, continues), the new password is accepted and the old one refused
    assert state["disconnected"].wait(15)  # type: ignore[attr-defined]
    client.loop_stop()
    assert connack(mosquitto_broker, username, new, username) == 0
    assert connack(mosquitto_broker, username, old, username) == 135  # not authorized


def test_rotating_a_database_role_password(postgres_server, database) -> None:
    # GIVEN a login role with a password, and a connection it opened before the rotation
    role = f"rot_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'old-password-1234'")
    old_url = f"postgresql://{role}:old-password-1234@127.0.0.1:{postgres_server.port}/{database.name}"
    new_url = with_password(old_url, "new-password-5678")
    assert url_password(new_url) == "new-password-5678"
    try:
        with psycopg.connect(old_url) as before:
            # WHEN the password is rotated as the database owner
            set_role_password(postgres_server.superuser_dsn(), role, url_password(new_url))
            # THEN the open connection keeps working (the app's pool does not fail mid-rotation) ...
            assert before.execute("SELECT 1").fetchone() == (1,)
        # ... a new connection needs the new password, and the old one is refused
        with psycopg.connect(new_url) as after:
            assert after.execute("SELECT current_user").fetchone() == (role,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(old_url).close()
        # AND setting the same value again (deploy does on every run) changes nothing
        set_role_password(postgres_server.superuser_dsn(), role, url_password(new_url))
        psycopg.connect(new_url).close()
    finally:
        with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_rotate_secrets_orders_key_vault_then_target_then_app(tmp_path: Path) -> None:
    # The dry run prints the plan: Key Vault first (the app does not re-read it yet), then the broker, then the app.
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "rotate_secrets.py"),
            "broker-client",
            "mqtt-saas-ingest",
            "-g",
            "rg",
            "--app",
            "fa",
            "--vault",
            "kv",
            "--broker-host",
            "broker.example.net",
            "--dry-run",
        ],
        env={"PATH": str(tmp_path), "HOME": str(tmp_path), "MQTT_PROVISIONER_PASSWORD": "x" * 20},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    vault = out.index("az keyvault secret set --vault-name kv --name mqtt-ingest-password")
    broker = out.index("dynsec setClientPassword mqtt-saas-ingest")
    app = out.index("az functionapp restart -g rg -n fa")
    assert vault < broker < app
    assert "x" * 20 not in out
