#!/usr/bin/env python3
"""Benchmarks the mqtt_ingest drain against its ceiling and against the naive design.

    .venv/bin/python scripts/bench_ingest.py [--messages 200000] [--naive-messages 20000]

Starts a private PostgreSQL and Mosquitto in a temporary folder, pre-queues N telemetry
messages (3 metrics each, 20 devices) on the drain's persistent session, and times, in one run:
  drain    drain_once(): COPY-batched, ack after commit, until every row is committed;
  ceiling  a bare paho-mqtt client that only acks the same backlog;
  transport the drain's own MQTT client acking the same backlog, storing nothing (the drain
           parses PUBLISH itself and acks a batch in one write, so it outruns bare paho);
  naive    the original design on a smaller backlog: one INSERT per reading from on_message,
           autocommit.
It also prints the CPU seconds the drain costs per 1,000,000 messages (the drain process plus
every PostgreSQL process). The last line is machine-readable:
ingest_bench msgs_per_s=... ceiling_msgs_per_s=... naive_msgs_per_s=... ratio=... lost=... duplicates=...
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from localstack import LocalStack, descendants, process_table  # noqa: E402
from shared.db import create_pool  # noqa: E402
from shared.dynsec import DynsecClient, generate_password  # noqa: E402
from shared.migrate import apply_migrations  # noqa: E402
from shared.mqtt_drain import drain_once, drop_session, prepare_session  # noqa: E402
from shared.registry import create_tenant, provision_device  # noqa: E402
from shared.settings import settings_from  # noqa: E402

DEVICES = 20
METRICS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--naive-messages", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, LocalStack(tmp) as stack:
        settings, creds = _prepare(stack, args.batch_size)
        ceiling = _ceiling(stack, settings, creds, args.messages)
        transport = _transport(stack, settings, creds, args.messages)
        naive = _naive(stack, settings, creds, args.naive_messages)
        drain, lost, duplicates, cpu_per_million = _drain(stack, settings, creds, args.messages)

    print(f"drain:   {args.messages} msgs, {drain:,.0f} msg/s (COPY batches of {args.batch_size}, ack after commit)")
    print(f"ceiling: {args.messages} msgs, {ceiling:,.0f} msg/s (bare paho-mqtt, acks only)")
    print(f"transport: {args.messages} msgs, {transport:,.0f} msg/s (the drain's own MQTT client, acks only, no database)")
    print(f"naive:   {args.naive_messages} msgs, {naive:,.0f} msg/s (INSERT per reading, autocommit)")
    print(f"drain/ceiling: {drain / ceiling:.0%}   drain/transport: {drain / transport:.0%}   "
          f"cpu_s_per_million_msgs: {cpu_per_million:.1f}")
    print(f"ingest_bench msgs_per_s={drain:.0f} ceiling_msgs_per_s={ceiling:.0f} naive_msgs_per_s={naive:.0f} "
          f"ratio={drain / naive:.1f} lost={lost} duplicates={duplicates}")


def _prepare(stack: LocalStack, batch_size: int):
    admin = stack.postgres.superuser_dsn()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench")
    apply_migrations(stack.postgres.superuser_dsn("bench"))
    passwords = {role: secrets.token_hex(16) for role in ("mqtt_saas_app", "mqtt_saas_ingest")}
    with psycopg.connect(admin, autocommit=True) as conn:
        for role, password in passwords.items():
            conn.execute(f"ALTER ROLE {role} LOGIN PASSWORD '{password}'")
    base = f"@{stack.postgres.host}:{stack.postgres.port}/bench"
    env = stack.environment() | {
        "DATABASE_URL": f"postgresql://mqtt_saas_app:{passwords['mqtt_saas_app']}{base}",
        "INGEST_DATABASE_URL": f"postgresql://mqtt_saas_ingest:{passwords['mqtt_saas_ingest']}{base}",
        "INGEST_BATCH_SIZE": str(batch_size),
        "INGEST_IDLE_EXIT_S": "1.0",
        "INGEST_TIME_BUDGET_S": "3600",
    }
    settings = settings_from(env)
    pool = create_pool(settings)
    tenant = create_tenant(pool, "bench", "Benchmark Works", "industrial")
    with DynsecClient(settings.mqtt_host, settings.mqtt_port, settings.mqtt_ca_file,
                      settings.mqtt_provisioner_username, settings.mqtt_provisioner_password) as dynsec:
        creds = [provision_device(pool, dynsec, tenant, f"machine-{i:02d}") for i in range(DEVICES)]
    pool.close()
    return settings, creds


def _client(settings, client_id: str, username: str, password: str, **kwargs) -> mqtt.Client:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5, **kwargs)
    client.username_pw_set(username, password)
    client.tls_set(ca_certs=settings.mqtt_ca_file, cert_reqs=ssl.CERT_REQUIRED)
    return client


def _as_client(settings, user: str, password: str):
    """The same settings, but the drain's MQTT identity replaced by another client of its role."""
    return settings.model_copy(update={"mqtt_ingest_username": user, "mqtt_ingest_password": password,
                                       "mqtt_ingest_client_id": user})


