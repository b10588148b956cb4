"""blob_archiver: each tenant's closed days past its hot window go to Blob Storage as Parquet, then
out of PostgreSQL.

One file per tenant and UTC day, {tenant_id}/{YYYY}/{MM}/{DD}.parquet, readable as is by DuckDB or
pandas (schema below; blob metadata and Parquet key-value metadata carry the row count, SHA-256
and schema version). archive_manifest records each day's state, and every step commits before the
next starts:

    export to a local file -> pending (row_count, bytes, sha256 of that file)
    upload (overwrite)     -> uploaded
    read back: size, sha256, Parquet row count equal the manifest's -> verified
    DELETE the day's rows and set deleted, in ONE transaction; a row count that differs from the
    manifest's rolls it back and sends the day back to pending

A crash leaves the day at the last committed state, and the next run carries on from there: a
pending day is exported and uploaded again (overwriting), so a half-written blob never counts; rows
are deleted only after a verified upload, and the delete commits with its state, so no instant
loses rows or leaves them both deleted and unrecorded. A run holds a session advisory lock (one
archiver at a time), stops starting work when its time budget is spent, and resumes on the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information
import pyarrow.csv as pacsv  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
from psycopg.rows import DictRow

from shared.core import observability
from shared.core.exceptions import ArchiveVerificationError, ConfigurationError
from shared.core.settings import Settings
from shared.core.sql import QUERIES, one_row
from shared.telemetry.retention import (
    TenantWindow,
    delete_old_decoder_events,
    drop_empty_partitions,
    ensure_partitions_ahead,
    maintenance_connection,
    tenant_windows,
)
from shared.telemetry.rollups import delete_old_rollups

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# The archive file's columns (schema version 1). tenant_id repeats per row (dictionary-encoded,
# nearly free) so files of many tenants or days can be read as one table.
ARCHIVE_SCHEMA = pa.schema(
    [
        pa.field("tenant_id", pa.string(), nullable=False),
        pa.field("device_id", pa.int64(), nullable=False),
        pa.field("device", pa.string()),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("received_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("value_bool", pa.bool_()),
        pa.field("value_text", pa.string()),
    ]
)
# export_range_csv_raw's columns, in order.
_CSV_COLUMNS = ["device_id", "device", "metric", "ts", "seq", "received_at", "value", "value_bool", "value_text"]
_CSV_TYPES = {
    "device_id": pa.int64(),
    "device": pa.string(),
    "metric": pa.string(),
    "ts": pa.int64(),
    "seq": pa.int64(),
    "received_at": pa.int64(),
    "value": pa.float64(),
    "value_bool": pa.bool_(),
    "value_text": pa.string(),
}
_CHUNK = 4 << 20

# Crash points a test can inject failures at (hook(point, tenant_id, day) raising there).
HOOK_POINTS = ("pending", "blob_written", "uploaded", "verified", "rows_deleted", "deleted")
Hook = Callable[[str, UUID, date], None]


class _RowsChanged(Exception):
    """The day's row count differs from the manifest's at delete time (rolls the delete back)."""


def blob_name(tenant_id: UUID, day: date) -> str:
    return f"{tenant_id}/{day:%Y/%m/%d}.parquet"


@dataclass(frozen=True)
class DayFile:
    path: Path
    row_count: int
    bytes: int
    sha256: str


@dataclass
class ArchiveReport:
    days_archived: int = 0
    rows_deleted: int = 0
    bytes_uploaded: int = 0
    days_left: int = 0  # candidates not reached within the time budget
    skipped_reappeared: list[tuple[UUID, date]] = field(default_factory=list)
    busy: bool = False  # another archiver run holds the lock
    decoder_events_deleted: int = 0


# --- the file -----------------------------------------------------------------------------------


def day_range(tenant_id: UUID, day: date) -> dict[str, Any]:
    """export_range_csv_raw's parameters for one tenant's UTC day, every device."""
    start = datetime.combine(day, datetime.min.time(), UTC)
    return {"tenant_id": tenant_id, "from": start, "to": start + timedelta(days=1), "device_id": None}


def export_day(conn: psycopg.Connection[DictRow], tenant_id: UUID, day: date, workdir: Path) -> DayFile:
    """Writes one tenant's day as Parquet under workdir: COPY to CSV (PostgreSQL's fastest way
    out), then pyarrow's multi-threaded CSV reader, batch by batch, so memory stays bounded."""
    csv_path = workdir / f"{tenant_id}-{day}.csv"
    with (
        csv_path.open("wb") as out,
        conn.cursor().copy(QUERIES["export_range_csv_raw"], day_range(tenant_id, day)) as copy,
    ):
        for chunk in copy:
            out.write(chunk)
    path = workdir / f"{tenant_id}-{day}.parquet"
    return write_parquet(csv_path, path, tenant_id, {"day": day.isoformat()})


