"""A device's status changes: the drain appends one row per change (not per message) in the
batch's transaction, and GET /api/devices/{id}/status-history reads them newest first, for the
device's own tenant only."""

from __future__ import annotations

from tests.integration.test_metric_units import message, now_ms, store
from tests.support.api import call, new_tenant, new_user, token_for
from tests.support.registry import create_device


def test_changes_are_recorded_once_each_and_read_newest_first(api, database, app_pool):
    # GIVEN a device never seen, and a viewer of its tenant
    tenant = new_tenant(app_pool)
    device = create_device(app_pool, str(tenant["id"]), "press-01")
    prefix = f"t/{tenant['slug']}/d/press-01"
    token = token_for(new_user(app_pool, tenant, "viewer"))
    # WHEN it comes online (two readings: one change), says offline (its last will), then comes back
    store(database, [message(f"{prefix}/telemetry", {"ts": now_ms() - 2000, "metrics": {"t": 1}})])
    store(database, [message(f"{prefix}/telemetry", {"ts": now_ms() - 1000, "metrics": {"t": 2}})])
    store(database, [message(f"{prefix}/status", "offline")])
    store(database, [message(f"{prefix}/telemetry", {"ts": now_ms(), "metrics": {"t": 3}})])
    # THEN the history has exactly the three changes, newest first, each with what it was before
    reply = call("GET", f"/api/devices/{device['id']}/status-history", token=token)
    assert reply.status == 200, reply.body
    changes = [(item["status"], item["previous"]) for item in reply.json["items"]]
    assert changes == [("online", "offline"), ("offline", "online"), ("online", "never_seen")]
    # AND it pages with a cursor
    first = call("GET", f"/api/devices/{device['id']}/status-history?limit=2", token=token).json
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = call(
        "GET", f"/api/devices/{device['id']}/status-history?limit=2&cursor={first['next_cursor']}", token=token
    ).json
    assert [(i["status"], i["previous"]) for i in rest["items"]] == [("online", "never_seen")]
    assert rest["next_cursor"] is None


def test_another_tenants_device_is_not_found_and_its_history_never_shows(api, database, app_pool):
    other = new_tenant(app_pool)
    theirs = create_device(app_pool, str(other["id"]), "press-01")
    store(database, [message(f"t/{other['slug']}/d/press-01/telemetry", {"ts": now_ms(), "metrics": {"t": 1}})])
    mine = new_tenant(app_pool)
    token = token_for(new_user(app_pool, mine, "owner"))
    assert call("GET", f"/api/devices/{theirs['id']}/status-history", token=token).status == 404
    with database_connection(database) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (str(mine["id"]),))
        assert conn.execute("SELECT count(*) FROM device_status_history").fetchone()[0] == 0


def database_connection(database):
    import psycopg

    return psycopg.connect(database.app_dsn)
