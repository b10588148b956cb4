"""Device credentials on the broker: the outbox that carries each change there, and the
reconciliation that repairs drift between the broker and the database.

A device change and the broker commands it implies commit together (queue_commands, in the
caller's tenant transaction); sync_outbox applies them afterwards, in order per device, and a
broker outage leaves them pending with a backoff for the broker_sync timer. Every command is
idempotent (create over an existing client sets it, delete of a missing one is fine), so a
command applied twice, say once by a request and once by the timer after a lost acknowledgement,
ends in the same state.

The password createClient must set is the one secret the outbox holds until applied: it is stored
encrypted (Fernet, with a key derived from the provisioner password, which anyone able to use it
already holds: whoever has that password owns the broker anyway) and erased when applied.

Cross-tenant access: the sync and the reconciliation run as the app role, outside any tenant, and
see other tenants' rows only through the migration's narrow SECURITY DEFINER functions
(sql/migrations/0005_devices_and_credentials.sql). Nothing here knows of HTTP.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from psycopg.types.json import Jsonb

from shared.broker.contract import (
    NATIVE_TOPICS,
    Acl,
    ProfileTopics,
    device_acls,
    device_role,
    parse_device_username,
    profile_topics,
)
from shared.broker.dynsec import CLIENT_NOT_FOUND, ROLE_NOT_FOUND, DynsecClient
from shared.core import observability
from shared.core.db import DictConnection, DictPool
from shared.core.exceptions import BrokerUnavailable, DynsecError
from shared.core.keys import derived_fernet
from shared.core.settings import Settings
from shared.core.sql import QUERIES, one_row

log = logging.getLogger(__name__)

# How long a request waits for the broker after its commit before leaving the work to the timer.
INLINE_TIMEOUT_S = 3.0
# How long a request spends applying its commands (a big CSV bulk): the rest goes to the timer, so
# the answer comes well within the platform's HTTP timeout (230 s on Azure) whatever the broker's size.
INLINE_BUDGET_S = 30.0
SYNC_TIMEOUT_S = 10.0
SYNC_BATCH = 500
# The broker_sync timer: at second 0 of every minute. A rotation's overlap ends at one of its runs
# (the overlap is rounded up to the next), so the old credential stops when the answer says, not up
# to a minute later; a faster cadence would be billed every run (at least 1 s each on Flex).
BROKER_SYNC_SCHEDULE = "0 */1 * * * *"
BROKER_SYNC_PERIOD_S = 60
# A run that finds an overlap ending this soon waits for it (the timer may fire a little early, or
# the clocks differ by a little), so that run, not the next, retires it: at most this long, billed
# only in the runs where an overlap ends.
RETIRE_WAIT_S = 5.0


# -- the outbox's password encryption ---------------------------------------------------------------------------


def _fernet(settings: Settings) -> MultiFernet:
    secret = settings.mqtt_provisioner_password.get_secret_value()
    # Rows queued by the previous release (a plain SHA-256 of label and secret) stay readable until applied.
    previous = Fernet(
        base64.urlsafe_b64encode(hashlib.sha256(b"mqtt-saas broker_outbox v1\x00" + secret.encode()).digest())
    )
    return MultiFernet([derived_fernet(secret, "mqtt-saas broker_outbox v2"), previous])


def encrypt_password(settings: Settings, password: str) -> str:
    return _fernet(settings).encrypt(password.encode()).decode()


def decrypt_password(settings: Settings, token: str) -> str | None:
    """None when the key changed since (the provisioner password was rotated): the password is lost."""
    try:
        return _fernet(settings).decrypt(token.encode()).decode()
    except InvalidToken:
        return None


# -- queueing (in the caller's transaction) ------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    op: str
    username: str | None = None
    password: str | None = None


def queue_commands(
    conn: DictConnection,
    settings: Settings,
    tenant_id: Any,
    tenant_slug: str,
    device_id: int | None,
    device_name: str,
    commands: list[Command],
) -> None:
    """Append one device's broker commands to the outbox, in order, in the caller's transaction."""
    queue_many(conn, settings, tenant_id, [(tenant_slug, device_id, device_name, commands)])


def queue_many(
    conn: DictConnection, settings: Settings, tenant_id: Any, devices: list[tuple[str, int | None, str, list[Command]]]
) -> None:
    """queue_commands for many devices in one statement (bulk create)."""
    rows = [
        {
            "device_id": device_id,
            "device_key": device_key(tenant_slug, device_name),
            "op": command.op,
            "tenant_slug": tenant_slug,
            "device_name": device_name,
            "username": command.username,
            "password_enc": None if command.password is None else encrypt_password(settings, command.password),
        }
        for tenant_slug, device_id, device_name, commands in devices
        for command in commands
    ]
    if rows:
        conn.execute(QUERIES["insert_outbox"], {"tenant_id": tenant_id, "rows": Jsonb(rows)})


def device_key(tenant_slug: str, device_name: str) -> str:
    return f"{tenant_slug}.{device_name}"


# -- applying the outbox -------------------------------------------------------------------------------------------


@dataclass
class SyncReport:
    applied: int = 0
    failed: int = 0
    lost_passwords: int = 0
    broker_unavailable: bool = False
    # Devices whose queue is now empty (everything applied), and those left for later by the budget.
    synced_keys: set[str] = field(default_factory=set)
    deferred: int = 0


def _provisioner(settings: Settings, timeout: float) -> DynsecClient:
    return DynsecClient(
        settings.mqtt_host,
        settings.mqtt_port,
        settings.mqtt_ca_file,
        settings.mqtt_provisioner_username,
        settings.mqtt_provisioner_password,
        timeout=timeout,
    )


def sync_outbox(
    pool: DictPool,
    settings: Settings,
    device_keys: Collection[str] | None = None,
    timeout: float = SYNC_TIMEOUT_S,
    budget_s: float | None = None,
) -> SyncReport:
    """Apply pending broker commands: those of device_keys (due or not, waiting for a device another
    sync holds: a request right after its commit), else of every device whose next command is due
    (skipping a device another sync holds). A broker error stops that device's queue (order
    matters) and backs it off; an unreachable broker stops the run.

    One command per broker request, one device per transaction: Mosquitto's plugin rewrites its
    whole configuration file after every command, so batching commands saves nothing (measured)
    and would only make one request outlast its timeout. So a big batch costs a command's time,
    which grows with the broker's size, per command: budget_s stops starting devices after that
    long (their commands stay pending for the timer)."""
    report = SyncReport()
    wait = device_keys is not None
    if device_keys is None:
        with pool.connection() as conn:
            keys = [
                row["device_key"]
                for row in conn.execute(QUERIES["outbox_due_keys"], {"limit": SYNC_BATCH, "all": False}).fetchall()
            ]
    else:
        keys = list(device_keys)
    if not keys:
        return report
    try:
        dynsec = _provisioner(settings, timeout)
        dynsec.connect()
    except (BrokerUnavailable, DynsecError, OSError, ValueError) as exc:
        report.broker_unavailable = True
        _note_unreachable(pool, keys, exc)
        observability.event(
            log,
            "broker_sync.broker_unavailable",
            {"pending_devices": len(keys), "error": type(exc).__name__},
            logging.WARNING,
        )
        return report
    deadline = None if budget_s is None else time.monotonic() + budget_s
    try:
        for done, key in enumerate(keys):
            if deadline is not None and time.monotonic() > deadline:
                report.deferred = len(keys) - done
                observability.event(log, "broker_sync.out_of_time", {"deferred": report.deferred})
                break
            if not _sync_device(pool, settings, dynsec, key, wait, report):
                break
    finally:
        dynsec.close()
    return report


def _note_unreachable(pool: DictPool, keys: list[str], exc: Exception) -> None:
    """Record the failed attempt on each device's first command, so its backoff and error show."""
    error = f"broker unavailable: {type(exc).__name__}"
    with pool.connection() as conn, conn.transaction():
        for key in keys:
            rows = conn.execute(QUERIES["outbox_take"], {"device_key": key, "wait": False}).fetchall()
            if rows:
                conn.execute(QUERIES["outbox_failed"], {"id": rows[0]["id"], "error": error})


