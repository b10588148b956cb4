"""POST /api/exports: a time range of the caller's tenant's readings as a file behind a time-limited link."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.http.deps import PREFIX, Caller, Config, Pool, Source, problems
from shared.telemetry import exports
from shared.telemetry.archive import archive_container

router = APIRouter(prefix=PREFIX, tags=["exports"])


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: Annotated[int | None, Field(ge=1, le=2**63 - 1)] = None
    from_: AwareDatetime = Field(alias="from")
    to: AwareDatetime
    format: Literal["parquet", "csv"] = "parquet"


class ExportLink(BaseModel):
    url: str = Field(description="Read-only link to the file; works until expires_at, then 403.")
    expires_at: datetime
    blob: str
    format: str
    rows: int
    bytes: int
    sha256: str


@router.post("/exports", status_code=status.HTTP_201_CREATED, responses=problems(401, 403, 404, 422))
def create_export(body: ExportRequest, db: Pool, config: Config, caller: Caller, source: Source) -> ExportLink:
    """Writes the readings in [from, to) (one device, or all) as Parquet or CSV; owners and staff only."""
    done = exports.create_export(
        db,
        caller,
        config,
        archive_container(config, config.export_container),
        source=source,
        device_id=body.device_id,
        start=body.from_,
        end=body.to,
        fmt=body.format,
        now=datetime.now(UTC),
    )
    return ExportLink(
        url=done.url,
        expires_at=done.expires_at,
        blob=done.blob,
        format=done.format,
        rows=done.rows,
        bytes=done.bytes,
        sha256=done.sha256,
    )
