"""The schema works when its owner is an ordinary admin, as on a managed server (Azure Database for
PostgreSQL flexible server: LOGIN CREATEROLE CREATEDB, neither superuser nor BYPASSRLS).

The other tests migrate as the superuser, who bypasses row-level security; these build a database
owned by such an admin, migrate it as that admin, and check that what runs as the owner (the
SECURITY DEFINER functions, the owner's scripts, the migrations' backfills) sees the rows FORCE'd
RLS would otherwise hide from it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from shared.accounts.passwords import hash_password
from shared.core.migrate import apply_migrations, list_migrations

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class OwnedDatabase:
    name: str
    owner: str
    owner_dsn: str
    app_dsn: str
    ingest_dsn: str
    maintenance_dsn: str


@pytest.fixture
def admin_database(postgres_server, role_passwords) -> Iterator[OwnedDatabase]:
    """An empty database owned by a fresh Azure-like admin role (not yet migrated)."""
    suffix = uuid.uuid4().hex[:10]
    owner, name, owner_password = f"azadmin_{suffix}", f"owned_{suffix}", uuid.uuid4().hex
    with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
        conn.execute(
            f"CREATE ROLE {owner} LOGIN CREATEROLE CREATEDB NOSUPERUSER NOBYPASSRLS PASSWORD '{owner_password}'"
        )
        conn.execute(f"CREATE DATABASE {name} OWNER {owner}")
    base = f"127.0.0.1:{postgres_server.port}/{name}"
    yield OwnedDatabase(
        name=name,
        owner=owner,
        owner_dsn=f"postgresql://{owner}:{owner_password}@{base}",
        app_dsn=f"postgresql://mqtt_saas_app:{role_passwords['mqtt_saas_app']}@{base}",
        ingest_dsn=f"postgresql://mqtt_saas_ingest:{role_passwords['mqtt_saas_ingest']}@{base}",
        maintenance_dsn=f"postgresql://mqtt_saas_maintenance:{role_passwords['mqtt_saas_maintenance']}@{base}",
    )
    with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"DROP ROLE IF EXISTS {owner}")


@pytest.fixture
def owned(admin_database: OwnedDatabase) -> OwnedDatabase:
    """The admin's database, migrated by the admin."""
    assert apply_migrations(admin_database.owner_dsn) == [m.version for m in list_migrations()]
    return admin_database


def _as_tenant(conn: psycopg.Connection, tenant_id: object) -> None:
    conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant_id),))


def _new_tenant(app_dsn: str, slug: str, plan: str = "free") -> uuid.UUID:
    """A tenant made the way tests/support/registry.py makes one: the app role, acting for the new id."""
    tenant_id = uuid.uuid4()
    with psycopg.connect(app_dsn) as conn:
        _as_tenant(conn, tenant_id)
        conn.execute(
            "INSERT INTO tenants (id, slug, name, plan) VALUES (%s, %s, %s, %s)", (tenant_id, slug, slug.title(), plan)
        )
    return tenant_id


def test_the_owner_is_an_ordinary_admin_and_every_table_rls_forces_has_an_owner_policy(owned):
    with psycopg.connect(owned.owner_dsn) as conn:
        flags = conn.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user").fetchone()
        assert flags == (False, False)
        forced = {
            row[0]
            for row in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relforcerowsecurity"
            ).fetchall()
        }
        covered = dict(
            conn.execute(
                "SELECT tablename, roles::text[] FROM pg_policies"
                " WHERE schemaname = 'public' AND policyname = 'owner_access'"
            ).fetchall()
        )
    assert {"tenants", "users", "devices", "broker_outbox", "platform_operators", "telemetry"} <= forced
    # a table FORCE'd by a later migration without its own owner_access policy shows up here
    assert set(covered) == forced
    assert all(roles == [owned.owner] for roles in covered.values())


