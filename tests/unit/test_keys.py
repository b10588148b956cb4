"""Derived keys: one per purpose, and the broker outbox still reads what the previous release queued."""

import base64
import hashlib

from cryptography.fernet import Fernet

from shared.broker.credential_sync import decrypt_password, encrypt_password
from shared.core.keys import derived_fernet
from shared.core.settings import settings_from


def test_each_purpose_gets_its_own_key():
    token = derived_fernet("s" * 40, "purpose a").encrypt(b"x")
    assert derived_fernet("s" * 40, "purpose a").decrypt(token) == b"x"
    assert derived_fernet("s" * 40, "purpose b")._signing_key != derived_fernet("s" * 40, "purpose a")._signing_key


def _settings(provisioner_password: str):
    return settings_from(
        {
            "DATABASE_URL": "postgresql://unused",
            "INGEST_DATABASE_URL": "postgresql://unused",
            "MQTT_PROVISIONER_PASSWORD": provisioner_password,
        }
    )


def test_outbox_reads_a_password_queued_by_the_previous_release():
    settings = _settings("provisioner-secret")
    key = hashlib.sha256(b"mqtt-saas broker_outbox v1\x00provisioner-secret").digest()
    queued_before = Fernet(base64.urlsafe_b64encode(key)).encrypt(b"device-password").decode()
    assert decrypt_password(settings, queued_before) == "device-password"
    assert decrypt_password(settings, encrypt_password(settings, "another")) == "another"
    assert decrypt_password(_settings("rotated"), queued_before) is None
