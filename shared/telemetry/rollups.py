"""1-minute and 1-hour rollups of numeric telemetry, kept up to date from a received_at watermark.

Each chunk of arrivals (received_at in (watermark, watermark + chunk]) names the minute buckets it
touched, whatever their ts; those buckets are recomputed from raw and upserted, then their hours
from the minutes, and the watermark moves in the same transaction. So a late backlog with old
timestamps corrects the old buckets, a re-run writes the same values, and a crash loses nothing.
A run stops when it has caught up (now - lag) or its time budget is spent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql
from psycopg.rows import DictRow

from shared.core import observability
from shared.core.settings import Settings
from shared.core.sql import QUERIES, one_row

log = logging.getLogger(__name__)

JOB = "telemetry"


@dataclass
class RollupReport:
    chunks: int = 0
    minute_buckets: int = 0
    hour_buckets: int = 0
    caught_up: bool = False
    busy: bool = False  # another run held the watermark
    watermark: datetime | None = None


def roll_up(
    conn: psycopg.Connection[DictRow],
    *,
    lag_s: int,
    chunk_s: int,
    max_past_days: int,
    time_budget_s: float,
    now: datetime | None = None,
) -> RollupReport:
    """Rolls up chunk after chunk until caught up or out of time. conn: the maintenance role,
    not in autocommit mode (each chunk is one transaction). now: for tests only."""
    report = RollupReport()
    deadline = time.monotonic() + time_budget_s
    while time.monotonic() < deadline:
        with conn.transaction():
            conn.execute(QUERIES["jit_off"])
            state = conn.execute(QUERIES["lock_rollup_state"], {"name": JOB}).fetchone()
            if state is None:
                report.busy = True
                break
            if now is None:
                # Fixed for the run: chasing a moving now() would never catch up.
                now = state["now"]
            upper = now - timedelta(seconds=lag_s)
            watermark = state["watermark"]
            if watermark is None:
                watermark = one_row(conn.execute(QUERIES["first_received_at"]), "first_received_at")["watermark"]
                if watermark is None:  # no telemetry at all yet
                    report.caught_up = True
                    break
            if watermark >= upper:
                report.caught_up = True
                report.watermark = watermark
                break
            to = min(upper, watermark + timedelta(seconds=chunk_s))
            minutes, hours = _roll_up_window(conn, watermark, to, max_past_days)
            conn.execute(QUERIES["advance_rollup_state"], {"name": JOB, "watermark": to})
        report.chunks += 1
        report.minute_buckets += minutes
        report.hour_buckets += hours
        report.watermark = to
    observability.event(
        log,
        "rollup.run",
        {
            "chunks": report.chunks,
            "minute_buckets": report.minute_buckets,
            "hour_buckets": report.hour_buckets,
            "caught_up": report.caught_up,
        },
    )
    return report


def _roll_up_window(
    conn: psycopg.Connection[DictRow], start: datetime, end: datetime, max_past_days: int
) -> tuple[int, int]:
    # ts can be at most max_past_days older than its received_at (the drain rejects older): this
    # bound lets PostgreSQL skip every older partition.
    min_ts = start - timedelta(days=max_past_days + 1)
    touched = conn.execute(QUERIES["rollup_minutes"], {"from": start, "to": end, "min_ts": min_ts}).fetchall()
    hours = sorted({(r["tenant_id"], r["device_id"], r["metric"], r["hour"]) for r in touched})
    if hours:
        conn.execute(
            QUERIES["rollup_hours"],
            {
                "tenant_ids": [h[0] for h in hours],
                "device_ids": [h[1] for h in hours],
                "metrics": [h[2] for h in hours],
                "hours": [h[3] for h in hours],
            },
        )
    return len(touched), len(hours)


def delete_old_rollups(
    conn: psycopg.Connection[DictRow], *, minute_days: int, hour_days: int, now: datetime
) -> tuple[int, int]:
    """Drops rollup buckets past their (longer than raw) retention; returns (minutes, hours) deleted."""
    with conn.transaction():
        minutes = conn.execute(QUERIES["delete_old_rollups_1m"], {"before": now - timedelta(days=minute_days)})
        hours = conn.execute(QUERIES["delete_old_rollups_1h"], {"before": now - timedelta(days=hour_days)})
        return minutes.rowcount, hours.rowcount


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _floor(at: datetime, width_s: int) -> datetime:
    # Multiples of a minute or an hour from the Unix epoch are multiples from 2000-01-01 as well
    # (date_bin's origin in the series queries): 946,684,800 s is a whole number of days.
    return _EPOCH + timedelta(seconds=(at - _EPOCH) // timedelta(seconds=width_s) * width_s)


def series_points(
    conn: psycopg.Connection[DictRow],
    tenant_id: object,
    device_id: int,
    metric: str,
    start: datetime,
    end: datetime,
    bucket_s: int,
) -> list[DictRow] | None:
    """The series read's buckets (ts, avg, min, max, count over [start, end), bucket_s wide), from
    the 1-hour rollups when bucket_s is whole hours, the 1-minute ones when whole minutes; equal to
    the raw aggregation, whatever the rollup job's lag. None when raw must answer: a bucket
    narrower than a minute, rollups that never ran, or no whole rollup bucket in the range
    before the watermark.

    Rollups answer for whole rollup buckets in [start, watermark); a bucket that got a reading
    received after the watermark (late data with an old ts) is read from raw until the next run
    rolls it up (sql/queries/rollups.sql series_from_rollup says why that is exact).
    conn: a tenant_transaction (RLS scopes the rollups to the tenant too)."""
    if bucket_s < 60 or bucket_s % 60:
        return None
    width, table = (3600, "telemetry_rollup_1h") if bucket_s % 3600 == 0 else (60, "telemetry_rollup_1m")
    state = conn.execute(QUERIES["rollup_watermark"], {"name": JOB}).fetchone()
    watermark = state["watermark"] if state else None
    if watermark is None:
        return None
    body_from = _floor(start, width)
    if body_from < start:
        body_from += timedelta(seconds=width)
    body_to = _floor(min(end, watermark), width)
    if body_to <= body_from:
        return None
    conn.execute(QUERIES["jit_off"])
    query = sql.SQL(QUERIES["series_from_rollup"]).format(rollup=sql.Identifier(table))
    return conn.execute(
        query,
        {
            "tenant_id": tenant_id,
            "device_id": device_id,
            "metric": metric,
            "bucket": timedelta(seconds=bucket_s),
            "width": timedelta(seconds=width),
            "from": start,
            "to": end,
            "body_from": body_from,
            "body_to": body_to,
            "watermark": watermark,
        },
    ).fetchall()


def run_rollups(settings: Settings) -> RollupReport:
    """One rollup timer run, as the maintenance role."""
    from shared.telemetry.retention import maintenance_connection

    with maintenance_connection(settings, "mqtt_saas_rollup") as conn:
        return roll_up(
            conn,
            lag_s=settings.rollup_lag_s,
            chunk_s=settings.rollup_chunk_s,
            max_past_days=settings.ingest_max_past_days,
            time_budget_s=settings.rollup_time_budget_s,
        )
