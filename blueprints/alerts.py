"""The alert_evaluator timer: every tenant's enabled alert rules, set-based (shared/alerts.py)."""
import logging

import azure.functions as func

from shared.alerts import evaluate_rules
from shared.db import get_pool
from shared.observability import timer_run
from shared.settings import get_settings

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.timer_trigger(arg_name="timer", schedule="%ALERT_SCHEDULE%", run_on_startup=False, use_monitor=True)
def alert_evaluator(timer: func.TimerRequest) -> None:
    # Ends when every tenant is done; a tenant's failure is logged, all failing raises (a failed run).
    settings = get_settings()
    with timer_run("alert_evaluator", settings):
        report = evaluate_rules(get_pool())
    log.info("alert_evaluator done", extra={"tenants": report.tenants, "evaluated": report.evaluated,
                                            "opened": report.opened, "resolved": report.resolved,
                                            "failed": len(report.failed)})
