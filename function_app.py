"""The function app: builds the FunctionApp and registers the blueprints, nothing else."""

import logging

import azure.functions as func

from blueprints.alerts import bp as alerts_bp
from blueprints.api import bp as api_bp
from blueprints.broker_sync import bp as broker_sync_bp
from blueprints.dashboard import bp as dashboard_bp
from blueprints.health import bp as health_bp
from blueprints.ingest import bp as ingest_bp
from blueprints.maintenance import bp as maintenance_bp

# The Azure SDK logs every HTTP request at INFO; keep our own lines readable.
logging.getLogger("azure").setLevel(logging.WARNING)

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(ingest_bp)
app.register_functions(health_bp)
app.register_functions(api_bp)
app.register_functions(broker_sync_bp)
app.register_functions(dashboard_bp)
app.register_functions(maintenance_bp)
app.register_functions(alerts_bp)
