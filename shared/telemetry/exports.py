"""POST /api/exports: a tenant's readings over a time range (one device or all) as a Parquet or CSV
file in Blob Storage, read through a time-limited link.

The rows are read in the caller's tenant_transaction as the app role, so row-level security, not
this code, keeps other tenants' rows out of the file. Owners and staff only. The link is a
read-only SAS for that one blob: a user delegation SAS when the app reaches storage with its managed
identity (no key anywhere), a service SAS signed with the account key against Azurite locally.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from psycopg.rows import tuple_row

from shared.accounts.access import acting_user, audit
from shared.accounts.tokens import Principal
from shared.core import observability
from shared.core.db import DictConnection, DictPool, tenant_transaction
from shared.core.exceptions import DeviceNotFound, InvalidRange
from shared.core.settings import Settings
from shared.core.spreadsheet import write_csv
from shared.core.sql import QUERIES
from shared.telemetry.archive import DayFile, sha256_file, write_parquet

log = logging.getLogger(__name__)

EXPORT_ROLES = ("owner", "staff")
FORMATS = {"parquet": ("parquet", "application/vnd.apache.parquet"), "csv": ("csv", "text/csv")}
CSV_HEADER = ("device_id", "device", "metric", "ts", "seq", "received_at", "value", "value_bool", "value_text")
EXPORT_FETCH_ROWS = 10_000
# A SAS starts a little in the past: the storage service's clock may run behind ours.
_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Export:
    url: str
    expires_at: datetime
    blob: str
    format: str
    rows: int
    bytes: int
    sha256: str


def create_export(
    pool: DictPool,
    principal: Principal,
    settings: Settings,
    container: Any,
    *,
    source: str,
    device_id: int | None,
    start: datetime,
    end: datetime,
    fmt: str,
    now: datetime,
) -> Export:
    """Writes the file, uploads it, and returns its link. container: archive.archive_container's
    kind, for settings.export_container."""
    if start >= end:
        raise InvalidRange("'from' must be before 'to'.")
    if end - start > timedelta(days=settings.export_max_days):
        raise InvalidRange(f"An export spans at most {settings.export_max_days} days; narrow 'from'..'to'.")
    extension, content_type = FORMATS[fmt]
    name = f"{principal.tenant_id}/{now:%Y/%m/%d}/{uuid.uuid4()}.{extension}"
    params = {"tenant_id": principal.tenant_id, "device_id": device_id, "from": start, "to": end}
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        csv_path = Path(tmp) / "rows.csv"
        with tenant_transaction(pool, str(principal.tenant_id)) as conn:
            user = acting_user(conn, principal, *EXPORT_ROLES)
            if (
                device_id is not None
                and conn.execute(
                    QUERIES["device_exists"], {"tenant_id": principal.tenant_id, "device_id": device_id}
                ).fetchone()
                is None
            ):
                raise DeviceNotFound()
            if fmt == "parquet":
                rows = _copy_raw(conn, params, csv_path)
            else:
                rows = _write_spreadsheet_csv(conn, params, csv_path)
            audit(
                conn,
                principal.tenant_id,
                user["id"],
                "telemetry.export",
                "export",
                name,
                source,
                {"format": fmt, "device_id": device_id, "from": start.isoformat(), "to": end.isoformat(), "rows": rows},
            )
        if fmt == "parquet":
            file = write_parquet(
                csv_path,
                Path(tmp) / "rows.parquet",
                principal.tenant_id,
                {"from": start.isoformat(), "to": end.isoformat()},
            )
        else:
            file = DayFile(csv_path, rows, csv_path.stat().st_size, sha256_file(csv_path))
        from azure.storage.blob import ContentSettings

        with file.path.open("rb") as data:
            container.upload_blob(
                name,
                data,
                overwrite=True,
                length=file.bytes,
                # Whoever holds the link reads a tenant's data: no cache along the way keeps it.
                content_settings=ContentSettings(content_type=content_type, cache_control="no-store"),
                metadata={"row_count": str(file.row_count), "sha256": file.sha256},
            )
    expires_at = now + timedelta(seconds=settings.export_link_ttl_s)
    url = read_link(container, name, now, expires_at)
    observability.event(
        log,
        "export.written",
        {"tenant_id": principal.tenant_id, "rows": file.row_count, "bytes": file.bytes, "format": fmt},
    )
    return Export(url, expires_at, name, fmt, file.row_count, file.bytes, file.sha256)


def _copy_raw(conn: DictConnection, params: dict[str, Any], path: Path) -> int:
    """The rows as PostgreSQL's CSV, for pyarrow to turn into Parquet (never opened by a person)."""
    cursor = conn.cursor()
    with path.open("wb") as out, cursor.copy(QUERIES["export_range_csv_raw"], params) as copy:
        for chunk in copy:
            out.write(chunk)
    return max(cursor.rowcount, 0)


def _write_spreadsheet_csv(conn: DictConnection, params: dict[str, Any], path: Path) -> int:
    """The rows as a CSV for people: through shared/core/spreadsheet.py, so no cell is a formula. A
    server-side cursor keeps memory flat whatever the range holds."""
    with (
        conn.cursor("export_rows", row_factory=tuple_row) as cursor,
        path.open("w", encoding="utf-8", newline="") as out,
    ):
        cursor.itersize = EXPORT_FETCH_ROWS
        cursor.execute(QUERIES["export_range_rows"], params)
        return write_csv(out, CSV_HEADER, cursor)


def read_link(container: Any, name: str, now: datetime, expires_at: datetime) -> str:
    """A read-only SAS URL for one blob, valid until expires_at."""
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    blob = container.get_blob_client(name)
    credential = container.credential
    common: dict[str, Any] = {
        "account_name": container.account_name,
        "container_name": container.container_name,
        "blob_name": name,
        "permission": BlobSasPermissions(read=True),
        "start": now - _CLOCK_SKEW,
        "expiry": expires_at,
    }
    if getattr(credential, "account_key", None):
        token = generate_blob_sas(account_key=credential.account_key, **common)
    else:
        from azure.storage.blob import BlobServiceClient

        # The managed identity signs nothing itself: it asks for a user delegation key, valid no
        # longer than the link, and the SAS is signed with that.
        service = BlobServiceClient(container.url.rsplit("/", 1)[0], credential=credential)
        key = service.get_user_delegation_key(now - _CLOCK_SKEW, expires_at)
        token = generate_blob_sas(user_delegation_key=key, **common)
    return f"{blob.url}?{token}"
