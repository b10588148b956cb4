"""scripts/rotate_secrets.py verifies the broker as the app does (MQTT_CA_FILE: a file, or empty/unset for the system CA
store that trusts a Let's Encrypt broker), and stops before Key Vault changes when it cannot verify or log in to the
broker. Against the test Mosquitto; az is a stand-in that records its calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts.rotate_secrets import broker_ca_file, check_broker

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argument", "environ", "expected"),
    [
        (None, {}, None),  # unset: the system CA store
        (None, {"MQTT_CA_FILE": ""}, None),  # empty, as Bicep sets it under Let's Encrypt
        (None, {"MQTT_CA_FILE": "certs/broker-ca.crt"}, "certs/broker-ca.crt"),
        ("", {"MQTT_CA_FILE": "certs/broker-ca.crt"}, None),  # an explicit empty --ca-file wins
        ("ca.pem", {"MQTT_CA_FILE": "certs/broker-ca.crt"}, "ca.pem"),
    ],
)
def test_ca_file_follows_the_apps_rule(argument: str | None, environ: dict[str, str], expected: str | None) -> None:
    assert broker_ca_file(argument, environ) == expected


def test_the_system_ca_store_verifies_a_broker_it_trusts(mosquitto_broker, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a system CA store that trusts the test broker's issuer (as it trusts Let's Encrypt's root)
    monkeypatch.setenv("SSL_CERT_FILE", str(mosquitto_broker.ca_file))
    # WHEN the rotation's first step logs in without a CA file THEN it succeeds
    provisioner = mosquitto_broker.provisioner
    check_broker(mosquitto_broker.host, mosquitto_broker.port, None, provisioner.username, provisioner.password)


def rotate(tmp_path: Path, broker, *extra: str) -> tuple[subprocess.CompletedProcess[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "az").write_text(f'#!/bin/sh\necho "az $*" >>"{tmp_path}/calls.log"\n')
    (bin_dir / "az").chmod(0o755)
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
            broker.host,
            "--broker-port",
            str(broker.port),
            *extra,
        ],
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "MQTT_PROVISIONER_PASSWORD": broker.provisioner.password,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = tmp_path / "calls.log"
    return done, log.read_text() if log.exists() else ""


def test_a_broker_the_system_store_does_not_trust_stops_the_rotation_before_key_vault(
    tmp_path: Path, mosquitto_broker
) -> None:
    # GIVEN the test broker (its own CA, as the generated CA is) and no --ca-file, no MQTT_CA_FILE
    # WHEN a broker client's password is rotated
    done, calls = rotate(tmp_path, mosquitto_broker)
    # THEN it stops at the broker check, says how it verified and what to pass, and Key Vault is untouched
    assert done.returncode != 0
    assert "[0/4]" in done.stdout and "the system CA store" in done.stdout
    assert "not usable, verified with the system CA store" in done.stderr
    assert "--ca-file certs/broker-ca.crt" in done.stderr
    assert "keyvault" not in calls


def test_a_missing_ca_file_is_refused_before_anything(tmp_path: Path, mosquitto_broker) -> None:
    done, calls = rotate(tmp_path, mosquitto_broker, "--ca-file", str(tmp_path / "nowhere.crt"))
    assert done.returncode == 2
    assert "nowhere.crt not found" in done.stderr
    assert calls == ""


def test_rotating_the_jwt_secret_warns_that_webhook_secrets_must_be_rotated() -> None:
    # The webhook signing secrets are encrypted with a key derived from AUTH_JWT_SECRET (shared/alerts/delivery.py).
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "rotate_secrets.py"),
            "jwt",
            "-g",
            "rg",
            "--app",
            "app",
            "--vault",
            "kv",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "webhook secret becomes unreadable" in result.stderr and "rotate-secret" in result.stderr