def write_parquet(csv_path: Path, path: Path, tenant_id: UUID, metadata: dict[str, str]) -> DayFile:
    """Turns export_range_csv_raw-shaped CSV into an archive-schema Parquet file (the CSV is removed)."""
    meta = {
        b"mqtt_saas.schema_version": str(SCHEMA_VERSION).encode(),
        b"mqtt_saas.tenant_id": str(tenant_id).encode(),
        **{f"mqtt_saas.{k}".encode(): v.encode() for k, v in metadata.items()},
    }
    schema = ARCHIVE_SCHEMA.with_metadata(meta)
    rows = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in _csv_batches(csv_path):
            table = _to_archive_table(batch, str(tenant_id), schema)
            writer.write_table(table, row_group_size=1 << 20)
            rows += table.num_rows
    csv_path.unlink()
    return DayFile(path, rows, path.stat().st_size, sha256_file(path))


def _csv_batches(path: Path) -> Iterator[pa.RecordBatch]:
    if path.stat().st_size == 0:
        return
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=_CSV_COLUMNS, block_size=16 << 20),
        # PostgreSQL's CSV writes NULL as an empty unquoted field and '' as "": keep them apart.
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=_CSV_TYPES,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )
    yield from reader


def _to_archive_table(batch: pa.RecordBatch, tenant_id: str, schema: pa.Schema) -> pa.Table:
    n = batch.num_rows
    ts_type = pa.timestamp("us", tz="UTC")
    columns: dict[str, Any] = {
        "tenant_id": pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int32()), pa.array([tenant_id])).cast(
            pa.string()
        ),
        "device_id": batch.column("device_id"),
        "device": batch.column("device"),
        "metric": batch.column("metric"),
        "ts": batch.column("ts").cast(ts_type),
        "seq": batch.column("seq"),
        "received_at": batch.column("received_at").cast(ts_type),
        "value": batch.column("value"),
        "value_bool": batch.column("value_bool"),
        "value_text": batch.column("value_text"),
    }
    return pa.Table.from_arrays([columns[f.name] for f in ARCHIVE_SCHEMA], schema=schema)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def blob_metadata(tenant_id: UUID, day: date, file: DayFile) -> dict[str, str]:
    return {
        "row_count": str(file.row_count),
        "sha256": file.sha256,
        "schema_version": str(SCHEMA_VERSION),
        "tenant_id": str(tenant_id),
        "day": day.isoformat(),
    }


def upload(container: Any, name: str, file: DayFile, metadata: dict[str, str]) -> None:
    """Overwrites: an earlier attempt's blob (pending, maybe half written) never survives."""
    with file.path.open("rb") as data:
        container.upload_blob(name, data, overwrite=True, metadata=metadata, length=file.bytes, max_concurrency=2)


