"""Device profiles as a tenant manages them: the built-ins and its own (staff and owners create, change
and delete, every role reads), and which one each device has.

A profile change and the broker commands it implies commit together: every device whose role must
follow (those using a changed profile, or a device given another one) gets an ensure_role command in
the outbox (shared/broker/credential_sync.py), applied right after the commit, which rebuilds the role
from the device's profile as it is then. Each change is audited and counted against the plan (the
database's trigger). A spec is validated and compiled before it is stored, so the drain never meets
one it cannot run.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from shared.accounts.access import acting_user, audit
from shared.accounts.tokens import Principal
from shared.broker.contract import BUILTIN_PROFILE_TOPICS, BUILTIN_PROFILES
from shared.broker.credential_sync import Command, device_key, queue_many, try_sync_now
from shared.core.db import DictConnection, DictPool, tenant_transaction
from shared.core.exceptions import (
    BuiltinProfile,
    DeviceNotFound,
    InvalidProfile,
    ProfileInUse,
    ProfileNameTaken,
    ProfileNotFound,
)
from shared.core.settings import Settings
from shared.core.sql import QUERIES, one_row
from shared.ingest.builtin_profiles import DESCRIPTIONS, SPECS
from shared.ingest.decoding import ProfileSpec, compile_spec

WRITERS = ("owner", "staff")
KINDS = {"homeassistant-discovery": "homeassistant-discovery", "sparkplug-b": "sparkplug-b", "native": "native"}


def validate_spec(spec: Any) -> ProfileSpec:
    """The spec as stored, or InvalidProfile naming the first problems (pydantic's locations)."""
    try:
        model = ProfileSpec.model_validate(spec)
        compile_spec("candidate", model)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in error['loc']) or 'spec'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)[:5]
        ]
        raise InvalidProfile("; ".join(problems)[:1000]) from None
    except ValueError as exc:
        raise InvalidProfile(str(exc)[:1000]) from None
    return model


def _builtin_view(name: str, devices: int) -> dict[str, Any]:
    topics = BUILTIN_PROFILE_TOPICS[name]
    return {
        "name": name,
        "builtin": True,
        "kind": KINDS.get(name, "json"),
        "description": DESCRIPTIONS[name],
        "spec": SPECS.get(name),
        "publish_forms": list(topics.publish),
        "subscribe_forms": list(topics.subscribe),
        "sparkplug": topics.sparkplug,
        "devices": devices,
        "created_at": None,
        "updated_at": None,
    }


def _own_view(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "builtin": False, "kind": "json", "sparkplug": False}


def list_profiles(pool: DictPool, principal: Principal) -> list[dict[str, Any]]:
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal)
        use = {r["name"]: r["devices"] for r in conn.execute(QUERIES["builtin_profile_use"], _t(principal))}
        own = conn.execute(QUERIES["list_profiles"], _t(principal)).fetchall()
    return [_builtin_view(name, use.get(name, 0)) for name in BUILTIN_PROFILES] + [_own_view(r) for r in own]


def get_profile(pool: DictPool, principal: Principal, name: str) -> dict[str, Any]:
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal)
        return _profile(conn, principal, name)


def _profile(conn: DictConnection, principal: Principal, name: str) -> dict[str, Any]:
    if name in BUILTIN_PROFILES:
        use = {r["name"]: r["devices"] for r in conn.execute(QUERIES["builtin_profile_use"], _t(principal))}
        return _builtin_view(name, use.get(name, 0))
    row = conn.execute(QUERIES["get_profile"], {**_t(principal), "name": name}).fetchone()
    if row is None:
        raise ProfileNotFound()
    return _own_view(row)


def _t(principal: Principal) -> dict[str, Any]:
    return {"tenant_id": principal.tenant_id}


def _stored(spec: ProfileSpec) -> dict[str, Any]:
    return {
        "spec": Jsonb(spec.model_dump(mode="json", exclude_defaults=True)),
        "publish_forms": spec.publish_forms,
        "subscribe_forms": list(spec.subscribe),
    }


def create_profile(
    pool: DictPool, principal: Principal, name: str, description: str | None, spec: Any, source: str
) -> dict[str, Any]:
    """A new profile of the tenant (no device uses it yet, so the broker has nothing to change)."""
    if name in BUILTIN_PROFILES:
        raise ProfileNameTaken()
    model = validate_spec(spec)
    try:
        with tenant_transaction(pool, str(principal.tenant_id)) as conn:
            acting_user(conn, principal, *WRITERS)
            params = {**_t(principal), "name": name, "description": description, **_stored(model)}
            profile_id = one_row(conn.execute(QUERIES["insert_profile"], params), "insert_profile")["id"]
            detail = {"name": name, "forms": model.publish_forms}
            audit(conn, principal.tenant_id, principal.user_id, "profile.create", "profile", profile_id, source, detail)
            return _profile(conn, principal, name)
    except psycopg.errors.UniqueViolation:
        raise ProfileNameTaken() from None


