"""Retention: each tenant's hot window (from its plan) and the day partitions around it.

A tenant's raw rows stay in PostgreSQL for its plan's window; older days are archived to blob
storage and deleted (shared/telemetry/archive.py). A day partition is dropped only once it holds no row of
any tenant, so a tenant with a longer window (or unlimited) keeps it alive. Partitions for the
coming days are created ahead, so the drain never writes into telemetry_default. What device
decoders saw (device_decoder_events) is kept DECODER_EVENT_RETENTION_DAYS.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from uuid import UUID

import psycopg
from psycopg.rows import DictRow, dict_row

from shared.core import observability
from shared.core.exceptions import ConfigurationError
from shared.core.settings import Settings
from shared.core.sql import QUERIES, one_row

log = logging.getLogger(__name__)


@contextmanager
def maintenance_connection(
    settings: Settings,
    application_name: str = "mqtt_saas_maintenance",
) -> Iterator[psycopg.Connection[DictRow]]:
    """An autocommit connection as the maintenance role (steps open their own transactions). One
    per timer run: the runs are minutes apart, so a pool would only hold idle connections. JIT
    off: its statements are many small index lookups that PostgreSQL would spend longer compiling
    than running (see rollups.sql jit_off)."""
    if settings.maintenance_database_url is None:
        raise ConfigurationError("MAINTENANCE_DATABASE_URL is not set")
    with psycopg.connect(
        settings.maintenance_database_url.get_secret_value(),
        autocommit=True,
        row_factory=dict_row,
        application_name=application_name,
        connect_timeout=10,
        options="-c jit=off",
    ) as conn:
        yield conn


# Decoder events explain the readings around them (a Sparkplug gap, a rebirth asked for, a node's death):
# a quarter covers any investigation of recent data, and a broken gateway's events (a rebirth request a
# minute at most) stay bounded. Deleted in batches: the next hourly run takes the rest.
DECODER_EVENT_RETENTION_DAYS = 90
DECODER_EVENT_PRUNE_BATCH = 50_000


@dataclass(frozen=True)
class TenantWindow:
    tenant_id: UUID
    plan: str
    raw_retention_days: int | None  # None: unlimited

    def cutoff(self, today: date) -> date | None:
        """The first day still hot: days before it are archived. None: nothing is."""
        if self.raw_retention_days is None:
            return None
        return today - timedelta(days=self.raw_retention_days)


def tenant_windows(conn: psycopg.Connection[DictRow]) -> list[TenantWindow]:
    """Every tenant's window, read now: a plan change counts from the next run."""
    return [
        TenantWindow(r["tenant_id"], r["plan"], r["raw_retention_days"])
        for r in conn.execute(QUERIES["tenant_retention"]).fetchall()
    ]


def ensure_partitions_ahead(conn: psycopg.Connection[DictRow], today: date, ahead_days: int) -> int:
    """Creates the day partitions for today .. today + ahead_days that are missing."""
    params = {"from": today, "to": today + timedelta(days=ahead_days)}
    row = one_row(conn.execute(QUERIES["ensure_partitions_ahead"], params), "ensure_partitions_ahead")
    return int(row["created"])


def drop_empty_partitions(conn: psycopg.Connection[DictRow], today: date, max_past_days: int) -> list[str]:
    """Drops the day partitions the drain can no longer write to (older than its
    INGEST_MAX_PAST_DAYS) that hold no row any more; returns their names."""
    before = today - timedelta(days=max_past_days + 1)
    rows = conn.execute(QUERIES["drop_empty_partitions"], {"before": before}).fetchall()
    dropped = [str(r["name"]) for r in rows]
    if dropped:
        observability.event(log, "retention.partitions_dropped", {"partitions": dropped})
    return dropped


def delete_old_decoder_events(
    conn: psycopg.Connection[DictRow],
    now: datetime,
    keep_days: int = DECODER_EVENT_RETENTION_DAYS,
    max_rows: int = DECODER_EVENT_PRUNE_BATCH,
) -> int:
    """Deletes decoder events older than keep_days (at most max_rows); returns how many went."""
    params = {"before": now - timedelta(days=keep_days), "max_rows": max_rows}
    return int(
        one_row(conn.execute(QUERIES["delete_old_decoder_events"], params), "delete_old_decoder_events")["deleted"]
    )
