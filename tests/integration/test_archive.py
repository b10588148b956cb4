"""blob_archiver, retention per plan, partition maintenance and restore, against real PostgreSQL and
Azurite (shared/telemetry/archive.py, shared/telemetry/retention.py, scripts/restore_archive)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from azure.storage.blob import BlobServiceClient

from shared.core.settings import Settings, settings_from
from shared.telemetry.archive import HOOK_POINTS, blob_name, restore_days, run_blob_archiver
from shared.telemetry.retention import DECODER_EVENT_RETENTION_DAYS, delete_old_decoder_events, maintenance_connection

REPO = Path(__file__).resolve().parents[2]
TODAY = datetime.now(UTC).date()
OLD = TODAY - timedelta(days=40)  # past free's 30 days, inside professional's 365
OLDER = TODAY - timedelta(days=35)
RECENT = TODAY - timedelta(days=10)  # hot for every plan


class Crash(Exception):
    """Stands for the process dying at a step."""


@pytest.fixture
def maintenance_settings(database, azurite_server) -> Settings:
    """The maintenance role with a blob container of this test's own."""
    return settings_from(
        {
            "DATABASE_URL": database.app_dsn,
            "INGEST_DATABASE_URL": database.ingest_dsn,
            "MAINTENANCE_DATABASE_URL": database.maintenance_dsn,
            "STORAGE_CONNECTION_STRING": azurite_server.connection_string,
            "ARCHIVE_CONTAINER": f"archive-{uuid.uuid4().hex[:12]}",
        }
    )


@pytest.fixture
def owner(database):
    with psycopg.connect(database.owner_dsn, autocommit=True) as conn:
        # Day partitions for the old days (the migration creates the last 31 days' only).
        conn.execute("SELECT ensure_telemetry_partitions(%s, %s)", (TODAY - timedelta(days=45), TODAY))
        yield conn


def make_tenant(owner, plan: str, devices: int = 2) -> tuple[uuid.UUID, list[int]]:
    tenant_id = owner.execute(
        "INSERT INTO tenants (slug, name, plan) VALUES (%s, 'T', %s) RETURNING id", (f"t-{uuid.uuid4().hex[:10]}", plan)
    ).fetchone()[0]
    ids = [
        owner.execute(
            "INSERT INTO devices (tenant_id, name) VALUES (%s, %s) RETURNING id", (tenant_id, f"dev-{n}")
        ).fetchone()[0]
        for n in range(devices)
    ]
    return tenant_id, ids


