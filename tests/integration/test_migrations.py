"""The migrations build the schema from nothing, and re-running them changes nothing."""

from __future__ import annotations

import psycopg

from shared.core.migrate import apply_migrations, list_migrations


def test_migrations_apply_once_and_rerun_is_a_no_op(postgres_server, role_passwords):
    with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS migrate_check")
        conn.execute("CREATE DATABASE migrate_check")
    dsn = postgres_server.superuser_dsn("migrate_check")
    try:
        assert apply_migrations(dsn) == [m.version for m in list_migrations()]
        assert apply_migrations(dsn) == []
        with psycopg.connect(dsn) as conn:
            partitions = conn.execute(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'telemetry'::regclass"
            ).fetchone()[0]
            created = conn.execute("SELECT ensure_telemetry_partitions(current_date, current_date + 10)").fetchone()[0]
        assert partitions >= 39  # 31 days back, 7 ahead, and the default partition
        assert created == 3  # days 8 to 10 ahead were new; the rest already existed
    finally:
        with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS migrate_check WITH (FORCE)")
