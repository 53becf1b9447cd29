"""`create_app`: the FastAPI application. Errors render as ``{"error": {"type", "message"}}``.

Outermost first, a request meets the rate limit (``/v1`` only, :mod:`monitor.api.ratelimit`), then
the body limit (:mod:`monitor.api.limits`), then the NUL check: a refused client costs no body read.
"""

from __future__ import annotations

from fastapi import FastAPI

from monitor import __version__
from monitor.api.context import AppContext
from monitor.api.limits import BodyLimit
from monitor.api.ratelimit import RateLimit, RateLimiter
from monitor.api.routers import analysis, conversations, health, operator_pages, relabel, review, review_page
from monitor.http_errors import ERROR_RESPONSES, install_error_handlers


def create_app(context: AppContext, rate_limiter: RateLimiter | None = None) -> FastAPI:
    """The API over ``context``; ``rate_limiter`` replaces the one the settings describe (tests pass
    one with their own clock)."""
    app = FastAPI(title="monitor", version=__version__, description="Reward-model drift monitor")
    app.state.context = context
    for router in (health.router, conversations.router, analysis.router, review.router, review_page.router,
                   relabel.router, operator_pages.router):
        app.include_router(router, responses=ERROR_RESPONSES)
    install_error_handlers(app)
    # add_middleware wraps what is there: the last added runs first.
    app.add_middleware(BodyLimit, max_bytes=context.settings.api_max_body_bytes)
    per_minute = context.settings.api_rate_limit_per_minute
    if rate_limiter is None and per_minute > 0:
        rate_limiter = RateLimiter(per_minute)
    if rate_limiter is not None:
        app.add_middleware(RateLimit, limiter=rate_limiter)
    return app
