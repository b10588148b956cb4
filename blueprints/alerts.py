"""The alert_evaluator timer: every tenant's enabled alert rules, set-based (shared/alerts.py), then the
webhook deliveries that are due (shared/webhooks.py), within WEBHOOK_DELIVERY_BUDGET_S."""
import logging

import azure.functions as func

from shared.alerts.delivery import deliver_due
from shared.alerts.evaluator import evaluate_rules
from shared.core.db import get_pool
from shared.core.observability import event, timer_run
from shared.core.settings import get_settings

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.timer_trigger(arg_name="timer", schedule="%ALERT_SCHEDULE%", run_on_startup=False, use_monitor=True)
def alert_evaluator(timer: func.TimerRequest) -> None:
    # Ends when every tenant is done; a tenant's failure is logged, all failing raises (a failed run).
    # Deliveries come after the evaluation, so a slow receiver never delays it, and run even when the
    # evaluation failed: what earlier runs enqueued is still owed.
    settings = get_settings()
    with timer_run("alert_evaluator", settings):
        try:
            report = evaluate_rules(get_pool())
        finally:
            sent = deliver_due(get_pool(), settings)
            event(log, "webhook.run", {"tenants": sent.tenants, "attempted": sent.attempted,
                                       "delivered": sent.delivered, "retrying": sent.retrying, "failed": sent.failed,
                                       "duration_ms": round(sent.duration_ms)})
    event(log, "alerts.run", {"tenants": report.tenants, "evaluated": report.evaluated, "opened": report.opened,
                               "resolved": report.resolved, "failed": len(report.failed)})
