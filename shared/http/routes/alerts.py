"""Alert rules and events: /api/alerts/rules (staff and owners write, every role reads),
/api/alerts/events (every role lists; staff and owners acknowledge and resolve) and
/api/alerts/evaluate (staff and owners: the caller's tenant's rules, now)."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.alerts import rules
from shared.broker.contract import METRIC_NAME_PATTERN
from shared.devices.manage import TAG_PATTERN
from shared.http.deps import PREFIX, Caller, Pool, Source, problems
from shared.http.models import DEFAULT_LIMIT, MAX_LIMIT, Page

router = APIRouter(prefix=PREFIX, tags=["alerts"])

Kind = Literal["threshold", "no_data", "anomaly"]
Scope = Literal["device", "tag", "type", "all"]
Severity = Literal["info", "warning", "critical"]
EventState = Literal["open", "acknowledged", "resolved"]
_TEXT = r"^[^\x00-\x1f\x7f]+$"
_SCOPE_FIELD = {"device": "device_id", "tag": "tag", "type": "device_type"}
_THRESHOLD_FIELDS = ("metric", "aggregation", "window_s", "operator", "value")
_ANOMALY_FIELDS = ("sensitivity", "baseline_buckets", "warmup_buckets")
# Chosen on the labelled synthetic series of tests/integration/test_anomaly_detection.py (its figures
# are in docs/alerts.md): one-minute buckets, an hour's memory (ten for the slow mean), an hour to warm up.
ANOMALY_DEFAULTS: dict[str, float | int] = {
    "window_s": 60,
    "sensitivity": 4.0,
    "baseline_buckets": 60,
    "warmup_buckets": 60,
}


class RuleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=200, pattern=_TEXT, examples=["Boiler too hot"])
    kind: Kind = Field(
        description="threshold: an aggregate over a window passes a value; no_data: a device sent nothing "
        "for no_data_minutes, or its status says offline; anomaly: the metric's mean per window_s "
        "bucket strays more than `sensitivity` standard deviations from the device's own adaptive "
        "baseline (an EWMA over baseline_buckets buckets)."
    )
    scope: Scope = Field(
        "all",
        description="Which devices: one (device_id), those with a tag, those of a "
        "type (device_type), or all of the tenant's.",
    )
    device_id: int | None = Field(None, ge=1, le=2**63 - 1)
    tag: str | None = Field(None, pattern=TAG_PATTERN)
    device_type: str | None = Field(None, min_length=1, max_length=100, pattern=_TEXT)
    metric: str | None = Field(None, pattern=METRIC_NAME_PATTERN, examples=["temperature"])
    aggregation: Literal["avg", "min", "max", "last", "count"] | None = None
    window_s: int | None = Field(
        None,
        ge=10,
        le=86400,
        description="threshold: the aggregation window, seconds. anomaly: the bucket "
        "whose mean is judged, 60-3600 seconds (default 60).",
    )
    operator: Literal[">", ">=", "<", "<="] | None = None
    value: float | None = Field(None, ge=-1e300, le=1e300, description="The threshold.")
    clear_value: float | None = Field(
        None,
        ge=-1e300,
        le=1e300,
        description="threshold: an open event resolves only when the aggregate no longer passes this "
        "(hysteresis); defaults to value; at most value for > and >=, at least value for < and <=. "
        "anomaly: resolves once a bucket is within this many standard deviations "
        "(default sensitivity / 2, below sensitivity).",
    )
    consecutive: int = Field(1, ge=1, le=100, description="Breaching evaluations in a row before an event opens.")
    no_data_minutes: int | None = Field(None, ge=1, le=10080)
    sensitivity: float | None = Field(
        None,
        ge=1,
        le=20,
        description="anomaly: standard deviations from the baseline that count as anomalous "
        f"(default {ANOMALY_DEFAULTS['sensitivity']}; lower finds more, and more "
        "false alarms).",
    )
    baseline_buckets: int | None = Field(
        None,
        ge=10,
        le=10080,
        description="anomaly: the baseline's memory in buckets, the EWMA's span "
        f"(default {ANOMALY_DEFAULTS['baseline_buckets']}).",
    )
    warmup_buckets: int | None = Field(
        None,
        ge=1,
        le=10080,
        description="anomaly: buckets the baseline must have seen before it may fire "
        f"(default {ANOMALY_DEFAULTS['warmup_buckets']}); a new rule learns "
        "from the last day's history at once.",
    )
    severity: Severity = "warning"
    enabled: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for scope, name in _SCOPE_FIELD.items():
            if (self.scope == scope) != (getattr(self, name) is not None):
                raise ValueError(f"{name} is required with scope {scope!r} and allowed only with it")
        if self.kind != "anomaly":
            extra = [name for name in _ANOMALY_FIELDS if getattr(self, name) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} belong to anomaly rules")
        if self.kind == "anomaly":
            return self._anomaly()
        if self.kind == "threshold":
            missing = [name for name in _THRESHOLD_FIELDS if getattr(self, name) is None]
            if missing:
                raise ValueError(f"a threshold rule needs {', '.join(missing)}")
            assert self.value is not None
            if self.clear_value is not None and (
                self.clear_value > self.value if self.operator in (">", ">=") else self.clear_value < self.value
            ):
                raise ValueError(
                    "clear_value must not pass the threshold (at most value for > and >=, at least value for < and <=)"
                )
            if self.no_data_minutes is not None:
                raise ValueError("no_data_minutes belongs to no_data rules")
        else:
            if self.no_data_minutes is None:
                raise ValueError("a no_data rule needs no_data_minutes")
            extra = [name for name in (*_THRESHOLD_FIELDS, "clear_value") if getattr(self, name) is not None]
            if extra:
                raise ValueError(f"a no_data rule takes no {', '.join(extra)}")
        return self

    def _anomaly(self) -> Self:
        if self.metric is None:
            raise ValueError("an anomaly rule needs metric")
        extra = [
            name for name in ("aggregation", "operator", "value", "no_data_minutes") if getattr(self, name) is not None
        ]
        if extra:
            raise ValueError(f"an anomaly rule takes no {', '.join(extra)}")
        for name, default in ANOMALY_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        assert self.window_s is not None and self.sensitivity is not None
        if not 60 <= self.window_s <= 3600:
            raise ValueError("an anomaly rule's window_s (its bucket) is 60 to 3600 seconds")
        if self.clear_value is not None and not 0 <= self.clear_value < self.sensitivity:
            raise ValueError("an anomaly rule's clear_value is at least 0 and below sensitivity")
        return self


class Rule(BaseModel):
    id: str
    name: str
    kind: Kind
    scope: Scope
    device_id: int | None
    tag: str | None
    device_type: str | None
    metric: str | None
    aggregation: str | None
    window_s: int | None
    operator: str | None
    value: float | None
    clear_value: float | None
    consecutive: int
    no_data_minutes: int | None
    sensitivity: float | None
    baseline_buckets: int | None
    warmup_buckets: int | None
    severity: Severity
    enabled: bool
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class SavedRule(Rule):
    warnings: list[str] = Field(description="What may keep the rule from firing, e.g. a metric no device sent yet.")


class AlertEvent(BaseModel):
    id: str
    rule_id: str
    rule_name: str
    rule_kind: Kind
    device_id: int
    device_name: str
    severity: Severity
    state: EventState
    opened_at: datetime
    value: float | None = Field(
        description="The aggregate (threshold), the seconds silent (no_data) or the "
        "bucket's mean (anomaly) when the event opened."
    )
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None = Field(description="Who resolved it; null when the evaluator did (the condition cleared).")
    comment: str | None


class EventChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str | None = Field(None, min_length=1, max_length=1000, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]+$")


class Evaluation(BaseModel):
    evaluated: int = Field(description="(rule, device) pairs evaluated.")
    opened: int
    resolved: int
    skipped: bool = Field(description="Another evaluation of your tenant was running; nothing was done.")


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _rule(row: dict[str, Any]) -> Rule:
    return Rule.model_validate({**row, "id": str(row["id"]), "created_by": _str(row["created_by"])})


def _saved(row: dict[str, Any], warnings: list[str]) -> SavedRule:
    return SavedRule.model_validate({**_rule(row).model_dump(), "warnings": warnings})


def _event(row: dict[str, Any]) -> AlertEvent:
    return AlertEvent.model_validate(
        {
            **row,
            "id": str(row["id"]),
            "rule_id": str(row["rule_id"]),
            "acknowledged_by": _str(row["acknowledged_by"]),
            "resolved_by": _str(row["resolved_by"]),
        }
    )


def _fields(body: RuleRequest) -> rules.RuleFields:
    return rules.RuleFields(**body.model_dump())


@router.get("/alerts/rules", responses=problems(401, 422))
def list_rules(
    db: Pool,
    caller: Caller,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[Rule]:
    """The tenant's alert rules, oldest first, a page at a time (every role)."""
    rows, next_cursor = rules.list_rules(db, caller, cursor, limit)
    return Page[Rule](items=[_rule(row) for row in rows], next_cursor=next_cursor)


