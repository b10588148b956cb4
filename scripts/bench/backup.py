#!/usr/bin/env python3
"""Times a backup to Blob and a restore drill on a database of known size: what a restore costs in time (RTO).

    .venv/bin/python scripts/bench/backup.py [--device-days 4]

Starts a private PostgreSQL and Azurite in a temporary folder, migrates a database, fills --device-days of raw
readings (one device-day: 5 metrics every second, 432,000 rows, ~97 MB; as scripts/bench/storage.py writes them),
then runs scripts/pg_backup.py's backup() to Azurite and scripts/pg_restore_drill.py's drill() from it, and prints
the database size, the dump's size and both durations. The last line is machine-readable:
backup_bench db_bytes=... dump_bytes=... backup_s=... restore_s=... drill_s=... ok=...
"""

from __future__ import annotations

import argparse
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
from scripts.pg_backup import backup, container_client  # noqa: E402
from scripts.pg_restore_drill import drill  # noqa: E402
from shared.core.migrate import apply_migrations  # noqa: E402

FIRST_DAY = "2026-11-01"


def fill(dsn: str, device_days: int) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT ensure_telemetry_partitions(%s::date, %s::date + %s)", (FIRST_DAY, FIRST_DAY, device_days))
        tenant = uuid.uuid4()
        conn.execute("INSERT INTO tenants (id, slug, name) VALUES (%s, 'backup', 'Backup')", (tenant,))
        device = conn.execute(
            "INSERT INTO devices (tenant_id, name) VALUES (%s, 'press-01') RETURNING id", (tenant,)
        ).fetchone()[0]
        for day in range(device_days):
            conn.execute(
                "INSERT INTO telemetry (tenant_id, device_id, ts, seq, received_at, metric, value, value_bool) "
                "SELECT %(tenant)s, %(device)s, t, 0, t + interval '1 second', m, "
                "CASE WHEN m <> 'door_open' THEN 20 + random() * 10 END, "
                "CASE WHEN m = 'door_open' THEN random() < 0.1 END "
                "FROM generate_series(%(start)s, %(start)s + interval '1 day' - interval '1 ms', "
                "interval '1 second') t, unnest(ARRAY['temp', 'humidity', 'pressure', 'rpm', 'door_open']) m "
                "ORDER BY t, m",
                {
                    "tenant": tenant,
                    "device": device,
                    "start": datetime.fromisoformat(FIRST_DAY).replace(tzinfo=UTC) + timedelta(days=day),
                },
            )
        conn.execute("VACUUM (ANALYZE)")
        return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device-days", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        postgres, azurite = PostgresServer(Path(tmp) / "postgres"), AzuriteServer(Path(tmp) / "azurite")
        postgres.start()
        azurite.start()
        try:
            with psycopg.connect(postgres.superuser_dsn(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
            dsn = postgres.superuser_dsn("bench")
            apply_migrations(dsn)
            db_bytes = fill(dsn, args.device_days)
            container = container_client("backups", azurite.connection_string, None)
            started = time.perf_counter()
            done = backup(dsn, container)
            backup_s = time.perf_counter() - started
            started = time.perf_counter()
            result = drill(dsn, container)
            drill_s = time.perf_counter() - started
        finally:
            azurite.stop()
            postgres.stop()
    rows = sum(result.restored.values())
    dump_bytes = done.manifest["bytes"]
    print(
        f"database {db_bytes / 1e6:.0f} MB ({rows:,} rows); dump {dump_bytes / 1e6:.0f} MB (custom format, "
        f"compressed); backup {backup_s:.1f} s; drill {drill_s:.1f} s of which pg_restore {result.restore_s:.1f} s; "
        f"counts {'equal' if result.ok else 'DIFFER'}"
    )
    print(
        f"backup_bench db_bytes={db_bytes} dump_bytes={dump_bytes} backup_s={backup_s:.1f} "
        f"restore_s={result.restore_s:.1f} drill_s={drill_s:.1f} ok={str(result.ok).lower()}"
    )


if __name__ == "__main__":
    main()
