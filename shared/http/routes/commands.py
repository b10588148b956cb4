"""Commands to devices: /api/devices/{id}/commands (staff and owners send, every role lists).

A command is published to the device's command topic at QoS 1 with the API's own commands-only broker
credential; 202 means the broker took it (the device may be offline: the broker keeps it for the device's
session until it expires), not that the device acted on it. The device's ack shows in the list."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field

from shared.devices import commands
from shared.http.deps import PREFIX, Caller, Config, Pool, Source, problems
from shared.http.models import DEFAULT_LIMIT, MAX_LIMIT, Page

router = APIRouter(prefix=PREFIX, tags=["commands"])

DeviceId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The device's id.")]


class SendCommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,63}$", description="What the device is to do.", examples=["set_point"]
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        examples=[{"value": 72.5}],
        description=f"A JSON object, at most {commands.MAX_ARGS_BYTES} bytes.",
    )


class Command(BaseModel):
    id: str
    device_id: int
    name: str
    args: dict[str, Any]
    sent_by: str | None = Field(description="The user who sent it.")
    created_at: datetime
    status: Literal["pending", "sent", "failed", "acknowledged"] = Field(
        description="pending: recorded, not yet published; sent: the broker took it; failed: it did not "
        "(see failure); acknowledged: the device reported it applied it."
    )
    sent_at: datetime | None
    failure: Literal["broker_unreachable", "broker_refused"] | None
    acked_at: datetime | None = Field(description="When the device applied it (the ack reading's time).")
    result: str | None = Field(description="What the device reported with its ack, if anything.")


def _command(row: dict[str, Any]) -> Command:
    return Command.model_validate(
        {**row, "id": str(row["id"]), "sent_by": None if row["sent_by"] is None else str(row["sent_by"])}
    )


@router.post(
    "/devices/{device_id}/commands",
    status_code=status.HTTP_202_ACCEPTED,
    responses=problems(401, 403, 404, 409, 422, 503),
)
def send_command(
    device_id: DeviceId, body: SendCommandRequest, db: Pool, config: Config, caller: Caller, source: Source
) -> Command:
    """Sends a command to the device (staff, owners): recorded with who sent it, then published at QoS 1.
    409 for a disabled device; 503 when the broker did not take it (recorded as failed)."""
    return _command(commands.send_command(db, config, caller, device_id, body.name, body.args, source))


@router.get("/devices/{device_id}/commands", responses=problems(401, 404, 422))
def list_commands(
    device_id: DeviceId,
    db: Pool,
    caller: Caller,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[Command]:
    """The device's commands, newest first, a page at a time (every role)."""
    rows, next_cursor = commands.list_commands(db, caller, device_id, cursor, limit)
    return Page[Command](items=[_command(row) for row in rows], next_cursor=next_cursor)
