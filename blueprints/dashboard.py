"""The dashboard: GET /api/dashboard/ serves the page and its files (shared/static.py), on the
API's own origin. Anonymous like the page itself: everything it shows comes from the API, which
checks the bearer token on every call."""

import azure.functions as func

from shared.core.settings import get_settings
from shared.http import static
from shared.http.app import api as api_app

bp = func.Blueprint()


def _reply(asset: static.Asset | None) -> func.HttpResponse:
    if asset is None:
        return func.HttpResponse(
            "not found", status_code=404, mimetype="text/plain", headers=dict(static.SECURITY_HEADERS)
        )
    return func.HttpResponse(asset.body, status_code=200, headers={**asset.headers, "Content-Type": asset.content_type})


@bp.route(route="dashboard/{*path}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def dashboard_page(req: func.HttpRequest) -> func.HttpResponse:
    path = req.route_params.get("path") or ""
    if not path and not req.url.split("?", 1)[0].endswith("/"):
        # The page's files are relative to it: /api/dashboard must become /api/dashboard/.
        return func.HttpResponse(status_code=308, headers={"Location": "/api/dashboard/"})
    if path == "config.json":
        settings = get_settings()
        ca_available = static.broker_ca(settings.mqtt_ca_file) is not None
        external = bool(settings.auth_external_issuer)
        operations = static.offered_operations(api_app.openapi())  # FastAPI builds the document once
        return _reply(
            static.page_config(
                settings.ingest_schedule,
                ca_available,
                settings.mqtt_ca_file is None,
                external,
                operations,
                settings.auth_external_sign_in_url if external else "",
                settings.mqtt_host,
                settings.mqtt_port,
            )
        )
    if path == "broker-ca.pem":
        return _reply(static.broker_ca(get_settings().mqtt_ca_file))
    return _reply(static.find_asset(path))
