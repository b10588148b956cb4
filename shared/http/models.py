"""Request and response bodies of the API (pydantic): the OpenAPI document is generated from these."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from shared.accounts.passwords import MIN_PASSWORD_LENGTH

Item = TypeVar("Item")

Role = Literal["owner", "staff", "viewer"]
# Deliberately loose (the database checks one '@' and no spaces): deliverability is not ours to judge.
Email = Field(min_length=3, max_length=254, pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(Body):
    tenant: str = Field(min_length=1, max_length=63, pattern=r"^[^\x00-\x1f\x7f]+$", description="The tenant's slug.",
                        examples=["demo"])
    email: str = Email
    password: str = Field(min_length=1, max_length=1024)


class RefreshRequest(Body):
    refresh_token: str = Field(min_length=1, max_length=200)


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str


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
    password: str | None = Field(None, min_length=MIN_PASSWORD_LENGTH, max_length=1024,
                                 description="Omit to have one generated and returned once.")


class CreatedUser(User):
    password: str | None = Field(None, description="The generated password, shown this once; null if you gave one.")


class ChangeRoleRequest(Body):
    role: Role


DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class Page(BaseModel, Generic[Item]):
    items: list[Item]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")
