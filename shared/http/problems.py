"""The one place that maps exceptions to responses: RFC 9457 problem details
(application/problem+json) with a fixed message and the right status, never a stack trace or a
driver's message. Unexpected errors are logged here with their traceback and answered as 500."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.core.exceptions import (
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    InvalidRequest,
    NotFound,
    PlanLimitReached,
    RequestError,
    ServerMisconfigured,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
    Unprocessable,
)

log = logging.getLogger(__name__)

# RFC 9457 types are URIs; a URN names the kind without implying a page that does not exist.
PROBLEM_TYPE_BASE = "urn:mqtt-saas:problem:"
PROBLEM_MEDIA_TYPE = "application/problem+json"

# Each category of RequestError as HTTP says it; a subclass answers as its nearest listed ancestor.
_STATUS: dict[type[RequestError], tuple[int, str]] = {
    InvalidRequest: (400, "Bad Request"),
    Unauthenticated: (401, "Unauthorized"),
    PlanLimitReached: (402, "Payment Required"),
    Forbidden: (403, "Forbidden"),
    NotFound: (404, "Not Found"),
    Conflict: (409, "Conflict"),
    Unprocessable: (422, "Unprocessable Content"),
    TooManyRequests: (429, "Too Many Requests"),
    ServerMisconfigured: (500, "Internal Server Error"),
    Unavailable: (503, "Service Unavailable"),
}

# Messages for the statuses the framework itself raises (unknown route, wrong method, ...).
_FRAMEWORK_DETAILS = {
    404: ("not-found", "Not Found", "There is no such resource."),
    405: ("method-not-allowed", "Method Not Allowed", "This resource does not support that method."),
}


class InvalidParam(BaseModel):
    """One invalid part of a request: where it is (e.g. body.email) and what is wrong."""

    name: str
    reason: str


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str = Field(examples=[PROBLEM_TYPE_BASE + "not-found"])
    title: str
    status: int
    detail: str
    invalid_params: list[InvalidParam] | None = Field(None, alias="invalid-params")


def problem_response(
    status: int,
    kind: str,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    invalid_params: list[dict[str, str]] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": PROBLEM_TYPE_BASE + kind, "title": title, "status": status, "detail": detail}
    if invalid_params is not None:
        body["invalid-params"] = invalid_params
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def status_of(error: type[RequestError]) -> tuple[int, str]:
    """The HTTP status and title a RequestError answers with."""
    for cls in error.__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500, "Internal Server Error"


def error_response(exc: RequestError) -> JSONResponse:
    status, title = status_of(type(exc))
    headers = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="mqtt-saas"'
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    return problem_response(status, exc.kind, title, exc.detail, headers=headers)


def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return error_response(exc)


def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # pydantic's message per error type is fixed text; the input (which may be a password) is
    # never echoed.
    params = [
        {"name": ".".join(str(part) for part in error.get("loc", ())), "reason": str(error.get("msg", ""))}
        for error in exc.errors()
    ]
    return problem_response(
        422,
        "validation",
        "Unprocessable Content",
        "The request is not valid: see invalid-params.",
        invalid_params=params,
    )


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    kind, title, detail = _FRAMEWORK_DETAILS.get(
        exc.status_code, ("bad-request" if exc.status_code < 500 else "internal", "Error", "The request failed.")
    )
    return problem_response(exc.status_code, kind, title, detail, headers=exc.headers)


class _UnexpectedErrors:
    """Whatever escapes a route becomes a problem response here, so no traceback or driver text
    reaches a client and the ASGI adapter never sees an exception. (Plain ASGI rather than
    BaseHTTPMiddleware, which would poll the Functions adapter's receive() for a disconnect.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_note(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            if started:
                raise
            await _unexpected(scope, exc)(scope, receive, send)


def _unexpected(scope: Scope, exc: Exception) -> Response:
    where = f"{scope.get('method')} {scope.get('path')}"
    if isinstance(exc, PoolTimeout | psycopg.OperationalError):
        log.warning("api: database unavailable for %s: %s", where, type(exc).__name__)
        return error_response(DatabaseUnavailable())
    log.error("api: unexpected error in %s", where, exc_info=exc)
    return problem_response(
        500, "internal", "Internal Server Error", "The server failed to complete the request; it has been logged."
    )


def _database_error(request: Request, exc: Exception) -> Response:
    """A row over a plan limit (the database's quota trigger) is the client's 402; any other
    database error is handled as unexpected, exactly as without this handler."""
    from shared.platform.quotas import is_plan_limit, plan_limit_error

    if is_plan_limit(exc):
        assert isinstance(exc, psycopg.Error)
        return error_response(plan_limit_error(exc))
    return _unexpected(request.scope, exc)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(psycopg.Error, _database_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(_UnexpectedErrors)