def download_verified(container: Any, manifest: DictRow, target: Path) -> Path:
    """Downloads the manifest's blob to target and checks size, SHA-256, blob metadata and the
    Parquet row count against the manifest; raises ArchiveVerificationError when any differs."""
    blob = container.get_blob_client(manifest["blob_name"])
    digest = hashlib.sha256()
    size = 0
    downloader = blob.download_blob(max_concurrency=2)
    props = downloader.properties
    with target.open("wb") as out:
        for chunk in downloader.chunks():
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    problems = []
    if size != manifest["bytes"] or props.size != manifest["bytes"]:
        problems.append(f"size {size} != {manifest['bytes']}")
    if digest.hexdigest() != manifest["sha256"]:
        problems.append("sha256 differs")
    if (props.metadata or {}).get("sha256") != manifest["sha256"]:
        problems.append("blob metadata sha256 differs")
    if not problems:
        rows = pq.read_metadata(target).num_rows
        if rows != manifest["row_count"]:
            problems.append(f"parquet rows {rows} != {manifest['row_count']}")
    if problems:
        raise ArchiveVerificationError(f"{manifest['blob_name']}: {'; '.join(problems)}")
    return target


# --- the state machine --------------------------------------------------------------------------


def _manifest(conn: psycopg.Connection[DictRow], tenant_id: UUID, day: date) -> DictRow | None:
    return conn.execute(QUERIES["get_manifest"], {"tenant_id": tenant_id, "day": day}).fetchone()


def _advance(conn: psycopg.Connection[DictRow], tenant_id: UUID, day: date, from_: str, to: str) -> None:
    cur = conn.execute(QUERIES["set_manifest_state"], {"tenant_id": tenant_id, "day": day, "from": from_, "to": to})
    if cur.rowcount != 1:
        raise RuntimeError(f"archive_manifest {tenant_id}/{day} was not {from_}")


def archive_day(
    conn: psycopg.Connection[DictRow],
    container: Any,
    tenant_id: UUID,
    day: date,
    workdir: Path,
    hook: Hook | None = None,
) -> tuple[int, int] | None:
    """Takes one tenant's day from wherever its manifest says to deleted. Returns (rows deleted,
    bytes uploaded), or None when the day was archived before and rows have reappeared (left
    alone and logged: the drain's INGEST_MAX_PAST_DAYS is meant to stay inside every plan's window).
    conn: autocommit, as the maintenance role."""
    point: Callable[[str], None] = (lambda name: hook(name, tenant_id, day)) if hook else (lambda name: None)
    uploaded_bytes = 0
    for _attempt in range(3):
        row = _manifest(conn, tenant_id, day)
        state = row["state"] if row else None
        if state == "deleted":
            # rows reappeared in a day already archived and deleted: left in place
            observability.event(log, "archive.rows_reappeared", {"tenant_id": tenant_id, "day": day}, logging.WARNING)
            return None
        if state in (None, "pending"):
            file = export_day(conn, tenant_id, day, workdir)
            name = blob_name(tenant_id, day)
            conn.execute(
                QUERIES["record_pending"],
                {
                    "tenant_id": tenant_id,
                    "day": day,
                    "blob_name": name,
                    "row_count": file.row_count,
                    "bytes": file.bytes,
                    "sha256": file.sha256,
                    "schema_version": SCHEMA_VERSION,
                },
            )
            point("pending")
            upload(container, name, file, blob_metadata(tenant_id, day, file))
            file.path.unlink()
            uploaded_bytes += file.bytes
            point("blob_written")
            _advance(conn, tenant_id, day, "pending", "uploaded")
            point("uploaded")
            state = "uploaded"
        if state == "uploaded":
            manifest = _manifest(conn, tenant_id, day)
            assert manifest is not None
            try:
                download_verified(container, manifest, workdir / "verify.parquet").unlink()
            except ArchiveVerificationError:
                observability.event(
                    log, "archive.verification_failed", {"tenant_id": tenant_id, "day": day}, logging.WARNING
                )
                _advance(conn, tenant_id, day, "uploaded", "pending")
                continue
            _advance(conn, tenant_id, day, "uploaded", "verified")
            point("verified")
            state = "verified"
        if state == "verified":
            try:
                with conn.transaction():
                    manifest = _manifest(conn, tenant_id, day)  # FOR UPDATE: one deleter per day
                    assert manifest is not None and manifest["state"] == "verified"
                    deleted = conn.execute(QUERIES["delete_day"], {"tenant_id": tenant_id, "day": day}).rowcount
                    point("rows_deleted")
                    if deleted != manifest["row_count"]:
                        raise _RowsChanged
                    _advance(conn, tenant_id, day, "verified", "deleted")
            except _RowsChanged:
                # Rows arrived (or went) since the export: the file no longer is the day. Nothing
                # was deleted (rolled back); export again.
                observability.event(log, "archive.day_changed", {"tenant_id": tenant_id, "day": day}, logging.WARNING)
                _advance(conn, tenant_id, day, "verified", "pending")
                continue
            point("deleted")
            return deleted, uploaded_bytes
    raise ArchiveVerificationError(f"{tenant_id}/{day}: verification failed three times")