def _sync_device(
    pool: DictPool, settings: Settings, dynsec: DynsecClient, key: str, wait: bool, report: SyncReport
) -> bool:
    """Apply one device's pending commands in order; False when the broker went away."""
    with pool.connection() as conn, conn.transaction():
        for row in conn.execute(QUERIES["outbox_take"], {"device_key": key, "wait": wait}).fetchall():
            try:
                _apply(settings, dynsec, row, report, functools.partial(_current_topics, conn, row))
            except BrokerUnavailable as exc:
                conn.execute(QUERIES["outbox_failed"], {"id": row["id"], "error": str(exc)})
                report.failed += 1
                report.broker_unavailable = True
                return False
            except DynsecError as exc:
                # The plugin's error text names the command and the client, never a password.
                conn.execute(QUERIES["outbox_failed"], {"id": row["id"], "error": str(exc)})
                report.failed += 1
                observability.event(
                    log, "broker_sync.command_refused", {"device_key": key, "op": row["op"]}, logging.WARNING
                )
                return True
            conn.execute(QUERIES["outbox_applied"], {"id": row["id"]})
            report.applied += 1
    report.synced_keys.add(key)
    return True


def _current_topics(conn: DictConnection, row: Mapping[str, Any]) -> ProfileTopics:
    """The device's profile as it is now (a role command applies what holds when it runs: commands
    queued by two profile changes both set the latest). A device gone meanwhile keeps the native forms."""
    found = conn.execute(
        QUERIES["device_profile_topics"], {"tenant_slug": row["tenant_slug"], "device_name": row["device_name"]}
    ).fetchone()
    if found is None:
        return NATIVE_TOPICS
    return profile_topics(found["builtin_profile"], found["publish_forms"], found["subscribe_forms"])


