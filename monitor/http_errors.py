"""One rendering of errors for every FastAPI app of `monitor`: ``{"error": {"type", "message"}}``.

Shared by the API (`monitor.api`) and the scoring server (`monitor.scoring.server`), which must not
import each other. A NUL character in the path or query string is a 400 before any route runs
(PostgreSQL cannot hold one in text, and no identifier contains one); text in a body that no store
can hold (a NUL character, an unpaired surrogate) is a 422 when the store refuses it; an unexpected
failure is a JSON 500 that says where to look, never a traceback or SQL parameters in the body.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from monitor.errors import MonitorError

log = logging.getLogger(__name__)

#: A body with thousands of bad items would otherwise produce a megabyte of error text.
_SHOWN_VALIDATION_ERRORS = 5


#: The OpenAPI document's word on errors: every 4xx answers ``{"error": {"type", "message"}}`` in JSON,
#: whatever the route's own media type (written out, not a ``model``, which FastAPI would document
#: under the route's media type). It also stops FastAPI from documenting its own ``{"detail": [...]}``
#: 422, which this app never sends.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "description": "The request was refused; the message says why.",
        "content": {"application/json": {"schema": {
            "type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["type", "message"], "properties": {
                    "type": {"type": "string", "description": "What went wrong, as a class name: NotFound, "
                             "InvalidRequest, RateLimited, PayloadTooLarge, ..."},
                    "message": {"type": "string"},
                }}}}}},
    },
}


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)


def _has_nul(scope: Scope) -> bool:
    raw_path = scope.get("raw_path") or str(scope.get("path", "")).encode()
    return b"\x00" in unquote_to_bytes(raw_path) or b"\x00" in unquote_to_bytes(scope.get("query_string", b""))


class RejectNul:
    """Plain ASGI middleware (no task per request, unlike ``@app.middleware``): a NUL character in
    the path or query string is a 400 before any route runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _has_nul(scope):
            response = error_response(400, "InvalidRequest", "NUL characters are not allowed in paths or query strings")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


#: SQLSTATEs of PostgreSQL refusing text in a JSON(B) value: ``\\u0000`` (untranslatable character),
#: an unpaired surrogate escape (invalid text representation, with "Unicode" in the detail).
_PG_UNSTORABLE = ("22P05", "22021")


def _is_unstorable_text(exc: BaseException) -> bool:
    """Whether ``exc`` is the store refusing text that came with the request, a client error: a NUL
    character (psycopg refuses it in text, PostgreSQL in JSON) or a lone surrogate, which JSON's
    ``\\udXXX`` escapes let through and UTF-8 cannot encode (both stores)."""
    error = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(error, UnicodeEncodeError):
        return "surrogate" in error.reason
    sqlstate = getattr(error, "sqlstate", None)
    message = str(error)
    return (sqlstate in _PG_UNSTORABLE or (sqlstate == "22P02" and "Unicode" in message)
            or (sqlstate is None and "NUL (0x00)" in message))


def install_error_handlers(app: FastAPI) -> None:
    app.add_middleware(RejectNul)

    @app.exception_handler(Exception)
    def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Where it failed, not what it said: a database error's message carries the statement's parameters
        # (conversation text).
        log.error("unexpected %s answering %s %s\n%s", type(exc).__name__, request.method, request.url.path,
                  "".join(traceback.format_tb(exc.__traceback__)))
        return error_response(500, "InternalError", "internal error; the service log has the details")

    def _unstorable_text(request: Request, exc: Exception) -> JSONResponse:
        if not _is_unstorable_text(exc):
            return _unexpected(request, exc)
        return error_response(422, "InvalidRequest", "the request carries text no store can hold: a NUL character "
                              "(\\u0000) or an unpaired UTF-16 surrogate (\\ud800-\\udfff)")

    # Registered by class so they answer in place (the handler of Exception is the last resort, and its
    # exception goes on to the server's log as a crash).
    app.add_exception_handler(UnicodeEncodeError, _unstorable_text)
    app.add_exception_handler(DBAPIError, _unstorable_text)

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
