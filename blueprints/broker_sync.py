"""broker_sync: applies the device-credential outbox to the broker, then reconciles drift, every minute."""

import azure.functions as func

from shared.broker.credential_sync import BROKER_SYNC_SCHEDULE, run_broker_sync
from shared.core.db import get_pool
from shared.core.observability import run_timer

bp = func.Blueprint()


# A fixed schedule rather than an app setting: a %SETTING% the host cannot resolve stops the whole
# app from indexing, and every minute is what the outbox's retry promise and the end of a rotation's
# overlap (rounded up to one of these runs) are written against.
@bp.timer_trigger(arg_name="timer", schedule=BROKER_SYNC_SCHEDULE, run_on_startup=False, use_monitor=False)
def broker_sync(timer: func.TimerRequest) -> None:
    run_timer("broker_sync", lambda settings: run_broker_sync(get_pool(), settings))
