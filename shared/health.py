"""Liveness for probes and operators: can the app reach PostgreSQL, and is the drain running?"""
from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import ConnectionPool



@dataclass(frozen=True)
class HealthReport:
    database: str
    last_ingest_run: str | None
    last_ingest_status: str | None

    @property
    def ok(self) -> bool:
        return self.database == "ok"

    def as_dict(self) -> dict:
        return {
            "status": "ok" if self.ok else "degraded",
            "database": self.database,
            "last_ingest_run": self.last_ingest_run,
            "last_ingest_status": self.last_ingest_status,
        }


def check_health(pool: ConnectionPool) -> HealthReport:
    try:
        with pool.connection(timeout=5) as conn:
            row = conn.execute(
                "SELECT started_at, status FROM ingest_runs ORDER BY id DESC LIMIT 1"
            ).fetchone()
    except Exception:
        # A probe answers 503 with a fixed message; the cause is in the logs, not the body.
        return HealthReport("unreachable", None, None)
    if row is None:
        return HealthReport("ok", None, None)
    return HealthReport("ok", row["started_at"].isoformat(), row["status"])
