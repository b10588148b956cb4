#!/usr/bin/env python3
"""Benchmarks commands to devices: time per command through the API, and a kept broker connection against a
connection per command.

    .venv/bin/python scripts/bench/commands.py [--commands 200]

Starts a private PostgreSQL, Mosquitto (TLS + dynamic security) and Azurite in a temporary folder, provisions one
device and subscribes as that device to its command topic (every command must arrive), then times:
  publish kept     the commander credential's one connection (shared.devices.commands.CommanderConnection), one QoS 1
                   publish per command, each waiting for its PUBACK;
  publish per-cmd  a new TLS connection per command: connect, publish, PUBACK, disconnect;
  api kept         POST /api/devices/{id}/commands through the registered `api` function as the host calls it
                   (record + audit, publish, outcome recorded), on the process's kept connection (what ships);
  api per-cmd      the same with the publish step opening a connection per command.
The last line is machine-readable:
commands_bench api_median_ms=... api_p90_ms=... api_per_cmd_median_ms=... publish_kept_median_ms=...
    publish_per_cmd_median_ms=... delivered=...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import azure.functions as func  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from localstack import LocalStack  # noqa: E402


def timed(count: int, action: Callable[[int], None]) -> list[float]:
    times = []
    for i in range(count):
        started = time.perf_counter()
        action(i)
        times.append((time.perf_counter() - started) * 1000)
    return times


def summary(name: str, times: list[float]) -> str:
    p90 = statistics.quantiles(times, n=10)[-1] if len(times) >= 2 else times[0]
    return f"{name:<16} median {statistics.median(times):6.2f} ms   p90 {p90:6.2f} ms   ({len(times)} commands)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=200)
    args = parser.parse_args()
    n = args.commands
    with tempfile.TemporaryDirectory(prefix="bench-commands-") as tmp, LocalStack(tmp) as stack:
        broker = stack.mosquitto
        env = stack.create_app_database("bench") | {
            "AUTH_JWT_SECRET": uuid.uuid4().hex * 2,
            "MQTT_COMMANDER_USERNAME": broker.commander.username,
            "MQTT_COMMANDER_PASSWORD": broker.commander.password,
        }
        os.environ.update(env)
        from function_app import app
        from shared.accounts.auth import open_session
        from shared.accounts.passwords import hash_password
        from shared.broker.contract import command_topic
        from shared.broker.dynsec import DynsecClient
        from shared.core.db import get_pool, tenant_transaction
        from shared.core.settings import get_settings
        from shared.devices import commands
        from tests.support.registry import create_tenant, provision_device

        settings = get_settings()
        api = next(f for f in app.get_functions() if f.get_function_name() == "api").get_user_function()
        pool = get_pool()
        pool.wait(30)
        tenant = create_tenant(pool, "bench", "Bench Works", "industrial")
        with DynsecClient(
            settings.mqtt_host,
            settings.mqtt_port,
            settings.mqtt_ca_file,
            settings.mqtt_provisioner_username,
            settings.mqtt_provisioner_password,
        ) as dynsec:
            credential = provision_device(pool, dynsec, tenant, "press-01")
        with tenant_transaction(pool, str(tenant["id"])) as conn:
            user = conn.execute(
                "INSERT INTO users (tenant_id, email, role, password_hash) "
                "VALUES (%s, 'staff@bench.example', 'staff', %s) RETURNING id",
                (tenant["id"], hash_password(uuid.uuid4().hex)),
            ).fetchone()
            device = conn.execute("SELECT id FROM devices WHERE name = 'press-01'").fetchone()
        assert user is not None and device is not None
        token = open_session(pool, settings, user["id"], tenant["id"]).access_token
        topic = command_topic("bench", "press-01")

        # The device, subscribed to its commands: each phase's commands must all arrive.
        received: list[bytes] = []
        subscribed = threading.Event()
        listener = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=credential.client_id, protocol=mqtt.MQTTv5
        )
        listener.username_pw_set(credential.username, credential.password)
        listener.tls_set(ca_certs=settings.mqtt_ca_file, cert_reqs=ssl.CERT_REQUIRED)
        listener.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        listener.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
        listener.on_message = lambda c, u, message: received.append(message.payload)
        listener.connect(settings.mqtt_host, settings.mqtt_port, keepalive=30)
        listener.loop_start()
        assert subscribed.wait(10), "the device could not subscribe"

        def new_connection() -> commands.CommanderConnection:
            return commands.CommanderConnection(
                settings.mqtt_host,
                settings.mqtt_port,
                settings.mqtt_ca_file,
                settings.mqtt_commander_username,
                settings.mqtt_commander_password,
                settings.mqtt_command_timeout_s,
            )

        payload, properties = commands.command_message(
            {"id": uuid.uuid4(), "name": "set_point", "args": {"value": 1}, "created_at": _now()},
            "bench",
            "press-01",
            3600,
        )

        def wait_delivered(expected: int) -> None:
            deadline = time.monotonic() + 30
            while len(received) < expected and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(received) == expected, f"{expected - len(received)} commands did not reach the device"

        kept = new_connection()
        kept.connect()
        kept.publish(topic, payload, properties)  # warm-up
        publish_kept = timed(n, lambda i: kept.publish(topic, payload, properties))
        kept.close()
        wait_delivered(n + 1)

        def per_command(i: int) -> None:
            connection = new_connection()
            connection.connect()
            try:
                connection.publish(topic, payload, properties)
            finally:
                connection.close()

        publish_per_cmd = timed(n, per_command)
        wait_delivered(2 * n + 1)

        def post(i: int) -> None:
            body = json.dumps({"name": "set_point", "args": {"value": i}}).encode()
            path = f"/api/devices/{device['id']}/commands"
            request = func.HttpRequest(
                "POST",
                f"http://localhost{path}",
                body=body,
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                route_params={"route": path.removeprefix("/api/")},
            )
            response = asyncio.run(api(request, None))
            assert response.status_code == 202, response.get_body()

        post(-1)  # warm-up: the app's first request, the pool, the kept connection
        api_kept = timed(n, post)
        wait_delivered(3 * n + 2)

        def publish_per_command(settings: Any, topic: str, payload: bytes, properties: Any) -> None:
            connection = new_connection()
            connection.connect()
            try:
                connection.publish(topic, payload, properties)
            finally:
                connection.close()

        commands.close_commander_connection()
        commands._publish = publish_per_command  # the alternative design, for the comparison only
        api_per_cmd = timed(n, post)
        wait_delivered(4 * n + 2)
        listener.disconnect()
        listener.loop_stop()
        pool.close()
    for name, times in (
        ("publish kept", publish_kept),
        ("publish per-cmd", publish_per_cmd),
        ("api kept", api_kept),
        ("api per-cmd", api_per_cmd),
    ):
        print(summary(name, times))
    api_p90 = statistics.quantiles(api_kept, n=10)[-1]
    print(
        f"commands_bench api_median_ms={statistics.median(api_kept):.2f} api_p90_ms={api_p90:.2f} "
        f"api_per_cmd_median_ms={statistics.median(api_per_cmd):.2f} "
        f"publish_kept_median_ms={statistics.median(publish_kept):.2f} "
        f"publish_per_cmd_median_ms={statistics.median(publish_per_cmd):.2f} delivered={len(received)}"
    )


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


if __name__ == "__main__":
    main()
