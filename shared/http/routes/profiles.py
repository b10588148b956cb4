"""Device profiles (/api/profiles: every role reads, staff and owners change), a device's profile, the
dry run and replay of its dead letters, and what its decoder saw (/api/devices/{id}/...)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from shared.core.paging import decode_id_cursor, encode_id_cursor
from shared.http.deps import PREFIX, Caller, Config, Pool, Source, problems
from shared.http.models import DEFAULT_LIMIT, MAX_LIMIT
from shared.http.routes.devices import DeviceId
from shared.ingest import profiles, replay

router = APIRouter(prefix=PREFIX, tags=["profiles"])

PROFILE_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
ProfileName = Annotated[str, Path(pattern=PROFILE_NAME, max_length=63)]
PLAIN_TEXT = r"^[^\x00-\x1f\x7f]*$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Profile(BaseModel):
    name: str
    builtin: bool
    kind: Literal["native", "json", "homeassistant-discovery", "sparkplug-b"]
    description: str | None
    spec: dict[str, Any] | None = Field(description="The declarative spec (json kind); null for the other kinds.")
    publish_forms: list[str] = Field(description="Topics below t/{tenant}/d/{device}/ besides the native ones.")
    subscribe_forms: list[str]
    sparkplug: bool = Field(description="Its devices publish in the Sparkplug B namespace spBv1.0/{tenant}/...")
    devices: int
    created_at: datetime | None
    updated_at: datetime | None


class Profiles(BaseModel):
    items: list[Profile]


class CreateProfileRequest(_Body):
    name: str = Field(pattern=PROFILE_NAME, max_length=63, examples=["tasmota-jakarta"])
    description: str | None = Field(None, max_length=500, pattern=PLAIN_TEXT)
    spec: dict[str, Any] = Field(description="forms, timezone, subscribe: see docs/profiles.md.")


class UpdateProfileRequest(_Body):
    description: str | None = Field(None, max_length=500, pattern=PLAIN_TEXT)
    spec: dict[str, Any]


class UpdatedProfile(Profile):
    broker_synced: bool = Field(description="False: the broker was unreachable; devices' ACLs follow once synced.")


class AssignProfileRequest(_Body):
    profile: str = Field(pattern=PROFILE_NAME, max_length=63, examples=["tasmota"])


class AssignedProfile(BaseModel):
    device_id: int
    profile: str
    broker_synced: bool = Field(description="False: the broker was unreachable; the ACL follows once synced.")


class DryRunRequest(_Body):
    profile: str | None = Field(None, pattern=PROFILE_NAME, max_length=63, description="Default: the device's own.")
    spec: dict[str, Any] | None = Field(None, description="An unsaved spec to try instead of a profile.")
    limit: int = Field(100, ge=1, le=replay.MAX_DEAD_LETTERS)


class DecodedReading(BaseModel):
    metric: str
    ts: datetime
    seq: int
    value: float | bool | str


class DeadLetterOutcome(BaseModel):
    id: int
    received_at: datetime
    topic: str
    reason: str
    profile: str | None = Field(description="The profile that could not decode it when it arrived.")
    replayed_at: datetime | None
    outcome: Literal["stored", "failed", "not_replayable"]
    readings: list[DecodedReading] = Field(description=f"The first {replay.SHOWN_READINGS} readings it gives.")
    reading_count: int
    new_reason: str | None
    new_detail: str | None


class DryRun(BaseModel):
    profile: str
    items: list[DeadLetterOutcome]
    dead_letters: int
    would_store: int
    readings: int
    still_failing: int
    not_replayable: int


class Replayed(DryRun):
    replayed: int = Field(description="Dead letters stored now (and marked replayed).")
    stored_readings: int = Field(description="Readings that were new; the dedup key skips any stored before.")
    duplicates: int


class DecoderEvent(BaseModel):
    id: int
    at: datetime
    kind: str
    detail: dict[str, Any]


class DecoderEvents(BaseModel):
    items: list[DecoderEvent]
    next_cursor: str | None


@router.get("/profiles", responses=problems(401))
def list_profiles(db: Pool, caller: Caller) -> Profiles:
    """The built-in profiles and the tenant's own, with how many devices use each (every role)."""
    return Profiles(items=[Profile.model_validate(p) for p in profiles.list_profiles(db, caller)])


