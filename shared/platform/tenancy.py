"""A tenant's audit log (owners read it), and the platform operator, who administers tenants and
plans across tenants.

Least privilege for the operator: the app role sees one tenant at a time (RLS), and there is no
policy that shows it more. The operator's cross-tenant work goes through SECURITY DEFINER
functions (sql/migrations/0008) that each do exactly one thing (list tenants with their use,
create a tenant with its first owner, change a plan), re-check that the operator exists, and write
the tenant's audit log themselves. Operators are not users: they live in platform_operators, which
the app role cannot read, log in at /api/platform/auth/login, and get tokens with their own
audience and no tenant claim, so a tenant token is refused at /api/platform/* and an operator
token everywhere else.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
import psycopg

from shared.accounts.access import acting_user
from shared.accounts.auth import refuse_if_throttled, throttle_keys
from shared.accounts.passwords import hash_password, verify_password
from shared.accounts.tokens import ALGORITHM, Principal, signing_secret
from shared.core.db import DictPool, tenant_transaction
from shared.core.exceptions import (
    InvalidCredentials,
    InvalidTenant,
    TenantNotFound,
    TenantSlugTaken,
    Unauthenticated,
)
from shared.core.observability import event
from shared.core.paging import decode_cursor, decode_id_cursor, encode_id_cursor, page_of
from shared.core.settings import Settings
from shared.core.sql import QUERIES, one_row

log = logging.getLogger(__name__)

OPERATOR_SCOPE = "platform"
_OPERATOR_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "scope"]
# Throttle keys of operators never collide with a tenant's: no slug contains a space.
_THROTTLE_SCOPE = "platform operators"


# --- the audit log


def list_audit(
    pool: DictPool,
    principal: Principal,
    cursor: str | None,
    limit: int,
    action: str | None,
    actor: uuid.UUID | None,
    since: datetime | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """The tenant's audit log, newest first, a page at a time (owners only)."""
    before_id = decode_id_cursor(cursor, "audit")
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, "owner")
        rows = conn.execute(
            QUERIES["list_audit"],
            {
                "tenant_id": principal.tenant_id,
                "before_id": before_id,
                "action": action,
                "actor": actor,
                "since": since,
                "limit": limit + 1,
            },
        ).fetchall()
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], encode_id_cursor("audit", rows[limit - 1]["id"])


# --- the platform operator


@dataclass(frozen=True)
class Operator:
    """A verified operator token's operator, re-read from the database for the request."""

    operator_id: uuid.UUID
    email: str


def issue_operator_token(settings: Settings, operator_id: uuid.UUID) -> str:
    now = int(time.time())
    claims = {
        "iss": settings.auth_jwt_issuer,
        "aud": settings.platform_jwt_audience,
        "sub": str(operator_id),
        "scope": OPERATOR_SCOPE,
        "iat": now,
        "exp": now + settings.platform_access_token_ttl_s,
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, signing_secret(settings), algorithm=ALGORITHM)


def verify_operator_token(pool: DictPool, settings: Settings, token: str) -> Operator:
    """The operator of a valid operator token; a user's token (wrong audience, a tenant claim)
    and a deleted operator's token are refused alike."""
    secret = signing_secret(settings)
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=settings.platform_jwt_audience,
            issuer=settings.auth_jwt_issuer,
            options={"require": _OPERATOR_CLAIMS},
            leeway=5,
        )
        if claims["scope"] != OPERATOR_SCOPE or "tid" in claims:
            raise Unauthenticated()
        operator_id = uuid.UUID(str(claims["sub"]))
    except (jwt.InvalidTokenError, ValueError):
        raise Unauthenticated() from None
    with pool.connection() as conn:
        row = conn.execute(QUERIES["get_operator"], {"operator_id": operator_id}).fetchone()
    if row is None:
        raise Unauthenticated()
    return Operator(row["operator_id"], row["email"])


def operator_login(pool: DictPool, settings: Settings, email: str, password: str, source: str) -> str:
    """An operator token for email and password; throttled like users' logins."""
    email = email.strip().lower()
    source_key, account_key = throttle_keys(_THROTTLE_SCOPE, email, source)
    with pool.connection() as conn:
        refuse_if_throttled(conn, settings, source_key, account_key)
        found = conn.execute(QUERIES["find_operator"], {"email": email}).fetchone()
        conn.commit()  # no transaction held open across argon2
    if not verify_password(found["password_hash"] if found else None, password) or found is None:
        with pool.connection() as conn:
            conn.execute(
                QUERIES["count_login_failure"],
                {"keys": [source_key, account_key], "window_s": settings.auth_login_window_s},
            )
        event(log, "platform.login_refused", {"source": source})
        raise InvalidCredentials()
    with pool.connection() as conn:
        conn.execute(QUERIES["clear_login_failures"], {"keys": [account_key]})
    event(log, "platform.login", {"operator_id": found["operator_id"], "source": source})
    return issue_operator_token(settings, found["operator_id"])


def list_tenants(
    pool: DictPool, operator: Operator, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    after_created_at, after_id = decode_cursor(cursor)
    with pool.connection() as conn:
        rows = conn.execute(
            QUERIES["platform_list_tenants"],
            {
                "operator_id": operator.operator_id,
                "after_created_at": after_created_at,
                "after_id": after_id,
                "limit": limit + 1,
            },
        ).fetchall()
    return page_of(rows, limit)


def create_tenant(
    pool: DictPool,
    operator: Operator,
    slug: str,
    name: str,
    plan: str,
    owner_email: str,
    owner_password: str,
    source: str,
) -> dict[str, Any]:
    """A tenant with its first owner, audited in the new tenant's log."""
    password_hash = hash_password(owner_password)  # before the transaction: argon2 is slow on purpose
    try:
        with pool.connection() as conn:
            row = one_row(
                conn.execute(
                    QUERIES["platform_create_tenant"],
                    {
                        "operator_id": operator.operator_id,
                        "slug": slug,
                        "name": name,
                        "plan": plan,
                        "owner_email": owner_email.strip().lower(),
                        "owner_password_hash": password_hash,
                        "source": source,
                    },
                ),
                "platform_create_tenant",
            )
    except psycopg.errors.UniqueViolation:
        raise TenantSlugTaken() from None
    except psycopg.errors.CheckViolation:
        raise InvalidTenant() from None  # the database's rule is the last word on a slug or an email
    event(log, "platform.tenant_created", {"operator_id": operator.operator_id, "tenant_id": row["tenant_id"]})
    return {
        "id": row["tenant_id"],
        "slug": slug,
        "name": name,
        "plan": plan,
        "owner": {"id": row["owner_id"], "email": owner_email.strip().lower()},
    }


def change_plan(pool: DictPool, operator: Operator, tenant_id: uuid.UUID, plan: str, source: str) -> dict[str, Any]:
    """Moves a tenant to another plan; its quotas follow at once."""
    with pool.connection() as conn:
        row = conn.execute(
            QUERIES["platform_set_plan"],
            {"operator_id": operator.operator_id, "tenant_id": tenant_id, "plan": plan, "source": source},
        ).fetchone()
    if row is None:
        raise TenantNotFound()
    event(
        log,
        "platform.plan_changed",
        {"operator_id": operator.operator_id, "tenant_id": tenant_id, "from": row["previous_plan"], "to": plan},
    )
    return row
