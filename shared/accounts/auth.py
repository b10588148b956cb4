"""Login, refresh and logout, and the login throttle.

The throttle counts failures per source address and per (tenant, email, source address), never per
account alone: a stranger who guesses at a user's password from elsewhere fills their own
address's counters and is refused, while the user, from their own address, can still log in.
(A stranger behind the same address as the user, e.g. one office NAT, can still slow them down;
that is the price of not being able to tell them apart.) An IPv6 source counts as its /64. The
address is the one the platform's front end saw (shared/http/deps.py source_address).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.accounts.access import audit
from shared.accounts.passwords import hash_password, needs_rehash, verify_password
from shared.accounts.tokens import issue_access_token, new_refresh_token, parse_refresh_token
from shared.core.db import DictConnection, DictPool, tenant_transaction
from shared.core.exceptions import InvalidCredentials, InvalidRefreshToken, TooManyLoginAttempts
from shared.core.observability import event
from shared.core.settings import Settings
from shared.core.sql import QUERIES, one_row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str


def throttle_source(source: str) -> str:
    """What counts as one source: an IPv4 address, or an IPv6 /64 (one subscriber's network: a host
    there picks any of its 2^64 addresses, so counting per address would give it a fresh counter
    per guess)."""
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return source
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


def throttle_keys(tenant_slug: str, email: str, source: str) -> tuple[bytes, bytes]:
    source = throttle_source(source)
    source_key = hashlib.sha256(f"source\0{source}".encode()).digest()
    account_key = hashlib.sha256(f"account\0{tenant_slug}\0{email.lower()}\0{source}".encode()).digest()
    return source_key, account_key


def refuse_if_throttled(conn: DictConnection, settings: Settings, source_key: bytes, account_key: bytes) -> None:
    limits = {
        source_key: settings.auth_login_max_failures_per_source,
        account_key: settings.auth_login_max_failures_per_account,
    }
    rows = conn.execute(
        QUERIES["login_failures"], {"keys": list(limits), "window_s": settings.auth_login_window_s}
    ).fetchall()
    for row in rows:
        if row["failures"] >= limits[bytes(row["key"])]:
            wait = (row["window_end"] - datetime.now(UTC)).total_seconds()
            raise TooManyLoginAttempts(int(wait) + 1)


def _issue(
    conn: DictConnection,
    settings: Settings,
    user_id: uuid.UUID,
    tenant_id: uuid.UUID,
    session_id: uuid.UUID | None = None,
) -> TokenPair:
    """A refresh token continuing session_id (a refresh), or opening a session (a login), and its access token."""
    refresh, digest = new_refresh_token(tenant_id)
    row = one_row(
        conn.execute(
            QUERIES["insert_refresh_token"],
            {
                "tenant_id": tenant_id,
                "user_id": user_id,
                "token_hash": digest,
                "ttl_s": settings.auth_refresh_token_ttl_s,
                "session_id": session_id,
            },
        ),
        "insert_refresh_token",
    )
    return TokenPair(
        issue_access_token(settings, user_id, tenant_id, row["session_id"]), settings.auth_access_token_ttl_s, refresh
    )


def open_session(pool: DictPool, settings: Settings, user_id: uuid.UUID, tenant_id: uuid.UUID) -> TokenPair:
    """A new session's tokens for a user whose identity is already established (login checked the
    password; scripts and benchmarks act for a user they created)."""
    with tenant_transaction(pool, str(tenant_id)) as conn:
        return _issue(conn, settings, user_id, tenant_id)


def login(pool: DictPool, settings: Settings, tenant_slug: str, email: str, password: str, source: str) -> TokenPair:
    email = email.strip().lower()
    source_key, account_key = throttle_keys(tenant_slug, email, source)
    with pool.connection() as conn:
        refuse_if_throttled(conn, settings, source_key, account_key)
        found = conn.execute(QUERIES["find_login"], {"tenant_slug": tenant_slug, "email": email}).fetchone()
        conn.commit()  # no transaction held open across the deliberate slowness of argon2
    # Unknown tenant, unknown email and wrong password all do the same argon2 work and give the
    # same answer.
    if not verify_password(found["password_hash"] if found else None, password) or found is None:
        with pool.connection() as conn:
            conn.execute(
                QUERIES["count_login_failure"],
                {"keys": [source_key, account_key], "window_s": settings.auth_login_window_s},
            )
            conn.execute(QUERIES["prune_login_failures"], {"window_s": settings.auth_login_window_s})
        event(log, "api.login_refused", {"tenant_slug": tenant_slug, "source": source})
        raise InvalidCredentials()
    user_id, tenant_id = found["user_id"], found["tenant_id"]
    with pool.connection() as conn:
        conn.execute(QUERIES["clear_login_failures"], {"keys": [account_key]})
    with tenant_transaction(pool, str(tenant_id)) as conn:
        if needs_rehash(found["password_hash"]):
            conn.execute(
                QUERIES["set_password_hash"],
                {"tenant_id": tenant_id, "user_id": user_id, "password_hash": hash_password(password)},
            )
        audit(conn, tenant_id, user_id, "auth.login", "user", user_id, source)
        return _issue(conn, settings, user_id, tenant_id)


def refresh(pool: DictPool, settings: Settings, token: str) -> TokenPair:
    """Exchanges a live refresh token for a new pair; the old one is revoked (rotation)."""
    parsed = parse_refresh_token(token)
    if parsed is None:
        raise InvalidRefreshToken()
    tenant_id, digest = parsed
    reused_by: uuid.UUID | None = None
    with tenant_transaction(pool, str(tenant_id)) as conn:
        row = conn.execute(QUERIES["take_refresh_token"], {"tenant_id": tenant_id, "token_hash": digest}).fetchone()
        if row is not None and row["revoked_at"] is not None:
            # A revoked token came back: it was copied, or a client raced itself. Either way every
            # token of that user is revoked (committed below), and they must log in again.
            conn.execute(QUERIES["revoke_user_refresh_tokens"], {"tenant_id": tenant_id, "user_id": row["user_id"]})
            reused_by = row["user_id"]
        elif row is not None and not row["expired"]:
            conn.execute(QUERIES["revoke_refresh_token"], {"tenant_id": tenant_id, "token_hash": digest})
            return _issue(conn, settings, row["user_id"], tenant_id, row["session_id"])
    if reused_by is not None:
        event(log, "api.refresh_token_reused", {"tenant_id": tenant_id, "user_id": reused_by}, logging.WARNING)
    raise InvalidRefreshToken()


def logout(pool: DictPool, token: str, source: str) -> None:
    """Ends the token's session: its refresh tokens are revoked, and with them its access tokens
    (each request checks its session). Unknown or already revoked tokens are a no-op (idempotent)."""
    parsed = parse_refresh_token(token)
    if parsed is None:
        return
    tenant_id, digest = parsed
    with tenant_transaction(pool, str(tenant_id)) as conn:
        row = conn.execute(QUERIES["take_refresh_token"], {"tenant_id": tenant_id, "token_hash": digest}).fetchone()
        if row is not None and row["revoked_at"] is None:
            conn.execute(QUERIES["revoke_session"], {"tenant_id": tenant_id, "session_id": row["session_id"]})
            audit(conn, tenant_id, row["user_id"], "auth.logout", "user", row["user_id"], source)
