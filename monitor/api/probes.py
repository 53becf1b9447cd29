"""`create_probe_app`: only ``/healthz``, ``/readyz`` and ``/metrics``, for the processes that serve
no API (``monitor serve --role worker`` and ``--role analyzer``): orchestrators probe them and
Prometheus scrapes them like any other, and no ``/v1`` route or page is exposed beside ingest."""

from __future__ import annotations

from fastapi import FastAPI

from monitor import __version__
from monitor.api.context import AppContext
from monitor.api.routers import health
from monitor.http_errors import install_error_handlers


def create_probe_app(context: AppContext) -> FastAPI:
    app = FastAPI(title=f"monitor {context.settings.role}", version=__version__,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.context = context
    for path, endpoint in (("/healthz", health.healthz), ("/readyz", health.readyz), ("/metrics", health.metrics)):
        app.add_api_route(path, endpoint, methods=["GET"], tags=["health"])
    install_error_handlers(app)
    return app
