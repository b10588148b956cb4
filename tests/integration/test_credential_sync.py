"""Device credentials on the real broker: a device created through the API
connects over TLS and its readings are stored; rotation with an overlap; disable and delete
disconnect at once and refuse reconnection; a broker outage leaves the outbox pending and the sync
brings the broker into line afterwards; the reconciliation repairs drift both ways; the outbox
keeps passwords encrypted, erases them when applied, and hides them from the app role."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from shared.broker import credential_sync
from shared.broker.contract import device_acls, device_role
from shared.broker.credential_sync import reconcile, run_broker_sync, sync_outbox
from tests.support.api import call, new_tenant, users_of_each_role
from tests.support.devices import Device, provisioner, registered_functions, run_mqtt_ingest, unique_slug
from tests.support.registry import DeviceCredential, create_tenant
from tests.support.waiting import query, wait_for


class Session:
    """One MQTT v5 connection over TLS that notices being disconnected (and never reconnects)."""

    def __init__(self, settings, username: str, password: str, client_id: str | None = None) -> None:
        self.connack = threading.Event()
        self.gone = threading.Event()
        self.reason: Any = None
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or username,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        self.client.username_pw_set(username, password)
        self.client.tls_set(ca_certs=settings.mqtt_ca_file, cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *args: self.gone.set()
        self.client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=30)
        self.client.loop_start()
        assert self.connack.wait(10), "no CONNACK"

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        self.reason = reason
        self.connack.set()

    @property
    def accepted(self) -> bool:
        return not self.reason.is_failure

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connects(settings, credential: dict[str, Any]) -> bool:
    session = Session(settings, credential["username"], credential["password"], credential["client_id"])
    try:
        return session.accepted
    finally:
        session.close()


@pytest.fixture
def api(broker_api):
    """Here the API runs with the live broker (tests/conftest.py broker_api); its settings reach the broker."""
    return broker_api


@pytest.fixture
def tenant(app_pool):
    # The largest plan: these tests create more devices than a small plan's quota allows.
    return create_tenant(app_pool, unique_slug(), "Acme Test Works", "industrial")


@pytest.fixture
def token(app_pool, tenant, api) -> str:
    return str(users_of_each_role(app_pool, tenant)["staff"]["token"])


def create(token: str, name: str) -> dict[str, Any]:
    reply = call("POST", "/api/devices", {"name": name}, token=token)
    assert reply.status == 201, reply.body
    return dict(reply.json)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sync(app_pool, settings, tenant) -> Any:
    return run_broker_sync(app_pool, settings, only_tenants={tenant["slug"]})


# --------------------------------------------------------------------------- the happy path


def test_device_created_through_the_api_publishes_and_its_readings_are_stored(api, token, tenant, database):
    # GIVEN a device created through the API
    device = create(token, "press-01")
    credential = device["credential"]
    # WHEN it publishes over TLS with the credential it was given, and the drain runs
    publisher = Device(
        api,
        DeviceCredential(
            tenant["slug"], "press-01", credential["username"], credential["client_id"], credential["password"]
        ),
    )
    ts = int(time.time() * 1000)
    assert publisher.wait_acked([publisher.publish("telemetry", {"ts": ts, "metrics": {"temp": 21.5}})]) != {}
    publisher.close()
    run_mqtt_ingest()
    # THEN its reading is stored under its id
    assert query(database, "SELECT device_id, metric, value FROM telemetry") == [(device["id"], "temp", 21.5)]


def test_rotation_overlap_ends_when_the_answer_says(api, token, tenant, app_pool, monkeypatch):
    """The overlap ends at a broker_sync run, as the answer says (it used to end up to a minute after
    replaced_valid_until, at the first run past it). The timer is played here on a 6 s period."""
    period = 6
    monkeypatch.setattr(credential_sync, "BROKER_SYNC_PERIOD_S", period)
    # GIVEN a device connected with its first credential, just after a run of the timer
    device = create(token, "gw-1")
    old = device["credential"]
    session = Session(api, old["username"], old["password"])
    assert session.accepted
    wait_for(lambda: time.time() % period < 0.5, period + 1, "a timer run", interval=0.05)
    # WHEN its credential is rotated with a 1 s overlap
    asked = time.time()
    reply = call("POST", f"/api/devices/{device['id']}/credentials/rotate", {"overlap_s": 1}, token=token)
    assert reply.status == 200, reply.body
    new = reply.json["credential"]
    until = datetime.fromisoformat(new["replaced_valid_until"]).timestamp()
    assert new["replaces"] == old["username"] and until >= asked + 1
    # THEN until then both work: the session on the old one stays, the new one connects (each
    # credential is bound to its own client id, so they can be connected at once)
    assert connects(api, new) and not session.gone.is_set()
    # AND with the timer firing on its period (each run a little early, as a timer may), the old
    # password is refused within a second of replaced_valid_until, and not before it
    refused_at = None
    run = (asked // period + 1) * period
    while refused_at is None and run < until + 2 * period:
        time.sleep(max(0.0, run - 0.3 - time.time()))
        assert time.time() > until or connects(api, old)
        sync(app_pool, api, tenant)
        if not connects(api, old):
            refused_at = time.time()
        run += period
    assert refused_at is not None and until <= refused_at < until + 1, (until, refused_at)
    assert session.gone.wait(1)
    # AND the answer said so: the overlap was rounded up to a run of the timer
    assert until % period == 0 and until < asked + 1 + period
    assert connects(api, new)
    view = call("GET", f"/api/devices/{device['id']}", token=token).json
    assert [c["slot"] for c in view["credentials"]] == ["b"] and view["sync_pending"] == 0
    session.close()


@pytest.mark.parametrize("change", ["disable", "delete"])
def test_disable_or_delete_disconnects_at_once_and_reconnect_is_refused(api, token, change):
    # GIVEN a connected device
    device = create(token, "plc-1")
    credential = device["credential"]
    session = Session(api, credential["username"], credential["password"])
    assert session.accepted
    # WHEN it is disabled (or deleted) through the API
    if change == "disable":
        reply = call("POST", f"/api/devices/{device['id']}/disable", token=token)
        assert reply.status == 200 and reply.json["enabled"] is False
    else:
        assert call("DELETE", f"/api/devices/{device['id']}", token=token).status == 204
    # THEN its session is gone by the time the answer arrived, and it cannot reconnect
    assert session.gone.wait(2), "still connected"
    assert not connects(api, credential)
    session.close()
    if change == "disable":
        # AND enabling lets the same credential in again
        assert call("POST", f"/api/devices/{device['id']}/enable", token=token).status == 200
        assert connects(api, credential)


# --------------------------------------------------------------------------- broker outage


def test_broker_down_requests_succeed_and_the_sync_catches_up(api, token, tenant, app_pool, database, monkeypatch):
    # GIVEN the API pointed at a broker that does not answer (a closed port)
    monkeypatch.setenv("MQTT_PORT", str(closed_port()))
    from shared.core.settings import get_settings

    get_settings.cache_clear()
    # WHEN devices are created and one is rotated
    first, second = create(token, "dev-a"), create(token, "dev-b")
    rotated = call("POST", f"/api/devices/{second['id']}/credentials/rotate", {"overlap_s": 0}, token=token)
    # THEN every request answered, and the broker work is pending with its error and backoff
    assert rotated.status == 200
    assert not first["credential"]["broker_synced"] and not rotated.json["credential"]["broker_synced"]
    assert first["sync_pending"] == 2 and rotated.json["device"]["sync_pending"] >= 4
    assert rotated.json["device"]["sync_error"].startswith("broker unavailable")
    pending = query(
        database,
        "SELECT op, attempts, last_error, next_attempt_at > now(), password_enc "
        "FROM broker_outbox WHERE applied_at IS NULL ORDER BY id",
    )
    assert [row[0] for row in pending] == [
        "ensure_role",
        "create_client",
        "ensure_role",
        "create_client",
        "ensure_role",
        "create_client",
        "delete_client",
    ]
    heads = [row for row in pending if row[1]]
    assert heads and all(row[2].startswith("broker unavailable") and row[3] for row in heads)
    secrets_ = {
        first["credential"]["password"],
        second["credential"]["password"],
        rotated.json["credential"]["password"],
    }
    stored = [row[4] for row in pending if row[4]]
    assert len(stored) == 3 and not any(secret in value for value in stored for secret in secrets_)
    assert not connects(api, first["credential"])

    # WHEN the broker is reachable again and the sync runs (as the timer would, backoff respected)
    monkeypatch.setenv("MQTT_PORT", str(api.mqtt_port))
    get_settings.cache_clear()
    wait_for(
        lambda: (
            not sync(app_pool, api, tenant).sync.failed
            and not query(database, "SELECT 1 FROM broker_outbox WHERE applied_at IS NULL")
        ),
        30,
        "the outbox to drain",
        interval=0.5,
    )
    # THEN the devices connect with the passwords the API answered, and no password is left stored
    assert connects(api, first["credential"])
    assert connects(api, rotated.json["credential"])
    assert not connects(api, second["credential"])  # rotated without overlap
    assert query(database, "SELECT count(*) FROM broker_outbox WHERE password_enc IS NOT NULL") == [(0,)]
    view = call("GET", f"/api/devices/{first['id']}", token=token).json
    assert view["sync_pending"] == 0 and view["sync_error"] is None and not view["credential_needs_rotation"]


def test_outbox_apply_is_idempotent_create_over_existing_and_delete_of_missing(
    api, token, tenant, app_pool, database, monkeypatch
):
    # GIVEN a device created while the broker was unreachable, and a stale client of the same name
    monkeypatch.setenv("MQTT_PORT", str(closed_port()))
    from shared.core.settings import get_settings

    get_settings.cache_clear()
    device = create(token, "dup-1")
    assert device["sync_pending"] == 2
    with provisioner(api) as dynsec:
        dynsec.create_client(device["credential"]["username"], "some-stale-password", roles=[])
    # WHEN the outbox is applied (twice: the second run finds nothing left to do)
    report = sync_outbox(app_pool, api, [f"{tenant['slug']}.dup-1"])
    assert (report.applied, report.failed) == (2, 0)
    assert sync_outbox(app_pool, api, [f"{tenant['slug']}.dup-1"]).applied == 0
    # THEN the client has the API's password, bound client id and only the device's role
    assert connects(api, device["credential"])
    with provisioner(api) as dynsec:
        client = dynsec.get_client(device["credential"]["username"])
    assert client["clientid"] == device["credential"]["username"]
    assert [r["rolename"] for r in client["roles"]] == [device_role(tenant["slug"], "dup-1")]
    # AND deleting a device whose client is already gone applies cleanly
    with provisioner(api) as dynsec:
        dynsec.delete_client(device["credential"]["username"])
    assert call("DELETE", f"/api/devices/{device['id']}", token=token).status == 204
    assert sync_outbox(app_pool, api, [f"{tenant['slug']}.dup-1"]).failed == 0
    assert query(database, "SELECT count(*) FROM broker_outbox WHERE applied_at IS NULL") == [(0,)]


def test_a_bulk_beyond_the_requests_time_budget_answers_and_the_timer_finishes(
    api, token, tenant, app_pool, database, monkeypatch
):
    # GIVEN a request budget already spent when the commit is done (a huge CSV on a big broker)
    from shared.broker import credential_sync

    monkeypatch.setattr(credential_sync, "INLINE_BUDGET_S", 0.0)
    # WHEN a CSV of devices is created
    reply = call(
        "POST", "/api/devices/bulk", token=token, raw=b"name\nb-1\nb-2\nb-3\n", headers={"Content-Type": "text/csv"}
    )
    # THEN it answers at once, each credential marked as not yet on the broker
    assert reply.status == 201, reply.body
    items = reply.json["items"]
    assert [item["credential"]["broker_synced"] for item in items] == [False, False, False]
    assert [item["sync_pending"] for item in items] == [2, 2, 2]
    # AND the timer's sync applies the rest: the devices connect with the passwords answered
    report = sync(app_pool, api, tenant)
    assert report.sync.applied == 6 and not report.sync.failed
    assert all(connects(api, item["credential"]) for item in items)


# --------------------------------------------------------------------------- reconciliation


def test_reconciliation_repairs_drift_both_ways(api, token, tenant, app_pool):
    slug = tenant["slug"]
    lost, tampered, disabled = create(token, "lost"), create(token, "tampered"), create(token, "off")
    assert call("POST", f"/api/devices/{disabled['id']}/disable", token=token).status == 200
    # GIVEN drift made by hand on the broker: a wanted client deleted, an unknown device client, a
    # device role with an extra right, a disabled device's client enabled
    with provisioner(api) as dynsec:
        dynsec.delete_client(lost["credential"]["username"])
        dynsec.create_role(device_role(slug, "ghost"), device_acls(slug, "ghost"))
        dynsec.create_client(
            f"{slug}.ghost", "ghost-password-123456", client_id=f"{slug}.ghost", roles=[device_role(slug, "ghost")]
        )
        dynsec.execute(
            [
                {
                    "command": "addRoleACL",
                    "rolename": device_role(slug, "tampered"),
                    "acltype": "subscribePattern",
                    "topic": "#",
                    "allow": True,
                }
            ]
        )
        dynsec.enable_client(disabled["credential"]["username"])
    # WHEN the reconciliation runs
    report = reconcile(app_pool, api, only_tenants={slug})
    # THEN each drift is repaired (and nothing else touched)
    assert report.deleted_clients == [f"{slug}.ghost"]
    assert report.deleted_roles == [device_role(slug, "ghost")]
    assert report.reset_roles == [device_role(slug, "tampered")]
    assert report.disabled_clients == [disabled["credential"]["username"]]
    assert report.flagged_devices == [f"{slug}.lost"]
    with provisioner(api) as dynsec:
        acls = dynsec.get_role_acls(device_role(slug, "tampered"))
    assert {(a["acltype"], a["topic"]) for a in acls} == {(a.acltype, a.topic) for a in device_acls(slug, "tampered")}
    assert not connects(
        api, {"username": f"{slug}.ghost", "password": "ghost-password-123456", "client_id": f"{slug}.ghost"}
    )
    assert not connects(api, disabled["credential"])
    assert connects(api, tampered["credential"])
    # AND the lost credential shows as needing rotation, which a rotation clears
    view = call("GET", f"/api/devices/{lost['id']}", token=token).json
    assert view["credential_needs_rotation"] is True
    rotated = call("POST", f"/api/devices/{lost['id']}/credentials/rotate", token=token)
    assert rotated.status == 200 and rotated.json["device"]["credential_needs_rotation"] is False
    assert connects(api, rotated.json["credential"])
    # AND a second run finds nothing to do
    again = reconcile(app_pool, api, only_tenants={slug})
    assert not (
        again.deleted_clients
        or again.reset_roles
        or again.disabled_clients
        or again.flagged_devices
        or again.enabled_clients
        or again.deleted_roles
    )


def test_reconciliation_never_touches_service_clients(api, token, tenant, app_pool):
    create(token, "one")
    with provisioner(api) as dynsec:
        before = {c["username"] for c in dynsec.list_clients()}
    report = reconcile(app_pool, api)  # no tenant filter: every client on this broker is judged
    with provisioner(api) as dynsec:
        after = {c["username"] for c in dynsec.list_clients()}
    service = {u for u in before if "." not in u}
    assert service and service <= after
    assert not any("." not in name for name in report.deleted_clients)


# --------------------------------------------------------------------------- the database side


def test_app_role_cannot_read_queued_passwords_nor_other_tenants_commands(
    api, token, tenant, app_pool, database, monkeypatch
):
    monkeypatch.setenv("MQTT_PROVISIONER_PASSWORD", "")
    from shared.core.settings import get_settings

    get_settings.cache_clear()
    create(token, "quiet")
    with psycopg.connect(database.app_dsn) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant["id"]),))
        assert conn.execute("SELECT count(*) FROM broker_outbox").fetchone() == (2,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT password_enc FROM broker_outbox")
    with psycopg.connect(database.app_dsn) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(new_tenant(app_pool)["id"]),))
        assert conn.execute("SELECT count(*) FROM broker_outbox").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE broker_outbox SET applied_at = now()")


def test_broker_sync_timer_is_registered_every_minute():
    function = registered_functions()["broker_sync"]
    bindings = json.loads(function.get_function_json())["bindings"]
    trigger = next(b for b in bindings if b["type"] == "timerTrigger")
    assert trigger["schedule"] == "0 */1 * * * *" and trigger["runOnStartup"] is False
    # the period the rotation overlaps are rounded up to is this schedule's
    assert credential_sync.BROKER_SYNC_PERIOD_S == 60 and trigger["schedule"] == credential_sync.BROKER_SYNC_SCHEDULE
