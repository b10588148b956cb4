"""The FastAPI app: auth and user routes here, the rest in shared/api/routes_*.py. Routes are
thin: they verify the token, call one function in shared/api/, and shape the result;
shared/api/problems.py maps every error.

Route functions are plain `def`: FastAPI runs them in its thread pool, where the blocking psycopg
pool and argon2 belong.
"""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query, Response, status

from shared.accounts import auth, users
from shared.accounts.passwords import generate_password
from shared.http.deps import PREFIX, Caller, Config, Pool, Source, problems
from shared.http.models import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    ChangeRoleRequest,
    CreatedUser,
    CreateUserRequest,
    LoginRequest,
    Page,
    RefreshRequest,
    TokenResponse,
    User,
)
from shared.http.problems import install_problem_handlers
from shared.http.routes import alerts as routes_alerts
from shared.http.routes import commands as routes_commands
from shared.http.routes import devices as routes_devices
from shared.http.routes import exports as routes_exports
from shared.http.routes import reads as routes_reads
from shared.http.routes import tenancy as routes_tenancy
from shared.http.routes import webhooks as routes_webhooks

router = APIRouter(prefix=PREFIX)


def _tokens(pair: auth.TokenPair) -> TokenResponse:
    return TokenResponse(access_token=pair.access_token, expires_in=pair.expires_in, refresh_token=pair.refresh_token)


@router.post("/auth/login", tags=["auth"], responses=problems(401, 422, 429))
def login(body: LoginRequest, db: Pool, config: Config, source: Source) -> TokenResponse:
    """Exchanges tenant, email and password for an access token and a refresh token."""
    return _tokens(auth.login(db, config, body.tenant, body.email, body.password, source))


@router.post("/auth/refresh", tags=["auth"], responses=problems(401, 422))
def refresh(body: RefreshRequest, db: Pool, config: Config) -> TokenResponse:
    """Exchanges a refresh token for a new pair; the one sent is revoked."""
    return _tokens(auth.refresh(db, config, body.refresh_token))


@router.post("/auth/logout", tags=["auth"], status_code=status.HTTP_204_NO_CONTENT, responses=problems(422))
def logout(body: RefreshRequest, db: Pool, source: Source) -> Response:
    """Revokes the refresh token (unknown or revoked ones too: logging out twice is fine)."""
    auth.logout(db, body.refresh_token, source)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", tags=["users"], responses=problems(401))
def me(db: Pool, caller: Caller) -> User:
    """The user the access token belongs to, with their current role."""
    return User.model_validate(users.me(db, caller))


@router.get("/users", tags=["users"], responses=problems(400, 401, 403, 422))
def list_users(db: Pool, caller: Caller, cursor: Annotated[str | None, Query(max_length=200)] = None,
               limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT) -> Page[User]:
    """The tenant's users, oldest first, a page at a time (owners only)."""
    rows, next_cursor = users.list_users(db, caller, cursor, limit)
    return Page[User](items=[User.model_validate(row) for row in rows], next_cursor=next_cursor)


@router.post("/users", tags=["users"], status_code=status.HTTP_201_CREATED,
             responses=problems(401, 402, 403, 409, 422))
def create_user(body: CreateUserRequest, db: Pool, caller: Caller, source: Source) -> CreatedUser:
    """Adds a user to the tenant (owners only); without a password, one is generated and returned once."""
    password = body.password or generate_password()
    row = users.create_user(db, caller, body.email, body.role, password, source)
    return CreatedUser.model_validate({**row, "password": None if body.password else password})


@router.get("/users/{user_id}", tags=["users"], responses=problems(401, 403, 404, 422))
def get_user(user_id: uuid.UUID, db: Pool, caller: Caller) -> User:
    """One user of the tenant (owners only)."""
    return User.model_validate(users.get_user(db, caller, user_id))


@router.patch("/users/{user_id}", tags=["users"], responses=problems(401, 403, 404, 409, 422))
def change_role(user_id: uuid.UUID, body: ChangeRoleRequest, db: Pool, caller: Caller, source: Source) -> User:
    """Changes a user's role (owners only); the last owner cannot be demoted."""
    return User.model_validate(users.change_role(db, caller, user_id, body.role, source))


@router.delete("/users/{user_id}", tags=["users"], status_code=status.HTTP_204_NO_CONTENT,
               responses=problems(401, 403, 404, 409, 422))
def delete_user(user_id: uuid.UUID, db: Pool, caller: Caller, source: Source) -> Response:
    """Removes a user (owners only); the last owner cannot be removed."""
    users.delete_user(db, caller, user_id, source)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def create_app() -> FastAPI:
    app = FastAPI(
        title="mqtt-saas admin API",
        version="0.1.0",
        openapi_url=f"{PREFIX}/openapi.json",
        # No Swagger UI: it loads its script from a CDN, on the dashboard's origin (where the refresh
        # token lives in sessionStorage). The document itself is served, and scripts/openapi.py prints it.
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(router)
    for module in (routes_devices, routes_commands, routes_reads, routes_tenancy, routes_exports, routes_alerts,
                   routes_webhooks):
        app.include_router(module.router)
    install_problem_handlers(app)
    return app


api = create_app()
