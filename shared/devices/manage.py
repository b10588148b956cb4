"""A tenant's devices and their broker credentials (staff and owners change them, viewers read).

Every change runs in tenant_transaction with the tenant from the verified token, writes its audit
row and queues the broker commands it implies (shared/broker/credential_sync.py) in the same transaction;
after the commit the request applies those commands itself, so a new password works when the
response arrives, but a broker outage leaves them to the broker_sync timer instead of failing.
Passwords are generated here, returned once and never stored in clear: the broker keeps a hash,
the outbox an encrypted copy until it is applied.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shared.accounts.access import acting_user, audit
from shared.accounts.tokens import Principal
from shared.broker import credential_sync
from shared.broker.contract import DEVICE_NAME_PATTERN, CredentialSlot, device_prefix, device_username
from shared.broker.credential_sync import Command, device_key, queue_commands, queue_many, try_sync_now
from shared.broker.dynsec import generate_password
from shared.core.db import DictConnection, DictPool, tenant_transaction
from shared.core.exceptions import DeviceNameTaken, DeviceNotFound, InvalidCsv
from shared.core.paging import decode_id_cursor, encode_id_cursor
from shared.core.settings import Settings
from shared.core.sql import QUERIES, one_row

WRITERS = ("owner", "staff")
MAX_BULK_ROWS = 1000
MAX_OVERLAP_S = 7 * 86400
MAX_DEVICE_ID = 2**63 - 1  # a bigint
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:=/-]{0,49}$"
MAX_TAGS = 20
CSV_COLUMNS = ("name", "display_name", "type", "location", "tags")
_NAME_RE = re.compile(DEVICE_NAME_PATTERN)
_TAG_RE = re.compile(TAG_PATTERN)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class DeviceFields:
    name: str
    display_name: str | None = None
    type: str | None = None
    location: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class IssuedCredential:
    """A credential as issued: the password is in this object and nowhere else."""

    username: str
    password: str
    client_id: str
    topic_prefix: str
    broker_host: str
    broker_port: int
    broker_synced: bool
    replaces: str | None = None
    replaced_valid_until: Any = None


# -- reads ---------------------------------------------------------------------------------------------------------


def _device(conn: DictConnection, principal: Principal, device_id: int) -> dict[str, Any]:
    row = conn.execute(QUERIES["device_view"], {"tenant_id": principal.tenant_id, "device_ids": [device_id]}).fetchone()
    if row is None:
        raise DeviceNotFound()
    return row


def get_device(pool: DictPool, principal: Principal, device_id: int) -> dict[str, Any]:
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal)
        return _device(conn, principal, device_id)


def list_devices(
    pool: DictPool,
    principal: Principal,
    *,
    cursor: str | None,
    limit: int,
    status: str | None = None,
    name_prefix: str | None = None,
    name_contains: str | None = None,
    tag: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    after_id = decode_id_cursor(cursor, "d")
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal)
        rows = conn.execute(
            QUERIES["list_devices"],
            {
                "tenant_id": principal.tenant_id,
                "after_id": after_id,
                "status": status,
                "name_prefix": name_prefix,
                "name_contains": name_contains,
                "tag": tag,
                "limit": limit + 1,
            },
        ).fetchall()
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], encode_id_cursor("d", rows[limit - 1]["id"])


def authorize_write(pool: DictPool, principal: Principal) -> None:
    """Refuses a caller who may not change devices, before their request body is even read."""
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)


# -- create --------------------------------------------------------------------------------------------------------


def _tenant_slug(conn: DictConnection, principal: Principal) -> str:
    slug: str = one_row(conn.execute(QUERIES["tenant_slug"], {"tenant_id": principal.tenant_id}), "tenant_slug")["slug"]
    return slug


def _credential_commands(username: str, password: str, enabled: bool) -> list[Command]:
    commands = [Command("ensure_role"), Command("create_client", username, password)]
    if not enabled:
        commands.append(Command("disable_client", username))
    return commands


def create_devices(
    pool: DictPool,
    settings: Settings,
    principal: Principal,
    devices: list[DeviceFields],
    source: str,
    action: str = "device.create",
) -> list[tuple[dict[str, Any], IssuedCredential]]:
    """Create devices, each with a credential on slot a, in one transaction and one INSERT (a
    refused row, be it a duplicate name or a plan limit, refuses them all)."""
    tenant_id = principal.tenant_id
    passwords = {device.name: generate_password() for device in devices}
    try:
        with tenant_transaction(pool, str(tenant_id)) as conn:
            acting_user(conn, principal, *WRITERS)
            slug = _tenant_slug(conn, principal)
            created = conn.execute(
                QUERIES["insert_devices"],
                {
                    "tenant_id": tenant_id,
                    "rows": Jsonb(
                        [
                            {
                                "name": d.name,
                                "display_name": d.display_name,
                                "type": d.type,
                                "location": d.location,
                                "tags": list(d.tags),
                            }
                            for d in devices
                        ]
                    ),
                },
            ).fetchall()
            ids = {row["name"]: row["id"] for row in created}
            conn.execute(
                QUERIES["insert_credentials"],
                {
                    "tenant_id": tenant_id,
                    "rows": Jsonb(
                        [
                            {"device_id": ids[d.name], "slot": "a", "username": device_username(slug, d.name)}
                            for d in devices
                        ]
                    ),
                },
            )
            queue_many(
                conn,
                settings,
                tenant_id,
                [
                    (
                        slug,
                        ids[d.name],
                        d.name,
                        _credential_commands(device_username(slug, d.name), passwords[d.name], True),
                    )
                    for d in devices
                ],
            )
            if action == "device.create":
                for d in devices:
                    audit(conn, tenant_id, principal.user_id, action, "device", ids[d.name], source, {"name": d.name})
            else:  # one row for a bulk create: what was created, not a row per device
                audit(
                    conn,
                    tenant_id,
                    principal.user_id,
                    action,
                    "device",
                    None,
                    source,
                    {"count": len(devices), "names": [d.name for d in devices]},
                )
    except psycopg.errors.UniqueViolation:
        raise DeviceNameTaken() from None
    synced = try_sync_now(pool, settings, [device_key(slug, d.name) for d in devices])
    with tenant_transaction(pool, str(tenant_id)) as conn:
        views = conn.execute(
            QUERIES["device_view"], {"tenant_id": tenant_id, "device_ids": list(ids.values())}
        ).fetchall()
    return [
        (
            view,
            _issued(
                settings,
                slug,
                view["name"],
                "a",
                passwords[view["name"]],
                device_key(slug, view["name"]) in synced.synced_keys,
            ),
        )
        for view in views
    ]


def _issued(
    settings: Settings,
    slug: str,
    name: str,
    slot: CredentialSlot,
    password: str,
    synced: bool,
    replaces: str | None = None,
    replaced_valid_until: Any = None,
) -> IssuedCredential:
    username = device_username(slug, name, slot)
    return IssuedCredential(
        username=username,
        password=password,
        client_id=username,
        topic_prefix=device_prefix(slug, name),
        broker_host=settings.mqtt_host,
        broker_port=settings.mqtt_port,
        broker_synced=synced,
        replaces=replaces,
        replaced_valid_until=replaced_valid_until,
    )


def parse_devices_csv(text: str) -> list[DeviceFields]:
    """The bulk create's CSV: a header naming the columns (name required; display_name, type,
    location, tags optional, tags separated by ';'), then one device per line. Refuses the whole
    file at the first bad line, naming it."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [column.strip().lower() for column in next(reader)]
    except StopIteration:
        raise InvalidCsv(
            "The CSV is empty: send a header line (name,display_name,type,location,tags) and one line per device."
        ) from None
    except csv.Error:
        raise InvalidCsv("Line 1 is not valid CSV.") from None
    unknown = [column for column in header if column not in CSV_COLUMNS]
    if "name" not in header or unknown or len(set(header)) != len(header):
        raise InvalidCsv(
            "Line 1 must be a header of distinct columns from: name (required), display_name, type, location, tags."
        )
    devices: list[DeviceFields] = []
    seen: set[str] = set()
    try:
        for values in reader:
            line = reader.line_num
            if not any(value.strip() for value in values):
                continue
            if len(devices) >= MAX_BULK_ROWS:
                raise InvalidCsv(f"Too many devices: at most {MAX_BULK_ROWS} per request.")
            if len(values) != len(header):
                raise InvalidCsv(f"Line {line} has {len(values)} fields; the header has {len(header)}.")
            record = {column: value.strip() or None for column, value in zip(header, values, strict=True)}
            device = _fields(record, line)
            if device.name in seen:
                raise InvalidCsv(f"Line {line}: device name {device.name!r} appears twice in the file.")
            seen.add(device.name)
            devices.append(device)
    except csv.Error:
        raise InvalidCsv(f"Line {reader.line_num} is not valid CSV.") from None
    if not devices:
        raise InvalidCsv("The CSV has a header but no device lines.")
    return devices


