"""The alert evaluator: every enabled rule of a tenant, set-based, one statement per rule kind.

It runs as the app role, one tenant at a time under row-level security (tenant_transaction), like any
API request; the tenants to visit come from alert_tenants_with_rules() (0013: ids only). Within a
tenant's transaction each kind's statement updates alert_rule_state for every (rule, device) in
scope, then events open where a run of breaches reached the rule's N and resolve where the
condition cleared. Opening is INSERT ... ON CONFLICT DO NOTHING on the partial unique index, and a
tenant another run is evaluating is skipped (advisory lock), so overlapping runs never duplicate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from shared.core import observability
from shared.core.db import DictConnection, DictPool, tenant_transaction
from shared.core.sql import QUERIES, one_row

log = logging.getLogger(__name__)

# One statement per rule kind.
_KIND_QUERIES = ("evaluate_threshold", "evaluate_no_data", "evaluate_anomaly")

# An anomaly bucket is judged once this long has passed since its end: the drain stores readings
# within one INGEST_SCHEDULE period (60 s) plus its run, so the bucket's late readings are in by then.
ANOMALY_SETTLE_S = 90


@dataclass
class TenantEvaluation:
    evaluated: int = 0
    opened: int = 0
    resolved: int = 0
    skipped: bool = False


@dataclass
class EvaluationReport:
    tenants: int = 0
    skipped: int = 0
    evaluated: int = 0
    opened: int = 0
    resolved: int = 0
    failed: list[str] = field(default_factory=list)
    duration_ms: float = 0.0


def _evaluate(conn: DictConnection, tenant_id: str, as_of: datetime | None) -> TenantEvaluation:
    params = {"tenant_id": tenant_id, "as_of": as_of, "settle_s": ANOMALY_SETTLE_S}
    if not one_row(conn.execute(QUERIES["alert_try_lock_tenant"], params), "alert_try_lock_tenant")["locked"]:
        return TenantEvaluation(skipped=True)
    result = TenantEvaluation()
    for name in _KIND_QUERIES:
        result.evaluated += conn.execute(QUERIES[name], params).rowcount
    result.opened = len(conn.execute(QUERIES["open_alert_events"], params).fetchall())
    result.resolved = len(conn.execute(QUERIES["resolve_cleared_alert_events"], params).fetchall())
    return result


def evaluate_tenant(pool: DictPool, tenant_id: str, as_of: datetime | None = None) -> TenantEvaluation:
    """One tenant's rules now, in one transaction (also POST /api/alerts/evaluate). `as_of` moves the
    anomaly rules' clock (which buckets are complete), so a test or a backfill can replay a series;
    thresholds and no-data always judge the present."""
    with tenant_transaction(pool, tenant_id) as conn:
        return _evaluate(conn, tenant_id, as_of)


def tenants_with_rules(pool: DictPool) -> list[str]:
    with pool.connection() as conn:
        return [str(row["tenant_id"]) for row in conn.execute(QUERIES["alert_tenants_with_rules"]).fetchall()]


def evaluate_rules(pool: DictPool) -> EvaluationReport:
    """Every tenant with an enabled rule, each in its own transaction: one tenant's failure is logged
    and the others still run; raises only when every tenant failed (the run is then marked failed)."""
    started = time.monotonic()
    report = EvaluationReport()
    tenants = tenants_with_rules(pool)
    last_error: Exception | None = None
    for tenant_id in tenants:
        try:
            result = evaluate_tenant(pool, tenant_id)
        except Exception as exc:  # noqa: BLE001 - one tenant's bad rule must not stop the others
            observability.event(log, "alerts.tenant_failed", {"tenant_id": tenant_id}, logging.ERROR, exc_info=True)
            report.failed.append(tenant_id)
            last_error = exc
            continue
        report.tenants += 1
        report.skipped += result.skipped
        report.evaluated += result.evaluated
        report.opened += result.opened
        report.resolved += result.resolved
    report.duration_ms = (time.monotonic() - started) * 1000
    observability.ALERT_EVALUATION.record(report.duration_ms)
    if tenants and len(report.failed) == len(tenants) and last_error is not None:
        raise last_error
    return report
