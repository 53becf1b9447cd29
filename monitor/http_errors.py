"""One rendering of errors for every FastAPI app of `monitor`: ``{"error": {"type", "message"}}``.

Shared by the API (`monitor.api`) and the scoring server (`monitor.scoring.server`), which must not
import each other.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitor.errors import MonitorError

#: A body with thousands of bad items would otherwise produce a megabyte of error text.
_SHOWN_VALIDATION_ERRORS = 5


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MonitorError)
    def _monitor_error(_request: Request, exc: MonitorError) -> JSONResponse:
        return error_response(exc.status_code, type(exc).__name__, str(exc), exc.headers)

    @app.exception_handler(StarletteHTTPException)
    def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "HTTPError", str(exc.detail))

    @app.exception_handler(RequestValidationError)
    def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        shown = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:_SHOWN_VALIDATION_ERRORS])
        hidden = len(errors) - _SHOWN_VALIDATION_ERRORS
        return error_response(422, "InvalidRequest", shown + (f" (and {hidden} more)" if hidden > 0 else ""))
