"""Liveness for probes and operators: can the app reach PostgreSQL, and is the drain running?"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import PoolTimeout

if TYPE_CHECKING:
    from shared.core.db import DictPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthReport:
    database: str
    last_ingest_run: str | None
    last_ingest_status: str | None

    @property
    def ok(self) -> bool:
        return self.database == "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "degraded",
            "database": self.database,
            "last_ingest_run": self.last_ingest_run,
            "last_ingest_status": self.last_ingest_status,
        }


def check_health(pool: DictPool) -> HealthReport:
    try:
        with pool.connection(timeout=5) as conn:
            row = conn.execute("SELECT started_at, status FROM ingest_runs ORDER BY id DESC LIMIT 1").fetchone()
    except Exception as exc:
        # A probe answers 503 with a fixed message; the cause goes to the logs, not the body.
        log.warning("health: database unreachable: %s", _why_unreachable(pool, exc))
        return HealthReport("unreachable", None, None)
    if row is None:
        return HealthReport("ok", None, None)
    return HealthReport("ok", row["started_at"].isoformat(), row["status"])


def _why_unreachable(pool: DictPool, exc: Exception) -> str:
    """The driver's reason. A pool timeout only says no connection came in time (the pool keeps
    the cause to itself), so one direct attempt asks the server. psycopg's messages name the host
    and user, never the password."""
    if isinstance(exc, PoolTimeout):
        try:
            # The app's pool is built from a string; psycopg_pool also allows a callable.
            conninfo = pool.conninfo if isinstance(pool.conninfo, str) else pool.conninfo()
            psycopg.connect(conninfo, connect_timeout=3).close()
        except psycopg.Error as direct:
            exc = direct
        else:
            return "the pool timed out although a direct connection works (pool exhausted?)"
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line[:300]}"
