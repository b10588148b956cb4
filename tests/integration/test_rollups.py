"""1-minute and 1-hour rollups against real PostgreSQL (shared/telemetry/rollups.py): equal to a from-scratch
aggregation of the raw rows, late data included, idempotent, resumable."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from shared.accounts.tokens import Principal
from shared.core.db import tenant_transaction
from shared.core.settings import Settings
from shared.telemetry import reads
from shared.telemetry.retention import maintenance_connection
from shared.telemetry.rollups import JOB, roll_up, series_points

NOW = datetime.now(UTC).replace(microsecond=0)

FROM_SCRATCH = """
SELECT tenant_id, device_id, metric, date_trunc(%(unit)s, ts) AS bucket, count(*) AS count, sum(value) AS sum,
       min(value) AS min, max(value) AS max, sum(value) / count(*) AS avg,
       (array_agg(value ORDER BY ts DESC, seq DESC))[1] AS last
FROM telemetry WHERE value IS NOT NULL
GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""
ROLLED = """
SELECT tenant_id, device_id, metric, bucket, count, sum, min, max, avg, last FROM {table} ORDER BY 1, 2, 3, 4
"""


@pytest.fixture
def owner(database):
    with psycopg.connect(database.owner_dsn, autocommit=True) as conn:
        yield conn


def make_device(owner) -> tuple[uuid.UUID, int]:
    tenant_id = owner.execute(
        "INSERT INTO tenants (slug, name) VALUES (%s, 'T') RETURNING id", (f"t-{uuid.uuid4().hex[:10]}",)
    ).fetchone()[0]
    device_id = owner.execute(
        "INSERT INTO devices (tenant_id, name) VALUES (%s, 'd') RETURNING id", (tenant_id,)
    ).fetchone()[0]
    return tenant_id, device_id


def insert(owner, rows: list[tuple]) -> None:
    """rows: (tenant_id, device_id, metric, ts, seq, value, value_bool, received_at)."""
    with owner.cursor().copy(
        "COPY telemetry (tenant_id, device_id, metric, ts, seq, value, value_bool, received_at) FROM STDIN"
    ) as copy:
        for row in rows:
            copy.write_row(row)


def readings(
    tenant_id,
    device_id,
    start: datetime,
    count: int,
    received_at: datetime,
    step_s: int = 17,
    metric: str = "temp",
    seq_base: int = 0,
) -> list[tuple]:
    # Quarter steps are exact in binary, so sums agree whatever order PostgreSQL adds them in.
    return [
        (
            tenant_id,
            device_id,
            metric,
            start + timedelta(seconds=step_s * i),
            seq_base + i % 2,
            (i % 40) / 4 - 3,
            None,
            received_at,
        )
        for i in range(count)
    ]


def run(settings: Settings, **overrides):
    options = {"lag_s": 60, "chunk_s": 900, "max_past_days": 30, "time_budget_s": 60.0}
    options.update(overrides)
    with maintenance_connection(settings) as conn:
        return roll_up(conn, **options)


def assert_equal_to_scratch(owner) -> None:
    for unit, table in (("minute", "telemetry_rollup_1m"), ("hour", "telemetry_rollup_1h")):
        expected = owner.execute(FROM_SCRATCH, {"unit": unit}).fetchall()
        assert owner.execute(ROLLED.format(table=table)).fetchall() == expected, table


