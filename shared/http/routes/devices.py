"""Devices and their broker credentials: /api/devices (staff and owners change, viewers read).

A created device, and a rotation, answer with the credential's password: shown this once."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from shared.broker.contract import DEVICE_NAME_PATTERN
from shared.core.exceptions import InvalidCsv
from shared.devices import manage
from shared.http.deps import PREFIX, Caller, Config, Pool, Source, problems
from shared.http.models import DEFAULT_LIMIT, MAX_LIMIT, Page

router = APIRouter(prefix=PREFIX, tags=["devices"])

DeviceStatus = Literal["online", "offline", "never_seen", "disabled"]
Tag = Annotated[str, Field(pattern=manage.TAG_PATTERN)]
# PostgreSQL text cannot hold NUL, and control characters have no place in a label.
PLAIN_TEXT = r"^[^\x00-\x1f\x7f]*$"
# A bigint: anything larger cannot be a device id (and would reach the database as an error).
DeviceId = Annotated[int, Path(ge=1, le=manage.MAX_DEVICE_ID)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateDeviceRequest(_Body):
    name: str = Field(
        pattern=DEVICE_NAME_PATTERN,
        description="Unique in the tenant; the device's id in its topics.",
        examples=["press-01"],
    )
    display_name: str | None = Field(None, min_length=1, max_length=200, pattern=PLAIN_TEXT)
    type: str | None = Field(None, min_length=1, max_length=100, pattern=PLAIN_TEXT)
    location: str | None = Field(None, min_length=1, max_length=200, pattern=PLAIN_TEXT)
    tags: list[Tag] = Field(default_factory=list, max_length=manage.MAX_TAGS)


class UpdateDeviceRequest(_Body):
    display_name: str | None = Field(
        None, min_length=1, max_length=200, pattern=PLAIN_TEXT, description="null clears it."
    )
    type: str | None = Field(None, min_length=1, max_length=100, pattern=PLAIN_TEXT, description="null clears it.")
    location: str | None = Field(None, min_length=1, max_length=200, pattern=PLAIN_TEXT, description="null clears it.")
    tags: list[Tag] | None = Field(None, max_length=manage.MAX_TAGS, description="Replaces the tags; null clears.")


class RotateRequest(_Body):
    overlap_s: int = Field(
        0,
        ge=0,
        le=manage.MAX_OVERLAP_S,
        description=(
            "Seconds the old password keeps working at least (0: it stops at once); the "
            "overlap ends at the next whole minute after, as replaced_valid_until says."
        ),
    )


class CredentialSlotView(BaseModel):
    slot: Literal["a", "b"]
    username: str
    expires_at: datetime | None = Field(description="Set on the old credential of a rotation: valid until then.")


class Device(BaseModel):
    id: int
    name: str
    display_name: str | None
    type: str | None
    location: str | None
    tags: list[str]
    enabled: bool
    status: Literal["never_seen", "online", "offline"]
    last_seen: datetime | None
    created_at: datetime
    profile: str = Field(description="How the drain decodes it and which topics its broker role allows.")
    credentials: list[CredentialSlotView] = Field(description="The broker credentials that work (none after a revoke).")
    credential_needs_rotation: bool = Field(
        description="The broker lost this device's credential (found by the reconciliation): rotate to issue one."
    )
    sync_pending: int = Field(description="Broker changes not applied yet (the broker was unreachable); retried.")
    sync_error: str | None = Field(description="Why the next pending broker change failed last time, if it did.")


class Credential(BaseModel):
    """A broker credential as issued: the password is shown this once."""

    username: str
    password: str
    client_id: str = Field(description="The client id the credential is bound to (= username).")
    topic_prefix: str
    broker_host: str
    broker_port: int
    broker_synced: bool = Field(description="False: the broker was unreachable; the credential works once synced.")
    replaces: str | None = Field(None, description="Rotation: the previous credential's username.")
    replaced_valid_until: datetime | None = Field(
        None,
        description=(
            "Rotation: when the previous one stops working: the overlap asked for, rounded up to the next whole minute "
            "(the broker_sync timer's run, which then deletes it within seconds)."
        ),
    )


class CreatedDevice(Device):
    credential: Credential


class CreatedDevices(BaseModel):
    items: list[CreatedDevice]


class RotatedCredential(BaseModel):
    device: Device
    credential: Credential


def _created(view: dict[str, Any], issued: manage.IssuedCredential) -> CreatedDevice:
    return CreatedDevice.model_validate({**view, "credential": Credential.model_validate(issued, from_attributes=True)})


@router.post("/devices", status_code=status.HTTP_201_CREATED, responses=problems(401, 402, 403, 409, 422))
def create_device(body: CreateDeviceRequest, db: Pool, config: Config, caller: Caller, source: Source) -> CreatedDevice:
    """Creates a device and its broker credential (staff, owners); the password is in this answer only.
    402 when the plan's device quota is reached."""
    fields = manage.DeviceFields(body.name, body.display_name, body.type, body.location, tuple(body.tags))
    ((view, issued),) = manage.create_devices(db, config, caller, [fields], source)
    return _created(view, issued)


