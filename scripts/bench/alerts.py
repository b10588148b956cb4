#!/usr/bin/env python3
"""Benchmarks the alert evaluator: one set-based run over every tenant against a naive
per-device loop over the same rules.

    .venv/bin/python scripts/bench/alerts.py [--tenants 100] [--devices 10000] [--hours 24]

Starts a private PostgreSQL (with Mosquitto and Azurite, unused) in a temporary folder, makes
--tenants tenants sharing --devices devices, one 'temperature' reading per device and minute for
--hours hours (written as the owner, generate_series), a tenth of the devices silent for the last
hour, a seventh of them reading 1000 for the last three minutes, and per tenant 3 threshold rules
(avg/max/last over 10-60 minutes), 3 no-data rules and 3 anomaly rules (spans 30/60/120 buckets;
N = 1, so one run opens every event due). Two minutes in a row, each:
  eval    shared.alerts.evaluator.evaluate_rules as the app role (one statement per rule kind per tenant);
  naive   the same rules and the same algorithm, one query per (rule, device) as the app role, the
          comparison and the anomaly arithmetic (tests/support/anomaly.py evaluate_pair) in Python,
          in one transaction per tenant, right after the evaluation, at the evaluation's moment; it
          keeps its anomaly state in memory, so it is spared the writes.
The first minute seeds every anomaly baseline from history (a rule's first run: printed); the
second is every later minute (one new bucket per anomaly pair): its times are the last line's.
Both must find the same breaching (rule, device) pairs. The last line is machine-readable:
alerts_bench eval_s=<seconds> naive_s=<seconds> ratio=<naive/eval> events=<n>
"""

from __future__ import annotations

import argparse
import operator as op
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import psycopg  # noqa: E402

from localstack import LocalStack  # noqa: E402
from tests.support.anomaly import PairState, evaluate_pair  # noqa: E402

