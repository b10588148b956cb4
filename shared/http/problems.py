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

from shared.core.errors import ApiError, ServiceUnavailable

log = logging.getLogger(__name__)

# RFC 9457 types are URIs; a URN names the kind without implying a page that does not exist.
PROBLEM_TYPE_BASE = "urn:mqtt-saas:problem:"
PROBLEM_MEDIA_TYPE = "application/problem+json"

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


def problem_response(status: int, kind: str, title: str, detail: str, *,
                     headers: Mapping[str, str] | None = None,
                     invalid_params: list[dict[str, str]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": PROBLEM_TYPE_BASE + kind, "title": title, "status": status, "detail": detail}
    if invalid_params is not None:
        body["invalid-params"] = invalid_params
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return problem_response(exc.status, exc.kind, exc.title, exc.detail, headers=exc.headers)


def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # pydantic's message per error type is fixed text; the input (which may be a password) is
    # never echoed.
    params = [{"name": ".".join(str(part) for part in error.get("loc", ())), "reason": str(error.get("msg", ""))}
              for error in exc.errors()]
    return problem_response(422, "validation", "Unprocessable Content",
                            "The request is not valid: see invalid-params.", invalid_params=params)


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
        unavailable = ServiceUnavailable()
        return problem_response(unavailable.status, unavailable.kind, unavailable.title, unavailable.detail,
                                headers={"Retry-After": "5"})
    log.error("api: unexpected error in %s", where, exc_info=exc)
    return problem_response(500, "internal", "Internal Server Error",
                            "The server failed to complete the request; it has been logged.")


def _database_error(request: Request, exc: Exception) -> Response:
    """A row over a plan limit (the database's quota trigger) is the client's 402; any other
    database error is handled as unexpected, exactly as without this handler."""
    from shared.platform.quotas import is_plan_limit, plan_limit_error

    if is_plan_limit(exc):
        assert isinstance(exc, psycopg.Error)
        error = plan_limit_error(exc)
        return problem_response(error.status, error.kind, error.title, error.detail)
    return _unexpected(request.scope, exc)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(psycopg.Error, _database_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(_UnexpectedErrors)
