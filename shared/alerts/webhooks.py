"""A rule's webhook targets and their deliveries (staff and owners only: a target's URL often carries
a credential of the receiver's, and its deliveries show the receiver's answers).

Every function runs in tenant_transaction with the tenant from the verified token and re-reads the
acting user's role; changes are audited in the same transaction, naming the URL's host only (its
path or query may be a credential). A target's signing secret is returned once, at creation and at
rotation; the database keeps it only encrypted (shared/delivery.py).
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from shared.accounts.access import acting_user, audit
from shared.accounts.tokens import Principal
from shared.alerts import delivery
from shared.core.db import DictConnection, DictPool, tenant_transaction
from shared.core.exceptions import (
    AlertRuleNotFound,
    UnsafeTarget,
    WebhookLimitReached,
    WebhookNotFound,
    WebhookUrlRefused,
)
from shared.core.paging import decode_cursor, encode_cursor, page_of
from shared.core.settings import Settings
from shared.core.sql import QUERIES, one_row

WRITERS = ("owner", "staff")


def _lock_rule(conn: DictConnection, principal: Principal, rule_id: uuid.UUID) -> None:
    if (
        conn.execute(QUERIES["webhook_lock_rule"], {"tenant_id": principal.tenant_id, "rule_id": rule_id}).fetchone()
        is None
    ):
        raise AlertRuleNotFound()


def _rule_exists(conn: DictConnection, principal: Principal, rule_id: uuid.UUID) -> None:
    if not one_row(
        conn.execute(QUERIES["webhook_rule_exists"], {"tenant_id": principal.tenant_id, "rule_id": rule_id}),
        "webhook_rule_exists",
    )["present"]:
        raise AlertRuleNotFound()


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""


def _checked(url: str, settings: Settings) -> list[str]:
    try:
        return delivery.check_target(url, settings)
    except UnsafeTarget as exc:
        raise WebhookUrlRefused(f"The webhook URL is refused: {exc}.") from None


def create_webhook(
    pool: DictPool,
    settings: Settings,
    principal: Principal,
    rule_id: uuid.UUID,
    url: str,
    description: str | None,
    source: str,
) -> tuple[dict[str, Any], str, list[str]]:
    """The new target, its secret (shown this once) and warnings. The caller and the rule are checked
    first; then the URL (its host resolved) between two transactions, so no lock waits on DNS."""
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        _rule_exists(conn, principal, rule_id)
    warnings = _checked(url, settings)
    secret = delivery.new_secret()
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        _lock_rule(conn, principal, rule_id)
        params = {"tenant_id": principal.tenant_id, "rule_id": rule_id}
        if (
            one_row(conn.execute(QUERIES["count_rule_webhooks"], params), "count_rule_webhooks")["n"]
            >= delivery.MAX_TARGETS_PER_RULE
        ):
            raise WebhookLimitReached()
        row = one_row(
            conn.execute(
                QUERIES["insert_webhook"],
                {
                    **params,
                    "url": url,
                    "description": description,
                    "secret_encrypted": delivery.encrypt_secret(settings, secret),
                    "created_by": principal.user_id,
                },
            ),
            "insert_webhook",
        )
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "alert_webhook.create",
            "alert_webhook",
            row["id"],
            source,
            {"rule_id": str(rule_id), "host": _host(url)},
        )
    return row, secret, warnings


def list_webhooks(
    pool: DictPool, principal: Principal, rule_id: uuid.UUID, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    after_created_at, after_id = decode_cursor(cursor)
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        _rule_exists(conn, principal, rule_id)
        rows = conn.execute(
            QUERIES["list_rule_webhooks"],
            {
                "tenant_id": principal.tenant_id,
                "rule_id": rule_id,
                "after_created_at": after_created_at,
                "after_id": after_id,
                "limit": limit + 1,
            },
        ).fetchall()
    return page_of(rows, limit)


def delete_webhook(
    pool: DictPool, principal: Principal, rule_id: uuid.UUID, webhook_id: uuid.UUID, source: str
) -> None:
    """Deletes the target with its deliveries (pending ones are never sent)."""
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        row = conn.execute(
            QUERIES["delete_webhook"], {"tenant_id": principal.tenant_id, "rule_id": rule_id, "webhook_id": webhook_id}
        ).fetchone()
        if row is None:
            raise WebhookNotFound()
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "alert_webhook.delete",
            "alert_webhook",
            webhook_id,
            source,
            {"rule_id": str(rule_id), "host": _host(row["url"])},
        )


def rotate_secret(
    pool: DictPool, settings: Settings, principal: Principal, rule_id: uuid.UUID, webhook_id: uuid.UUID, source: str
) -> tuple[dict[str, Any], str]:
    """A new secret, shown this once; every attempt from now on (retries included) is signed with it."""
    secret = delivery.new_secret()
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        row = conn.execute(
            QUERIES["rotate_webhook_secret"],
            {
                "tenant_id": principal.tenant_id,
                "rule_id": rule_id,
                "webhook_id": webhook_id,
                "secret_encrypted": delivery.encrypt_secret(settings, secret),
            },
        ).fetchone()
        if row is None:
            raise WebhookNotFound()
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "alert_webhook.rotate_secret",
            "alert_webhook",
            webhook_id,
            source,
            {"rule_id": str(rule_id), "host": _host(row["url"])},
        )
    return row, secret


def list_deliveries(
    pool: DictPool, principal: Principal, webhook_id: uuid.UUID, state: str | None, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """A target's deliveries, newest first, each with its attempts."""
    after_created_at, after_id = decode_cursor(cursor)
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        if (
            conn.execute(
                QUERIES["get_webhook"], {"tenant_id": principal.tenant_id, "webhook_id": webhook_id, "rule_id": None}
            ).fetchone()
            is None
        ):
            raise WebhookNotFound()
        rows = conn.execute(
            QUERIES["list_webhook_deliveries"],
            {
                "tenant_id": principal.tenant_id,
                "webhook_id": webhook_id,
                "state": state,
                "after_created_at": after_created_at,
                "after_id": after_id,
                "limit": limit + 1,
            },
        ).fetchall()
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last["created_at"], last["id"])