@router.post("/alerts/rules", status_code=status.HTTP_201_CREATED, responses=problems(401, 402, 403, 422))
def create_rule(body: RuleRequest, db: Pool, caller: Caller, source: Source) -> SavedRule:
    """Adds an alert rule (staff, owners); 402 at the plan's limit. A metric no device sent yet is allowed,
    with a warning in the answer."""
    row, warnings = rules.create_rule(db, caller, _fields(body), source)
    return _saved(row, warnings)


@router.get("/alerts/rules/{rule_id}", responses=problems(401, 404, 422))
def get_rule(rule_id: uuid.UUID, db: Pool, caller: Caller) -> Rule:
    """One alert rule (every role)."""
    return _rule(rules.get_rule(db, caller, rule_id))


@router.put("/alerts/rules/{rule_id}", responses=problems(401, 403, 404, 422))
def replace_rule(rule_id: uuid.UUID, body: RuleRequest, db: Pool, caller: Caller, source: Source) -> SavedRule:
    """Replaces an alert rule's definition (staff, owners); its consecutive-breach counts start over, open
    events stay."""
    row, warnings = rules.update_rule(db, caller, rule_id, _fields(body), source)
    return _saved(row, warnings)


@router.delete(
    "/alerts/rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(401, 403, 404, 422)
)
def delete_rule(rule_id: uuid.UUID, db: Pool, caller: Caller, source: Source) -> Response:
    """Deletes an alert rule and its events (staff, owners)."""
    rules.delete_rule(db, caller, rule_id, source)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/alerts/events", responses=problems(400, 401, 422))
