"""What every route module shares: the /api prefix, the request dependencies (pool, settings,
verified caller, source address) and the problem responses routes declare for the OpenAPI document.
Route modules (shared/http/routes/) import from here, and app.py includes their routers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.accounts.external_identity import authenticate
from shared.accounts.tokens import Principal
from shared.core.db import DictPool, get_pool
from shared.core.exceptions import Unauthenticated
from shared.core.settings import Settings, get_settings
from shared.http.problems import PROBLEM_MEDIA_TYPE, Problem

PREFIX = "/api"

_bearer = HTTPBearer(auto_error=False, description="An access token from POST /api/auth/login.")


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The problem responses a route declares. A route that validates input (422) also declares 400:
    FastAPI answers a body it cannot even decode (not UTF-8) with 400 before any validation."""
    codes = sorted({*statuses, 400} if 422 in statuses else set(statuses))
    return {code: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}} for code in codes}


def pool() -> DictPool:
    return get_pool()


def settings() -> Settings:
    return get_settings()


def source_address(request: Request) -> str:
    """The client's address as the platform's front end saw it: the last X-Forwarded-For entry
    (the one our own front end appended; earlier entries are whatever the client sent), without a
    port. Locally there is none, and every request counts as one source."""
    forwarded = request.headers.get("x-forwarded-for", "")
    last = forwarded.rsplit(",", 1)[-1].strip()
    if last:
        if last.startswith("["):  # [v6]:port
            return last[1:].split("]", 1)[0]
        return last.rsplit(":", 1)[0] if last.count(":") == 1 else last
    return request.client.host if request.client else "unknown"


def principal(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    config: Annotated[Settings, Depends(settings)],
    db: Annotated[DictPool, Depends(pool)],
    source: Annotated[str, Depends(source_address)],
) -> Principal:
    """The verified caller: our own access token, or an external provider's mapped to our user."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated()
    return authenticate(db, config, credentials.credentials, source)


Pool = Annotated[DictPool, Depends(pool)]
Config = Annotated[Settings, Depends(settings)]
Caller = Annotated[Principal, Depends(principal)]
Source = Annotated[str, Depends(source_address)]
