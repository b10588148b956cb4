"""The device API through the registered function, against a real database and the
real broker: create with a one-time credential that connects, list (paging, filters), get,
update, disable/enable, delete, CSV bulk (all or nothing), rotate and revoke; the role matrix of
the device routes, tenant isolation, and the audit rows."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest

from tests.support.api import (
    Reply,
    call,
    new_tenant,
    users_of_each_role,
)
from tests.support.devices import Device, unique_slug
from tests.support.registry import DeviceCredential, create_tenant
from tests.support.waiting import query


@pytest.fixture
def api(broker_api):
    """Here the API runs with the live broker (tests/conftest.py broker_api); its settings reach the broker."""
    return broker_api


@pytest.fixture
def tenant(app_pool):
    # The largest plan: these tests create more devices than a small plan's quota allows.
    return create_tenant(app_pool, unique_slug(), "Acme Test Works", "industrial")


@pytest.fixture
def users(app_pool, tenant, api):
    return users_of_each_role(app_pool, tenant)


def create(token: str, name: str, **fields: Any) -> Reply:
    return call("POST", "/api/devices", {"name": name, **fields}, token=token)


def created(token: str, name: str, **fields: Any) -> dict[str, Any]:
    reply = create(token, name, **fields)
    assert reply.status == 201, reply.body
    return dict(reply.json)


def credential_of(tenant: dict[str, Any], name: str, credential: dict[str, Any]) -> DeviceCredential:
    return DeviceCredential(
        tenant["slug"], name, credential["username"], credential["client_id"], credential["password"]
    )


def connects(settings, credential: DeviceCredential) -> bool:
    device = Device(settings, credential)
    try:
        return not device.refused
    finally:
        device.close()


def csv_body(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def bulk(token: str, body: bytes, content_type: str = "text/csv") -> Reply:
    return call("POST", "/api/devices/bulk", token=token, raw=body, headers={"Content-Type": content_type})


# --------------------------------------------------------------------------- create, read, change


def test_created_device_answers_its_credential_once_and_connects_over_tls(api, tenant, users, database):
    # GIVEN a staff member
    token = users["staff"]["token"]
    # WHEN they create a device
    body = created(token, "press-01", display_name="Press 1", type="press", location="Hall A", tags=["line-1"])
    # THEN the answer carries the credential, already on the broker
    credential = body["credential"]
    assert credential["username"] == credential["client_id"] == f"{tenant['slug']}.press-01"
    assert credential["topic_prefix"] == f"t/{tenant['slug']}/d/press-01"
    assert credential["broker_synced"] is True and len(credential["password"]) >= 32
    assert (body["display_name"], body["type"], body["location"], body["tags"]) == (
        "Press 1",
        "press",
        "Hall A",
        ["line-1"],
    )
    assert body["status"] == "never_seen" and body["enabled"] is True and body["sync_pending"] == 0
    assert [c["slot"] for c in body["credentials"]] == ["a"]
    assert connects(api, credential_of(tenant, "press-01", credential))
    # AND the password is nowhere to read again: not in GET, not in the outbox, not in the audit log
    again = call("GET", f"/api/devices/{body['id']}", token=token)
    assert again.status == 200 and credential["password"] not in again.body.decode()
    assert query(database, "SELECT count(*) FROM broker_outbox WHERE password_enc IS NOT NULL") == [(0,)]
    assert query(database, "SELECT action, target_id FROM audit_log WHERE action LIKE 'device.%%'") == [
        ("device.create", str(body["id"]))
    ]


def test_duplicate_name_is_409_and_invalid_name_422(api, users):
    token = users["owner"]["token"]
    created(token, "pump-1")
    reply = create(token, "pump-1")
    assert reply.status == 409 and reply.json["type"].endswith("device-name-taken")
    assert create(token, "bad name").status == 422
    assert create(token, "x" * 65).status == 422


def test_list_pages_in_creation_order_and_filters(api, users, app_pool, tenant, database):
    token = users["owner"]["token"]
    ids = [
        created(token, f"dev-{i:02d}", tags=["even"] if i % 2 == 0 else ["odd"], display_name=f"Machine {i}")["id"]
        for i in range(7)
    ]
    call("POST", f"/api/devices/{ids[3]}/disable", token=token)
    with app_pool.connection() as conn:  # the drain's doing, in real life
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant["id"]),))
        conn.execute("UPDATE devices SET status = 'online' WHERE id = ANY(%s)", ([ids[0], ids[3]],))

    seen, cursor = [], None
    while True:
        page = call("GET", "/api/devices?limit=3" + (f"&cursor={cursor}" if cursor else ""), token=token)
        assert page.status == 200, page.body
        seen += [item["id"] for item in page.json["items"]]
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    assert seen == ids

    def names(query_string: str) -> list[str]:
        reply = call("GET", f"/api/devices?{query_string}", token=users["viewer"]["token"])
        assert reply.status == 200, reply.body
        return [item["name"] for item in reply.json["items"]]

    assert names("status=disabled") == ["dev-03"]
    assert names("status=online") == ["dev-00"]
    assert names("status=never_seen") == ["dev-01", "dev-02", "dev-04", "dev-05", "dev-06"]
    assert names("tag=odd") == ["dev-01", "dev-03", "dev-05"]
    assert names("name_prefix=dev-0") == [f"dev-{i:02d}" for i in range(7)]
    assert names("name_prefix=DEV") == []
    assert names("name_contains=MACHINE%205") == ["dev-05"]
    assert names("name_contains=v-06") == ["dev-06"]
    assert call("GET", "/api/devices?cursor=garbage", token=token).status == 400
    huge = base64.urlsafe_b64encode(b"d:" + b"9" * 40).decode().rstrip("=")
    assert call("GET", f"/api/devices?cursor={huge}", token=token).status == 400
    assert call("GET", f"/api/devices/{2**63}", token=token).status == 422
    assert call("GET", "/api/devices?status=sleeping", token=token).status == 422


def test_patch_changes_only_the_fields_sent(api, users):
    token = users["staff"]["token"]
    device = created(token, "oven-1", display_name="Oven", type="oven", tags=["a", "b"])
    reply = call("PATCH", f"/api/devices/{device['id']}", {"location": "Hall B", "tags": ["c"]}, token=token)
    assert reply.status == 200, reply.body
    assert (reply.json["display_name"], reply.json["type"], reply.json["location"], reply.json["tags"]) == (
        "Oven",
        "oven",
        "Hall B",
        ["c"],
    )
    reply = call("PATCH", f"/api/devices/{device['id']}", {"type": None}, token=token)
    assert reply.json["type"] is None and reply.json["location"] == "Hall B"
    assert call("PATCH", f"/api/devices/{device['id']}", {"name": "renamed"}, token=token).status == 422


# --------------------------------------------------------------------------- bulk


def test_bulk_csv_creates_all_with_each_credential_once(api, users, tenant, database):
    token = users["staff"]["token"]
    reply = bulk(
        token,
        csv_body(
            "name,display_name,type,location,tags",
            "cnc-01,CNC 1,cnc,Hall A,line-1;milling",
            "cnc-02,,cnc,,",
            '"cnc-03","CNC, the third",cnc,Hall B,line-2',
        ),
    )
    assert reply.status == 201, reply.body
    items = reply.json["items"]
    assert [item["name"] for item in items] == ["cnc-01", "cnc-02", "cnc-03"]
    assert items[0]["tags"] == ["line-1", "milling"] and items[1]["display_name"] is None
    assert items[2]["display_name"] == "CNC, the third"
    assert len({item["credential"]["password"] for item in items}) == 3
    assert all(item["credential"]["broker_synced"] for item in items)
    assert connects(api, credential_of(tenant, "cnc-02", items[1]["credential"]))
    assert query(database, "SELECT action, detail->'count' FROM audit_log") == [("device.bulk_create", 3)]


@pytest.mark.parametrize(
    "lines, line_named",
    [
        (("name,type", "ok-1,x", "bad name,x"), "Line 3"),
        (("name,type", "ok-1,x", "ok-1,y"), "Line 3"),
        (("name,type", "ok-1,x,extra"), "Line 2"),
        (("name,colour", "ok-1,red"), "Line 1"),
        (("name,tags", "ok-1,has space"), "Line 2"),
    ],
)
def test_bulk_csv_with_a_bad_line_creates_nothing_and_names_the_line(api, users, database, lines, line_named):
    reply = bulk(users["owner"]["token"], csv_body(*lines))
    assert reply.status == 422 and reply.json["type"].endswith("invalid-csv")
    assert reply.json["detail"].startswith(line_named), reply.json
    assert query(database, "SELECT count(*) FROM devices") == [(0,)]


def test_bulk_is_one_transaction_a_name_taken_refuses_all(api, users, database):
    token = users["owner"]["token"]
    created(token, "taken")
    reply = bulk(token, csv_body("name", "new-1", "taken", "new-2"))
    assert reply.status == 409
    assert query(database, "SELECT name FROM devices") == [("taken",)]
    assert query(database, "SELECT count(*) FROM broker_outbox WHERE device_key NOT LIKE '%%.taken'") == [(0,)]


def test_bulk_over_the_plan_limit_is_refused_whole_by_the_quota_trigger(api, app_pool, database):
    # GIVEN a tenant on a plan with a device quota (starter), and its owner
    small = new_tenant(app_pool)
    token = users_of_each_role(app_pool, small)["owner"]["token"]
    [(quota,)] = query(database, "SELECT max_devices FROM plans WHERE name = 'starter'")
    # WHEN a CSV with one device more than the quota is sent
    reply = bulk(token, csv_body("name", *(f"q-{i}" for i in range(quota + 1))))
    # THEN the one INSERT is refused as a whole: 402, no device, no credential, no broker command
    assert reply.status == 402, reply.body
    assert query(
        database,
        "SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM device_credentials), "
        "(SELECT count(*) FROM broker_outbox)",
    ) == [(0, 0, 0)]
    # AND exactly the quota goes through
    assert bulk(token, csv_body("name", *(f"q-{i}" for i in range(quota)))).status == 201


def test_bulk_refuses_more_than_the_cap_and_non_csv(api, users):
    token = users["owner"]["token"]
    too_many = csv_body("name", *(f"d-{i}" for i in range(1001)))
    reply = bulk(token, too_many)
    assert reply.status == 422 and "at most 1000" in reply.json["detail"]
    assert bulk(token, b'{"name": "x"}', "application/json").status == 422
    assert bulk(token, csv_body("name")).status == 422


# --------------------------------------------------------------------------- credentials


def test_rotate_without_overlap_replaces_the_password_at_once(api, users, tenant):
    token = users["staff"]["token"]
    device = created(token, "gw-1")
    old = credential_of(tenant, "gw-1", device["credential"])
    reply = call("POST", f"/api/devices/{device['id']}/credentials/rotate", {"overlap_s": 0}, token=token)
    assert reply.status == 200, reply.body
    new = reply.json["credential"]
    assert new["username"] == f"{tenant['slug']}.gw-1.b" and new["replaces"] == old.username
    assert [c["slot"] for c in reply.json["device"]["credentials"]] == ["b"]
    assert connects(api, credential_of(tenant, "gw-1", new))
    assert not connects(api, old)


def test_rotate_refuses_an_overlap_beyond_seven_days(api, users):
    token = users["staff"]["token"]
    device = created(token, "gw-2")
    path = f"/api/devices/{device['id']}/credentials/rotate"
    assert call("POST", path, {"overlap_s": 7 * 86400 + 1}, token=token).status == 422
    assert call("POST", path, {"overlap_s": -1}, token=token).status == 422


def test_revoke_removes_both_credentials_and_rotate_issues_a_fresh_one(api, users, tenant):
    token = users["owner"]["token"]
    device = created(token, "gw-3")
    first = credential_of(tenant, "gw-3", device["credential"])
    reply = call("POST", f"/api/devices/{device['id']}/credentials/revoke", token=token)
    assert reply.status == 200 and reply.json["credentials"] == []
    assert not connects(api, first)
    fresh = call("POST", f"/api/devices/{device['id']}/credentials/rotate", token=token)
    assert fresh.status == 200 and fresh.json["credential"]["replaces"] is None
    assert connects(api, credential_of(tenant, "gw-3", fresh.json["credential"]))


# --------------------------------------------------------------------------- roles and tenants

WRITE_ROUTES = [
    ("PATCH", "/api/devices/{id}", {"display_name": "x"}, 200),
    ("POST", "/api/devices/{id}/disable", None, 200),
    ("POST", "/api/devices/{id}/enable", None, 200),
    ("POST", "/api/devices/{id}/credentials/rotate", {"overlap_s": 0}, 200),
    ("POST", "/api/devices/{id}/credentials/revoke", None, 200),
    ("DELETE", "/api/devices/{id}", None, 204),
]


def test_role_matrix_of_the_device_routes(api, users):
    # GIVEN one user of each role, and a fresh device per call
    def fresh() -> int:
        return int(created(users["owner"]["token"], f"m-{uuid.uuid4().hex[:8]}")["id"])

    for role, may_write in (("owner", True), ("staff", True), ("viewer", False)):
        token = users[role]["token"]
        # reads: every role
        assert call("GET", "/api/devices", token=token).status == 200
        assert call("GET", f"/api/devices/{fresh()}", token=token).status == 200
        # writes: owner and staff
        assert create(token, f"c-{role}").status == (201 if may_write else 403)
        assert bulk(token, csv_body("name", f"b-{role}")).status == (201 if may_write else 403)
        assert bulk(token, b"not csv", "application/json").status == (422 if may_write else 403)
        for method, path, body, ok in WRITE_ROUTES:
            reply = call(method, path.format(id=fresh()), body, token=token)
            assert reply.status == (ok if may_write else 403), (role, method, path, reply.body)
    # and no token at all
    assert call("GET", "/api/devices").status == 401
    assert create(None, "anon").status == 401  # type: ignore[arg-type]


def test_other_tenants_devices_are_404(api, app_pool, users, database):
    other_tenant = new_tenant(app_pool)
    other = users_of_each_role(app_pool, other_tenant)["owner"]["token"]
    theirs = created(other, "secret-press")["id"]
    token = users["owner"]["token"]
    for method, path, body, _ in [("GET", "/api/devices/{id}", None, 200), *WRITE_ROUTES]:
        reply = call(method, path.format(id=theirs), body, token=token)
        assert reply.status == 404, (method, path, reply.body)
    assert call("GET", "/api/devices", token=token).json["items"] == []
    assert query(database, "SELECT count(*) FROM devices WHERE name = 'secret-press' AND enabled") == [(1,)]


def test_every_change_writes_an_audit_row(api, users, database):
    token = users["staff"]["token"]
    device_id = created(token, "audited")["id"]
    for method, path, body, _ in WRITE_ROUTES:
        call(method, path.format(id=device_id), body, token=token)
    actions = [row[0] for row in query(database, "SELECT action FROM audit_log ORDER BY id")]
    assert actions == [
        "device.create",
        "device.update",
        "device.disable",
        "device.enable",
        "device.rotate_credential",
        "device.revoke_credentials",
        "device.delete",
    ]
    assert query(database, "SELECT DISTINCT actor_user_id FROM audit_log") == [(users["staff"]["id"],)]
