"""`create_app`: the FastAPI application. Errors render as ``{"error": {"type", "message"}}``."""

from __future__ import annotations

from fastapi import FastAPI

from monitor import __version__
from monitor.api.context import AppContext
from monitor.api.routers import analysis, conversations, health, operator_pages, relabel, review, review_page
from monitor.http_errors import install_error_handlers


def create_app(context: AppContext) -> FastAPI:
    app = FastAPI(title="monitor", version=__version__, description="Reward-model drift monitor")
    app.state.context = context
    app.include_router(health.router)
    app.include_router(conversations.router)
    app.include_router(analysis.router)
    app.include_router(review.router)
    app.include_router(review_page.router)
    app.include_router(relabel.router)
    app.include_router(operator_pages.router)
    install_error_handlers(app)
    return app
