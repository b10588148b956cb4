"""Create a user of the admin API in an existing tenant, for local use (and first owners).

    .venv/bin/python scripts/create_user.py demo me@example.com owner            # password generated, printed once
    echo 'a long passphrase' | .venv/bin/python scripts/create_user.py demo me@example.com staff --password-stdin

Connects as the database owner, since no tenant is known yet to scope the application role:
--database-url, else $ADMIN_DATABASE_URL, else the local stack's superuser (scripts/dev up), reached
at the host, port and database of DATABASE_URL in local.settings.json. The user's creation is
written to audit_log like one made through the API.

Also, for the local stack (no --database-url): if local.settings.json has no usable AUTH_JWT_SECRET (missing, or the
example's CHANGE-ME), a random one is written there (scripts/dev keeps it), so the API can issue
tokens once the function app restarts.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

from shared.accounts.passwords import MIN_PASSWORD_LENGTH, generate_password, hash_password  # noqa: E402

SETTINGS_FILE = ROOT / "local.settings.json"
SUPERUSER_PASSWORD_FILE = ROOT / ".localstack" / "postgres" / "superuser-password"


def local_values() -> dict[str, str]:
    try:
        return dict(json.loads(SETTINGS_FILE.read_text(encoding="utf-8")).get("Values") or {})
    except (OSError, ValueError):
        return {}


def owner_dsn(explicit: str | None) -> str:
    if explicit or os.environ.get("ADMIN_DATABASE_URL"):
        return explicit or os.environ["ADMIN_DATABASE_URL"]
    app_url = os.environ.get("DATABASE_URL") or local_values().get("DATABASE_URL")
    if not app_url or not SUPERUSER_PASSWORD_FILE.exists():
        sys.exit("no database: pass --database-url (an owner's DSN), or run scripts/dev up first")
    parts = urlsplit(app_url)
    password = SUPERUSER_PASSWORD_FILE.read_text().strip()
    return f"postgresql://postgres:{password}@{parts.hostname}:{parts.port or 5432}{parts.path}"


def ensure_local_jwt_secret() -> None:
    if not SETTINGS_FILE.exists():
        return
    document = json.loads(SETTINGS_FILE.read_text(encoding="utf-8"))
    values = document.setdefault("Values", {})
    current = str(values.get("AUTH_JWT_SECRET") or "")
    if len(current) >= 32 and "CHANGE-ME" not in current:
        return
    values["AUTH_JWT_SECRET"] = secrets.token_hex(32)
    SETTINGS_FILE.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.chmod(SETTINGS_FILE, 0o600)
    print(
        "wrote a random AUTH_JWT_SECRET to local.settings.json: restart the function app (scripts/dev up)",
        file=sys.stderr,
    )


def create(dsn: str, tenant_slug: str, email: str, role: str, password_hash: str) -> UUID | None:
    """The new user's id, or None when there is no such tenant; the user and its audit row commit together."""
    with psycopg.connect(dsn) as conn:
        tenant = conn.execute("SELECT id FROM tenants WHERE slug = %s", (tenant_slug,)).fetchone()
        if tenant is None:
            return None
        row = conn.execute(
            "INSERT INTO users (tenant_id, email, role, password_hash) VALUES (%s, %s, %s, %s) RETURNING id",
            (tenant[0], email, role, password_hash),
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO audit_log (tenant_id, action, target_type, target_id, source_address, detail)"
            " VALUES (%s, 'user.create', 'user', %s, 'scripts/create_user.py', %s)",
            (tenant[0], str(row[0]), Jsonb({"role": role})),
        )
        user_id: UUID = row[0]
        return user_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tenant", help="the tenant's slug, e.g. demo")
    parser.add_argument("email")
    parser.add_argument("role", choices=["owner", "staff", "viewer"])
    parser.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
    parser.add_argument("--database-url", help="an owner's DSN (default: $ADMIN_DATABASE_URL or the local stack)")
    args = parser.parse_args(argv)

    if args.password_stdin:
        password, generated = sys.stdin.readline().rstrip("\r\n"), False
        if len(password) < MIN_PASSWORD_LENGTH:
            sys.exit(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    else:
        password, generated = generate_password(), True
    email = args.email.strip().lower()

    try:
        user_id = create(owner_dsn(args.database_url), args.tenant, email, args.role, hash_password(password))
    except psycopg.errors.UniqueViolation:
        sys.exit(f"{email} already exists in tenant {args.tenant!r}")
    except psycopg.Error as error:
        # MQ402 is the quota trigger's (0008); anything else (no server, wrong password) is said in
        # one line too: the operator needs the reason, not our stack.
        lines = (error.diag.message_primary or str(error)).strip().splitlines()
        reason = lines[0] if lines else type(error).__name__
        if error.sqlstate == "MQ402":
            sys.exit(f"cannot add {email} to tenant {args.tenant!r}: {reason} (an operator can change the plan)")
        sys.exit(f"cannot add {email} to tenant {args.tenant!r}: {reason}")
    if user_id is None:
        sys.exit(f"no tenant with slug {args.tenant!r}")
    if not args.database_url:  # the local stack's settings, not some other database's
        ensure_local_jwt_secret()
    print(f"created {args.role} {email} in tenant {args.tenant} (id {user_id})")
    if generated:
        print(f"password (shown once): {password}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
