"""scripts/pg_backup.py and scripts/pg_restore_drill.py against the test PostgreSQL and Azurite: a backup taken while
the database keeps changing restores with exactly the row counts of its snapshot; a tampered manifest or dump fails
the drill; a role that row-level security would blind is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from azure.storage.blob import BlobServiceClient

from scripts.pg_backup import BackupError, backup, container_client
from scripts.pg_restore_drill import drill

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def container(azurite_server):
    name = f"backups-{uuid.uuid4().hex[:8]}"
    client = container_client(name, azurite_server.connection_string, None)
    yield client
    client.delete_container()


def seed(database, tenants: int = 2, devices: int = 3, readings: int = 500) -> None:
    """Tenants, devices and telemetry in today's partition and in the default one, as the database owner."""
    with psycopg.connect(database.owner_dsn, autocommit=True) as conn:
        conn.execute("SELECT ensure_telemetry_partitions(current_date - 1, current_date + 1)")
        for t in range(tenants):
            tenant_id = uuid.uuid4()
            conn.execute(
                "INSERT INTO tenants (id, slug, name, plan) VALUES (%s, %s, %s, 'starter')",
                (tenant_id, f"drill-{uuid.uuid4().hex[:8]}", f"Drill {t}"),
            )
            for d in range(devices):
                device_id = conn.execute(
                    "INSERT INTO devices (tenant_id, name) VALUES (%s, %s) RETURNING id", (tenant_id, f"m-{d}")
                ).fetchone()[0]
                conn.execute(
                    "INSERT INTO telemetry (tenant_id, device_id, ts, seq, metric, value) "
                    "SELECT %s, %s, now() - g * interval '1 second', g, 'temp', g FROM generate_series(1, %s) g",
                    (tenant_id, device_id, readings),
                )
            # A reading for a day without a partition lands in telemetry_default: the drill must count it too.
            conn.execute(
                "INSERT INTO telemetry (tenant_id, device_id, ts, metric, value) "
                "VALUES (%s, %s, now() - interval '3 years', 'temp', 1)",
                (tenant_id, device_id),
            )


def owner_counts(database, table: str) -> int:
    with psycopg.connect(database.owner_dsn) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_backup_then_drill_restores_exact_counts_of_the_snapshot(database, container) -> None:
    # GIVEN a database with two tenants' devices and readings
    seed(database)
    # WHEN it is backed up, changes afterwards, and the drill restores the backup into a scratch database
    done = backup(database.owner_dsn, container)
    seed(database, tenants=1, devices=1, readings=10)
    result = drill(database.owner_dsn, container)
    # THEN the dump and its manifest are in the container, every table's restored count equals the snapshot's,
    # and the source's live counts show the change made after the backup
    names = {blob.name for blob in container.list_blobs()}
    assert {done.dump_blob, done.manifest_blob} <= names
    assert result.manifest_blob == done.manifest_blob
    assert result.ok, result.mismatches
    assert result.restored == done.manifest["row_counts"]
    assert result.restored["public.tenants"] == 2
    assert result.restored["public.devices"] == 6
    assert result.restored["public.telemetry_default"] == 2
    assert sum(v for k, v in result.restored.items() if k.startswith("public.telemetry")) == 2 * 3 * 500 + 2
    assert result.source_now["public.tenants"] == 3
    # AND the scratch database is gone
    with psycopg.connect(database.owner_dsn) as conn:
        assert (
            conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (result.scratch_database,)).fetchone()[
                0
            ]
            == 0
        )


def test_drill_restores_row_level_security_and_grants(database, container) -> None:
    # GIVEN a backup of a seeded database, restored and kept
    seed(database, tenants=1, devices=1, readings=5)
    backup(database.owner_dsn, container)
    result = drill(database.owner_dsn, container, keep=True)
    scratch = database.owner_dsn.rsplit("/", 1)[0] + f"/{result.scratch_database}"
    try:
        # THEN the restored tables still FORCE row-level security, and the app role can read only its tenant's rows
        with psycopg.connect(scratch) as conn:
            forced = conn.execute("SELECT relforcerowsecurity FROM pg_class WHERE relname = 'telemetry'").fetchone()
            assert forced == (True,)
        app_dsn = database.app_dsn.rsplit("/", 1)[0] + f"/{result.scratch_database}"
        with psycopg.connect(app_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (0,)
    finally:
        with psycopg.connect(database.owner_dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {result.scratch_database} WITH (FORCE)")


def test_drill_fails_on_a_manifest_that_does_not_match_the_restore(database, container) -> None:
    # GIVEN a backup whose manifest claims one more device than the dump holds
    seed(database, tenants=1, devices=2, readings=5)
    done = backup(database.owner_dsn, container)
    manifest = dict(done.manifest)
    manifest["row_counts"] = {**manifest["row_counts"], "public.devices": 3}
    forged = done.manifest_blob.replace(".json", "-forged.json")
    container.upload_blob(forged, json.dumps(manifest).encode())
    # WHEN the drill restores it
    result = drill(database.owner_dsn, container, manifest_blob=forged)
    # THEN it fails, naming the table and both counts
    assert not result.ok
    assert result.mismatches == {"public.devices": (3, 2)}


def test_drill_refuses_a_dump_that_does_not_match_its_checksum(database, container) -> None:
    seed(database, tenants=1, devices=1, readings=5)
    done = backup(database.owner_dsn, container)
    container.upload_blob(done.dump_blob, b"not a dump", overwrite=True)
    with pytest.raises(BackupError, match="does not match the SHA-256"):
        drill(database.owner_dsn, container)


def test_backup_refuses_a_role_that_row_level_security_blinds(database, container) -> None:
    # The app role sees no tenant without app.tenant_id: its backup would be empty, and it must say so instead.
    with pytest.raises(BackupError, match="only some rows"):
        backup(database.app_dsn, container)


def test_backup_and_drill_commands_end_with_their_summary_lines(database, azurite_server) -> None:
    # GIVEN a seeded database and storage given as the app's STORAGE_CONNECTION_STRING
    seed(database, tenants=1, devices=1, readings=20)
    env = {
        **os.environ,
        "ADMIN_DATABASE_URL": database.owner_dsn,
        "STORAGE_CONNECTION_STRING": azurite_server.connection_string,
    }
    container = f"backups-{uuid.uuid4().hex[:8]}"
    # WHEN the two commands run as an operator runs them
    backed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "pg_backup.py"), "--container", container],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    drilled = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "pg_restore_drill.py"), "--container", container],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    BlobServiceClient.from_connection_string(azurite_server.connection_string).delete_container(container)
    # THEN both succeed and say what they did; no password reaches their output
    assert backed.returncode == 0, backed.stderr
    assert backed.stdout.splitlines()[-1].startswith(f"pg_backup blob=pg/{database.name}/")
    assert drilled.returncode == 0, drilled.stderr
    assert "restore_drill ok=true" in drilled.stdout.splitlines()[-1]
    password = database.owner_dsn.split(":")[2].split("@")[0]
    assert password not in backed.stdout + backed.stderr + drilled.stdout + drilled.stderr
