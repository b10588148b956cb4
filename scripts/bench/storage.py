#!/usr/bin/env python3
"""Measures PostgreSQL storage per device and day: raw readings in telemetry, and what rollups would take.

    .venv/bin/python scripts/bench/storage.py [--metrics 5] [--interval-s 1]

Starts a private PostgreSQL in a temporary folder, applies sql/migrations, and fills one day's partition of
telemetry with one device's readings: one every --interval-s seconds, --metrics metrics each (four numbers and a
boolean, names as devices send them: temp, humidity, pressure, rpm, door_open), ts and received_at a second apart,
seq 0 (one reading per metric and ts), in ts order with one reading's metrics together, as the drain writes them.
Then VACUUM (ANALYZE) and pg_total_relation_size of the partition: heap, the telemetry_dedup unique index, the
received_at BRIN index, TOAST. The same readings are then aggregated per minute and per hour into the schema's
telemetry_rollup_1m and telemetry_rollup_1h (numeric metrics only, as the rollup job does), measured the same way.
The last line is machine-readable:
storage_bench raw_bytes_per_device_day=... bytes_per_row=... minute_rollup_bytes=... hour_rollup_bytes=...
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import psycopg  # noqa: E402

from localstack import PostgresServer  # noqa: E402
from shared.core.migrate import apply_migrations  # noqa: E402

NUMERIC = ("temp", "humidity", "pressure", "rpm")
DAY = "2026-11-20"
# Only where sql/migrations has no rollup tables yet.
ROLLUP = """
CREATE TABLE {name} (
    tenant_id uuid NOT NULL, device_id bigint NOT NULL, metric text NOT NULL, bucket timestamptz NOT NULL,
    count integer NOT NULL, min double precision, max double precision, sum double precision, last double precision,
    PRIMARY KEY (tenant_id, device_id, metric, bucket)
)"""


def size(conn: psycopg.Connection, relation: str) -> int:
    row = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (relation,)).fetchone()
    assert row is not None
    return int(row[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=5, choices=range(1, 6))
    parser.add_argument("--interval-s", type=int, default=1)
    args = parser.parse_args()
    numeric = NUMERIC[: max(0, args.metrics - 1)]
    with_bool = args.metrics >= 1

    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        server = PostgresServer(Path(tmp) / "postgres")
        server.start()
        try:
            with psycopg.connect(server.superuser_dsn(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
            apply_migrations(server.superuser_dsn("bench"))
            with psycopg.connect(server.superuser_dsn("bench"), autocommit=True) as conn:
                conn.execute("SELECT ensure_telemetry_partitions(%s::date, %s::date)", (DAY, DAY))
                partition = "telemetry_" + DAY.replace("-", "")
                row = conn.execute("SELECT to_regclass(%s)", (partition,)).fetchone()
                if row is None or row[0] is None:
                    partition = next(
                        name
                        for (name,) in conn.execute(
                            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                            "WHERE i.inhparent = 'telemetry'::regclass AND c.relname LIKE %s",
                            (f"%{DAY[:4]}%",),
                        )
                    )
                tenant = uuid.uuid4()
                conn.execute("INSERT INTO tenants (id, slug, name) VALUES (%s, 'storage', 'Storage')", (tenant,))
                device = conn.execute(
                    "INSERT INTO devices (tenant_id, name) VALUES (%s, 'press-01') RETURNING id", (tenant,)
                ).fetchone()[0]
                started = time.perf_counter()
                # In ts order with the metrics of one reading together, as the drain writes them: where rows land
                # in the unique index decides how full its pages get.
                names = [*numeric, *(["door_open"] if with_bool else [])]
                conn.execute(
                    "INSERT INTO telemetry (tenant_id, device_id, ts, seq, received_at, metric, value, value_bool) "
                    "SELECT %(tenant)s, %(device)s, t, 0, t + interval '1 second', m, "
                    "CASE WHEN m <> 'door_open' THEN 20 + random() * 10 END, "
                    "CASE WHEN m = 'door_open' THEN random() < 0.1 END "
                    "FROM generate_series(%(day)s::timestamptz, %(day)s::timestamptz + interval '1 day' "
                    "- interval '1 ms', %(step)s * interval '1 second') t, unnest(%(names)s::text[]) m "
                    "ORDER BY t, m",
                    {"tenant": tenant, "device": device, "day": DAY, "step": args.interval_s, "names": names},
                )
                insert_s = time.perf_counter() - started
                conn.execute(f"VACUUM (ANALYZE) {partition}")
                rows = conn.execute(f"SELECT count(*) FROM {partition}").fetchone()[0]
                raw = size(conn, partition)
                heap = conn.execute("SELECT pg_relation_size(%s::regclass)", (partition,)).fetchone()[0]
                index = conn.execute("SELECT pg_indexes_size(%s::regclass)", (partition,)).fetchone()[0]
                rollups = {}
                real = conn.execute("SELECT to_regclass('telemetry_rollup_1m') IS NOT NULL").fetchone()[0]
                for name, bucket in (("telemetry_rollup_1m", "minute"), ("telemetry_rollup_1h", "hour")):
                    if not real:
                        conn.execute(ROLLUP.format(name=name))
                    # The schema's rollups aggregate numeric readings only; the scratch shape (no rollup migration
                    # yet) takes the boolean too, as 0/1.
                    conn.execute(
                        f"INSERT INTO {name} (tenant_id, device_id, metric, bucket, count, sum, min, max, last"
                        + (", last_ts, last_seq" if real else "")
                        + ") "
                        "SELECT tenant_id, device_id, metric, date_trunc(%(bucket)s, ts), count(*), "
                        "sum(coalesce(value, value_bool::int)), min(coalesce(value, value_bool::int)), "
                        "max(coalesce(value, value_bool::int)), "
                        "(array_agg(coalesce(value, value_bool::int) ORDER BY ts DESC))[1]"
                        + (", max(ts), 0" if real else "")
                        + f" FROM {partition} WHERE %(real)s IS FALSE OR value IS NOT NULL GROUP BY 1, 2, 3, 4",
                        {"bucket": bucket, "real": real},
                    )
                    conn.execute(f"VACUUM (ANALYZE) {name}")
                    rollups[name] = size(conn, name)
                version = conn.info.server_version
        finally:
            server.stop()

    print(
        f"PostgreSQL {version // 10000}.{version % 10000}; one device, {args.metrics} metrics every "
        f"{args.interval_s} s for a day: {rows:,} rows, inserted in {insert_s:.1f} s"
    )
    print(
        f"raw partition: {raw / 1e6:.1f} MB ({raw / rows:.0f} bytes a row; heap {heap / 1e6:.1f} MB, "
        f"indexes {index / 1e6:.1f} MB)"
    )
    print(
        f"per-minute rollup: {rollups['telemetry_rollup_1m'] / 1e6:.2f} MB; per-hour rollup: "
        f"{rollups['telemetry_rollup_1h'] / 1e3:.0f} kB"
    )
    print(
        f"storage_bench raw_bytes_per_device_day={raw} bytes_per_row={raw / rows:.1f} "
        f"minute_rollup_bytes={rollups['telemetry_rollup_1m']} hour_rollup_bytes={rollups['telemetry_rollup_1h']}"
    )


if __name__ == "__main__":
    main()
