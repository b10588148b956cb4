"""Who is acting, and the record of what they did: the two things every feature's use case needs.

acting_user() reads the caller's current row in the request's tenant transaction: a user deleted since
the token was issued is refused, so is a token whose session was logged out, and the role checked is
the one stored now (narrowed by an external token's role claim), not the one at login. audit() appends
to the tenant's audit log in the same transaction, so a change and its record commit together.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg.types.json import Jsonb

from shared.accounts.tokens import Principal, effective_role
from shared.core.db import DictConnection
from shared.core.exceptions import Forbidden, Unauthenticated
from shared.core.sql import QUERIES


def acting_user(conn: DictConnection, principal: Principal, *allowed_roles: str) -> dict[str, Any]:
    """The caller's current user row; Unauthenticated if it is gone, Forbidden unless its role is allowed."""
    row = conn.execute(
        QUERIES["get_acting_user"],
        {"tenant_id": principal.tenant_id, "user_id": principal.user_id, "session_id": principal.session_id},
    ).fetchone()
    if row is None:
        raise Unauthenticated()  # the user is gone, or the token's session was logged out
    # An external token's role claim narrows the stored role for this request (never raises it).
    row = {**row, "role": effective_role(row["role"], principal)}
    if allowed_roles and row["role"] not in allowed_roles:
        raise Forbidden()
    return row


def audit(
    conn: DictConnection,
    tenant_id: uuid.UUID,
    actor: uuid.UUID | None,
    action: str,
    target_type: str | None,
    target_id: uuid.UUID | str | None,
    source: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Appends one audit row in the caller's transaction, so the change and its record commit together."""
    conn.execute(
        QUERIES["insert_audit"],
        {
            "tenant_id": tenant_id,
            "actor_user_id": actor,
            "action": action,
            "target_type": target_type,
            "target_id": None if target_id is None else str(target_id),
            "source_address": source,
            "detail": Jsonb(detail or {}),
        },
    )
