"""The admin API through its registered function: shape (problem+json, OpenAPI, paging), login
and tokens, the role matrix, tenant isolation and the audit log, against a real database."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jwt
import psycopg
import pytest

from shared.core.db import tenant_transaction
from shared.http.middleware import LONE_SURROGATE
from tests.support.api import (
    JWT_SECRET,
    PASSWORD,
    call,
    close_api_pool,
    export_api_settings,
    login,
    new_tenant,
    new_user,
    token_for,
)
from tests.support.devices import registered_functions

PROBLEM_KEYS = {"type", "title", "status", "detail"}


@pytest.fixture
def tenant(app_pool):
    return new_tenant(app_pool)


@pytest.fixture
def owner(app_pool, tenant):
    return new_user(app_pool, tenant, "owner")


def assert_problem(reply, status: int, kind: str | None = None) -> dict:
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].startswith("application/problem+json")
    body = reply.json
    assert set(body) >= PROBLEM_KEYS and body["status"] == status
    assert body["type"].startswith("urn:mqtt-saas:problem:")
    if kind is not None:
        assert body["type"] == "urn:mqtt-saas:problem:" + kind, body
    text = reply.body.decode().lower()
    assert "traceback" not in text and "psycopg" not in text and "sql" not in text
    return body


# --------------------------------------------------------------------------- shape


def test_api_is_an_anonymous_catch_all_route_beside_health():
    bindings = json.loads(registered_functions()["api"].get_function_json())["bindings"]
    trigger = next(b for b in bindings if b["type"] == "httpTrigger")
    assert (trigger["route"], trigger["authLevel"]) == ("{*route}", "ANONYMOUS")
    assert set(trigger["methods"]) == {"GET", "POST", "PUT", "PATCH", "DELETE"}


def test_openapi_document_is_generated_and_lists_the_routes(api):
    reply = call("GET", "/api/openapi.json")
    assert reply.status == 200
    document = reply.json
    assert document["openapi"].startswith("3.")
    assert {
        "/api/auth/login",
        "/api/auth/refresh",
        "/api/auth/logout",
        "/api/me",
        "/api/users",
        "/api/users/{user_id}",
    } <= set(document["paths"])


def test_unknown_route_and_wrong_method_are_problems(api):
    assert_problem(call("GET", "/api/no-such-thing"), 404, "not-found")
    assert call("GET", "/api/no-such-thing").headers.get("cache-control") == "no-store"
    assert_problem(call("PUT", "/api/me"), 405, "method-not-allowed")


def test_invalid_body_is_422_with_fields_and_never_echoes_the_password(api):
    reply = call("POST", "/api/auth/login", {"tenant": "x", "email": "not-an-email", "password": "hunter2-secret"})
    body = assert_problem(reply, 422, "validation")
    assert [p["name"] for p in body["invalid-params"]] == ["body.email"]
    assert b"hunter2-secret" not in reply.body
    assert_problem(call("POST", "/api/auth/login", raw=b"{not json"), 422, "validation")


def json_operations() -> list[tuple[str, str]]:
    """(method, path) of every operation whose request body is JSON, from the served OpenAPI document."""
    from shared.http.app import api as app

    return sorted(
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method, operation in item.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    )


def test_a_lone_surrogate_in_any_json_body_is_422_never_a_500(api, database, tenant, owner):
    # GIVEN a device (the command route stored its args as they came: PostgreSQL refused them, 500)
    with psycopg.connect(database.owner_dsn, autocommit=True) as conn:
        device = conn.execute(
            "INSERT INTO devices (tenant_id, name) VALUES (%s, 'm-1') RETURNING id", (tenant["id"],)
        ).fetchone()[0]
    token = token_for(owner)
    # WHEN a command's args hold a lone surrogate as a value or as a key (the escape as JSON sends it)
    for raw in (rb'{"name": "set_point", "args": {"v": "\ud800"}}', rb'{"name": "set_point", "args": {"\udfff": 1}}'):
        reply = call("POST", f"/api/devices/{device}/commands", raw=raw, token=token)
        # THEN it is a validation problem that names the reason
        body = assert_problem(reply, 422, "validation")
        assert body["invalid-params"] == [{"name": "body", "reason": LONE_SURROGATE}]
    # AND so for every route that takes JSON, with or without a token, before anything else runs
    operations = json_operations()
    assert ("POST", "/api/auth/login") in operations and len(operations) > 10
    for method, path in operations:
        route = (
            path.replace("{device_id}", str(device))
            .replace("{rule_id}", str(uuid.uuid4()))
            .replace("{user_id}", str(uuid.uuid4()))
            .replace("{event_id}", "1")
            .replace("{tenant_id}", str(uuid.uuid4()))
        )
        reply = call(method, route, raw=rb'{"name": "x\udc00y"}', token=token)
        assert reply.status == 422 and reply.json["invalid-params"][0]["reason"] == LONE_SURROGATE, (method, path)
    # AND a surrogate pair (an emoji) is text like any other
    emoji = call(
        "POST", "/api/auth/login", raw=b'{"tenant": "t", "email": "a@b.example", "password": "\\ud83d\\ude00"}'
    )
    assert emoji.status == 401


def test_database_outage_is_a_503_problem_without_driver_text(monkeypatch, database):
    unreachable = "postgresql://nobody:not-a-secret-really@127.0.0.1:1/none?connect_timeout=1"
    export_api_settings(monkeypatch, database, DATABASE_URL=unreachable)
    try:
        from shared.core import db
        from shared.core.db import create_pool
        from shared.core.settings import get_settings

        db._pool = create_pool(get_settings(), wait=False)
        db._pool.timeout = 1.0
        reply = call("POST", "/api/auth/login", {"tenant": "t", "email": "a@b.c", "password": "p"})
    finally:
        close_api_pool()
    assert_problem(reply, 503, "unavailable")
    assert b"not-a-secret-really" not in reply.body and b"127.0.0.1" not in reply.body
    # the answers the outermost middleware writes itself carry the API's headers too
    assert (reply.headers.get("cache-control"), reply.headers.get("x-content-type-options")) == ("no-store", "nosniff")


# --------------------------------------------------------------------------- login and tokens


def test_login_returns_tokens_that_open_me(api, owner):
    reply = login(owner)
    assert reply.status == 200, reply.body
    tokens = reply.json
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 900
    me = call("GET", "/api/me", token=tokens["access_token"])
    assert me.status == 200
    assert (me.json["id"], me.json["email"], me.json["role"]) == (str(owner["id"]), owner["email"], "owner")


def test_wrong_password_unknown_user_and_unknown_tenant_get_the_same_answer(api, owner):
    replies = [
        login(owner, password="wrong password!!"),
        login({**owner, "email": "nobody@example.com"}),
        login({**owner, "tenant": {"slug": "no-such-tenant"}}),
    ]
    bodies = [assert_problem(r, 401, "invalid-credentials") for r in replies]
    assert bodies[0] == bodies[1] == bodies[2]


def test_unknown_user_costs_the_same_argon2_work_as_a_wrong_password(api, owner):
    # GIVEN alternating attempts (so machine noise hits both alike), from different sources
    def timed(user, n):
        started = time.perf_counter()
        login(user, password="wrong password!!", source=f"198.51.100.{n}")
        return time.perf_counter() - started

    wrong, unknown = [], []
    for n in range(6):
        wrong.append(timed(owner, n))
        unknown.append(timed({**owner, "email": f"ghost{n}@example.com"}, 100 + n))
    # THEN an unknown user is not answered measurably faster (no early return before argon2)
    assert statistics.median(unknown) > 0.6 * statistics.median(wrong), (wrong, unknown)


def _claims(**overrides):
    now = int(time.time())
    claims = {"iss": "mqtt-saas-test", "aud": "mqtt-saas-api", "sub": "", "tid": "", "iat": now, "exp": now + 600}
    claims.update(overrides)
    return claims


def _unsigned(claims) -> str:
    def part(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


@pytest.mark.parametrize(
    "case",
    ["forged", "expired", "wrong_issuer", "wrong_audience", "alg_none", "garbage", "missing_tid", "basic_scheme"],
)
def test_bad_tokens_are_refused_with_401(api, owner, case):
    ids = {"sub": str(owner["id"]), "tid": str(owner["tenant"]["id"])}
    good_key = JWT_SECRET
    tokens = {
        "forged": jwt.encode(_claims(**ids), "another-secret-of-at-least-32-bytes!!", algorithm="HS256"),
        "expired": jwt.encode(
            _claims(**ids, iat=int(time.time()) - 4000, exp=int(time.time()) - 3000), good_key, algorithm="HS256"
        ),
        "wrong_issuer": jwt.encode(_claims(**ids, iss="someone-else"), good_key, algorithm="HS256"),
        "wrong_audience": jwt.encode(_claims(**ids, aud="another-api"), good_key, algorithm="HS256"),
        "alg_none": _unsigned(_claims(**ids)),
        "garbage": "not.a.token",
        "missing_tid": jwt.encode({k: v for k, v in _claims(**ids).items() if k != "tid"}, good_key, algorithm="HS256"),
    }
    if case == "basic_scheme":
        reply = call("GET", "/api/me", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    else:
        reply = call("GET", "/api/me", token=tokens[case])
    assert_problem(reply, 401, "unauthenticated")
    assert reply.headers["www-authenticate"].startswith("Bearer")


def test_no_token_is_401(api):
    assert_problem(call("GET", "/api/me"), 401, "unauthenticated")
    assert_problem(call("GET", "/api/users"), 401, "unauthenticated")


def test_token_of_a_deleted_user_is_refused(api, app_pool, tenant, owner):
    other_owner = new_user(app_pool, tenant, "owner")
    token = token_for(other_owner)
    assert call("DELETE", f"/api/users/{other_owner['id']}", token=token_for(owner)).status == 204
    assert_problem(call("GET", "/api/me", token=token), 401, "unauthenticated")


def test_refresh_rotates_and_a_reused_refresh_token_revokes_the_family(api, owner):
    first = login(owner).json
    second = call("POST", "/api/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert second.status == 200, second.body
    assert call("GET", "/api/me", token=second.json["access_token"]).status == 200
    # the first refresh token was revoked by the rotation; presenting it again revokes the second too
    assert_problem(
        call("POST", "/api/auth/refresh", {"refresh_token": first["refresh_token"]}), 401, "invalid-refresh-token"
    )
    assert_problem(
        call("POST", "/api/auth/refresh", {"refresh_token": second.json["refresh_token"]}), 401, "invalid-refresh-token"
    )


def test_logout_revokes_the_refresh_token_and_is_idempotent(api, owner):
    tokens = login(owner).json
    assert call("POST", "/api/auth/logout", {"refresh_token": tokens["refresh_token"]}).status == 204
    assert call("POST", "/api/auth/logout", {"refresh_token": tokens["refresh_token"]}).status == 204
    assert_problem(
        call("POST", "/api/auth/refresh", {"refresh_token": tokens["refresh_token"]}), 401, "invalid-refresh-token"
    )
    for junk in ("junk", f"{uuid.uuid4()}.abc"):
        assert_problem(call("POST", "/api/auth/refresh", {"refresh_token": junk}), 401, "invalid-refresh-token")


def test_logout_ends_the_sessions_access_tokens_at_once_and_no_other_session(api, owner):
    # GIVEN the owner signed in twice (a laptop and a phone), the laptop having refreshed once
    laptop, phone = login(owner).json, login(owner, source="198.51.100.9").json
    refreshed = call("POST", "/api/auth/refresh", {"refresh_token": laptop["refresh_token"]}).json
    # (a refresh continues the session: the access token from before it works until it expires)
    for token in (laptop["access_token"], refreshed["access_token"], phone["access_token"]):
        assert call("GET", "/api/me", token=token).status == 200
    # WHEN the laptop signs out
    assert call("POST", "/api/auth/logout", {"refresh_token": refreshed["refresh_token"]}).status == 204
    # THEN both of its access tokens stop working at once (they used to work until their expiry, 15 min)
    for token in (laptop["access_token"], refreshed["access_token"]):
        assert_problem(call("GET", "/api/me", token=token), 401, "unauthenticated")
    # AND the phone's session goes on
    assert call("GET", "/api/me", token=phone["access_token"]).status == 200
    assert call("POST", "/api/auth/refresh", {"refresh_token": phone["refresh_token"]}).status == 200


def test_a_reused_refresh_token_ends_every_session_and_its_access_tokens(api, owner):
    first, second = login(owner).json, login(owner).json
    assert call("POST", "/api/auth/refresh", {"refresh_token": first["refresh_token"]}).status == 200
    # a refresh token that comes back after its rotation was copied: every session of the user ends
    assert call("POST", "/api/auth/refresh", {"refresh_token": first["refresh_token"]}).status == 401
    assert call("GET", "/api/me", token=second["access_token"]).status == 401


def test_refresh_token_names_its_tenant_but_cannot_reach_another(api, app_pool, owner):
    other = new_user(app_pool, new_tenant(app_pool), "owner")
    tokens = login(owner).json
    _, secret_part = tokens["refresh_token"].split(".", 1)
    moved = f"{other['tenant']['id']}.{secret_part}"
    assert_problem(call("POST", "/api/auth/refresh", {"refresh_token": moved}), 401, "invalid-refresh-token")


def test_login_throttle_refuses_the_guessing_source_but_not_the_user_elsewhere(monkeypatch, database, app_pool, owner):
    export_api_settings(
        monkeypatch, database, AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT="3", AUTH_LOGIN_MAX_FAILURES_PER_SOURCE="5"
    )
    try:
        # GIVEN a stranger guessing the owner's password from one address
        for _ in range(3):
            assert login(owner, password="guess guess guess", source="192.0.2.66").status == 401
        # THEN that source is refused for this account, even with the right password
        refused = login(owner, source="192.0.2.66")
        assert_problem(refused, 429, "too-many-login-attempts")
        assert int(refused.headers["retry-after"]) > 0
        # AND the owner, from their own address, still logs in
        assert login(owner, source="203.0.113.7").status == 200
        # AND the stranger's address is refused for every account once it passes its own limit
        other = {**owner, "email": "someone@example.com"}
        for _ in range(2):
            assert login(other, password="guess guess guess", source="192.0.2.66").status == 401
        assert_problem(login(other, source="192.0.2.66"), 429, "too-many-login-attempts")
    finally:
        close_api_pool()


def test_login_throttle_counts_an_ipv6_network_as_one_source(monkeypatch, database, app_pool, owner):
    export_api_settings(
        monkeypatch, database, AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT="3", AUTH_LOGIN_MAX_FAILURES_PER_SOURCE="50"
    )
    try:
        # GIVEN a stranger guessing from a new address of their own /64 each time (as the platform's
        # front end appends it, after whatever the client claimed)
        for host in range(1, 4):
            assert (
                login(owner, password="guess guess guess", source=f"10.9.9.{host}, 2001:db8:7:7::{host:x}").status
                == 401
            )
        # THEN the next address of that /64 is refused, another network is not
        assert_problem(login(owner, source="2001:db8:7:7:ffff::1"), 429, "too-many-login-attempts")
        assert login(owner, source="2001:db8:7:8::1").status == 200
    finally:
        close_api_pool()


# --------------------------------------------------------------------------- users and roles


ENDPOINTS = [
    ("GET", "/api/me", None),
    ("GET", "/api/users", None),
    ("POST", "/api/users", {"email": "new@example.com", "role": "viewer", "password": "a long password!"}),
    ("GET", "/api/users/{target}", None),
    ("PATCH", "/api/users/{target}", {"role": "staff"}),
    ("DELETE", "/api/users/{target}", None),
]
#                 me   list  create get  patch delete
ALLOWED = {
    "owner": (200, 200, 201, 200, 200, 204),
    "staff": (200, 403, 403, 403, 403, 403),
    "viewer": (200, 403, 403, 403, 403, 403),
}


@pytest.mark.parametrize("role", sorted(ALLOWED))
def test_role_matrix(api, app_pool, tenant, role):
    # GIVEN a tenant whose owner is not the caller's target, and a caller of each role
    new_user(app_pool, tenant, "owner")
    caller = new_user(app_pool, tenant, role)
    token = token_for(caller)
    for (method, path, body), expected in zip(ENDPOINTS, ALLOWED[role], strict=True):
        target = new_user(app_pool, tenant, "viewer")
        reply = call(method, path.format(target=target["id"]), body, token=token)
        if expected == 403:
            assert_problem(reply, 403, "forbidden")
        else:
            assert reply.status == expected, (method, path, reply.body)


def test_owner_creates_lists_changes_and_deletes_users_with_cursor_paging(api, app_pool, tenant, owner):
    token = token_for(owner)
    created = call("POST", "/api/users", {"email": "Staff@Example.com", "role": "staff"}, token=token)
    assert created.status == 201, created.body
    assert created.json["email"] == "staff@example.com" and len(created.json["password"]) >= 16
    # the generated password works
    assert login({"email": "staff@example.com", "tenant": tenant}, password=created.json["password"]).status == 200
    assert_problem(
        call("POST", "/api/users", {"email": "staff@example.com", "role": "viewer"}, token=token), 409, "email-taken"
    )
    for n in range(3):
        new_user(app_pool, tenant, "viewer", f"v{n}@example.com")
    seen, cursor = [], None
    while True:
        page = call("GET", "/api/users?limit=2" + (f"&cursor={cursor}" if cursor else ""), token=token)
        assert page.status == 200, page.body
        seen += [u["email"] for u in page.json["items"]]
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and len(set(seen)) == 5
    assert seen[0] == owner["email"]
    assert_problem(call("GET", "/api/users?cursor=bogus", token=token), 400, "invalid-cursor")
    assert_problem(call("GET", "/api/users?limit=0", token=token), 422, "validation")
    changed = call("PATCH", f"/api/users/{created.json['id']}", {"role": "viewer"}, token=token)
    assert (changed.status, changed.json["role"]) == (200, "viewer")
    assert call("DELETE", f"/api/users/{created.json['id']}", token=token).status == 204
    assert_problem(call("GET", f"/api/users/{created.json['id']}", token=token), 404, "not-found")


def test_last_owner_cannot_be_demoted_or_deleted(api, app_pool, tenant, owner):
    token = token_for(owner)
    assert_problem(call("PATCH", f"/api/users/{owner['id']}", {"role": "staff"}, token=token), 409, "last-owner")
    assert_problem(call("DELETE", f"/api/users/{owner['id']}", token=token), 409, "last-owner")
    # with a second owner, the first may step down
    second = new_user(app_pool, tenant, "owner")
    assert call("PATCH", f"/api/users/{owner['id']}", {"role": "staff"}, token=token).status == 200
    # and now, no longer owner, the same token is refused user management
    assert_problem(call("DELETE", f"/api/users/{second['id']}", token=token), 403, "forbidden")


def test_another_tenants_user_ids_are_404(api, app_pool, owner):
    stranger = new_user(app_pool, new_tenant(app_pool), "owner")
    token = token_for(owner)
    for method, body in (("GET", None), ("PATCH", {"role": "viewer"}), ("DELETE", None)):
        assert_problem(call(method, f"/api/users/{stranger['id']}", body, token=token), 404, "not-found")
    listed = call("GET", "/api/users", token=token).json["items"]
    assert [u["id"] for u in listed] == [str(owner["id"])]
    assert_problem(call("GET", "/api/users/not-a-uuid", token=token), 422, "validation")


# --------------------------------------------------------------------------- audit log


def test_changes_are_audited_with_actor_target_and_source(api, app_pool, database, tenant, owner):
    token = token_for(owner)
    created = call(
        "POST",
        "/api/users",
        {"email": "audited@example.com", "role": "viewer"},
        token=token,
        headers={"X-Forwarded-For": "10.9.9.9, 198.51.100.23:50123"},
    ).json
    call("PATCH", f"/api/users/{created['id']}", {"role": "staff"}, token=token)
    call("DELETE", f"/api/users/{created['id']}", token=token)
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        rows = conn.execute(
            "SELECT actor_user_id, action, target_type, target_id, source_address, detail, at "
            "FROM audit_log ORDER BY id"
        ).fetchall()
    assert [r["action"] for r in rows] == ["auth.login", "user.create", "user.change_role", "user.delete"]
    assert all(r["actor_user_id"] == owner["id"] and r["at"] is not None for r in rows)
    assert [r["target_id"] for r in rows[1:]] == [created["id"]] * 3
    assert rows[1]["source_address"] == "198.51.100.23"
    assert rows[2]["detail"] == {"from": "viewer", "to": "staff"}


def test_app_role_cannot_update_or_delete_audit_rows(api, app_pool, tenant, owner):
    token_for(owner)  # writes an auth.login row
    for statement in ("UPDATE audit_log SET action = 'user.nothing'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            tenant_transaction(app_pool, str(tenant["id"])) as conn,
        ):
            conn.execute(statement)
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        assert conn.execute("SELECT count(*) AS n FROM audit_log").fetchone()["n"] == 1


def test_app_role_cannot_append_audit_rows_for_another_tenant(api, app_pool, tenant):
    other = new_tenant(app_pool)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(app_pool, str(tenant["id"])) as conn:
        conn.execute("INSERT INTO audit_log (tenant_id, action) VALUES (%s, 'user.create')", (other["id"],))


def test_login_lookup_function_is_the_only_cross_tenant_read(api, app_pool, owner):
    with app_pool.connection() as conn:
        # no tenant set: RLS shows no users, and the function answers one email only
        assert conn.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 0
        found = conn.execute("SELECT * FROM find_login(%s, %s)", (owner["tenant"]["slug"], owner["email"])).fetchall()
        assert [r["user_id"] for r in found] == [owner["id"]]
        assert conn.execute("SELECT * FROM find_login(%s, %s)", (owner["tenant"]["slug"], "%")).fetchall() == []


def test_login_time_is_reported(api, owner, capsys):
    started = time.perf_counter()
    for _ in range(3):
        assert login(owner).status == 200
    elapsed_ms = (time.perf_counter() - started) / 3 * 1000
    with capsys.disabled():
        print(f"\n[api] login through the registered function: {elapsed_ms:.0f} ms (argon2id m=19MiB t=2 p=1)")
    assert PASSWORD


# --------------------------------------------------------------------------- scripts


SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_openapi_script_prints_the_served_document_offline(api):
    printed = subprocess.run(
        [sys.executable, str(SCRIPTS / "openapi.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert json.loads(printed.stdout) == call("GET", "/api/openapi.json").json


def test_create_user_script_makes_a_user_who_can_log_in(api, app_pool, database, tenant):
    created = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "create_user.py"),
            tenant["slug"],
            "First@Example.com",
            "owner",
            "--password-stdin",
            "--database-url",
            database.owner_dsn,
        ],
        input="a long passphrase\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    user = {"tenant": tenant, "email": "first@example.com"}
    assert login(user, password="a long passphrase").status == 200
    generated = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "create_user.py"),
            tenant["slug"],
            "second@example.com",
            "viewer",
            "--database-url",
            database.owner_dsn,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    password = generated.stdout.rsplit("password (shown once): ", 1)[1].strip()
    assert login({"tenant": tenant, "email": "second@example.com"}, password=password).status == 200


def _load_func_host():
    spec = importlib.util.spec_from_file_location("func_host_for_api", SCRIPTS / "func_host.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_local_host_serves_the_api_and_keeps_health_on_its_own_function(api, owner):
    from function_app import app

    host = _load_func_host().LocalHost(app, settings={"INGEST_SCHEDULE": "0 */1 * * * *"})
    login_reply = host.dispatch(
        "POST",
        "/api/auth/login",
        {"Content-Type": "application/json"},
        json.dumps({"tenant": owner["tenant"]["slug"], "email": owner["email"], "password": PASSWORD}).encode(),
    )
    assert login_reply.status == 200, login_reply.body
    token = json.loads(login_reply.body)["access_token"]
    me = host.dispatch("GET", "/api/me", {"Authorization": f"Bearer {token}"}, b"")
    assert (me.status, json.loads(me.body)["email"]) == (200, owner["email"])
    missing = host.dispatch("GET", "/api/nothing-here", {}, b"")
    assert missing.status == 404
    assert {k.lower(): v for k, v in missing.headers}["content-type"].startswith("application/problem+json")
    health = host.dispatch("GET", "/api/health", {}, b"")
    assert health.status == 200 and json.loads(health.body)["database"] == "ok"