def list_events(
    db: Pool,
    caller: Caller,
    state: EventState | None = None,
    severity: Severity | None = None,
    device_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[AlertEvent]:
    """The tenant's alert events, newest first, a page at a time, optionally one state, severity or device
    (every role)."""
    rows, next_cursor = rules.list_events(
        db, caller, cursor=cursor, limit=limit, state=state, severity=severity, device_id=device_id
    )
    return Page[AlertEvent](items=[_event(row) for row in rows], next_cursor=next_cursor)


EventId = Annotated[uuid.UUID, Path(description="The event's id.")]


@router.post("/alerts/events/{event_id}/acknowledge", responses=problems(401, 403, 404, 409, 422))
def acknowledge_event(
    event_id: EventId, db: Pool, caller: Caller, source: Source, body: EventChange | None = None
) -> AlertEvent:
    """Acknowledges an open event, with an optional comment (staff, owners; audited). 409 when resolved."""
    return _event(rules.acknowledge_event(db, caller, event_id, body.comment if body else None, source))


@router.post("/alerts/events/{event_id}/resolve", responses=problems(401, 403, 404, 409, 422))
def resolve_event(
    event_id: EventId, db: Pool, caller: Caller, source: Source, body: EventChange | None = None
) -> AlertEvent:
    """Resolves an open or acknowledged event, with an optional comment (staff, owners; audited). 409 when
    already resolved."""
    return _event(rules.resolve_event(db, caller, event_id, body.comment if body else None, source))


@router.post("/alerts/evaluate", responses=problems(401, 403))
def evaluate(db: Pool, caller: Caller) -> Evaluation:
    """Evaluates the tenant's enabled rules now (staff, owners), as the alert_evaluator timer does."""
    return Evaluation.model_validate(asdict(rules.evaluate_now(db, caller)))
