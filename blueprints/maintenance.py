"""Maintenance timers: telemetry_rollup (1-minute and 1-hour rollups) and blob_archiver (partitions
ahead, each tenant's days past its plan's window to Parquet in Blob Storage, then out of PostgreSQL)."""
import logging

import azure.functions as func

from shared.core.observability import event, timer_run
from shared.core.settings import get_settings
from shared.telemetry.archive import run_blob_archiver
from shared.telemetry.rollups import run_rollups

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.timer_trigger(arg_name="timer", schedule="%ROLLUP_SCHEDULE%", run_on_startup=False, use_monitor=True)
def telemetry_rollup(timer: func.TimerRequest) -> None:
    # Ends when caught up (or out of budget): a run costs little when nothing arrived.
    settings = get_settings()
    with timer_run("telemetry_rollup", settings):
        run_rollups(settings)


@bp.timer_trigger(arg_name="timer", schedule="%ARCHIVE_SCHEDULE%", run_on_startup=False, use_monitor=True)
def blob_archiver(timer: func.TimerRequest) -> None:
    # A failure raises (the invocation shows as failed); the manifest lets the next run resume.
    settings = get_settings()
    with timer_run("blob_archiver", settings):
        report = run_blob_archiver(settings)
    if report.days_left:
        event(log, "archive.out_of_time", {"days_left": report.days_left}, logging.WARNING)
