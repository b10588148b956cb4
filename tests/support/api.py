"""Drives the admin API through the app's own registered `api` function (the Functions ASGI
adapter and the FastAPI app as deployed), with settings exported for get_settings(); and
factories for tenants and users."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import azure.functions as func

from shared.accounts.passwords import hash_password
from shared.core.db import tenant_transaction
from tests.support.devices import registered_functions, unique_slug
from tests.support.registry import create_tenant

JWT_SECRET = secrets.token_hex(32)
PASSWORD = "correct horse battery staple"
# Hashed once: argon2 is slow on purpose, and most users in the tests share this password.
PASSWORD_HASH = hash_password(PASSWORD)


def export_api_settings(monkeypatch, database, **overrides: str) -> None:
    """Settings for get_settings() and a fresh app pool (closed by close_api_pool)."""
    from shared.core import db
    from shared.core.settings import get_settings

    values = {
        "DATABASE_URL": database.app_dsn,
        "INGEST_DATABASE_URL": database.ingest_dsn,
        "AUTH_JWT_SECRET": JWT_SECRET,
        "AUTH_JWT_ISSUER": "mqtt-saas-test",
        "AUTH_JWT_AUDIENCE": "mqtt-saas-api",
    }
    values.update(overrides)
    for key in [k for k in os.environ if k.startswith("AUTH_")]:
        monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    if db._pool is not None:
        db._pool.close()
    db._pool = None


def close_api_pool() -> None:
    from shared.core import db

    if db._pool is not None:
        db._pool.close()
        db._pool = None


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def call(
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Reply:
    """One request through the registered function, as the host would invoke it."""
    all_headers = {"Content-Type": "application/json"} if body is not None or raw is not None else {}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    all_headers.update(headers or {})
    path_only, _, query = path.partition("?")
    params = dict(pair.split("=", 1) for pair in query.split("&")) if query else {}
    request = func.HttpRequest(
        method,
        f"http://localhost{path}",
        headers=all_headers,
        params=params,
        route_params={"route": path_only.removeprefix("/api/")},
        body=raw if raw is not None else (json.dumps(body).encode() if body is not None else b""),
    )
    response = asyncio.run(registered_functions()["api"].get_user_function()(request, None))
    return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.get_body())


def new_tenant(pool) -> dict[str, Any]:
    return create_tenant(pool, unique_slug(), "Acme Test Works", "starter")


def new_user(pool, tenant: dict[str, Any], role: str = "owner", email: str | None = None) -> dict[str, Any]:
    email = email or f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    with tenant_transaction(pool, str(tenant["id"])) as conn:
        row = conn.execute(
            "INSERT INTO users (tenant_id, email, role, password_hash) VALUES (%s, %s, %s, %s) RETURNING id",
            (tenant["id"], email, role, PASSWORD_HASH),
        ).fetchone()
    return {"id": row["id"], "email": email, "role": role, "tenant": tenant}


def login(user: dict[str, Any], password: str = PASSWORD, source: str = "203.0.113.7") -> Reply:
    return call(
        "POST",
        "/api/auth/login",
        {"tenant": user["tenant"]["slug"], "email": user["email"], "password": password},
        headers={"X-Forwarded-For": source},
    )


def token_for(user: dict[str, Any]) -> str:
    reply = login(user)
    assert reply.status == 200, reply.body
    return reply.json["access_token"]


def mint_token(user: dict[str, Any]) -> str:
    """An access token as login would issue it (a session of its own), without login's argon2 work,
    throttle or audit row (for tests that need many callers; export_api_settings first)."""
    from shared.accounts.auth import open_session
    from shared.core.db import get_pool
    from shared.core.settings import get_settings

    return open_session(get_pool(), get_settings(), user["id"], user["tenant"]["id"]).access_token


ROLES = ("owner", "staff", "viewer")


def users_of_each_role(pool, tenant: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One user per role in tenant, each with a minted access token under "token"."""
    return {role: {**(user := new_user(pool, tenant, role)), "token": mint_token(user)} for role in ROLES}