@router.post(
    "/devices/bulk",
    status_code=status.HTTP_201_CREATED,
    responses=problems(401, 402, 403, 409, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {
                    "schema": {
                        "type": "string",
                        "description": "Header name,display_name,type,location,tags (tags separated by "
                        f"';'), then one device per line; at most {manage.MAX_BULK_ROWS}.",
                    }
                }
            },
        }
    },
)
async def bulk_create(request: Request, db: Pool, config: Config, caller: Caller, source: Source) -> CreatedDevices:
    """Creates all the CSV's devices or none (staff, owners), answering each credential once; 402 when they
    would exceed the plan's device quota."""
    await run_in_threadpool(manage.authorize_write, db, caller)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "text/csv":
        raise InvalidCsv("Send the devices as text/csv.")
    try:
        text = (await request.body()).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidCsv("The CSV must be UTF-8.") from None
    fields = manage.parse_devices_csv(text)
    created = await run_in_threadpool(manage.create_devices, db, config, caller, fields, source, "device.bulk_create")
    return CreatedDevices(items=[_created(view, issued) for view, issued in created])


@router.get("/devices", responses=problems(400, 401, 422))
def list_devices(
    db: Pool,
    caller: Caller,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    status: Annotated[DeviceStatus | None, Query()] = None,
    name_prefix: Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = None,
    name_contains: Annotated[str | None, Query(min_length=1, max_length=200, pattern=PLAIN_TEXT)] = None,
    tag: Annotated[Tag | None, Query()] = None,
) -> Page[Device]:
    """The tenant's devices in creation order, a page at a time, optionally filtered (every role)."""
    rows, next_cursor = manage.list_devices(
        db,
        caller,
        cursor=cursor,
        limit=limit,
        status=status,
        name_prefix=name_prefix,
        name_contains=name_contains,
        tag=tag,
    )
    return Page[Device](items=[Device.model_validate(row) for row in rows], next_cursor=next_cursor)


@router.get("/devices/{device_id}", responses=problems(401, 404, 422))
def get_device(device_id: DeviceId, db: Pool, caller: Caller) -> Device:
    """One device of the tenant (every role)."""
    return Device.model_validate(manage.get_device(db, caller, device_id))


@router.patch("/devices/{device_id}", responses=problems(401, 403, 404, 422))
def update_device(device_id: DeviceId, body: UpdateDeviceRequest, db: Pool, caller: Caller, source: Source) -> Device:
    """Changes display name, type, location or tags (staff, owners); only the fields sent change."""
    changes = body.model_dump(include=body.model_fields_set)
    return Device.model_validate(manage.update_device(db, caller, device_id, changes, source))


@router.post("/devices/{device_id}/disable", responses=problems(401, 403, 404, 422))
def disable_device(device_id: DeviceId, db: Pool, config: Config, caller: Caller, source: Source) -> Device:
    """Disconnects the device at once and refuses its reconnections until enabled (staff, owners)."""
    return Device.model_validate(manage.set_enabled(db, config, caller, device_id, False, source))


@router.post("/devices/{device_id}/enable", responses=problems(401, 403, 404, 422))
def enable_device(device_id: DeviceId, db: Pool, config: Config, caller: Caller, source: Source) -> Device:
    """Lets the device connect again with its credential (staff, owners)."""
    return Device.model_validate(manage.set_enabled(db, config, caller, device_id, True, source))


@router.delete("/devices/{device_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(401, 403, 404, 422))
def delete_device(device_id: DeviceId, db: Pool, config: Config, caller: Caller, source: Source) -> Response:
    """Deletes the device and its broker credentials, disconnecting it (staff, owners); telemetry stays."""
    manage.delete_device(db, config, caller, device_id, source)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/devices/{device_id}/credentials/rotate", responses=problems(401, 403, 404, 422))
def rotate_credential(
    device_id: DeviceId,
    db: Pool,
    config: Config,
    caller: Caller,
    source: Source,
    body: Annotated[RotateRequest | None, Body()] = None,
) -> RotatedCredential:
    """Issues a new password (shown once) on the device's other credential; the old one works for
    overlap_s more seconds (staff, owners)."""
    overlap_s = body.overlap_s if body is not None else 0
    view, issued = manage.rotate_credential(db, config, caller, device_id, overlap_s, source)
    return RotatedCredential(
        device=Device.model_validate(view), credential=Credential.model_validate(issued, from_attributes=True)
    )


@router.post("/devices/{device_id}/credentials/revoke", responses=problems(401, 403, 404, 422))
def revoke_credentials(device_id: DeviceId, db: Pool, config: Config, caller: Caller, source: Source) -> Device:
    """Deletes both broker credentials, disconnecting the device; a rotation issues a new one (staff, owners)."""
    return Device.model_validate(manage.revoke_credentials(db, config, caller, device_id, source))