OPS = {">": op.gt, ">=": op.ge, "<": op.lt, "<=": op.le}
THRESHOLDS = [("avg", 600, ">", 60.0), ("max", 3600, ">", 99.5), ("last", 3600, "<", 2.0)]
NO_DATA_MINUTES = [10, 30, 60]
ANOMALY = [(30, 3.0), (60, 4.0), (120, 5.0)]
MINUTE = timedelta(minutes=1)  # (span = warm-up in buckets, sensitivity)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--hours", type=int, default=24)
    args = parser.parse_args()
    per_tenant = max(1, args.devices // args.tenants)
    with tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp, LocalStack(tmp) as stack:
        env = stack.create_app_database("bench") | {"AUTH_JWT_SECRET": uuid.uuid4().hex * 2}
        os.environ.update(env)
        owner_dsn = stack.postgres.superuser_dsn("bench")
        from shared.alerts.evaluator import ANOMALY_SETTLE_S, evaluate_rules
        from shared.core.db import get_pool, tenant_transaction

        started = time.monotonic()
        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO tenants (slug, name, plan) SELECT 'bench-' || g, 'Bench ' || g, 'industrial'"
                " FROM generate_series(1, %s) g",
                (args.tenants,),
            )
            conn.execute(
                "INSERT INTO devices (tenant_id, name) SELECT t.id, 'd-' || g FROM tenants t, generate_series(1, %s) g",
                (per_tenant,),
            )
            # one reading a minute; a tenth of the devices stop an hour ago
            conn.execute(
                "INSERT INTO telemetry (tenant_id, device_id, ts, metric, value)"
                " SELECT d.tenant_id, d.id, m, 'temperature', random() * 100"
                " FROM devices d, generate_series(date_trunc('minute', now()) - make_interval(hours => %s),"
                "                                 date_trunc('minute', now()), interval '1 minute') m"
                " WHERE d.id %% 10 <> 0 OR m < now() - interval '1 hour'",
                (args.hours,),
            )
            conn.execute(
                "UPDATE telemetry SET value = 1000 WHERE device_id % 7 = 0 AND ts > now() - interval '3 minutes'"
            )
            conn.execute(
                "UPDATE devices d SET status = 'online', last_seen = CASE WHEN d.id % 10 = 0"
                " THEN now() - interval '1 hour' ELSE date_trunc('minute', now()) END"
            )
            for aggregation, window_s, operator, value in THRESHOLDS:
                conn.execute(
                    "INSERT INTO alert_rules (tenant_id, name, kind, scope, metric, aggregation, window_s, operator,"
                    " value, clear_value) SELECT id, %s, 'threshold', 'all', 'temperature', %s, %s, %s, %s, %s"
                    " FROM tenants",
                    (f"{aggregation} {operator} {value}", aggregation, window_s, operator, value, value),
                )
            for minutes in NO_DATA_MINUTES:
                conn.execute(
                    "INSERT INTO alert_rules (tenant_id, name, kind, scope, no_data_minutes)"
                    " SELECT id, %s, 'no_data', 'all', %s FROM tenants",
                    (f"silent {minutes}m", minutes),
                )
            for span, sensitivity in ANOMALY:
                conn.execute(
                    "INSERT INTO alert_rules (tenant_id, name, kind, scope, metric, window_s, sensitivity,"
                    " baseline_buckets, warmup_buckets, clear_value) SELECT id, %s, 'anomaly', 'all',"
                    " 'temperature', 60, %s, %s, %s, %s FROM tenants",
                    (f"unusual {span}", sensitivity, span, span, sensitivity / 2),
                )
            conn.execute("VACUUM ANALYZE")
            readings = conn.execute("SELECT count(*) FROM telemetry").fetchone()[0]  # type: ignore[index]
            tenants = [str(row[0]) for row in conn.execute("SELECT id FROM tenants ORDER BY id")]
        print(
            f"setup: {args.tenants} tenants, {per_tenant * args.tenants} devices, {readings} readings, "
            f"{9 * args.tenants} rules in {time.monotonic() - started:.1f}s",
            flush=True,
        )

        pool = get_pool()
        pool.wait(30)

        # the naive loop's own anomaly state, kept between its runs like alert_rule_state (in memory: free)
        pairs: dict[tuple[str, int], tuple[PairState, datetime, bool]] = {}

        def naive(now: datetime) -> set[tuple[str, int]]:
            """The (rule, device) pairs breaching at `now`. `now` is the evaluation's: the naive loop takes
            longer than a minute, and its windows must be the evaluation's (readings sit on minute marks)."""
            fired: set[tuple[str, int]] = set()
            # the newest complete anomaly bucket ends ANOMALY_SETTLE_S before now, on a minute mark
            upto = datetime.fromtimestamp((now.timestamp() - ANOMALY_SETTLE_S) // 60 * 60, UTC)
            for tenant_id in tenants:
                with tenant_transaction(pool, tenant_id) as conn:
                    rules = conn.execute("SELECT * FROM alert_rules WHERE enabled").fetchall()
                    devices = conn.execute(
                        "SELECT id, status, last_seen, created_at FROM devices WHERE enabled"
                    ).fetchall()
                    for rule in rules:
                        for device in devices:
                            key = (str(rule["id"]), device["id"])
                            if rule["kind"] == "anomaly":
                                span = rule["baseline_buckets"]
                                state, since, breach = pairs.get(key, (None, upto - (span + 1) * MINUTE, False))
                                rows = conn.execute(
                                    "SELECT date_bin('1 minute', ts, timestamptz 'epoch') AS bucket, avg(value) AS x"
                                    " FROM telemetry WHERE tenant_id = %s AND device_id = %s AND metric = %s"
                                    " AND ts >= %s AND ts < %s AND value IS NOT NULL GROUP BY bucket ORDER BY bucket",
                                    (tenant_id, device["id"], rule["metric"], since, upto),
                                ).fetchall()
                                if rows:
                                    state, breach = evaluate_pair(
                                        state, [row["x"] for row in rows], span, span, rule["sensitivity"]
                                    )
                                    pairs[key] = (state, upto, breach)
                            elif rule["kind"] == "no_data":
                                seen = device["last_seen"] or device["created_at"]
                                breach = (
                                    device["status"] == "offline"
                                    or (now - seen).total_seconds() > 60 * rule["no_data_minutes"]
                                )
                            else:
                                rows = conn.execute(
                                    "SELECT value FROM telemetry WHERE tenant_id = %s AND device_id = %s"
                                    " AND metric = %s AND ts > %s - make_interval(secs => %s) AND ts <= %s"
                                    " AND value IS NOT NULL ORDER BY ts DESC, seq DESC",
                                    (tenant_id, device["id"], rule["metric"], now, rule["window_s"], now),
                                ).fetchall()
                                values = [row["value"] for row in rows]
                                agg = (
                                    None
                                    if not values
                                    else {
                                        "avg": lambda v: sum(v) / len(v),
                                        "min": min,
                                        "max": max,
                                        "last": lambda v: v[0],
                                        "count": len,
                                    }[rule["aggregation"]](values)
                                )
                                breach = agg is not None and OPS[rule["operator"]](agg, rule["value"])
                            if breach:
                                fired.add(key)
            return fired

        def one_minute_of_both() -> tuple[float, float, bool, int]:
            time.sleep(60.5 - time.time() % 60)
            with pool.connection() as clock:
                eval_now = clock.execute("SELECT now() AS now").fetchone()["now"]  # type: ignore[index]
            started = time.monotonic()
            report = evaluate_rules(pool)
            eval_s = time.monotonic() - started
            started = time.monotonic()
            expected = naive(eval_now)
            naive_s = time.monotonic() - started
            with psycopg.connect(owner_dsn) as conn:
                got = {
                    (str(r), int(d))
                    for r, d in conn.execute("SELECT rule_id, device_id FROM alert_rule_state WHERE breaches > 0")
                }
                events = conn.execute("SELECT count(*) FROM alert_events").fetchone()[0]  # type: ignore[index]
            print(
                f"  evaluated={report.evaluated} opened={report.opened} resolved={report.resolved} "
                f"failed={len(report.failed)}; breaching pairs: eval {len(got)}, naive {len(expected)}, "
                f"same: {got == expected}",
                flush=True,
            )
            if got != expected:
                print(f"  differ: only eval {len(got - expected)}, only naive {len(expected - got)}", flush=True)
            return eval_s, naive_s, got == expected, int(events)

        seed_s, naive_seed_s, _, _ = one_minute_of_both()
        print(
            f"first run (anomaly baselines seeded from history): eval {seed_s:.3f}s, naive {naive_seed_s:.3f}s",
            flush=True,
        )
        eval_s, naive_s, same, events = one_minute_of_both()
        print(
            f"next minute (one new bucket per anomaly pair): eval {eval_s:.3f}s, naive {naive_s:.3f}s, same: {same}",
            flush=True,
        )
        print(f"alerts_bench eval_s={eval_s:.3f} naive_s={naive_s:.3f} ratio={naive_s / eval_s:.1f} events={events}")


if __name__ == "__main__":
    main()
