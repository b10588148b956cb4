"""One alert cycle, what the alert_evaluator timer runs: every tenant's rules evaluated (set-based, see
evaluator.py), then the webhook deliveries that are due, within WEBHOOK_DELIVERY_BUDGET_S."""

from __future__ import annotations

import logging

from shared.alerts.delivery import deliver_due
from shared.alerts.evaluator import evaluate_rules
from shared.core.db import get_pool
from shared.core.observability import event
from shared.core.settings import Settings

log = logging.getLogger(__name__)


def run_alert_cycle(settings: Settings) -> None:
    """Ends when every tenant is done; a tenant's failure is logged, all failing raises (a failed run).
    Deliveries come after the evaluation, so a slow receiver never delays it, and run even when the
    evaluation failed: what earlier runs enqueued is still owed."""
    try:
        report = evaluate_rules(get_pool())
    finally:
        sent = deliver_due(get_pool(), settings)
        event(
            log,
            "webhook.run",
            {
                "tenants": sent.tenants,
                "attempted": sent.attempted,
                "delivered": sent.delivered,
                "retrying": sent.retrying,
                "failed": sent.failed,
                "duration_ms": round(sent.duration_ms),
            },
        )
    event(
        log,
        "alerts.run",
        {
            "tenants": report.tenants,
            "evaluated": report.evaluated,
            "opened": report.opened,
            "resolved": report.resolved,
            "failed": len(report.failed),
        },
    )
