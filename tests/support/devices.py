"""Factories for tests: tenants and devices (row + broker credential), a device that publishes
over TLS and waits for every PUBACK, and a way to run the registered mqtt_ingest function."""

from __future__ import annotations

import functools
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from shared.broker.dynsec import DynsecClient
from shared.ingest.drain import prepare_session
from tests.support.registry import DeviceCredential, create_tenant, provision_device


def unique_slug(prefix: str = "acme") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def provisioner(settings) -> DynsecClient:
    return DynsecClient(
        settings.mqtt_host,
        settings.mqtt_port,
        settings.mqtt_ca_file,
        settings.mqtt_provisioner_username,
        settings.mqtt_provisioner_password,
    )


def new_tenant_with_devices(pool, settings, names: Iterable[str], plan: str = "starter"):
    tenant = create_tenant(pool, unique_slug(), "Acme Test Works", plan)
    with provisioner(settings) as dynsec:
        credentials = {name: provision_device(pool, dynsec, tenant, name) for name in names}
    return tenant, credentials


class Device:
    """A device on MQTT v5 over TLS (verifying the broker) with its own credential."""

    def __init__(self, settings, credential: DeviceCredential, client_id: str | None = None) -> None:
        self.credential = credential
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or credential.client_id,
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(credential.username, credential.password)
        self.client.tls_set(ca_certs=settings.mqtt_ca_file, cert_reqs=ssl.CERT_REQUIRED)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self._acked: dict[int, int] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.connect_reason = None
        self.client.on_publish = self._on_publish
        self.client.on_connect = self._on_connect
        self.client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("no CONNACK")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connect_reason = reason_code
        self._connected.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            self._acked[mid] = reason_code.value

    @property
    def refused(self) -> bool:
        return self.connect_reason is not None and self.connect_reason.is_failure

    def publish(self, suffix: str, payload: bytes | str | dict | list, topic: str | None = None) -> int:
        """Publishes QoS 1 under the device's prefix (or to an explicit topic); returns the mid."""
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        info = self.client.publish(topic or f"{self.credential.topic_prefix}/{suffix}", payload, qos=1)
        return info.mid

    def wait_acked(self, mids: Iterable[int], timeout: float = 30.0) -> dict[int, int]:
        """Waits for every PUBACK; returns mid -> reason code (0 = accepted, 135 = not authorized)."""
        mids = list(mids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(m in self._acked for m in mids):
                    return {m: self._acked[m] for m in mids}
            time.sleep(0.01)
        raise TimeoutError(f"{sum(m not in self._acked for m in mids)} of {len(mids)} publishes were not acknowledged")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def prime_drain_session(settings) -> None:
    """Creates the drain's session as a deployment would, so messages published before the
    test's first drain run are queued for it."""
    prepare_session(settings)


@functools.cache
def registered_functions() -> dict:
    """The app's registered functions by name, as the host indexes them (read once: in
    azure-functions 1.26 a second get_functions() call on one app reports duplicate names)."""
    from function_app import app

    return {f.get_function_name(): f for f in app.get_functions()}


def run_mqtt_ingest() -> None:
    """Runs the registered timer function exactly as the host would call it."""
    import azure.functions as func

    registered_functions()["mqtt_ingest"].get_user_function()(func.timer.TimerRequest(past_due=False))
