#!/usr/bin/env python3
"""Benchmarks the mqtt_ingest drain against its own transport and against a fair naive design.

    .venv/bin/python scripts/bench/ingest.py [--messages 200000] [--naive-messages 20000]

Starts a private PostgreSQL and Mosquitto in a temporary folder and, for each phase, pre-queues a
backlog of telemetry messages (3 metrics each, 20 devices) on a persistent session of the drain's
role, then times taking that backlog, all in one run:
  drain      drain_once(): one run, which ends when the marker it publishes after connecting comes
             back, i.e. when the backlog queued before it started is committed (COPY batches, ack
             after commit);
  transport  the drain's own MQTT client (DrainConnection: lean PUBLISH parser, a batch of acks in
             one write) acking the same backlog at once, storing nothing, ended by its marker too;
  naive      a fair per-message design on a smaller backlog: paho's own loop and on_message, QoS 1,
             paho acking after the callback, one multi-row INSERT ... VALUES (...),(...),(...)
             ON CONFLICT DO NOTHING per message (all its readings) into the real partitioned
             telemetry table with its unique key, as the ingest role, psycopg autocommit;
  bare paho  a plain paho client that only acks, printed for the record (the drain outruns it, so
             it is no ceiling).
CPU per million messages counts the drain phase only: the drain process (both its threads) plus
the whole PostgreSQL server tree, backends that exit during the phase included. The last line is
machine-readable (one line):
ingest_bench msgs_per_s=... transport_msgs_per_s=... naive_msgs_per_s=... ratio=...
    cpu_s_per_million=... lost=... duplicates=...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from localstack import LocalStack, descendants, process_table  # noqa: E402
from shared.broker.contract import INGEST_ROLE  # noqa: E402
from shared.broker.dynsec import DynsecClient, generate_password  # noqa: E402
from shared.core.db import create_pool  # noqa: E402
from shared.core.settings import settings_from  # noqa: E402
from shared.core.sql import one_row  # noqa: E402
from shared.ingest.drain import drain_once  # noqa: E402
from shared.ingest.store import DeviceDirectory  # noqa: E402
from shared.ingest.transport import FAST_PATH, DrainConnection, drop_session, prepare_session  # noqa: E402
from tests.support.registry import create_tenant, provision_device  # noqa: E402

DEVICES = 20
METRICS = 3
# Each phase publishes its own sequence numbers, so the rows of one are told from another's.
DRAIN_SEQ, BARE_SEQ, NAIVE_SEQ, TRANSPORT_SEQ = 0, 10_000_000, 20_000_000, 30_000_000


@dataclass
class DrainFigures:
    msgs_per_s: float
    lost: int
    duplicates: int
    cpu_s_per_million: float
    fast_path_messages: int
    ended_by: str | None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--naive-messages", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, LocalStack(tmp) as stack:
        settings, creds = _prepare(stack, args.batch_size)
        bare = _bare_paho(stack, settings, creds, args.messages)
        transport = _transport(stack, settings, creds, args.messages)
        naive = _naive(stack, settings, creds, args.naive_messages)
        drain = _drain(stack, settings, creds, args.messages)

    n, n_naive = f"{args.messages:,} msgs", f"{args.naive_messages:,} msgs"
    print(
        f"drain:     {n}, {drain.msgs_per_s:,.0f} msg/s (COPY batches of {args.batch_size}, ack after commit); "
        f"ended_by={drain.ended_by}; fast path ran: {'yes' if drain.fast_path_messages else 'NO'} "
        f"({drain.fast_path_messages:,} PUBLISH packets, the run's marker included; paho internals as expected: "
        f"{FAST_PATH})"
    )
    print(f"transport: {n}, {transport:,.0f} msg/s (the drain's own MQTT client, acks only, no database)")
    print(
        f"naive:     {n_naive} (a smaller backlog), {naive:,.0f} msg/s (paho on_message, one multi-row INSERT "
        f"... ON CONFLICT DO NOTHING per message, autocommit, ingest role, partitioned telemetry)"
    )
    print(f"bare paho: {n}, {bare:,.0f} msg/s (plain paho-mqtt client, acks only; for the record, not a ceiling)")
    print(
        f"drain/transport: {drain.msgs_per_s / transport:.0%}   drain/naive: {drain.msgs_per_s / naive:.1f}x   "
        f"drain/bare paho: {drain.msgs_per_s / bare:.0%}"
    )
    print(
        f"ingest_bench msgs_per_s={drain.msgs_per_s:.0f} transport_msgs_per_s={transport:.0f} "
        f"naive_msgs_per_s={naive:.0f} ratio={drain.msgs_per_s / naive:.1f} "
        f"cpu_s_per_million={drain.cpu_s_per_million:.1f} lost={drain.lost} duplicates={drain.duplicates}"
    )


def _prepare(stack: LocalStack, batch_size: int):
    env = stack.create_app_database("bench") | {
        "INGEST_BATCH_SIZE": str(batch_size),
        "INGEST_IDLE_EXIT_S": "1.0",
        "INGEST_TIME_BUDGET_S": "3600",
    }
    settings = settings_from(env)
    pool = create_pool(settings)
    tenant = create_tenant(pool, "bench", "Benchmark Works", "industrial")
    with DynsecClient(
        settings.mqtt_host,
        settings.mqtt_port,
        settings.mqtt_ca_file,
        settings.mqtt_provisioner_username,
        settings.mqtt_provisioner_password,
    ) as dynsec:
        creds = [provision_device(pool, dynsec, tenant, f"machine-{i:02d}") for i in range(DEVICES)]
    pool.close()
    return settings, creds


def _client(settings, client_id: str, username: str, password: str, **kwargs) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, **kwargs
    )
    client.username_pw_set(username, password)
    client.tls_set(ca_certs=settings.mqtt_ca_file, cert_reqs=ssl.CERT_REQUIRED)
    return client


def _as_client(settings, user: str, password: str):
    """The same settings, but the drain's MQTT identity replaced by another client of its role."""
    # model_copy does not validate: the secret goes in as the SecretStr that validation would make.
    return settings.model_copy(
        update={
            "mqtt_ingest_username": user,
            "mqtt_ingest_password": SecretStr(password),
            "mqtt_ingest_client_id": user,
        }
    )


