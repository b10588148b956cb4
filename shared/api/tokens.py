"""Access tokens (short-lived HS256 JWTs, PyJWT) and refresh tokens (random, stored hashed).

An access token says who (sub: user id) in which tenant (tid); verifying it pins the algorithm
to HS256 (so `alg: none` and algorithm confusion are refused), checks signature, expiry, issuer
and audience, and requires every claim the API reads. The role is not trusted from the token:
each request reads the user's current row, so a deleted or demoted user loses access at once.

A refresh token is "<tenant id>.<256 random bits>": the tenant part only says which tenant's
rows to search (inside that tenant's RLS scope); the random part must match a stored SHA-256.
"""
from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

import jwt

from shared.api.errors import NotConfigured, Unauthenticated
from shared.settings import Settings

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "tid"]


@dataclass(frozen=True)
class Principal:
    """Who a verified access token speaks for."""

    user_id: uuid.UUID
    tenant_id: uuid.UUID


def _secret(settings: Settings) -> bytes:
    secret = settings.auth_jwt_secret.get_secret_value().encode()
    if len(secret) < MIN_SECRET_BYTES or b"CHANGE-ME" in secret:
        raise NotConfigured()
    return secret


def issue_access_token(settings: Settings, user_id: uuid.UUID, tenant_id: uuid.UUID) -> str:
    now = int(time.time())
    claims = {
        "iss": settings.auth_jwt_issuer,
        "aud": settings.auth_jwt_audience,
        "sub": str(user_id),
        "tid": str(tenant_id),
        "iat": now,
        "exp": now + settings.auth_access_token_ttl_s,
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, _secret(settings), algorithm=ALGORITHM)


def verify_access_token(settings: Settings, token: str) -> Principal:
    secret = _secret(settings)
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], audience=settings.auth_jwt_audience,
            issuer=settings.auth_jwt_issuer, options={"require": _REQUIRED_CLAIMS}, leeway=5,
        )
        return Principal(uuid.UUID(str(claims["sub"])), uuid.UUID(str(claims["tid"])))
    except (jwt.InvalidTokenError, ValueError):
        # Which check failed is not the client's business: one fixed message for all.
        raise Unauthenticated() from None


def new_refresh_token(tenant_id: uuid.UUID) -> tuple[str, bytes]:
    """The token for the client, and the digest to store."""
    secret_part = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"{tenant_id}.{secret_part}", hashlib.sha256(secret_part.encode()).digest()


def parse_refresh_token(token: str) -> tuple[uuid.UUID, bytes] | None:
    """The tenant to search and the digest to look for; None if it cannot be one of ours."""
    tenant_part, _, secret_part = token.partition(".")
    if not secret_part or len(secret_part) > 64:
        return None
    try:
        tenant_id = uuid.UUID(tenant_part)
    except ValueError:
        return None
    return tenant_id, hashlib.sha256(secret_part.encode()).digest()
