#!/usr/bin/env python3
"""Benchmarks what the scheduled mqtt_ingest drain costs on Flex Consumption, per cadence and fleet.

    .venv/bin/python scripts/bench/cost.py [--cadences 10,30,60] [--fleets idle,0.1,1] [--runs N]
                                           [--default-cadence 60] [--quick]

Starts a private PostgreSQL and Mosquitto in a temporary folder, creates a tenant with 50 devices
(each its own broker credential), prepares the drain's session, and connects the fleet from one
publisher process (paho, MQTT v5 over TLS, QoS 1, one connection per device). Then, in one run:

  fixed cost  idle drain runs (nothing queued): their duration, and the same steps timed one by one
              from outside (PostgreSQL connect + lock, partitions, the ingest_runs row, TCP + TLS,
              CONNECT, SUBSCRIBE, the end-of-backlog marker's round trip, DISCONNECT);
  throughput  a pre-queued burst, drained by one run: messages per second of storing, which gives
              the ideal run of each scenario (one that takes exactly the time to store its backlog);
  scenarios   for each fleet (idle, 50 devices at 0.1 Hz, 50 devices at 1 Hz, steady rate with +-5%
              jitter, payload {"ts": epoch ms at publish, "seq": n, "metrics": {"temp", "rpm"}}) and
              each cadence, drain_once() on a timer grid (runs never overlap; a run that overruns its
              tick is followed right away by the next); then the publishers stop, one more run
              catches up, and the stored rows are checked against the PUBACKed messages.

Per scenario: run duration p50/p95 (DrainReport.duration_s), its parts (setup, store, tail), the
publish-to-commit lag p50/p95 (received_at - ts of each stored reading whose ts is before the last
timed run started, so every reading in the sample was stored by a timed run; received_at is
now(), the start of the batch's transaction, a few ms before its COMMIT), and GB-s per month at
512 MB and 2,048 MB instance memory: (30 days / cadence) runs x billed duration x memory, billed
duration being the p50 duration (expected cost) or the p95 one, rounded as Flex Consumption bills it
(see BILL_MIN_S). Dollars are what exceeds the 100,000 GB-s monthly free grant at $0.000026 per GB-s.
Execution-count charges, the Functions host's own overhead per invocation and cold starts are not
included.

The last line is machine-readable, for the default cadence and the 0.1 Hz fleet:
cost_bench cadence_s=<n> devices=50 rate_hz=0.1 run_s_p95=<s> lag_p95_s=<s> gb_s_month_2048=<n> free_grant_gb_s=100000
(gb_s_month_2048 from the p50 duration, the expected cost).
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import math
import random
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

DEVICES = 50
METRICS = 2  # temp, rpm: rows per message
JITTER = 0.05  # +- fraction of the period

# Billing, Flex Consumption, on-demand instances.
FREE_GRANT_GB_S = 100_000  # per month and subscription
PRICE_PER_GB_S = 0.000026  # beyond the grant
MONTH_S = 30 * 86400
MEMORIES_MB = (512, 2048)
# "The minimum billable execution period for both execution modes is 1,000 ms. Past that, the
# billable activity period is rounded up to the nearest 100 ms." Microsoft Learn, "Azure Functions
# Flex Consumption plan hosting", section Billing
# (https://learn.microsoft.com/azure/azure-functions/flex-consumption-plan#billing; source
# MicrosoftDocs/azure-docs articles/azure-functions/flex-consumption-plan.md). A timer run on an
# instance that is otherwise idle is one such activity period, so each run is billed at least 1 s.
BILL_MIN_S = 1.0
BILL_STEP_S = 0.1

DEFAULT_RUNS = {10: 10, 30: 5, 60: 3}  # about 22 minutes for the three fleets
FLEET_NAMES = {"idle": 0.0}


def main() -> None:
    args = _parse_args()
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Imported here so that a module being reorganised by someone else fails with a clear message.
    from localstack import LocalStack

    rows: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp, LocalStack(tmp) as stack:
        bench = _prepare(stack, args.devices)
        print(
            f"stack up in {time.monotonic() - started:.0f} s: {args.devices} devices provisioned, drain session "
            f"prepared; budgets per cadence: "
            + ", ".join(f"{c} s -> {_budget(c):g} s" for c in args.cadences)
            + f"; INGEST_IDLE_EXIT_S {bench.settings().ingest_idle_exit_s:g}",
            flush=True,
        )
        with Publishers(bench) as fleet, _MarkerProbe().installed() as probe:
            fixed = _fixed_cost(bench, args.fixed_runs)
            _print_fixed(fixed)
            throughput = _throughput(bench, fleet, args.burst, statistics.median(fixed.idle_setup))
            print(Row.header(), flush=True)
            index = 1
            for name, rate in args.fleets:
                for cadence in args.cadences:
                    runs = args.runs or DEFAULT_RUNS.get(cadence, max(3, round(100 / cadence)))
                    row = _scenario(
                        bench,
                        fleet,
                        probe,
                        name,
                        rate,
                        cadence,
                        runs,
                        index * 10_000_000,
                        statistics.median(fixed.idle_runs),
                        throughput,
                    )
                    rows.append(row)
                    print(row.line(), flush=True)
                    index += 1
    print()
    print(
        f"all scenarios ({time.monotonic() - started:.0f} s wall in all; {args.devices} devices; "
        f"store throughput {throughput:,.0f} msg/s):"
    )
    print(Row.header())
    for row in rows:
        print(row.line())
    _print_notes(rows, fixed, args)
    print(_last_line(rows, args))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cadences", default=None, help="seconds between runs, comma-separated (10,30,60)")
    parser.add_argument("--fleets", default=None, help="idle or a per-device rate in Hz, comma-separated (idle,0.1,1)")
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="timed runs per scenario (default by cadence: "
        + ", ".join(f"{c} s: {n}" for c, n in DEFAULT_RUNS.items())
        + ")",
    )
    parser.add_argument("--default-cadence", type=int, default=60, help="cadence of the last line (60)")
    parser.add_argument("--devices", type=int, default=DEVICES)
    parser.add_argument("--fixed-runs", type=int, default=None, help="idle runs and step timings (7)")
    parser.add_argument("--burst", type=int, default=None, help="messages for the throughput run (20000)")
    parser.add_argument(
        "--quick", action="store_true", help="a ~2 minute smoke: cadence 10 s, 2 runs per fleet, small burst"
    )
    args = parser.parse_args()
    quick = args.quick
    args.cadences = [int(c) for c in (args.cadences or ("10" if quick else "10,30,60")).split(",")]
    fleets = []
    for item in (args.fleets or "idle,0.1,1").split(","):
        item = item.strip()
        fleets.append(("idle", 0.0) if item == "idle" else (f"{float(item):g}Hz", float(item)))
    args.fleets = fleets
    args.runs = args.runs or (2 if quick else None)
    args.fixed_runs = args.fixed_runs or (3 if quick else 7)
    args.burst = args.burst if args.burst is not None else (3000 if quick else 20_000)
    if any(c < 2 for c in args.cadences) or args.devices < 1:
        parser.error("cadences must be at least 2 s and devices at least 1")
    return args


# -- the stack -------------------------------------------------------------------------------------


@dataclass
class Bench:
    stack: object
    env: dict[str, str]
    creds: list
    tenant_id: str
    admin_dsn: str

    def settings(self, **overrides: object):
        from shared.core.settings import settings_from

        return settings_from(self.env | {k: str(v) for k, v in overrides.items()})


def _prepare(stack, devices: int) -> Bench:
    from shared.broker.dynsec import DynsecClient
    from shared.core.db import create_pool
    from shared.core.settings import settings_from
    from shared.ingest.drain import prepare_session
    from tests.support.registry import create_tenant, provision_device

    env = stack.create_app_database("bench")
    settings = settings_from(env)
    pool = create_pool(settings)
    tenant = create_tenant(pool, "costbench", "Cost Benchmark Works", "professional")
    with DynsecClient(
        settings.mqtt_host,
        settings.mqtt_port,
        settings.mqtt_ca_file,
        settings.mqtt_provisioner_username,
        settings.mqtt_provisioner_password.get_secret_value(),
    ) as dynsec:
        creds = [provision_device(pool, dynsec, tenant, f"machine-{i:02d}") for i in range(devices)]
    pool.close()
    prepare_session(settings)
    return Bench(stack, env, creds, str(tenant["id"]), stack.postgres.superuser_dsn("bench"))


def _budget(cadence: float) -> float:
    """INGEST_TIME_BUDGET_S for a cadence: 8 s at 10 s (the local schedule), 50 s at 60 s (the
    default), leaving the run's tail and the host's overhead inside the interval."""
    return cadence - max(2.0, cadence / 6)


# -- the fleet: one publisher process --------------------------------------------------------------


class Publishers:
    """The fleet in a child process (so its threads never contend with the drain for the GIL),
    driven by JSON lines on its stdin; it answers one JSON line per command."""

    def __init__(self, bench: Bench) -> None:
        settings = bench.settings()
        self._job = {
            "host": settings.mqtt_host,
            "port": settings.mqtt_port,
            "ca": settings.mqtt_ca_file,
            "creds": [[c.username, c.password, c.topic_prefix] for c in bench.creds],
        }
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Publishers:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--publish-worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        answer = self.request(self._job)
        if not answer.get("ready"):
            raise SystemExit(f"publisher did not connect: {answer}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is None:
            return
        try:
            if self._proc.poll() is None:
                self.request({"cmd": "quit"})
            self._proc.wait(30)
        except (OSError, subprocess.TimeoutExpired, SystemExit):
            self._proc.kill()
            self._proc.wait()

    def request(self, command: dict) -> dict:
        assert self._proc is not None and self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise SystemExit(f"publisher process ended (exit {self._proc.wait()})")
        return json.loads(line)

    def start(self, rate_hz: float, seq_base: int) -> None:
        self.request({"cmd": "start", "rate": rate_hz, "seq_base": seq_base})

    def stop(self) -> dict:
        return self.request({"cmd": "stop"})

    def burst(self, per_device: int, seq_base: int) -> dict:
        return self.request({"cmd": "burst", "per_device": per_device, "seq_base": seq_base})


class _Fleet:
    """The publisher process's side: one paho client (own credential, own connection, own network
    thread) per device, and one scheduling thread that publishes on time."""

    def __init__(self, job: dict) -> None:
        self.cond = threading.Condition()
        self.published = self.acked = self.refused = self.send_errors = 0
        self.clients: list[tuple[mqtt.Client, str]] = []
        self._connected = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for index, (username, password, prefix) in enumerate(job["creds"]):
            client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=username,
                protocol=mqtt.MQTTv5,
                userdata=index,
            )
            client.username_pw_set(username, password)
            client.tls_set(ca_certs=job["ca"], cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            client.max_inflight_messages_set(200)
            client.on_connect = self._on_connect
            client.on_publish = self._on_publish
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 0  # a device that only publishes needs no session
            client.connect(job["host"], job["port"], keepalive=30, clean_start=True, properties=properties)
            client.loop_start()
            self.clients.append((client, f"{prefix}/telemetry"))
        with self.cond:
            self.cond.wait_for(lambda: self._connected >= len(self.clients), 60)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self.cond:
            if not reason_code.is_failure:
                self._connected += 1
            self.cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self.cond:
            if reason_code.is_failure:
                self.refused += 1
            else:
                self.acked += 1
            self.cond.notify_all()

    @property
    def ready(self) -> bool:
        return self._connected >= len(self.clients)

    def reset(self) -> None:
        with self.cond:
            self.published = self.acked = self.refused = self.send_errors = 0

    def publish(self, index: int, seq: int, rng: random.Random) -> None:
        client, topic = self.clients[index]
        payload = json.dumps(
            {
                "ts": int(time.time() * 1000),
                "seq": seq,
                "metrics": {"temp": round(20 + rng.gauss(0, 2), 2), "rpm": rng.randint(900, 1500)},
            },
            separators=(",", ":"),
        )
        with self.cond:
            self.published += 1
        info = client.publish(topic, payload, qos=1)
        # NO_CONN: paho keeps a QoS 1 message and sends it once reconnected.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            with self.cond:
                self.published -= 1
                self.send_errors += 1

    def start(self, rate: float, seq_base: int) -> None:
        self.reset()
        self._stop.clear()
        self._thread = threading.Thread(target=self._schedule, args=(rate, seq_base), daemon=True)
        self._thread.start()

    def _schedule(self, rate: float, seq_base: int) -> None:
        """Device i publishes its k-th reading at start + phase_i + k / rate, +- JITTER of a period."""
        rng = random.Random(seq_base)
        period = 1.0 / rate
        start = time.monotonic()
        phases = [rng.uniform(0, period) for _ in self.clients]
        due = [(start + phases[i], i, 0) for i in range(len(self.clients))]
        heapq.heapify(due)
        while True:
            at, index, k = due[0]
            wait = at - time.monotonic()
            if wait > 0:
                if self._stop.wait(wait):
                    return
                continue
            if self._stop.is_set():
                return
            heapq.heapreplace(
                due, (start + phases[index] + (k + 1) * period + rng.uniform(-JITTER, JITTER) * period, index, k + 1)
            )
            self.publish(index, seq_base + k, rng)

    def stop(self, timeout: float = 60) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.settle(timeout)

    def settle(self, timeout: float) -> dict:
        """Waits for every PUBACK; returns the counts since the last reset."""
        with self.cond:
            self.cond.wait_for(lambda: self.acked + self.refused >= self.published, timeout)
            return {
                "published": self.published,
                "acked": self.acked,
                "refused": self.refused,
                "send_errors": self.send_errors,
                "unacked": self.published - self.acked - self.refused,
            }

    def burst(self, per_device: int, seq_base: int) -> dict:
        self.reset()
        rng = random.Random(seq_base)
        started = time.monotonic()
        for k in range(per_device):
            for index in range(len(self.clients)):
                with self.cond:  # bounded in flight: paho's queues stay small
                    self.cond.wait_for(lambda: self.published - self.acked - self.refused < 2000, 60)
                self.publish(index, seq_base + k, rng)
        counts = self.settle(120)
        counts["elapsed_s"] = time.monotonic() - started
        return counts

    def close(self) -> None:
        for client, _ in self.clients:
            client.disconnect()
            client.loop_stop()


def _publish_worker() -> None:
    fleet = _Fleet(json.loads(sys.stdin.readline()))

    def answer(data: dict) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    answer({"ready": fleet.ready})
    for line in sys.stdin:
        command = json.loads(line)
        what = command["cmd"]
        if what == "start":
            fleet.start(command["rate"], command["seq_base"])
            answer({"ok": True})
        elif what == "stop":
            answer(fleet.stop())
        elif what == "burst":
            answer(fleet.burst(command["per_device"], command["seq_base"]))
        elif what == "quit":
            fleet.close()
            answer({"ok": True})
            return


# -- measurements ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def billed_s(run_s: float) -> float:
    if math.isnan(run_s):
        return math.nan
    return max(BILL_MIN_S, math.ceil(run_s / BILL_STEP_S - 1e-9) * BILL_STEP_S)


def gb_s_month(cadence: float, seconds: float, memory_mb: int) -> float:
    return MONTH_S / cadence * seconds * memory_mb / 1024


def dollars_beyond_grant(gb_s: float) -> float:
    return max(0.0, gb_s - FREE_GRANT_GB_S) * PRICE_PER_GB_S


class _MarkerProbe:
    """Notes when a run's end-of-backlog marker comes back, from outside the drain: installed as a
    data descriptor for DrainConnection.caught_up (which the drain sets to True once, when its
    marker returns), it records the time and how many PUBLISH packets the lean parser had read by
    then (the marker included). Nothing runs per message; without the fast path the count is 0."""

    def __init__(self) -> None:
        self.events: list[tuple[float, int]] = []

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return obj.__dict__.get("_bench_caught_up", False)

    def __set__(self, obj, value) -> None:
        if value and not obj.__dict__.get("_bench_caught_up", False):
            self.events.append((time.monotonic(), obj.fast_path_messages))
        obj.__dict__["_bench_caught_up"] = value

    @contextmanager
    def installed(self):
        from shared.ingest.transport import DrainConnection

        if "caught_up" in vars(DrainConnection):
            raise RuntimeError("DrainConnection.caught_up is a class attribute now; the probe needs a look")
        DrainConnection.caught_up = self
        try:
            yield self
        finally:
            del DrainConnection.caught_up


def _timed_run(settings, probe: _MarkerProbe):
    """drain_once, plus when its marker came back (s from the start) and the messages read before it."""
    from shared.ingest.drain import drain_once

    probe.events.clear()
    started = time.monotonic()
    report = drain_once(settings)
    if not probe.events:
        return report, math.nan, math.nan
    at, read = probe.events[0]
    return report, at - started, (read - 1 if read else math.nan)


@dataclass
class Fixed:
    idle_runs: list[float] = field(default_factory=list)
    idle_setup: list[float] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)


STEPS = (
    ("pg", "PostgreSQL connect + advisory lock + staging table"),
    ("partitions", "ensure telemetry partitions"),
    ("start_run", "ingest_runs row (start)"),
    ("tls", "TCP connect + TLS handshake (paho connect())"),
    ("connack", "MQTT CONNECT -> CONNACK"),
    ("suback", "SUBSCRIBE -> SUBACK"),
    ("marker", "marker publish -> marker back (empty queue)"),
    ("disconnect", "flush, DISCONNECT, read until the broker closes"),
    ("finish", "ingest_runs row (finish) + close"),
)


def _fixed_cost(bench: Bench, repeats: int) -> Fixed:
    """Idle runs (nothing queued, fleet connected and quiet), and the same steps timed from outside."""
    from shared.ingest.drain import drain_once

    settings = bench.settings(INGEST_TIME_BUDGET_S=_budget(60))
    fixed = Fixed()
    drain_once(settings)  # warm-up: first connections, partitions created, caches
    for _ in range(repeats):
        report = drain_once(settings)
        fixed.idle_runs.append(report.duration_s)
        fixed.idle_setup.append(report.setup_s)
        time.sleep(0.5)
        try:
            for name, seconds in _timed_steps(settings).items():
                fixed.steps.setdefault(name, []).append(seconds)
        except Exception as exc:  # noqa: BLE001 - a breakdown is a bonus; the runs are the figures
            print(f"step timing unavailable: {type(exc).__name__}: {exc}", flush=True)
            fixed.steps.clear()
            break
        time.sleep(0.5)
    return fixed


@contextmanager
def _patched(owner, name: str, wrapper):
    original = getattr(owner, name)
    setattr(owner, name, wrapper(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def _timed_steps(settings) -> dict[str, float]:
    """What drain_once does before and after its loop, step by step, on an empty queue. Calls the
    drain's own pieces (shared.ingest.store.IngestStore, shared.ingest.transport.DrainConnection) and
    notes the time at paho's connect() returning, at CONNACK and at SUBACK by wrapping them in
    this process only; nothing in shared/ changes."""
    from shared.ingest import transport
    from shared.ingest.messages import BatchOutcome
    from shared.ingest.store import IngestStore

    marks: dict[str, float] = {}

    def mark_after(name):
        def wrapper(original):
            def wrapped(*args, **kwargs):
                result = original(*args, **kwargs)
                marks.setdefault(name, time.perf_counter())
                return result

            return wrapped

        return wrapper

    url = settings.ingest_database_url.get_secret_value()
    times: dict[str, float] = {}
    t = time.perf_counter()
    store = IngestStore(url)
    if not store.connect():
        raise RuntimeError("the drain lock is held")
    times["pg"] = time.perf_counter() - t
    try:
        t = time.perf_counter()
        store.ensure_partitions(settings.ingest_max_past_days + 1)
        times["partitions"] = time.perf_counter() - t
        t = time.perf_counter()
        run_id = store.start_run()
        times["start_run"] = time.perf_counter() - t
        Connection = transport.DrainConnection
        t = time.perf_counter()
        with (
            _patched(transport, "_connect_with_retry", mark_after("tls")),
            _patched(Connection, "_on_connect", mark_after("connack")),
            _patched(Connection, "_on_subscribe", mark_after("suback")),
        ):
            connection = Connection(settings)
        done = time.perf_counter()
        times["tls"] = marks["tls"] - t
        times["connack"] = marks["connack"] - marks["tls"]
        times["suback"] = done - marks["connack"]
        t = time.perf_counter()
        connection.publish_marker()
        deadline = time.monotonic() + 10
        while not connection.caught_up and not connection.lost and time.monotonic() < deadline:
            connection.pump(0.05)
        if not connection.caught_up:
            raise RuntimeError("the marker did not come back within 10 s")
        times["marker"] = time.perf_counter() - t
        if connection.received:
            raise RuntimeError("messages arrived while timing an idle run")
        connection.ack_control()
        t = time.perf_counter()
        connection.disconnect_and_read_rest()
        times["disconnect"] = time.perf_counter() - t
        t = time.perf_counter()
        store.finish_run(run_id, "ok", BatchOutcome(), 0, None)
    finally:
        store.close()
    times["finish"] = time.perf_counter() - t
    return times


def _print_fixed(fixed: Fixed) -> None:
    med = statistics.median
    print(f"fixed cost of a run (nothing queued, fleet connected and quiet; medians of {len(fixed.idle_runs)}):")
    print(
        f"  drain_once duration_s   {med(fixed.idle_runs):.3f} s (min {min(fixed.idle_runs):.3f}, "
        f"max {max(fixed.idle_runs):.3f}); its setup_s (lock, partitions, connect, TLS, subscribe) "
        f"{med(fixed.idle_setup):.3f} s"
    )
    if fixed.steps:
        print("  the same steps timed from outside:")
        total = 0.0
        for name, label in STEPS:
            value = med(fixed.steps[name])
            total += value
            print(f"    {label:<52} {value * 1000:8.1f} ms")
        print(f"    {'sum':<52} {total * 1000:8.1f} ms")
    print(flush=True)


def _throughput(bench: Bench, fleet: Publishers, messages: int, fixed_setup_s: float) -> float:
    """Messages per second a run stores once its backlog is there: a burst queued, one run, its
    time to the last commit less an idle run's setup. (Not less this run's own setup_s: with a
    backlog queued the broker streams it right after CONNACK, so the SUBACK that ends setup_s
    queues behind thousands of messages, and setup_s already holds part of the storing.)"""
    from shared.ingest.drain import drain_once

    if messages <= 0:
        return math.nan
    per_device = max(1, messages // len(bench.creds))
    counts = fleet.burst(per_device, seq_base=1_000_000)
    report = drain_once(bench.settings(INGEST_TIME_BUDGET_S=600))
    store_s = report.active_s - fixed_setup_s
    rate = report.outcome.messages / store_s if store_s > 0 else math.nan
    print(
        f"throughput: {counts['acked']} messages queued ({counts['elapsed_s']:.1f} s to publish), one run "
        f"took {report.duration_s:.2f} s (its setup_s {report.setup_s:.3f} s, last commit at "
        f"{report.active_s:.2f} s, ended_by {report.ended_by}): {rate:,.0f} msg/s stored beyond an idle "
        f"run's setup ({fixed_setup_s:.3f} s)",
        flush=True,
    )
    print(flush=True)
    return rate


@dataclass
class Row:
    fleet: str
    rate: float
    cadence: int
    budget: float
    runs: int
    msgs_p50: float
    run_p50: float
    run_p95: float
    setup_p50: float
    marker_p50: float
    late_p50: float
    ideal_s: float
    lag_p50: float
    lag_p95: float
    lag_n: int
    ended_by: str
    published: int
    lost: int
    duplicates: int

    def gb_s(self, memory_mb: int, which: str = "p50") -> float:
        run = self.run_p50 if which == "p50" else self.run_p95
        return gb_s_month(self.cadence, billed_s(run), memory_mb)

    COLUMNS = (
        "fleet    cad_s bud_s runs msg/run run_p50 run_p95 setup mark_s  late ideal_s lag_p50 lag_p95 "
        "GBs/mo@512 p50/p95  GBs/mo@2048 p50/p95  $/mo>grant 512|2048 (p95)  ended_by        pub/lost/dup"
    )

    @classmethod
    def header(cls) -> str:
        return cls.COLUMNS

    def line(self) -> str:
        def s(value: float, width: int, digits: int = 2) -> str:
            return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}.{digits}f}"

        g512, g512_95 = self.gb_s(512), self.gb_s(512, "p95")
        g2048, g2048_95 = self.gb_s(2048), self.gb_s(2048, "p95")
        dollars = (
            f"{dollars_beyond_grant(g512):.2f}|{dollars_beyond_grant(g2048):.2f} "
            f"({dollars_beyond_grant(g512_95):.2f}|{dollars_beyond_grant(g2048_95):.2f})"
        )
        return (
            f"{self.fleet:<8} {self.cadence:>5} {self.budget:>5g} {self.runs:>4} {self.msgs_p50:>7.0f} "
            f"{s(self.run_p50, 7, 3)} {s(self.run_p95, 7, 3)} {s(self.setup_p50, 5)} {s(self.marker_p50, 6)} "
            f"{s(self.late_p50, 5, 0)} {s(self.ideal_s, 7, 3)} {s(self.lag_p50, 7, 1)} {s(self.lag_p95, 7, 1)} "
            f"{g512:>9,.0f}/{g512_95:<9,.0f} {g2048:>9,.0f}/{g2048_95:<10,.0f} {dollars:<26} "
            f"{self.ended_by:<15} {self.published}/{self.lost}/{self.duplicates}"
        )


def _scenario(
    bench: Bench,
    fleet: Publishers,
    probe: _MarkerProbe,
    name: str,
    rate: float,
    cadence: int,
    runs: int,
    seq_base: int,
    fixed_s: float,
    throughput: float,
) -> Row:
    import psycopg

    from shared.ingest.drain import drain_once

    budget = _budget(cadence)
    settings = bench.settings(INGEST_TIME_BUDGET_S=budget)
    if rate:
        fleet.start(rate, seq_base)
    origin = time.monotonic()
    reports = []
    marker_at: list[float] = []
    backlog: list[float] = []
    failures: list[str] = []
    last_start_wall = time.time()
    tick = 1
    for _ in range(runs):
        # The timer: the next grid point after the previous start; a late run starts at once.
        wait = origin + tick * cadence - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        last_start_wall = time.time()
        started = time.monotonic()
        report, at, before = _timed_run(settings, probe)
        reports.append(report)
        marker_at.append(at)
        backlog.append(before)
        if report.status != "ok":
            failures.append(f"timed run {len(reports)}: {report.status} ({report.ended_by}) {report.error}")
        tick = max(tick + 1, math.floor((started - origin) / cadence) + 1)
    counts = fleet.stop() if rate else {"acked": 0, "published": 0, "refused": 0, "unacked": 0, "send_errors": 0}
    catch_up = bench.settings(INGEST_TIME_BUDGET_S=600)
    for _ in range(5):
        report = drain_once(catch_up)
        if report.status != "ok":
            failures.append(f"catch-up run: {report.status} ({report.ended_by}) {report.error}")
        if report.outcome.messages == 0 and report.ended_by == "caught_up":
            break
    with psycopg.connect(bench.admin_dsn) as conn:
        window = "tenant_id = %(tenant)s AND seq >= %(lo)s AND seq < %(hi)s"
        params = {"tenant": bench.tenant_id, "lo": seq_base, "hi": seq_base + 10_000_000, "before": last_start_wall}
        rows, distinct = conn.execute(
            f"SELECT count(*), count(DISTINCT (device_id, seq, metric)) FROM telemetry WHERE {window}", params
        ).fetchone()
        lag_p50, lag_p95, lag_n = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM received_at - ts)), "
            "       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM received_at - ts)), count(*) "
            f"FROM telemetry WHERE {window} AND metric = 'temp' AND ts < to_timestamp(%(before)s)",
            params,
        ).fetchone()
    expected = counts["acked"] * METRICS
    ended = {}
    for report in reports:
        ended[report.ended_by] = ended.get(report.ended_by, 0) + 1
    durations = [r.duration_s for r in reports]
    messages = [r.outcome.messages for r in reports]
    msgs_p50 = percentile(messages, 0.5)
    backlog_p50 = percentile([b for b in backlog if not math.isnan(b)], 0.5)
    late = [m - b for m, b in zip(messages, backlog, strict=True) if not math.isnan(b)]
    if failures or counts["unacked"] or counts["refused"] or counts["send_errors"]:
        print(f"  note: failed runs {failures}; publisher counts {counts}", flush=True)
    return Row(
        fleet=name,
        rate=rate,
        cadence=cadence,
        budget=budget,
        runs=len(reports),
        msgs_p50=msgs_p50,
        run_p50=percentile(durations, 0.5),
        run_p95=percentile(durations, 0.95),
        setup_p50=percentile([r.setup_s for r in reports], 0.5),
        marker_p50=percentile([a for a in marker_at if not math.isnan(a)], 0.5),
        late_p50=percentile(late, 0.5),
        ideal_s=fixed_s + (backlog_p50 if not math.isnan(backlog_p50) else msgs_p50) / throughput,
        lag_p50=float(lag_p50) if lag_p50 is not None else math.nan,
        lag_p95=float(lag_p95) if lag_p95 is not None else math.nan,
        lag_n=lag_n,
        ended_by=",".join(f"{k}:{v}" for k, v in sorted(ended.items(), key=str)),
        published=counts["acked"],
        lost=expected - distinct,
        duplicates=rows - distinct,
    )


def _print_notes(rows: list[Row], fixed: Fixed, args: argparse.Namespace) -> None:
    idle = statistics.median(fixed.idle_runs)
    print()
    print(
        "columns: cad_s cadence, bud_s INGEST_TIME_BUDGET_S, msg/run messages stored per timed run (p50); run_* "
        "DrainReport.duration_s; setup its setup_s (lock, partitions, connect, subscribe), p50; mark_s from the "
        "start to the marker's return (the backlog read), p50; late messages read after the marker and stored "
        "by the same run, p50; ideal_s the fixed cost (idle run) + the backlog at the measured throughput; "
        "lag_* received_at - ts in s; GBs/mo billed (>= 1 s, 0.1 s steps) x runs/month x memory from the p50 | "
        "p95 duration; "
        "$ beyond the 100,000 GB-s grant at $0.000026/GB-s from p50 (p95); pub/lost/dup messages PUBACKed, "
        "readings missing, readings stored twice."
    )
    floor = ", ".join(f"{c} s -> {gb_s_month(c, BILL_MIN_S, 2048):,.0f}" for c in args.cadences)
    print(
        f"baselines: fixed cost (idle run, p50) {idle:.3f} s; Flex Consumption bills at least "
        f"{BILL_MIN_S:g} s per run, so a run under {BILL_MIN_S:g} s costs what an idle one does: "
        f"GB-s/mo at 2,048 MB per cadence {floor}."
    )
    for row in rows:
        if row.lag_n == 0 and row.rate:
            print(f"  {row.fleet} at {row.cadence} s: no readings in the lag window")
    print(
        "unbilled view (duration as measured, no 1 s minimum), GB-s/mo at 2,048 MB from p50: "
        + "; ".join(f"{r.fleet}@{r.cadence}s {gb_s_month(r.cadence, r.run_p50, 2048):,.0f}" for r in rows)
    )
    total_lost = sum(r.lost for r in rows)
    total_dup = sum(r.duplicates for r in rows)
    print(
        f"integrity: {sum(r.published for r in rows)} messages PUBACKed in all, lost {total_lost}, "
        f"duplicates {total_dup}"
    )
    # Linux reports ru_maxrss in KiB. The publishers run in their own process, so this is the drain's
    # runs plus this script's bookkeeping: an upper bound for what a run needs beside the Functions host.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"peak RSS of the process running the drain: {peak_mb:.0f} MB (instance memory 512 MB / 2,048 MB "
        f"also holds the Functions host)"
    )


def _last_line(rows: list[Row], args: argparse.Namespace) -> str:
    candidates = [r for r in rows if r.rate == 0.1] or [r for r in rows if r.rate] or rows
    if not candidates:
        return "cost_bench no scenarios measured"
    row = min(candidates, key=lambda r: (abs(r.cadence - args.default_cadence), r.cadence))
    if row.cadence != args.default_cadence or row.rate != 0.1:
        print(
            f"note: the last line is for cadence {row.cadence} s, rate {row.rate:g} Hz (the default cadence "
            f"{args.default_cadence} s at 0.1 Hz was not measured)"
        )
    return (
        f"cost_bench cadence_s={row.cadence} devices={args.devices} rate_hz={row.rate:g} "
        f"run_s_p95={row.run_p95:.3f} lag_p95_s={row.lag_p95:.1f} gb_s_month_2048={row.gb_s(2048):.0f} "
        f"free_grant_gb_s={FREE_GRANT_GB_S}"
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--publish-worker"]:
        _publish_worker()
    else:
        main()
