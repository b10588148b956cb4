"""alert_evaluator: every tenant's alert rules, then the webhook deliveries that are due (shared/alerts/cycle.py)."""

import azure.functions as func

from shared.alerts.cycle import run_alert_cycle
from shared.core.observability import run_timer

bp = func.Blueprint()


@bp.timer_trigger(arg_name="timer", schedule="%ALERT_SCHEDULE%", run_on_startup=False, use_monitor=True)
def alert_evaluator(timer: func.TimerRequest) -> None:
    run_timer("alert_evaluator", run_alert_cycle)