def test_rollups_equal_a_from_scratch_aggregation_including_late_data(maintenance_settings, owner):
    # GIVEN two tenants' numeric readings (and a boolean, which rollups ignore) received an hour ago
    (t1, d1), (t2, d2) = make_device(owner), make_device(owner)
    an_hour_ago = NOW - timedelta(hours=1)
    base = (NOW - timedelta(hours=3)).replace(minute=0, second=0)
    insert(
        owner,
        readings(t1, d1, base, 400, an_hour_ago)
        + readings(t2, d2, base, 300, an_hour_ago, step_s=29)
        + readings(t1, d1, base, 50, an_hour_ago, metric="rpm")
        + [(t1, d1, "door", base, 0, None, True, an_hour_ago)],
    )

    # WHEN the rollup runs THEN it has caught up and equals the raw aggregation
    report = run(maintenance_settings)
    assert report.caught_up and report.chunks >= 1
    assert_equal_to_scratch(owner)

    # WHEN a device's backlog arrives late: old timestamps (2 days back, and inside buckets already
    # rolled up), received now, and the next run comes past the lag
    arrived = datetime.now(UTC)
    insert(
        owner,
        readings(t1, d1, NOW - timedelta(days=2), 120, arrived)
        + readings(t1, d1, base + timedelta(seconds=3), 30, arrived, step_s=41),
    )
    assert run(maintenance_settings, now=arrived + timedelta(minutes=2)).minute_buckets > 0

    # THEN the old buckets are corrected and the new old ones exist, equal to scratch again
    assert_equal_to_scratch(owner)
    # AND a re-run from the start rewrites the same values (idempotent upserts)
    owner.execute("UPDATE rollup_state SET watermark = NULL WHERE name = %s", (JOB,))
    run(maintenance_settings, chunk_s=600, now=arrived + timedelta(minutes=2))
    assert_equal_to_scratch(owner)


def test_rows_inside_the_lag_wait_for_the_next_run(maintenance_settings, owner):
    # GIVEN readings received just now (a drain transaction could still be committing rows as old)
    # (the clock is read here, not at import: in a full run this test starts minutes after collection)
    now = datetime.now(UTC).replace(microsecond=0)
    tenant_id, device_id = make_device(owner)
    insert(owner, readings(tenant_id, device_id, now - timedelta(minutes=30), 10, now - timedelta(seconds=10)))

    # WHEN the rollup runs with a 60 s lag THEN it leaves them
    assert run(maintenance_settings, now=now).caught_up
    assert owner.execute("SELECT count(*) FROM telemetry_rollup_1m").fetchone()[0] == 0
    # AND a later run (now 2 minutes on) takes them
    with maintenance_connection(maintenance_settings) as conn:
        roll_up(conn, lag_s=60, chunk_s=900, max_past_days=30, time_budget_s=60, now=now + timedelta(minutes=2))
    assert_equal_to_scratch(owner)


def test_rollup_stops_within_budget_and_resumes(maintenance_settings, owner):
    # GIVEN a day of arrivals and a budget too small for a chunk
    tenant_id, device_id = make_device(owner)
    for hours_ago in range(24, 0, -1):
        received = NOW - timedelta(hours=hours_ago)
        insert(owner, readings(tenant_id, device_id, received - timedelta(minutes=2), 5, received))
    first = run(maintenance_settings, time_budget_s=1e-9)
    assert first.chunks == 0 and not first.caught_up

    # WHEN it runs with 1-hour chunks THEN it walks to the end and equals scratch
    report = run(maintenance_settings, chunk_s=3600)
    assert report.caught_up and report.chunks >= 24
    assert_equal_to_scratch(owner)


def test_overlapping_runs_do_not_both_roll_up(maintenance_settings, owner):
    tenant_id, device_id = make_device(owner)
    insert(owner, readings(tenant_id, device_id, NOW - timedelta(hours=2), 10, NOW - timedelta(hours=1)))
    # GIVEN another run holding the watermark
    with maintenance_connection(maintenance_settings) as holder, holder.transaction():
        holder.execute("SELECT 1 FROM rollup_state WHERE name = %s FOR UPDATE", (JOB,))
        # WHEN a second run starts THEN it steps aside
        assert run(maintenance_settings).busy
    assert run(maintenance_settings).caught_up
    assert_equal_to_scratch(owner)