def test_login_and_operator_functions_see_rows_for_a_non_superuser_owner(owned):
    # GIVEN an operator, written by the owner (as scripts/create_operator.py does)
    with psycopg.connect(owned.owner_dsn) as conn:
        conn.execute(
            "INSERT INTO platform_operators (email, password_hash) VALUES ('ops@example.com', %s)",
            (hash_password(PASSWORD),),
        )
    with psycopg.connect(owned.app_dsn, autocommit=True) as app:
        # WHEN the app role signs the operator in and the operator creates a tenant
        found = app.execute("SELECT operator_id FROM platform_find_operator('ops@example.com')").fetchone()
        assert found is not None
        tenant_id, owner_id = app.execute(
            "SELECT * FROM platform_create_tenant(%s, 'acme', 'Acme', 'free', 'Boss@Acme.example', %s, 'test')",
            (found[0], hash_password(PASSWORD)),
        ).fetchone()
        # THEN the owner can log in, and the operator's listing and plan change see the tenant
        login = app.execute("SELECT user_id, tenant_id, role FROM find_login('acme', 'boss@acme.example')").fetchall()
        assert login == [(owner_id, tenant_id, "owner")]
        external = app.execute(
            "SELECT user_id, linked FROM find_external_user('acme', 'idp|42', 'boss@acme.example')"
        ).fetchall()
        assert external == [(owner_id, False)]
        listed = app.execute(
            "SELECT slug, users FROM platform_list_tenants(%s, NULL, NULL, 10)", (found[0],)
        ).fetchall()
        assert listed == [("acme", 1)]
        changed = app.execute(
            "SELECT plan, previous_plan FROM platform_set_plan(%s, %s, 'starter', 'test')", (found[0], tenant_id)
        ).fetchone()
        assert changed == ("starter", "free")


def test_broker_sync_functions_see_pending_commands_for_a_non_superuser_owner(owned):
    # GIVEN a device whose creation queued a broker command (as the API does, for its tenant)
    tenant_id = _new_tenant(owned.app_dsn, "sync")
    with psycopg.connect(owned.app_dsn) as conn:
        _as_tenant(conn, tenant_id)
        device_id = conn.execute(
            "INSERT INTO devices (tenant_id, name) VALUES (%s, 'pump-1') RETURNING id", (tenant_id,)
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO device_credentials (tenant_id, device_id, slot, username) VALUES (%s, %s, 'a', 'sync.pump-1')",
            (tenant_id, device_id),
        )
        conn.execute(
            "INSERT INTO broker_outbox (tenant_id, device_id, device_key, op, tenant_slug, device_name,"
            " username) VALUES (%s, %s, 'sync.pump-1', 'create_client', 'sync', 'pump-1', 'sync.pump-1')",
            (tenant_id, device_id),
        )
    # WHEN the sync, acting for no tenant, asks the SECURITY DEFINER functions
    with psycopg.connect(owned.app_dsn) as conn:
        keys = conn.execute("SELECT device_key FROM broker_outbox_due_keys(10, true)").fetchall()
        taken = conn.execute("SELECT op, username FROM broker_outbox_take('sync.pump-1', false)").fetchall()
        wanted = conn.execute(
            "SELECT tenant_slug, device_name, usernames, pending FROM broker_wanted_devices()"
        ).fetchall()
    # THEN they see the pending command and the wanted client
    assert keys == [("sync.pump-1",)]
    assert taken == [("create_client", "sync.pump-1")]
    assert wanted == [("sync", "pump-1", ["sync.pump-1"], True)]


def test_partitions_are_created_and_dropped_when_the_owner_is_no_superuser(owned):
    with psycopg.connect(owned.owner_dsn) as conn:
        partitions = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'telemetry'::regclass"
        ).fetchone()[0]
    assert partitions >= 39  # made by 0002 as the admin: 31 days back, 7 ahead, the default
    with psycopg.connect(owned.ingest_dsn) as conn:
        assert (
            conn.execute("SELECT ensure_telemetry_partitions(current_date + 8, current_date + 10)").fetchone()[0] == 3
        )
    with psycopg.connect(owned.maintenance_dsn) as conn:
        assert (
            conn.execute("SELECT ensure_telemetry_partitions(current_date - 60, current_date - 60)").fetchone()[0] == 1
        )
        dropped = conn.execute("SELECT * FROM drop_empty_telemetry_partitions(current_date)").fetchall()
    assert len(dropped) == 1


