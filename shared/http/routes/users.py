"""A tenant's users: /api/me (every role) and /api/users (owners manage them)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, Field

from shared.accounts import users
from shared.accounts.passwords import MIN_PASSWORD_LENGTH, generate_password
from shared.http.deps import PREFIX, Caller, Pool, Source, problems
from shared.http.models import DEFAULT_LIMIT, MAX_LIMIT, Body, Email, Page, Role

router = APIRouter(prefix=PREFIX)


class User(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_slug: str
    email: str
    role: Role
    created_at: datetime


class CreateUserRequest(Body):
    email: str = Email
    role: Role
    password: str | None = Field(
        None,
        min_length=MIN_PASSWORD_LENGTH,
        max_length=1024,
        description="Omit to have one generated and returned once.",
    )


class CreatedUser(User):
    password: str | None = Field(None, description="The generated password, shown this once; null if you gave one.")


class ChangeRoleRequest(Body):
    role: Role


@router.get("/me", tags=["users"], responses=problems(401))
def me(db: Pool, caller: Caller) -> User:
    """The user the access token belongs to, with their current role."""
    return User.model_validate(users.me(db, caller))


@router.get("/users", tags=["users"], responses=problems(400, 401, 403, 422))
def list_users(
    db: Pool,
    caller: Caller,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[User]:
    """The tenant's users, oldest first, a page at a time (owners only)."""
    rows, next_cursor = users.list_users(db, caller, cursor, limit)
    return Page[User](items=[User.model_validate(row) for row in rows], next_cursor=next_cursor)


@router.post("/users", tags=["users"], status_code=status.HTTP_201_CREATED, responses=problems(401, 402, 403, 409, 422))
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


@router.delete(
    "/users/{user_id}",
    tags=["users"],
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problems(401, 403, 404, 409, 422),
)
def delete_user(user_id: uuid.UUID, db: Pool, caller: Caller, source: Source) -> Response:
    """Removes a user (owners only); the last owner cannot be removed."""
    users.delete_user(db, caller, user_id, source)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
