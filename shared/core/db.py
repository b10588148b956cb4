"""The application's PostgreSQL pool, and the one way to act for a tenant.

Row-level security reads the tenant from app.tenant_id. It is set with set_config(..., true),
i.e. for the current transaction only: a plain SET would survive on the pooled connection and
hand the next request another tenant's rows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeAlias

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from shared.core.settings import Settings, get_settings

# The app's connections return rows as dicts (row_factory=dict_row below).
DictConnection: TypeAlias = psycopg.Connection[DictRow]
DictPool: TypeAlias = ConnectionPool[DictConnection]

_pool: DictPool | None = None
_pool_lock = threading.Lock()


def create_pool(settings: Settings, wait: bool = True) -> DictPool:
    """wait=False returns at once and connects in the background, so a cold start during a
    database outage still answers (health says 503) instead of failing."""
    pool: DictPool = ConnectionPool(
        settings.database_url.get_secret_value(),
        min_size=1,
        max_size=settings.database_pool_max,
        kwargs={"row_factory": dict_row, "application_name": "mqtt_saas_api"},
        check=ConnectionPool.check_connection,
        reset=_reset_session,
        open=False,
    )
    pool.open(wait=wait, timeout=30)
    return pool


def _reset_session(conn: DictConnection) -> None:
    """Belt and braces: no session setting survives a connection's return to the pool."""
    conn.autocommit = True
    conn.execute("RESET ALL")
    conn.autocommit = False


def get_pool() -> DictPool:
    """One pool per process, created on first use (the Functions host reuses the process)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = create_pool(get_settings(), wait=False)
    return _pool


@contextmanager
def tenant_transaction(pool: DictPool, tenant_id: str) -> Iterator[DictConnection]:
    """A transaction that sees only tenant_id's rows; commits on success, rolls back on error."""
    with pool.connection() as conn, conn.transaction():
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant_id),))
        yield conn
