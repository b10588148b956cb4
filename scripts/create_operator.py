"""Create a platform operator (who administers tenants and plans through /api/platform/*).

    .venv/bin/python scripts/create_operator.py ops@example.com                  # password generated, printed once
    echo 'a long passphrase' | .venv/bin/python scripts/create_operator.py ops@example.com --password-stdin

Operators are not tenant users and the application role cannot create or even read them, so this
connects as the database owner: --database-url, else $ADMIN_DATABASE_URL, else the local stack's
superuser (as scripts/create_user.py does).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import psycopg  # noqa: E402
from create_user import ensure_local_jwt_secret, owner_dsn  # noqa: E402

from shared.accounts.passwords import MIN_PASSWORD_LENGTH, generate_password, hash_password  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("email")
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
    with psycopg.connect(owner_dsn(args.database_url)) as conn:
        try:
            row = conn.execute(
                "INSERT INTO platform_operators (email, password_hash) VALUES (%s, %s) RETURNING id",
                (email, hash_password(password)),
            ).fetchone()
        except psycopg.errors.UniqueViolation:
            sys.exit(f"operator {email} already exists")
    assert row is not None
    if not args.database_url:
        ensure_local_jwt_secret()
    print(f"created platform operator {email} (id {row[0]})")
    if generated:
        print(f"password (shown once): {password}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
