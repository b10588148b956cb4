"""What the API does to every request and answer, whichever route: answers get the API's headers,
and a JSON body must be Unicode text. Plain ASGI (like the problem middleware in problems.py), for
the Functions adapter."""

from __future__ import annotations

import email.message
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.http.problems import problem_response

# Every answer of the API is a tenant's own data or carries a secret (tokens from login and refresh,
# a device's broker password, a generated user password, a webhook secret, an export's SAS link), so
# none may be kept by a browser's or a proxy's cache: no-store on all of them, so that a new route
# cannot forget it. nosniff: a browser never runs a JSON answer as a script or a page.
RESPONSE_HEADERS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))

LONE_SURROGATE = (
    "A string in the body contains a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair), "
    "which is not Unicode text."
)


class ResponseHeaders:
    """Adds RESPONSE_HEADERS to every answer, error answers included, unless the route set one itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in RESPONSE_HEADERS if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _is_json(scope: Scope) -> bool:
    """The content types FastAPI parses as JSON: application/json and application/*+json."""
    value = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"content-type"), None)
    if value is None:
        return False
    message = email.message.Message()
    message["content-type"] = value
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def has_lone_surrogate(body: bytes) -> bool:
    """True when the JSON parses (as FastAPI parses it) to a key or string holding a lone surrogate:
    Python's json accepts "\\ud800", but it is not text, and PostgreSQL refuses it (a 500, had it
    got that far). Anything json cannot parse is left to FastAPI's own error."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class UnicodeJsonBodies:
    """Refuses (422) a JSON body with a lone surrogate, for every route at once, before any validation."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        if b"\\u" in body and has_lone_surrogate(body):
            response = problem_response(
                422,
                "validation",
                "Unprocessable Content",
                "The request is not valid: see invalid-params.",
                invalid_params=[{"name": "body", "reason": LONE_SURROGATE}],
            )
            await response(scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
