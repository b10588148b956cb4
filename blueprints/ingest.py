"""mqtt_ingest: drains the broker's persistent session into PostgreSQL on a timer (shared/ingest/drain.py)."""

import azure.functions as func

from shared.core.observability import run_timer
from shared.ingest.drain import drain_once

bp = func.Blueprint()


@bp.timer_trigger(arg_name="timer", schedule="%INGEST_SCHEDULE%", run_on_startup=False, use_monitor=True)
def mqtt_ingest(timer: func.TimerRequest) -> None:
    # A failure raises so the invocation shows as failed, and nothing unacknowledged is lost.
    run_timer("mqtt_ingest", drain_once)