def _apply(
    settings: Settings,
    dynsec: DynsecClient,
    row: Mapping[str, Any],
    report: SyncReport,
    topics: Callable[[], ProfileTopics],
) -> None:
    op, username = row["op"], row["username"]
    tenant, device = row["tenant_slug"], row["device_name"]
    if op == "ensure_role":
        _put_role(dynsec, device_role(tenant, device), device_acls(tenant, device, topics()))
    elif op == "create_client":
        password = decrypt_password(settings, row["password_enc"] or "")
        if password is None:
            # Encrypted under an earlier provisioner password: nobody can recover it, so the device
            # needs a new one (the reconciliation flags it once it sees the client missing).
            report.lost_passwords += 1
            # the queued password cannot be decrypted: the device needs a rotation
            observability.event(
                log,
                "broker_sync.password_undecryptable",
                {"tenant_slug": tenant, "device_name": device},
                logging.WARNING,
            )
            return
        dynsec.put_device_client(username, password, device_role(tenant, device))
    elif op == "delete_client":
        dynsec.execute_tolerating([{"command": "deleteClient", "username": username}], (CLIENT_NOT_FOUND,))
    elif op == "disable_client":
        dynsec.execute_tolerating([{"command": "disableClient", "username": username}], (CLIENT_NOT_FOUND,))
    elif op == "enable_client":
        dynsec.execute_tolerating([{"command": "enableClient", "username": username}], (CLIENT_NOT_FOUND,))
    elif op == "delete_role":
        dynsec.execute_tolerating(
            [{"command": "deleteRole", "rolename": device_role(tenant, device)}], (ROLE_NOT_FOUND,)
        )
    else:
        raise DynsecError(f"unknown outbox command {op!r}")


def _put_role(dynsec: DynsecClient, role: str, acls: list[Acl]) -> None:
    dynsec.put_role(role, acls)