def add_day(owner, tenant_id, device_ids, day: date, per_metric: int = 30) -> None:
    """Readings of every kind on one day: numbers, booleans, text (also empty and with a newline and
    a comma, which CSV must carry), and two readings at one instant told apart by seq."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    rows = []
    for device_id in device_ids:
        for i in range(per_metric):
            ts = start + timedelta(minutes=37 * i, microseconds=i)
            rows.append((tenant_id, device_id, "temp", ts, 0, 20.0 + i / 4, None, None))
            rows.append((tenant_id, device_id, "temp", ts, 1, -1.5e-7 * i, None, None))
            rows.append((tenant_id, device_id, "door", ts, 0, None, i % 2 == 0, None))
            rows.append((tenant_id, device_id, "mode", ts, 0, None, None, ["auto", "", 'a,b\n"c"'][i % 3]))
    with owner.cursor().copy(
        "COPY telemetry (tenant_id, device_id, metric, ts, seq, value, value_bool, value_text) FROM STDIN"
    ) as copy:
        for row in rows:
            copy.write_row(row)


def day_rows(conn, tenant_id, day: date, table: str = "telemetry") -> list[tuple]:
    return conn.execute(
        f"SELECT tenant_id, device_id, metric, ts, seq, received_at, value, value_bool, value_text FROM {table}"
        " WHERE tenant_id = %s AND ts >= %s::date::timestamp AT TIME ZONE 'UTC'"
        " AND ts < (%s::date + 1)::timestamp AT TIME ZONE 'UTC'"
        " ORDER BY device_id, metric, ts, seq",
        (tenant_id, day, day),
    ).fetchall()


def container_of(settings: Settings):
    service = BlobServiceClient.from_connection_string(settings.storage_connection_string.get_secret_value())
    return service.get_container_client(settings.archive_container)


def manifest_states(owner, tenant_id) -> dict[date, str]:
    return dict(owner.execute("SELECT day, state FROM archive_manifest WHERE tenant_id = %s", (tenant_id,)).fetchall())


def restored(settings, tenant_id, first, last, table="check"):
    with maintenance_connection(settings) as conn:
        return restore_days(conn, container_of(settings), tenant_id, first, last, table)


def test_archive_round_trip_restores_equal_rows_and_checksums(maintenance_settings, owner):
    # GIVEN a free tenant with two old days and a recent one
    tenant, devices = make_tenant(owner, "free")
    for day in (OLD, OLDER, RECENT):
        add_day(owner, tenant, devices, day)
    before = {day: day_rows(owner, tenant, day) for day in (OLD, OLDER)}

    # WHEN the archiver runs
    report = run_blob_archiver(maintenance_settings)

    # THEN the old days are in Blob Storage, out of PostgreSQL, and recorded as deleted
    assert report.days_archived == 2 and report.rows_deleted == sum(map(len, before.values()))
    assert manifest_states(owner, tenant) == {OLD: "deleted", OLDER: "deleted"}
    assert day_rows(owner, tenant, OLD) == [] and day_rows(owner, tenant, OLDER) == []
    assert len(day_rows(owner, tenant, RECENT)) == len(before[OLD])
    container = container_of(maintenance_settings)
    for day in (OLD, OLDER):
        name = f"{tenant}/{day:%Y/%m/%d}.parquet"
        assert name == blob_name(tenant, day)
        data = container.download_blob(name).readall()
        props = container.get_blob_client(name).get_blob_properties()
        sha, rows = owner.execute(
            "SELECT sha256, row_count FROM archive_manifest WHERE tenant_id = %s AND day = %s", (tenant, day)
        ).fetchone()
        assert hashlib.sha256(data).hexdigest() == sha == props.metadata["sha256"]
        assert props.metadata["row_count"] == str(rows) == str(len(before[day]))
        assert props.metadata["schema_version"] == "1"
    # AND a data team can read the file as is: typed columns, UTC timestamps, names included
    table = pq.read_table(io.BytesIO(container.download_blob(blob_name(tenant, OLD)).readall()))
    assert str(table.schema.field("ts").type) == "timestamp[us, tz=UTC]"
    assert set(table.column("device").to_pylist()) == {"dev-0", "dev-1"}

    # WHEN the days are restored THEN the rows equal those archived, exactly
    result = restored(maintenance_settings, tenant, OLD, OLDER)
    assert result.days == [OLD, OLDER] and result.rows == report.rows_deleted
    for day in (OLD, OLDER):
        assert day_rows(owner, tenant, day, "archive_restore.check") == before[day]
    # AND restoring again replaces, never doubles
    restored(maintenance_settings, tenant, OLD, OLDER)
    assert owner.execute("SELECT count(*) FROM archive_restore.check").fetchone()[0] == report.rows_deleted


@pytest.mark.parametrize("point", HOOK_POINTS)
def test_crash_at_each_step_then_rerun_loses_and_doubles_nothing(maintenance_settings, owner, point):
    # GIVEN a free tenant with an old day
    tenant, devices = make_tenant(owner, "free")
    add_day(owner, tenant, devices, OLD)
    before = day_rows(owner, tenant, OLD)

    def crash(at: str, tenant_id, day) -> None:
        if at == point:
            raise Crash(at)

    # WHEN the archiver dies at that step, and runs again
    with pytest.raises(Crash):
        run_blob_archiver(maintenance_settings, hook=crash)
    remaining = day_rows(owner, tenant, OLD)
    assert remaining in (before, [])  # all or nothing, never a part
    run_blob_archiver(maintenance_settings)

    # THEN every row is in the archive exactly once and none is left in PostgreSQL
    assert manifest_states(owner, tenant) == {OLD: "deleted"}
    assert day_rows(owner, tenant, OLD) == []
    restored(maintenance_settings, tenant, OLD, OLD)
    assert day_rows(owner, tenant, OLD, "archive_restore.check") == before


def test_half_written_or_corrupted_blob_is_written_again(maintenance_settings, owner):
    # GIVEN a run that dies after recording pending with a half-written blob in place
    tenant, devices = make_tenant(owner, "free")
    add_day(owner, tenant, devices, OLD)
    before = day_rows(owner, tenant, OLD)
    container = container_of(maintenance_settings)

    def half_written(at: str, tenant_id, day) -> None:
        if at == "pending":
            container.upload_blob(blob_name(tenant_id, day), b"PAR1 truncated", overwrite=True)
            raise Crash(at)

    with pytest.raises(Crash):
        run_blob_archiver(maintenance_settings, hook=half_written)

    # AND a later run whose upload is corrupted before verification
    def corrupt(at: str, tenant_id, day) -> None:
        if at == "uploaded" and not corrupted:
            corrupted.append(True)
            container.upload_blob(blob_name(tenant_id, day), b"garbage", overwrite=True)

    corrupted: list[bool] = []
    # WHEN it runs THEN verification catches it, the day is exported again, and nothing is lost
    report = run_blob_archiver(maintenance_settings, hook=corrupt)
    assert corrupted and report.days_archived == 1
    restored(maintenance_settings, tenant, OLD, OLD)
    assert day_rows(owner, tenant, OLD, "archive_restore.check") == before


def test_retention_follows_plan_and_a_plan_change_counts_from_next_run(maintenance_settings, owner):
    # GIVEN tenants on each plan with rows 40 days old
    tenants = {plan: make_tenant(owner, plan) for plan in ("free", "starter", "professional", "industrial")}
    for tenant, devices in tenants.values():
        add_day(owner, tenant, devices, OLD)
        add_day(owner, tenant, devices, RECENT)

    # WHEN the archiver runs THEN only the free plan's 30-day window is exceeded
    run_blob_archiver(maintenance_settings)
    kept = {plan: bool(day_rows(owner, tenant, OLD)) for plan, (tenant, _) in tenants.items()}
    assert kept == {"free": False, "starter": True, "professional": True, "industrial": True}
    assert all(day_rows(owner, tenant, RECENT) for tenant, _ in tenants.values())

    # WHEN starter moves to free THEN the next run archives its old day
    owner.execute("UPDATE tenants SET plan = 'free' WHERE id = %s", (tenants["starter"][0],))
    run_blob_archiver(maintenance_settings)
    assert day_rows(owner, tenants["starter"][0], OLD) == []
    assert day_rows(owner, tenants["professional"][0], OLD)
    # AND a plan's own window, changed in plans, counts from the next run too
    owner.execute("UPDATE plans SET raw_retention_days = 35 WHERE name = 'professional'")
    run_blob_archiver(maintenance_settings)
    assert day_rows(owner, tenants["professional"][0], OLD) == []
    assert day_rows(owner, tenants["industrial"][0], OLD)
    # AND a starter tenant's 90 days: a 95-day-old day goes, a 40-day-old one stays
    tenant, devices = make_tenant(owner, "starter")
    very_old = TODAY - timedelta(days=95)
    owner.execute("SELECT ensure_telemetry_partitions(%s, %s)", (very_old, very_old))
    add_day(owner, tenant, devices, very_old)
    add_day(owner, tenant, devices, OLD)
    run_blob_archiver(maintenance_settings)
    assert day_rows(owner, tenant, very_old) == [] and day_rows(owner, tenant, OLD)


def test_partitions_are_created_ahead_and_dropped_only_when_empty(maintenance_settings, owner):
    # GIVEN an old day holding a free tenant's rows and an industrial tenant's, another only a free tenant's
    free, free_devices = make_tenant(owner, "free")
    industrial, industrial_devices = make_tenant(owner, "industrial")
    add_day(owner, free, free_devices, OLD)
    add_day(owner, industrial, industrial_devices, OLD)
    add_day(owner, free, free_devices, OLDER)
    empty_day = TODAY - timedelta(days=44)
    owner.execute("SELECT ensure_telemetry_partitions(%s, %s)", (empty_day, empty_day))

    # WHEN the archiver runs
    run_blob_archiver(maintenance_settings)

    def exists(day: date) -> bool:
        return owner.execute("SELECT to_regclass(%s) IS NOT NULL", (f"telemetry_{day:%Y%m%d}",)).fetchone()[0]

    # THEN the partition the industrial tenant still needs stays, the emptied ones go
    assert exists(OLD) and not exists(OLDER) and not exists(empty_day)
    assert exists(RECENT) and exists(TODAY)
    # AND the coming days have partitions
    assert exists(TODAY + timedelta(days=maintenance_settings.partition_ahead_days))


def test_rows_that_landed_in_the_default_partition_are_archived(maintenance_settings, owner):
    # GIVEN a free tenant's day that had no partition when its rows arrived
    tenant, devices = make_tenant(owner, "free")
    no_partition = TODAY - timedelta(days=60)
    add_day(owner, tenant, devices, no_partition)
    assert owner.execute("SELECT count(*) FROM telemetry_default").fetchone()[0] > 0
    before = day_rows(owner, tenant, no_partition)

    # WHEN the archiver runs THEN they are archived and deleted like any other day
    run_blob_archiver(maintenance_settings)
    assert owner.execute("SELECT count(*) FROM telemetry_default").fetchone()[0] == 0
    restored(maintenance_settings, tenant, no_partition, no_partition)
    assert day_rows(owner, tenant, no_partition, "archive_restore.check") == before


def test_run_stops_within_budget_and_next_run_resumes(maintenance_settings, owner):
    # GIVEN several due days and a budget too small for any
    tenant, devices = make_tenant(owner, "free")
    days = [TODAY - timedelta(days=n) for n in (41, 40, 39, 38)]
    for day in days:
        add_day(owner, tenant, devices, day, per_metric=3)
    tight = maintenance_settings.model_copy(update={"archive_time_budget_s": 1e-9})

    # WHEN it runs THEN it stops and says how many days are left
    report = run_blob_archiver(tight)
    assert report.days_archived == 0 and report.days_left == len(days)
    # AND the next run with a real budget finishes them
    assert run_blob_archiver(maintenance_settings).days_archived == len(days)
    assert set(manifest_states(owner, tenant).values()) == {"deleted"}


def test_maintenance_role_has_least_rights(maintenance_settings, owner):
    tenant, devices = make_tenant(owner, "free")
    with maintenance_connection(maintenance_settings) as conn:
        assert (
            conn.execute("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user").fetchone()[
                "?column?"
            ]
            is False
        )
        for statement in (
            "INSERT INTO telemetry (tenant_id, device_id, metric, ts, value) VALUES (%s, 1, 'x', now(), 1)",
            "UPDATE telemetry SET value = 0 WHERE tenant_id = %s",
            "UPDATE tenants SET plan = 'industrial' WHERE id = %s",
            "DELETE FROM devices WHERE tenant_id = %s",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement, (tenant,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"DROP TABLE telemetry_{RECENT:%Y%m%d}")


def test_restore_archive_command(maintenance_settings, owner, tmp_path):
    # GIVEN an archived day
    tenant, devices = make_tenant(owner, "free")
    add_day(owner, tenant, devices, OLD)
    before = day_rows(owner, tenant, OLD)
    run_blob_archiver(maintenance_settings)
    slug = owner.execute("SELECT slug FROM tenants WHERE id = %s", (tenant,)).fetchone()[0]

    # WHEN scripts/restore_archive loads it
    env = {
        "PATH": "/usr/bin:/bin",
        "MAINTENANCE_DATABASE_URL": maintenance_settings.maintenance_database_url.get_secret_value(),
        "STORAGE_CONNECTION_STRING": maintenance_settings.storage_connection_string.get_secret_value(),
        "ARCHIVE_CONTAINER": maintenance_settings.archive_container,
    }
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "restore_archive"),
            "--tenant",
            slug,
            "--from",
            OLD.isoformat(),
            "--to",
            OLD.isoformat(),
            "--table",
            "by_script",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )

    # THEN the rows are back, in the table it names
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"restore_archive table=archive_restore.by_script days=1 rows={len(before)}"
    assert day_rows(owner, tenant, OLD, "archive_restore.by_script") == before


def test_registered_timers_run_archiver_and_rollups_on_their_schedules(maintenance_settings, owner, settings_env):
    import json

    import azure.functions as func

    from tests.support.devices import registered_functions

    # GIVEN a free tenant's old day and a recent one, and the app's settings as the host would read them
    tenant, devices = make_tenant(owner, "free")
    add_day(owner, tenant, devices, OLD)
    add_day(owner, tenant, devices, RECENT)
    settings_env(maintenance_settings.model_copy(update={"rollup_lag_s": 0}))
    functions = registered_functions()
    for name, setting in (("blob_archiver", "%ARCHIVE_SCHEDULE%"), ("telemetry_rollup", "%ROLLUP_SCHEDULE%")):
        [binding] = json.loads(functions[name].get_function_json())["bindings"]
        assert (binding["type"], binding["schedule"], binding["runOnStartup"]) == ("timerTrigger", setting, False)

    # WHEN the host fires the rollup, then the archiver
    timer = func.timer.TimerRequest(past_due=False)
    functions["telemetry_rollup"].get_user_function()(timer)
    functions["blob_archiver"].get_user_function()(timer)

    # THEN the recent day is rolled up (the old one is older than any reading the drain accepts)
    # and the old day went to the archive
    assert (
        owner.execute("SELECT sum(count) FROM telemetry_rollup_1h WHERE tenant_id = %s", (tenant,)).fetchone()[0]
        == 2 * len(devices) * 30
    )
    assert manifest_states(owner, tenant) == {OLD: "deleted"} and day_rows(owner, tenant, OLD) == []


def test_rollups_outlive_raw_rows_and_go_after_their_own_retention(maintenance_settings, owner):
    # GIVEN minute and hour buckets of various ages
    tenant, devices = make_tenant(owner, "free")
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    for table in ("telemetry_rollup_1m", "telemetry_rollup_1h"):
        for days in (40, 399, 401, 3649, 3651):
            bucket = now - timedelta(days=days)
            owner.execute(
                f"INSERT INTO {table} (tenant_id, device_id, metric, bucket, count, sum, min, max, last,"
                " last_ts, last_seq) VALUES (%s, %s, 'temp', %s, 1, 1, 1, 1, 1, %s, 0)",
                (tenant, devices[0], bucket, bucket),
            )

    # WHEN the archiver runs (raw retention 30 days; minutes kept 400 days, hours 3650)
    run_blob_archiver(maintenance_settings)

    # THEN each table keeps what its own retention says
    def ages(table: str) -> list[int]:
        return [(now - b).days for (b,) in owner.execute(f"SELECT bucket FROM {table} ORDER BY bucket DESC")]

    assert ages("telemetry_rollup_1m") == [40, 399]
    assert ages("telemetry_rollup_1h") == [40, 399, 401, 3649]


def test_decoder_events_go_after_their_retention_oldest_first_in_batches(maintenance_settings, owner):
    # GIVEN what two tenants' decoders saw, of various ages (a Sparkplug node's gaps and rebirths)
    now = datetime.now(UTC)
    keep = DECODER_EVENT_RETENTION_DAYS
    ages = (1, keep - 1, keep + 1, 200, 400)
    for plan in ("free", "industrial"):
        tenant, devices = make_tenant(owner, plan, devices=1)
        for days in ages:
            owner.execute(
                "INSERT INTO device_decoder_events (tenant_id, device_id, at, kind, detail)"
                " VALUES (%s, %s, %s, 'seq_gap', '{}')",
                (tenant, devices[0], now - timedelta(days=days)),
            )

    def left() -> list[int]:
        rows = owner.execute("SELECT at FROM device_decoder_events ORDER BY at DESC").fetchall()
        return [(now - at).days for (at,) in rows]

    # WHEN a bounded batch is deleted THEN the oldest go first, whatever the tenant
    with maintenance_connection(maintenance_settings) as conn:
        assert delete_old_decoder_events(conn, now, max_rows=3) == 3
    assert left() == [1, 1, keep - 1, keep - 1, keep + 1, keep + 1, 200]
    # WHEN the archiver runs THEN every event past the retention is gone, every plan alike
    assert run_blob_archiver(maintenance_settings).decoder_events_deleted == 3
    assert left() == [1, 1, keep - 1, keep - 1]


def test_a_busy_empty_partition_is_left_for_the_next_run(maintenance_settings, owner, database):
    # GIVEN an empty old partition that a long read holds open
    empty_day = TODAY - timedelta(days=43)
    owner.execute("SELECT ensure_telemetry_partitions(%s, %s)", (empty_day, empty_day))
    name = f"telemetry_{empty_day:%Y%m%d}"
    with psycopg.connect(database.owner_dsn) as reader:
        reader.execute(f"SELECT count(*) FROM {name}")  # keeps ACCESS SHARE until the transaction ends

        # WHEN the archiver runs THEN it does not fail, and the partition stays
        run_blob_archiver(maintenance_settings)
        assert owner.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]
        reader.rollback()

    # AND the next run drops it
    run_blob_archiver(maintenance_settings)
    assert owner.execute("SELECT to_regclass(%s) IS NULL", (name,)).fetchone()[0]


def test_a_second_archiver_steps_aside_while_one_runs(maintenance_settings, owner, database):
    # GIVEN a due day and another archiver holding the lock
    tenant, devices = make_tenant(owner, "free")
    add_day(owner, tenant, devices, OLD)
    with psycopg.connect(database.owner_dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtextextended('mqtt_saas.blob_archiver', 0))")
        # WHEN a run starts THEN it does nothing and says so
        report = run_blob_archiver(maintenance_settings)
        assert report.busy and report.days_archived == 0 and day_rows(owner, tenant, OLD)
    # AND once the other is gone the next run does the work
    assert run_blob_archiver(maintenance_settings).days_archived == 1
