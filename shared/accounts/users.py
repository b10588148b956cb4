"""The acting user of a request, and a tenant's users (owners manage them).

Every function runs in tenant_transaction with the tenant from the verified token, and first
reads the acting user's current row: a user deleted since the token was issued is refused, and
the role checked is the one stored now, not the one at login.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from shared.accounts.access import acting_user, audit
from shared.accounts.passwords import hash_password
from shared.accounts.tokens import Principal
from shared.core.db import DictConnection, DictPool, tenant_transaction
from shared.core.exceptions import EmailTaken, LastOwner, UserNotFound
from shared.core.paging import decode_cursor, page_of
from shared.core.sql import QUERIES, one_row

ROLES = ("owner", "staff", "viewer")


def _user(conn: DictConnection, principal: Principal, user_id: uuid.UUID) -> dict[str, Any]:
    row = conn.execute(QUERIES["get_user"], {"tenant_id": principal.tenant_id, "user_id": user_id}).fetchone()
    if row is None:
        raise UserNotFound()
    return row


def _keep_an_owner(conn: DictConnection, principal: Principal, target: dict[str, Any]) -> None:
    """Refuses to remove the tenant's last owner (owners locked, so concurrent requests serialise)."""
    owners = conn.execute(QUERIES["lock_owners"], {"tenant_id": principal.tenant_id}).fetchall()
    if target["role"] == "owner" and all(owner["id"] == target["id"] for owner in owners):
        raise LastOwner()


def me(pool: DictPool, principal: Principal) -> dict[str, Any]:
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        return acting_user(conn, principal)


def list_users(
    pool: DictPool, principal: Principal, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    after_created_at, after_id = decode_cursor(cursor)
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, "owner")
        rows = conn.execute(
            QUERIES["list_users"],
            {
                "tenant_id": principal.tenant_id,
                "after_created_at": after_created_at,
                "after_id": after_id,
                "limit": limit + 1,
            },
        ).fetchall()
    return page_of(rows, limit)


def get_user(pool: DictPool, principal: Principal, user_id: uuid.UUID) -> dict[str, Any]:
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, "owner")
        return _user(conn, principal, user_id)


def create_user(
    pool: DictPool, principal: Principal, email: str, role: str, password: str, source: str
) -> dict[str, Any]:
    password_hash = hash_password(password)  # before the transaction: argon2 is slow on purpose
    try:
        with tenant_transaction(pool, str(principal.tenant_id)) as conn:
            acting_user(conn, principal, "owner")
            row = one_row(
                conn.execute(
                    QUERIES["insert_user"],
                    {
                        "tenant_id": principal.tenant_id,
                        "email": email.strip().lower(),
                        "role": role,
                        "password_hash": password_hash,
                    },
                ),
                "insert_user",
            )
            audit(
                conn, principal.tenant_id, principal.user_id, "user.create", "user", row["id"], source, {"role": role}
            )
            return row
    except psycopg.errors.UniqueViolation:
        raise EmailTaken() from None


def change_role(pool: DictPool, principal: Principal, user_id: uuid.UUID, role: str, source: str) -> dict[str, Any]:
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, "owner")
        target = _user(conn, principal, user_id)
        if target["role"] == role:
            return target
        if role != "owner":
            _keep_an_owner(conn, principal, target)
        conn.execute(QUERIES["set_user_role"], {"tenant_id": principal.tenant_id, "user_id": user_id, "role": role})
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "user.change_role",
            "user",
            user_id,
            source,
            {"from": target["role"], "to": role},
        )
        return {**target, "role": role}


def delete_user(pool: DictPool, principal: Principal, user_id: uuid.UUID, source: str) -> None:
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, "owner")
        target = _user(conn, principal, user_id)
        _keep_an_owner(conn, principal, target)
        conn.execute(QUERIES["delete_user"], {"tenant_id": principal.tenant_id, "user_id": user_id})
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "user.delete",
            "user",
            user_id,
            source,
            {"email": target["email"], "role": target["role"]},
        )
