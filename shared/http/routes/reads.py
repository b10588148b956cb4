"""Reads for dashboards: latest values, series, fleet overview, /api/admin/ingest."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import AwareDatetime, BaseModel, Field

from shared.broker.contract import METRIC_NAME_PATTERN
from shared.http.deps import PREFIX, Caller, Pool, problems
from shared.http.models import DEFAULT_LIMIT, MAX_LIMIT
from shared.telemetry import reads

router = APIRouter(prefix=PREFIX, tags=["reads"])

DeviceId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class LatestValue(BaseModel):
    metric: str
    value: float | bool | str
    type: Literal["number", "boolean", "text"]
    unit: str | None = Field(description="The unit the device's /state payloads give; null if none ever did.")
    ts: datetime = Field(description="The reading's own timestamp (device clock).")
    first_seen: datetime = Field(description="When the drain first stored this metric.")


class Latest(BaseModel):
    device_id: int
    metrics: list[LatestValue]


class Fleet(BaseModel):
    online: int
    offline: int
    never_seen: int
    disabled: int = Field(description="Disabled devices, whatever their last status.")
    total: int


class Bucket(BaseModel):
    ts: datetime = Field(description="Start of the bucket.")
    avg: float
    min: float
    max: float
    count: int


class Series(BaseModel):
    device_id: int
    metric: str
    unit: str | None
    from_: datetime = Field(alias="from")
    to: datetime
    bucket_s: int = Field(description="The bucket width used: the narrowest that keeps points <= max_points.")
    points: list[Bucket] = Field(description="Buckets holding at least one reading, oldest first.")


class MinuteCount(BaseModel):
    minute: datetime
    messages: int
    readings: int
    dead_lettered: int


class ReasonCount(BaseModel):
    reason: str
    count: int
    last_at: datetime


class DeadLetterView(BaseModel):
    id: int
    received_at: datetime
    device_id: int | None
    device_name: str | None
    topic: str
    reason: str
    detail: str
    payload_bytes: int = Field(description="The payload's size as received.")
    payload_base64: str = Field(description=f"The payload's first {reads.PAYLOAD_SHOWN_BYTES} bytes at most.")
    payload_truncated: bool
    payload_preview: str = Field(
        description="UTF-8 text with invalid bytes and control characters escaped "
        "(\\xNN, \\uNNNN), backslashes doubled, cut with an ellipsis."
    )


class DeadLetterPage(BaseModel):
    items: list[DeadLetterView]
    next_cursor: str | None = Field(description="Pass as ?cursor= for older dead letters; null on the last page.")


class IngestRun(BaseModel):
    started_at: datetime
    finished_at: datetime | None
    status: str
    max_lag_ms: int | None = Field(description="Age of the oldest reading the run stored (device clock).")
    duration_ms: float | None


class QuietDevice(BaseModel):
    id: int
    name: str
    status: str
    last_seen: datetime | None
    dead_letters: int = Field(description="Its dead letters within quiet_minutes.")
    last_reason: str | None


class IngestOverview(BaseModel):
    minutes: int
    messages_per_minute: list[MinuteCount] = Field(description="Minutes with traffic only, oldest first.")
    dead_letters_by_reason: list[ReasonCount]
    dead_letters: DeadLetterPage
    recent_runs: list[IngestRun] = Field(
        description="The platform's drain runs (shared by all tenants): timing and lag only."
    )
    quiet_minutes: int
    quiet_devices: list[QuietDevice] = Field(
        description="Enabled devices that stored nothing within quiet_minutes "
        "(seen before, or never seen but dead-lettered)."
    )


@router.get("/devices/{device_id}/latest", responses=problems(401, 404, 422))
def get_latest(device_id: DeviceId, db: Pool, caller: Caller) -> Latest:
    """The newest value, its ts and unit, of each metric of the device (every role)."""
    return Latest(device_id=device_id, metrics=[LatestValue(**row) for row in reads.latest(db, caller, device_id)])


class StatusChange(BaseModel):
    status: Literal["never_seen", "online", "offline"]
    previous: Literal["never_seen", "online", "offline"] | None
    at: datetime


class StatusHistory(BaseModel):
    device_id: int
    items: list[StatusChange]
    next_cursor: str | None = None


@router.get("/devices/{device_id}/status-history", responses=problems(400, 401, 404, 422))
def get_status_history(
    device_id: DeviceId,
    db: Pool,
    caller: Caller,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> StatusHistory:
    """The device's status changes (never seen, online, offline), newest first, as the drain saw them (every role)."""
    rows, next_cursor = reads.status_history(db, caller, device_id, cursor, limit)
    return StatusHistory(
        device_id=device_id,
        items=[StatusChange(**{k: row[k] for k in ("status", "previous", "at")}) for row in rows],
        next_cursor=next_cursor,
    )


@router.get("/fleet", responses=problems(401))
def get_fleet(db: Pool, caller: Caller) -> Fleet:
    """How many of the tenant's devices are online, offline, never seen, disabled (every role)."""
    return Fleet(**reads.fleet(db, caller))


@router.get("/devices/{device_id}/series", responses=problems(401, 404, 422))
def get_series(
    device_id: DeviceId,
    db: Pool,
    caller: Caller,
    metric: Annotated[str, Query(pattern=METRIC_NAME_PATTERN)],
    from_: Annotated[AwareDatetime | None, Query(alias="from", description="Default: 'to' minus one day.")] = None,
    to: Annotated[AwareDatetime | None, Query(description="Exclusive; default: now.")] = None,
    max_points: Annotated[int, Query(ge=2, le=reads.SERIES_MAX_POINTS)] = reads.SERIES_DEFAULT_POINTS,
    bucket: Annotated[
        int | None,
        Query(
            ge=1, le=31 * 86400, description="Narrowest bucket width in seconds; widened to keep points <= max_points."
        ),
    ] = None,
) -> Series:
    """A numeric metric over [from, to), bucketed server-side: avg, min, max, count per bucket (every role).
    At most 400 days; a boolean or text metric answers 422."""
    result = reads.series(db, caller, device_id, metric, from_, to, max_points, bucket, datetime.now(UTC))
    return Series.model_validate(result)


@router.get("/admin/ingest", responses=problems(401, 403, 422))
def get_ingest_overview(
    db: Pool,
    caller: Caller,
    minutes: Annotated[int, Query(ge=1, le=1440, description="Window of the per-minute counts and reasons.")] = 60,
    quiet_minutes: Annotated[int, Query(ge=1, le=30 * 1440)] = 60,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> IngestOverview:
    """The drain's work for your tenant: messages per minute, dead letters by reason and paged (payload shown
    safely), recent drain runs with lag, devices that sent nothing valid lately (staff, owners)."""
    return IngestOverview.model_validate(
        reads.ingest_overview(db, caller, minutes=minutes, quiet_minutes=quiet_minutes, cursor=cursor, limit=limit)
    )
