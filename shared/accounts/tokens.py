"""Access tokens (short-lived HS256 JWTs, PyJWT) and refresh tokens (random, stored hashed).

An access token says who (sub: user id) in which tenant (tid) in which sign-in (sid); verifying it
pins the algorithm to HS256 (so `alg: none` and algorithm confusion are refused), checks signature,
expiry, issuer and audience, and requires every claim the API reads. The role is not trusted from
the token: each request reads the user's current row, and the session's, so a deleted or demoted
user loses access at once, and so does a token whose session was logged out.

A refresh token is "<tenant id>.<256 random bits>": the tenant part only says which tenant's
rows to search (inside that tenant's RLS scope); the random part must match a stored SHA-256.

An external identity provider's token (AUTH_EXTERNAL_*) is verified here too, each source with its
own algorithm allow-list: HS256 with the shared secret, or RS256/ES256 with a key from the
provider's JWKS (never both, never `none`; an HS256 token signed with the public key fails both
ways). What it yields is a claim set, not a user: shared/accounts/external_identity.py maps it to one.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from shared.core.exceptions import (
    ExternalAuthNotConfigured,
    IdentityProviderUnavailable,
    NotConfigured,
    Unauthenticated,
)
from shared.core.settings import Settings

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "tid", "sid"]

ROLES = ("owner", "staff", "viewer")  # most rights first
EXTERNAL_SECRET_ALGORITHMS = ["HS256"]
EXTERNAL_JWKS_ALGORITHMS = ["RS256", "ES256"]
_EXTERNAL_REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]
# Clock skew between the provider and us; its tokens live for minutes to an hour.
EXTERNAL_LEEWAY_S = 10


@dataclass(frozen=True)
class Principal:
    """Who a verified access token speaks for. role_cap is an external token's role claim: the
    most this request may do, whatever the user's stored role (it narrows, never raises).
    session_id: the sign-in our own token belongs to (None for an external provider's token); the
    token works only while that session lasts (logout ends it)."""

    user_id: uuid.UUID
    tenant_id: uuid.UUID
    role_cap: str | None = None
    session_id: uuid.UUID | None = None


def effective_role(stored_role: str, principal: Principal) -> str:
    """The stored role, narrowed to the token's role cap if it carries one."""
    if principal.role_cap is None:
        return stored_role
    return max(stored_role, principal.role_cap, key=ROLES.index)


@dataclass(frozen=True)
class ExternalIdentity:
    """What a verified external token claims: who (subject, email) in which tenant (slug or id)."""

    tenant: str
    subject: str
    email: str | None
    role_cap: str | None


def signing_secret(settings: Settings) -> bytes:
    secret = settings.auth_jwt_secret.get_secret_value().encode()
    if len(secret) < MIN_SECRET_BYTES or b"CHANGE-ME" in secret:
        raise NotConfigured()
    return secret


def issue_access_token(settings: Settings, user_id: uuid.UUID, tenant_id: uuid.UUID, session_id: uuid.UUID) -> str:
    now = int(time.time())
    claims = {
        "iss": settings.auth_jwt_issuer,
        "aud": settings.auth_jwt_audience,
        "sub": str(user_id),
        "tid": str(tenant_id),
        "sid": str(session_id),
        "iat": now,
        "exp": now + settings.auth_access_token_ttl_s,
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, signing_secret(settings), algorithm=ALGORITHM)


def verify_access_token(settings: Settings, token: str) -> Principal:
    secret = signing_secret(settings)
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=settings.auth_jwt_audience,
            issuer=settings.auth_jwt_issuer,
            options={"require": _REQUIRED_CLAIMS},
            leeway=5,
        )
        return Principal(
            uuid.UUID(str(claims["sub"])), uuid.UUID(str(claims["tid"])), session_id=uuid.UUID(str(claims["sid"]))
        )
    except (jwt.InvalidTokenError, ValueError):
        # Which check failed is not the client's business: one fixed message for all.
        raise Unauthenticated() from None