def test_backfills_of_0005_and_0007_are_redone_for_a_non_superuser_owner(admin_database, tmp_path):
    # GIVEN a deployment migrated up to 0004 by the admin, with a device and a reading
    early = tmp_path / "migrations"
    early.mkdir()
    for migration in list_migrations()[:4]:
        shutil.copy(migration.path, early / migration.path.name)
    apply_migrations(admin_database.owner_dsn, early)
    tenant_id = _new_tenant(admin_database.app_dsn, "legacy")
    with psycopg.connect(admin_database.app_dsn) as conn:
        _as_tenant(conn, tenant_id)
        device_id = conn.execute(
            "INSERT INTO devices (tenant_id, name) VALUES (%s, 'old-1') RETURNING id", (tenant_id,)
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO telemetry (tenant_id, device_id, ts, metric, value) VALUES (%s, %s, now(), 't', 21.5)",
            (tenant_id, device_id),
        )
    # WHEN the rest is applied, still as the admin
    apply_migrations(admin_database.owner_dsn)
    # THEN the device has its slot-a credential (0005's) and its metric's newest value (0007's)
    with psycopg.connect(admin_database.owner_dsn) as conn:
        credentials = conn.execute("SELECT slot, username FROM device_credentials").fetchall()
        metrics = conn.execute("SELECT metric, last_value FROM device_metrics").fetchall()
    assert credentials == [("a", "legacy.old-1")]
    assert metrics == [("t", 21.5)]


def test_the_app_role_cannot_change_its_tenants_plan(database):
    tenant_id = _new_tenant(database.app_dsn, "planned")
    with psycopg.connect(database.app_dsn) as conn:
        _as_tenant(conn, tenant_id)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE tenants SET plan = 'industrial' WHERE id = %s", (tenant_id,))
    with psycopg.connect(database.app_dsn) as conn:
        _as_tenant(conn, tenant_id)
        # renaming stays allowed, and the quota trigger (which locks the tenant row) still runs
        assert conn.execute(
            "UPDATE tenants SET name = 'Renamed' WHERE id = %s RETURNING name", (tenant_id,)
        ).fetchone() == ("Renamed",)
        conn.execute(
            "INSERT INTO devices (tenant_id, name) SELECT %s, 'd' || n FROM generate_series(1, 3) n", (tenant_id,)
        )
        with pytest.raises(psycopg.Error) as over:
            conn.execute("INSERT INTO devices (tenant_id, name) VALUES (%s, 'd4')", (tenant_id,))
    assert over.value.sqlstate == "MQ402"


def _create_user(dsn: str, tenant: str, email: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "create_user.py"),
            tenant,
            email,
            "staff",
            "--password-stdin",
            "--database-url",
            dsn,
        ],
        input=f"{PASSWORD}\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_create_user_script_works_as_a_non_superuser_owner_and_fails_cleanly(owned):
    _new_tenant(owned.app_dsn, "shop")  # free: two users at most
    # WHEN the owner's script adds two users
    for email in ("a@shop.example", "b@shop.example"):
        done = _create_user(owned.owner_dsn, "shop", email)
        assert done.returncode == 0, done.stderr
    with psycopg.connect(owned.app_dsn) as conn:
        assert conn.execute("SELECT role FROM find_login('shop', 'b@shop.example')").fetchall() == [("staff",)]
    # THEN a third (over the plan's limit) and a duplicate each fail with one clean line
    over = _create_user(owned.owner_dsn, "shop", "c@shop.example")
    again = _create_user(owned.owner_dsn, "shop", "A@shop.example")
    for done in (over, again):
        assert done.returncode != 0
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "plan limit" in over.stderr and "max_users" in over.stderr
    assert "already exists" in again.stderr