def _fields(record: dict[str, str | None], line: int) -> DeviceFields:
    name = record.get("name") or ""
    if not _NAME_RE.match(name):
        raise InvalidCsv(f"Line {line}: name must match {DEVICE_NAME_PATTERN} (letters, digits, '_' and '-').")
    limits = {"display_name": 200, "type": 100, "location": 200}
    for column, limit in limits.items():
        value = record.get(column)
        if value is not None and len(value) > limit:
            raise InvalidCsv(f"Line {line}: {column} is longer than {limit} characters.")
        if value is not None and _CONTROL_RE.search(value):
            raise InvalidCsv(f"Line {line}: {column} contains a control character.")
    tags = tuple(tag.strip() for tag in (record.get("tags") or "").split(";") if tag.strip())
    if len(tags) > MAX_TAGS or any(not _TAG_RE.match(tag) for tag in tags):
        raise InvalidCsv(
            f"Line {line}: tags are up to {MAX_TAGS} values separated by ';', each matching {TAG_PATTERN}."
        )
    return DeviceFields(
        name=name,
        display_name=record.get("display_name"),
        type=record.get("type"),
        location=record.get("location"),
        tags=tuple(dict.fromkeys(tags)),
    )


# -- changes -------------------------------------------------------------------------------------------------------


