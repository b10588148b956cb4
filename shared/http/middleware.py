"""What the API does to every answer, whichever route: the API's headers. Plain ASGI (like the
problem middleware in problems.py), for the Functions adapter."""
from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Every answer of the API is a tenant's own data or carries a secret (tokens from login and refresh,
# a device's broker password, a generated user password, a webhook secret, an export's SAS link), so
# none may be kept by a browser's or a proxy's cache: no-store on all of them, so that a new route
# cannot forget it. nosniff: a browser never runs a JSON answer as a script or a page.
RESPONSE_HEADERS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))


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
