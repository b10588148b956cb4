"""GET /api/health: is the app up and can it reach PostgreSQL? For probes and operators."""

import json

import azure.functions as func

from shared.core.db import get_pool
from shared.core.health import check_health
from shared.http.middleware import RESPONSE_HEADERS

bp = func.Blueprint()


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    report = check_health(get_pool())
    return func.HttpResponse(
        json.dumps(report.as_dict()),
        status_code=200 if report.ok else 503,
        mimetype="application/json",
        headers={name.decode(): value.decode() for name, value in RESPONSE_HEADERS},  # as every API answer
    )
