#!/usr/bin/env python3
"""Benchmarks GET /api/devices/{id}/series on a month of one-second data for one device.

    .venv/bin/python scripts/bench/series.py [--days 30] [--repeat 5] [--cold-repeat 3]

Starts a private PostgreSQL in a temporary folder (scripts/localstack, as bench/ingest.py does),
migrates a database and loads with COPY, in ts order as the drain writes: one device's metric
`temp` every second for --days days (30: 2,592,000 rows), the same device's `rpm` every 10 s,
--other-devices (3) other devices and another tenant's device every 10 s, each received 2 s after its
ts. Then VACUUM ANALYZE, the rollup job (shared.telemetry.rollups.roll_up as the maintenance role, timed) up
to now - ROLLUP_LAG_S, and for 1 h, 1 day, 7 days and 30 days ending at the newest reading, times
(median of --repeat, milliseconds):
  series   the endpoint's own read (shared.telemetry.reads.series_points, default cap 500 points): the
           rollups where complete (1 d: 5-minute buckets from the 1-minute rollups; 7 d and 30 d:
           30-minute and 2-hour buckets from the 1-minute and 1-hour ones; 1 h: 10 s buckets, raw),
           as the app role in tenant_transaction (RLS on);
  raw      the same buckets from raw alone (series_buckets), as before the rollups;
  api      the whole request through the registered `api` function (token check, user re-read,
           device check, query, JSON);
  naive    the same rows without bucketing: every raw (ts, value) fetched into Python;
  count    the true limit of reading the range: an index-only count(*) over it;
  cold     the series query on a fresh connection right after a PostgreSQL restart (empty shared
           buffers; the OS page cache is dropped too when this process may, else it stays warm:
           printed), median of --cold-repeat.
It prints each range's plan in one line (partitions kept, how each is read: the dedup index
telemetry_dedup's per-partition copy, or a sequential scan where the device's metric is most of
a partition) and, last, one machine-readable line:
series_bench month_rows=<n> p50_ms_30d=<n> p50_ms_1d=<n> naive_ms_30d=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from localstack import PostgresServer  # noqa: E402
from shared.accounts.passwords import hash_password  # noqa: E402
from shared.accounts.tokens import Principal  # noqa: E402
from shared.core.db import create_pool, tenant_transaction  # noqa: E402
from shared.core.migrate import apply_migrations  # noqa: E402
from shared.core.settings import settings_from  # noqa: E402
from shared.telemetry import reads, rollups  # noqa: E402
from shared.telemetry.retention import maintenance_connection  # noqa: E402

RANGES = {"1h": timedelta(hours=1), "1d": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}
DB = "bench_series"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cold-repeat", type=int, default=3)
    parser.add_argument(
        "--rollup-chunk-s",
        type=int,
        default=86400,
        help="the rollup's chunk (ROLLUP_CHUNK_S is 900 in the app; larger loads faster here)",
    )
    parser.add_argument(
        "--other-devices",
        type=int,
        default=3,
        help="the tenant's other devices, one metric every 10 s each (a fleet: try 49)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-series-") as tmp:
        server = PostgresServer(Path(tmp) / "postgres")
        server.start()
        try:
            run(server, args)
        finally:
            server.stop()


def run(server: PostgresServer, args: argparse.Namespace) -> None:
    env = create_database(server)
    settings = settings_from(env)
    pool = create_pool(settings)
    owner_dsn = server.superuser_dsn(DB)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=args.days)
    tenant_id, device_id, user_id = create_tenant_and_device(owner_dsn)
    t = time.perf_counter()
    rows = load(owner_dsn, tenant_id, device_id, start, end, args.other_devices)
    print(
        f"loaded {rows['month']:,} rows of one metric at 1 s (+{rows['other']:,} other rows) with COPY "
        f"in {time.perf_counter() - t:.1f} s; VACUUM ANALYZE done"
    )
    t = time.perf_counter()
    with maintenance_connection(settings, "bench_rollup") as conn:
        report = rollups.roll_up(
            conn,
            lag_s=settings.rollup_lag_s,
            chunk_s=args.rollup_chunk_s,
            max_past_days=settings.ingest_max_past_days,
            time_budget_s=3600,
        )
    print(
        f"rollup: {report.chunks} chunks of {args.rollup_chunk_s} s, {report.minute_buckets:,} minute and "
        f"{report.hour_buckets:,} hour buckets in {time.perf_counter() - t:.1f} s; watermark {report.watermark}"
    )
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE telemetry_rollup_1m")
        conn.execute("VACUUM ANALYZE telemetry_rollup_1h")
    principal = Principal(user_id=user_id, tenant_id=tenant_id)
    api_call = api_caller(env, user_id, tenant_id)

    figures: dict[str, dict[str, float]] = {}
    for label, span in RANGES.items():
        frm = end - span
        width = reads.bucket_width_s(span, reads.SERIES_DEFAULT_POINTS)
        points = len(series_query(pool, principal, device_id, frm, end, width))
        explain(pool, principal, device_id, frm, end, label)
        figures[label] = {
            "series": median_ms(
                lambda f=frm, w=width: series_query(pool, principal, device_id, f, end, w), args.repeat
            ),
            "raw": median_ms(lambda f=frm, w=width: raw_query(pool, principal, device_id, f, end, w), args.repeat),
            "api": median_ms(lambda f=frm: api_call(device_id, f, end), args.repeat),
            "naive": median_ms(lambda f=frm: naive_query(pool, tenant_id, device_id, f, end), max(1, args.repeat // 2)),
            "count": median_ms(lambda f=frm: count_query(pool, tenant_id, device_id, f, end), args.repeat),
        }
        check_equal(
            series_query(pool, principal, device_id, frm, end, width),
            raw_query(pool, principal, device_id, frm, end, width),
            label,
        )
        print(
            f"{label:>4}: bucket {width:>5} s, {points:>4} points | series {figures[label]['series']:8.1f} ms | "
            f"raw only {figures[label]['raw']:8.1f} ms | "
            f"api {figures[label]['api']:8.1f} ms | naive (all raw rows) {figures[label]['naive']:8.1f} ms | "
            f"index-only count {figures[label]['count']:8.1f} ms"
        )
    lagging = {}
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute("UPDATE rollup_state SET watermark = watermark - interval '1 day'")
    for label in ("7d", "30d"):
        frm = end - RANGES[label]
        width = reads.bucket_width_s(RANGES[label], reads.SERIES_DEFAULT_POINTS)
        check_equal(
            series_query(pool, principal, device_id, frm, end, width),
            raw_query(pool, principal, device_id, frm, end, width),
            label,
        )
        lagging[label] = median_ms(
            lambda f=frm, w=width: series_query(pool, principal, device_id, f, end, w), args.repeat
        )
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute("UPDATE rollup_state SET watermark = watermark + interval '1 day'")
    print(
        "rollup watermark a day behind (the last day from raw, the rest from rollups): "
        + ", ".join(f"{label} series {ms:.1f} ms" for label, ms in lagging.items())
    )
    pool.close()

    dropped = can_drop_page_cache()
    cache = "dropped" if dropped else "NOT dropped (no permission): the OS cache stays warm"
    print(f"cold: PostgreSQL restarted before each run; OS page cache {cache}")
    for label, span in RANGES.items():
        times = []
        for _ in range(args.cold_repeat):
            server.stop()
            if dropped:
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
            server.start()
            times.append(cold_series_ms(env, principal, device_id, end - span, end, span))
        figures[label]["cold"] = statistics.median(times)
        print(f"{label:>4}: cold series {figures[label]['cold']:8.1f} ms (median of {len(times)})")

    print(
        "rollups vs raw (series, ms): "
        + ", ".join(f"{label} {figures[label]['series']:.1f} vs {figures[label]['raw']:.1f}" for label in RANGES)
    )
    print(
        f"series_bench month_rows={rows['month']} p50_ms_30d={figures['30d']['series']:.0f} "
        f"p50_ms_1d={figures['1d']['series']:.0f} naive_ms_30d={figures['30d']['naive']:.0f}"
    )


def create_database(server: PostgresServer) -> dict[str, str]:
    with psycopg.connect(server.superuser_dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
    apply_migrations(server.superuser_dsn(DB))
    passwords = {role: secrets.token_hex(16) for role in ("mqtt_saas_app", "mqtt_saas_ingest", "mqtt_saas_maintenance")}
    with psycopg.connect(server.superuser_dsn(), autocommit=True) as conn:
        for role, password in passwords.items():
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    where = f"@{server.host}:{server.port}/{DB}"
    return {
        "DATABASE_URL": f"postgresql://mqtt_saas_app:{passwords['mqtt_saas_app']}{where}",
        "INGEST_DATABASE_URL": f"postgresql://mqtt_saas_ingest:{passwords['mqtt_saas_ingest']}{where}",
        "MAINTENANCE_DATABASE_URL": f"postgresql://mqtt_saas_maintenance:{passwords['mqtt_saas_maintenance']}{where}",
        "AUTH_JWT_SECRET": secrets.token_hex(32),
    }


def create_tenant_and_device(owner_dsn: str) -> tuple[uuid.UUID, int, uuid.UUID]:
    with psycopg.connect(owner_dsn) as conn:
        tenant_id = uuid.uuid4()
        conn.execute(
            "INSERT INTO tenants (id, slug, name, plan) VALUES (%s, 'bench', 'Bench', 'industrial')", (tenant_id,)
        )
        device_id = conn.execute(
            "INSERT INTO devices (tenant_id, name) VALUES (%s, 'press-01') RETURNING id", (tenant_id,)
        ).fetchone()[0]  # type: ignore[index]
        user_id = conn.execute(
            "INSERT INTO users (tenant_id, email, role, password_hash) "
            "VALUES (%s, 'owner@bench.example', 'owner', %s) RETURNING id",
            (tenant_id, hash_password(secrets.token_hex(8))),
        ).fetchone()[0]  # type: ignore[index]
    return tenant_id, device_id, user_id


def load(
    owner_dsn: str, tenant_id: uuid.UUID, device_id: int, start: datetime, end: datetime, other_devices: int
) -> dict[str, int]:
    """COPY as the owner, in ts order; partitions for the days first (the migration made the last 31)."""
    seconds = int((end - start).total_seconds())
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute("SELECT ensure_telemetry_partitions(%s::date, %s::date)", (start.date(), end.date()))
        other_tenant = uuid.uuid4()
        conn.execute("INSERT INTO tenants (id, slug, name) VALUES (%s, 'other', 'Other')", (other_tenant,))
        others = [
            (
                tenant_id,
                conn.execute(
                    "INSERT INTO devices (tenant_id, name) VALUES (%s, %s) RETURNING id", (tenant_id, f"m-{i}")
                ).fetchone()[0],
            )
            for i in range(other_devices)
        ]  # type: ignore[index]
        others.append(
            (
                other_tenant,
                conn.execute(
                    "INSERT INTO devices (tenant_id, name) VALUES (%s, 'x') RETURNING id", (other_tenant,)
                ).fetchone()[0],
            )
        )  # type: ignore[index]
        epoch_us = int(start.timestamp()) * 1_000_000
        counts = {"month": 0, "other": 0}
        with (
            conn.cursor() as cur,
            cur.copy("COPY telemetry (tenant_id, device_id, metric, ts, seq, value, received_at) FROM STDIN") as copy,
        ):
            for chunk_start in range(0, seconds, 3600):
                lines = []
                for s in range(chunk_start, min(seconds, chunk_start + 3600)):
                    ts = _ts_text(epoch_us + s * 1_000_000)
                    rcv = _ts_text(epoch_us + (s + 2) * 1_000_000)
                    lines.append(f"{tenant_id}\t{device_id}\ttemp\t{ts}\t0\t{20 + (s % 600) / 60:.3f}\t{rcv}\n")
                    counts["month"] += 1
                    if s % 10 == 0:
                        lines.append(f"{tenant_id}\t{device_id}\trpm\t{ts}\t0\t{1000 + s % 97}\t{rcv}\n")
                        for tenant, other in others:
                            lines.append(f"{tenant}\t{other}\ttemp\t{ts}\t0\t{s % 50}\t{rcv}\n")
                        counts["other"] += 1 + len(others)
                copy.write("".join(lines))
        conn.execute(
            "INSERT INTO device_metrics (tenant_id, device_id, metric, last_ts, last_value) "
            "VALUES (%s, %s, 'temp', %s, 21)",
            (tenant_id, device_id, end),
        )
        conn.execute("VACUUM ANALYZE telemetry")
    return counts


def _ts_text(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).strftime("%Y-%m-%d %H:%M:%S+00")


def series_query(pool, principal: Principal, device_id: int, frm: datetime, to: datetime, width: int) -> list:
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        return reads.series_points(conn, principal, device_id, "temp", frm, to, width)


def check_equal(got: list, raw: list, label: str) -> None:
    """Same buckets, counts, min and max; avg to rounding (sum/count against avg())."""
    same = len(got) == len(raw) and all(
        (g["ts"], g["count"], g["min"], g["max"]) == (r["ts"], r["count"], r["min"], r["max"])
        and abs(g["avg"] - r["avg"]) <= 1e-9 * max(1.0, abs(r["avg"]))
        for g, r in zip(got, raw, strict=True)
    )
    if not same:
        raise SystemExit(f"{label}: the series read and raw disagree")


def raw_query(pool, principal: Principal, device_id: int, frm: datetime, to: datetime, width: int) -> list:
    from shared.core.sql import QUERIES

    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        return conn.execute(
            QUERIES["series_buckets"],
            {
                "tenant_id": principal.tenant_id,
                "device_id": device_id,
                "metric": "temp",
                "from": frm,
                "to": to,
                "bucket": timedelta(seconds=width),
            },
        ).fetchall()


NAIVE = (
    "SELECT ts, value FROM telemetry WHERE tenant_id = %s AND device_id = %s AND metric = 'temp' "
    "AND ts >= %s AND ts < %s ORDER BY ts"
)
COUNT = (
    "SELECT count(*) FROM telemetry WHERE tenant_id = %s AND device_id = %s AND metric = 'temp' "
    "AND ts >= %s AND ts < %s"
)


def naive_query(pool, tenant_id: uuid.UUID, device_id: int, frm: datetime, to: datetime) -> int:
    with tenant_transaction(pool, str(tenant_id)) as conn:
        return len(conn.execute(NAIVE, (tenant_id, device_id, frm, to)).fetchall())


def count_query(pool, tenant_id: uuid.UUID, device_id: int, frm: datetime, to: datetime) -> int:
    with tenant_transaction(pool, str(tenant_id)) as conn:
        row = conn.execute(COUNT, (tenant_id, device_id, frm, to)).fetchone()
        return int(row["count"]) if row else 0


def explain(pool, principal: Principal, device_id: int, frm: datetime, to: datetime, label: str) -> None:
    """One line per range: how many partitions the plan kept and how it reads each; the whole plan
    with BENCH_SERIES_PLAN=1."""
    from shared.core.sql import QUERIES

    params = {
        "tenant_id": principal.tenant_id,
        "device_id": device_id,
        "metric": "temp",
        "from": frm,
        "to": to,
        "bucket": timedelta(seconds=reads.bucket_width_s(to - frm, reads.SERIES_DEFAULT_POINTS)),
    }
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        total = conn.execute(
            "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'telemetry'::regclass"
        ).fetchone()["n"]  # type: ignore[index]
        plan = [
            r["QUERY PLAN"]
            for r in conn.execute(
                b"EXPLAIN (ANALYZE, BUFFERS) " + QUERIES["series_buckets"].encode(), params
            ).fetchall()
        ]  # type: ignore[arg-type]
        count_plan = [
            r["QUERY PLAN"]
            for r in conn.execute("EXPLAIN " + COUNT, (principal.tenant_id, device_id, frm, to)).fetchall()
        ]  # type: ignore[arg-type]
    scans = [line for line in plan if re.search(r"Scan (?:using \S+ )?on telemetry_", line)]
    rollup_plan = explain_rollup_read(pool, principal, device_id, frm, to, params["bucket"])
    kinds = {
        kind: sum(kind + " " in line for line in scans)
        for kind in ("Index Only Scan", "Index Scan", "Bitmap Heap Scan", "Seq Scan")
    }
    indexes = sorted({m.group(1) for line in scans if (m := re.search(r"using (\S+)", line))})
    only = sum("Index Only Scan" in line for line in count_plan)
    print(
        f"{label:>4} plan: {len(scans)} of {total} partitions kept (pruning); "
        + ", ".join(f"{kind}: {n}" for kind, n in kinds.items() if n)
        + (f"; index {indexes[0]}{' ...' if len(indexes) > 1 else ''}" if indexes else "")
        + f"; count: Index Only Scan on {only} partitions"
    )
    if rollup_plan:
        nodes = [
            re.sub(r"\s*\(.*", "", line).strip(" ->")
            for line in rollup_plan
            if re.search(r"Scan (?:using \S+ )?on (telemetry|rollup)", line)
        ]
        counted: dict[str, int] = {}
        for node in nodes:
            key = re.sub(r"telemetry_(\d{8}|default)", "telemetry_<day>", re.sub(r" on (\S+) \S+$", r" on \1", node))
            counted[key] = counted.get(key, 0) + 1
        timing = next((line.strip() for line in rollup_plan if line.startswith("Execution Time")), "")
        print(
            f"{label:>4} rollup read plan: "
            + "; ".join(f"{n} x {k}" if n > 1 else k for k, n in counted.items())
            + f"; {timing}"
        )
    if os.environ.get("BENCH_SERIES_PLAN"):
        print("\n".join(plan + count_plan + rollup_plan))


def explain_rollup_read(
    pool, principal: Principal, device_id: int, frm: datetime, to: datetime, bucket: timedelta
) -> list[str]:
    """EXPLAIN ANALYZE of the rollup read the endpoint makes (none when raw answers)."""
    from psycopg import sql

    plan: list[str] = []

    class Explaining:
        def __init__(self, conn) -> None:
            self.conn = conn

        def execute(self, query, params=None):
            if isinstance(query, sql.Composed):  # the rollup read (the other statements are plain strings)
                plan.extend(
                    r["QUERY PLAN"] for r in self.conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + query, params)
                )
            return self.conn.execute(query, params)

    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        rollups.series_points(
            Explaining(conn),
            principal.tenant_id,
            device_id,
            "temp",
            frm,
            to,  # type: ignore[arg-type]
            int(bucket.total_seconds()),
        )
    return plan


def api_caller(env: dict[str, str], user_id: uuid.UUID, tenant_id: uuid.UUID) -> Callable[..., None]:
    """Requests through the app's registered `api` function, as the Functions host invokes it."""
    os.environ.update(env)
    import azure.functions as func

    from function_app import app
    from shared.accounts.auth import open_session
    from shared.core.db import get_pool
    from shared.core.settings import get_settings

    get_settings.cache_clear()
    token = open_session(get_pool(), get_settings(), user_id, tenant_id).access_token
    function = next(f for f in app.get_functions() if f.get_function_name() == "api").get_user_function()

    def call(device_id: int, frm: datetime, to: datetime) -> None:
        params = {"metric": "temp", "from": frm.strftime("%Y-%m-%dT%H:%M:%SZ"), "to": to.strftime("%Y-%m-%dT%H:%M:%SZ")}
        query = "&".join(f"{k}={v}" for k, v in params.items())
        path = f"devices/{device_id}/series"
        request = func.HttpRequest(
            "GET",
            f"http://localhost/api/{path}?{query}",
            headers={"Authorization": f"Bearer {token}"},
            params=params,
            route_params={"route": path},
            body=b"",
        )
        response = asyncio.run(function(request, None))
        if response.status_code != 200:
            raise RuntimeError(f"series answered {response.status_code}: {response.get_body()[:300]!r}")

    return call


def cold_series_ms(
    env: dict[str, str], principal: Principal, device_id: int, frm: datetime, to: datetime, span: timedelta
) -> float:
    """The endpoint's read (rollups where complete) on a fresh connection."""
    from psycopg.rows import dict_row

    with psycopg.connect(env["DATABASE_URL"], row_factory=dict_row) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(principal.tenant_id),))
        width = reads.bucket_width_s(span, reads.SERIES_DEFAULT_POINTS)
        t = time.perf_counter()
        reads.series_points(conn, principal, device_id, "temp", frm, to, width)
        return (time.perf_counter() - t) * 1000


def can_drop_page_cache() -> bool:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def median_ms(action: Callable[[], object], repeat: int) -> float:
    """Warm: one untimed run first, then the median of repeat timed runs."""
    action()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        action()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


if __name__ == "__main__":
    main()