@router.get("/profiles/{name}", responses=problems(401, 404, 422))
def get_profile(name: ProfileName, db: Pool, caller: Caller) -> Profile:
    """One profile; a built-in's spec is where a tenant's own starts from (every role)."""
    return Profile.model_validate(profiles.get_profile(db, caller, name))


@router.post("/profiles", status_code=status.HTTP_201_CREATED, responses=problems(401, 402, 403, 409, 422))
def create_profile(body: CreateProfileRequest, db: Pool, caller: Caller, source: Source) -> Profile:
    """A profile of the tenant's own (staff, owners); 402 when the plan's profile quota is reached."""
    return Profile.model_validate(profiles.create_profile(db, caller, body.name, body.description, body.spec, source))


@router.put("/profiles/{name}", responses=problems(401, 403, 404, 409, 422))
def update_profile(
    name: ProfileName, body: UpdateProfileRequest, db: Pool, config: Config, caller: Caller, source: Source
) -> UpdatedProfile:
    """Changes a profile (staff, owners); the broker ACLs of the devices using it follow at once."""
    view, synced = profiles.update_profile(db, config, caller, name, body.description, body.spec, source)
    return UpdatedProfile.model_validate({**view, "broker_synced": synced})


@router.delete("/profiles/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(401, 403, 404, 409, 422))
def delete_profile(name: ProfileName, db: Pool, caller: Caller, source: Source) -> Response:
    """Deletes a profile no device uses (staff, owners)."""
    profiles.delete_profile(db, caller, name, source)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/devices/{device_id}/profile", responses=problems(401, 403, 404, 422))
def assign_profile(
    device_id: DeviceId, body: AssignProfileRequest, db: Pool, config: Config, caller: Caller, source: Source
) -> AssignedProfile:
    """Gives the device a profile (staff, owners); its broker ACL allows that profile's topics at once."""
    synced = profiles.assign_profile(db, config, caller, device_id, body.profile, source)
    return AssignedProfile(device_id=device_id, profile=body.profile, broker_synced=synced)


@router.post("/devices/{device_id}/dead-letters/dry-run", responses=problems(401, 403, 404, 422))
def dry_run(device_id: DeviceId, body: DryRunRequest, db: Pool, config: Config, caller: Caller) -> DryRun:
    """What the device's recent dead letters would store with a profile or an unsaved spec; writes
    nothing (staff, owners)."""
    result = replay.dry_run(db, config, caller, device_id, profile=body.profile, spec=body.spec, limit=body.limit)
    return DryRun.model_validate(result)


@router.post("/devices/{device_id}/dead-letters/replay", responses=problems(401, 403, 404, 422, 503))
def replay_dead_letters(
    device_id: DeviceId,
    db: Pool,
    config: Config,
    caller: Caller,
    source: Source,
    include_replayed: Annotated[
        bool, Query(description="Also those replayed before (they store nothing twice).")
    ] = False,
) -> Replayed:
    """Stores what the device's dead letters decode to with its current profile, each reading once
    (staff, owners)."""
    return Replayed.model_validate(
        replay.replay(db, config, caller, device_id, source, include_replayed=include_replayed)
    )


@router.get("/devices/{device_id}/decoder-events", responses=problems(400, 401, 404, 422))
def get_decoder_events(
    device_id: DeviceId,
    db: Pool,
    caller: Caller,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> DecoderEvents:
    """What the device's decoder saw, newest first: Sparkplug sequence gaps, rebirth requests, births and
    deaths, metrics of types that cannot be stored (every role)."""
    rows = profiles.decoder_events(db, caller, device_id, decode_id_cursor(cursor, "de"), limit + 1)
    next_cursor = encode_id_cursor("de", rows[limit - 1]["id"]) if len(rows) > limit else None
    return DecoderEvents(items=[DecoderEvent.model_validate(r) for r in rows[:limit]], next_cursor=next_cursor)
