"""The role matrix (issue 12 §2, §8): every route of the app's OpenAPI document, called by each role
(owner, staff, viewer) and with no token, through the registered function against a real database,
each answer's status asserted. A route the app serves with no row here fails
test_every_route_has_a_row: adding a route means saying who may call it.

Each row builds a valid request (a real target in the caller's tenant), so a refusal is the role's
doing, not a 404 or a 422. Targets a request destroys are made fresh for each call."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from shared.api.app import api
from tests.support.api import (
    PASSWORD,
    Reply,
    call,
    close_api_pool,
    export_api_settings,
    login,
    new_tenant,
    new_user,
    users_of_each_role,
)

CALLERS = ("owner", "staff", "viewer", "anonymous")


@dataclass
class Context:
    """A tenant with one user of each role (the callers), and what requests need to target."""

    pool: Any
    database: Any
    tenant: dict[str, Any]
    users: dict[str, dict[str, Any]]
    cache: dict[str, Any] = field(default_factory=dict)

    def new_viewer(self) -> dict[str, Any]:
        return new_user(self.pool, self.tenant, "viewer")

    def refresh_token(self) -> str:
        reply = login(self.new_viewer())
        assert reply.status == 200, reply.body
        return str(reply.json["refresh_token"])


@dataclass(frozen=True)
class Request:
    path: str
    body: Any = None
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class Row:
    """Who gets which status, and how to build a valid request for the route."""

    expect: dict[str, int]
    request: Callable[[Context], Request]
    xfail: str | None = None


def allowed(*roles: str, ok: int = 200, denied: int = 403, anonymous: int = 401) -> dict[str, int]:
    return {"owner": ok if "owner" in roles else denied, "staff": ok if "staff" in roles else denied,
            "viewer": ok if "viewer" in roles else denied, "anonymous": anonymous}


def anyone(status: int) -> dict[str, int]:
    return dict.fromkeys(CALLERS, status)


OWNER = ("owner",)
STAFF_UP = ("owner", "staff")
EVERY_ROLE = ("owner", "staff", "viewer")

# (method, route path as declared) -> row
ROWS: dict[tuple[str, str], Row] = {
    # --- auth: no token needed; the body is what counts
    ("POST", "/api/auth/login"): Row(anyone(200), lambda c: Request(
        "/api/auth/login", {"tenant": c.tenant["slug"], "email": c.new_viewer()["email"], "password": PASSWORD},
        {"X-Forwarded-For": "198.51.100.20"})),
    ("POST", "/api/auth/refresh"): Row(anyone(200), lambda c: Request(
        "/api/auth/refresh", {"refresh_token": c.refresh_token()})),
    ("POST", "/api/auth/logout"): Row(anyone(204), lambda c: Request(
        "/api/auth/logout", {"refresh_token": c.refresh_token()})),
    # --- users
    ("GET", "/api/me"): Row(allowed(*EVERY_ROLE), lambda c: Request("/api/me")),
    ("GET", "/api/users"): Row(allowed(*OWNER), lambda c: Request("/api/users")),
    ("POST", "/api/users"): Row(allowed(*OWNER, ok=201), lambda c: Request(
        "/api/users", {"email": f"new-{c.new_viewer()['id']}@example.com", "role": "viewer"})),
    ("GET", "/api/users/{user_id}"): Row(allowed(*OWNER), lambda c: Request(f"/api/users/{c.new_viewer()['id']}")),
    ("PATCH", "/api/users/{user_id}"): Row(allowed(*OWNER), lambda c: Request(
        f"/api/users/{c.new_viewer()['id']}", {"role": "staff"})),
    ("DELETE", "/api/users/{user_id}"): Row(allowed(*OWNER, ok=204), lambda c: Request(
        f"/api/users/{c.new_viewer()['id']}")),
}


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every operation in the app's OpenAPI document (what /api/openapi.json
    serves; FastAPI nests included routers, so the document is the one complete list)."""
    return {(method.upper(), path) for path, item in api.openapi()["paths"].items() for method in item
            if method in {"get", "put", "post", "delete", "patch", "head", "options", "trace"}}


def test_every_route_has_a_row():
    missing = sorted(served_routes() - set(ROWS))
    assert not missing, f"routes with no row in the role matrix (say who may call them): {missing}"


def test_every_row_is_a_route():
    stale = sorted(set(ROWS) - served_routes())
    assert not stale, f"rows for routes the app no longer serves: {stale}"


@pytest.fixture
def context(monkeypatch, database, app_pool) -> Any:
    export_api_settings(monkeypatch, database)
    tenant = new_tenant(app_pool)
    yield Context(app_pool, database, tenant, users_of_each_role(app_pool, tenant))
    close_api_pool()


def _params() -> list[Any]:
    return [pytest.param(key, id=f"{key[0]} {key[1]}",
                         marks=[pytest.mark.xfail(reason=row.xfail, strict=False)] if row.xfail else [])
            for key, row in sorted(ROWS.items(), key=lambda item: (item[0][1], item[0][0]))]


@pytest.mark.parametrize("route", _params())
def test_role_matrix(context, route):
    # GIVEN the route's row, and a caller of each role (or none)
    method, _ = route
    row = ROWS[route]
    got: dict[str, int] = {}
    for caller in CALLERS:
        request = row.request(context)
        token = None if caller == "anonymous" else context.users[caller]["token"]
        # WHEN the caller sends a valid request
        reply: Reply = call(method, request.path, request.body, token=token, headers=request.headers)
        got[caller] = reply.status
        if reply.status >= 400:
            assert reply.headers["content-type"].startswith("application/problem+json"), (caller, reply.body)
    # THEN each gets the status the matrix says
    assert got == row.expect
