#!/usr/bin/env python3
"""Drain throughput with each built-in profile against the native format, in the same run.

    .venv/bin/python scripts/bench/decode.py [--messages 20000] [--devices 4]

Starts a private PostgreSQL and Mosquitto in a temporary folder. For each profile in turn it queues a
backlog of --messages messages (QoS 1, round-robin over its own --devices devices, each given the
profile and its broker role) on the drain's persistent session, then times one drain_once() taking
it (from the start of the run to the last committed batch, as scripts/bench/ingest.py does). Every
message carries 4 readings, so the phases differ only in decoding:
  native         {"ts", "seq", "metrics": {4}} on .../telemetry (pydantic-core validation)
  tasmota        tele/SENSOR of a BME280 (Temperature, Humidity, DewPoint, Pressure), "Time" with offset
  shelly         events/rpc NotifyStatus of switch:0 (apower, voltage, current, aenergy.total)
  homeassistant  one JSON state topic with 4 discovered entities ({{ value_json.x }}, as Zigbee2MQTT does)
  sparkplug      NDATA with 4 metrics by alias after an NBIRTH (protobuf)
lost and duplicates count every phase's readings against what was published. The last line is
machine-readable:
decode_bench native_msgs_per_s=... tasmota_msgs_per_s=... shelly_msgs_per_s=... homeassistant_msgs_per_s=...
    sparkplug_msgs_per_s=... lost=... duplicates=...
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from localstack import LocalStack  # noqa: E402
from shared.broker.contract import BUILTIN_PROFILE_TOPICS, device_acls, device_role  # noqa: E402
from shared.broker.dynsec import DynsecClient  # noqa: E402
from shared.core.db import create_pool  # noqa: E402
from shared.core.settings import settings_from  # noqa: E402
from shared.ingest.drain import drain_once, prepare_session  # noqa: E402
from shared.ingest.sparkplug.sparkplug_b_pb2 import Payload  # noqa: E402
from tests.support.registry import create_tenant, provision_device  # noqa: E402

READINGS = 4
PHASES = {
    "native": "native",
    "tasmota": "tasmota",
    "shelly": "shelly-gen2",
    "homeassistant": "homeassistant-discovery",
    "sparkplug": "sparkplug-b",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=4)
    args = parser.parse_args()
    figures: dict[str, float] = {}
    lost = duplicates = 0
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp, LocalStack(tmp) as stack:
        env = stack.create_app_database("bench") | {
            "INGEST_BATCH_SIZE": "5000",
            "INGEST_IDLE_EXIT_S": "1.0",
            "INGEST_TIME_BUDGET_S": "3600",
        }
        settings = settings_from(env)
        pool = create_pool(settings)
        tenant = create_tenant(pool, "bench", "Benchmark Works", "industrial")
        dynsec = DynsecClient(
            settings.mqtt_host,
            settings.mqtt_port,
            settings.mqtt_ca_file,
            settings.mqtt_provisioner_username,
            settings.mqtt_provisioner_password,
        )
        with dynsec:
            devices = {
                phase: [provision_device(pool, dynsec, tenant, f"{phase}-{i}") for i in range(args.devices)]
                for phase in PHASES
            }
            for phase, profile in PHASES.items():
                for credential in devices[phase]:
                    with psycopg.connect(stack.postgres.superuser_dsn("bench")) as conn:
                        conn.execute(
                            "UPDATE devices SET builtin_profile = %s WHERE name = %s", (profile, credential.device)
                        )
                    dynsec.put_role(
                        device_role("bench", credential.device),
                        device_acls("bench", credential.device, BUILTIN_PROFILE_TOPICS[profile]),
                    )
        pool.close()
        prepare_session(settings)
        for phase in PHASES:
            _setup(settings, phase, devices[phase])
            drain_once(settings)  # stores the births and discovery configs: not timed
            published = _publish(settings, phase, devices[phase], args.messages)
            report = drain_once(settings)
            rows, distinct = _stored(stack, [c.device for c in devices[phase]])
            figures[phase] = report.outcome.messages / report.active_s
            lost += published * READINGS - (rows - _setup_readings(phase, args.devices))
            duplicates += rows - distinct + report.outcome.duplicates
            share = figures[phase] / figures.get("native", figures[phase])
            print(
                f"{phase:13} {published:,} msgs, {report.outcome.readings:,} readings, "
                f"{figures[phase]:,.0f} msg/s ({share:.0%} of native), "
                f"dead letters {report.outcome.dead_lettered}, ended_by={report.ended_by}"
            )
    native = figures["native"]
    worst = min(figures[p] for p in PHASES if p != "native")
    print(f"slowest decoded profile: {worst / native:.0%} of native (the bar: 70%)")
    print(
        f"decode_bench native_msgs_per_s={native:.0f} tasmota_msgs_per_s={figures['tasmota']:.0f} "
        f"shelly_msgs_per_s={figures['shelly']:.0f} homeassistant_msgs_per_s={figures['homeassistant']:.0f} "
        f"sparkplug_msgs_per_s={figures['sparkplug']:.0f} lost={lost} duplicates={duplicates}"
    )


def _client(settings: Any, credential: Any) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=credential.client_id, protocol=mqtt.MQTTv5
    )
    client.username_pw_set(credential.username, credential.password)
    client.tls_set(ca_certs=settings.mqtt_ca_file, cert_reqs=ssl.CERT_REQUIRED)
    client.max_inflight_messages_set(500)
    return client


def _setup_readings(phase: str, devices: int) -> int:
    return 0 if phase != "sparkplug" else devices * READINGS  # the NBIRTH's values


def _setup(settings: Any, phase: str, credentials: list[Any]) -> None:
    """Births (Sparkplug) and discovery configs (Home Assistant) before the timed backlog."""
    messages: list[tuple[Any, str, bytes]] = []
    for credential in credentials:
        if phase == "homeassistant":
            for key in ("temperature", "humidity", "pressure", "voltage"):
                config = {
                    "stat_t": f"{credential.topic_prefix}/sensor/env/state",
                    "val_tpl": f"{{{{ value_json.{key} }}}}",
                }
                messages.append(
                    (
                        credential,
                        f"{credential.topic_prefix}/homeassistant/sensor/x/{key}/config",
                        json.dumps(config).encode(),
                    )
                )
        elif phase == "sparkplug":
            birth = Payload(timestamp=int(time.time() * 1000) - 7_200_000, seq=0)
            for alias, name in enumerate(("Oven/Temp", "Oven/Humidity", "Line/Speed", "Line/Power"), start=1):
                birth.metrics.add(name=name, alias=alias, datatype=10, double_value=0.0)
            birth.metrics.add(name="bdSeq", datatype=4, long_value=0)
            messages.append((credential, f"spBv1.0/bench/NBIRTH/{credential.device}", birth.SerializeToString()))
    _send(settings, credentials, messages)


def _payloads(phase: str, credential: Any, count: int, first: int) -> list[tuple[str, bytes]]:
    prefix = credential.topic_prefix
    base_s = time.time() - 3 * 3600
    out: list[tuple[str, bytes]] = []
    for i in range(count):
        n = first + i
        ts = base_s + n * 0.25  # four messages a second per device, hours back: within the accepted window
        value = 20 + (n % 100) / 10
        if phase == "native":
            body = {
                "ts": int(ts * 1000),
                "seq": n,
                "metrics": {"temp": value, "humidity": 40.5, "pressure": 1013.2, "voltage": 230},
            }
            out.append((f"{prefix}/telemetry", json.dumps(body).encode()))
        elif phase == "tasmota":
            # Tasmota's Time has whole seconds: one message per device-second keeps every reading its own key.
            when = datetime.fromtimestamp(base_s + n, UTC).replace(microsecond=0).isoformat()
            body = {
                "Time": when,
                "BME280": {"Temperature": value, "Humidity": 40.5, "DewPoint": 8.1, "Pressure": 1013.2},
                "PressureUnit": "hPa",
                "TempUnit": "C",
            }
            out.append((f"{prefix}/tele/SENSOR", json.dumps(body).encode()))
        elif phase == "shelly":
            params = {
                "ts": round(ts, 2),
                "switch:0": {"id": 0, "apower": value, "voltage": 230.1, "current": 0.1, "aenergy": {"total": 6.5 + n}},
            }
            body = {
                "src": "shellyplus1pm-a8032ab636ec",
                "dst": f"{prefix}/events",
                "method": "NotifyStatus",
                "params": params,
            }
            out.append((f"{prefix}/events/rpc", json.dumps(body).encode()))
        elif phase == "homeassistant":
            body = {"temperature": value, "humidity": 40.5, "pressure": 1013.2, "voltage": 230}
            out.append((f"{prefix}/sensor/env/state", json.dumps(body).encode()))
        else:
            data = Payload(timestamp=int(ts * 1000), seq=(n + 1) % 256)
            for alias, number in enumerate((value, 40.5, 1013.2, 230.0), start=1):
                data.metrics.add(alias=alias, double_value=number)
            out.append((f"spBv1.0/bench/NDATA/{credential.device}", data.SerializeToString()))
    return out


def _publish(settings: Any, phase: str, credentials: list[Any], total: int) -> int:
    per_device = total // len(credentials)
    messages = [
        (credential, topic, payload)
        for credential in credentials
        for topic, payload in _payloads(phase, credential, per_device, 0)
    ]
    _send(settings, credentials, messages)
    return len(messages)


def _send(settings: Any, credentials: list[Any], messages: list[tuple[Any, str, bytes]]) -> None:
    pending = {"n": 0}
    lock = threading.Condition()

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with lock:
            pending["n"] -= 1
            lock.notify_all()

    clients = {}
    for credential in credentials:
        client = _client(settings, credential)
        client.on_publish = on_publish
        client.connect(settings.mqtt_host, settings.mqtt_port)
        client.loop_start()
        clients[credential.device] = client
    for credential, topic, payload in messages:
        with lock:
            pending["n"] += 1
            while pending["n"] > 2000:
                lock.wait(1)
        clients[credential.device].publish(topic, payload, qos=1)
    with lock:
        deadline = time.monotonic() + 120
        while pending["n"] > 0 and time.monotonic() < deadline:
            lock.wait(1)
    for client in clients.values():
        client.disconnect()
        client.loop_stop()
    if pending["n"]:
        raise SystemExit(f"{pending['n']} publishes were not acknowledged")


def _stored(stack: Any, names: list[str]) -> tuple[int, int]:
    query = """SELECT count(*), count(DISTINCT (t.device_id, t.metric, t.ts, t.seq))
               FROM telemetry t JOIN devices d ON d.tenant_id = t.tenant_id AND d.id = t.device_id
               WHERE d.name = ANY(%s)"""
    with psycopg.connect(stack.postgres.superuser_dsn("bench")) as conn:
        row = conn.execute(query, (names,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


if __name__ == "__main__":
    main()