def try_sync_now(pool: DictPool, settings: Settings, device_keys: Collection[str]) -> SyncReport:
    """After a request's commit: apply its commands so the credential works when the response
    arrives. A broker outage (or no provisioner configured) never fails the request: the commands
    stay pending for the timer."""
    if not settings.mqtt_provisioner_password.get_secret_value():
        return SyncReport(broker_unavailable=True)
    try:
        return sync_outbox(pool, settings, device_keys, timeout=INLINE_TIMEOUT_S, budget_s=INLINE_BUDGET_S)
    except Exception:  # the commit stands whatever happens here; the timer retries
        log.warning("broker_sync: applying a request's commands failed; the timer retries", exc_info=True)
        return SyncReport(broker_unavailable=True)


# -- reconciliation ---------------------------------------------------------------------------------------------


@dataclass
class ReconcileReport:
    deleted_clients: list[str] = field(default_factory=list)
    disabled_clients: list[str] = field(default_factory=list)
    enabled_clients: list[str] = field(default_factory=list)
    repaired_clients: list[str] = field(default_factory=list)
    reset_roles: list[str] = field(default_factory=list)
    deleted_roles: list[str] = field(default_factory=list)
    flagged_devices: list[str] = field(default_factory=list)


def _acl_set(acls: list[Mapping[str, Any]]) -> set[tuple[str, str, bool, int]]:
    return {(str(a.get("acltype")), str(a.get("topic")), bool(a.get("allow")), int(a.get("priority", 0))) for a in acls}


def _role_device(rolename: str) -> tuple[str, str] | None:
    parts = rolename.split(".")
    if len(parts) != 3 or parts[0] != "device":
        return None
    parsed = parse_device_username(f"{parts[1]}.{parts[2]}")
    return (parsed[0], parsed[1]) if parsed else None


def reconcile(
    pool: DictPool, settings: Settings, only_tenants: Collection[str] | None = None, timeout: float = SYNC_TIMEOUT_S
) -> ReconcileReport:
    """Compare the broker's device clients and roles with the database and repair the broker.

    The broker is read first and the database second: a device committed in between has its rows
    (and pending commands) in what we read, so its fresh client is never taken for a stranger.
    Devices with pending commands are left to the outbox. Clients and roles that are not a
    device's (the service clients, the admin) are never touched. only_tenants limits the work to
    those tenant slugs (tests share one broker between many databases).
    """
    report = ReconcileReport()
    with _provisioner(settings, timeout) as dynsec:
        clients = dynsec.list_clients()
        roles = {role["rolename"]: role for role in dynsec.list_roles() if "rolename" in role}
        with pool.connection() as conn:
            wanted = conn.execute(QUERIES["wanted_devices"]).fetchall()
            pending = {row["device_key"] for row in conn.execute(QUERIES["pending_keys"]).fetchall()}
            conn.commit()

        def ours(tenant: str) -> bool:
            return only_tenants is None or tenant in only_tenants

        by_key = {device_key(row["tenant_slug"], row["device_name"]): row for row in wanted}
        wanted_usernames = {name for row in wanted for name in row["usernames"]}
        on_broker: dict[str, dict[str, Any]] = {}
        for client in clients:
            username = str(client.get("username", ""))
            parsed = parse_device_username(username)
            if parsed is None or not ours(parsed[0]):
                continue  # a service client (ingest, provisioner, commander, admin) or not ours to judge
            on_broker[username] = client
            key = device_key(parsed[0], parsed[1])
            if key in pending:
                continue
            device = by_key.get(key)
            if device is None or username not in wanted_usernames:
                dynsec.execute_tolerating([{"command": "deleteClient", "username": username}], (CLIENT_NOT_FOUND,))
                report.deleted_clients.append(username)
                continue
            role = device_role(parsed[0], parsed[1])
            client_roles = [r.get("rolename") for r in client.get("roles", [])]
            if client_roles != [role] or client.get("clientid") != username:
                dynsec.execute(
                    [
                        {"command": "setClientId", "username": username, "clientid": username},
                        {"command": "modifyClient", "username": username, "roles": [{"rolename": role, "priority": 0}]},
                    ]
                )
                report.repaired_clients.append(username)
            disabled = bool(client.get("disabled", False))
            if device["enabled"] and disabled:
                dynsec.execute([{"command": "enableClient", "username": username}])
                report.enabled_clients.append(username)
            elif not device["enabled"] and not disabled:
                dynsec.execute([{"command": "disableClient", "username": username}])
                report.disabled_clients.append(username)

        for key, device in by_key.items():
            if key in pending or not ours(device["tenant_slug"]) or not device["usernames"]:
                continue
            role = device_role(device["tenant_slug"], device["device_name"])
            topics = profile_topics(device["builtin_profile"], device["publish_forms"], device["subscribe_forms"])
            contract = device_acls(device["tenant_slug"], device["device_name"], topics)
            present = roles.get(role)
            if present is None or _acl_set(present.get("acls", [])) != _acl_set([a.as_command() for a in contract]):
                _put_role(dynsec, role, contract)
                report.reset_roles.append(role)
            missing = [name for name in device["usernames"] if name not in on_broker]
            # Re-read before flagging: the outbox may have created it since the list was taken.
            if missing and any(not _client_exists(dynsec, name) for name in missing):
                with pool.connection() as conn:
                    conn.execute(
                        QUERIES["flag_needs_rotation"],
                        {"tenant_id": device["tenant_id"], "device_id": device["device_id"]},
                    )
                report.flagged_devices.append(key)
                # the broker lost the device's client: its credential needs a rotation
                observability.event(
                    log,
                    "broker_sync.client_lost",
                    {"tenant_slug": device["tenant_slug"], "device_name": device["device_name"]},
                    logging.WARNING,
                )

        for rolename in roles:
            owner = _role_device(rolename)
            if owner is None or not ours(owner[0]):
                continue
            key = device_key(*owner)
            if key not in by_key and key not in pending:
                dynsec.execute_tolerating([{"command": "deleteRole", "rolename": rolename}], (ROLE_NOT_FOUND,))
                report.deleted_roles.append(rolename)
    return report