# --- a run --------------------------------------------------------------------------------------


def archive_candidates(
    conn: psycopg.Connection[DictRow], windows: list[TenantWindow], today: date
) -> list[tuple[UUID, date]]:
    """The (tenant, day) pairs to work on, oldest day first."""
    hot = [(w.tenant_id, cutoff) for w in windows if (cutoff := w.cutoff(today)) is not None]
    rows = conn.execute(
        QUERIES["archive_candidates"], {"tenant_ids": [t for t, _ in hot], "cutoffs": [c for _, c in hot]}
    ).fetchall()
    return [(r["tenant_id"], r["day"]) for r in rows]


def archive_due_days(
    conn: psycopg.Connection[DictRow],
    container: Any,
    windows: list[TenantWindow],
    today: date,
    time_budget_s: float,
    hook: Hook | None = None,
) -> ArchiveReport:
    """Archives every due (tenant, day) until done or the budget is spent. conn: autocommit."""
    report = ArchiveReport()
    deadline = time.monotonic() + time_budget_s
    if not one_row(conn.execute(QUERIES["try_archiver_lock"]), "try_archiver_lock")["locked"]:
        report.busy = True
        return report
    try:
        candidates = archive_candidates(conn, windows, today)
        with tempfile.TemporaryDirectory(prefix="archive-") as tmp:
            for index, (tenant_id, day) in enumerate(candidates):
                if time.monotonic() >= deadline:
                    report.days_left = len(candidates) - index
                    break
                done = archive_day(conn, container, tenant_id, day, Path(tmp), hook)
                if done is None:
                    report.skipped_reappeared.append((tenant_id, day))
                    continue
                report.days_archived += 1
                report.rows_deleted += done[0]
                report.bytes_uploaded += done[1]
                observability.event(
                    log, "archive.day_archived", {"tenant_id": tenant_id, "day": day, "rows": done[0], "bytes": done[1]}
                )
    finally:
        if not conn.closed and not conn.broken:
            conn.execute(QUERIES["release_archiver_lock"])
    return report


