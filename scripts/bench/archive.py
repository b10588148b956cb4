#!/usr/bin/env python3
"""Benchmarks the blob_archiver: one tenant-day of --rows readings to Parquet in Azurite, verified, deleted.

    .venv/bin/python scripts/bench/archive.py [--rows 1000000] [--devices 3]

Starts a private PostgreSQL and Azurite in a temporary folder, migrates, and loads --rows readings of a
free-plan tenant on one day 40 days back (5 metrics per reading: 3 numbers, a boolean, a short text; 1-s
cadence per device), then, in the same run:
  baseline  COPY of the same rows to CSV on local disk (the export query, as the maintenance role): the
            floor of getting them out of PostgreSQL at all, and what plain CSV would cost in bytes;
  archive   run_blob_archiver(): export (COPY CSV -> pyarrow -> Parquet zstd), upload, read back and
            check size + SHA-256 + row count, DELETE the rows and mark the manifest, timed per step.
verified=true when the manifest says deleted, the day holds no rows, and the blob read back again matches
the manifest's SHA-256 and row count. Then, for the record, the rollup timer over the same number of rows
received over the last day (roll_up from an empty watermark, in 15-minute chunks). Last line (machine-readable):
archive_bench rows_per_s=<n> bytes_per_row=<n> verified=<true|false>
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import psycopg  # noqa: E402

from localstack import AzuriteServer, PostgresServer  # noqa: E402
from shared.core.migrate import apply_migrations  # noqa: E402
from shared.core.settings import settings_from  # noqa: E402
from shared.core.sql import QUERIES  # noqa: E402
from shared.telemetry.archive import archive_container, blob_name, day_range, run_blob_archiver  # noqa: E402
from shared.telemetry.retention import maintenance_connection  # noqa: E402
from shared.telemetry.rollups import roll_up  # noqa: E402

METRICS = 5  # per reading, as generated below


def load(conn: psycopg.Connection, tenant: uuid.UUID, devices: list[int], day: datetime, rows: int) -> None:
    per_device = -(-rows // (len(devices) * METRICS))  # rounded up; the excess is removed below
    for device in devices:
        conn.execute(
            """
            INSERT INTO telemetry (tenant_id, device_id, metric, ts, seq, received_at, value, value_bool, value_text)
            SELECT %(tenant)s, %(device)s, m.metric, %(day)s + make_interval(secs => g), g,
                   %(day)s + make_interval(secs => g + 0.2),
                   CASE m.metric WHEN 'temp' THEN 20 + (g %% 100) / 10.0 WHEN 'rpm' THEN 1200 + (g %% 37)
                                 WHEN 'pressure' THEN 1.013 + (g %% 13) / 1000.0 END,
                   CASE WHEN m.metric = 'door_open' THEN g %% 60 = 0 END,
                   CASE WHEN m.metric = 'mode' THEN CASE WHEN g %% 600 < 500 THEN 'auto' ELSE 'manual' END END
            FROM generate_series(0, %(n)s - 1) AS g
            CROSS JOIN (VALUES ('temp'), ('rpm'), ('pressure'), ('door_open'), ('mode')) AS m (metric)
            """,
            {"tenant": tenant, "device": device, "day": day, "n": per_device},
        )
    conn.execute(
        """
        DELETE FROM telemetry WHERE (device_id, metric, ts) IN (
            SELECT device_id, metric, ts FROM telemetry WHERE tenant_id = %(tenant)s
            ORDER BY ts DESC, device_id, metric LIMIT %(excess)s)
        """,
        {"tenant": tenant, "excess": per_device * len(devices) * METRICS - rows},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--devices", type=int, default=3, help="at most 3: the free plan's limit")
    args = parser.parse_args()
    day = (datetime.now(UTC) - timedelta(days=40)).replace(hour=0, minute=0, second=0, microsecond=0)

    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
        postgres, azurite = PostgresServer(Path(tmp) / "postgres"), AzuriteServer(Path(tmp) / "azurite")
        try:
            postgres.start()
            azurite.start()
            with psycopg.connect(postgres.superuser_dsn(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
            apply_migrations(postgres.superuser_dsn("bench"))
            password = secrets.token_hex(16)
            with psycopg.connect(postgres.superuser_dsn("bench"), autocommit=True) as conn:
                conn.execute(f"ALTER ROLE mqtt_saas_maintenance LOGIN PASSWORD '{password}'")
                conn.execute("SELECT ensure_telemetry_partitions(%s::date, %s::date)", (day.date(), day.date()))
                tenant = uuid.uuid4()
                conn.execute(
                    "INSERT INTO tenants (id, slug, name, plan) VALUES (%s, 'bench', 'Bench', 'free')", (tenant,)
                )
                devices = [
                    conn.execute(
                        "INSERT INTO devices (tenant_id, name) VALUES (%s, %s) RETURNING id", (tenant, f"press-{n:02d}")
                    ).fetchone()[0]
                    for n in range(args.devices)
                ]
                started = time.perf_counter()
                load(conn, tenant, devices, day, args.rows)
                conn.execute("VACUUM ANALYZE telemetry")
                rows = conn.execute("SELECT count(*) FROM telemetry").fetchone()[0]
                print(f"loaded rows={rows} in {time.perf_counter() - started:.1f} s", flush=True)

            settings = settings_from(
                {
                    "DATABASE_URL": "unused",
                    "INGEST_DATABASE_URL": "unused",
                    "MAINTENANCE_DATABASE_URL": f"postgresql://mqtt_saas_maintenance:{password}@127.0.0.1:{postgres.port}/bench",
                    "STORAGE_CONNECTION_STRING": azurite.connection_string,
                    "ARCHIVE_TIME_BUDGET_S": "3600",
                }
            )

            # Baseline: the same rows, same query, COPY'd to a local CSV file.
            csv_path = Path(tmp) / "baseline.csv"
            with maintenance_connection(settings) as conn:
                started = time.perf_counter()
                with (
                    csv_path.open("wb") as out,
                    conn.cursor().copy(QUERIES["export_range_csv_raw"], day_range(tenant, day.date())) as copy,
                ):
                    for chunk in copy:
                        out.write(chunk)
                baseline_s = time.perf_counter() - started
            csv_bytes = csv_path.stat().st_size
            csv_path.unlink()
            print(
                f"baseline copy_csv rows_per_s={rows / baseline_s:.0f} bytes_per_row={csv_bytes / rows:.1f} "
                f"seconds={baseline_s:.2f}",
                flush=True,
            )

            marks: dict[str, float] = {}
            container = archive_container(settings)
            started = time.perf_counter()
            report = run_blob_archiver(
                settings, container=container, hook=lambda point, _t, _d: marks.setdefault(point, time.perf_counter())
            )
            archive_s = time.perf_counter() - started
            previous, steps = started, []
            for point in ("pending", "blob_written", "verified", "deleted"):
                if point in marks:
                    steps.append(f"{point}={marks[point] - previous:.2f}s")
                    previous = marks[point]
            print("archive steps: " + " ".join(steps) + "  (export, upload, read-back check, delete)")

            with psycopg.connect(postgres.superuser_dsn("bench"), autocommit=True) as conn:
                manifest = conn.execute(
                    "SELECT state, row_count, bytes, sha256 FROM archive_manifest WHERE tenant_id = %s", (tenant,)
                ).fetchone()
                left = conn.execute("SELECT count(*) FROM telemetry WHERE tenant_id = %s", (tenant,)).fetchone()[0]
            data = container.download_blob(blob_name(tenant, day.date())).readall()
            verified = (
                manifest is not None
                and manifest[0] == "deleted"
                and manifest[1] == rows
                and left == 0
                and report.rows_deleted == rows
                and len(data) == manifest[2]
                and hashlib.sha256(data).hexdigest() == manifest[3]
            )
            parquet_bytes = len(data)
            print(
                f"archive seconds={archive_s:.2f} parquet_bytes={parquet_bytes} csv_bytes={csv_bytes} "
                f"ratio_vs_csv={csv_bytes / parquet_bytes:.1f}x speed_vs_copy_csv={baseline_s / archive_s:.2f}"
            )

            # The rollup timer's cost on the same volume, arrived over the last day as the drain stores
            # it (received 0.2 s after ts; 3 of the 5 metrics are numbers, so 60% of the rows roll up).
            recent = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
            with psycopg.connect(postgres.superuser_dsn("bench"), autocommit=True) as conn:
                conn.execute(
                    "SELECT ensure_telemetry_partitions(%s::date, %s::date)", (recent.date(), datetime.now(UTC).date())
                )
                load(conn, tenant, devices, recent, rows)
                conn.execute("VACUUM ANALYZE telemetry")
            with maintenance_connection(settings) as conn:
                started = time.perf_counter()
                rolled = roll_up(conn, lag_s=60, chunk_s=900, max_past_days=30, time_budget_s=600)
                rollup_s = time.perf_counter() - started
            print(
                f"rollup rows={rows} seconds={rollup_s:.2f} rows_per_s={rows / rollup_s:.0f} chunks={rolled.chunks} "
                f"minute_buckets={rolled.minute_buckets} hour_buckets={rolled.hour_buckets} "
                f"caught_up={rolled.caught_up}"
            )
            print(
                f"archive_bench rows_per_s={rows / archive_s:.0f} bytes_per_row={parquet_bytes / rows:.2f} "
                f"verified={'true' if verified else 'false'}"
            )
        finally:
            azurite.stop()
            postgres.stop()


if __name__ == "__main__":
    main()