def unverified_issuer(token: str) -> str | None:
    """The token's `iss`, unverified: it only chooses which verifier checks the token."""
    try:
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.InvalidTokenError:
        raise Unauthenticated() from None
    return issuer if isinstance(issuer, str) else None


def external_enabled(settings: Settings) -> bool:
    return bool(settings.auth_external_issuer)


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


_jwks_clients: dict[tuple[str, float, int], jwt.PyJWKClient] = {}
_jwks_lock = threading.Lock()


def _jwks_client(settings: Settings) -> jwt.PyJWKClient:
    """One client per process and configuration, so its cached key set outlives a request. Keys
    come only from that set (no per-kid cache, which would keep a key for the process's life), so
    a key the provider withdraws stops working within AUTH_EXTERNAL_JWKS_CACHE_S."""
    key = (settings.auth_external_jwks_url, settings.auth_external_jwks_timeout_s, settings.auth_external_jwks_cache_s)
    with _jwks_lock:
        client = _jwks_clients.get(key)
        if client is None:
            client = jwt.PyJWKClient(
                settings.auth_external_jwks_url,
                cache_keys=False,
                lifespan=max(settings.auth_external_jwks_cache_s, 1),
                cache_jwk_set=settings.auth_external_jwks_cache_s > 0,
                timeout=settings.auth_external_jwks_timeout_s,
            )
            _jwks_clients[key] = client
        return client


def _external_key(settings: Settings, token: str) -> tuple[jwt.PyJWK | bytes, list[str]]:
    secret = settings.auth_external_secret.get_secret_value().encode()
    jwks_url = settings.auth_external_jwks_url
    if not settings.auth_external_audience or bool(secret) == bool(jwks_url):
        raise ExternalAuthNotConfigured()  # an audience, and exactly one of secret and JWKS URL
    if secret:
        if len(secret) < MIN_SECRET_BYTES:
            raise ExternalAuthNotConfigured()
        return secret, EXTERNAL_SECRET_ALGORITHMS
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise Unauthenticated() from None
    if header.get("alg") not in EXTERNAL_JWKS_ALGORITHMS:
        raise Unauthenticated()  # refused before any fetch: a stranger's token costs us no request
    try:
        return _jwks_client(settings).get_signing_key_from_jwt(token), EXTERNAL_JWKS_ALGORITHMS
    except jwt.PyJWKClientConnectionError:
        raise IdentityProviderUnavailable() from None
    except (jwt.PyJWKClientError, jwt.InvalidTokenError):
        raise Unauthenticated() from None  # no key with that kid, or a key we cannot use


def verify_external_token(settings: Settings, token: str) -> ExternalIdentity:
    key, algorithms = _external_key(settings, token)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=settings.auth_external_audience,
            issuer=settings.auth_external_issuer,
            options={"require": _EXTERNAL_REQUIRED_CLAIMS},
            leeway=EXTERNAL_LEEWAY_S,
        )
    except jwt.InvalidTokenError:
        raise Unauthenticated() from None
    tenant = _claim(claims, settings.auth_external_tenant_claim)
    subject = claims["sub"]
    email = _claim(claims, settings.auth_external_email_claim) if settings.auth_external_email_claim else None
    role = _claim(claims, settings.auth_external_role_claim) if settings.auth_external_role_claim else None
    if not (isinstance(tenant, str) and tenant) or not (isinstance(subject, str) and subject):
        raise Unauthenticated()
    if role is not None and role not in ROLES:
        # A role we do not know cannot be narrowed to; refusing is safer than ignoring it.
        raise Unauthenticated()
    if claims.get("email_verified") is False:
        # An address the provider has not verified must not link an account: anyone could claim it.
        email = None
    return ExternalIdentity(tenant, subject, email if isinstance(email, str) and email else None, role)


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