def test_tenant_reads_only_its_own_rollups(maintenance_settings, owner, app_pool):
    (t1, d1), (t2, d2) = make_device(owner), make_device(owner)
    base = (NOW - timedelta(hours=3)).replace(minute=0, second=0)
    insert(
        owner,
        readings(t1, d1, base, 100, NOW - timedelta(hours=1)) + readings(t2, d2, base, 100, NOW - timedelta(hours=1)),
    )
    run(maintenance_settings)
    with tenant_transaction(app_pool, str(t1)) as conn:
        assert {r["tenant_id"] for r in conn.execute("SELECT tenant_id FROM telemetry_rollup_1m")} == {t1}
        assert {r["tenant_id"] for r in conn.execute("SELECT tenant_id FROM telemetry_rollup_1h")} == {t1}
        # Even naming the other tenant's ids, its rollups stay invisible.
        assert series_points(conn, t2, d2, "temp", base, NOW, 3600) == []
        assert sum(p["count"] for p in series_points(conn, t1, d1, "temp", base, NOW, 3600) or []) == 100
        # The app role reads the watermark, and no more of the job's state.
        assert conn.execute("SELECT watermark FROM rollup_state").fetchone()["watermark"] is not None
    with tenant_transaction(app_pool, str(t1)) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT updated_at FROM rollup_state")
    with tenant_transaction(app_pool, str(t1)) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("UPDATE rollup_state SET watermark = now()")


SERIES_RAW = """
SELECT date_bin(%(bucket)s::interval, ts, timestamptz '2000-01-01 00:00:00+00') AS ts,
       avg(value) AS avg, min(value) AS min, max(value) AS max, count(value) AS count
FROM telemetry
WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s AND metric = %(metric)s
  AND ts >= %(from)s AND ts < %(to)s AND value IS NOT NULL
GROUP BY 1 ORDER BY 1
"""


def raw_series(conn, tenant_id, device_id, start: datetime, end: datetime, bucket_s: int) -> list:
    return conn.execute(
        SERIES_RAW,
        {
            "tenant_id": tenant_id,
            "device_id": device_id,
            "metric": "temp",
            "from": start,
            "to": end,
            "bucket": timedelta(seconds=bucket_s),
        },
    ).fetchall()


def month_of_readings(tenant_id, device_id, end: datetime, step_s: int = 97) -> list[tuple]:
    """30 days and an hour of readings, each received 2 s after its ts (as a device online sends)."""
    start = end - timedelta(days=30, hours=1)
    count = int((end - start).total_seconds()) // step_s
    return [
        (
            tenant_id,
            device_id,
            "temp",
            start + timedelta(seconds=step_s * i),
            i % 2,
            (i % 40) / 4 - 3,
            None,
            start + timedelta(seconds=step_s * i + 2),
        )
        for i in range(count)
    ]


# (span, bucket): 1 h in minutes, 1 d in 5 minutes (the API's default width for a day), 1 d and
# 30 d in hours, 30 d in 2 hours (the default for a month)
SPANS = [
    (timedelta(hours=1), 60),
    (timedelta(days=1), 300),
    (timedelta(days=1), 3600),
    (timedelta(days=30), 3600),
    (timedelta(days=30), 7200),
]


