#!/usr/bin/env python3
"""Restore drill: restores a backup from Blob Storage into a scratch database and checks its row counts per table.

    .venv/bin/python scripts/pg_restore_drill.py [--database-url URL] [--backup pg/<db>/<stamp>.json] [--keep]
        URL defaults to $ADMIN_DATABASE_URL (needs CREATEDB, and superuser or BYPASSRLS to count every tenant's rows);
        storage options as scripts/pg_backup.py

Takes the newest complete backup of the URL's database (one whose manifest exists) unless --backup names one,
checks its SHA-256, creates restore_drill_<UTC time> on the same server, runs pg_restore --exit-on-error into it,
and compares the exact row count of every table with the manifest, which pg_backup took in the snapshot it dumped:
any difference fails the drill (exit 1). The source's live counts are printed beside them, for information (they
move on after the backup). The scratch database is dropped afterwards unless --keep.
The last line is machine-readable: restore_drill ok=... tables=... rows=... mismatches=... restore_s=...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from scripts.pg_backup import (  # noqa: E402
    DEFAULT_PREFIX,
    BackupError,
    container_from,
    count_rows,
    libpq_env,
    pg_tool,
    require_sees_everything,
    sha256_of,
    storage_args,
    with_database,
)


@dataclass
class DrillResult:
    manifest_blob: str
    scratch_database: str
    expected: dict[str, int]
    restored: dict[str, int]
    source_now: dict[str, int]
    restore_s: float
    mismatches: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def latest_manifest(container: Any, prefix: str, dbname: str) -> str:
    names = sorted(
        blob.name for blob in container.list_blobs(name_starts_with=f"{prefix}{dbname}/") if blob.name.endswith(".json")
    )
    if not names:
        raise BackupError(f"no backup of {dbname} under {container.container_name}/{prefix}{dbname}/")
    return names[-1]


def drill(
    database_url: str,
    container: Any,
    manifest_blob: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    keep: bool = False,
) -> DrillResult:
    with psycopg.connect(database_url, autocommit=True) as conn:
        require_sees_everything(conn)
        dbname = conn.info.dbname
        source_now = count_rows(conn)
    manifest_blob = manifest_blob or latest_manifest(container, prefix, dbname)
    manifest = json.loads(container.download_blob(manifest_blob).readall())
    scratch = "restore_drill_" + datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    admin_url = with_database(database_url, "postgres")
    with tempfile.TemporaryDirectory(prefix="pg-drill-") as folder:
        dump = Path(folder) / "database.dump"
        with dump.open("wb") as handle:
            container.download_blob(manifest["dump_blob"]).readinto(handle)
        if sha256_of(dump) != manifest["sha256"]:
            raise BackupError(f"{manifest['dump_blob']} does not match the SHA-256 in {manifest_blob}")
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
        try:
            started = time.monotonic()
            target, env = libpq_env(database_url, scratch)
            # --no-owner: objects belong to whoever restores (on a managed server the dump's owner may not exist);
            # grants and row-level security policies are restored, so the app roles would work as before.
            subprocess.run(
                [
                    pg_tool("pg_restore"),
                    "--exit-on-error",
                    "--no-owner",
                    "--no-password",
                    f"--dbname={target}",
                    str(dump),
                ],
                check=True,
                env=env,
                capture_output=True,
            )
            restore_s = time.monotonic() - started
            with psycopg.connect(with_database(database_url, scratch), autocommit=True) as conn:
                restored = count_rows(conn)
        finally:
            if not keep:
                with psycopg.connect(admin_url, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch)))
    expected: dict[str, int] = manifest["row_counts"]
    result = DrillResult(manifest_blob, scratch, expected, restored, source_now, restore_s)
    for table in sorted(set(expected) | set(restored)):
        if expected.get(table) != restored.get(table):
            result.mismatches[table] = (expected.get(table), restored.get(table))
    return result


def print_result(result: DrillResult) -> None:
    print(f"backup {result.manifest_blob} restored into {result.scratch_database} in {result.restore_s:.1f} s")
    print(f"{'table':<48} {'backup':>12} {'restored':>12} {'source now':>12}")
    for table in sorted(set(result.expected) | set(result.restored)):
        flag = "  MISMATCH" if table in result.mismatches else ""
        print(
            f"{table:<48} {result.expected.get(table, '-'):>12} {result.restored.get(table, '-'):>12} "
            f"{result.source_now.get(table, '-'):>12}{flag}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("ADMIN_DATABASE_URL"))
    parser.add_argument("--backup", help="the manifest blob (.json) to restore; default: the newest")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database for inspection")
    storage_args(parser)
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("no database: pass --database-url or set ADMIN_DATABASE_URL")
    try:
        result = drill(args.database_url, container_from(args, os.environ), args.backup, args.prefix, args.keep)
    except BackupError as error:
        print(f"pg_restore_drill: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(
            f"pg_restore_drill: pg_restore failed: {(error.stderr or b'').decode(errors='replace')[-2000:]}",
            file=sys.stderr,
        )
        return 1
    print_result(result)
    print(
        f"restore_drill ok={str(result.ok).lower()} tables={len(result.restored)} "
        f"rows={sum(result.restored.values())} mismatches={len(result.mismatches)} restore_s={result.restore_s:.1f}"
    )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