def _publish(settings, creds, count: int, first_seq: int) -> None:
    """Publishes count QoS 1 messages round-robin over the devices, in two processes that each
    own half of the devices (one client id, one connection), and waits for every PUBACK."""
    halves = [(0, count // 2, creds[: len(creds) // 2]), (count // 2, count, creds[len(creds) // 2:])]
    procs = []
    for start, end, own in halves:
        job = {"settings": {"host": settings.mqtt_host, "port": settings.mqtt_port, "ca": settings.mqtt_ca_file},
               "creds": [[c.username, c.password, c.topic_prefix] for c in own],
               "start": start, "end": end, "first_seq": first_seq}
        procs.append(subprocess.Popen([sys.executable, __file__, "--publish-worker"], stdin=subprocess.PIPE))
        procs[-1].stdin.write(json.dumps(job).encode())
        procs[-1].stdin.close()
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit("publisher failed")


def _publish_worker() -> None:
    job = json.load(sys.stdin)
    host, port, ca = job["settings"]["host"], job["settings"]["port"], job["settings"]["ca"]
    clients = []
    pending = {"n": 0}
    lock = threading.Condition()

    def on_publish(client, userdata, mid, reason_code, properties):
        with lock:
            pending["n"] -= 1
            lock.notify_all()

    for username, password, prefix in job["creds"]:
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
        client.username_pw_set(username, password)
        client.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED)
        client.max_inflight_messages_set(500)
        client.on_publish = on_publish
        client.connect(host, port)
        client.loop_start()
        clients.append((client, prefix))
    ts0 = int(time.time() * 1000) - 3_600_000
    for i in range(job["start"], job["end"]):
        client, prefix = clients[i % len(clients)]
        seq = job["first_seq"] + i
        payload = f'{{"ts":{ts0 + i},"seq":{seq},"metrics":{{"temp":{20 + (i % 100) / 10},"rpm":{1000 + i % 500},"door_open":{"true" if i % 7 == 0 else "false"}}}}}'
        with lock:
            pending["n"] += 1
            while pending["n"] > 5000:
                lock.wait(1)
        client.publish(f"{prefix}/telemetry", payload, qos=1)
    with lock:
        deadline = time.monotonic() + 120
        while pending["n"] > 0 and time.monotonic() < deadline:
            lock.wait(1)
    for client, _ in clients:
        client.disconnect()
        client.loop_stop()
    sys.exit(0 if pending["n"] == 0 else 1)


def _backlog_for(stack, settings, creds, user: str, count: int, first_seq: int) -> str:
    """A fresh client of the drain's role with its own persistent session and count messages
    queued on it; returns its password."""
    password = generate_password()
    with DynsecClient(settings.mqtt_host, settings.mqtt_port, settings.mqtt_ca_file,
                      stack.mosquitto.admin.username, stack.mosquitto.admin.password) as dynsec:
        dynsec.create_client(user, password, client_id=user, roles=["ingest"])
    prepare_session(_as_client(settings, user, password))
    _publish(settings, creds, count, first_seq=first_seq)
    return password


def _ceiling(stack, settings, creds, count: int) -> float:
    """A bare paho client on its own persistent session: receive and (auto-)ack, nothing else."""
    user = "bench-ceiling"
    password = _backlog_for(stack, settings, creds, user, count, first_seq=10_000_000)
    return _timed_receive(settings, user, password, count, lambda message: None)


def _timed_receive(settings, user: str, password: str, count: int, handle) -> float:
    """Connects a plain paho client (loop_start, auto-ack) to its backlog, calls handle for each
    message until count have come, and returns messages per second; then removes the session."""
    received = {"n": 0}
    done = threading.Event()

    def on_message(client, userdata, message):
        handle(message)
        received["n"] += 1
        if received["n"] >= count:
            done.set()

    client = _client(settings, user, user, password)
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 10000
    started = time.perf_counter()
    client.connect(settings.mqtt_host, settings.mqtt_port, clean_start=False, properties=props)
    client.loop_start()
    done.wait(600)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    drop_session(_as_client(settings, user, password))
    return received["n"] / elapsed


def _transport(stack, settings, creds, count: int) -> float:
    """The drain's own MQTT session (lean PUBLISH handler, one write per batch of acks) taking
    the same backlog and acking it at once, storing nothing: the limit of the drain's transport."""
    from shared.mqtt_drain import _BrokerSession

    user = "bench-transport"
    password = _backlog_for(stack, settings, creds, user, count, first_seq=30_000_000)
    own = _as_client(settings, user, password)
    received = 0
    started = time.perf_counter()
    session = _BrokerSession(own)
    deadline = time.monotonic() + 600
    while received < count and time.monotonic() < deadline:
        session.pump(0.05)
        messages, mids = session.take(settings.ingest_batch_size)
        received += len(messages)
        session.ack(mids)
    elapsed = time.perf_counter() - started
    session.close()
    drop_session(own)
    return received / elapsed


def _naive(stack, settings, creds, count: int) -> float:
    """The original design: on_message does one INSERT per reading, autocommit, auto-ack."""
    user = "bench-naive"
    password = _backlog_for(stack, settings, creds, user, count, first_seq=20_000_000)
    conn = psycopg.connect(stack.postgres.superuser_dsn("bench"), autocommit=True)
    conn.execute("CREATE TABLE naive_telemetry (device text, metric text, ts timestamptz, value double precision)")

    def insert_readings(message):
        data = json.loads(message.payload)
        device = message.topic.split("/")[3]
        for metric, value in data["metrics"].items():
            conn.execute("INSERT INTO naive_telemetry VALUES (%s, %s, to_timestamp(%s), %s)",
                         (device, metric, data["ts"] / 1000, float(value)))

    try:
        return _timed_receive(settings, user, password, count, insert_readings)
    finally:
        conn.close()


def _drain(stack, settings, creds, count: int):
    prepare_session(settings)
    _publish(settings, creds, count, first_seq=0)
    pg_before = _postgres_cpu(stack)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    report = drain_once(settings)
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    pg_cpu = _postgres_cpu(stack) - pg_before
    drain_cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    active = report.active_s
    with psycopg.connect(stack.postgres.superuser_dsn("bench")) as conn:
        rows, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (device_id, seq, metric)) FROM telemetry WHERE seq < 10000000").fetchone()
    expected = count * METRICS
    lost = expected - distinct
    duplicates = rows - distinct + report.outcome.duplicates
    print(f"drain report: {json.dumps(report.summary())}")
    print(f"drain cpu: python {drain_cpu:.1f} s, postgres {pg_cpu:.1f} s, active {active:.1f} s")
    return report.outcome.messages / active, lost, duplicates, (drain_cpu + pg_cpu) / count * 1_000_000


def _postgres_cpu(stack) -> float:
    """utime + stime of the PostgreSQL server process tree, in seconds."""
    # Zombies too: a backend that exited but is not reaped yet still carries the CPU time it used.
    table = process_table()
    tree = {stack.postgres.pid} | descendants(stack.postgres.pid, table)
    return sum(table[pid].cpu_ticks for pid in tree if pid in table) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    if sys.argv[1:] == ["--publish-worker"]:
        _publish_worker()
    else:
        main()