def _locked(conn: DictConnection, principal: Principal, device_id: int) -> dict[str, Any]:
    row = conn.execute(QUERIES["lock_device"], {"tenant_id": principal.tenant_id, "device_id": device_id}).fetchone()
    if row is None:
        raise DeviceNotFound()
    return row


def _usernames(conn: DictConnection, principal: Principal, device_id: int) -> list[str]:
    return [
        row["username"]
        for row in conn.execute(
            QUERIES["device_credentials"], {"tenant_id": principal.tenant_id, "device_id": device_id}
        ).fetchall()
    ]


def update_device(
    pool: DictPool, principal: Principal, device_id: int, changes: dict[str, Any], source: str
) -> dict[str, Any]:
    """changes holds only the fields the caller sent; None clears one (tags: to none)."""
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        _locked(conn, principal, device_id)
        params: dict[str, Any] = {"tenant_id": principal.tenant_id, "device_id": device_id}
        for column in ("display_name", "type", "location"):
            params[column] = changes.get(column)
            params[f"clear_{column}"] = column in changes and changes[column] is None
        params["tags"] = None if "tags" not in changes else list(dict.fromkeys(changes["tags"] or []))
        conn.execute(QUERIES["update_device"], params)
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "device.update",
            "device",
            str(device_id),
            source,
            {"fields": sorted(changes)},
        )
        return _device(conn, principal, device_id)


def set_enabled(
    pool: DictPool, settings: Settings, principal: Principal, device_id: int, enabled: bool, source: str
) -> dict[str, Any]:
    """Disabling refuses the device's clients and disconnects their sessions at once (disableClient)."""
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        device = _locked(conn, principal, device_id)
        conn.execute(
            QUERIES["set_enabled"], {"tenant_id": principal.tenant_id, "device_id": device_id, "enabled": enabled}
        )
        op = "enable_client" if enabled else "disable_client"
        queue_commands(
            conn,
            settings,
            principal.tenant_id,
            device["tenant_slug"],
            device_id,
            device["name"],
            [Command(op, username) for username in _usernames(conn, principal, device_id)],
        )
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "device.enable" if enabled else "device.disable",
            "device",
            str(device_id),
            source,
            {"name": device["name"]},
        )
    try_sync_now(pool, settings, [device_key(device["tenant_slug"], device["name"])])
    return get_device(pool, principal, device_id)


def _all_slot_commands(slug: str, name: str, op: str) -> list[Command]:
    return [Command(op, device_username(slug, name, "a")), Command(op, device_username(slug, name, "b"))]


