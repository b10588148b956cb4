"""The device profiles API through the registered function, against a real database and the live
broker: profile CRUD (staff and owners write, every role reads), audited; the built-ins readable and
never changed; the plan's profile quota (402); a profile in use kept (409); invalid specs refused with
the reason (422); another tenant's profiles out of reach; a device's profile, dry run and replay
refused to a viewer. Who may call which route is tests/functions/test_role_matrix.py's; the profiles
end to end (devices publishing, the drain decoding) are tests/integration/test_profiles.py's."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import Reply, call, mint_token, new_user, users_of_each_role
from tests.support.devices import unique_slug
from tests.support.registry import create_tenant
from tests.support.waiting import query

PROBLEM = "application/problem+json"
PLC = {"forms": [{"topic": "plc/line1", "metrics": [{"path": "speed", "name": "speed", "unit": "rpm"}]}]}


@pytest.fixture
def acme(app_pool, broker_api) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    tenant = create_tenant(app_pool, unique_slug(), "Profile Works", "starter")
    return tenant, users_of_each_role(app_pool, tenant)


def ok(reply: Reply, status: int = 200) -> Any:
    assert reply.status == status, reply.body
    return reply.json


def problem(reply: Reply, status: int, kind: str) -> dict[str, Any]:
    assert (reply.status, reply.headers["content-type"]) == (status, PROBLEM), reply.body
    assert reply.json["type"] == f"urn:mqtt-saas:problem:{kind}", reply.body
    return dict(reply.json)


def new_device(token: str, name: str) -> int:
    return int(ok(call("POST", "/api/devices", {"name": name}, token=token), 201)["id"])


def test_profile_crud_is_audited_and_every_role_reads(acme, database):
    tenant, users = acme
    owner, staff, viewer = (users[role]["token"] for role in ("owner", "staff", "viewer"))
    # GIVEN staff create a profile from the tasmota built-in's spec, with the plant's time zone
    tasmota = ok(call("GET", "/api/profiles/tasmota", token=viewer))
    assert (tasmota["builtin"], tasmota["kind"], tasmota["sparkplug"]) == (True, "json", False)
    assert "tele/SENSOR" in tasmota["publish_forms"] and tasmota["subscribe_forms"] == ["cmnd/#"]
    spec = {**tasmota["spec"], "timezone": "Asia/Jakarta"}
    created = ok(
        call("POST", "/api/profiles", {"name": "plugs-jkt", "description": "Hall B plugs", "spec": spec}, token=staff),
        201,
    )
    # THEN it is the tenant's own, with the built-in's forms, used by no device yet
    assert (created["builtin"], created["kind"], created["devices"], created["description"]) == (
        False,
        "json",
        0,
        "Hall B plugs",
    )
    assert created["publish_forms"] == tasmota["publish_forms"] and created["spec"]["timezone"] == "Asia/Jakarta"

    # WHEN a viewer lists and reads THEN the five built-ins come first, then the tenant's own
    listed = ok(call("GET", "/api/profiles", token=viewer))["items"]
    assert [p["name"] for p in listed] == [
        "native",
        "tasmota",
        "shelly-gen2",
        "homeassistant-discovery",
        "sparkplug-b",
        "plugs-jkt",
    ]
    sparkplug = next(p for p in listed if p["name"] == "sparkplug-b")
    assert (sparkplug["kind"], sparkplug["spec"], sparkplug["sparkplug"]) == ("sparkplug-b", None, True)
    assert ok(call("GET", "/api/profiles/plugs-jkt", token=viewer))["spec"] == created["spec"]

    # WHEN the owner gives it to a device and then changes its forms
    device = new_device(owner, "plug-7")
    assigned = ok(call("PUT", f"/api/devices/{device}/profile", {"profile": "plugs-jkt"}, token=owner))
    assert assigned == {"device_id": device, "profile": "plugs-jkt", "broker_synced": True}
    assert ok(call("GET", f"/api/devices/{device}", token=viewer))["profile"] == "plugs-jkt"
    updated = ok(call("PUT", "/api/profiles/plugs-jkt", {"spec": PLC}, token=owner))
    # THEN the profile says so, the broker took the device's new ACL, and the description (not sent) is cleared
    assert (updated["publish_forms"], updated["devices"], updated["broker_synced"], updated["description"]) == (
        ["plc/line1"],
        1,
        True,
        None,
    )
    assert updated["updated_at"] > created["updated_at"]

    # WHEN the device gets another profile THEN the profile can be deleted, and is gone
    ok(call("PUT", f"/api/devices/{device}/profile", {"profile": "native"}, token=staff))
    assert call("DELETE", "/api/profiles/plugs-jkt", token=owner).status == 204
    problem(call("GET", "/api/profiles/plugs-jkt", token=owner), 404, "not-found")

    # AND every change wrote an audit row naming its actor
    rows = query(
        database,
        """SELECT action, actor_user_id::text, detail->>'name', detail->>'profile' FROM audit_log
           WHERE action LIKE 'profile.%%' OR action = 'device.set_profile' ORDER BY id""",
    )
    assert rows == [
        ("profile.create", str(users["staff"]["id"]), "plugs-jkt", None),
        ("device.set_profile", str(users["owner"]["id"]), "plug-7", "plugs-jkt"),
        ("profile.update", str(users["owner"]["id"]), "plugs-jkt", None),
        ("device.set_profile", str(users["staff"]["id"]), "plug-7", "native"),
        ("profile.delete", str(users["owner"]["id"]), "plugs-jkt", None),
    ]
    assert query(database, "SELECT detail->>'devices' FROM audit_log WHERE action = 'profile.update'") == [("1",)]


def test_a_viewer_reads_but_changes_nothing(acme, database):
    tenant, users = acme
    owner, viewer = users["owner"]["token"], users["viewer"]["token"]
    ok(call("POST", "/api/profiles", {"name": "plc", "spec": PLC}, token=owner), 201)
    device = new_device(owner, "plc-1")
    # WHEN a viewer tries every change THEN each is 403, and nothing changed
    for method, path, body in [
        ("POST", "/api/profiles", {"name": "plc-2", "spec": PLC}),
        ("PUT", "/api/profiles/plc", {"spec": PLC, "description": "mine"}),
        ("DELETE", "/api/profiles/plc", None),
        ("PUT", f"/api/devices/{device}/profile", {"profile": "plc"}),
        ("POST", f"/api/devices/{device}/dead-letters/dry-run", {"profile": "plc"}),
        ("POST", f"/api/devices/{device}/dead-letters/replay", None),
    ]:
        problem(call(method, path, body, token=viewer), 403, "forbidden")
    assert query(database, "SELECT name, description FROM device_profiles") == [("plc", None)]
    assert query(database, "SELECT builtin_profile, profile_id FROM devices") == [("native", None)]
    assert query(database, "SELECT count(*) FROM audit_log WHERE action LIKE 'profile.%%'") == [(1,)]
    # AND what the decoder saw is every role's to read
    assert ok(call("GET", f"/api/devices/{device}/decoder-events", token=viewer)) == {"items": [], "next_cursor": None}


def test_the_built_ins_are_never_changed(acme):
    _, users = acme
    owner = users["owner"]["token"]
    for name in ("native", "tasmota", "shelly-gen2", "homeassistant-discovery", "sparkplug-b"):
        problem(call("PUT", f"/api/profiles/{name}", {"spec": PLC}, token=owner), 409, "builtin-profile")
        problem(call("DELETE", f"/api/profiles/{name}", token=owner), 409, "builtin-profile")
        problem(call("POST", "/api/profiles", {"name": name, "spec": PLC}, token=owner), 409, "profile-name-taken")
    # AND a tenant's names are its own: taken once
    ok(call("POST", "/api/profiles", {"name": "plc", "spec": PLC}, token=owner), 201)
    problem(call("POST", "/api/profiles", {"name": "plc", "spec": PLC}, token=owner), 409, "profile-name-taken")


def test_a_profile_in_use_is_kept(acme, database):
    _, users = acme
    owner = users["owner"]["token"]
    ok(call("POST", "/api/profiles", {"name": "plc", "spec": PLC}, token=owner), 201)
    first, second = new_device(owner, "plc-1"), new_device(owner, "plc-2")
    for device in (first, second):
        ok(call("PUT", f"/api/devices/{device}/profile", {"profile": "plc"}, token=owner))
    # WHEN it is deleted while two devices use it THEN 409, and it stays
    assert problem(call("DELETE", "/api/profiles/plc", token=owner), 409, "profile-in-use")["detail"].startswith(
        "Devices still use this profile"
    )
    assert ok(call("GET", "/api/profiles/plc", token=owner))["devices"] == 2
    # WHEN one device moves on THEN still 409; when both have THEN it goes
    ok(call("PUT", f"/api/devices/{first}/profile", {"profile": "tasmota"}, token=owner))
    problem(call("DELETE", "/api/profiles/plc", token=owner), 409, "profile-in-use")
    ok(call("PUT", f"/api/devices/{second}/profile", {"profile": "native"}, token=owner))
    assert call("DELETE", "/api/profiles/plc", token=owner).status == 204
    assert query(database, "SELECT name, builtin_profile FROM devices ORDER BY name") == [
        ("plc-1", "tasmota"),
        ("plc-2", "native"),
    ]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({}, "forms: Field required"),
        ({"forms": []}, "forms: List should have at least 1 item"),
        ({"forms": [{"topic": "cmd/x", "metrics": [{"path": "a", "name": "a"}]}]}, "may not start with 'cmd'"),
        ({"forms": [{"topic": "telemetry", "metrics": [{"path": "a", "name": "a"}]}]}, "is a native form"),
        ({"forms": [{"topic": "plc/a", "metrics": [{"path": "a[", "name": "a"}]}]}, "is not valid JMESPath"),
        ({**PLC, "timezone": "Mars/Base"}, "unknown time zone 'Mars/Base'"),
        ({**PLC, "code": "__import__('os').system('id')"}, "code: Extra inputs are not permitted"),
        ({"forms": [{"topic": "plc/a"}]}, "maps nothing"),
    ],
)
def test_an_invalid_spec_is_refused_with_its_reason(acme, database, spec, says):
    _, users = acme
    owner = users["owner"]["token"]
    refused = problem(call("POST", "/api/profiles", {"name": "bad", "spec": spec}, token=owner), 422, "invalid-profile")
    assert says in refused["detail"], refused["detail"]
    # AND an existing profile is not changed by an invalid one
    ok(call("POST", "/api/profiles", {"name": "good", "spec": PLC}, token=owner), 201)
    problem(call("PUT", "/api/profiles/good", {"spec": spec}, token=owner), 422, "invalid-profile")
    assert query(database, "SELECT name, publish_forms FROM device_profiles") == [("good", ["plc/line1"])]


def test_a_malformed_body_or_name_is_422_before_any_spec_is_read(acme):
    _, users = acme
    owner = users["owner"]["token"]
    for body in (
        {"name": "Has Capitals", "spec": PLC},
        {"name": "-dash-first", "spec": PLC},
        {"name": "plc", "spec": PLC, "extra": 1},
        {"name": "plc", "spec": PLC, "description": "line\nbreak"},
        {"name": "plc"},
    ):
        problem(call("POST", "/api/profiles", body, token=owner), 422, "validation")
    problem(call("GET", "/api/profiles/NOT_A_NAME", token=owner), 422, "validation")


def test_the_plans_profile_limit_is_402(app_pool, broker_api):
    # GIVEN a tenant on the free plan (3 profiles of its own; the built-ins are free)
    tenant = create_tenant(app_pool, unique_slug(), "Small Works", "free")
    owner = mint_token(new_user(app_pool, tenant, "owner"))
    for n in range(3):
        ok(call("POST", "/api/profiles", {"name": f"plc-{n}", "spec": PLC}, token=owner), 201)
    # WHEN a fourth is created THEN 402, and /api/usage counts the three
    refused = problem(
        call("POST", "/api/profiles", {"name": "plc-3", "spec": PLC}, token=owner), 402, "plan-limit-reached"
    )
    assert "device profiles" in refused["detail"]
    usage = ok(call("GET", "/api/usage", token=owner))
    assert (usage["quotas"]["profiles"]["used"], usage["quotas"]["profiles"]["limit"]) == (3, 3)
    plans = {p["name"]: p["max_profiles"] for p in ok(call("GET", "/api/plans", token=owner))}
    assert plans == {"free": 3, "starter": 20, "professional": 100, "industrial": None}
    # AND deleting one makes room again
    assert call("DELETE", "/api/profiles/plc-0", token=owner).status == 204
    ok(call("POST", "/api/profiles", {"name": "plc-3", "spec": PLC}, token=owner), 201)


def test_another_tenants_profiles_are_out_of_reach(acme, app_pool, database):
    _, users = acme
    owner = users["owner"]["token"]
    ok(call("POST", "/api/profiles", {"name": "secret-plc", "spec": PLC}, token=owner), 201)
    other = create_tenant(app_pool, unique_slug("other"), "Other Works", "starter")
    intruder = mint_token(new_user(app_pool, other, "owner"))
    device = new_device(intruder, "their-1")
    # WHEN the other tenant's owner looks for it, changes it, deletes it or gives it to a device THEN 404
    assert [p["name"] for p in ok(call("GET", "/api/profiles", token=intruder))["items"] if not p["builtin"]] == []
    problem(call("GET", "/api/profiles/secret-plc", token=intruder), 404, "not-found")
    problem(call("PUT", "/api/profiles/secret-plc", {"spec": PLC}, token=intruder), 404, "not-found")
    problem(call("DELETE", "/api/profiles/secret-plc", token=intruder), 404, "not-found")
    problem(call("PUT", f"/api/devices/{device}/profile", {"profile": "secret-plc"}, token=intruder), 404, "not-found")
    problem(
        call("POST", f"/api/devices/{device}/dead-letters/dry-run", {"profile": "secret-plc"}, token=intruder),
        404,
        "not-found",
    )
    # AND it may have one of the same name: names are per tenant
    ok(call("POST", "/api/profiles", {"name": "secret-plc", "spec": PLC}, token=intruder), 201)
    assert query(database, "SELECT count(*) FROM device_profiles WHERE name = 'secret-plc'") == [(2,)]


def test_a_device_of_another_tenant_or_none_is_404(acme):
    _, users = acme
    owner = users["owner"]["token"]
    for method, path, body in [
        ("PUT", "/api/devices/999999/profile", {"profile": "tasmota"}),
        ("POST", "/api/devices/999999/dead-letters/dry-run", {}),
        ("POST", "/api/devices/999999/dead-letters/replay", None),
        ("GET", "/api/devices/999999/decoder-events", None),
    ]:
        problem(call(method, path, body, token=owner), 404, "not-found")
    device = new_device(owner, "plc-1")
    problem(call("PUT", f"/api/devices/{device}/profile", {"profile": "no-such"}, token=owner), 404, "not-found")


def test_a_dry_run_with_nothing_dead_lettered_answers_empty(acme):
    _, users = acme
    owner = users["owner"]["token"]
    device = new_device(owner, "plc-1")
    dry = ok(call("POST", f"/api/devices/{device}/dead-letters/dry-run", {"spec": PLC}, token=owner))
    assert dry == {
        "profile": "candidate",
        "items": [],
        "dead_letters": 0,
        "would_store": 0,
        "readings": 0,
        "still_failing": 0,
        "not_replayable": 0,
    }
    problem(
        call("POST", f"/api/devices/{device}/dead-letters/dry-run", {"spec": {"forms": []}}, token=owner),
        422,
        "invalid-profile",
    )
    replayed = ok(call("POST", f"/api/devices/{device}/dead-letters/replay", token=owner))
    assert (replayed["replayed"], replayed["stored_readings"], replayed["duplicates"]) == (0, 0, 0)