def test_dev_secret_prints_the_maintenance_roles_password(tmp_path):
    # GIVEN a local stack's database passwords, as `scripts/dev up` writes them
    (tmp_path / "db-passwords.json").write_text(
        '{"mqtt_saas_app": "app-pw", "mqtt_saas_ingest": "ingest-pw", "mqtt_saas_maintenance": "maint-pw"}'
    )
    # WHEN the maintenance role's is asked for THEN it alone is printed
    done = subprocess.run(
        [str(ROOT / "scripts" / "dev"), "secret", "db-maintenance", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "maint-pw\n"


def test_the_admin_can_create_and_set_up_the_roles_the_migrations_create(owned, postgres_server):
    # The test cluster's roles exist already, so the migrations skipped creating them: run their
    # CREATE ROLE statements (under fresh names) as the admin, and what a deployment does next.
    statements = re.findall(r"CREATE ROLE (mqtt_saas_\w+) ([A-Z ]+);", "".join(m.text for m in list_migrations()))
    assert {role for role, _ in statements} == {"mqtt_saas_app", "mqtt_saas_ingest", "mqtt_saas_maintenance"}
    created = [f"{role}_{uuid.uuid4().hex[:6]}" for role, _ in statements]
    try:
        with psycopg.connect(owned.owner_dsn, autocommit=True) as conn:
            for name, (_, options) in zip(created, statements, strict=True):
                conn.execute(f"CREATE ROLE {name} {options}")
                conn.execute(f"ALTER ROLE {name} LOGIN PASSWORD 'x{uuid.uuid4().hex}'")  # scripts/rotate_secrets.py
                conn.execute(f"GRANT SELECT ON tenants TO {name}")
    finally:
        with psycopg.connect(postgres_server.superuser_dsn(owned.name), autocommit=True) as conn:
            for name in created:
                conn.execute(f"DROP OWNED BY {name}")
                conn.execute(f"DROP ROLE IF EXISTS {name}")


def test_pg_dump_as_a_non_superuser_owner_needs_row_security_enabled(owned, tmp_path):
    # FORCE'd RLS applies to the owner: pg_dump's default (row_security off) refuses such tables,
    # and with --enable-row-security the owner_access policies let it dump every tenant's rows.
    _new_tenant(owned.app_dsn, "dumped")
    refused = subprocess.run(
        ["pg_dump", "--data-only", "--table=tenants", f"--dbname={owned.owner_dsn}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0 and "row-level security" in refused.stderr
    dumped = subprocess.run(
        ["pg_dump", "--data-only", "--table=tenants", "--enable-row-security", f"--dbname={owned.owner_dsn}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dumped.returncode == 0, dumped.stderr
    assert "dumped" in dumped.stdout


def test_create_user_script_says_in_one_line_when_the_database_or_tenant_is_wrong(owned):
    unreachable = "postgresql://nobody:wrong@127.0.0.1:1/nothing?connect_timeout=5"
    for dsn, tenant, expected in ((unreachable, "shop", "cannot add"), (owned.owner_dsn, "nope", "no tenant")):
        done = _create_user(dsn, tenant, "x@shop.example")
        assert done.returncode != 0
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert expected in done.stderr


def test_backup_and_restore_drill_run_as_a_non_superuser_owner(owned, azurite_server):
    from scripts.pg_backup import backup, container_client
    from scripts.pg_restore_drill import drill

    # GIVEN two tenants' devices and readings, written by the owner (owner_access lets it)
    with psycopg.connect(owned.owner_dsn, autocommit=True) as conn:
        conn.execute("SELECT ensure_telemetry_partitions(current_date - 1, current_date + 1)")
        for slug in ("north", "south"):
            tenant_id = conn.execute(
                "INSERT INTO tenants (slug, name) VALUES (%s, %s) RETURNING id",
                (f"{slug}-{uuid.uuid4().hex[:6]}", slug),
            ).fetchone()[0]
            device_id = conn.execute(
                "INSERT INTO devices (tenant_id, name) VALUES (%s, 'm1') RETURNING id", (tenant_id,)
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO telemetry (tenant_id, device_id, ts, seq, metric, value) "
                "SELECT %s, %s, now() - g * interval '1 second', g, 'temp', g FROM generate_series(1, 50) g",
                (tenant_id, device_id),
            )
    container = container_client(f"backups-{uuid.uuid4().hex[:8]}", azurite_server.connection_string, None)
    try:
        # WHEN the owner (not superuser, not BYPASSRLS) backs up and runs the drill
        done = backup(owned.owner_dsn, container)
        result = drill(owned.owner_dsn, container)
        # THEN every tenant's rows are in the dump and the restore
        readings = sum(
            n
            for table, n in result.expected.items()
            if table.startswith("public.telemetry_2") or table == "public.telemetry_default"
        )
        assert readings == 100 and result.expected["public.tenants"] == 2
        assert result.ok and result.restored == result.expected, result.mismatches
        assert done.manifest_blob == result.manifest_blob
    finally:
        container.delete_container()