def _client_exists(dynsec: DynsecClient, username: str) -> bool:
    try:
        dynsec.get_client(username)
    except DynsecError as exc:
        if CLIENT_NOT_FOUND in str(exc):
            return False
        raise
    return True


# -- the timer's run -----------------------------------------------------------------------------------------------


@dataclass
class BrokerSyncReport:
    retired: int
    sync: SyncReport
    reconcile: ReconcileReport | None


def retire_expired_credentials(pool: DictPool) -> int:
    """Credentials whose rotation overlap ended: their rows go and delete commands are queued."""
    with pool.connection() as conn:
        retired: int = one_row(conn.execute(QUERIES["retire_expired_credentials"]), "retire_expired_credentials")[
            "retired"
        ]
    return retired


def seconds_to_next_expiry(pool: DictPool) -> float | None:
    with pool.connection() as conn:
        seconds: float | None = one_row(conn.execute(QUERIES["next_credential_expiry"]), "next_credential_expiry")[
            "seconds"
        ]
    return seconds


def run_broker_sync(
    pool: DictPool, settings: Settings, only_tenants: Collection[str] | None = None
) -> BrokerSyncReport:
    """The broker_sync timer: retire ended overlaps (waiting up to RETIRE_WAIT_S for one about to
    end), apply the outbox, then reconcile (skipped while the broker is unreachable: the next run
    does it)."""
    retired = retire_expired_credentials(pool)
    wait = seconds_to_next_expiry(pool)
    if wait is not None and wait <= RETIRE_WAIT_S:
        time.sleep(max(wait, 0.0) + 0.05)
        retired += retire_expired_credentials(pool)
    sync = sync_outbox(pool, settings)
    drift = None if sync.broker_unavailable else reconcile(pool, settings, only_tenants)
    observability.event(
        log,
        "broker_sync.run",
        {
            "retired": retired,
            "applied": sync.applied,
            "failed": sync.failed,
            "deferred": sync.deferred,
            "reconciled": drift is not None,
        },
    )
    return BrokerSyncReport(retired, sync, drift)
