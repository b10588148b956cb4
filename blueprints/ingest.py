"""mqtt_ingest: drains the broker's persistent session into PostgreSQL on a timer."""
import azure.functions as func

from shared.core.observability import timer_run
from shared.core.settings import get_settings
from shared.ingest.drain import drain_once

bp = func.Blueprint()


@bp.timer_trigger(arg_name="timer", schedule="%INGEST_SCHEDULE%", run_on_startup=False, use_monitor=True)
def mqtt_ingest(timer: func.TimerRequest) -> None:
    # drain_once logs its own summary line and records the run; a failure raises so the
    # invocation shows as failed in Application Insights, and nothing unacked is lost.
    settings = get_settings()
    with timer_run("mqtt_ingest", settings):
        drain_once(settings)
