"""A tenant's alert rules and events (staff and owners change them, viewers read).

Every function runs in tenant_transaction with the tenant from the verified token and re-reads the
acting user's role; changes are audited in the same transaction. The plan's max_alert_rules is the
database's trigger (402 through shared/http/problems.py), not a count here.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any

from shared.accounts.access import acting_user, audit
from shared.accounts.tokens import Principal
from shared.alerts.evaluator import TenantEvaluation, evaluate_tenant
from shared.core.db import DictConnection, DictPool, tenant_transaction
from shared.core.exceptions import AlertDeviceNotFound, AlertEventNotFound, AlertEventResolved, AlertRuleNotFound
from shared.core.paging import decode_cursor, encode_cursor, page_of
from shared.core.sql import QUERIES, one_row

WRITERS = ("owner", "staff")


@dataclass(frozen=True)
class RuleFields:
    name: str
    kind: str
    scope: str
    severity: str
    enabled: bool
    consecutive: int
    device_id: int | None = None
    tag: str | None = None
    device_type: str | None = None
    metric: str | None = None
    aggregation: str | None = None
    window_s: int | None = None
    operator: str | None = None
    value: float | None = None
    clear_value: float | None = None
    no_data_minutes: int | None = None
    sensitivity: float | None = None
    baseline_buckets: int | None = None
    warmup_buckets: int | None = None


def _rule(conn: DictConnection, principal: Principal, rule_id: uuid.UUID) -> dict[str, Any]:
    row = conn.execute(QUERIES["get_alert_rule"], {"tenant_id": principal.tenant_id, "rule_id": rule_id}).fetchone()
    if row is None:
        raise AlertRuleNotFound()
    return row


def _check_and_warn(conn: DictConnection, principal: Principal, fields: RuleFields) -> list[str]:
    """Refuses a device that is not the tenant's; a metric no device ever sent is allowed (the devices may
    not have started yet) but said in the answer."""
    if (
        fields.device_id is not None
        and not one_row(
            conn.execute(
                QUERIES["alert_device_exists"], {"tenant_id": principal.tenant_id, "device_id": fields.device_id}
            ),
            "alert_device_exists",
        )["present"]
    ):
        raise AlertDeviceNotFound()
    if (
        fields.metric is not None
        and not one_row(
            conn.execute(QUERIES["alert_metric_seen"], {"tenant_id": principal.tenant_id, "metric": fields.metric}),
            "alert_metric_seen",
        )["seen"]
    ):
        return [f"no device has sent the metric {fields.metric!r} yet; the rule waits for it"]
    return []


def _params(principal: Principal, fields: RuleFields) -> dict[str, Any]:
    values = asdict(fields)
    if values["kind"] == "threshold" and values["clear_value"] is None:
        values["clear_value"] = values["value"]
    if values["kind"] == "anomaly" and values["clear_value"] is None:
        values["clear_value"] = values["sensitivity"] / 2
    return {**values, "tenant_id": principal.tenant_id}


def _detail(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row[key] for key in ("name", "kind", "scope", "severity", "enabled")}


def list_rules(
    pool: DictPool, principal: Principal, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    after_created_at, after_id = decode_cursor(cursor)
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal)
        rows = conn.execute(
            QUERIES["list_alert_rules"],
            {
                "tenant_id": principal.tenant_id,
                "after_created_at": after_created_at,
                "after_id": after_id,
                "limit": limit + 1,
            },
        ).fetchall()
    return page_of(rows, limit)


def get_rule(pool: DictPool, principal: Principal, rule_id: uuid.UUID) -> dict[str, Any]:
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal)
        return _rule(conn, principal, rule_id)


def create_rule(
    pool: DictPool, principal: Principal, fields: RuleFields, source: str
) -> tuple[dict[str, Any], list[str]]:
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        warnings = _check_and_warn(conn, principal, fields)
        row = one_row(
            conn.execute(QUERIES["insert_alert_rule"], {**_params(principal, fields), "created_by": principal.user_id}),
            "insert_alert_rule",
        )
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "alert_rule.create",
            "alert_rule",
            row["id"],
            source,
            _detail(row),
        )
        return row, warnings


def update_rule(
    pool: DictPool, principal: Principal, rule_id: uuid.UUID, fields: RuleFields, source: str
) -> tuple[dict[str, Any], list[str]]:
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        _rule(conn, principal, rule_id)
        warnings = _check_and_warn(conn, principal, fields)
        row = one_row(
            conn.execute(QUERIES["update_alert_rule"], {**_params(principal, fields), "rule_id": rule_id}),
            "update_alert_rule",
        )
        conn.execute(QUERIES["delete_alert_rule_state"], {"tenant_id": principal.tenant_id, "rule_id": rule_id})
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "alert_rule.update",
            "alert_rule",
            rule_id,
            source,
            _detail(row),
        )
        return row, warnings


def delete_rule(pool: DictPool, principal: Principal, rule_id: uuid.UUID, source: str) -> None:
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        row = conn.execute(
            QUERIES["delete_alert_rule"], {"tenant_id": principal.tenant_id, "rule_id": rule_id}
        ).fetchone()
        if row is None:
            raise AlertRuleNotFound()
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "alert_rule.delete",
            "alert_rule",
            rule_id,
            source,
            {"name": row["name"]},
        )


def list_events(
    pool: DictPool,
    principal: Principal,
    *,
    cursor: str | None,
    limit: int,
    state: str | None,
    severity: str | None,
    device_id: int | None,
) -> tuple[list[dict[str, Any]], str | None]:
    after_opened_at, after_id = decode_cursor(cursor)
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal)
        rows = conn.execute(
            QUERIES["list_alert_events"],
            {
                "tenant_id": principal.tenant_id,
                "state": state,
                "severity": severity,
                "device_id": device_id,
                "after_opened_at": after_opened_at,
                "after_id": after_id,
                "limit": limit + 1,
            },
        ).fetchall()
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last["opened_at"], last["id"])


def _change_event(
    pool: DictPool, principal: Principal, event_id: uuid.UUID, comment: str | None, source: str, action: str
) -> dict[str, Any]:
    params = {"tenant_id": principal.tenant_id, "event_id": event_id, "user_id": principal.user_id, "comment": comment}
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        event = conn.execute(QUERIES["get_alert_event_for_update"], params).fetchone()
        if event is None:
            raise AlertEventNotFound()
        if event["state"] == "resolved":
            raise AlertEventResolved()
        conn.execute(QUERIES[f"{action}_alert_event"], params)
        if action == "resolve":
            conn.execute(
                QUERIES["reset_alert_breaches"],
                {"tenant_id": principal.tenant_id, "rule_id": event["rule_id"], "device_id": event["device_id"]},
            )
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            f"alert_event.{action}",
            "alert_event",
            event_id,
            source,
            {"rule_id": str(event["rule_id"]), "device_id": event["device_id"], "comment": comment},
        )
        return one_row(conn.execute(QUERIES["get_alert_event_for_update"], params), "get_alert_event_for_update")


def acknowledge_event(
    pool: DictPool, principal: Principal, event_id: uuid.UUID, comment: str | None, source: str
) -> dict[str, Any]:
    """Open -> acknowledged (acknowledging again updates who and when); a resolved event is 409."""
    return _change_event(pool, principal, event_id, comment, source, "acknowledge")


def resolve_event(
    pool: DictPool, principal: Principal, event_id: uuid.UUID, comment: str | None, source: str
) -> dict[str, Any]:
    """Open or acknowledged -> resolved by the caller. If the condition still holds, the evaluator opens a
    new event once the rule's N consecutive breaches are reached again."""
    return _change_event(pool, principal, event_id, comment, source, "resolve")


def evaluate_now(pool: DictPool, principal: Principal) -> TenantEvaluation:
    """Runs the caller's tenant's rules now. Authorised first, in its own short transaction: the
    evaluation takes its own (the timer's code path exactly)."""
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
    return evaluate_tenant(pool, str(principal.tenant_id))