def delete_device(pool: DictPool, settings: Settings, principal: Principal, device_id: int, source: str) -> None:
    """The row goes (its telemetry stays); both broker clients and the role are deleted, which
    disconnects the device at once."""
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        device = _locked(conn, principal, device_id)
        conn.execute(QUERIES["delete_device"], {"tenant_id": principal.tenant_id, "device_id": device_id})
        queue_commands(
            conn,
            settings,
            principal.tenant_id,
            device["tenant_slug"],
            device_id,
            device["name"],
            [*_all_slot_commands(device["tenant_slug"], device["name"], "delete_client"), Command("delete_role")],
        )
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "device.delete",
            "device",
            str(device_id),
            source,
            {"name": device["name"]},
        )
    try_sync_now(pool, settings, [device_key(device["tenant_slug"], device["name"])])


def rotate_credential(
    pool: DictPool, settings: Settings, principal: Principal, device_id: int, overlap_s: int, source: str
) -> tuple[dict[str, Any], IssuedCredential]:
    """A new password on the slot the device is not using; the old slot's client keeps working for
    overlap_s seconds (deleted at once when 0). After a revoke (or a lost client) this issues a
    fresh credential."""
    if not 0 <= overlap_s <= MAX_OVERLAP_S:
        raise ValueError("overlap_s out of range")
    password = generate_password()
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        device = _locked(conn, principal, device_id)
        slug, name = device["tenant_slug"], device["name"]
        slots = {
            row["slot"]: row
            for row in conn.execute(
                QUERIES["device_credentials"], {"tenant_id": principal.tenant_id, "device_id": device_id}
            ).fetchall()
        }
        live = [slot for slot, row in slots.items() if row["expires_at"] is None]
        current: CredentialSlot | None = ("a" if live[0] == "a" else "b") if live else None
        new: CredentialSlot = "b" if current == "a" else "a"
        key = {"tenant_id": principal.tenant_id, "device_id": device_id}
        if new in slots:  # an older credential still in its overlap: replaced now
            conn.execute(QUERIES["drop_credential"], {**key, "slot": new})
        commands = _credential_commands(device_username(slug, name, new), password, device["enabled"])
        if current is not None:
            if overlap_s == 0:
                conn.execute(QUERIES["drop_credential"], {**key, "slot": current})
                commands.append(Command("delete_client", device_username(slug, name, current)))
            else:
                conn.execute(
                    QUERIES["expire_credential"],
                    {**key, "slot": current, "overlap_s": overlap_s, "period_s": credential_sync.BROKER_SYNC_PERIOD_S},
                )
        conn.execute(
            QUERIES["insert_credentials"],
            {
                "tenant_id": principal.tenant_id,
                "rows": Jsonb([{"device_id": device_id, "slot": new, "username": device_username(slug, name, new)}]),
            },
        )
        conn.execute(QUERIES["clear_needs_rotation"], key)
        queue_commands(conn, settings, principal.tenant_id, slug, device_id, name, commands)
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "device.rotate_credential",
            "device",
            str(device_id),
            source,
            {"name": name, "slot": new, "overlap_s": overlap_s},
        )
    synced = try_sync_now(pool, settings, [device_key(slug, name)])
    view = get_device(pool, principal, device_id)
    replaced_until = next((c["expires_at"] for c in view["credentials"] if c["slot"] == current), None)
    return view, _issued(
        settings,
        slug,
        name,
        new,
        password,
        device_key(slug, name) in synced.synced_keys,
        device_username(slug, name, current) if current else None,
        replaced_until,
    )


def revoke_credentials(
    pool: DictPool, settings: Settings, principal: Principal, device_id: int, source: str
) -> dict[str, Any]:
    """Both clients go (disconnecting the device); the device row stays, and a rotation issues a new one."""
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        device = _locked(conn, principal, device_id)
        conn.execute(QUERIES["drop_credentials"], {"tenant_id": principal.tenant_id, "device_id": device_id})
        queue_commands(
            conn,
            settings,
            principal.tenant_id,
            device["tenant_slug"],
            device_id,
            device["name"],
            _all_slot_commands(device["tenant_slug"], device["name"], "delete_client"),
        )
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "device.revoke_credentials",
            "device",
            str(device_id),
            source,
            {"name": device["name"]},
        )
    try_sync_now(pool, settings, [device_key(device["tenant_slug"], device["name"])])
    return get_device(pool, principal, device_id)
