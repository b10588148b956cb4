"""The FastAPI app: one router per area (shared/http/routes/), the problem handlers, the OpenAPI document.

Routes only translate HTTP: they verify the caller, call one use case of a feature (shared/devices,
shared/telemetry, ...) and shape its result; shared/http/problems.py maps every error. Route functions
are plain `def`: FastAPI runs them in its thread pool, where the blocking psycopg pool and argon2 belong.
"""

from __future__ import annotations

from fastapi import FastAPI

from shared.http.deps import PREFIX
from shared.http.middleware import ResponseHeaders, UnicodeJsonBodies
from shared.http.problems import install_problem_handlers
from shared.http.routes import alerts, auth, commands, devices, exports, profiles, reads, tenancy, users, webhooks

# In the order the OpenAPI document lists them.
ROUTERS = (auth, users, devices, profiles, commands, reads, tenancy, exports, alerts, webhooks)


def create_app() -> FastAPI:
    app = FastAPI(
        title="mqtt-saas admin API",
        version="0.1.0",
        openapi_url=f"{PREFIX}/openapi.json",
        # No Swagger UI: it loads its script from a CDN, on the dashboard's origin (where the refresh
        # token lives in sessionStorage). The document itself is served, and scripts/openapi.py prints it.
        docs_url=None,
        redoc_url=None,
    )
    for module in ROUTERS:
        app.include_router(module.router)
    install_problem_handlers(app)
    app.add_middleware(UnicodeJsonBodies)
    app.add_middleware(ResponseHeaders)  # outermost: the other middlewares' own answers get them too
    return app


api = create_app()
