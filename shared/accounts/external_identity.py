"""Who a bearer token speaks for: one of our own access tokens, or (when AUTH_EXTERNAL_ISSUER is
set) an external identity provider's token mapped to one of our users.

The mapping: the token's tenant claim (slug or id) names the tenant, and the user is the one of
that tenant linked to the token's subject or, before any link, the unlinked user with the token's
email, who is then linked to that subject for good (audited). There is no sign-up through the
provider: an owner adds the user (POST /api/users) first, and deleting the user revokes access.
The role is ours (users.role, re-read on every request); the token's role claim can only narrow it.
"""

from __future__ import annotations

import logging

import psycopg

from shared.accounts.access import audit
from shared.accounts.tokens import (
    ExternalIdentity,
    Principal,
    external_enabled,
    unverified_issuer,
    verify_access_token,
    verify_external_token,
)
from shared.core.db import DictPool, tenant_transaction
from shared.core.exceptions import Unauthenticated
from shared.core.observability import event
from shared.core.settings import Settings
from shared.core.sql import QUERIES

log = logging.getLogger(__name__)


def authenticate(pool: DictPool, settings: Settings, token: str, source: str) -> Principal:
    if external_enabled(settings):
        issuer = unverified_issuer(token)
        if issuer == settings.auth_external_issuer and issuer != settings.auth_jwt_issuer:
            return principal_for(pool, verify_external_token(settings, token), source)
    return verify_access_token(settings, token)


def principal_for(pool: DictPool, identity: ExternalIdentity, source: str) -> Principal:
    with pool.connection() as conn:
        found = conn.execute(
            QUERIES["find_external_user"],
            {"tenant": identity.tenant, "subject": identity.subject, "email": identity.email},
        ).fetchone()
    if found is None:
        event(log, "api.external_token_refused", {"tenant": identity.tenant, "source": source})
        raise Unauthenticated()
    principal = Principal(found["user_id"], found["tenant_id"], identity.role_cap)
    if not found["linked"]:
        _link(pool, principal, identity.subject, source)
    return principal


def _link(pool: DictPool, principal: Principal, subject: str, source: str) -> None:
    try:
        with tenant_transaction(pool, str(principal.tenant_id)) as conn:
            linked = conn.execute(
                QUERIES["link_external_subject"],
                {"tenant_id": principal.tenant_id, "user_id": principal.user_id, "subject": subject},
            ).fetchone()
            if linked is None:
                raise Unauthenticated()  # linked to another subject in the meantime
            audit(
                conn,
                principal.tenant_id,
                principal.user_id,
                "user.link_external",
                "user",
                principal.user_id,
                source,
                {"subject": subject},
            )
    except psycopg.errors.UniqueViolation:
        raise Unauthenticated() from None  # another user of the tenant took this subject first