def archive_container(settings: Settings, name: str | None = None) -> Any:
    """The archive container (or another, by name): Azurite (or any account) by connection string
    when one is set, else the account URL with DefaultAzureCredential (the Function App's managed
    identity; no key)."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    if settings.storage_connection_string is not None and settings.storage_connection_string.get_secret_value():
        service = BlobServiceClient.from_connection_string(settings.storage_connection_string.get_secret_value())
    elif settings.storage_account_url:
        from azure.identity import DefaultAzureCredential

        service = BlobServiceClient(settings.storage_account_url, credential=DefaultAzureCredential())
    else:
        raise ConfigurationError("no archive storage: set STORAGE_ACCOUNT_URL (or STORAGE_CONNECTION_STRING locally)")
    container = service.get_container_client(name or settings.archive_container)
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    return container


def run_blob_archiver(
    settings: Settings, *, container: Any = None, today: date | None = None, hook: Hook | None = None
) -> ArchiveReport:
    """One blob_archiver run: partitions ahead, due days archived, emptied partitions dropped,
    rollups and decoder events past their retention deleted. today (UTC) and hook: for tests."""
    now = datetime.now(UTC)
    today = today or now.date()
    container = container if container is not None else archive_container(settings)
    with maintenance_connection(settings) as conn:
        ensure_partitions_ahead(conn, today, settings.partition_ahead_days)
        windows = tenant_windows(conn)
        report = archive_due_days(conn, container, windows, today, settings.archive_time_budget_s, hook)
        if not report.busy:
            drop_empty_partitions(conn, today, settings.ingest_max_past_days)
            delete_old_rollups(
                conn,
                minute_days=settings.rollup_1m_retention_days,
                hour_days=settings.rollup_1h_retention_days,
                now=now,
            )
            report.decoder_events_deleted = delete_old_decoder_events(conn, now)
    observability.event(
        log,
        "archive.run",
        {
            "days": report.days_archived,
            "rows": report.rows_deleted,
            "bytes": report.bytes_uploaded,
            "days_left": report.days_left,
            "busy": report.busy,
            "decoder_events_deleted": report.decoder_events_deleted,
        },
    )
    if report.days_left:
        observability.event(log, "archive.out_of_time", {"days_left": report.days_left}, logging.WARNING)
    return report


# --- getting data back ----------------------------------------------------------------------------


@dataclass
class RestoreReport:
    table: str
    days: list[date] = field(default_factory=list)
    rows: int = 0


def restore_days(
    conn: psycopg.Connection[DictRow], container: Any, tenant_id: UUID, first: date, last: date, table: str
) -> RestoreReport:
    """Loads a tenant's archived days in [first, last] into archive_restore.<table> (created if
    missing; columns as the archive file's). Each blob is verified against its manifest row (size,
    SHA-256, row count) before it is loaded, and each day replaces that day's earlier restore in one
    transaction, so restoring twice never doubles a row. conn: autocommit, maintenance role."""
    from psycopg import sql

    target = sql.Identifier("archive_restore", table)
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (tenant_id uuid NOT NULL, device_id bigint NOT NULL, device text,"
            " metric text NOT NULL, ts timestamptz NOT NULL, seq bigint NOT NULL, received_at timestamptz NOT NULL,"
            " value double precision, value_bool boolean, value_text text)"
        ).format(target)
    )
    report = RestoreReport(table=f"archive_restore.{table}")
    manifests = conn.execute(QUERIES["archived_days"], {"tenant_id": tenant_id, "from": first, "to": last}).fetchall()
    with tempfile.TemporaryDirectory(prefix="restore-") as tmp:
        for manifest in manifests:
            path = download_verified(container, manifest, Path(tmp) / "day.parquet")
            day = manifest["day"]
            parquet = pq.ParquetFile(path)
            with conn.transaction():
                conn.execute(
                    sql.SQL(
                        "DELETE FROM {} WHERE tenant_id = %(tenant_id)s"
                        " AND ts >= %(day)s::date::timestamp AT TIME ZONE 'UTC'"
                        " AND ts < (%(day)s::date + 1)::timestamp AT TIME ZONE 'UTC'"
                    ).format(target),
                    {"tenant_id": tenant_id, "day": day},
                )
                loaded = 0
                with conn.cursor().copy(
                    sql.SQL("COPY {} ({}) FROM STDIN").format(
                        target, sql.SQL(", ").join(sql.Identifier(f.name) for f in ARCHIVE_SCHEMA)
                    )
                ) as copy:
                    for batch in parquet.iter_batches(batch_size=65536):
                        columns = [batch.column(f.name).to_pylist() for f in ARCHIVE_SCHEMA]
                        for row in zip(*columns, strict=True):
                            copy.write_row(row)
                        loaded += batch.num_rows
                if loaded != manifest["row_count"]:
                    raise ArchiveVerificationError(
                        f"{manifest['blob_name']}: loaded {loaded} rows, manifest says {manifest['row_count']}"
                    )
            path.unlink()
            report.days.append(day)
            report.rows += loaded
    return report


def tenant_id_of(conn: psycopg.Connection[DictRow], tenant: str) -> UUID:
    """A tenant named by slug or id."""
    row = conn.execute(QUERIES["tenant_by_slug_or_id"], {"tenant": tenant}).fetchone()
    if row is None:
        raise LookupError(f"no tenant {tenant!r}")
    return UUID(str(row["id"]))
