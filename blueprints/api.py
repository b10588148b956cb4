"""The admin API: every /api/... request (other than the more specific /api/health) goes to the
FastAPI app in shared/http through the Functions ASGI adapter. The app authenticates requests
itself (bearer tokens), so the route is anonymous to the host."""

import azure.functions as func

from shared.http.app import api as asgi_app

bp = func.Blueprint()
_asgi = func.AsgiMiddleware(asgi_app)


@bp.route(route="{*route}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
async def api(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    response: func.HttpResponse = await _asgi.handle_async(req, context)
    return response
