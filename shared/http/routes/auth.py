"""Signing in: /api/auth/login, /refresh and /logout (tokens for a tenant's user)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field

from shared.accounts import auth
from shared.http.deps import PREFIX, Config, Pool, Source, problems
from shared.http.models import Body, Email


class LoginRequest(Body):
    tenant: str = Field(
        min_length=1, max_length=63, pattern=r"^[^\x00-\x1f\x7f]+$", description="The tenant's slug.", examples=["demo"]
    )
    email: str = Email
    password: str = Field(min_length=1, max_length=1024)


class RefreshRequest(Body):
    refresh_token: str = Field(min_length=1, max_length=200)


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str


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
