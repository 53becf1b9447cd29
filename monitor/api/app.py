"""`create_app`: the FastAPI application. Errors render as ``{"error": {"type", "message"}}``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitor import __version__
from monitor.api.context import AppContext
from monitor.api.routers import conversations, health
from monitor.errors import MonitorError


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


def create_app(context: AppContext) -> FastAPI:
    app = FastAPI(title="monitor", version=__version__, description="Reward-model drift monitor")
    app.state.context = context
    app.include_router(health.router)
    app.include_router(conversations.router)

    @app.exception_handler(MonitorError)
    def _monitor_error(_request: Request, exc: MonitorError) -> JSONResponse:
        return _error(exc.status_code, type(exc).__name__, str(exc))

    @app.exception_handler(StarletteHTTPException)
    def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "HTTPError", str(exc.detail))

    @app.exception_handler(RequestValidationError)
    def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "InvalidRequest", "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))

    return app
