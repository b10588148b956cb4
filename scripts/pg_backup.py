#!/usr/bin/env python3
"""Backs up the PostgreSQL database to Blob Storage: a pg_dump custom-format file and a manifest of exact row counts.

    .venv/bin/python scripts/pg_backup.py [--database-url URL] [--container backups] [--prefix pg/]
        URL defaults to $ADMIN_DATABASE_URL: a role that is superuser or BYPASSRLS (every tenant table FORCEs
        row-level security, so any other role dumps and counts nothing, or fails)
        storage: $STORAGE_CONNECTION_STRING (Azurite locally, or an account key), else --account-url with the
        caller's Azure identity (DefaultAzureCredential: az login, or a managed identity)

The row counts are taken in the same snapshot pg_dump dumps (pg_export_snapshot + pg_dump --snapshot), so the
restore drill (scripts/pg_restore_drill.py) can demand exact equality however busy the database was. Writes
<prefix><database>/<UTC time>.dump and .json (the manifest: counts per table, size, SHA-256, server version) and
never overwrites a blob. The last line is machine-readable: pg_backup blob=... bytes=... tables=... rows=...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

DEFAULT_CONTAINER = "backups"
DEFAULT_PREFIX = "pg/"

# Leaf tables only (a partitioned parent's count would double its partitions'); schemas of extensions and the
# catalog are not ours to check.
TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 1, 2
"""


class BackupError(RuntimeError):
    """The backup or the drill cannot go on; the message says why."""


@dataclass(frozen=True)
class Backup:
    dump_blob: str
    manifest_blob: str
    manifest: dict[str, Any]


def pg_tool(name: str) -> str:
    """The newest server's client tools first: pg_dump refuses a server newer than itself."""
    try:
        from scripts.localstack import postgres_bin_dir

        candidate = postgres_bin_dir() / name
        if candidate.exists():
            return str(candidate)
    except Exception:  # noqa: BLE001 - no local server: fall back to PATH
        pass
    found = shutil.which(name)
    if not found:
        raise BackupError(f"{name} not found (apt install postgresql-client)")
    return found


def libpq_env(url: str, dbname: str | None = None) -> tuple[str, dict[str, str]]:
    """The URL without its password, and an environment carrying it: a password in argv would show in ps."""
    parts = urlsplit(url)
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
    netloc = (parts.username or "") + "@" + (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    path = f"/{dbname}" if dbname else parts.path
    return urlunsplit((parts.scheme, netloc, path, parts.query, "")), env


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{dbname}", parts.query, parts.fragment))


# Tables with FORCE'd row-level security that the connected role would see only part of: it is
# not superuser or BYPASSRLS, and it is not the owner with the owner_access policy of migration 0012
# (how Azure's and Supabase's non-superuser admins see every row).
HIDDEN_TABLES = """
SELECT n.nspname || '.' || c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relrowsecurity AND c.relforcerowsecurity
  AND NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user)
  AND NOT (pg_has_role(current_user, c.relowner, 'USAGE') AND EXISTS (
      SELECT FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'owner_access'))
ORDER BY 1
"""


def require_sees_everything(conn: psycopg.Connection[Any]) -> None:
    hidden = [name for (name,) in conn.execute(HIDDEN_TABLES).fetchall()]
    if hidden:
        raise BackupError(
            "the backup role would dump and count only some rows of "
            f"{', '.join(hidden[:5])}{' ...' if len(hidden) > 5 else ''} (FORCE'd row-level security): "
            "use the tables' owner (migration 0012 gives it owner_access), a superuser "
            "or a BYPASSRLS role"
        )


def count_rows(conn: psycopg.Connection[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for schema, table in conn.execute(TABLES).fetchall():
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        row = conn.execute(query).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def container_client(container: str, connection_string: str | None, account_url: str | None) -> Any:
    from azure.storage.blob import BlobServiceClient

    if connection_string:
        service = BlobServiceClient.from_connection_string(connection_string)
    elif account_url:
        from azure.identity import DefaultAzureCredential

        service = BlobServiceClient(account_url, credential=DefaultAzureCredential())
    else:
        raise BackupError("no storage: set STORAGE_CONNECTION_STRING or pass --account-url")
    client = service.get_container_client(container)
    if not client.exists():
        client.create_container()
    return client


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def backup(database_url: str, container: Any, prefix: str = DEFAULT_PREFIX, now: datetime | None = None) -> Backup:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    # Autocommit, so the BEGIN below starts the one transaction whose snapshot pg_dump shares.
    with psycopg.connect(database_url, autocommit=True) as conn:
        require_sees_everything(conn)
        dbname = conn.info.dbname
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        # The transaction stays open until pg_dump has attached to its snapshot and finished: counts and dump are
        # the same instant of the database.
        snapshot_row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert snapshot_row is not None
        snapshot = str(snapshot_row[0])
        counts = count_rows(conn)
        server_version = conn.info.server_version
        with tempfile.TemporaryDirectory(prefix="pg-backup-") as folder:
            dump = Path(folder) / "database.dump"
            target, env = libpq_env(database_url)
            # --enable-row-security: without it pg_dump refuses a role that RLS binds (the owner on a
            # managed server); with it, the owner's owner_access policies let every row through.
            subprocess.run(
                [
                    pg_tool("pg_dump"),
                    "--format=custom",
                    f"--snapshot={snapshot}",
                    "--no-password",
                    "--enable-row-security",
                    f"--file={dump}",
                    f"--dbname={target}",
                ],
                check=True,
                env=env,
            )
            conn.execute("COMMIT")
            base = f"{prefix}{dbname}/{stamp}"
            manifest = {
                "database": dbname,
                "created_at": stamp,
                "snapshot": snapshot,
                "server_version": server_version,
                "dump_blob": f"{base}.dump",
                "bytes": dump.stat().st_size,
                "sha256": sha256_of(dump),
                "row_counts": counts,
            }
            with dump.open("rb") as handle:
                container.upload_blob(f"{base}.dump", handle, overwrite=False)
    # The manifest last: a backup without one is incomplete, and the drill never picks it.
    container.upload_blob(f"{base}.json", json.dumps(manifest, indent=2).encode(), overwrite=False)
    return Backup(f"{base}.dump", f"{base}.json", manifest)


def storage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--container", default=DEFAULT_CONTAINER)
    parser.add_argument("--prefix", default=DEFAULT_PREFIX)
    parser.add_argument("--account-url", help="https://<account>.blob.core.windows.net (with your Azure identity)")


def container_from(args: argparse.Namespace, env: Mapping[str, str]) -> Any:
    return container_client(args.container, env.get("STORAGE_CONNECTION_STRING"), args.account_url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("ADMIN_DATABASE_URL"))
    storage_args(parser)
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("no database: pass --database-url or set ADMIN_DATABASE_URL")
    try:
        done = backup(args.database_url, container_from(args, os.environ), args.prefix)
    except BackupError as error:
        print(f"pg_backup: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        # pg_dump has said why on stderr (a server newer than this pg_dump, a lost connection): nothing was uploaded.
        print(f"pg_backup: pg_dump failed ({error.returncode}); nothing was uploaded", file=sys.stderr)
        return 1
    manifest = done.manifest
    print(
        f"pg_backup blob={done.dump_blob} bytes={manifest['bytes']} tables={len(manifest['row_counts'])} "
        f"rows={sum(manifest['row_counts'].values())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
