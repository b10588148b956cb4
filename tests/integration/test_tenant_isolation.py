"""Row-level security: the application role sees one tenant's rows, even through a query that
forgets the tenant filter, and nothing at all when no tenant is set."""

from __future__ import annotations

import psycopg
import pytest

from shared.core.db import tenant_transaction
from tests.support.registry import create_device, create_tenant


@pytest.fixture
def two_tenants(app_pool, database):
    tenants = []
    for slug in ("alpha", "bravo"):
        tenant = create_tenant(app_pool, slug, slug.title(), "starter")
        device = create_device(app_pool, str(tenant["id"]), "m1")
        tenants.append((tenant, device))
    with psycopg.connect(database.owner_dsn) as conn:
        for tenant, device in tenants:
            conn.execute(
                "INSERT INTO telemetry (tenant_id, device_id, ts, metric, value) "
                "SELECT %s, %s, now() - g * interval '1 minute', 'temp', g FROM generate_series(1, 3) g",
                (tenant["id"], device["id"]),
            )
            conn.execute(
                "INSERT INTO dead_letters (tenant_id, topic, reason, payload, payload_bytes) "
                "VALUES (%s, 't', 'invalid_json', 'x', 1)",
                (tenant["id"],),
            )
    return tenants


def test_app_role_sees_only_its_tenant_through_unfiltered_queries(app_pool, two_tenants):
    (alpha, _), (bravo, _) = two_tenants
    with tenant_transaction(app_pool, str(alpha["id"])) as conn:
        assert conn.execute("SELECT DISTINCT tenant_id FROM telemetry").fetchall() == [{"tenant_id": alpha["id"]}]
        assert conn.execute("SELECT count(*) AS n FROM telemetry").fetchone()["n"] == 3
        assert [r["slug"] for r in conn.execute("SELECT slug FROM tenants")] == ["alpha"]
        assert conn.execute("SELECT count(*) AS n FROM devices").fetchone()["n"] == 1
        assert conn.execute("SELECT count(*) AS n FROM dead_letters").fetchone()["n"] == 1
        # a query naming the other tenant explicitly still finds nothing
        assert (
            conn.execute("SELECT count(*) AS n FROM telemetry WHERE tenant_id = %s", (bravo["id"],)).fetchone()["n"]
            == 0
        )


def test_no_tenant_set_sees_nothing_instead_of_failing(app_pool, two_tenants):
    with app_pool.connection() as conn:
        for table in ("telemetry", "tenants", "devices", "dead_letters"):
            assert conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] == 0


def test_tenant_setting_does_not_leak_into_the_next_transaction_on_the_same_connection(app_pool, two_tenants):
    (alpha, _), _ = two_tenants
    with app_pool.connection() as conn:
        with conn.transaction():
            conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(alpha["id"]),))
            assert conn.execute("SELECT count(*) AS n FROM telemetry").fetchone()["n"] == 3
        # after SET LOCAL's transaction the setting reads '' (not NULL): nullif keeps it closed
        assert conn.execute("SELECT count(*) AS n FROM telemetry").fetchone()["n"] == 0


def test_app_role_cannot_write_into_another_tenant(app_pool, two_tenants):
    (alpha, _), (bravo, bravo_device) = two_tenants
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
        tenant_transaction(app_pool, str(alpha["id"])) as conn,
    ):
        conn.execute(
            "INSERT INTO telemetry (tenant_id, device_id, ts, metric, value) VALUES (%s, %s, now(), 'x', 1)",
            (bravo["id"], bravo_device["id"]),
        )
    with tenant_transaction(app_pool, str(alpha["id"])) as conn:
        changed = conn.execute("UPDATE devices SET enabled = false WHERE tenant_id = %s", (bravo["id"],)).rowcount
    assert changed == 0


def test_partitions_cannot_be_read_around_the_parent(database, two_tenants):
    with psycopg.connect(database.app_dsn) as conn:
        partition = conn.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'telemetry_2%' AND relkind = 'r' LIMIT 1"
        ).fetchone()[0]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT * FROM {partition}")


def test_ingest_role_writes_but_cannot_read_telemetry(database, two_tenants):
    with psycopg.connect(database.ingest_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT count(*) FROM telemetry")


def test_application_roles_are_neither_superuser_nor_owner_nor_bypassing_rls(database):
    with psycopg.connect(database.owner_dsn) as conn:
        roles = conn.execute(
            "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname LIKE 'mqtt_saas_%' ORDER BY 1"
        ).fetchall()
        owners = {o for (o,) in conn.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")}
        # Every table (not partition) with tenant rows: a tenant_id column, or tenants itself.
        unforced = conn.execute("""
            SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
              AND (c.relname = 'tenants' OR EXISTS (
                  SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'))
              AND NOT (c.relrowsecurity AND c.relforcerowsecurity)
            ORDER BY 1""").fetchall()
    assert roles == [
        ("mqtt_saas_app", False, False),
        ("mqtt_saas_ingest", False, False),
        ("mqtt_saas_maintenance", False, False),
    ]
    assert not owners & {"mqtt_saas_app", "mqtt_saas_ingest", "mqtt_saas_maintenance"}
    assert unforced == []