def _publish(settings, creds, count: int, first_seq: int) -> None:
    """Publishes count QoS 1 messages round-robin over the devices, in two processes that each
    own half of the devices (one client id, one connection), and waits for every PUBACK."""
    halves = [(0, count // 2, creds[: len(creds) // 2]), (count // 2, count, creds[len(creds) // 2 :])]
    procs = []
    for start, end, own in halves:
        job = {
            "settings": {"host": settings.mqtt_host, "port": settings.mqtt_port, "ca": settings.mqtt_ca_file},
            "creds": [[c.username, c.password, c.topic_prefix] for c in own],
            "start": start,
            "end": end,
            "first_seq": first_seq,
        }
        proc = subprocess.Popen([sys.executable, __file__, "--publish-worker"], stdin=subprocess.PIPE)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(job).encode())  # not argv: the device passwords stay out of ps
        proc.stdin.close()
        procs.append(proc)
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
        door = "true" if i % 7 == 0 else "false"
        payload = (
            f'{{"ts":{ts0 + i},"seq":{seq},"metrics":{{"temp":{20 + (i % 100) / 10},'
            f'"rpm":{1000 + i % 500},"door_open":{door}}}}}'
        )
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
    with DynsecClient(
        settings.mqtt_host,
        settings.mqtt_port,
        settings.mqtt_ca_file,
        stack.mosquitto.admin.username,
        stack.mosquitto.admin.password,
    ) as dynsec:
        dynsec.create_client(user, password, client_id=user, roles=[INGEST_ROLE])
    prepare_session(_as_client(settings, user, password))
    _publish(settings, creds, count, first_seq=first_seq)
    return password


def _bare_paho(stack, settings, creds, count: int) -> float:
    """A bare paho client on its own persistent session: receive and (auto-)ack, nothing else."""
    user = "bench-bare-paho"
    password = _backlog_for(stack, settings, creds, user, count, first_seq=BARE_SEQ)
    return _timed_receive(settings, user, password, count, lambda message: None)


def _timed_receive(settings, user: str, password: str, count: int, handle) -> float:
    """Connects a plain paho client (loop_start, auto-ack) to its backlog, calls handle for each
    message until count have come, and returns messages per second; then removes the session.
    paho acks a QoS 1 message when on_message has returned, so after handle."""
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
    """The drain's own MQTT connection (lean PUBLISH parser, one write per batch of acks) taking
    the same backlog and acking it at once, storing nothing: the limit of the drain's transport.
    Like a drain run it publishes its marker after connecting and ends when that comes back."""
    user = "bench-transport"
    password = _backlog_for(stack, settings, creds, user, count, first_seq=TRANSPORT_SEQ)
    own = _as_client(settings, user, password)
    received = 0
    before = _cpu_times(stack)
    started = time.perf_counter()
    connection = DrainConnection(own)
    connection.publish_marker()
    deadline = time.monotonic() + 600
    while not connection.caught_up and not connection.lost and time.monotonic() < deadline:
        connection.pump(0.05)
        connection.ack_control()
        messages, mids = connection.take(settings.ingest_batch_size)
        received += len(messages)
        connection.ack(mids)
    messages, mids = connection.take(len(connection.received))
    received += len(messages)
    connection.ack(mids)
    elapsed = time.perf_counter() - started
    used = _cpu_times(stack) - before
    connection.close()
    drop_session(own)
    print(f"transport cpu: python {used.process:.1f} s in {elapsed:.1f} s; {_others(used, elapsed)}")
    if received != count or not connection.caught_up:
        raise SystemExit(f"transport: {received} of {count} messages, marker back: {connection.caught_up}")
    return received / elapsed


def _naive(stack, settings, creds, count: int) -> float:
    """A fair naive design: paho's own loop, on_message stores the message with one multi-row
    INSERT (its readings) into the real partitioned telemetry table, ON CONFLICT DO NOTHING on
    its unique key, as the ingest role, autocommit; paho acks once on_message has returned.
    Devices are looked up once each and cached; the statement is prepared by psycopg."""
    user = "bench-naive"
    password = _backlog_for(stack, settings, creds, user, count, first_seq=NAIVE_SEQ)
    conn = psycopg.connect(
        settings.ingest_database_url.get_secret_value(), autocommit=True, application_name="bench_naive"
    )
    directory = DeviceDirectory()
    row = "(%s, %s, timestamptz 'epoch' + %s * interval '1 millisecond', %s, %s, %s, %s, %s)"
    statements: dict[int, str] = {}

    def insert_message(message):
        data = json.loads(message.payload)
        _, tenant, _, name, _ = message.topic.split("/")
        device = directory.get(tenant, name)
        if device is None:
            directory.resolve(conn, {(tenant, name)})
            device = directory.get(tenant, name)
        params: list = []
        for metric, value in data["metrics"].items():
            is_bool = isinstance(value, bool)
            params += [
                device.tenant_id,
                device.device_id,
                data["ts"],
                data.get("seq", 0),
                None if is_bool else value,
                value if is_bool else None,
                metric,
                None,
            ]
        rows = len(data["metrics"])
        if rows not in statements:
            statements[rows] = (
                "INSERT INTO telemetry (tenant_id, device_id, ts, seq, value, value_bool, metric, "
                "value_text) VALUES " + ", ".join([row] * rows) + " ON CONFLICT DO NOTHING"
            )
        conn.execute(statements[rows], params, prepare=True)

    try:
        rate = _timed_receive(settings, user, password, count, insert_message)
    finally:
        conn.close()
    rows, distinct = _stored(stack, NAIVE_SEQ, NAIVE_SEQ + count)
    print(f"naive stored {distinct:,} distinct of {count * METRICS:,} readings ({rows - distinct} duplicates)")
    return rate


def _drain(stack, settings, creds, count: int) -> DrainFigures:
    prepare_session(settings)
    _publish(settings, creds, count, first_seq=DRAIN_SEQ)
    before = _cpu_times(stack)
    report = drain_once(settings)
    used = _cpu_times(stack) - before
    rows, distinct = _stored(stack, DRAIN_SEQ, DRAIN_SEQ + count)
    print(f"drain report: {json.dumps(report.summary())}")
    print(
        f"drain cpu: python {used.process:.1f} s, postgres {used.postgres:.1f} s, active {report.active_s:.1f} s "
        f"(setup {report.setup_s:.2f} s); {_others(used, report.duration_s)}"
    )
    return DrainFigures(
        msgs_per_s=report.outcome.messages / report.active_s,
        lost=count * METRICS - distinct,
        duplicates=rows - distinct + report.outcome.duplicates,
        cpu_s_per_million=(used.process + used.postgres) / count * 1_000_000,
        fast_path_messages=report.fast_path_messages,
        ended_by=report.ended_by,
    )


def _stored(stack, first_seq: int, end_seq: int) -> tuple[int, int]:
    """Rows and distinct readings in telemetry from the messages numbered [first_seq, end_seq)."""
    query = "SELECT count(*), count(DISTINCT (device_id, seq, metric)) FROM telemetry WHERE seq >= %s AND seq < %s"
    with psycopg.connect(stack.postgres.superuser_dsn("bench")) as conn:
        rows, distinct = one_row(conn.execute(query, (first_seq, end_seq)), query)
    return rows, distinct


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds used so far by this process (where the drain runs, both its threads), by the
    PostgreSQL server, and by everything on the machine outside this benchmark."""

    process: float
    postgres: float
    others: float

    def __sub__(self, earlier: CpuTimes) -> CpuTimes:
        return CpuTimes(self.process - earlier.process, self.postgres - earlier.postgres, self.others - earlier.others)


def _cpu_times(stack) -> CpuTimes:
    own = resource.getrusage(resource.RUSAGE_SELF)
    table = process_table()
    # /proc/stat's first line: user nice system idle iowait irq softirq steal ... in clock ticks.
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    machine = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return CpuTimes(
        own.ru_utime + own.ru_stime, _tree_cpu(stack.postgres.pid, table), machine - _tree_cpu(os.getpid(), table)
    )


def _tree_cpu(pid: int, table) -> float:
    """CPU seconds of a process tree: every member's utime + stime (zombies included, they still
    carry theirs) plus its cutime + cstime, what its exited and reaped children used (the drain's
    PostgreSQL backends end with the run; the postmaster reaps them before the second reading)."""
    tree = {pid} | descendants(pid, table)
    ticks = sum(table[member].cpu_ticks for member in tree if member in table)
    for member in tree:
        with contextlib.suppress(OSError, IndexError):  # gone since the table was read
            # After the command name: state is field 0, cutime and cstime are 13 and 14.
            ticks += sum(map(int, Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()[13:15]))
    return ticks / os.sysconf("SC_CLK_TCK")


def _others(used: CpuTimes, elapsed: float) -> str:
    """What the rest of the machine took meanwhile: other work on these cores slows every figure."""
    return (
        f"other processes on the machine: {used.others:.1f} CPU-s "
        f"({used.others / elapsed:.2f} of {os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--publish-worker"]:
        _publish_worker()
    else:
        main()
