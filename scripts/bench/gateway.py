#!/usr/bin/env python3
"""Benchmarks the edge gateway: readings per second from simulated Modbus devices, its buffer, a 1-hour outage.

    .venv/bin/python scripts/bench/gateway.py [--devices 50] [--metrics 5] [--seconds 15]

Starts a private PostgreSQL, Mosquitto (TLS, dynamic security) and Azurite in a temporary folder, a tenant with
one device per simulated machine (each its own broker credential), and the simulated machines: pymodbus TCP servers
in a process of their own (so their CPU is not counted as the gateway's), each with --metrics holding registers that
change. Then, in one run:

  buffer      gateway.buffer.Buffer on its own, no network: readings written per second with the gateway's group
              commit (one transaction per batch of the fleet's polls; synchronous FULL and NORMAL), against a fair
              naive store-and-forward (one transaction and WAL sync per poll); and its drain rate (read pending,
              cut messages, mark acknowledged) over a 1-hour backlog;
  source      the limit of the simulated machines: a bare pymodbus client per device polling back to back,
              storing and publishing nothing;
  gateway     the real gateway (python -m gateway, as deployed) polling every device back to back for --seconds,
              publishing to the broker: readings acknowledged per second, its backlog (sustained means the buffer
              does not grow), CPU and RSS of the gateway process;
  naive       a fair naive gateway on the same machines: per poll one INSERT + COMMIT, one QoS 1 message with the
              poll's readings and a wait for its PUBACK, one DELETE + COMMIT (how a simple script is written);
  outage      a 1-hour outage at --devices x --metrics x 1 Hz, in simulated time: the gateway's buffer is filled
              with the hour's readings as its pollers would have written them (timestamps over the last hour),
              then the real gateway starts with the broker reachable and the machines polled at 1 Hz: how long
              until its buffer is empty again; then 20 s of that steady 1 Hz state: the design fleet's CPU and RSS;
  check       the real drain (drain_once) stores everything in PostgreSQL: every seq the gateway gave is there
              once, as one reading (lost, duplicates).

A reading is one metric value (one telemetry row). The last line is machine-readable:
gateway_bench readings_per_s=... buffer_writes_per_s=... outage_backlog=... backlog_drain_s=... rss_mb=... lost=...
    duplicates=...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from gateway.buffer import TELEMETRY, Buffer, Record  # noqa: E402
from gateway.payloads import build_messages  # noqa: E402
from localstack import LocalStack, free_port, process_info  # noqa: E402
from shared.broker.dynsec import DynsecClient  # noqa: E402
from shared.core.db import create_pool  # noqa: E402
from shared.core.settings import settings_from  # noqa: E402
from shared.ingest.drain import drain_once  # noqa: E402
from shared.ingest.transport import prepare_session  # noqa: E402
from tests.support.registry import create_tenant, provision_device  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
TENANT = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--metrics", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the gateway and naive phases")
    parser.add_argument("--outage-s", type=int, default=3600, help="simulated outage")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, {_cpu_model()}; devices {args.devices} x {args.metrics} metrics")
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp, LocalStack(Path(tmp) / "stack") as stack:
        work = Path(tmp)
        settings, creds = _prepare(stack, args.devices + 1)
        servers = _start_machines(args.devices, args.metrics)
        try:
            ports = servers[1]
            buffer_rate = _bench_buffer(work, args.devices, args.metrics, args.outage_s)
            source = asyncio.run(_source_limit(ports, args.metrics, 5.0))
            print(f"source: {source:,.0f} readings/s (bare pymodbus polls back to back, nothing stored or sent)")
            gateway = _bench_gateway(work, settings, creds, ports, args.metrics, args.seconds)
            naive = asyncio.run(_naive(work, settings, creds, ports, args.metrics, min(args.seconds, 10.0)))
            print(
                f"naive: {naive:,.0f} readings/s (per poll: INSERT+COMMIT, one QoS 1 message, wait for PUBACK, "
                "DELETE+COMMIT)"
            )
            backlog, drain_s = _bench_outage(work, settings, creds, ports, args.metrics, args.outage_s)
        finally:
            servers[0].kill()
            servers[0].wait()
        lost, duplicates, stored = _check(stack, settings, work)
    print(
        f"gateway/source: {gateway['readings_per_s'] / source:.0%}   gateway/naive: "
        f"{gateway['readings_per_s'] / naive:.1f}x   group commit/naive commit: "
        f"{buffer_rate['full'] / buffer_rate['naive']:.0f}x"
    )
    print(f"check: {stored:,} readings in PostgreSQL, lost {lost}, duplicates {duplicates}")
    print(
        f"gateway_bench readings_per_s={gateway['readings_per_s']:.0f} buffer_writes_per_s={buffer_rate['full']:.0f} "
        f"outage_backlog={backlog} backlog_drain_s={drain_s:.1f} rss_mb={gateway['rss_mb']:.0f} lost={lost} "
        f"duplicates={duplicates}"
    )


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _prepare(stack: LocalStack, devices: int) -> tuple[Any, list[Any]]:
    env = stack.create_app_database("bench") | {"INGEST_IDLE_EXIT_S": "1.0", "INGEST_TIME_BUDGET_S": "600"}
    settings = settings_from(env)
    pool = create_pool(settings)
    tenant = create_tenant(pool, TENANT, "Benchmark Works", "industrial")
    with DynsecClient(
        settings.mqtt_host,
        settings.mqtt_port,
        settings.mqtt_ca_file,
        settings.mqtt_provisioner_username,
        settings.mqtt_provisioner_password,
    ) as dynsec:
        creds = [provision_device(pool, dynsec, tenant, f"m-{i:03d}") for i in range(devices - 1)]
        creds.append(provision_device(pool, dynsec, tenant, "gw-health"))
    pool.close()
    prepare_session(settings)  # what the gateway publishes before the first drain run waits for it
    return settings, creds


# -- the simulated machines -------------------------------------------------------------------------------------------


def _start_machines(devices: int, metrics: int) -> tuple[subprocess.Popen[bytes], list[int]]:
    ports = [free_port() for _ in range(devices)]
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-machines", str(metrics), *map(str, ports)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"ready":
        raise RuntimeError("the simulated machines did not start")
    return process, ports


def _serve_machines(metrics: int, ports: list[int]) -> None:
    import logging

    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    async def serve() -> None:
        servers = []
        for port in ports:
            device = SimDevice(id=1, simdata=[SimData(0, count=max(metrics, 8), values=0, datatype=DataType.REGISTERS)])
            server = ModbusTcpServer(device, address=("127.0.0.1", port))
            await server.serve_forever(background=True)
            servers.append(server)
        print("ready", flush=True)
        value = 0
        while True:  # the machines' counters move: a reading is never a copy of the last
            value = (value + 1) % 65536
            for server in servers:
                await server.async_setValues(1, 3, 0, [(value + i) % 65536 for i in range(metrics)])
            await asyncio.sleep(0.1)

    asyncio.run(serve())


# -- phases -----------------------------------------------------------------------------------------------------------


def _records(devices: int, metrics: int, start_ms: int, polls: int, step_ms: int = 1000) -> list[list[Record]]:
    """The fleet's polls, one list per poll round (what the gateway's group commit takes in one transaction)."""
    return [
        [
            Record(f"m-{d:03d}", start_ms + p * step_ms, TELEMETRY, {f"r{i}": (p + i) % 65536 for i in range(metrics)})
            for d in range(devices)
        ]
        for p in range(polls)
    ]


def _bench_buffer(work: Path, devices: int, metrics: int, outage_s: int) -> dict[str, float]:
    rates: dict[str, float] = {}
    rounds = _records(devices, metrics, int(time.time() * 1000), 200)
    # Under load the group commit takes whatever arrived during the previous WAL sync: 20 rounds a batch here.
    saturated = [[r for batch in rounds[i : i + 20] for r in batch] for i in range(0, len(rounds), 20)]
    for mode, batches in (("full", saturated), ("normal", saturated), ("full_round", rounds)):
        synchronous = "normal" if mode == "normal" else "full"
        buffer = Buffer(work / f"buffer-{mode}.sqlite3", 2**34, synchronous=synchronous)  # type: ignore[arg-type]
        started = time.perf_counter()
        for batch in batches:
            buffer.append(batch)
        rates[mode] = len(rounds) * devices * metrics / (time.perf_counter() - started)
        buffer.close()
    naive = Buffer(work / "buffer-naive.sqlite3", 2**34, synchronous="full")
    polls = [record for batch in rounds[:20] for record in batch]
    started = time.perf_counter()
    for record in polls:
        naive.append([record])  # a transaction and a WAL sync per poll
    rates["naive"] = len(polls) * metrics / (time.perf_counter() - started)
    naive.close()
    print(
        f"buffer writes: group commit {rates['full']:,.0f} readings/s (synchronous FULL, 20 poll rounds a "
        f"transaction, as under load), {rates['normal']:,.0f} (NORMAL); one round of the fleet's polls a transaction "
        f"{rates['full_round']:,.0f} (FULL); naive commit per poll {rates['naive']:,.0f} (FULL)"
    )

    # Its drain rate over an hour's backlog, no network: what the uplinks do around each publish.
    buffer = Buffer(work / "buffer-drain.sqlite3", 2**34)
    hour = _records(devices, metrics, int(time.time() * 1000) - outage_s * 1000, outage_s)
    for batch in hour:
        buffer.append(batch)
    size_mb = buffer.stats().used_bytes / 2**20
    started = time.perf_counter()
    drained = 0
    for d in range(devices):
        cursor = 0
        while rows := buffer.pending(f"m-{d:03d}", cursor, 500):
            for message in build_messages(TENANT, f"m-{d:03d}", rows, 500):
                buffer.mark_acked(f"m-{d:03d}", message.seqs, time.time(), 15.0)
            cursor = rows[-1].seq
            drained += len(rows)
    elapsed = time.perf_counter() - started
    print(
        f"buffer drain: {drained * metrics:,} readings in {elapsed:.1f} s = {drained * metrics / elapsed:,.0f} "
        f"readings/s (pending, cut messages of 500 polls, mark acknowledged; no network); an hour's backlog takes "
        f"{size_mb:.0f} MB"
    )
    buffer.close()
    return rates


async def _source_limit(ports: list[int], metrics: int, seconds: float) -> float:
    from pymodbus.client import AsyncModbusTcpClient

    count = 0
    deadline = time.monotonic() + seconds

    async def poll(port: int) -> None:
        nonlocal count
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0, reconnect_delay=0)
        await client.connect()
        while time.monotonic() < deadline:
            response = await client.read_holding_registers(0, count=metrics, device_id=1)
            assert not response.isError()
            count += metrics
        client.close()

    await asyncio.gather(*(poll(p) for p in ports))
    return count / seconds


def _config(
    work: Path, name: str, settings: Any, creds: list[Any], ports: list[int], metrics: int, interval: float
) -> Path:
    folder = work / name
    folder.mkdir()
    lines = [
        f'[gateway]\ntenant = "{TENANT}"',
        f'[broker]\nhost = "{settings.mqtt_host}"\nport = {settings.mqtt_port}\n'
        f'ca_file = "{settings.mqtt_ca_file}"\nreconnect_max_s = 2',
        '[buffer]\npath = "buffer.sqlite3"',
        '[health]\ndevice = "gw-health"\ninterval_s = 1.0',
    ]
    for cred, port in zip(creds[:-1], ports, strict=True):
        lines.append(
            f'[[modbus]]\ndevice = "{cred.device}"\nhost = "127.0.0.1"\nport = {port}\n'
            f"poll_interval_s = {interval}\ntimeout_s = 2.0"
        )
        lines += [f'[[modbus.points]]\nmetric = "r{i}"\naddress = {i}' for i in range(metrics)]
    for cred in creds:
        lines.append(f'[devices.{cred.device}]\npassword = "{cred.password}"')
    (folder / "gateway.toml").write_text("\n".join(lines) + "\n")
    return folder


def _start_gateway(folder: Path) -> subprocess.Popen[bytes]:
    log = (folder / "gateway.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(folder / "gateway.toml")],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _stop_gateway(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(60)


def _events(folder: Path, name: str) -> list[dict[str, Any]]:
    marker = f" {name} "
    return [
        json.loads(line.split(marker, 1)[1])
        for line in (folder / "gateway.log").read_text().splitlines()
        if marker in line
    ]


def _pending(folder: Path) -> int:
    with sqlite3.connect(f"file:{folder / 'buffer.sqlite3'}?mode=ro", uri=True, timeout=10) as conn:
        return int(conn.execute("SELECT count(*) FROM readings WHERE acked_at IS NULL").fetchone()[0])


def _highest_seq(folder: Path) -> int:
    with sqlite3.connect(f"file:{folder / 'buffer.sqlite3'}?mode=ro", uri=True, timeout=10) as conn:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
        return int(row[0]) if row else 0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _wait(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


def _bench_gateway(
    work: Path, settings: Any, creds: list[Any], ports: list[int], metrics: int, seconds: float
) -> dict[str, float]:
    folder = _config(work, "sustained", settings, creds, ports, metrics, 0.001)
    process = _start_gateway(folder)
    try:
        _wait(lambda: len(_events(folder, "gateway.health")) >= 3, 60, "the gateway running")
        info = process_info(process.pid)
        assert info is not None
        cpu_before, seq_before, pending_before = info.cpu_ticks, _highest_seq(folder), _pending(folder)
        started = time.monotonic()
        time.sleep(seconds)
        info = process_info(process.pid)
        assert info is not None
        seq_after, pending_after = _highest_seq(folder), _pending(folder)
        elapsed = time.monotonic() - started
        cpu_s = (info.cpu_ticks - cpu_before) / TICK
        rss = _rss_mb(process.pid)
    finally:
        _stop_gateway(process)
    # Polls buffered in the window less the growth of the backlog: what the broker acknowledged (a poll is a row
    # of `metrics` readings; the health reports are a row a second, left in: negligible).
    acked = (seq_after - seq_before) - (pending_after - pending_before)
    rate = acked * metrics / elapsed
    read = (seq_after - seq_before) * metrics / elapsed
    cores = cpu_s / elapsed
    print(
        f"gateway: {rate:,.0f} readings/s acknowledged by the broker, {read:,.0f} read ({len(ports)} devices "
        f"polled back to back for {elapsed:.0f} s); backlog {pending_before} -> {pending_after} polls; "
        f"cpu {cores:.2f} cores = {cores / (rate / 1000):.3f} cores per 1,000 readings/s; rss {rss:.0f} MB"
    )
    return {"readings_per_s": rate, "rss_mb": rss, "cores_per_1000": cores / (rate / 1000)}


async def _naive(work: Path, settings: Any, creds: list[Any], ports: list[int], metrics: int, seconds: float) -> float:
    import ssl

    from pymodbus.client import AsyncModbusTcpClient

    loop = asyncio.get_running_loop()
    count = 0
    deadline = time.monotonic() + seconds

    async def device(cred: Any, port: int) -> None:
        nonlocal count
        db = sqlite3.connect(work / f"naive-{cred.device}.sqlite3", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS q (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER, body TEXT)")
        acked: dict[int, asyncio.Future[None]] = {}
        connected: asyncio.Future[None] = loop.create_future()
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=cred.client_id, protocol=mqtt.MQTTv5
        )
        client.username_pw_set(cred.username, cred.password)
        client.tls_set(ca_certs=settings.mqtt_ca_file, cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = lambda *a: loop.call_soon_threadsafe(connected.set_result, None)
        client.on_publish = lambda c, u, mid, rc, p: loop.call_soon_threadsafe(
            lambda: acked.setdefault(mid, loop.create_future()).done() or acked[mid].set_result(None)
        )
        await asyncio.to_thread(client.connect, settings.mqtt_host, settings.mqtt_port)
        client.loop_start()
        await connected
        modbus = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0, reconnect_delay=0)
        await modbus.connect()
        topic = f"t/{TENANT}/d/{cred.device}/telemetry"
        while time.monotonic() < deadline:
            response = await modbus.read_holding_registers(0, count=metrics, device_id=1)
            ts = int(time.time() * 1000)
            body = json.dumps({f"r{i}": v for i, v in enumerate(response.registers)})
            seq = db.execute("INSERT INTO q (ts, body) VALUES (?, ?)", (ts, body)).lastrowid
            payload = f'{{"ts":{ts},"seq":{seq + 10**12},"metrics":{body}}}'  # its own seqs: kept out of the check
            info = client.publish(topic, payload, qos=1)
            await acked.setdefault(info.mid, loop.create_future())
            acked.pop(info.mid)
            db.execute("DELETE FROM q WHERE seq = ?", (seq,))
            count += metrics
        modbus.close()
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        db.close()

    await asyncio.gather(*(device(c, p) for c, p in zip(creds[:-1], ports, strict=True)))
    return count / seconds


def _bench_outage(
    work: Path, settings: Any, creds: list[Any], ports: list[int], metrics: int, outage_s: int
) -> tuple[int, float]:
    folder = _config(work, "outage", settings, creds, ports, metrics, 1.0)
    buffer = Buffer(folder / "buffer.sqlite3", 2**34)
    with sqlite3.connect(work / "sustained" / "buffer.sqlite3") as conn:
        first_seq = int(conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()[0])
    with sqlite3.connect(folder / "buffer.sqlite3") as conn:  # its seqs count on from the sustained phase's
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('readings', ?)", (first_seq,))
        conn.execute("INSERT INTO counters (name, value) VALUES ('bench_first_seq', ?)", (first_seq,))
    now_ms = int(time.time() * 1000)
    # Simulated time: the hour's polls as the gateway's pollers would have buffered them during the outage.
    for batch in _records(len(ports), metrics, now_ms - outage_s * 1000, outage_s):
        buffer.append(batch)
    backlog = buffer.stats().pending * metrics
    size_mb = buffer.stats().used_bytes / 2**20
    buffer.close()
    started = time.monotonic()
    process = _start_gateway(folder)
    try:
        # Empty again: only the live 1 Hz readings in flight remain.
        _wait(lambda: _pending(folder) <= 2 * len(ports), 1800, "the backlog published")
        drain_s = time.monotonic() - started
        rss = _rss_mb(process.pid)
        # Then the design fleet's steady state: the same gateway polling every machine once a second.
        time.sleep(2.0)
        info = process_info(process.pid)
        assert info is not None
        cpu_before, measured_from = info.cpu_ticks, time.monotonic()
        time.sleep(20.0)  # long enough to average out a WAL checkpoint or a garbage collection
        info = process_info(process.pid)
        assert info is not None
        steady_cores = (info.cpu_ticks - cpu_before) / TICK / (time.monotonic() - measured_from)
        steady_rss = _rss_mb(process.pid)
    finally:
        _stop_gateway(process)
    print(
        f"outage: {outage_s} s x {len(ports)} devices x {metrics} metrics x 1 Hz = {backlog:,} readings "
        f"({size_mb:.0f} MB of buffer), published in {drain_s:.1f} s from the gateway's start "
        f"(= {backlog / drain_s:,.0f} readings/s) while polling live at 1 Hz; rss {rss:.0f} MB"
    )
    print(
        f"design fleet, steady: {len(ports)} x {metrics} x 1 Hz = {len(ports) * metrics} readings/s take "
        f"{steady_cores:.3f} cores and {steady_rss:.0f} MB resident"
    )
    return backlog, drain_s


def _check(stack: LocalStack, settings: Any, work: Path) -> tuple[int, int, int]:
    """Drains the broker into PostgreSQL with the real drain, then: every seq the gateways gave (their buffers'
    sqlite_sequence; the outage's buffer counts on from the sustained one's) is stored once, as one reading. The
    units' /state readings are stored with seq 0 and counted as such; the naive phase's seqs are left out."""
    started = time.monotonic()
    while drain_once(settings).outcome.messages:
        pass
    print(f"drain: the broker's backlog stored in {time.monotonic() - started:.1f} s")
    given = 0
    for folder in ("sustained", "outage"):
        with sqlite3.connect(work / folder / "buffer.sqlite3") as conn:
            first = int(
                conn.execute("SELECT value FROM counters WHERE name = 'bench_first_seq'").fetchone()[0]
                if folder == "outage"
                else 0
            )
            given += int(conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()[0]) - first
    with psycopg.connect(stack.postgres.superuser_dsn("bench")) as conn:
        readings = conn.execute("""
            SELECT count(*) FILTER (WHERE n > 1), count(*) FROM (
                SELECT seq, count(DISTINCT (device_id, ts)) AS n FROM telemetry
                WHERE seq > 0 AND seq < 1000000000000 GROUP BY seq) s""").fetchone()
        [(states,)] = conn.execute("SELECT count(*) FROM telemetry WHERE seq = 0").fetchall()
        [(rows,)] = conn.execute("SELECT count(*) FROM telemetry WHERE seq < 1000000000000").fetchall()
    duplicates, seqs = int(readings[0]), int(readings[1])
    return given - seqs - int(states), duplicates, int(rows)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-machines"]:
        _serve_machines(int(sys.argv[2]), [int(p) for p in sys.argv[3:]])
    else:
        main()
