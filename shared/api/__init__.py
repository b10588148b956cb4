"""The admin/dashboard HTTP API: a FastAPI app (routes under /api) that blueprints/api.py serves
through the Functions ASGI support. Nothing here imports azure.functions."""
