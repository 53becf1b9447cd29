"""`BodyLimit`: a request body over ``MONITOR_API_MAX_BODY_BYTES`` is a JSON 413.

Plain ASGI middleware, like :class:`monitor.http_errors.RejectNul` (``@app.middleware("http")``
would run every request in a task of its own). A declared ``Content-Length`` over the limit is
refused before the app runs, so nothing is read; a body without one (chunked transfer encoding) is
counted as it arrives and cut off at the first byte over the limit: the app never holds more than
the limit plus one chunk in memory.

Starlette ships a ``RequestBodyLimitMiddleware`` since 1.x, but it answers in plain text, lets the app
run (key lookup included) before refusing a declared length, and our ``fastapi>=0.110`` floor may
predate it.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitor.http_errors import error_response


class _BodyTooLarge(Exception):
    """Raised into the app by ``receive`` once the body passes the limit."""


class BodyLimit:
    """Refuse HTTP request bodies of more than ``max_bytes`` with a 413 ``{"error": ...}``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    def _response(self, declared: int | None = None) -> JSONResponse:
        size = f" ({declared} bytes declared)" if declared is not None else ""
        return error_response(413, "PayloadTooLarge",
                              f"the request body is over the limit of {self.max_bytes} bytes{size} "
                              "(MONITOR_API_MAX_BODY_BYTES)", headers={"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._response(declared)(scope, receive, send)
            return

        received = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            if over:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                if over:
                    # Whatever the app made of its cut-off body (FastAPI: a 400 "error parsing the
                    # body"), the caller gets the 413. The app's own response is dropped.
                    started = True
                    await self._response()(scope, receive, send)
                    return
                started = True
            elif over and message["type"] == "http.response.body":
                return
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._response()(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    if value is None or not value.strip().isdigit():
        return None  # the server (h11, httptools) refuses a malformed length before we see it
    return int(value)
