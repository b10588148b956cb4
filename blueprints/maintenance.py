"""Maintenance timers: telemetry_rollup (1-minute and 1-hour rollups) and blob_archiver (partitions
ahead, each tenant's days past its plan's window to Parquet in Blob Storage, then out of PostgreSQL)."""

import azure.functions as func

from shared.core.observability import run_timer
from shared.telemetry.archive import run_blob_archiver
from shared.telemetry.rollups import run_rollups

bp = func.Blueprint()


@bp.timer_trigger(arg_name="timer", schedule="%ROLLUP_SCHEDULE%", run_on_startup=False, use_monitor=True)
def telemetry_rollup(timer: func.TimerRequest) -> None:
    # Ends when caught up (or out of budget): a run costs little when nothing arrived.
    run_timer("telemetry_rollup", run_rollups)


@bp.timer_trigger(arg_name="timer", schedule="%ARCHIVE_SCHEDULE%", run_on_startup=False, use_monitor=True)
def blob_archiver(timer: func.TimerRequest) -> None:
    # A failure raises (the invocation shows as failed); the manifest lets the next run resume.
    run_timer("blob_archiver", run_blob_archiver)