def update_profile(
    pool: DictPool,
    settings: Settings,
    principal: Principal,
    name: str,
    description: str | None,
    spec: Any,
    source: str,
) -> tuple[dict[str, Any], bool]:
    """Changes a profile; every device using it gets its broker role rebuilt (live, or by the timer
    when the broker is away). Returns the profile and whether the broker took every change."""
    if name in BUILTIN_PROFILES:
        raise BuiltinProfile()
    model = validate_spec(spec)
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        found = conn.execute(QUERIES["lock_profile"], {**_t(principal), "name": name}).fetchone()
        if found is None:
            raise ProfileNotFound()
        profile_id = found["id"]
        conn.execute(
            QUERIES["update_profile"], {**_t(principal), "id": profile_id, "description": description, **_stored(model)}
        )
        devices = conn.execute(QUERIES["devices_of_profile"], {**_t(principal), "id": profile_id}).fetchall()
        slug = _slug(conn, principal)
        _queue_roles(conn, settings, principal, slug, devices)
        detail = {"name": name, "forms": model.publish_forms, "devices": len(devices)}
        audit(conn, principal.tenant_id, principal.user_id, "profile.update", "profile", profile_id, source, detail)
        view = _profile(conn, principal, name)
    synced = _sync(pool, settings, slug, devices)
    return view, synced


def delete_profile(pool: DictPool, principal: Principal, name: str, source: str) -> None:
    if name in BUILTIN_PROFILES:
        raise BuiltinProfile()
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        found = conn.execute(QUERIES["lock_profile"], {**_t(principal), "name": name}).fetchone()
        if found is None:
            raise ProfileNotFound()
        if conn.execute(QUERIES["devices_of_profile"], {**_t(principal), "id": found["id"]}).fetchone():
            raise ProfileInUse()
        conn.execute(QUERIES["delete_profile"], {**_t(principal), "id": found["id"]})
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "profile.delete",
            "profile",
            found["id"],
            source,
            {"name": name},
        )


def assign_profile(
    pool: DictPool, settings: Settings, principal: Principal, device_id: int, name: str, source: str
) -> bool:
    """Gives the device a profile; its broker role follows at once (True) or when the broker is back."""
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        device = conn.execute(QUERIES["lock_device"], {**_t(principal), "device_id": device_id}).fetchone()
        if device is None:
            raise DeviceNotFound()
        profile_id = None
        if name not in BUILTIN_PROFILES:
            found = conn.execute(QUERIES["lock_profile"], {**_t(principal), "name": name}).fetchone()
            if found is None:
                raise ProfileNotFound()
            profile_id = found["id"]
        conn.execute(
            QUERIES["set_device_profile"],
            {
                **_t(principal),
                "device_id": device_id,
                "builtin": name if profile_id is None else None,
                "profile_id": profile_id,
            },
        )
        slug = device["tenant_slug"]
        _queue_roles(conn, settings, principal, slug, [device])
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "device.set_profile",
            "device",
            str(device_id),
            source,
            {"name": device["name"], "profile": name},
        )
    return _sync(pool, settings, slug, [device])


def _slug(conn: DictConnection, principal: Principal) -> str:
    slug: str = one_row(conn.execute(QUERIES["tenant_slug"], _t(principal)), "tenant_slug")["slug"]
    return slug


def _queue_roles(
    conn: DictConnection, settings: Settings, principal: Principal, slug: str, devices: list[dict[str, Any]]
) -> None:
    queue_many(
        conn, settings, principal.tenant_id, [(slug, d["id"], d["name"], [Command("ensure_role")]) for d in devices]
    )


def _sync(pool: DictPool, settings: Settings, slug: str, devices: list[dict[str, Any]]) -> bool:
    if not devices:
        return True
    keys = [device_key(slug, d["name"]) for d in devices]
    report = try_sync_now(pool, settings, keys)
    return set(keys) <= report.synced_keys


def decoder_events(
    pool: DictPool, principal: Principal, device_id: int, before_id: int | None, limit: int
) -> list[dict[str, Any]]:
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal)
        if conn.execute(QUERIES["device_profile"], {**_t(principal), "device_id": device_id}).fetchone() is None:
            raise DeviceNotFound()
        params = {**_t(principal), "device_id": device_id, "before_id": before_id, "limit": limit}
        return conn.execute(QUERIES["decoder_events"], params).fetchall()
