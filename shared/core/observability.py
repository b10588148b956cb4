"""What operators see in Application Insights: structured log lines and OpenTelemetry metrics.

Logs. In the Functions host's default telemetry mode the worker forwards `logging` records to the
host, which keeps the message and drops `extra=` fields (PLATFORM.md 3.2). So a line that carries
fields is written as `<event name> <JSON object>` in the message itself, and the KQL queries in
infra/queries parse it with parse_json(). `event()` is the one way such lines are written, and its
fields always name tenant_id, device_id and run_id the same way.

Metrics. Through the Azure Monitor OpenTelemetry distro (opencensus is retired), metrics only: the
distro's logging and tracing stay off, because the host already forwards the logs (turning the
distro's on as well doubles every line, python-worker#1342). Instruments are created against the
OpenTelemetry API at import; until `configure()` installs the distro's MeterProvider (it does only
when APPLICATIONINSIGHTS_CONNECTION_STRING is set) they record into the API's no-op provider, so
local runs and tests do the same work and export nothing.

A timer's instance may be stopped soon after its run, before the exporter's periodic push, so
`flush()` pushes at the end of every timer run; it is bounded (FLUSH_TIMEOUT_MS) because every
second a run lasts is billed.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics

from shared.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader

log = logging.getLogger(__name__)

METER_NAME = "mqtt_saas"
FLUSH_TIMEOUT_MS = 2000

_meter = metrics.get_meter(METER_NAME)

# Names are those the task's operators query (customMetrics.name); attributes are low-cardinality
# (tenant slugs: tens to a few thousand; reasons: a fixed set).
INGEST_MESSAGES = _meter.create_counter(
    "ingest_messages_total", unit="1", description="Messages the drain stored, per tenant"
)
INGEST_LAG = _meter.create_histogram(
    "ingest_lag_ms", unit="ms", description="Broker arrival to commit, the largest per drain batch"
)
PARSE_ERRORS = _meter.create_counter(
    "parse_error_total", unit="1", description="Messages dead-lettered by the drain, per reason"
)
BACKLOG_SIZE = _meter.create_histogram("backlog_size", unit="1", description="Messages a drain run found queued for it")
QUOTA_USAGE = _meter.create_histogram(
    "quota_usage_percent", unit="%", description="Use of a plan quota, per tenant and quota"
)
ALERT_EVALUATION = _meter.create_histogram(
    "alert_evaluation_duration_ms", unit="ms", description="One alert_evaluator run"
)
ARCHIVE_ROWS = _meter.create_counter(
    "archive_rows_total", unit="1", description="Telemetry rows archived to Blob Storage and deleted"
)
RUN_DURATION = _meter.create_histogram(
    "timer_run_duration_ms", unit="ms", description="One timer run, per function: what Flex Consumption bills"
)
WEBHOOK_DELIVERIES = _meter.create_counter(
    "webhook_deliveries_total", unit="1", description="Webhook attempts, per outcome (delivered, retrying, failed)"
)

METRIC_NAMES = frozenset(
    {
        "ingest_messages_total",
        "ingest_lag_ms",
        "parse_error_total",
        "backlog_size",
        "quota_usage_percent",
        "alert_evaluation_duration_ms",
        "archive_rows_total",
        "timer_run_duration_ms",
        "webhook_deliveries_total",
    }
)

_configured = False
_lock = threading.Lock()


def configure(
    connection_string: str | None, authentication_string: str | None = None, extra_readers: Sequence[MetricReader] = ()
) -> bool:
    """Installs the distro's metric exporter once per process when a connection string is set;
    returns whether metrics are exported. Never raises: telemetry must not stop the app.
    An authentication string "Authorization=AAD[;ClientId=...]" (what Bicep sets, like the host's
    own) sends with the managed identity. extra_readers also receive every metric (the tests read
    what would be exported)."""
    global _configured
    if not connection_string:
        return False
    with _lock:
        if _configured:
            return True
        try:
            from azure.monitor.opentelemetry import configure_azure_monitor

            configure_azure_monitor(
                connection_string=connection_string,
                credential=_managed_identity(authentication_string),
                disable_logging=True,
                disable_tracing=True,
                enable_live_metrics=False,
                enable_performance_counters=False,  # the host reports the instance's own
                metric_readers=list(extra_readers),
            )
        except Exception as exc:  # a bad connection string must not take the app down
            log.warning("metrics export not configured: %s", type(exc).__name__)
            return False
        _configured = True
        return True


def _managed_identity(authentication_string: str | None) -> Any:
    fields = dict(part.split("=", 1) for part in (authentication_string or "").split(";") if "=" in part)
    if fields.get("Authorization", "").upper() != "AAD":
        return None
    from azure.identity import ManagedIdentityCredential

    client_id = fields.get("ClientId")
    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()


def flush(timeout_ms: int = FLUSH_TIMEOUT_MS) -> bool:
    """Pushes recorded metrics now (end of a timer run). True when nothing is left unsent."""
    provider = metrics.get_meter_provider()
    force_flush = getattr(provider, "force_flush", None)  # the API's no-op provider has none
    if force_flush is None:
        return True
    try:
        return bool(force_flush(timeout_millis=timeout_ms))
    except Exception as exc:
        log.warning("metrics flush failed: %s", type(exc).__name__)
        return False


_bound: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "observability_fields", default=MappingProxyType({})
)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Fields every event() line inside the block carries (a drain run's run_id, a request's
    tenant_id), so a line deep in the code need not be handed them."""
    token = _bound.set({**_bound.get(), **fields})
    try:
        yield
    finally:
        _bound.reset(token)


def event(
    logger: logging.Logger,
    name: str,
    fields: Mapping[str, Any] | None = None,
    level: int = logging.INFO,
    exc_info: bool = False,
) -> None:
    """Writes `<name> <JSON>`: one line KQL can parse_json() (see infra/queries), with the bound
    fields. The names tenant_id, device_id and run_id are used for those ids everywhere. Fields go in
    the message because the Functions host drops a record's `extra`; exc_info=True (inside an
    except block) adds the traceback, as logger.exception does."""
    merged = {**_bound.get(), **(fields or {})}
    logger.log(
        level, "%s %s", name, json.dumps(merged, sort_keys=True, default=str, separators=(",", ":")), exc_info=exc_info
    )


def record_counts(counter: metrics.Counter, counts: Mapping[str, int], attribute: str) -> None:
    """Adds per-key counts (e.g. messages per tenant) to a counter, one attribute value per key."""
    for key, count in counts.items():
        if count:
            counter.add(count, {attribute: key})


def run_timer(function_name: str, work: Callable[[Settings], object]) -> None:
    """One timer run, the same for every timer: settings read, metrics export configured, the work (which logs
    its own summary line), its duration recorded and the metrics pushed before the run returns. What the work
    raises propagates, so the invocation shows as failed in Application Insights."""
    settings = get_settings()
    with timer_run(function_name, settings):
        work(settings)


@contextmanager
def timer_run(function_name: str, settings: Settings) -> Iterator[None]:
    """Around one timer run: metrics export configured on first use, the run's duration recorded,
    and everything pushed before the run returns (or raises)."""
    configure(settings.applicationinsights_connection_string, settings.applicationinsights_authentication_string)
    started = time.monotonic()
    try:
        yield
    finally:
        RUN_DURATION.record((time.monotonic() - started) * 1000, {"function": function_name})
        flush()
