"""Plans and quotas, the audit log and the platform operator, through the registered function
against a real database (and the real broker where devices are created): 402 at plan limits,
also for racing transactions; an upgrade lifts a limit at once; /api/usage; /api/audit for owners
only, newest first, paged, own tenant only; the database refuses the app role any change to the
audit log; operator and tenant tokens each refused where the other belongs."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shared.core.db import tenant_transaction
from tests.support.api import (
    PASSWORD,
    PASSWORD_HASH,
    call,
    mint_token,
    new_tenant,
    new_user,
    token_for,
    users_of_each_role,
)
from tests.support.devices import unique_slug
from tests.support.registry import create_tenant
from tests.support.waiting import query, wait_for

OPERATOR_EMAIL = "ops@example.com"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def operator(database) -> dict[str, Any]:
    with psycopg.connect(database.owner_dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO platform_operators (email, password_hash) VALUES (%s, %s) RETURNING id",
            (OPERATOR_EMAIL, PASSWORD_HASH),
        ).fetchone()
    return {"id": row[0], "email": OPERATOR_EMAIL}


def operator_token() -> str:
    reply = call("POST", "/api/platform/auth/login", {"email": OPERATOR_EMAIL, "password": PASSWORD})
    assert reply.status == 200, reply.body
    return str(reply.json["access_token"])


def assert_problem(reply, status: int, kind: str | None = None) -> dict[str, Any]:
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].startswith("application/problem+json")
    if kind is not None:
        assert reply.json["type"] == f"urn:mqtt-saas:problem:{kind}"
    return dict(reply.json)


def free_tenant(pool) -> dict[str, Any]:
    return create_tenant(pool, unique_slug(), "Small Shop", "free")


# --------------------------------------------------------------------------- plan limits


def test_device_limit_answers_402_naming_the_limit_and_plan_and_an_upgrade_lifts_it(broker_api, app_pool, operator):
    # GIVEN a tenant on the free plan (3 devices) with a staff member
    tenant = free_tenant(app_pool)
    staff = {**(user := new_user(app_pool, tenant, "staff")), "token": mint_token(user)}
    for i in range(3):
        assert call("POST", "/api/devices", {"name": f"m-{i}"}, token=staff["token"]).status == 201

    # WHEN they create a fourth, one at a time or in a CSV
    one = call("POST", "/api/devices", {"name": "m-3"}, token=staff["token"])
    csv = call(
        "POST", "/api/devices/bulk", token=staff["token"], raw=b"name\nm-4\nm-5\n", headers={"Content-Type": "text/csv"}
    )

    # THEN both are refused with 402, a message naming the plan and the limit, and nothing is added
    body = assert_problem(one, 402, "plan-limit-reached")
    assert "free" in body["detail"] and "3 devices" in body["detail"]
    assert_problem(csv, 402, "plan-limit-reached")
    assert query_devices(app_pool, tenant) == ["m-0", "m-1", "m-2"]

    # WHEN an operator moves the tenant to starter: the next create succeeds at once
    reply = call("PATCH", f"/api/platform/tenants/{tenant['id']}", {"plan": "starter"}, token=operator_token())
    assert reply.status == 200, reply.body
    assert (reply.json["plan"], reply.json["previous_plan"]) == ("starter", "free")
    assert call("POST", "/api/devices", {"name": "m-3"}, token=staff["token"]).status == 201


def query_devices(pool, tenant) -> list[str]:
    with tenant_transaction(pool, str(tenant["id"])) as conn:
        return [row["name"] for row in conn.execute("SELECT name FROM devices ORDER BY name").fetchall()]


def test_user_limit_answers_402(api, app_pool):
    # GIVEN a free tenant (2 users) with its owner and one viewer
    tenant = free_tenant(app_pool)
    owner = new_user(app_pool, tenant, "owner")
    new_user(app_pool, tenant, "viewer")

    # WHEN the owner adds a third user
    reply = call("POST", "/api/users", {"email": "third@example.com", "role": "staff"}, token=mint_token(owner))

    # THEN 402 names the users limit, and no user (nor audit row) was added
    body = assert_problem(reply, 402, "plan-limit-reached")
    assert "2 users" in body["detail"] and "free" in body["detail"]
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        assert conn.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 2
        assert conn.execute("SELECT count(*) AS n FROM audit_log WHERE action = 'user.create'").fetchone()["n"] == 0


def test_racing_transactions_cannot_exceed_the_limit(database, app_pool):
    # GIVEN a free tenant with 2 of its 3 devices
    tenant = free_tenant(app_pool)
    tid = str(tenant["id"])
    with tenant_transaction(app_pool, tid) as conn:
        conn.execute("INSERT INTO devices (tenant_id, name) VALUES (%s, 'a'), (%s, 'b')", (tid, tid))

    # WHEN two transactions each insert one more device, the second while the first is still open
    first = psycopg.connect(database.app_dsn)
    first.execute("SELECT set_config('app.tenant_id', %s, true)", (tid,))
    first.execute("INSERT INTO devices (tenant_id, name) VALUES (%s, 'c')", (tid,))
    outcome: dict[str, Any] = {}

    def second() -> None:
        try:
            with psycopg.connect(database.app_dsn) as conn:
                conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tid,))
                conn.execute("INSERT INTO devices (tenant_id, name) VALUES (%s, 'd')", (tid,))
            outcome["result"] = "committed"
        except psycopg.Error as exc:
            outcome["result"] = exc.sqlstate

    racer = threading.Thread(target=second)
    racer.start()
    # the second waits on the tenant's row lock, held by the first
    wait_for(
        lambda: (
            query(
                database,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
            )[0][0]
            >= 1
        ),
        10,
        "the second to wait",
    )
    first.commit()
    first.close()
    racer.join(10)

    # THEN the second is refused with the quota's SQLSTATE, and the tenant has exactly 3 devices
    assert outcome["result"] == "MQ402"
    assert query_devices(app_pool, tenant) == ["a", "b", "c"]


def test_a_bulk_insert_over_the_limit_is_refused_whole(app_pool):
    tenant = free_tenant(app_pool)
    tid = str(tenant["id"])
    with pytest.raises(psycopg.Error) as refused, tenant_transaction(app_pool, tid) as conn:
        conn.execute("INSERT INTO devices (tenant_id, name) SELECT %s, 'd' || g FROM generate_series(1, 4) g", (tid,))
    assert refused.value.sqlstate == "MQ402"
    assert query_devices(app_pool, tenant) == []


# --------------------------------------------------------------------------- usage


def test_usage_shows_each_quota_for_any_role(api, app_pool, database):
    # GIVEN a starter tenant (25 devices, 10 users, 20 device profiles, 36000 messages/h) with 3 users, 5
    # devices, 2 profiles of its own and 900 messages counted this hour by the drain
    tenant = new_tenant(app_pool)
    users = users_of_each_role(app_pool, tenant)
    tid = str(tenant["id"])
    with tenant_transaction(app_pool, tid) as conn:
        conn.execute("INSERT INTO devices (tenant_id, name) SELECT %s, 'd' || g FROM generate_series(1, 5) g", (tid,))
        conn.execute(
            "INSERT INTO device_profiles (tenant_id, name, spec, publish_forms)"
            " SELECT %s, 'p' || g, '{}', '{plc/line1}' FROM generate_series(1, 2) g",
            (tid,),
        )
    with psycopg.connect(database.ingest_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO usage_hourly (tenant_id, hour, messages, over_quota)"
            " VALUES (%s, date_trunc('hour', now(), 'UTC'), 900, 4),"
            " (%s, date_trunc('hour', now(), 'UTC') - interval '1 hour', 7000, 0)",
            (tid, tid),
        )

    # WHEN a viewer asks
    reply = call("GET", "/api/usage", token=users["viewer"]["token"])

    # THEN each quota shows its use, limit and percent, and the plan
    assert reply.status == 200, reply.body
    body = reply.json
    assert body["plan"] == "starter" and body["raw_retention_days"] == 90
    assert body["quotas"] == {
        "devices": {"used": 5, "limit": 25, "percent": 20.0},
        "users": {"used": 3, "limit": 10, "percent": 30.0},
        "alert_rules": {"used": 0, "limit": 50, "percent": 0.0},
        "profiles": {"used": 2, "limit": 20, "percent": 10.0},
        "messages_this_hour": {"used": 900, "limit": 36000, "percent": 2.5},
    }
    assert body["messages_over_quota_this_hour"] == 4
    # and the plans are listed for comparison
    plans = call("GET", "/api/plans", token=users["viewer"]["token"]).json
    assert [p["name"] for p in plans] == ["free", "starter", "professional", "industrial"]
    assert plans[-1]["max_devices"] is None


# --------------------------------------------------------------------------- audit log


def test_audit_log_is_for_owners_newest_first_paged_filtered_and_own_tenant_only(api, app_pool):
    # GIVEN a tenant whose owner created three users, and another tenant with its own history
    tenant = new_tenant(app_pool)
    users = users_of_each_role(app_pool, tenant)
    owner = users["owner"]
    created = []
    for i in range(3):
        reply = call("POST", "/api/users", {"email": f"u{i}@example.com", "role": "viewer"}, token=owner["token"])
        created.append(reply.json["id"])
    stranger = new_user(app_pool, new_tenant(app_pool), "owner")
    call("POST", "/api/users", {"email": "x@example.com", "role": "viewer"}, token=mint_token(stranger))

    # WHEN staff or a viewer asks: 403
    for role in ("staff", "viewer"):
        assert_problem(call("GET", "/api/audit", token=users[role]["token"]), 403)

    # WHEN the owner pages through user.create entries two at a time
    first = call("GET", "/api/audit?action=user.create&limit=2", token=owner["token"])
    assert first.status == 200, first.body
    second = call(
        "GET", f"/api/audit?action=user.create&limit=2&cursor={first.json['next_cursor']}", token=owner["token"]
    )

    # THEN newest first, every entry once, only this tenant's, with who and from where
    entries = first.json["items"] + second.json["items"]
    assert second.json["next_cursor"] is None
    assert [e["target_id"] for e in entries] == list(reversed(created))
    assert all(e["actor_user_id"] == str(owner["id"]) and e["action"] == "user.create" for e in entries)
    assert all(e["source_address"] for e in entries)
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids, reverse=True)

    # and the filters narrow it: by actor (nobody else acted), by time (nothing in the future)
    other_actor = call("GET", f"/api/audit?actor={uuid.uuid4()}", token=owner["token"]).json
    assert other_actor["items"] == []
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    assert call("GET", f"/api/audit?since={later}", token=owner["token"]).json["items"] == []
    for forged in ("bm9wZQ", base64.urlsafe_b64encode(f"audit:{2**70}".encode()).decode()):
        assert_problem(call("GET", f"/api/audit?cursor={forged}", token=owner["token"]), 400, "invalid-cursor")


def test_the_app_role_cannot_change_or_erase_the_audit_log(api, app_pool):
    # GIVEN a tenant with an audit entry
    tenant = new_tenant(app_pool)
    owner = new_user(app_pool, tenant, "owner")
    token_for(owner)  # the login is audited
    tid = str(tenant["id"])

    # WHEN the application role tries to UPDATE, DELETE or TRUNCATE it (in its own tenant's scope)
    # THEN the database refuses each one
    for statement in ("UPDATE audit_log SET action = 'auth.nothing'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(app_pool, tid) as conn:
            conn.execute(statement)
    with tenant_transaction(app_pool, tid) as conn:
        assert conn.execute("SELECT action FROM audit_log").fetchall() == [{"action": "auth.login"}]


# --------------------------------------------------------------------------- the platform operator


def test_operator_creates_a_tenant_with_its_owner_lists_tenants_and_changes_plans_audited(api, app_pool, operator):
    # GIVEN an operator's token
    token = operator_token()

    # WHEN they create a tenant with its first owner (password generated)
    slug = unique_slug("newco")
    reply = call(
        "POST",
        "/api/platform/tenants",
        {"slug": slug, "name": "New Co", "plan": "starter", "owner_email": "Boss@Example.com"},
        token=token,
    )

    # THEN the owner can log in with the password shown once
    assert reply.status == 201, reply.body
    created = reply.json
    assert created["plan"] == "starter" and created["owner"]["email"] == "boss@example.com"
    login = call(
        "POST",
        "/api/auth/login",
        {"tenant": slug, "email": "boss@example.com", "password": created["owner"]["password"]},
    )
    assert login.status == 200, login.body
    owner_token = login.json["access_token"]

    # and a slug taken is 409
    again = call(
        "POST", "/api/platform/tenants", {"slug": slug, "name": "Again", "owner_email": "a@example.com"}, token=token
    )
    assert_problem(again, 409, "tenant-slug-taken")

    # WHEN they list tenants: every tenant, with its use
    other = new_tenant(app_pool)
    listed = call("GET", "/api/platform/tenants?limit=1", token=token)
    assert listed.status == 200 and len(listed.json["items"]) == 1
    rest = call("GET", f"/api/platform/tenants?cursor={listed.json['next_cursor']}", token=token).json["items"]
    by_slug = {t["slug"]: t for t in listed.json["items"] + rest}
    assert {slug, other["slug"]} <= set(by_slug)
    assert (by_slug[slug]["users"], by_slug[slug]["devices"], by_slug[slug]["plan"]) == (1, 0, "starter")

    # WHEN they change the plan: the tenant's usage shows it at once
    changed = call("PATCH", f"/api/platform/tenants/{created['id']}", {"plan": "professional"}, token=token)
    assert changed.status == 200, changed.body
    assert call("GET", "/api/usage", token=owner_token).json["plan"] == "professional"
    assert_problem(call("PATCH", f"/api/platform/tenants/{uuid.uuid4()}", {"plan": "free"}, token=token), 404)

    # THEN every operator action is in the tenant's own audit log, naming the operator
    log = call("GET", "/api/audit", token=owner_token).json["items"]
    by_action = {e["action"]: e for e in log}
    assert {"tenant.create", "user.create", "tenant.change_plan"} <= set(by_action)
    change = by_action["tenant.change_plan"]
    assert change["actor_user_id"] is None
    assert change["detail"] == {
        "operator_id": str(operator["id"]),
        "operator_email": OPERATOR_EMAIL,
        "from": "starter",
        "to": "professional",
    }
    assert by_action["tenant.create"]["detail"]["operator_email"] == OPERATOR_EMAIL


def test_tenant_tokens_never_reach_operator_endpoints_and_operator_tokens_never_reach_tenant_endpoints(
    api, app_pool, operator
):
    tenant = new_tenant(app_pool)
    users = users_of_each_role(app_pool, tenant)
    op_token = operator_token()
    platform = [
        ("GET", "/api/platform/tenants", None),
        ("POST", "/api/platform/tenants", {"slug": unique_slug(), "name": "X", "owner_email": "x@example.com"}),
        ("PATCH", f"/api/platform/tenants/{tenant['id']}", {"plan": "industrial"}),
    ]
    # a tenant user's token, of any role, and no token: 401 at every operator endpoint
    for token in [users[role]["token"] for role in ("owner", "staff", "viewer")] + [None]:
        for method, path, body in platform:
            assert_problem(call(method, path, body, token=token), 401)
    # an operator token at tenant endpoints: 401
    for method, path in (
        ("GET", "/api/me"),
        ("GET", "/api/usage"),
        ("GET", "/api/audit"),
        ("GET", "/api/users"),
        ("GET", "/api/devices"),
    ):
        assert_problem(call(method, path, token=op_token), 401)
    # nothing changed
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        assert conn.execute("SELECT plan FROM tenants").fetchone()["plan"] == "starter"


def test_operator_login_refuses_wrong_passwords_and_a_deleted_operator_loses_access(api, database, operator):
    assert_problem(
        call("POST", "/api/platform/auth/login", {"email": OPERATOR_EMAIL, "password": "wrong password"}),
        401,
        "invalid-credentials",
    )
    assert_problem(
        call("POST", "/api/platform/auth/login", {"email": "nobody@example.com", "password": PASSWORD}),
        401,
        "invalid-credentials",
    )
    token = operator_token()
    assert call("GET", "/api/platform/tenants", token=token).status == 200
    with psycopg.connect(database.owner_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM platform_operators")
    assert_problem(call("GET", "/api/platform/tenants", token=token), 401)


def test_the_app_role_cannot_read_operators_or_bypass_the_functions(app_pool, operator):
    with app_pool.connection() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM platform_operators")
    # the functions refuse an operator id that does not exist
    with app_pool.connection() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM platform_list_tenants(%s, NULL, NULL, 10)", (uuid.uuid4(),))


def test_operator_login_is_throttled_with_retry_after(api, operator):
    # GIVEN five wrong passwords for the operator from one address
    headers = {"X-Forwarded-For": "198.51.100.77"}
    for _ in range(5):
        reply = call(
            "POST", "/api/platform/auth/login", {"email": OPERATOR_EMAIL, "password": "wrong password"}, headers=headers
        )
        assert_problem(reply, 401)
    # WHEN the right one follows from there: 429 with Retry-After; from another address it works
    throttled = call(
        "POST", "/api/platform/auth/login", {"email": OPERATOR_EMAIL, "password": PASSWORD}, headers=headers
    )
    assert_problem(throttled, 429, "too-many-login-attempts")
    assert int(throttled.headers["retry-after"]) > 0
    assert (
        call(
            "POST",
            "/api/platform/auth/login",
            {"email": OPERATOR_EMAIL, "password": PASSWORD},
            headers={"X-Forwarded-For": "198.51.100.78"},
        ).status
        == 200
    )


def test_create_operator_script_makes_an_operator_who_can_log_in(api, database):
    # WHEN an operator is created with the script, as the database owner
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "create_operator.py"),
            "Root@Example.com",
            "--password-stdin",
            "--database-url",
            database.owner_dsn,
        ],
        input=f"{PASSWORD}\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # THEN it says so without printing the password, and the operator can log in
    assert done.returncode == 0, done.stderr
    assert "root@example.com" in done.stdout and PASSWORD not in done.stdout
    reply = call("POST", "/api/platform/auth/login", {"email": "root@example.com", "password": PASSWORD})
    assert reply.status == 200, reply.body


def test_control_characters_in_operator_emails_are_refused_before_the_database(api, operator):
    # PostgreSQL text cannot hold NUL: such an email must be a 422, never a database error
    assert_problem(
        call("POST", "/api/platform/auth/login", {"email": "ops\u0000@example.com", "password": PASSWORD}),
        422,
        "validation",
    )
    reply = call(
        "POST",
        "/api/platform/tenants",
        {"slug": unique_slug(), "name": "X", "owner_email": "a\u0000@b.c"},
        token=operator_token(),
    )
    assert_problem(reply, 422, "validation")
