"""Plans and quotas as the API shows them: a tenant's use of each quota, the plans, and the
402 answer when the database refuses a row over a plan limit.

The limits on rows (devices, users, alert rules) are enforced by the database
(enforce_plan_limit() in sql/migrations/0008), so no code path can exceed them; this module only
turns the trigger's error into a message naming the limit and the plan. The message rate is
metered by the drain (shared/ingest/metering.py).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from shared.accounts.access import acting_user
from shared.accounts.tokens import Principal
from shared.core.db import DictPool, tenant_transaction
from shared.core.exceptions import PlanLimitReached
from shared.core.sql import QUERIES, one_row

# The SQLSTATE enforce_plan_limit() raises (class MQ is not PostgreSQL's).
PLAN_LIMIT_SQLSTATE = "MQ402"

# What each limit counts, as a client reads it.
_LIMIT_NOUNS = {
    "max_devices": "devices",
    "max_users": "users",
    "max_alert_rules": "alert rules",
    "max_profiles": "device profiles",
}


def is_plan_limit(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.Error) and exc.sqlstate == PLAN_LIMIT_SQLSTATE


def plan_limit_error(exc: psycopg.Error) -> PlanLimitReached:
    """The 402 for the trigger's error, naming the limit and the plan (from its JSON detail)."""
    try:
        detail = json.loads(exc.diag.message_detail or "{}")
        noun = _LIMIT_NOUNS.get(str(detail["limit"]), str(detail["limit"]))
        return PlanLimitReached(
            f"Your plan ({detail['plan']}) allows at most {int(detail['max'])} {noun}: "
            "remove some or ask for a bigger plan (GET /api/usage shows each quota)."
        )
    except (ValueError, KeyError, TypeError):
        return PlanLimitReached()


def _quota(used: int, limit: int | None) -> dict[str, Any]:
    percent = None if limit is None else (100.0 if limit == 0 else round(100.0 * used / limit, 1))
    return {"used": used, "limit": limit, "percent": percent}


def usage(pool: DictPool, principal: Principal) -> dict[str, Any]:
    """Each quota's use, limit (None: unlimited) and percent, for any role of the tenant."""
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal)
        row = one_row(conn.execute(QUERIES["tenant_usage"], {"tenant_id": principal.tenant_id}), "tenant_usage")
        alert_rules = one_row(
            conn.execute(QUERIES["count_alert_rules"], {"tenant_id": principal.tenant_id}), "count_alert_rules"
        )["n"]
    return {
        "plan": row["plan"],
        "hour": row["hour"],
        "raw_retention_days": row["raw_retention_days"],
        "quotas": {
            "devices": _quota(row["devices"], row["max_devices"]),
            "users": _quota(row["users"], row["max_users"]),
            "alert_rules": _quota(alert_rules, row["max_alert_rules"]),
            "profiles": _quota(row["profiles"], row["max_profiles"]),
            "messages_this_hour": _quota(row["messages"], row["messages_per_hour"]),
        },
        "messages_over_quota_this_hour": row["over_quota"],
    }


def list_plans(pool: DictPool) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        return conn.execute(QUERIES["list_plans"]).fetchall()