@pytest.mark.parametrize("rollup", ["never_ran", "caught_up", "lagging_with_late_data"])
def test_series_equals_raw_whether_rollups_never_ran_caught_up_or_lag(maintenance_settings, owner, app_pool, rollup):
    # GIVEN a month of readings up to now, and (one more tenant's device, which must never show)
    now = datetime.now(UTC).replace(microsecond=0)
    (tenant_id, device_id), (other_t, other_d) = make_device(owner), make_device(owner)
    insert(owner, month_of_readings(tenant_id, device_id, now) + month_of_readings(other_t, other_d, now, 61))
    if rollup == "caught_up":
        # AND the rollup ran to now - lag (the last two minutes are not rolled up)
        run(maintenance_settings, chunk_s=40 * 86400, now=now)
    elif rollup == "lagging_with_late_data":
        # AND the rollup last ran 6 hours ago, then a backlog arrived late: old timestamps inside
        # rolled-up minutes and hours (a day back, 20 days back, 7 hours back), received after the
        # watermark, so not in the rollups yet
        run(maintenance_settings, chunk_s=40 * 86400, now=now - timedelta(hours=6))
        late = [
            (
                tenant_id,
                device_id,
                "temp",
                now - timedelta(days=1, seconds=-13 * i),
                100 + i,
                7.25 + i,
                None,
                now - timedelta(minutes=3),
            )
            for i in range(40)
        ]
        late += [(tenant_id, device_id, "temp", now - timedelta(days=20, seconds=29), 0, 1000.5, None, now)]
        late += [(tenant_id, device_id, "temp", now - timedelta(hours=7, seconds=1), 7, -50.0, None, now)]
        insert(owner, late)

    # WHEN a series is read over each range, with ragged ends, up to now
    for span, bucket_s in SPANS:
        end = now + timedelta(seconds=1)
        start = end - span + timedelta(seconds=7)
        with tenant_transaction(app_pool, str(tenant_id)) as conn:
            from_rollups = series_points(conn, tenant_id, device_id, "temp", start, end, bucket_s)
            points = reads.series_points(
                conn, Principal(user_id=uuid.uuid4(), tenant_id=tenant_id), device_id, "temp", start, end, bucket_s
            )
            raw = raw_series(conn, tenant_id, device_id, start, end, bucket_s)

        # THEN it equals the raw aggregation bucket for bucket: no reading lost or counted twice
        assert points == raw and raw, (span, bucket_s)
        # AND the rollups answered wherever they had run (raw alone when they never did, or when
        # the whole range is newer than a lagging watermark)
        unrolled = rollup == "never_ran" or (rollup == "lagging_with_late_data" and span < timedelta(hours=6))
        assert (from_rollups is None) == unrolled, (span, bucket_s)

    if rollup == "lagging_with_late_data":
        # AND once the next run has rolled the late data up, the rollups answer it, still equal to raw
        run(maintenance_settings, chunk_s=40 * 86400, now=datetime.now(UTC) + timedelta(minutes=2))
        end = now + timedelta(seconds=1)
        with tenant_transaction(app_pool, str(tenant_id)) as conn:
            for span, bucket_s in SPANS:
                start = end - span + timedelta(seconds=7)
                assert series_points(conn, tenant_id, device_id, "temp", start, end, bucket_s) == raw_series(
                    conn, tenant_id, device_id, start, end, bucket_s
                ), (span, bucket_s)


def test_series_narrower_than_a_minute_or_before_a_first_run_reads_raw(maintenance_settings, owner, app_pool):
    tenant_id, device_id = make_device(owner)
    insert(owner, readings(tenant_id, device_id, NOW - timedelta(hours=3), 300, NOW - timedelta(hours=1), step_s=37))
    with tenant_transaction(app_pool, str(tenant_id)) as conn:
        assert series_points(conn, tenant_id, device_id, "temp", NOW - timedelta(hours=3), NOW, 3600) is None
    run(maintenance_settings)
    with tenant_transaction(app_pool, str(tenant_id)) as conn:
        assert series_points(conn, tenant_id, device_id, "temp", NOW - timedelta(hours=3), NOW, 30) is None
        assert series_points(conn, tenant_id, device_id, "temp", NOW - timedelta(hours=3), NOW, 90) is None
        # A range with no whole minute before the watermark: nothing for the rollups to answer
        assert series_points(conn, tenant_id, device_id, "temp", NOW - timedelta(seconds=50), NOW, 60) is None


def test_rollups_are_utc_minutes_and_hours_whatever_the_session_time_zone(maintenance_settings, owner, app_pool):
    # GIVEN the rollup job's session in a zone half an hour off UTC
    tenant_id, device_id = make_device(owner)
    start = (NOW - timedelta(hours=5)).replace(minute=0, second=0)
    insert(owner, readings(tenant_id, device_id, start, 400, NOW - timedelta(hours=1), step_s=37))
    dsn = maintenance_settings.maintenance_database_url.get_secret_value()
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row, options="-c TimeZone=Asia/Kolkata") as conn:
        assert conn.execute("SHOW TimeZone").fetchone()["TimeZone"] == "Asia/Kolkata"
        assert roll_up(conn, lag_s=60, chunk_s=900, max_past_days=30, time_budget_s=60.0).caught_up

    # THEN its hour buckets are UTC hours, and the series from them equals raw
    hours = owner.execute("SELECT DISTINCT extract(minute FROM bucket AT TIME ZONE 'UTC') FROM telemetry_rollup_1h")
    assert [r[0] for r in hours] == [0]
    with tenant_transaction(app_pool, str(tenant_id)) as conn:
        points = series_points(conn, tenant_id, device_id, "temp", start, NOW, 3600)
        assert points == raw_series(conn, tenant_id, device_id, start, NOW, 3600) and points
